//! Warren's image participant: everything between an uploaded original and its variants.
//! The gateway uses the pure parts too, to refuse bad specs before publishing anything and to
//! serve variants from the store.
//!
//! - [`spec`]: the variant spec language (`thumbnail:128`, `grayscale|rotate:90@webp`):
//!   parsing, canonical spelling, file-name slugs. Pure.
//! - [`process`]: decoding an original within [`Limits`] (decompression bombs and truncated
//!   files are refused) and rendering variants. Pure and CPU-bound.
//! - [`store`]: the image store, files under a root directory addressed by checked keys,
//!   written atomically, accessed without blocking the async runtime.
//! - [`worker`]: the [`::store::TxHandler`] for `image.cmd.*` on `images.images`, wrapped by
//!   [`worker::handler`] with the service's inbox and outbox.
//! - [`queries`]: an image as the gateway shows it.
//!
//! The saga: `image.cmd.process` → `image.evt.processed` or `image.evt.failed` (compensated
//! by `image.cmd.delete_variants` → `image.evt.variants_deleted`) → `image.cmd.record` →
//! `image.evt.completed`. Image bytes never travel in messages, only store keys.

pub mod process;
pub mod queries;
pub mod spec;
pub mod store;
pub mod worker;

pub use process::{Limits, ProcessError, Rendered};
pub use spec::{OutputFormat, SpecError, VariantSpec};
pub use store::{ImageStore, ImageStoreError};
pub use worker::{CONSUMER, ImageHandler, ImageStatus, PRODUCER, SCHEMA, handler};

use std::sync::Arc;

use contracts::Component;
use contracts::component::Queue;
use futures_util::future::BoxFuture;
use host::{Host, Participant, Tasks};

/// The image worker as the broker, the database and the deployment see it.
pub const COMPONENT: Component = Component {
    consumes: &[Queue {
        name: "image.commands",
        bindings: &["image.cmd.*"],
    }],
    ..Component::participant("image", SCHEMA, "warren_images", 9185)
};

/// The image worker as `warren run image` starts it. Its work is long and CPU-bound: it takes
/// no more deliveries at once than there are cores, and commits each alone.
pub const PARTICIPANT: Participant = Participant {
    component: COMPONENT,
    listeners: 1,
    start,
};

fn start<'a>(host: &'a Host, tasks: &'a mut Tasks) -> BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move {
        let store = ImageStore::new(&host.settings.image_store);
        let handoff = host.relay(tasks, SCHEMA).await?;
        let handler =
            Arc::new(handler(host.pool.clone(), store, Limits::default()).with_handoff(handoff));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let prefetch = u16::try_from(cores).unwrap_or(u16::MAX);
        for queue in COMPONENT.consumes {
            host.consume_with(tasks, &COMPONENT, queue, Arc::clone(&handler), prefetch)?;
        }
        host.answer(tasks, &COMPONENT, queries::answering(host.pool.clone()))
    })
}
