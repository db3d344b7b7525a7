//! A delivery for the `message` target: AMQP properties and headers from the front of the
//! input, the body the rest.
//!
//! | field | shape |
//! |---|---|
//! | `message_id`, `type`, `correlation_id`, `app_id` | [`Text`]: absent, a UUID in one of five spellings, text, or a known message type |
//! | `timestamp` | absent, any `u64`, or any `u32` |
//! | headers | up to 16, each a Warren header name (or any name) and any AMQP value, tables and arrays nested up to 3 deep |
//! | body | the rest of the input, as it is |
//!
//! String header values are raw bytes, a UUID, or a `traceparent` built from its fields, so
//! random input reaches past the UUID and trace-context checks.

use arbitrary::{Result, Unstructured};
use contracts::{Schemas, routing};
use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use uuid::Uuid;

use crate::{be, byte};

/// The headers Warren reads, in the order of their tags.
pub const HEADERS: [&str; 5] = [
    routing::HEADER_CAUSATION_ID,
    routing::HEADER_TRACEPARENT,
    routing::HEADER_STEP,
    routing::HEADER_SCHEMA_VERSION,
    routing::HEADER_ATTEMPT,
];

const MAX_HEADERS: u8 = 16;
const MAX_DEPTH: u8 = 3;
const MAX_NESTED: u8 = 4;

// Tags of a text property.
const ABSENT: u8 = 0;
const UUID: u8 = 1;
const TEXT: u8 = 2;
// 3: a known message type.

// Tags of an AMQP value; `value` takes the tag modulo `VALUE_TAGS`.
const BOOLEAN: u8 = 0;
const SHORT_SHORT_INT: u8 = 1;
const SHORT_SHORT_UINT: u8 = 2;
const SHORT_INT: u8 = 3;
const SHORT_UINT: u8 = 4;
const LONG_INT: u8 = 5;
const LONG_UINT: u8 = 6;
const LONG_LONG_INT: u8 = 7;
const FLOAT: u8 = 8;
const DOUBLE: u8 = 9;
const DECIMAL: u8 = 10;
const SHORT_STRING: u8 = 11;
const LONG_STRING: u8 = 12;
const FIELD_ARRAY: u8 = 13;
const TIMESTAMP: u8 = 14;
const FIELD_TABLE: u8 = 15;
const BYTE_ARRAY: u8 = 16;
const VOID: u8 = 17;
const VALUE_TAGS: u8 = 18;

// Kinds of string content in a header value.
const RAW: u8 = 0;
const UUID_TEXT: u8 = 1;
// 2: a traceparent.
const STRING_KINDS: u8 = 3;

/// A delivery as a consumer receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<'a> {
    pub properties: BasicProperties,
    pub body: &'a [u8],
}

/// Reads a delivery from fuzz input.
pub fn read(data: &[u8]) -> Result<Delivery<'_>> {
    let mut u = Unstructured::new(data);
    let mut properties = BasicProperties::default();
    if let Some(id) = text(&mut u)? {
        properties = properties.with_message_id(id);
    }
    if let Some(kind) = text(&mut u)? {
        properties = properties.with_type(kind);
    }
    if let Some(id) = text(&mut u)? {
        properties = properties.with_correlation_id(id);
    }
    if let Some(app) = text(&mut u)? {
        properties = properties.with_app_id(app);
    }
    match byte(&mut u)? % 3 {
        0 => {}
        1 => properties = properties.with_timestamp(u64::from_be_bytes(be(&mut u)?)),
        _ => {
            let seconds = u32::from_be_bytes(be(&mut u)?);
            properties = properties.with_timestamp(seconds.into());
        }
    }
    let count = byte(&mut u)? % (MAX_HEADERS + 1);
    if count > 0 {
        let mut headers = FieldTable::default();
        for _ in 0..count {
            let tag = byte(&mut u)?;
            let name = match HEADERS.get(usize::from(tag % 8)) {
                Some(name) => (*name).into(),
                None => short_string(short_bytes(&mut u)?),
            };
            headers.insert(name, value(&mut u, 0)?);
        }
        properties = properties.with_headers(headers);
    }
    Ok(Delivery {
        properties,
        body: u.take_rest(),
    })
}

