//! Variant specs: the little language a client uses to ask for variants of an image. Pure.
//!
//! A spec is a chain of operations separated by `|`, applied left to right, optionally
//! followed by `@png`, `@jpeg` or `@webp` for the output format. Without one the output is
//! PNG, which is lossless and keeps transparency.
//!
//! | operation | effect |
//! |---|---|
//! | `thumbnail:<px>` | fit inside px×px keeping the aspect ratio, never enlarging (1..=4096) |
//! | `resize:<w>x<h>` | exactly w×h, aspect ratio not kept (1..=8192 each) |
//! | `grayscale` | luma only (alpha kept) |
//! | `blur:<sigma>` | Gaussian blur, 0 < sigma <= 50 |
//! | `rotate:<90\|180\|270>` | clockwise |
//! | `flip:<h\|v>` | mirror horizontally or vertically |
//! | `crop:<x>,<y>,<w>,<h>` | the w×h rectangle at (x, y); w, h >= 1; bounds checked against the image |
//!
//! Examples: `thumbnail:128`, `grayscale|rotate:90@webp`, `crop:0,0,10,10@jpeg`.
//!
//! Every spec has a canonical spelling ([`VariantSpec`]'s `Display`: `blur:2.0` is `blur:2`,
//! `@png` is left out) used to find duplicates, and a file-name-safe [`VariantSpec::slug`]
//! that is distinct for distinct canonical specs, so two variants never share a store key.

use std::fmt;
use std::str::FromStr;

/// Variants one image may ask for.
pub const MAX_SPECS: usize = 20;
/// Characters in one spec.
pub const MAX_SPEC_LEN: usize = 200;
/// The largest `thumbnail` box side.
pub const MAX_THUMBNAIL: u32 = 4096;
/// The largest `resize` side.
pub const MAX_RESIZE: u32 = 8192;
/// The largest `blur` sigma.
pub const MAX_SIGMA: f32 = 50.0;

const KNOWN_OPERATIONS: &str = "thumbnail, resize, grayscale, blur, rotate, flip, crop";

/// Why a spec (or a list of specs) is refused; the text is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("a variant spec is empty; try e.g. \"thumbnail:128\"")]
    Empty,
    #[error("variant spec {spec:?} is {len} characters long; at most {MAX_SPEC_LEN} are allowed")]
    TooLong { spec: String, len: usize },
    #[error("variant spec {spec:?} has no operation; try e.g. \"thumbnail:128{format}\"")]
    NoOperation { spec: String, format: String },
    #[error("empty operation in {spec:?} (two `|` in a row, or one at an end)")]
    EmptyOperation { spec: String },
    #[error("unknown operation {name:?} in {spec:?}; known: {KNOWN_OPERATIONS}")]
    UnknownOperation { name: String, spec: String },
    #[error("unknown output format {format:?} in {spec:?}; known: png, jpeg, webp")]
    UnknownFormat { format: String, spec: String },
    #[error("{message} (in {spec:?})")]
    BadArgument { message: String, spec: String },
    #[error("between 1 and {MAX_SPECS} variants may be asked for, not {0}")]
    Count(usize),
    #[error("variant {spec:?} is asked for twice (as {first:?} and {second:?})")]
    Duplicate {
        spec: String,
        first: String,
        second: String,
    },
}

/// The encoding of a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OutputFormat {
    /// Lossless, keeps transparency; the default.
    #[default]
    Png,
    /// Quality 85; transparency is flattened onto white.
    Jpeg,
    /// Lossless WebP (the encoder `image` ships has no lossy mode).
    Webp,
}

impl OutputFormat {
    pub const ALL: [Self; 3] = [Self::Png, Self::Jpeg, Self::Webp];

    /// The name in specs and in [`contracts::messages::ImageVariant::format`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    /// The file extension of variants in the store.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }

    /// The media type to serve a variant with.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name was none of `png`, `jpeg`, `webp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image format {0:?}; known: png, jpeg, webp")]
pub struct UnknownFormat(pub String);

impl FromStr for OutputFormat {
    type Err = UnknownFormat;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|format| format.as_str() == text)
            .ok_or_else(|| UnknownFormat(text.to_owned()))
    }
}

/// Clockwise rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rotation {
    Quarter,
    Half,
    ThreeQuarters,
}

impl Rotation {
    pub fn degrees(self) -> u16 {
        match self {
            Self::Quarter => 90,
            Self::Half => 180,
            Self::ThreeQuarters => 270,
        }
    }
}

