//! Time for people: `--since` as people write it, ages and durations as they read them.

use sqlx::types::chrono::{DateTime, NaiveDate, Utc};

/// `--since`: RFC 3339, a date (midnight UTC), or a relative `90s`, `30m`, `1h`, `2d`, `1w`.
pub(super) fn since(text: &str) -> Result<DateTime<Utc>, String> {
    parse_time(text, Utc::now())
}

fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return day
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| format!("{text:?} is not a date"));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!(
            "{text:?} is neither RFC 3339 (2025-01-31T12:00:00Z), a date, nor a relative time (30s, 15m, 1h, 2d, 1w)"
        )
    };
    let number: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    number
        .checked_mul(seconds * 1_000_000)
        .and_then(|back| now.timestamp_micros().checked_sub(back))
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| format!("{text:?} reaches too far back"))
}

/// How long ago, roughly: `42s`, `5m`, `3h`, `12d`.
pub(super) fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A duration in milliseconds to read: `850ms`, `1.25s`, `3m05s`, `2h10m`.
pub(super) fn span(ms: i64) -> String {
    let (sign, ms) = if ms < 0 { ("-", -ms) } else { ("", ms) };
    let text = match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.2}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    };
    format!("{sign}{text}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::{age, parse_time, span};
    use crate::saga_cli::fixtures::at;

    #[test]
    fn relative_and_absolute_times_are_understood() {
        let now = at(0);
        assert_eq!(
            parse_time("30m", now).unwrap(),
            now - Duration::from_secs(1800)
        );
        assert_eq!(
            parse_time("1h", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        assert_eq!(
            parse_time("2d", now).unwrap(),
            now - Duration::from_secs(2 * 86_400)
        );
        assert_eq!(
            parse_time("45s", now).unwrap(),
            now - Duration::from_secs(45)
        );
        assert_eq!(
            parse_time("1w", now).unwrap(),
            now - Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_time("2025-03-01T13:00:00+01:00", now).unwrap(), now);
        assert_eq!(
            parse_time("2025-03-01", now).unwrap(),
            now - Duration::from_secs(12 * 3600)
        );
        for bad in ["", "h", "5", "5y", "-5m", "yesterday", "99999999999999999d"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn durations_and_ages_read_well() {
        assert_eq!(span(850), "850ms");
        assert_eq!(span(1250), "1.25s");
        assert_eq!(span(185_000), "3m05s");
        assert_eq!(span(130 * 60_000), "2h10m");
        assert_eq!(age(42_000), "42s");
        assert_eq!(age(3 * 3_600_000), "3h");
        assert_eq!(age(12 * 86_400_000), "12d");
    }
}
