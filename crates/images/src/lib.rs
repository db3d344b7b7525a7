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
