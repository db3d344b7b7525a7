//! A spec's operations applied in order to a decoded image. Each step's output size, and the
//! largest buffer it allocates on the way, is checked against the limits before it runs.

use std::borrow::Cow;

use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView};

use super::encode::encode;
use super::{Decoded, Limits, ProcessError, Rendered};
use crate::spec::{Flip, Operation, Rotation, VariantSpec};

/// Sigmas up to this use an exact Gaussian kernel; above it the kernel (about 6 sigma wide)
/// would make a large image take minutes, so a linear-time three-box approximation is used.
const EXACT_BLUR_MAX_SIGMA: f32 = 4.0;

/// Bytes per pixel of the buffer `image`'s resize samples into first (RGBA of `f32`).
const RESIZE_PASS_BYTES_PER_PIXEL: u64 = 16;

/// Applies `spec`'s operations in order to a decoded original and encodes the result. Each
/// step's output size is checked against `limits` before it is allocated.
pub fn render_decoded(
    original: &Decoded,
    spec: &VariantSpec,
    limits: &Limits,
) -> Result<Rendered, ProcessError> {
    let mut image = Cow::Borrowed(original.image());
    for operation in spec.operations() {
        let from = image.dimensions();
        let (width, height) = output_size(operation, from)?;
        let bytes = working_bytes(
            operation,
            from,
            (width, height),
            image.color().bytes_per_pixel(),
        );
        limits.check_size(width, height, bytes)?;
        image = Cow::Owned(apply(operation, &image, width, height));
    }
    let format = spec.format();
    Ok(Rendered {
        bytes: encode(&image, format)?,
        width: image.width(),
        height: image.height(),
        format,
    })
}

/// The size `operation` turns a `width`×`height` image into, refusing a crop out of bounds.
fn output_size(
    operation: &Operation,
    (width, height): (u32, u32),
) -> Result<(u32, u32), ProcessError> {
    Ok(match *operation {
        Operation::Thumbnail { size } => fit_inside(width, height, size),
        Operation::Resize {
            width: w,
            height: h,
        } => (w, h),
        Operation::Grayscale | Operation::Blur { .. } | Operation::Flip(_) => (width, height),
        Operation::Rotate(Rotation::Half) => (width, height),
        Operation::Rotate(Rotation::Quarter | Rotation::ThreeQuarters) => (height, width),
        Operation::Crop {
            x,
            y,
            width: crop_width,
            height: crop_height,
        } => {
            let inside = u64::from(x) + u64::from(crop_width) <= u64::from(width)
                && u64::from(y) + u64::from(crop_height) <= u64::from(height);
            if !inside {
                return Err(ProcessError::CropOutOfBounds {
                    x,
                    y,
                    crop_width,
                    crop_height,
                    width,
                    height,
                });
            }
            (crop_width, crop_height)
        }
    })
}

/// The largest pixel buffer `operation` allocates to turn a `from` image into a `to` one with
/// `bytes_per_pixel`: the result, or a resize's first pass where that is larger. `image`
/// resizes vertically first, into a buffer as wide as the original and as tall as the result
/// in 32-bit float RGBA whatever the image's colour type, so stretching a thin strip (an
/// 8192×1 grey PNG of a few hundred bytes to 1×8192) needs a gigabyte for an 8 KiB result.
fn working_bytes(
    operation: &Operation,
    from: (u32, u32),
    to: (u32, u32),
    bytes_per_pixel: u8,
) -> u64 {
    let result = u64::from(to.0) * u64::from(to.1) * u64::from(bytes_per_pixel);
    match operation {
        // To the same size, `resize` copies.
        Operation::Resize { .. } if from != to => {
            result.max(u64::from(from.0) * u64::from(to.1) * RESIZE_PASS_BYTES_PER_PIXEL)
        }
        _ => result,
    }
}

/// The largest size with the aspect ratio of `width`×`height` that fits inside size×size,
/// rounding the shorter side to the nearest pixel (at least 1); an image that already fits
/// is left as it is.
fn fit_inside(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= size && height <= size {
        return (width, height);
    }
    let scale = |short: u32, long: u32| {
        let scaled = (u64::from(short) * u64::from(size) + u64::from(long) / 2) / u64::from(long);
        u32::try_from(scaled).unwrap_or(size).max(1)
    };
    if width >= height {
        (size, scale(height, width))
    } else {
        (scale(width, height), size)
    }
}

