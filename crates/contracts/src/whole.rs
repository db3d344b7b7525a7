//! Whole numbers as JSON Schema's `integer` has them: `165` and `165.0` are the same number.
//!
//! serde reads `165.0` as a float and refuses it for an integer field, although every schema
//! and the OpenAPI document say `integer`, which allows it. Fields that people and generated
//! clients send take this instead: any whole number in the target's range, written either way;
//! `2.5` and out-of-range numbers are refused with a clear message.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{Error, Unexpected, Visitor};

/// `#[serde(deserialize_with = "contracts::whole::deserialize")]`
pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    deserializer.deserialize_any(Whole(PhantomData))
}

struct Whole<T>(PhantomData<T>);

impl<T: TryFrom<i64> + TryFrom<u64>> Visitor<'_> for Whole<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number in range")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        // Exactly representable whole floats only: |v| < 2^63.
        #[allow(clippy::cast_possible_truncation)]
        if v.fract() == 0.0 && v.abs() < 2f64.powi(63) {
            self.visit_i64(v as i64)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Line {
        #[serde(deserialize_with = "super::deserialize")]
        quantity: u32,
    }

    fn quantity(json: &str) -> Result<u32, String> {
        serde_json::from_str::<Line>(json)
            .map(|l| l.quantity)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_whole_number_reads_written_either_way() {
        assert_eq!(quantity(r#"{"quantity": 165}"#), Ok(165));
        assert_eq!(quantity(r#"{"quantity": 165.0}"#), Ok(165));
        assert_eq!(quantity(r#"{"quantity": 1e2}"#), Ok(100));
    }

    #[test]
    fn fractions_and_numbers_out_of_range_are_refused() {
        for json in [
            r#"{"quantity": 2.5}"#,
            r#"{"quantity": -1}"#,
            r#"{"quantity": -1.0}"#,
            r#"{"quantity": 4294967296}"#,
            r#"{"quantity": "3"}"#,
        ] {
            let error = quantity(json).unwrap_err();
            assert!(error.contains("a whole number in range"), "{json}: {error}");
        }
    }
}