/// A text property: absent, a UUID, text, or one of the embedded message types.
fn text(u: &mut Unstructured<'_>) -> Result<Option<ShortString>> {
    Ok(match byte(u)? % 4 {
        ABSENT => None,
        UUID => Some(uuid_text(u)?.into()),
        TEXT => Some(short_string(short_bytes(u)?)),
        _ => {
            let types = known_types();
            let index = usize::from(byte(u)?) % types.len();
            Some(types[index].as_str().into())
        }
    })
}

fn known_types() -> &'static [String] {
    static TYPES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    TYPES.get_or_init(|| Schemas::embedded().types().map(str::to_owned).collect())
}

/// A UUID in one of the spellings `Uuid::parse_str` takes.
fn uuid_text(u: &mut Unstructured<'_>) -> Result<String> {
    let id = Uuid::from_bytes(be(u)?);
    Ok(match byte(u)? % 5 {
        0 => id.hyphenated().to_string(),
        1 => id.simple().to_string(),
        2 => id.urn().to_string(),
        3 => id.braced().to_string(),
        _ => id.hyphenated().to_string().to_uppercase(),
    })
}

/// A `traceparent` from its fields, mostly well formed, sometimes not.
fn traceparent(u: &mut Unstructured<'_>) -> Result<String> {
    let version = byte(u)?;
    let trace_id = u128::from_be_bytes(be(u)?);
    let parent_id = u64::from_be_bytes(be(u)?);
    let flags = byte(u)?;
    let text = format!("{version:02x}-{trace_id:032x}-{parent_id:016x}-{flags:02x}");
    Ok(match byte(u)? % 4 {
        0 => text,
        1 => format!("{text}-{}", String::from_utf8_lossy(short_bytes(u)?)),
        2 => format!(" {}\t", text.to_uppercase()),
        _ => text.replacen('-', "", usize::from(byte(u)? % 4)),
    })
}

/// Any AMQP value, nested at most [`MAX_DEPTH`] deep.
fn value(u: &mut Unstructured<'_>, depth: u8) -> Result<AMQPValue> {
    Ok(match byte(u)? % VALUE_TAGS {
        BOOLEAN => AMQPValue::Boolean(byte(u)? & 1 == 1),
        SHORT_SHORT_INT => AMQPValue::ShortShortInt(i8::from_be_bytes(be(u)?)),
        SHORT_SHORT_UINT => AMQPValue::ShortShortUInt(byte(u)?),
        SHORT_INT => AMQPValue::ShortInt(i16::from_be_bytes(be(u)?)),
        SHORT_UINT => AMQPValue::ShortUInt(u16::from_be_bytes(be(u)?)),
        LONG_INT => AMQPValue::LongInt(i32::from_be_bytes(be(u)?)),
        LONG_UINT => AMQPValue::LongUInt(u32::from_be_bytes(be(u)?)),
        LONG_LONG_INT => AMQPValue::LongLongInt(i64::from_be_bytes(be(u)?)),
        FLOAT => AMQPValue::Float(f32::from_be_bytes(be(u)?)),
        DOUBLE => AMQPValue::Double(f64::from_be_bytes(be(u)?)),
        DECIMAL => AMQPValue::DecimalValue(DecimalValue {
            scale: byte(u)?,
            value: u32::from_be_bytes(be(u)?),
        }),
        SHORT_STRING => AMQPValue::ShortString(short_string(&string_value(u)?)),
        LONG_STRING => AMQPValue::LongString(LongString::from(string_value(u)?)),
        FIELD_ARRAY if depth < MAX_DEPTH => {
            let count = byte(u)? % (MAX_NESTED + 1);
            let values = (0..count)
                .map(|_| value(u, depth + 1))
                .collect::<Result<Vec<_>>>()?;
            AMQPValue::FieldArray(FieldArray::from(values))
        }
        TIMESTAMP => AMQPValue::Timestamp(u64::from_be_bytes(be(u)?)),
        FIELD_TABLE if depth < MAX_DEPTH => {
            let count = byte(u)? % (MAX_NESTED + 1);
            let mut table = FieldTable::default();
            for _ in 0..count {
                let name = short_string(short_bytes(u)?);
                table.insert(name, value(u, depth + 1)?);
            }
            AMQPValue::FieldTable(table)
        }
        BYTE_ARRAY => AMQPValue::ByteArray(ByteArray::from(short_bytes(u)?)),
        _ => AMQPValue::Void,
    })
}

