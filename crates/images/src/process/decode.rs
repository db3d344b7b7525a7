//! Decoding an original: format recognised by content, dimensions and memory checked from the
//! header before any pixel is allocated, 8-bit normalisation and EXIF orientation, and the
//! decoder's errors told apart (truncated, corrupt, unsupported).

use std::io::Cursor;

use image::{
    ColorType, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader,
    metadata::Orientation,
};

use super::{Limits, ProcessError};

/// A decoded original, ready to render any number of variants from.
#[derive(Debug, Clone)]
pub struct Decoded {
    image: DynamicImage,
    format: ImageFormat,
}

impl Decoded {
    pub fn width(&self) -> u32 {
        self.image.width()
    }

    pub fn height(&self) -> u32 {
        self.image.height()
    }

    /// The format the original was in.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    pub fn image(&self) -> &DynamicImage {
        &self.image
    }
}

/// Decodes a PNG, JPEG or WebP file within `limits`.
pub fn decode(original: &[u8], limits: &Limits) -> Result<Decoded, ProcessError> {
    let len = u64::try_from(original.len()).unwrap_or(u64::MAX);
    if len == 0 {
        return Err(ProcessError::Empty);
    }
    if len > limits.max_input_bytes {
        return Err(ProcessError::InputTooLarge {
            bytes: len,
            max: limits.max_input_bytes,
        });
    }
    let reader = ImageReader::new(Cursor::new(original))
        .with_guessed_format()
        .map_err(|_| ProcessError::UnknownFormat)?;
    let format = match reader.format() {
        Some(format @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => format,
        _ => return Err(ProcessError::UnknownFormat),
    };
    let name = format_name(format);
    // `image` decodes JPEG leniently, painting a truncated scan grey instead of failing.
    if format == ImageFormat::Jpeg && !jpeg_is_complete(original) {
        return Err(ProcessError::Truncated {
            format: name.to_owned(),
        });
    }

    // First only the memory cap, so the declared dimensions can be read and named in the
    // refusal; then the full limits, which the decoders enforce again on their own.
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc);
    let mut reader = reader;
    reader.limits(image_limits.clone());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(name, e, limits))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ProcessError::Corrupt {
            format: name.to_owned(),
            detail: format!("it declares {width}×{height} pixels"),
        });
    }
    limits.check_size(width, height, decoder.total_bytes())?;
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    decoder
        .set_limits(image_limits)
        .map_err(|e| decode_error(name, e, limits))?;

    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| decode_error(name, e, limits))?;
    image.apply_orientation(orientation);
    Ok(Decoded {
        image: to_8_bit(image),
        format,
    })
}

/// Every encoder here takes 8-bit L, LA, RGB and RGBA; anything deeper is narrowed once.
fn to_8_bit(image: DynamicImage) -> DynamicImage {
    match image.color() {
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8 => image,
        ColorType::L16 => DynamicImage::ImageLuma8(image.to_luma8()),
        ColorType::La16 => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        color if color.has_alpha() => DynamicImage::ImageRgba8(image.to_rgba8()),
        _ => DynamicImage::ImageRgb8(image.to_rgb8()),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        _ => "image",
    }
}

fn decode_error(format: &str, error: ImageError, limits: &Limits) -> ProcessError {
    match error {
        ImageError::Limits(limit) => ProcessError::Corrupt {
            format: format.to_owned(),
            detail: format!(
                "{limit} (limits: {}×{} pixels, {} bytes)",
                limits.max_width, limits.max_height, limits.max_alloc
            ),
        },
        ImageError::Unsupported(unsupported) => ProcessError::Unsupported {
            format: format.to_owned(),
            detail: unsupported.to_string(),
        },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ProcessError::Truncated {
                format: format.to_owned(),
            }
        }
        other => {
            let detail = other.to_string();
            if detail.contains("EOF") || detail.contains("end of file") {
                ProcessError::Truncated {
                    format: format.to_owned(),
                }
            } else {
                ProcessError::Corrupt {
                    format: format.to_owned(),
                    detail,
                }
            }
        }
    }
}

