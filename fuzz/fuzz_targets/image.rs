//! A hostile upload through the image worker's path: decode the original within the limits,
//! then render a variant spec from it. Whatever the file and the spec, nothing panics and no
//! allocation outgrows the limits.

#![no_main]

use images::process;
use images::spec;
use libfuzzer_sys::fuzz_target;
use warren_fuzz::alloc::{self, Counting};
use warren_fuzz::upload::{self, LIMITS};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest single allocation allowed: one pixel buffer within `max_alloc`, or an
/// encoder's output growing past it (a `Vec` at most doubles).
const LARGEST: u64 = 2 * LIMITS.max_alloc;

/// The most allowed live at once: the original, the image being worked on, the next one and
/// a working buffer (resize, blur), or while encoding the original, the result, its
/// flattened copy and the output; 1 MiB more for the codecs' own state (a deflate
/// compressor's tables alone are a few hundred KiB).
const PEAK: u64 = 6 * LIMITS.max_alloc + 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(upload) = upload::read(data) else {
        return;
    };
    let text = upload.spec();
    let spec = spec::parse(&text).unwrap_or_else(|e| panic!("{text:?} is refused: {e}"));
    assert_eq!(spec.operations(), upload.operations.as_slice(), "{text}");

    let original = upload.original.file();

    alloc::reset();
    let result = process::decode(&original, &LIMITS)
        .and_then(|decoded| process::render_decoded(&decoded, &spec, &LIMITS));
    let usage = alloc::usage();
    let outcome = result.as_ref().map(|r| (r.width, r.height));
    let largest = u64::try_from(usage.largest).unwrap_or(u64::MAX);
    assert!(
        largest <= LARGEST,
        "{text}: an allocation of {largest} bytes, over {LARGEST} (limits {LIMITS:?}; {outcome:?})",
    );
    let peak = u64::try_from(usage.peak).unwrap_or(u64::MAX);
    assert!(
        peak <= PEAK,
        "{text}: {peak} bytes live at once, over {PEAK} (limits {LIMITS:?}; {outcome:?})",
    );
    if let Ok(rendered) = result {
        assert!(rendered.width <= LIMITS.max_width && rendered.height <= LIMITS.max_height);
    }
});