/// The content of a string value: raw bytes (up to 64 KiB), a UUID or a `traceparent`.
fn string_value(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    Ok(match byte(u)? % STRING_KINDS {
        RAW => {
            let len = u16::from_be_bytes(be(u)?);
            u.bytes(usize::from(len))?.to_vec()
        }
        UUID_TEXT => uuid_text(u)?.into_bytes(),
        _ => traceparent(u)?.into_bytes(),
    })
}

/// Up to 255 bytes, their count first.
fn short_bytes<'a>(u: &mut Unstructured<'a>) -> Result<&'a [u8]> {
    let len = byte(u)?;
    u.bytes(len.into())
}

/// Bytes as an AMQP short string: lossy UTF-8, cut to 255 bytes on a character boundary.
fn short_string(bytes: &[u8]) -> ShortString {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    let mut end = text.len().min(usize::from(u8::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.into()
}

/// Writes fuzz input that [`read`] turns back into `properties` and `body`, for the
/// properties a Warren producer sets (ids, type, app id, timestamp, header values as Warren
/// writes them). Returns `None` for what this format cannot spell.
pub fn write(properties: &BasicProperties, body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for field in [
        properties.message_id(),
        properties.kind(),
        properties.correlation_id(),
        properties.app_id(),
    ] {
        write_text(&mut out, field.as_ref())?;
    }
    match properties.timestamp() {
        None => out.push(0),
        Some(seconds) => {
            out.push(1);
            out.extend(seconds.to_be_bytes());
        }
    }
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty).inner();
    out.push(
        u8::try_from(headers.len())
            .ok()
            .filter(|n| *n <= MAX_HEADERS)?,
    );
    for (name, value) in headers {
        match HEADERS.iter().position(|known| *known == name.as_str()) {
            Some(index) => out.push(u8::try_from(index).ok()?),
            None => {
                out.push(7);
                write_bytes_u8(&mut out, name.as_str().as_bytes())?;
            }
        }
        write_value(&mut out, value)?;
    }
    out.extend_from_slice(body);
    Some(out)
}

fn write_text(out: &mut Vec<u8>, text: Option<&ShortString>) -> Option<()> {
    match text {
        None => out.push(ABSENT),
        Some(text) => match Uuid::parse_str(text.as_str()) {
            Ok(id) if id.hyphenated().to_string() == text.as_str() => {
                out.push(UUID);
                out.extend(id.as_bytes());
                out.push(0);
            }
            _ => {
                out.push(TEXT);
                write_bytes_u8(out, text.as_str().as_bytes())?;
            }
        },
    }
    Some(())
}

fn write_value(out: &mut Vec<u8>, value: &AMQPValue) -> Option<()> {
    match value {
        AMQPValue::LongString(text) => {
            out.extend([LONG_STRING, RAW]);
            out.extend(u16::try_from(text.as_bytes().len()).ok()?.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        AMQPValue::ShortString(text) => {
            out.extend([SHORT_STRING, RAW]);
            out.extend(u16::try_from(text.as_str().len()).ok()?.to_be_bytes());
            out.extend_from_slice(text.as_str().as_bytes());
        }
        AMQPValue::LongLongInt(n) => {
            out.push(LONG_LONG_INT);
            out.extend(n.to_be_bytes());
        }
        AMQPValue::LongInt(n) => {
            out.push(LONG_INT);
            out.extend(n.to_be_bytes());
        }
        AMQPValue::Void => out.push(VOID),
        _ => return None,
    }
    Some(())
}

fn write_bytes_u8(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.push(u8::try_from(bytes.len()).ok()?);
    out.extend_from_slice(bytes);
    Some(())
}
