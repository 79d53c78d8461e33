//! The message that carries an accepted write from `serve` to `consume`:
//! persistent JSON `{"id", "value", "accepted_at"}` with `message_id` = id.

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use super::record::{ValueError, validate_value};

/// The bytes of an encoded message besides its value's characters: the
/// keys, the id, the value's quotes and an RFC 3339 time with nanoseconds
/// (103 at most; escapes in the value may need more, which only costs one
/// more allocation).
const ENVELOPE_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataMessage {
    pub id: Uuid,
    pub value: String,
    /// When the API accepted the write (before the broker confirmed it).
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
}

/// Why a delivered payload can never be persisted (it goes to the dead-letter queue).
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("payload is not a data message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("payload carries an invalid value: {0}")]
    InvalidValue(#[from] ValueError),
}

impl DataMessage {
    /// A new message for a value accepted now, with a fresh time-ordered id.
    pub fn accept(value: String) -> Self {
        Self {
            id: Uuid::now_v7(),
            value,
            accepted_at: OffsetDateTime::now_utc(),
        }
    }

    /// The JSON `{"id", "value", "accepted_at"}`, the same bytes as serde's
    /// (a test holds them equal), written by hand because it is on every
    /// write: only the value can need escaping, and the buffer is sized for
    /// the whole message at once instead of growing three times.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.value.len() + ENVELOPE_BYTES);
        body.extend_from_slice(br#"{"id":""#);
        body.extend_from_slice(
            self.id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        body.extend_from_slice(br#"","value":"#);
        serde_json::to_writer(&mut body, &self.value).expect("a string always serialises");
        body.extend_from_slice(br#","accepted_at":""#);
        self.accepted_at
            .format_into(&mut body, &Rfc3339)
            .expect("a time of this era has an RFC 3339 form");
        body.extend_from_slice(br#""}"#);
        body
    }

    /// Parses and re-validates a payload: the consumer trusts nothing on the wire.
    pub fn decode(payload: &[u8]) -> Result<Self, MessageError> {
        let message: Self = serde_json::from_slice(payload)?;
        validate_value(&message.value)?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_a_round_trip() {
        let message = DataMessage::accept("hello ☃".into());
        let decoded = DataMessage::decode(&message.encode()).unwrap();
        assert_eq!(decoded, message);
    }

    #[test]
    fn the_wire_format_has_the_documented_fields() {
        let message = DataMessage {
            id: Uuid::nil(),
            value: "v".into(),
            accepted_at: time::macros::datetime!(2026-01-02 03:04:05 UTC),
        };
        let json: serde_json::Value = serde_json::from_slice(&message.encode()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000000",
                "value": "v",
                "accepted_at": "2026-01-02T03:04:05Z"
            })
        );
    }

    #[test]
    fn the_encoding_is_serdes_byte_for_byte() {
        for value in ["v", "a \"quoted\" value\\ with\n\tcontrol \u{1} and ☃", ""] {
            let mut message = DataMessage::accept(value.into());
            for nanos in [0, 120_000_000, 123_456_789] {
                message.accepted_at = message.accepted_at.replace_nanosecond(nanos).unwrap();
                let by_serde = serde_json::to_vec(&message).unwrap();
                assert_eq!(
                    String::from_utf8(message.encode()).unwrap(),
                    String::from_utf8(by_serde).unwrap()
                );
            }
        }
    }

    #[test]
    fn accepted_ids_are_uuid_v7_and_increase() {
        let first = DataMessage::accept("a".into());
        let second = DataMessage::accept("b".into());
        assert_eq!(first.id.get_version_num(), 7);
        assert!(second.id > first.id);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let bad: [&[u8]; 7] = [
            b"",
            b"not json",
            b"{}",
            br#"{"id":"nope","value":"v","accepted_at":"2026-01-02T03:04:05Z"}"#,
            br#"{"id":"00000000-0000-0000-0000-000000000000","value":"v"}"#,
            br#"{"id":"00000000-0000-0000-0000-000000000000","value":"","accepted_at":"2026-01-02T03:04:05Z"}"#,
            br#"{"id":"00000000-0000-0000-0000-000000000000","value":"a\u0000b","accepted_at":"2026-01-02T03:04:05Z"}"#,
        ];
        for payload in bad {
            assert!(DataMessage::decode(payload).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn an_over_long_value_is_refused() {
        let message = DataMessage::accept("x".repeat(8193));
        assert!(matches!(
            DataMessage::decode(&message.encode()),
            Err(MessageError::InvalidValue(ValueError::TooLong(8193)))
        ));
    }
}
