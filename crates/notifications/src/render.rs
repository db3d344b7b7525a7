//! What a customer is told about an event, as pure functions: no clock, no database.
//!
//! [`Event::from_envelope`] picks the events this service is bound to out of an envelope;
//! [`render`] turns one into a [`Draft`], or into nothing when the event has no customer to
//! tell (a cancel tombstone, an image uploaded without a customer).

use std::fmt;
use std::str::FromStr;

use contracts::messages::{ImageCompleted, ImageFailed, OrderCancelled, OrderConfirmed};
use contracts::{ContractError, Envelope, Message};
use uuid::Uuid;

/// Longest reason quoted to a customer, in characters. Reasons come from other services
/// (up to 2,000 characters, possibly a chain of errors over several lines); a customer
/// needs the gist, and the whole message must stay within its schema's 2,000.
pub const MAX_REASON_CHARS: usize = 200;

/// The events the notification service reacts to, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    OrderConfirmed(OrderConfirmed),
    OrderCancelled(OrderCancelled),
    ImageCompleted(ImageCompleted),
    ImageFailed(ImageFailed),
}

/// Why an envelope is not an event this service can render; neither will ever change, so
/// the message is parked.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the notification service does not handle {0}")]
    Unhandled(String),
    #[error(transparent)]
    Payload(#[from] ContractError),
}

impl Event {
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, EventError> {
        Ok(match envelope.message_type.as_str() {
            OrderConfirmed::TYPE => Self::OrderConfirmed(envelope.decode()?),
            OrderCancelled::TYPE => Self::OrderCancelled(envelope.decode()?),
            ImageCompleted::TYPE => Self::ImageCompleted(envelope.decode()?),
            ImageFailed::TYPE => Self::ImageFailed(envelope.decode()?),
            other => return Err(EventError::Unhandled(other.to_owned())),
        })
    }
}

/// What a notification is about; stored as its snake-case spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    OrderConfirmed,
    OrderCancelled,
    ImageCompleted,
    ImageFailed,
}

impl Kind {
    /// The spelling in the database and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderConfirmed => "order_confirmed",
            Self::OrderCancelled => "order_cancelled",
            Self::ImageCompleted => "image_completed",
            Self::ImageFailed => "image_failed",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored kind this code does not know (a row written by a newer version, or by hand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown notification kind {0:?}")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            Self::OrderConfirmed,
            Self::OrderCancelled,
            Self::ImageCompleted,
            Self::ImageFailed,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
        .ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

/// A notification before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub customer_id: String,
    pub kind: Kind,
    /// The order or image the notification is about. One fact (this order confirmed) gives
    /// one notification, however many events announce it: see the crate docs.
    pub about: Uuid,
    pub subject: String,
    pub message: String,
}

/// The notification an event calls for, or `None` when there is nobody to tell.
pub fn render(event: &Event) -> Option<Draft> {
    let (customer_id, kind, about, subject, message) = match event {
        Event::OrderConfirmed(e) => {
            let id = short_id(e.order_id);
            (
                Some(&e.customer_id),
                Kind::OrderConfirmed,
                e.order_id,
                format!("Order {id} confirmed"),
                format!(
                    "Your order {id} is confirmed: total {}",
                    money(e.total_cents)
                ),
            )
        }
        Event::OrderCancelled(e) => {
            let id = short_id(e.order_id);
            (
                e.customer_id.as_ref(),
                Kind::OrderCancelled,
                e.order_id,
                format!("Order {id} cancelled"),
                format!("Your order {id} was cancelled: {}", reason(&e.reason)),
            )
        }
        Event::ImageCompleted(e) => {
            let id = short_id(e.image_id);
            (
                e.customer_id.as_ref(),
                Kind::ImageCompleted,
                e.image_id,
                format!("Image {id} is ready"),
                format!("Your image {id} is ready: {}", variants(e.outputs.len())),
            )
        }
        Event::ImageFailed(e) => {
            let id = short_id(e.image_id);
            (
                e.customer_id.as_ref(),
                Kind::ImageFailed,
                e.image_id,
                format!("Image {id} could not be processed"),
                format!(
                    "Your image {id} could not be processed: {}",
                    reason(&e.reason)
                ),
            )
        }
    };
    let customer_id = customer_id.filter(|c| !c.trim().is_empty())?;
    Some(Draft {
        customer_id: customer_id.clone(),
        kind,
        about,
        subject,
        message,
    })
}

/// The last 8 hex digits of an id. Warren's ids are UUID v7, whose leading digits are a
/// timestamp shared by every id made within about a minute; the trailing ones are random.
pub fn short_id(id: Uuid) -> String {
    let simple = id.simple().to_string();
    simple[simple.len() - 8..].to_owned()
}

/// Cents as dollars with thousands separators: `2500` is `$25.00`, `-123456` is `-$1,234.56`.
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    let digits = (cents / 100).to_string();
    let mut dollars = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            dollars.push(',');
        }
        dollars.push(digit);
    }
    format!("{sign}${dollars}.{:02}", cents % 100)
}

