//! An upload for the `image` target: a variant spec from the front of the input, the
//! original file the rest.
//!
//! | field | shape |
//! |---|---|
//! | operations | 1 to 3, each a tag and its arguments: sizes and crops up to twice the limits' side, any blur the spec language takes |
//! | format | png, jpeg or webp |
//! | original | a file: the rest of the input, as it is; or a drawing: a width and height up to the limits, a colour type, and the rest of the input as its pixels, repeated, encoded as PNG |
//!
//! Drawn originals let the fuzzer vary the geometry the operations work on, which it could
//! not reach by mutating files: a PNG's header is guarded by a checksum.

use std::borrow::Cow;

use arbitrary::{Result, Unstructured};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use images::spec::{Flip, Operation, Rotation};
use images::{Limits, OutputFormat};

use crate::{be, byte};

/// The worker's [`Limits::default`] scaled down by 32 on each side (so by 1,024 in memory):
/// the same checks, at a size where one input takes a millisecond or so, not seconds.
pub const LIMITS: Limits = Limits {
    max_width: 256,
    max_height: 256,
    max_alloc: 256 * 1024,
    max_input_bytes: 64 * 1024,
};

const THUMBNAIL: u8 = 0;
const RESIZE: u8 = 1;
const GRAYSCALE: u8 = 2;
const BLUR: u8 = 3;
const ROTATE: u8 = 4;
const FLIP: u8 = 5;
const CROP: u8 = 6;
const OPERATIONS: u8 = 7;
/// Sizes and crop coordinates go up to twice the largest side: half of them fit, half not.
const RANGE: u32 = 2 * LIMITS.max_width;

const FILE: u8 = 0;
const DRAWN: u8 = 1;

/// The colour types a drawn original may have, all of which PNG stores.
const COLORS: [ExtendedColorType; 8] = [
    ExtendedColorType::L8,
    ExtendedColorType::La8,
    ExtendedColorType::Rgb8,
    ExtendedColorType::Rgba8,
    ExtendedColorType::L16,
    ExtendedColorType::La16,
    ExtendedColorType::Rgb16,
    ExtendedColorType::Rgba16,
];

/// A spec's parts and the original to render it from.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload<'a> {
    pub operations: Vec<Operation>,
    pub format: OutputFormat,
    pub original: Original<'a>,
}

/// The uploaded file, given or drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Original<'a> {
    File(&'a [u8]),
    Drawn {
        width: u32,
        height: u32,
        color: ExtendedColorType,
        pixels: &'a [u8],
    },
}

impl Original<'_> {
    /// The file as uploaded.
    pub fn file(&self) -> Cow<'_, [u8]> {
        match *self {
            Self::File(bytes) => Cow::Borrowed(bytes),
            Self::Drawn {
                width,
                height,
                color,
                pixels,
            } => {
                let bytes_per_pixel = usize::from(color.bits_per_pixel() / 8);
                let len = width as usize * height as usize * bytes_per_pixel;
                let buffer: Vec<u8> = match pixels {
                    [] => vec![0; len],
                    _ => pixels.iter().copied().cycle().take(len).collect(),
                };
                let mut file = Vec::new();
                PngEncoder::new_with_quality(
                    &mut file,
                    CompressionType::Fast,
                    FilterType::NoFilter,
                )
                .write_image(&buffer, width, height, color)
                .expect("a buffer of the right size encodes as PNG");
                Cow::Owned(file)
            }
        }
    }
}

impl Upload<'_> {
    /// The spec as a client would write it.
    pub fn spec(&self) -> String {
        let chain: Vec<String> = self.operations.iter().map(ToString::to_string).collect();
        format!("{}@{}", chain.join("|"), self.format)
    }
}

/// Reads an upload from fuzz input.
pub fn read(data: &[u8]) -> Result<Upload<'_>> {
    let mut u = Unstructured::new(data);
    let count = 1 + byte(&mut u)? % 3;
    let operations = (0..count)
        .map(|_| operation(&mut u))
        .collect::<Result<Vec<_>>>()?;
    let format = OutputFormat::ALL[usize::from(byte(&mut u)? % 3)];
    let original = match byte(&mut u)? % 2 {
        FILE => Original::File(u.take_rest()),
        _ => Original::Drawn {
            width: side(&mut u, LIMITS.max_width)?,
            height: side(&mut u, LIMITS.max_height)?,
            color: COLORS[usize::from(byte(&mut u)?) % COLORS.len()],
            pixels: u.take_rest(),
        },
    };
    Ok(Upload {
        operations,
        format,
        original,
    })
}