/// The mirror of `flip`: `h` swaps left and right, `v` top and bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flip {
    Horizontal,
    Vertical,
}

impl Flip {
    fn letter(self) -> char {
        match self {
            Self::Horizontal => 'h',
            Self::Vertical => 'v',
        }
    }
}

/// One step of a spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operation {
    Thumbnail {
        size: u32,
    },
    Resize {
        width: u32,
        height: u32,
    },
    Grayscale,
    Blur {
        sigma: f32,
    },
    Rotate(Rotation),
    Flip(Flip),
    Crop {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
}

impl Operation {
    /// This operation in a file name: `thumbnail-128`, `crop-0-0-10-10`, `blur-2.5`.
    fn slug(&self) -> String {
        match *self {
            Self::Thumbnail { size } => format!("thumbnail-{size}"),
            Self::Resize { width, height } => format!("resize-{width}x{height}"),
            Self::Grayscale => "grayscale".to_owned(),
            Self::Blur { sigma } => format!("blur-{sigma}"),
            Self::Rotate(rotation) => format!("rotate-{}", rotation.degrees()),
            Self::Flip(flip) => format!("flip-{}", flip.letter()),
            Self::Crop {
                x,
                y,
                width,
                height,
            } => format!("crop-{x}-{y}-{width}-{height}"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Thumbnail { size } => write!(f, "thumbnail:{size}"),
            Self::Resize { width, height } => write!(f, "resize:{width}x{height}"),
            Self::Grayscale => f.write_str("grayscale"),
            // f32's Display is the shortest text that reads back to the same value.
            Self::Blur { sigma } => write!(f, "blur:{sigma}"),
            Self::Rotate(rotation) => write!(f, "rotate:{}", rotation.degrees()),
            Self::Flip(flip) => write!(f, "flip:{}", flip.letter()),
            Self::Crop {
                x,
                y,
                width,
                height,
            } => write!(f, "crop:{x},{y},{width},{height}"),
        }
    }
}

/// A parsed spec: at least one operation and an output format.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantSpec {
    operations: Vec<Operation>,
    format: OutputFormat,
}

impl VariantSpec {
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// A file-name-safe name (`[a-z0-9.x_-]`), distinct for distinct canonical specs of the
    /// same format: `thumbnail-128`, `grayscale_rotate-90`. The format is not in it; see
    /// [`Self::extension`].
    pub fn slug(&self) -> String {
        self.operations
            .iter()
            .map(Operation::slug)
            .collect::<Vec<_>>()
            .join("_")
    }

    /// The file extension of the output format.
    pub fn extension(&self) -> &'static str {
        self.format.extension()
    }
}

/// The canonical spelling: `|`-joined operations, `@format` unless PNG.
impl fmt::Display for VariantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, operation) in self.operations.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            write!(f, "{operation}")?;
        }
        if self.format != OutputFormat::Png {
            write!(f, "@{}", self.format)?;
        }
        Ok(())
    }
}

impl FromStr for VariantSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        parse(spec)
    }
}

/// Parses one spec. Blanks around operations, `|` and `@` are allowed.
pub fn parse(spec: &str) -> Result<VariantSpec, SpecError> {
    let len = spec.chars().count();
    if len > MAX_SPEC_LEN {
        return Err(SpecError::TooLong {
            spec: shorten(spec),
            len,
        });
    }
    if spec.trim().is_empty() {
        return Err(SpecError::Empty);
    }
    let (chain, format) = match spec.rsplit_once('@') {
        Some((chain, format)) => {
            let name = format.trim();
            let format = name
                .parse::<OutputFormat>()
                .map_err(|_| SpecError::UnknownFormat {
                    format: name.to_owned(),
                    spec: spec.to_owned(),
                })?;
            (chain, format)
        }
        None => (spec, OutputFormat::default()),
    };
    if chain.trim().is_empty() {
        return Err(SpecError::NoOperation {
            spec: spec.to_owned(),
            format: if format == OutputFormat::Png {
                String::new()
            } else {
                format!("@{format}")
            },
        });
    }
    let operations = chain
        .split('|')
        .map(|text| operation(text.trim(), spec))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VariantSpec { operations, format })
}

