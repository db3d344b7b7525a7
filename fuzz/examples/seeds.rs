//! Writes the seed corpora under `fuzz/corpus/`: real messages as a producer sends them,
//! small PNG, JPEG and WebP originals with a spec each, and variant specs. Each seed is read
//! back with the target's own reader before it is written, so a seed always means what it
//! was built from.
//!
//! `cargo run --example seeds` (in `fuzz/`); ids and times are fixed and files are named by
//! content, so running it again changes nothing.

#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use contracts::Envelope;
use contracts::messages::*;
use image::{
    DynamicImage, ExtendedColorType, GrayImage, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage,
};
use images::OutputFormat;
use images::spec::{Flip, Operation, Rotation};
use uuid::Uuid;
use warren_fuzz::delivery;
use warren_fuzz::upload::{self, Original};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    messages(&root.join("message"));
    uploads(&root.join("image"));
    specs(&root.join("variant_spec"));
}

fn messages(dir: &Path) {
    let order_id = id(1);
    let items = vec![LineItem {
        sku: "SKU-1".into(),
        quantity: 2,
    }];
    let create = Envelope::new(
        "gateway",
        &OrderCreate {
            order_id,
            customer_id: "c-1".into(),
            items: items.clone(),
        },
    )
    .with_correlation(id(2))
    .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    .with_step("create_order");
    let create = Envelope {
        message_id: id(99),
        ..create
    };
    let mut retried =
        Envelope::caused_by("inventory", &InventoryReserve { order_id, items }, &create);
    retried.attempt = 3;
    let envelopes = [
        create.clone(),
        retried,
        Envelope::caused_by(
            "payment",
            &PaymentDeclined {
                order_id,
                reason: "insufficient funds".into(),
            },
            &create,
        ),
        Envelope::new(
            "gateway",
            &ImageProcess {
                image_id: id(3),
                customer_id: Some("c-1".into()),
                original: "images/x/original".into(),
                variants: vec!["thumbnail:128".into(), "grayscale|rotate:90@webp".into()],
            },
        ),
        Envelope::new(
            "inventory",
            &ProductUpsert {
                sku: "SKU-1".into(),
                name: "Mug".into(),
                price_cents: 1250,
                available: 10,
            },
        ),
        Envelope::new(
            "orchestrator",
            &SagaStart {
                saga_id: id(4),
                saga: "checkout".into(),
                input: serde_json::json!({"order_id": order_id, "items": [{"sku": "SKU-1", "quantity": 1}]})
                    .as_object()
                    .unwrap()
                    .clone(),
                request_hash: None,
            },
        ),
        Envelope::new(
            "notification",
            &NotificationCreated {
                notification_id: id(5),
                customer_id: "c-1".into(),
                kind: "order_confirmed".into(),
                message: "Your order is confirmed.".into(),
                source_event: id(6),
            },
        ),
    ];
    for (n, envelope) in envelopes.iter().enumerate() {
        let envelope = &Envelope {
            message_id: id(100 + n as u128),
            timestamp: chrono::DateTime::from_timestamp(1_790_000_000 + n as i64, 0).unwrap(),
            ..envelope.clone()
        };
        let properties = bus::amqp::properties(envelope);
        let body = bus::amqp::body(envelope);
        let seed = delivery::write(&properties, &body).unwrap();
        let read = delivery::read(&seed).unwrap();
        // `write` spells only what `read` reads: the content type and delivery mode are left out.
        let expected = properties
            .clone()
            .with_content_type(Default::default())
            .with_delivery_mode(0);
        assert_eq!(read.body, body.as_slice());
        assert_eq!(read.properties.message_id(), expected.message_id());
        assert_eq!(read.properties.kind(), expected.kind());
        assert_eq!(read.properties.correlation_id(), expected.correlation_id());
        assert_eq!(read.properties.app_id(), expected.app_id());
        assert_eq!(read.properties.timestamp(), expected.timestamp());
        assert_eq!(read.properties.headers(), expected.headers());
        save(dir, &seed);
    }
}

