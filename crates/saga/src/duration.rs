//! Durations as people write them in definitions: `250ms`, `10s`, `2m`, `1h`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Why a duration does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} has no unit (ms, s, m or h)")]
    NoUnit(String),
    #[error("{0:?} does not start with a whole number")]
    NotANumber(String),
    #[error("{text:?}: unknown unit {unit:?} (ms, s, m or h)")]
    UnknownUnit { text: String, unit: String },
}

pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit(text.to_owned()))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber(text.to_owned()))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(DurationError::UnknownUnit {
            text: text.to_owned(),
            unit: unit.to_owned(),
        }),
    }
}

pub fn format(duration: Duration) -> String {
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m", ms / 60_000)
    }
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

pub(crate) fn deserialize_option<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| parse(&text).map_err(serde::de::Error::custom))
        .transpose()
}

pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write_back() {
        for (text, duration) in [
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
        ] {
            assert_eq!(parse(text), Ok(duration));
            assert_eq!(format(duration), text);
        }
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn malformed_durations_say_why() {
        assert_eq!(parse("10"), Err(DurationError::NoUnit("10".into())));
        assert!(matches!(
            parse("10 days"),
            Err(DurationError::UnknownUnit { unit, .. }) if unit == " days"
        ));
        assert_eq!(parse("s"), Err(DurationError::NotANumber("s".into())));
        assert!(parse("10").unwrap_err().to_string().contains("no unit"));
    }
}