/// Parses the variants of one image: 1 to [`MAX_SPECS`] specs, no two alike (after
/// canonicalisation, so `blur:2` and `blur:2.0@png` are the same variant).
pub fn parse_all(specs: &[String]) -> Result<Vec<VariantSpec>, SpecError> {
    if specs.is_empty() || specs.len() > MAX_SPECS {
        return Err(SpecError::Count(specs.len()));
    }
    let mut parsed: Vec<VariantSpec> = Vec::with_capacity(specs.len());
    for (i, text) in specs.iter().enumerate() {
        let spec = parse(text)?;
        if let Some(j) = parsed.iter().position(|earlier| *earlier == spec) {
            return Err(SpecError::Duplicate {
                spec: spec.to_string(),
                first: specs[j].clone(),
                second: specs[i].clone(),
            });
        }
        parsed.push(spec);
    }
    Ok(parsed)
}

fn operation(text: &str, spec: &str) -> Result<Operation, SpecError> {
    if text.is_empty() {
        return Err(SpecError::EmptyOperation {
            spec: spec.to_owned(),
        });
    }
    let (name, argument) = match text.split_once(':') {
        Some((name, argument)) => (name.trim(), Some(argument.trim())),
        None => (text, None),
    };
    let bad = |message: String| SpecError::BadArgument {
        message,
        spec: spec.to_owned(),
    };
    let needs = |what: &str, example: &str| {
        argument.ok_or_else(|| bad(format!("{name} needs {what}, e.g. {example}")))
    };
    match name {
        "thumbnail" => {
            let argument = needs("a size in pixels", "thumbnail:128")?;
            let size = number(argument)
                .filter(|size| (1..=MAX_THUMBNAIL).contains(size))
                .ok_or_else(|| {
                    bad(format!(
                        "thumbnail takes a size from 1 to {MAX_THUMBNAIL}, not {argument:?}"
                    ))
                })?;
            Ok(Operation::Thumbnail { size })
        }
        "resize" => {
            let argument = needs("a width and height", "resize:800x600")?;
            let side = |text: &str| number(text).filter(|side| (1..=MAX_RESIZE).contains(side));
            let (width, height) = argument
                .split_once('x')
                .and_then(|(w, h)| Some((side(w)?, side(h)?)))
                .ok_or_else(|| {
                    bad(format!(
                        "resize takes <width>x<height>, each from 1 to {MAX_RESIZE}, \
                         not {argument:?}"
                    ))
                })?;
            Ok(Operation::Resize { width, height })
        }
        "grayscale" => match argument {
            None => Ok(Operation::Grayscale),
            Some(argument) => Err(bad(format!(
                "grayscale takes no argument, not {argument:?}"
            ))),
        },
        "blur" => {
            let argument = needs("a sigma", "blur:2.5")?;
            let sigma = decimal(argument)
                .filter(|sigma| *sigma > 0.0 && *sigma <= MAX_SIGMA)
                .ok_or_else(|| {
                    bad(format!(
                        "blur takes a sigma above 0 and at most {MAX_SIGMA}, not {argument:?}"
                    ))
                })?;
            Ok(Operation::Blur { sigma })
        }
        "rotate" => {
            let argument = needs("an angle", "rotate:90")?;
            let rotation = match argument {
                "90" => Rotation::Quarter,
                "180" => Rotation::Half,
                "270" => Rotation::ThreeQuarters,
                other => return Err(bad(format!("rotate takes 90, 180 or 270, not {other}"))),
            };
            Ok(Operation::Rotate(rotation))
        }
        "flip" => {
            let argument = needs("a direction", "flip:h")?;
            let flip = match argument {
                "h" => Flip::Horizontal,
                "v" => Flip::Vertical,
                other => {
                    return Err(bad(format!(
                        "flip takes h (horizontal) or v (vertical), not {other:?}"
                    )));
                }
            };
            Ok(Operation::Flip(flip))
        }
        "crop" => {
            let argument = needs("x,y,width,height", "crop:0,0,100,100")?;
            let parts = argument
                .split(',')
                .map(|part| number(part.trim()))
                .collect::<Option<Vec<_>>>();
            match parts.as_deref() {
                Some(&[x, y, width, height]) if width >= 1 && height >= 1 => Ok(Operation::Crop {
                    x,
                    y,
                    width,
                    height,
                }),
                _ => Err(bad(format!(
                    "crop takes x,y,width,height as whole numbers with width and height \
                     at least 1, not {argument:?}"
                ))),
            }
        }
        other => Err(SpecError::UnknownOperation {
            name: other.to_owned(),
            spec: spec.to_owned(),
        }),
    }
}

/// A whole number written with digits only (no sign, no blanks).
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A decimal written as digits with at most one `.` (no sign, exponent, `inf` or `NaN`).
fn decimal(text: &str) -> Option<f32> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    text.parse().ok()
}