fn uploads(dir: &Path) {
    let gradient = RgbImage::from_fn(48, 32, |x, y| {
        Rgb([(x * 5) as u8, (y * 8) as u8, ((x + y) * 3) as u8])
    });
    let clear = RgbaImage::from_fn(16, 16, |x, y| Rgba([200, 100, 50, ((x + y) * 8) as u8]));
    // Wide and thin, grey: the shapes where a pixel count says little about the work.
    let strip = GrayImage::from_fn(256, 2, |x, _| Luma([x as u8]));
    let originals = [
        (
            encoded(&DynamicImage::ImageRgb8(gradient.clone()), ImageFormat::Png),
            "thumbnail:16",
        ),
        (
            encoded(
                &DynamicImage::ImageRgb8(gradient.clone()),
                ImageFormat::Jpeg,
            ),
            "rotate:90|grayscale",
        ),
        (
            encoded(&DynamicImage::ImageRgb8(gradient), ImageFormat::WebP),
            "crop:4,4,20,10",
        ),
        (
            encoded(&DynamicImage::ImageRgba8(clear.clone()), ImageFormat::Png),
            "flip:h@jpeg",
        ),
        (
            encoded(&DynamicImage::ImageRgba8(clear), ImageFormat::WebP),
            "blur:1.4@webp",
        ),
        (
            encoded(&DynamicImage::ImageLuma8(strip), ImageFormat::Png),
            "resize:64x64",
        ),
        (
            encoded(
                &DynamicImage::ImageRgb16(
                    DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 8, Rgb([9, 9, 9]))).to_rgb16(),
                ),
                ImageFormat::Png,
            ),
            "blur:20|thumbnail:4@webp",
        ),
    ];
    for (original, spec) in &originals {
        let parsed = images::spec::parse(spec).unwrap();
        let original = Original::File(original);
        let seed = upload::write(parsed.operations(), parsed.format(), &original).unwrap();
        let read = upload::read(&seed).unwrap();
        assert_eq!(read.operations, parsed.operations());
        assert_eq!(read.format, parsed.format());
        assert_eq!(read.original, original);
        save(dir, &seed);
    }
    // Drawn originals: the fuzzer changes their size and colour type at will.
    for (width, height, color, pixels, spec) in [
        (
            64,
            48,
            ExtendedColorType::Rgb8,
            &b"\x10\x80\xf0\x33"[..],
            "thumbnail:20|rotate:270",
        ),
        (
            16,
            16,
            ExtendedColorType::La16,
            &b"\x00\xff\x7f"[..],
            "blur:6@jpeg",
        ),
    ] {
        let parsed = images::spec::parse(spec).unwrap();
        let original = Original::Drawn {
            width,
            height,
            color,
            pixels,
        };
        let seed = upload::write(parsed.operations(), parsed.format(), &original).unwrap();
        assert_eq!(upload::read(&seed).unwrap().original, original);
        save(dir, &seed);
    }
    // Every operation reads back as written.
    let every = [
        Operation::Thumbnail { size: 512 },
        Operation::Resize {
            width: 512,
            height: 1,
        },
        Operation::Grayscale,
        Operation::Blur { sigma: 50.0 },
        Operation::Rotate(Rotation::ThreeQuarters),
        Operation::Flip(Flip::Vertical),
        Operation::Crop {
            x: 0,
            y: 511,
            width: 1,
            height: 511,
        },
    ];
    for chunk in every.chunks(3) {
        let seed = upload::write(chunk, OutputFormat::Webp, &Original::File(b"")).unwrap();
        assert_eq!(upload::read(&seed).unwrap().operations, chunk);
    }
}

/// A fixed UUID v7, so that seeds do not change from one run to the next.
fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0196_2f4e_8a3b_7c1d_9e2f_3a4b_5c6d_0000 + n)
}

fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn specs(dir: &Path) {
    for seed in [
        "thumbnail:128",
        "grayscale|rotate:90@webp",
        "crop:0,0,10,10@jpeg\nresize:800x600",
        " blur : 2.50 | flip:h @ png\nblur:2.5\nthumbnail:64@jpeg",
        "rotate:180|rotate:270|flip:v|grayscale|blur:0.5|resize:1x8192|crop:1,2,3,4",
    ] {
        save(dir, seed.as_bytes());
    }
}

/// Writes `seed` under a name made of its content's hash, as libFuzzer names its own finds.
fn save(dir: &Path, seed: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let path: PathBuf = dir.join(format!("seed-{:016x}", fnv1a(seed)));
    std::fs::write(&path, seed).unwrap();
    println!("{} ({} bytes)", path.display(), seed.len());
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
