//! Decoding an original and rendering variants from it. Pure (bytes in, bytes out) and
//! CPU-bound: callers on an async runtime run it on a blocking thread.
//!
//! Input is PNG, JPEG or WebP, recognised by content, never by name. Decoding is guarded by
//! [`Limits`]: the header's dimensions and the decoded size are checked before the pixel
//! buffer is allocated, so a small file declaring a huge image (a decompression bomb) is
//! refused cheaply. Decoded images are normalised to 8 bits per channel (L, LA, RGB or
//! RGBA), and JPEG's EXIF orientation is applied, so every variant is drawn upright.
//!
//! Every [`ProcessError`] is the image's (or the spec's) fault: retrying cannot help.

use std::borrow::Cow;
use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::imageops::FilterType;
use image::{
    ColorType, DynamicImage, GenericImageView, GrayImage, ImageDecoder, ImageError, ImageFormat,
    ImageReader, RgbImage, metadata::Orientation,
};

use crate::spec::{Flip, Operation, OutputFormat, Rotation, VariantSpec};

/// JPEG output quality.
pub const JPEG_QUALITY: u8 = 85;

/// Sigmas up to this use an exact Gaussian kernel; above it the kernel (about 6 sigma wide)
/// would make a large image take minutes, so a linear-time three-box approximation is used.
const EXACT_BLUR_MAX_SIGMA: f32 = 4.0;

/// Bytes per pixel of the buffer `image`'s resize samples into first (RGBA of `f32`).
const RESIZE_PASS_BYTES_PER_PIXEL: u64 = 16;

/// What one image may cost to decode and render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Widest image accepted, as declared or after any operation.
    pub max_width: u32,
    /// Tallest image accepted, as declared or after any operation.
    pub max_height: u32,
    /// Largest pixel buffer, in bytes, of the decoded image or of any intermediate one.
    pub max_alloc: u64,
    /// Largest original file, in bytes.
    pub max_input_bytes: u64,
}

impl Default for Limits {
    /// 8192×8192 pixels, 256 MiB of pixels, 64 MiB of file.
    fn default() -> Self {
        Self {
            max_width: 8192,
            max_height: 8192,
            max_alloc: 256 * 1024 * 1024,
            max_input_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Limits {
    fn check_size(&self, width: u32, height: u32, bytes: u64) -> Result<(), ProcessError> {
        if width > self.max_width || height > self.max_height {
            return Err(ProcessError::TooLarge {
                width,
                height,
                max_width: self.max_width,
                max_height: self.max_height,
            });
        }
        if bytes > self.max_alloc {
            return Err(ProcessError::TooMuchMemory {
                width,
                height,
                bytes,
                max_alloc: self.max_alloc,
            });
        }
        Ok(())
    }
}

/// Why an image could not be decoded or a variant rendered; the text is the failure reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is {bytes} bytes; at most {max} are accepted")]
    InputTooLarge { bytes: u64, max: u64 },
    #[error("not a PNG, JPEG or WebP image")]
    UnknownFormat,
    #[error("{format} images are not supported: {detail}")]
    Unsupported { format: String, detail: String },
    #[error("the image is {width}×{height} pixels; at most {max_width}×{max_height} are accepted")]
    TooLarge {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
    },
    #[error(
        "a {width}×{height} image needs {bytes} bytes of memory; at most {max_alloc} are allowed"
    )]
    TooMuchMemory {
        width: u32,
        height: u32,
        bytes: u64,
        max_alloc: u64,
    },
    #[error("the {format} data is truncated")]
    Truncated { format: String },
    #[error("the {format} data is corrupt: {detail}")]
    Corrupt { format: String, detail: String },
    #[error(
        "crop {x},{y},{crop_width},{crop_height} falls outside the {width}×{height} image \
         (x + width must be at most {width}, y + height at most {height})"
    )]
    CropOutOfBounds {
        x: u32,
        y: u32,
        crop_width: u32,
        crop_height: u32,
        width: u32,
        height: u32,
    },
    #[error("encoding {format} failed: {detail}")]
    Encode {
        format: OutputFormat,
        detail: String,
    },
}

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

/// One encoded variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub format: OutputFormat,
}

/// Decodes `original` and renders `spec` from it. To render several variants of one image,
/// [`decode`] once and call [`render_decoded`] for each.
pub fn render(
    original: &[u8],
    spec: &VariantSpec,
    limits: &Limits,
) -> Result<Rendered, ProcessError> {
    render_decoded(&decode(original, limits)?, spec, limits)
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

/// Applies `spec`'s operations in order to a decoded original and encodes the result. Each
/// step's output size is checked against `limits` before it is allocated.
pub fn render_decoded(
    original: &Decoded,
    spec: &VariantSpec,
    limits: &Limits,
) -> Result<Rendered, ProcessError> {
    let mut image = Cow::Borrowed(&original.image);
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

fn encode(image: &DynamicImage, format: OutputFormat) -> Result<Vec<u8>, ProcessError> {
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

    use image::{GrayImage, Rgb, RgbaImage};

    use super::*;
    use crate::spec::parse;

    /// A 300×200 RGB gradient with a little structure in every channel.
    fn gradient() -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(300, 200, |x, y| {
            Rgb([
                u8::try_from(x * 255 / 299).unwrap(),
                u8::try_from(y * 255 / 199).unwrap(),
                u8::try_from((x + y) % 256).unwrap(),
            ])
        }))
    }

    fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    fn png() -> Vec<u8> {
        encoded(&gradient(), ImageFormat::Png)
    }

    fn jpeg() -> Vec<u8> {
        encoded(&gradient(), ImageFormat::Jpeg)
    }

    fn rendered(original: &[u8], spec: &str) -> Rendered {
        render(original, &parse(spec).unwrap(), &Limits::default())
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    fn failure(original: &[u8], spec: &str, limits: &Limits) -> ProcessError {
        match render(original, &parse(spec).unwrap(), limits) {
            Ok(r) => panic!("{spec} rendered {}×{}", r.width, r.height),
            Err(e) => e,
        }
    }

    /// Decodes `rendered` again and checks it is what it claims to be.
    fn reread(rendered: &Rendered) -> DynamicImage {
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
    fn bomb(width: u32, height: u32) -> Vec<u8> {
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