fn apply(operation: &Operation, image: &DynamicImage, width: u32, height: u32) -> DynamicImage {
    match *operation {
        // Downscaling only: each source pixel feeds one output pixel (an area average).
        Operation::Thumbnail { .. } if (width, height) == image.dimensions() => image.clone(),
        Operation::Thumbnail { .. } => image.thumbnail_exact(width, height),
        Operation::Resize { .. } => image.resize_exact(width, height, FilterType::CatmullRom),
        Operation::Grayscale => image.grayscale(),
        Operation::Blur { sigma } if sigma <= EXACT_BLUR_MAX_SIGMA => image.blur(sigma),
        Operation::Blur { sigma } => image.fast_blur(sigma),
        Operation::Rotate(Rotation::Quarter) => image.rotate90(),
        Operation::Rotate(Rotation::Half) => image.rotate180(),
        Operation::Rotate(Rotation::ThreeQuarters) => image.rotate270(),
        Operation::Flip(Flip::Horizontal) => image.fliph(),
        Operation::Flip(Flip::Vertical) => image.flipv(),
        Operation::Crop { x, y, .. } => image.crop_imm(x, y, width, height),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use image::{ColorType, GrayImage, ImageFormat, RgbImage};

    use super::*;
    use crate::process::fixtures::{encoded, failure, gradient, jpeg, png, rendered, reread};

    #[test]
    fn thumbnails_fit_inside_the_box_keeping_the_aspect_ratio() {
        for original in [png(), jpeg()] {
            let r = rendered(&original, "thumbnail:128");
            assert_eq!((r.width, r.height), (128, 85)); // 200 × 128/300 = 85.3
            reread(&r);
        }
        assert_eq!(fit_inside(200, 300, 128), (85, 128));
        assert_eq!(fit_inside(300, 200, 3), (3, 2)); // 2.0
        assert_eq!(fit_inside(1000, 1, 10), (10, 1)); // never 0
        assert_eq!(fit_inside(100, 100, 64), (64, 64));
        assert_eq!(fit_inside(300, 200, 4096), (300, 200)); // never enlarged
        assert_eq!(fit_inside(1000, 3, 100), (100, 1)); // 0.3 rounds to 0, kept at 1
        assert_eq!(fit_inside(1000, 5, 100), (100, 1)); // 0.5 rounds up ... to 1
        assert_eq!(fit_inside(1000, 15, 100), (100, 2)); // 1.5 rounds up to 2
    }

    #[test]
    fn resize_is_exact() {
        let r = rendered(&png(), "resize:64x48");
        assert_eq!((r.width, r.height), (64, 48));
        reread(&r);
        let r = rendered(&png(), "resize:600x50");
        assert_eq!((r.width, r.height), (600, 50));
    }

    #[test]
    fn rotations_swap_dimensions_by_quarters() {
        for (spec, size) in [
            ("rotate:90", (200, 300)),
            ("rotate:180", (300, 200)),
            ("rotate:270", (200, 300)),
        ] {
            let r = rendered(&png(), spec);
            assert_eq!((r.width, r.height), size, "{spec}");
        }
        // Clockwise: the top-left corner ends up top-right.
        let turned = reread(&rendered(&png(), "rotate:90")).to_rgb8();
        assert_eq!(
            turned.get_pixel(199, 0),
            gradient().to_rgb8().get_pixel(0, 0)
        );
    }

    #[test]
    fn crop_takes_the_rectangle() {
        let r = rendered(&png(), "crop:10,10,50,40");
        assert_eq!((r.width, r.height), (50, 40));
        let cropped = reread(&r).to_rgb8();
        assert_eq!(
            cropped.get_pixel(0, 0),
            gradient().to_rgb8().get_pixel(10, 10)
        );
        let r = rendered(&png(), "crop:0,0,300,200");
        assert_eq!((r.width, r.height), (300, 200));
    }

    #[test]
    fn crop_outside_the_image_names_the_bounds() {
        let error = failure(&png(), "crop:250,0,51,10", &Limits::default());
        assert_eq!(
            error.to_string(),
            "crop 250,0,51,10 falls outside the 300×200 image \
             (x + width must be at most 300, y + height at most 200)"
        );
        let error = failure(&png(), "crop:4294967295,0,1,1", &Limits::default());
        assert!(
            matches!(error, ProcessError::CropOutOfBounds { .. }),
            "{error}"
        );
        // Bounds are those of the image at that step of the chain.
        let error = failure(&png(), "thumbnail:100|crop:0,0,100,100", &Limits::default());
        assert!(error.to_string().contains("100×67 image"), "{error}");
    }

    #[test]
    fn grayscale_keeps_luma_only() {
        let r = rendered(&png(), "grayscale");
        assert_eq!((r.width, r.height), (300, 200));
        assert_eq!(reread(&r).color(), ColorType::L8);
        let r = rendered(&jpeg(), "grayscale@jpeg");
        assert_eq!(reread(&r).color(), ColorType::L8);
    }

    #[test]
    fn blur_keeps_the_size_and_smooths() {
        for spec in ["blur:1.5", "blur:20"] {
            let r = rendered(&png(), spec);
            assert_eq!((r.width, r.height), (300, 200));
            let blurred = reread(&r).to_rgb8();
            // The blue channel wraps from 255 to 0 along a diagonal; blur softens the edge.
            let original = gradient().to_rgb8();
            let edge = |image: &RgbImage| {
                i32::from(image.get_pixel(156, 100).0[2])
                    - i32::from(image.get_pixel(155, 100).0[2])
            };
            assert!(edge(&blurred).abs() < edge(&original).abs(), "{spec}");
        }
    }

    #[test]
    fn flips_mirror() {
        let original = gradient().to_rgb8();
        let h = reread(&rendered(&png(), "flip:h")).to_rgb8();
        assert_eq!(h.get_pixel(299, 0), original.get_pixel(0, 0));
        let v = reread(&rendered(&png(), "flip:v")).to_rgb8();
        assert_eq!(v.get_pixel(0, 199), original.get_pixel(0, 0));
        assert_eq!(h.dimensions(), (300, 200));
    }

    #[test]
    fn chains_apply_in_order() {
        let r = rendered(&png(), "crop:0,0,100,50|rotate:90|thumbnail:10@webp");
        // 100×50 → 50×100 → fits 10×10 as 5×10.
        assert_eq!((r.width, r.height), (5, 10));
        reread(&r);
    }

    #[test]
    fn outputs_over_the_limits_are_refused_before_allocating() {
        let limits = Limits {
            max_width: 1000,
            max_height: 1000,
            ..Limits::default()
        };
        let error = failure(&png(), "resize:2000x10", &limits);
        assert!(
            matches!(error, ProcessError::TooLarge { width: 2000, .. }),
            "{error}"
        );
        let limits = Limits {
            max_alloc: 100_000,
            ..Limits::default()
        };
        // 300×200 RGB is 180,000 bytes, so even the original is refused.
        let error = failure(&png(), "grayscale", &limits);
        assert!(
            matches!(error, ProcessError::TooMuchMemory { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_resize_counts_its_first_pass_against_the_memory_cap() {
        // A 1-pixel-high grey strip stretched to a column: the result is tiny, but the first
        // pass is as wide as the strip and as tall as the column, 16 bytes a pixel.
        let strip = |width| {
            encoded(
                &DynamicImage::ImageLuma8(GrayImage::new(width, 1)),
                ImageFormat::Png,
            )
        };
        let error = failure(&strip(8192), "resize:1x8192", &Limits::default());
        assert_eq!(
            error,
            ProcessError::TooMuchMemory {
                width: 1,
                height: 8192,
                bytes: 8192 * 8192 * 16,
                max_alloc: 256 * 1024 * 1024,
            }
        );
        // The fuzzer's find (`fuzz/corpus/image/crash-resize-first-pass`), at its limits.
        let limits = Limits {
            max_width: 256,
            max_height: 256,
            max_alloc: 256 * 1024,
            max_input_bytes: 64 * 1024,
        };
        let error = failure(&strip(197), "resize:1x251@webp", &limits);
        assert!(
            matches!(error, ProcessError::TooMuchMemory { bytes: 791_152, .. }),
            "{error}"
        );
        // Within the cap, the same stretch renders.
        let r = rendered(&strip(64), "resize:1x64");
        assert_eq!((r.width, r.height), (1, 64));
    }
}
