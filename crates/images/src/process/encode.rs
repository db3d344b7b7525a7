//! Encoding a rendered image as PNG, JPEG or WebP; JPEG, having no alpha channel, gets its
//! transparency flattened onto white.

use std::borrow::Cow;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, GrayImage, RgbImage};

use super::ProcessError;
use crate::spec::OutputFormat;

/// JPEG output quality.
pub const JPEG_QUALITY: u8 = 85;

pub(super) fn encode(image: &DynamicImage, format: OutputFormat) -> Result<Vec<u8>, ProcessError> {
    let mut bytes = Vec::new();
    let result = match format {
        OutputFormat::Png => image.write_with_encoder(PngEncoder::new(&mut bytes)),
        OutputFormat::Jpeg => flatten(image)
            .write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)),
        OutputFormat::Webp => image.write_with_encoder(WebPEncoder::new_lossless(&mut bytes)),
    };
    result.map_err(|e| ProcessError::Encode {
        format,
        detail: e.to_string(),
    })?;
    Ok(bytes)
}

/// JPEG has no alpha channel: transparent pixels are composed onto white, so a transparent
/// background comes out white rather than whatever colour its invisible pixels held.
fn flatten(image: &DynamicImage) -> Cow<'_, DynamicImage> {
    let over_white = |value: u8, alpha: u8| {
        let (value, alpha) = (u16::from(value), u16::from(alpha));
        let mixed = (value * alpha + 255 * (255 - alpha) + 127) / 255;
        u8::try_from(mixed).unwrap_or(u8::MAX)
    };
    match image {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => Cow::Borrowed(image),
        DynamicImage::ImageLumaA8(gray) => {
            let flat = GrayImage::from_fn(gray.width(), gray.height(), |x, y| {
                let [value, alpha] = gray.get_pixel(x, y).0;
                image::Luma([over_white(value, alpha)])
            });
            Cow::Owned(DynamicImage::ImageLuma8(flat))
        }
        other => {
            let rgba = other.to_rgba8();
            let flat = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                let [r, g, b, alpha] = rgba.get_pixel(x, y).0;
                image::Rgb([
                    over_white(r, alpha),
                    over_white(g, alpha),
                    over_white(b, alpha),
                ])
            });
            Cow::Owned(DynamicImage::ImageRgb8(flat))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use image::{ImageFormat, RgbaImage};

    use super::*;
    use crate::process::fixtures::{encoded, jpeg, png, rendered, reread};

    #[test]
    fn every_output_format_decodes_back_as_claimed() {
        for original in [png(), jpeg()] {
            for (spec, format) in [
                ("thumbnail:64", OutputFormat::Png),
                ("thumbnail:64@png", OutputFormat::Png),
                ("thumbnail:64@jpeg", OutputFormat::Jpeg),
                ("thumbnail:64@webp", OutputFormat::Webp),
                ("grayscale@webp", OutputFormat::Webp),
            ] {
                let r = rendered(&original, spec);
                assert_eq!(r.format, format);
                reread(&r);
            }
        }
    }

    #[test]
    fn jpeg_output_flattens_transparency_onto_white() {
        let clear =
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(8, 8, image::Rgba([0, 0, 0, 0])));
        let r = rendered(&encoded(&clear, ImageFormat::Png), "flip:h@jpeg");
        let flat = reread(&r).to_rgb8();
        assert!(
            flat.pixels().all(|p| p.0.iter().all(|&c| c > 245)),
            "{:?}",
            flat.get_pixel(0, 0)
        );
        // PNG and WebP keep the alpha channel.
        let r = rendered(&encoded(&clear, ImageFormat::Png), "flip:h@webp");
        assert!(reread(&r).color().has_alpha());
    }
}