/// Whether a JPEG stream runs from its start-of-image marker through every segment and
/// entropy-coded scan to an end-of-image marker. Segments are skipped by their lengths, so an
/// EXIF thumbnail's own end marker does not count; `0xFF` in scan data is always followed by
/// `0x00` (stuffing) or a restart marker, so the end marker cannot hide in it.
fn jpeg_is_complete(data: &[u8]) -> bool {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    let is_restart = |marker: u8| (0xD0..=0xD7).contains(&marker);
    if data.len() < 4 || data[0] != 0xFF || data[1] != SOI {
        return false;
    }
    let mut i = 2;
    loop {
        // Between segments: skip anything up to the next marker, and fill bytes.
        while i < data.len() && data[i] != 0xFF {
            i += 1;
        }
        while i + 1 < data.len() && data[i + 1] == 0xFF {
            i += 1;
        }
        let Some(&marker) = data.get(i + 1) else {
            return false;
        };
        match marker {
            EOI => return true,
            0x01 | 0x00 => i += 2,
            marker if is_restart(marker) => i += 2,
            marker => {
                let (Some(&high), Some(&low)) = (data.get(i + 2), data.get(i + 3)) else {
                    return false;
                };
                let length = usize::from(u16::from_be_bytes([high, low]));
                if length < 2 {
                    return false;
                }
                i += 2 + length;
                if marker == SOS {
                    // Entropy-coded data runs to the first marker other than a restart.
                    loop {
                        match data
                            .get(i..)
                            .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
                        {
                            None => return false,
                            Some(offset) => i += offset,
                        }
                        match data.get(i + 1) {
                            None => return false,
                            Some(&0x00) => i += 2,
                            Some(&next) if is_restart(next) => i += 2,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::process::fixtures::{bomb, encoded, failure, gradient, jpeg, png, rendered, reread};
    use crate::process::render_decoded;
    use crate::spec::parse;

    #[test]
    fn sixteen_bit_originals_are_narrowed() {
        let deep = DynamicImage::ImageRgb16(gradient().to_rgb16());
        let r = rendered(&encoded(&deep, ImageFormat::Png), "thumbnail:30@webp");
        assert_eq!((r.width, r.height), (30, 20));
        reread(&r);
    }

    #[test]
    fn decode_once_render_many() {
        let decoded = decode(&jpeg(), &Limits::default()).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (300, 200));
        assert_eq!(decoded.format(), ImageFormat::Jpeg);
        for spec in ["thumbnail:10", "grayscale@jpeg", "rotate:90@webp"] {
            let r = render_decoded(&decoded, &parse(spec).unwrap(), &Limits::default()).unwrap();
            reread(&r);
        }
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let bomb = bomb(100_000, 100_000);
        assert!(bomb.len() < 100, "{} bytes", bomb.len());
        let error = failure(&bomb, "thumbnail:128", &Limits::default());
        assert_eq!(
            error,
            ProcessError::TooLarge {
                width: 100_000,
                height: 100_000,
                max_width: 8192,
                max_height: 8192,
            }
        );
        assert_eq!(
            error.to_string(),
            "the image is 100000×100000 pixels; at most 8192×8192 are accepted"
        );
    }

    #[test]
    fn a_bomb_within_the_dimension_limits_is_refused_by_memory() {
        // 8000×8000 RGBA is 256,000,000 bytes: over a 64 MiB cap.
        let limits = Limits {
            max_alloc: 64 * 1024 * 1024,
            ..Limits::default()
        };
        let error = failure(&bomb(8000, 8000), "grayscale", &limits);
        assert_eq!(
            error,
            ProcessError::TooMuchMemory {
                width: 8000,
                height: 8000,
                bytes: 256_000_000,
                max_alloc: 64 * 1024 * 1024,
            }
        );
        // Even with the dimension limits lifted, the default memory cap holds.
        let limits = Limits {
            max_width: u32::MAX,
            max_height: u32::MAX,
            ..Limits::default()
        };
        let error = failure(&bomb(100_000, 100_000), "grayscale", &limits);
        assert!(
            matches!(error, ProcessError::TooMuchMemory { .. }),
            "{error}"
        );
    }

    #[test]
    fn truncated_files_are_refused() {
        for (original, format) in [(png(), "PNG"), (jpeg(), "JPEG")] {
            let half = &original[..original.len() / 2];
            let error = failure(half, "thumbnail:10", &Limits::default());
            assert_eq!(
                error,
                ProcessError::Truncated {
                    format: format.into()
                },
                "{error}"
            );
            assert_eq!(error.to_string(), format!("the {format} data is truncated"));
        }
        // Only the header of a PNG is left.
        let error = failure(&png()[..40], "grayscale", &Limits::default());
        assert!(
            matches!(
                error,
                ProcessError::Truncated { .. } | ProcessError::Corrupt { .. }
            ),
            "{error}"
        );
    }

    #[test]
    fn garbage_and_unknown_formats_are_refused() {
        let error = failure(
            b"hello, this is not an image",
            "grayscale",
            &Limits::default(),
        );
        assert_eq!(error, ProcessError::UnknownFormat);
        assert_eq!(error.to_string(), "not a PNG, JPEG or WebP image");
        assert_eq!(
            failure(b"", "grayscale", &Limits::default()),
            ProcessError::Empty
        );
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(
            failure(gif, "grayscale", &Limits::default()),
            ProcessError::UnknownFormat
        );
        // A PNG signature followed by noise.
        let mut noise = png()[..8].to_vec();
        noise.extend((0..200u8).map(|i| i.wrapping_mul(37)));
        let error = failure(&noise, "grayscale", &Limits::default());
        assert!(
            matches!(
                error,
                ProcessError::Corrupt { .. } | ProcessError::Truncated { .. }
            ),
            "{error}"
        );
        // A corrupted PNG (the image data's CRC no longer matches).
        let mut bad = png();
        let middle = bad.len() / 2;
        bad[middle] ^= 0xFF;
        let error = failure(&bad, "grayscale", &Limits::default());
        assert!(matches!(error, ProcessError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn an_oversized_file_is_refused_before_decoding() {
        let limits = Limits {
            max_input_bytes: 100,
            ..Limits::default()
        };
        let error = failure(&png(), "grayscale", &limits);
        assert!(
            matches!(error, ProcessError::InputTooLarge { max: 100, .. }),
            "{error}"
        );
    }

    #[test]
    fn complete_jpegs_are_told_from_truncated_ones() {
        let whole = jpeg();
        assert!(jpeg_is_complete(&whole));
        // Trailing bytes after the end marker are harmless.
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"trailer");
        assert!(jpeg_is_complete(&trailing));
        for cut in [4, 20, whole.len() / 3, whole.len() - 2, whole.len() - 1] {
            assert!(!jpeg_is_complete(&whole[..cut]), "cut at {cut}");
        }
        assert!(!jpeg_is_complete(b"\xFF\xD8"));
    }
}
