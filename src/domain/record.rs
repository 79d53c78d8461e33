//! A persisted record and the rules for the value a client submits.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// The longest value accepted, in bytes of UTF-8.
pub const MAX_VALUE_BYTES: usize = 8192;

/// A record as stored in Postgres and returned by `GET /data/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Record {
    pub id: Uuid,
    pub value: String,
    /// When the consumer persisted the record.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl Record {
    /// The JSON body served for this record; it is also what the cache holds,
    /// so a cache hit is served without re-encoding.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serialises")
    }
}

/// Why a submitted value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`value` must not be empty")]
    Empty,
    #[error("`value` is {0} bytes long; the limit is {MAX_VALUE_BYTES} bytes")]
    TooLong(usize),
    /// Postgres `text` cannot hold U+0000, so such a value could never be
    /// persisted: refused here rather than accepted and lost.
    #[error("`value` must not contain the NUL character (U+0000)")]
    Nul,
}

/// Checks a submitted value against the contract: non-empty, at most
/// [`MAX_VALUE_BYTES`] bytes, and storable (no NUL). Being a `str`, it is
/// already valid UTF-8, so it has no lone surrogates either: those are the
/// store's only other refusal of a text value.
pub fn validate_value(value: &str) -> Result<(), ValueError> {
    if value.is_empty() {
        return Err(ValueError::Empty);
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(ValueError::TooLong(value.len()));
    }
    if value.as_bytes().contains(&0) {
        return Err(ValueError::Nul);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_value_is_refused() {
        assert_eq!(validate_value(""), Err(ValueError::Empty));
    }

    #[test]
    fn value_at_the_limit_is_accepted_and_one_byte_more_is_refused() {
        assert_eq!(validate_value(&"a".repeat(MAX_VALUE_BYTES)), Ok(()));
        assert_eq!(
            validate_value(&"a".repeat(MAX_VALUE_BYTES + 1)),
            Err(ValueError::TooLong(MAX_VALUE_BYTES + 1))
        );
    }

    #[test]
    fn the_limit_counts_bytes_not_characters() {
        // "é" is two bytes: 4097 of them are 8194 bytes.
        let value = "é".repeat(4097);
        assert_eq!(validate_value(&value), Err(ValueError::TooLong(8194)));
    }

    #[test]
    fn a_nul_anywhere_is_refused() {
        for value in ["\0", "a\0b", "ab\0", "\0ab"] {
            assert_eq!(validate_value(value), Err(ValueError::Nul), "{value:?}");
        }
        // Other control characters are storable, and accepted.
        assert_eq!(validate_value("\u{1}\t\n\u{7f}"), Ok(()));
    }

    #[test]
    fn record_json_has_the_documented_fields() {
        let record = Record {
            id: Uuid::nil(),
            value: "hello".into(),
            created_at: time::macros::datetime!(2026-01-02 03:04:05.5 UTC),
        };
        let json: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000000",
                "value": "hello",
                "created_at": "2026-01-02T03:04:05.5Z"
            })
        );
    }
}