fn variants(count: usize) -> String {
    match count {
        0 => "no variants".to_owned(),
        1 => "1 variant".to_owned(),
        n => format!("{n} variants"),
    }
}

/// A reason fit to quote: whitespace runs (newlines of an error chain included) become one
/// space, and past [`MAX_REASON_CHARS`] it is cut at a word boundary when one is near,
/// never inside a character, and marked with an ellipsis.
pub fn reason(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return "no reason was given".to_owned();
    }
    let Some((cut, _)) = flat.char_indices().nth(MAX_REASON_CHARS) else {
        return flat;
    };
    let head = &flat[..cut];
    // Prefer ending on a whole word unless that throws away more than a fifth of the text.
    let keep = match head.rfind(' ') {
        Some(space) if head[..space].chars().count() >= MAX_REASON_CHARS * 4 / 5 => space,
        _ => cut,
    };
    let head = head[..keep].trim_end_matches([' ', ',', ';', ':', '.', '-']);
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use contracts::messages::ImageVariant;

    use super::*;

    fn order_id() -> Uuid {
        Uuid::parse_str("01920000-0000-7000-8000-00001a2b3c4d").unwrap()
    }

    fn variant(name: &str) -> ImageVariant {
        ImageVariant {
            name: name.into(),
            key: format!("images/x/{name}.png"),
            width: 128,
            height: 128,
            format: "png".into(),
            bytes: 1000,
        }
    }

    #[test]
    fn a_confirmed_order_tells_the_total_as_money_under_a_short_id() {
        let draft = render(&Event::OrderConfirmed(OrderConfirmed {
            order_id: order_id(),
            customer_id: "c-1".into(),
            total_cents: 2500,
        }));
        assert_eq!(
            draft,
            Some(Draft {
                customer_id: "c-1".into(),
                kind: Kind::OrderConfirmed,
                about: order_id(),
                subject: "Order 1a2b3c4d confirmed".into(),
                message: "Your order 1a2b3c4d is confirmed: total $25.00".into(),
            })
        );
    }

    #[test]
    fn money_is_dollars_and_cents_with_separators() {
        assert_eq!(money(0), "$0.00");
        assert_eq!(money(5), "$0.05");
        assert_eq!(money(2500), "$25.00");
        assert_eq!(money(99_999), "$999.99");
        assert_eq!(money(100_000), "$1,000.00");
        assert_eq!(money(123_456_789), "$1,234,567.89");
        assert_eq!(money(-123_456), "-$1,234.56");
        assert_eq!(money(i64::MIN), "-$92,233,720,368,547,758.08");
    }

    #[test]
    fn a_short_id_is_the_random_tail_of_the_id() {
        assert_eq!(short_id(order_id()), "1a2b3c4d");
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_ne!(short_id(a), short_id(b), "ids made together stay apart");
    }

    #[test]
    fn a_cancelled_order_tells_the_reason() {
        let draft = render(&Event::OrderCancelled(OrderCancelled {
            order_id: order_id(),
            customer_id: Some("c-1".into()),
            reason: "payment declined:\n  insufficient funds".into(),
        }))
        .unwrap();
        assert_eq!(draft.kind, Kind::OrderCancelled);
        assert_eq!(draft.subject, "Order 1a2b3c4d cancelled");
        assert_eq!(
            draft.message,
            "Your order 1a2b3c4d was cancelled: payment declined: insufficient funds"
        );
    }

    #[test]
    fn a_cancel_tombstone_tells_nobody() {
        let tombstone = OrderCancelled {
            order_id: order_id(),
            customer_id: None,
            reason: "saga timed out".into(),
        };
        assert_eq!(render(&Event::OrderCancelled(tombstone)), None);
    }

    #[test]
    fn a_completed_image_tells_how_many_variants() {
        let completed = |outputs: Vec<ImageVariant>| {
            render(&Event::ImageCompleted(ImageCompleted {
                image_id: order_id(),
                customer_id: Some("c-2".into()),
                outputs,
            }))
            .unwrap()
        };
        let draft = completed(vec![variant("thumbnail:128"), variant("grayscale")]);
        assert_eq!(draft.customer_id, "c-2");
        assert_eq!(draft.kind, Kind::ImageCompleted);
        assert_eq!(draft.subject, "Image 1a2b3c4d is ready");
        assert_eq!(draft.message, "Your image 1a2b3c4d is ready: 2 variants");
        assert_eq!(
            completed(vec![variant("grayscale")]).message,
            "Your image 1a2b3c4d is ready: 1 variant"
        );
        assert_eq!(
            completed(vec![]).message,
            "Your image 1a2b3c4d is ready: no variants"
        );
    }

    #[test]
    fn a_failed_image_tells_the_reason() {
        let draft = render(&Event::ImageFailed(ImageFailed {
            image_id: order_id(),
            customer_id: Some("c-3".into()),
            reason: "not a PNG, JPEG or WebP image".into(),
        }))
        .unwrap();
        assert_eq!(draft.kind, Kind::ImageFailed);
        assert_eq!(draft.subject, "Image 1a2b3c4d could not be processed");
        assert_eq!(
            draft.message,
            "Your image 1a2b3c4d could not be processed: not a PNG, JPEG or WebP image"
        );
    }

    #[test]
    fn images_without_a_customer_tell_nobody() {
        let failed = ImageFailed {
            image_id: order_id(),
            customer_id: None,
            reason: "too large".into(),
        };
        let completed = ImageCompleted {
            image_id: order_id(),
            customer_id: None,
            outputs: vec![variant("grayscale")],
        };
        assert_eq!(render(&Event::ImageFailed(failed)), None);
        assert_eq!(render(&Event::ImageCompleted(completed)), None);
    }

    #[test]
    fn a_blank_customer_is_no_customer() {
        let confirmed = OrderConfirmed {
            order_id: order_id(),
            customer_id: "  ".into(),
            total_cents: 1,
        };
        assert_eq!(render(&Event::OrderConfirmed(confirmed)), None);
    }

    #[test]
    fn a_long_reason_is_cut_at_a_word_with_an_ellipsis() {
        let long = "the decoder gave up ".repeat(50);
        let expected = format!("{}…", "the decoder gave up ".repeat(10).trim_end());
        assert_eq!(reason(&long), expected);
        let unbroken = format!("{} {}", "a".repeat(100), "b".repeat(200));
        assert_eq!(
            reason(&unbroken),
            format!("{}…", &unbroken[..MAX_REASON_CHARS]),
            "a word boundary far back is not worth losing the text for"
        );
    }

    #[test]
    fn a_long_reason_without_spaces_is_cut_between_characters() {
        let long = "é".repeat(MAX_REASON_CHARS * 2);
        let cut = reason(&long);
        assert_eq!(cut, format!("{}…", "é".repeat(MAX_REASON_CHARS)));
    }

    #[test]
    fn a_short_reason_is_kept_and_a_blank_one_is_named() {
        assert_eq!(reason("out of stock"), "out of stock");
        assert_eq!(
            reason(&"x".repeat(MAX_REASON_CHARS)),
            "x".repeat(MAX_REASON_CHARS)
        );
        assert_eq!(reason(" \n "), "no reason was given");
    }

    #[test]
    fn the_longest_message_fits_its_schema() {
        let draft = render(&Event::ImageFailed(ImageFailed {
            image_id: order_id(),
            customer_id: Some("c".into()),
            reason: "x".repeat(2000),
        }))
        .unwrap();
        assert!(draft.message.chars().count() < 2000);
    }

    #[test]
    fn kinds_read_back_from_their_spelling() {
        for kind in [
            Kind::OrderConfirmed,
            Kind::OrderCancelled,
            Kind::ImageCompleted,
            Kind::ImageFailed,
        ] {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
        }
        assert_eq!(
            "order_shipped".parse::<Kind>(),
            Err(UnknownKind("order_shipped".into()))
        );
    }

    #[test]
    fn only_the_bound_events_are_accepted() {
        let confirmed = OrderConfirmed {
            order_id: order_id(),
            customer_id: "c-1".into(),
            total_cents: 1,
        };
        let envelope = Envelope::new("order", &confirmed);
        assert!(matches!(
            Event::from_envelope(&envelope),
            Ok(Event::OrderConfirmed(e)) if e == confirmed
        ));
        let other = Envelope::raw("order", "order.evt.created", serde_json::json!({}));
        assert!(matches!(
            Event::from_envelope(&other),
            Err(EventError::Unhandled(t)) if t == "order.evt.created"
        ));
        let broken = Envelope::raw("order", OrderConfirmed::TYPE, serde_json::json!({"x": 1}));
        assert!(matches!(
            Event::from_envelope(&broken),
            Err(EventError::Payload(_))
        ));
    }
}
