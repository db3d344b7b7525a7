//! W3C trace context (`traceparent`, version 00): one trace per saga. The gateway starts it (or
//! joins the caller's), every message of the saga carries it, and every log line of a message
//! names its trace id, so one id finds a checkout in the logs of every process it touched.

use std::fmt;

/// A parsed `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

/// Trace flags: sampled.
const SAMPLED: u8 = 0x01;

impl TraceParent {
    /// A new trace, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            parent_id: fastrand::u64(1..),
            flags: SAMPLED,
        }
    }

    /// The same trace, from a new span of this process.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            parent_id: fastrand::u64(1..),
            ..*self
        }
    }

    /// Reads a header as the W3C spec says: lowercase hex, ids not all zeros, version `ff`
    /// invalid; a later version is read by its first four fields.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let mut parts = text.split('-');
        let version = hex_field(parts.next()?, 2)?;
        let trace_id = hex_field(parts.next()?, 32)?;
        let parent_id = hex_field(parts.next()?, 16)?;
        let flags = hex_field(parts.next()?, 2)?;
        let rest = parts.next();
        let valid_version = match version {
            0 => rest.is_none(),
            0xff => false,
            _ => true,
        };
        let parent_id = u64::try_from(parent_id).ok()?;
        let flags = u8::try_from(flags).ok()?;
        (valid_version && trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace id as logs and tracing back ends show it: 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

fn hex_field(text: &str, len: usize) -> Option<u128> {
    let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    (text.len() == len && text.chars().all(lower_hex))
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_spec_example_reads_and_writes_back() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(parsed.to_string(), EXAMPLE);
    }

    #[test]
    fn invalid_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = format!("{}-whatever", EXAMPLE.replacen("00", "01", 1));
        let parsed = TraceParent::parse(&later).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceParent::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.parent_id, root.parent_id);
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
