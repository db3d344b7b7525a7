//! The image service's handler against real PostgreSQL (a fresh migrated database per test)
//! and a scratch image store, one transaction per message as the bus would run it.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::io::Cursor;
use std::path::PathBuf;
use std::time::SystemTime;

use bus::{Handler, HandlerError};
use contracts::messages::{
    ImageCompleted, ImageDeleteVariants, ImageFailed, ImageProcess, ImageProcessed,
    ImageProcessingStarted, ImageRecord, ImageVariant, ImageVariantDone, ImageVariantsDeleted,
};
use contracts::{Envelope, Message, Schemas};
use image::{DynamicImage, GenericImageView, ImageFormat, Rgb, RgbImage, RgbaImage};
use images::queries::{ImageView, get_image};
use images::store::{original_key, variant_key};
use images::{ImageHandler, ImageStatus, ImageStore, Limits, spec};
use serde_json::json;
use sqlx::PgPool;
use store::TxHandler;
use uuid::Uuid;

/// An image store in a fresh directory, removed at the end of the test.
struct Scratch {
    store: ImageStore,
}

impl Scratch {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("warren-images-{}", Uuid::now_v7()));
        Self {
            store: ImageStore::new(root),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.store.root());
    }
}

fn handler(pool: &PgPool, scratch: &Scratch) -> ImageHandler {
    ImageHandler::new(pool.clone(), scratch.store.clone(), Limits::default())
}

/// A command as the orchestrator sends it: fresh message id, a saga id.
fn send<M: Message>(message: &M) -> Envelope {
    Envelope::new("test", message).with_correlation(Uuid::now_v7())
}

/// Applies `message` in a transaction of its own and commits on success. Every reply must
/// pass its schema and carry the saga id and causation of `message`.
async fn apply(
    pool: &PgPool,
    handler: &ImageHandler,
    message: &Envelope,
) -> Result<Vec<Envelope>, HandlerError> {
    let mut tx = pool.begin().await.unwrap();
    let replies = handler.apply(&mut tx, message).await?;
    tx.commit().await.unwrap();
    for reply in &replies {
        Schemas::embedded()
            .validate(&reply.message_type, &reply.payload)
            .unwrap();
        assert_eq!(reply.correlation_id, message.correlation_id);
        assert_eq!(reply.causation_id, Some(message.message_id));
        assert_eq!(reply.producer, "image");
    }
    Ok(replies)
}

/// Sends `message` and returns its one reply as `R`.
async fn ask<M: Message, R: Message>(pool: &PgPool, handler: &ImageHandler, message: &M) -> R {
    let replies = apply(pool, handler, &send(message)).await.unwrap();
    assert_eq!(replies.len(), 1, "expected one reply, got {replies:?}");
    replies[0]
        .decode::<R>()
        .unwrap_or_else(|e| panic!("expected {}, got {:?}: {e}", R::TYPE, replies[0]))
}

/// Progress events in the outbox, each checked against its schema, oldest first.
async fn progress(pool: &PgPool, image_id: Uuid) -> Vec<Envelope> {
    let rows: Vec<(String, serde_json::Value, Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "SELECT message_type, payload, correlation_id, causation_id FROM images.outbox \
         WHERE payload->>'image_id' = $1 ORDER BY seq",
    )
    .bind(image_id.to_string())
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(message_type, payload, correlation_id, causation_id)| {
            Schemas::embedded()
                .validate(&message_type, &payload)
                .unwrap();
            Envelope {
                correlation_id,
                causation_id,
                ..Envelope::raw("image", &message_type, payload)
            }
        })
        .collect()
}

fn count(events: &[Envelope], message_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e.message_type == message_type)
        .count()
}

/// A 300×200 RGB gradient.
fn gradient() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(300, 200, |x, y| {
        Rgb([
            u8::try_from(x * 255 / 299).unwrap(),
            u8::try_from(y * 255 / 199).unwrap(),
            u8::try_from((x * y) % 256).unwrap(),
        ])
    }))
}

fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A 1×1 PNG whose header declares 100000×100000 pixels (with a correct CRC).
fn bomb() -> Vec<u8> {
    let mut png = encoded(
        &DynamicImage::ImageRgba8(RgbaImage::new(1, 1)),
        ImageFormat::Png,
    );
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// Uploads `bytes` as an image's original, as the gateway does, and returns the command.
async fn upload(scratch: &Scratch, bytes: Vec<u8>, variants: &[&str]) -> ImageProcess {
    let image_id = Uuid::now_v7();
    scratch
        .store
        .put(&original_key(image_id), &bytes)
        .await
        .unwrap();
    ImageProcess {
        image_id,
        customer_id: Some("c-1".into()),
        original: original_key(image_id),
        variants: variants.iter().map(|v| (*v).to_owned()).collect(),
    }
}

/// Every file in an image's folder, sorted.
fn files(scratch: &Scratch, image_id: Uuid) -> Vec<String> {
    let dir = scratch.store.path(&format!("images/{image_id}")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn path(scratch: &Scratch, variant: &ImageVariant) -> PathBuf {
    scratch.store.path(&variant.key).unwrap()
}

async fn view(pool: &PgPool, image_id: Uuid) -> ImageView {
    get_image(pool, image_id).await.unwrap().unwrap()
}

const VARIANTS: [&str; 5] = [
    "thumbnail:128",
    "resize:64x48@jpeg",
    "grayscale|rotate:90@webp",
    "crop:10,10,50,40",
    "blur:2|flip:h@jpeg",
];

#[sqlx::test(migrations = "../../migrations")]
async fn processes_a_png_and_a_jpeg_into_every_variant(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    for format in [ImageFormat::Png, ImageFormat::Jpeg] {
        let command = upload(&scratch, encoded(&gradient(), format), &VARIANTS).await;
        let image_id = command.image_id;
        let message = send(&command);
        let replies = apply(&pool, &handler, &message).await.unwrap();
        assert_eq!(replies.len(), 1);
        let processed: ImageProcessed = replies[0].decode().unwrap();
        assert_eq!(processed.image_id, image_id);
        assert_eq!(processed.customer_id.as_deref(), Some("c-1"));

        let expected = [
            (128, 85, "png"),
            (64, 48, "jpeg"),
            (200, 300, "webp"),
            (50, 40, "png"),
            (300, 200, "jpeg"),
        ];
        assert_eq!(processed.outputs.len(), expected.len());
        for ((output, (width, height, format)), name) in
            processed.outputs.iter().zip(expected).zip(VARIANTS)
        {
            assert_eq!(output.name, name);
            assert_eq!((output.width, output.height), (width, height), "{name}");
            assert_eq!(output.format, format, "{name}");
            assert_eq!(
                output.key,
                variant_key(image_id, &spec::parse(name).unwrap())
            );
            let bytes = std::fs::read(path(&scratch, output)).unwrap();
            assert_eq!(output.bytes, bytes.len() as u64, "{name}");
            let decoded = image::load_from_memory(&bytes).unwrap();
            assert_eq!(decoded.dimensions(), (width, height), "{name}");
        }
        assert_eq!(files(&scratch, image_id).len(), VARIANTS.len() + 1);

        // Progress went out live, in its own transactions, under the same saga.
        let events = progress(&pool, image_id).await;
        assert_eq!(count(&events, ImageProcessingStarted::TYPE), 1);
        assert_eq!(count(&events, ImageVariantDone::TYPE), VARIANTS.len());
        assert_eq!(events.len(), VARIANTS.len() + 1);
        let started: ImageProcessingStarted = events[0].decode().unwrap();
        assert_eq!(started.variants, 5);
        for (event, output) in events[1..].iter().zip(&processed.outputs) {
            let done: ImageVariantDone = event.decode().unwrap();
            assert_eq!(&done.variant, output);
        }
        for event in &events {
            assert_eq!(event.correlation_id, message.correlation_id);
            assert_eq!(event.causation_id, Some(message.message_id));
        }

        let view = view(&pool, image_id).await;
        assert_eq!(view.status, ImageStatus::Processed);
        assert_eq!(view.variants, processed.outputs);
        assert_eq!(view.customer_id.as_deref(), Some("c-1"));
        assert_eq!(view.reason, None);
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_resent_process_replies_the_same_outputs_without_reprocessing(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let command = upload(
        &scratch,
        encoded(&gradient(), ImageFormat::Png),
        &["thumbnail:64", "grayscale@webp"],
    )
    .await;
    let first: ImageProcessed = ask(&pool, &handler, &command).await;
    let modified = |outputs: &[ImageVariant]| -> Vec<SystemTime> {
        outputs
            .iter()
            .map(|o| {
                std::fs::metadata(path(&scratch, o))
                    .unwrap()
                    .modified()
                    .unwrap()
            })
            .collect()
    };
    let written = modified(&first.outputs);
    let reported = progress(&pool, command.image_id).await.len();

    // A re-send under a new message id, even one asking for other variants.
    let again: ImageProcessed = ask(&pool, &handler, &command).await;
    assert_eq!(again, first);
    let other = ImageProcess {
        variants: vec!["rotate:180".into()],
        ..command.clone()
    };
    let again: ImageProcessed = ask(&pool, &handler, &other).await;
    assert_eq!(again, first);

    assert_eq!(modified(&first.outputs), written, "files were rewritten");
    assert_eq!(progress(&pool, command.image_id).await.len(), reported);
    assert_eq!(files(&scratch, command.image_id).len(), 3);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_decompression_bomb_fails_the_image_and_keeps_nothing(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let command = upload(&scratch, bomb(), &["thumbnail:128", "grayscale"]).await;
    let failed: ImageFailed = ask(&pool, &handler, &command).await;
    assert_eq!(failed.image_id, command.image_id);
    assert_eq!(failed.customer_id.as_deref(), Some("c-1"));
    assert_eq!(
        failed.reason,
        "the image is 100000×100000 pixels; at most 8192×8192 are accepted"
    );
    let view = view(&pool, command.image_id).await;
    assert_eq!(view.status, ImageStatus::Failed);
    assert_eq!(view.reason.as_deref(), Some(failed.reason.as_str()));
    assert!(view.variants.is_empty());
    assert_eq!(files(&scratch, command.image_id), ["original"]);

    // A re-send gets the same answer.
    let again: ImageFailed = ask(&pool, &handler, &command).await;
    assert_eq!(again, failed);
}

#[sqlx::test(migrations = "../../migrations")]
async fn truncated_originals_fail_the_image(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    for (format, name) in [(ImageFormat::Png, "PNG"), (ImageFormat::Jpeg, "JPEG")] {
        let whole = encoded(&gradient(), format);
        let half = whole[..whole.len() / 2].to_vec();
        let command = upload(&scratch, half, &["thumbnail:32", "flip:v"]).await;
        let failed: ImageFailed = ask(&pool, &handler, &command).await;
        assert_eq!(failed.reason, format!("the {name} data is truncated"));
        assert_eq!(
            view(&pool, command.image_id).await.status,
            ImageStatus::Failed
        );
        assert_eq!(files(&scratch, command.image_id), ["original"]);
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_failure_midway_deletes_the_variants_already_written(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let command = upload(
        &scratch,
        encoded(&gradient(), ImageFormat::Png),
        &["thumbnail:32", "grayscale@jpeg", "crop:200,100,101,10"],
    )
    .await;
    let failed: ImageFailed = ask(&pool, &handler, &command).await;
    assert_eq!(
        failed.reason,
        "variant \"crop:200,100,101,10\": crop 200,100,101,10 falls outside the 300×200 \
         image (x + width must be at most 300, y + height at most 200)"
    );
    // Two variants were written and reported before the crop failed; none is left.
    let events = progress(&pool, command.image_id).await;
    assert_eq!(count(&events, ImageVariantDone::TYPE), 2);
    assert_eq!(files(&scratch, command.image_id), ["original"]);
    let view = view(&pool, command.image_id).await;
    assert_eq!(view.status, ImageStatus::Failed);
    assert!(view.variants.is_empty());
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_specs_garbage_and_a_missing_original_fail_the_image(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let png = encoded(&gradient(), ImageFormat::Png);

    let command = upload(&scratch, png.clone(), &["thumbnail:64", "sepia"]).await;
    let failed: ImageFailed = ask(&pool, &handler, &command).await;
    assert!(
        failed.reason.starts_with("unknown operation \"sepia\""),
        "{}",
        failed.reason
    );

    let command = upload(&scratch, png.clone(), &["rotate:45"]).await;
    let failed: ImageFailed = ask(&pool, &handler, &command).await;
    assert!(
        failed
            .reason
            .contains("rotate takes 90, 180 or 270, not 45"),
        "{}",
        failed.reason
    );

    let command = upload(&scratch, png, &["grayscale", "grayscale@png"]).await;
    let failed: ImageFailed = ask(&pool, &handler, &command).await;
    assert!(
        failed.reason.contains("asked for twice"),
        "{}",
        failed.reason
    );

    let command = upload(&scratch, b"GIF89a, or so it says".to_vec(), &["grayscale"]).await;
    let failed: ImageFailed = ask(&pool, &handler, &command).await;
    assert_eq!(failed.reason, "not a PNG, JPEG or WebP image");

    let image_id = Uuid::now_v7();
    let missing = ImageProcess {
        image_id,
        customer_id: None,
        original: original_key(image_id),
        variants: vec!["grayscale".into()],
    };
    let failed: ImageFailed = ask(&pool, &handler, &missing).await;
    assert_eq!(
        failed.reason,
        format!(
            "the original {} is not in the image store",
            original_key(image_id)
        )
    );
    assert_eq!(failed.customer_id, None);

    let escape = ImageProcess {
        image_id: Uuid::now_v7(),
        original: "images/../../etc/passwd".into(),
        ..missing
    };
    let failed: ImageFailed = ask(&pool, &handler, &escape).await;
    assert!(
        failed.reason.starts_with("invalid image store key"),
        "{}",
        failed.reason
    );
    assert_eq!(
        view(&pool, escape.image_id).await.status,
        ImageStatus::Failed
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn delete_variants_before_process_leaves_a_tombstone(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let command = upload(
        &scratch,
        encoded(&gradient(), ImageFormat::Png),
        &["thumbnail:64"],
    )
    .await;
    let image_id = command.image_id;
    let delete = ImageDeleteVariants { image_id };
    let deleted: ImageVariantsDeleted = ask(&pool, &handler, &delete).await;
    assert_eq!(
        deleted,
        ImageVariantsDeleted {
            image_id,
            deleted: 0
        }
    );
    let tombstone = view(&pool, image_id).await;
    assert_eq!(tombstone.status, ImageStatus::Deleted);
    assert_eq!(tombstone.customer_id, None);

    // The late process is refused and writes nothing.
    let failed: ImageFailed = ask(&pool, &handler, &command).await;
    assert_eq!(failed.reason, "image was deleted");
    assert_eq!(failed.customer_id.as_deref(), Some("c-1"));
    assert_eq!(files(&scratch, image_id), ["original"]);
    assert!(progress(&pool, image_id).await.is_empty());
    assert_eq!(view(&pool, image_id).await.status, ImageStatus::Deleted);

    // Compensating again is fine.
    let again: ImageVariantsDeleted = ask(&pool, &handler, &delete).await;
    assert_eq!(again.deleted, 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn delete_variants_after_process_removes_them_but_not_the_original(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let command = upload(
        &scratch,
        encoded(&gradient(), ImageFormat::Jpeg),
        &["thumbnail:64", "grayscale@webp", "flip:h@jpeg"],
    )
    .await;
    let image_id = command.image_id;
    let processed: ImageProcessed = ask(&pool, &handler, &command).await;
    assert_eq!(files(&scratch, image_id).len(), 4);

    let delete = ImageDeleteVariants { image_id };
    let deleted: ImageVariantsDeleted = ask(&pool, &handler, &delete).await;
    assert_eq!(deleted.deleted, 3);
    assert_eq!(files(&scratch, image_id), ["original"]);
    for output in &processed.outputs {
        assert!(!path(&scratch, output).exists());
    }
    let view = view(&pool, image_id).await;
    assert_eq!(view.status, ImageStatus::Deleted);
    assert!(view.variants.is_empty());
    assert_eq!(view.customer_id.as_deref(), Some("c-1"));

    // A late (re-sent) process does not bring them back.
    let failed: ImageFailed = ask(&pool, &handler, &command).await;
    assert_eq!(failed.reason, "image was deleted");
    assert_eq!(files(&scratch, image_id), ["original"]);
    let again: ImageVariantsDeleted = ask(&pool, &handler, &delete).await;
    assert_eq!(again.deleted, 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn record_completes_a_processed_image(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let command = upload(
        &scratch,
        encoded(&gradient(), ImageFormat::Png),
        &["thumbnail:128", "resize:10x10@webp"],
    )
    .await;
    let image_id = command.image_id;
    let processed: ImageProcessed = ask(&pool, &handler, &command).await;
    let record = ImageRecord {
        image_id,
        outputs: processed.outputs.clone(),
    };
    let completed: ImageCompleted = ask(&pool, &handler, &record).await;
    assert_eq!(
        completed,
        ImageCompleted {
            image_id,
            customer_id: Some("c-1".into()),
            outputs: processed.outputs.clone(),
        }
    );
    let view = view(&pool, image_id).await;
    assert_eq!(view.status, ImageStatus::Completed);
    assert_eq!(view.variants, processed.outputs);

    // Re-sends answer as the first time did.
    let again: ImageCompleted = ask(&pool, &handler, &record).await;
    assert_eq!(again, completed);
    let again: ImageProcessed = ask(&pool, &handler, &command).await;
    assert_eq!(again, processed);
}

#[sqlx::test(migrations = "../../migrations")]
async fn record_refuses_an_image_that_is_not_processed(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let never = ImageRecord {
        image_id: Uuid::now_v7(),
        outputs: vec![],
    };
    let error = apply(&pool, &handler, &send(&never)).await.unwrap_err();
    assert!(
        matches!(&error, HandlerError::Permanent(reason) if reason.contains("never processed")),
        "{error}"
    );

    let command = upload(&scratch, bomb(), &["grayscale"]).await;
    let _: ImageFailed = ask(&pool, &handler, &command).await;
    let failed = ImageRecord {
        image_id: command.image_id,
        outputs: vec![],
    };
    let error = apply(&pool, &handler, &send(&failed)).await.unwrap_err();
    assert!(
        matches!(&error, HandlerError::Permanent(reason) if reason.contains("is failed")),
        "{error}"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn undecodable_and_unknown_messages_are_parked(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let garbled = Envelope::raw("test", ImageProcess::TYPE, json!({"image_id": "nope"}));
    let error = apply(&pool, &handler, &garbled).await.unwrap_err();
    assert!(matches!(error, HandlerError::Permanent(_)), "{error}");
    let stranger = Envelope::raw("test", "order.cmd.create", json!({}));
    let error = apply(&pool, &handler, &stranger).await.unwrap_err();
    assert!(matches!(error, HandlerError::Permanent(_)), "{error}");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_process_racing_its_compensation_keeps_nothing(pool: PgPool) {
    let scratch = Scratch::new();
    let handler = handler(&pool, &scratch);
    let command = upload(
        &scratch,
        encoded(&gradient(), ImageFormat::Png),
        &["thumbnail:64", "blur:8", "grayscale@jpeg"],
    )
    .await;
    let image_id = command.image_id;
    let process = {
        let (pool, handler, message) = (pool.clone(), handler.clone(), send(&command));
        tokio::spawn(async move { apply(&pool, &handler, &message).await.unwrap() })
    };
    let delete = {
        let (pool, handler) = (pool.clone(), handler.clone());
        let message = send(&ImageDeleteVariants { image_id });
        tokio::spawn(async move { apply(&pool, &handler, &message).await.unwrap() })
    };
    let (processed, deleted) = (process.await.unwrap(), delete.await.unwrap());
    let deleted: ImageVariantsDeleted = deleted[0].decode().unwrap();
    // Whichever ran first, the compensation wins and no variant is left.
    match processed[0].message_type.as_str() {
        ImageProcessed::TYPE => assert_eq!(deleted.deleted, 3),
        ImageFailed::TYPE => assert_eq!(deleted.deleted, 0),
        other => panic!("unexpected reply {other}"),
    }
    assert_eq!(files(&scratch, image_id), ["original"]);
    assert_eq!(view(&pool, image_id).await.status, ImageStatus::Deleted);
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_wrapped_handler_dedupes_and_writes_the_reply_to_the_outbox(pool: PgPool) {
    let scratch = Scratch::new();
    let wrapped = images::handler(pool.clone(), scratch.store.clone(), Limits::default());
    let command = upload(
        &scratch,
        encoded(&gradient(), ImageFormat::Png),
        &["thumbnail:16"],
    )
    .await;
    let message = send(&command);
    wrapped.handle(message.clone()).await.unwrap();
    // The broker redelivers: the inbox skips it.
    wrapped.handle(message).await.unwrap();
    let events = progress(&pool, command.image_id).await;
    let types: Vec<&str> = events.iter().map(|e| e.message_type.as_str()).collect();
    assert_eq!(
        types,
        [
            ImageProcessingStarted::TYPE,
            ImageVariantDone::TYPE,
            ImageProcessed::TYPE
        ]
    );
    assert_eq!(
        view(&pool, command.image_id).await.status,
        ImageStatus::Processed
    );
}
