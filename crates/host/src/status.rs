//! Status columns: a status enum stored as lowercase text, declared with
//! [`status!`](crate::status!), which writes its SQL and JSON spelling and its parser.

/// A status column held a value this code does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

/// Declares a status enum stored as lowercase text, with its SQL spelling and parser (an
/// unknown spelling is an [`UnknownStatus`](crate::status::UnknownStatus)). The crate using it
/// depends on `serde`, for the derives.
///
/// ```text
/// host::status! {
///     /// Where an order is.
///     OrderStatus { Pending = "pending", Confirmed = "confirmed" }
/// }
/// ```
#[macro_export]
macro_rules! status {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The spelling in the database and in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::status::UnknownStatus;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err($crate::status::UnknownStatus(other.to_owned())),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::status! {
        /// Where a parcel is.
        ParcelStatus { Packed = "packed", Sent = "sent" }
    }

    #[test]
    fn a_status_is_spelled_alike_in_sql_and_json_and_parses_back() {
        for status in [ParcelStatus::Packed, ParcelStatus::Sent] {
            assert_eq!(status.as_str().parse(), Ok(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
            assert_eq!(status.to_string(), status.as_str());
        }
        assert_eq!(
            "lost".parse::<ParcelStatus>(),
            Err(UnknownStatus("lost".into()))
        );
    }
}
