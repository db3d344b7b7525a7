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
//!
//! The modules, one per stage:
//! - `decode`: an original's bytes to a [`Decoded`] image within the limits, refusing
//!   unknown formats, bombs, truncated and corrupt files.
//! - `operations`: a spec's operations applied to a decoded image, each step's size checked
//!   before it is allocated ([`render_decoded`]).
//! - `encode`: the result written as PNG, JPEG or WebP.
//!
//! This module holds what they share: the limits, the error and the rendered variant.

mod decode;
mod encode;
#[cfg(test)]
mod fixtures;
mod operations;

pub use self::decode::{Decoded, decode};
pub use self::encode::JPEG_QUALITY;
pub use self::operations::render_decoded;

use crate::spec::{OutputFormat, VariantSpec};

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