/// 1 to `max`.
fn side(u: &mut Unstructured<'_>, max: u32) -> Result<u32> {
    Ok(u32::from(u16::from_be_bytes(be(u)?)) % max + 1)
}

fn operation(u: &mut Unstructured<'_>) -> Result<Operation> {
    let any = |u: &mut Unstructured<'_>| -> Result<u32> {
        Ok(u32::from(u16::from_be_bytes(be(u)?)) % RANGE)
    };
    Ok(match byte(u)? % OPERATIONS {
        THUMBNAIL => Operation::Thumbnail {
            size: side(u, RANGE)?,
        },
        RESIZE => Operation::Resize {
            width: side(u, RANGE)?,
            height: side(u, RANGE)?,
        },
        GRAYSCALE => Operation::Grayscale,
        // 0.2 to 50 in steps of 0.2.
        BLUR => Operation::Blur {
            sigma: f32::from(byte(u)? % 250 + 1) / 5.0,
        },
        ROTATE => Operation::Rotate(
            [Rotation::Quarter, Rotation::Half, Rotation::ThreeQuarters][usize::from(byte(u)? % 3)],
        ),
        FLIP => Operation::Flip([Flip::Horizontal, Flip::Vertical][usize::from(byte(u)? % 2)]),
        _ => Operation::Crop {
            x: any(u)?,
            y: any(u)?,
            width: any(u)?.max(1),
            height: any(u)?.max(1),
        },
    })
}

/// Writes fuzz input that [`read`] turns back into `operations`, `format` and `original`.
/// Returns `None` for what this format cannot spell (more than 3 operations, a blur sigma
/// off its 0.2 grid, sizes or crop numbers over twice the limits' side).
pub fn write(
    operations: &[Operation],
    format: OutputFormat,
    original: &Original<'_>,
) -> Option<Vec<u8>> {
    let mut out = vec![
        u8::try_from(operations.len())
            .ok()
            .filter(|n| (1..=3).contains(n))?
            - 1,
    ];
    let less_one = |n: u32| Some(u16::try_from(n.checked_sub(1)?).ok()?.to_be_bytes());
    let within = |n: u32| (1..=RANGE).contains(&n).then(|| less_one(n)).flatten();
    let any = |n: u32| {
        Some(
            u16::try_from(n)
                .ok()
                .filter(|n| u32::from(*n) < RANGE)?
                .to_be_bytes(),
        )
    };
    for operation in operations {
        match *operation {
            Operation::Thumbnail { size } => {
                out.push(THUMBNAIL);
                out.extend(within(size)?);
            }
            Operation::Resize { width, height } => {
                out.push(RESIZE);
                out.extend(within(width)?);
                out.extend(within(height)?);
            }
            Operation::Grayscale => out.push(GRAYSCALE),
            Operation::Blur { sigma } => {
                let step = (sigma * 5.0).round();
                if !(1.0..=250.0).contains(&step) || step / 5.0 != sigma {
                    return None;
                }
                out.extend([BLUR, step as u8 - 1]);
            }
            Operation::Rotate(rotation) => out.extend([
                ROTATE,
                match rotation {
                    Rotation::Quarter => 0,
                    Rotation::Half => 1,
                    Rotation::ThreeQuarters => 2,
                },
            ]),
            Operation::Flip(flip) => out.extend([FLIP, u8::from(flip == Flip::Vertical)]),
            Operation::Crop {
                x,
                y,
                width,
                height,
            } => {
                out.push(CROP);
                for n in [x, y, width, height] {
                    out.extend(any(n)?);
                }
            }
        }
    }
    let format = OutputFormat::ALL.iter().position(|f| *f == format)?;
    out.push(u8::try_from(format).ok()?);
    match *original {
        Original::File(bytes) => {
            out.push(FILE);
            out.extend_from_slice(bytes);
        }
        Original::Drawn {
            width,
            height,
            color,
            pixels,
        } => {
            out.push(DRAWN);
            let fits = |n: u32, max: u32| (1..=max).contains(&n).then(|| less_one(n)).flatten();
            out.extend(fits(width, LIMITS.max_width)?);
            out.extend(fits(height, LIMITS.max_height)?);
            out.push(u8::try_from(COLORS.iter().position(|c| *c == color)?).ok()?);
            out.extend_from_slice(pixels);
        }
    }
    Some(out)
}