/// A spec too long to repeat whole in an error.
fn shorten(spec: &str) -> String {
    let mut short: String = spec.chars().take(40).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ok(spec: &str) -> VariantSpec {
        parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"))
    }

    fn err(spec: &str) -> String {
        match parse(spec) {
            Ok(parsed) => panic!("{spec:?} parsed as {parsed:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_operation_parses() {
        let cases = [
            ("thumbnail:128", Operation::Thumbnail { size: 128 }),
            (
                "resize:64x48",
                Operation::Resize {
                    width: 64,
                    height: 48,
                },
            ),
            ("grayscale", Operation::Grayscale),
            ("blur:2.5", Operation::Blur { sigma: 2.5 }),
            ("blur:50", Operation::Blur { sigma: 50.0 }),
            ("rotate:90", Operation::Rotate(Rotation::Quarter)),
            ("rotate:180", Operation::Rotate(Rotation::Half)),
            ("rotate:270", Operation::Rotate(Rotation::ThreeQuarters)),
            ("flip:h", Operation::Flip(Flip::Horizontal)),
            ("flip:v", Operation::Flip(Flip::Vertical)),
            (
                "crop:0,1,10,20",
                Operation::Crop {
                    x: 0,
                    y: 1,
                    width: 10,
                    height: 20,
                },
            ),
        ];
        for (text, operation) in cases {
            let spec = ok(text);
            assert_eq!(spec.operations(), [operation], "{text}");
            assert_eq!(spec.format(), OutputFormat::Png, "{text}");
        }
    }

    #[test]
    fn formats_follow_an_at_sign_and_png_is_the_default() {
        assert_eq!(ok("thumbnail:128").format(), OutputFormat::Png);
        assert_eq!(ok("thumbnail:128@png").format(), OutputFormat::Png);
        assert_eq!(ok("crop:0,0,10,10@jpeg").format(), OutputFormat::Jpeg);
        let spec = ok("grayscale|rotate:90@webp");
        assert_eq!(spec.format(), OutputFormat::Webp);
        assert_eq!(
            spec.operations(),
            [Operation::Grayscale, Operation::Rotate(Rotation::Quarter)]
        );
        assert_eq!(spec.extension(), "webp");
        assert_eq!(ok("grayscale@jpeg").extension(), "jpg");
        assert_eq!(ok("grayscale").extension(), "png");
    }

    #[test]
    fn operations_apply_in_the_order_written() {
        let spec = ok("crop:0,0,10,10 | rotate:90 | thumbnail:4 @ jpeg");
        assert_eq!(
            spec.to_string(),
            "crop:0,0,10,10|rotate:90|thumbnail:4@jpeg"
        );
    }

    #[test]
    fn the_canonical_spelling_drops_png_and_trailing_zeros() {
        assert_eq!(ok("blur:2.0@png").to_string(), "blur:2");
        assert_eq!(ok("blur:0.50").to_string(), "blur:0.5");
        assert_eq!(ok("flip:h@webp").to_string(), "flip:h@webp");
        for text in [
            "thumbnail:128",
            "grayscale|rotate:90@webp",
            "crop:0,0,10,10@jpeg",
        ] {
            assert_eq!(ok(text).to_string(), text);
            assert_eq!(ok(&ok(text).to_string()), ok(text));
        }
    }

    #[test]
    fn slugs_are_file_name_safe() {
        assert_eq!(ok("thumbnail:128").slug(), "thumbnail-128");
        assert_eq!(ok("grayscale|rotate:90@webp").slug(), "grayscale_rotate-90");
        assert_eq!(ok("resize:800x600").slug(), "resize-800x600");
        assert_eq!(ok("blur:2.5|flip:v").slug(), "blur-2.5_flip-v");
        assert_eq!(ok("crop:0,0,10,10@jpeg").slug(), "crop-0-0-10-10");
        let safe = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        assert!(ok("blur:0.001|crop:1,2,3,4").slug().chars().all(safe));
    }

    #[test]
    fn distinct_specs_have_distinct_slugs() {
        let specs = [
            "thumbnail:12",
            "thumbnail:128",
            "resize:1x28",
            "resize:12x8",
            "blur:1.5",
            "blur:15",
            "crop:1,2,3,4",
            "crop:12,3,4,5",
            "crop:1,23,4,5",
            "grayscale|flip:h",
            "flip:h|grayscale",
            "rotate:90|rotate:90",
            "rotate:180",
        ];
        let slugs: std::collections::HashSet<_> = specs.iter().map(|s| ok(s).slug()).collect();
        assert_eq!(slugs.len(), specs.len());
    }

    #[test]
    fn unknown_operations_are_named_with_the_known_ones() {
        assert_eq!(
            err("sepia"),
            "unknown operation \"sepia\" in \"sepia\"; known: thumbnail, resize, grayscale, \
             blur, rotate, flip, crop"
        );
        assert!(err("grayscale|Thumbnail:4").contains("unknown operation \"Thumbnail\""));
    }

    #[test]
    fn bad_arguments_say_what_is_allowed() {
        assert!(err("rotate:45").contains("rotate takes 90, 180 or 270, not 45"));
        assert!(err("rotate").contains("rotate needs an angle"));
        assert!(err("thumbnail:0").contains("thumbnail takes a size from 1 to 4096"));
        assert!(err("thumbnail:4097").contains("not \"4097\""));
        assert!(err("thumbnail:-1").contains("thumbnail takes"));
        assert!(err("thumbnail:+5").contains("thumbnail takes"));
        assert!(err("thumbnail:99999999999").contains("thumbnail takes"));
        assert!(err("thumbnail").contains("thumbnail needs a size"));
        assert!(err("resize:800").contains("resize takes <width>x<height>"));
        assert!(err("resize:0x10").contains("each from 1 to 8192"));
        assert!(err("resize:10x8193").contains("each from 1 to 8192"));
        assert!(err("grayscale:1").contains("grayscale takes no argument"));
        assert!(err("blur:0").contains("blur takes a sigma above 0 and at most 50"));
        assert!(err("blur:50.01").contains("blur takes a sigma"));
        assert!(err("blur:-1").contains("blur takes a sigma"));
        assert!(err("blur:NaN").contains("blur takes a sigma"));
        assert!(err("blur:inf").contains("blur takes a sigma"));
        assert!(err("blur:1e1").contains("blur takes a sigma"));
        assert!(err("blur:.5").contains("blur takes a sigma"));
        assert!(err("flip:x").contains("flip takes h (horizontal) or v (vertical)"));
        assert!(err("crop:0,0,0,10").contains("width and height at least 1"));
        assert!(err("crop:0,0,10").contains("crop takes x,y,width,height"));
        assert!(err("crop:0,0,10,10,1").contains("crop takes x,y,width,height"));
    }

    #[test]
    fn malformed_chains_and_formats_are_refused() {
        assert_eq!(parse(""), Err(SpecError::Empty));
        assert_eq!(parse("  "), Err(SpecError::Empty));
        assert!(err("@webp").contains("has no operation"));
        assert!(err("grayscale||flip:h").contains("empty operation"));
        assert!(err("grayscale|").contains("empty operation"));
        assert!(err("grayscale@gif").contains("unknown output format \"gif\""));
        assert!(err("grayscale@").contains("unknown output format \"\""));
        let long = format!("grayscale{}", "|grayscale".repeat(30));
        assert!(
            err(&long).contains("at most 200 are allowed"),
            "{}",
            err(&long)
        );
    }

    #[test]
    fn parse_all_takes_one_to_twenty_distinct_specs() {
        let specs = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_all(&specs(&["thumbnail:128", "grayscale@webp"]))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(parse_all(&[]), Err(SpecError::Count(0)));
        let many: Vec<String> = (1..=21).map(|i| format!("thumbnail:{i}")).collect();
        assert_eq!(parse_all(&many), Err(SpecError::Count(21)));
        assert_eq!(parse_all(&many[..20]).unwrap().len(), 20);
        let error = parse_all(&specs(&["blur:2", "thumbnail:4", "blur:2.0@png"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "variant \"blur:2\" is asked for twice (as \"blur:2\" and \"blur:2.0@png\")"
        );
        // The same operations in another format are another variant.
        assert!(parse_all(&specs(&["grayscale", "grayscale@jpeg"])).is_ok());
        assert!(parse_all(&specs(&["grayscale", "sepia"])).is_err());
    }

    #[test]
    fn output_formats_round_trip_through_their_names() {
        for format in OutputFormat::ALL {
            assert_eq!(format.as_str().parse::<OutputFormat>(), Ok(format));
        }
        assert!("gif".parse::<OutputFormat>().is_err());
        assert_eq!(OutputFormat::Jpeg.content_type(), "image/jpeg");
    }
}
