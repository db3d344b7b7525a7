//! Test fixtures shared by the process modules' tests: a gradient in every format, a
//! decompression bomb, and helpers that render a spec and check the result decodes back.

#![allow(clippy::unwrap_used)]

use std::io::Cursor;

use image::{DynamicImage, GenericImageView, ImageFormat, Rgb, RgbImage, RgbaImage};

use super::{Limits, ProcessError, Rendered, render};
use crate::spec::{OutputFormat, parse};

/// A 300×200 RGB gradient with a little structure in every channel.
pub(super) fn gradient() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(300, 200, |x, y| {
        Rgb([
            u8::try_from(x * 255 / 299).unwrap(),
            u8::try_from(y * 255 / 199).unwrap(),
            u8::try_from((x + y) % 256).unwrap(),
        ])
    }))
}

pub(super) fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

pub(super) fn png() -> Vec<u8> {
    encoded(&gradient(), ImageFormat::Png)
}

pub(super) fn jpeg() -> Vec<u8> {
    encoded(&gradient(), ImageFormat::Jpeg)
}

pub(super) fn rendered(original: &[u8], spec: &str) -> Rendered {
    render(original, &parse(spec).unwrap(), &Limits::default())
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

pub(super) fn failure(original: &[u8], spec: &str, limits: &Limits) -> ProcessError {
    match render(original, &parse(spec).unwrap(), limits) {
        Ok(r) => panic!("{spec} rendered {}×{}", r.width, r.height),
        Err(e) => e,
    }
}

/// Decodes `rendered` again and checks it is what it claims to be.
pub(super) fn reread(rendered: &Rendered) -> DynamicImage {
    let expected = match rendered.format {
        OutputFormat::Png => ImageFormat::Png,
        OutputFormat::Jpeg => ImageFormat::Jpeg,
        OutputFormat::Webp => ImageFormat::WebP,
    };
    assert_eq!(image::guess_format(&rendered.bytes).unwrap(), expected);
    let image = image::load_from_memory(&rendered.bytes).unwrap();
    assert_eq!(
        image.dimensions(),
        (rendered.width, rendered.height),
        "claimed dimensions"
    );
    image
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

/// A real 1×1 PNG whose header is patched to declare `width`×`height`, with a valid CRC:
/// a few dozen bytes that would decode into gigabytes.
pub(super) fn bomb(width: u32, height: u32) -> Vec<u8> {
    let mut png = encoded(
        &DynamicImage::ImageRgba8(RgbaImage::new(1, 1)),
        ImageFormat::Png,
    );
    // Signature (8), then the IHDR chunk: length (4), type (4), width, height, ..., CRC.
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

#[test]
fn the_crc_is_the_png_one() {
    // CRC-32 of "IEND", as every PNG ends with.
    assert_eq!(crc32(b"IEND"), 0xAE42_6082);
}
