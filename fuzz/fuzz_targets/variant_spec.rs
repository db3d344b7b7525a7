//! Variant specs as a client sends them, one per line. What parses has a canonical spelling
//! that parses back to it and a file-name-safe slug distinct from every other spec's; a list
//! is accepted exactly when its count is right, each spec parses and none repeats.

#![no_main]

use images::spec::{self, MAX_SPECS, SpecError, VariantSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text
        .split('\n')
        .take(MAX_SPECS + 2)
        .map(str::to_owned)
        .collect();

    let mut parsed: Vec<VariantSpec> = Vec::new();
    for line in &lines {
        let Ok(spec) = spec::parse(line) else {
            continue;
        };
        let canonical = spec.to_string();
        assert_eq!(
            spec::parse(&canonical).as_ref(),
            Ok(&spec),
            "{line:?} → {canonical:?}"
        );
        let slug = spec.slug();
        assert!(
            !slug.is_empty()
                && slug
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')),
            "{line:?} → slug {slug:?}"
        );
        for other in &parsed {
            if other != &spec && other.format() == spec.format() {
                assert_ne!(other.slug(), slug, "{other} and {spec}");
            }
        }
        parsed.push(spec);
    }

    let all_parse = parsed.len() == lines.len();
    let repeats = (0..parsed.len()).any(|i| parsed[..i].contains(&parsed[i]));
    match spec::parse_all(&lines) {
        Ok(specs) => {
            assert!((1..=MAX_SPECS).contains(&lines.len()) && all_parse && !repeats);
            assert_eq!(specs, parsed);
        }
        Err(SpecError::Count(n)) => assert!(n == lines.len() && !(1..=MAX_SPECS).contains(&n)),
        Err(SpecError::Duplicate { .. }) => assert!(repeats),
        Err(_) => assert!(!all_parse),
    }
});
