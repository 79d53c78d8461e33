//! The opaque cursor of `GET /data`: the id of the last record of a page.
//!
//! Encoded as URL-safe base64 of a version byte followed by the 16 id bytes,
//! so clients cannot mistake it for an id and the format can change later.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

const VERSION: u8 = 1;

/// Position after which the next page starts (exclusive, newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub after: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`cursor` is not a cursor returned by this API")]
pub struct CursorError;

impl Cursor {
    pub fn new(after: Uuid) -> Self {
        Self { after }
    }

    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 17];
        bytes[0] = VERSION;
        bytes[1..].copy_from_slice(self.after.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Self, CursorError> {
        // 17 bytes are 23 base64 characters; refuse anything longer before decoding.
        if text.len() != 23 {
            return Err(CursorError);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| CursorError)?;
        match bytes.as_slice() {
            [VERSION, id @ ..] if id.len() == 16 => Ok(Self {
                after: Uuid::from_slice(id).map_err(|_| CursorError)?,
            }),
            _ => Err(CursorError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_a_round_trip() {
        for _ in 0..1000 {
            let cursor = Cursor::new(Uuid::now_v7());
            assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        }
        let edge = Cursor::new(Uuid::max());
        assert_eq!(Cursor::decode(&edge.encode()), Ok(edge));
    }

    #[test]
    fn an_encoded_cursor_is_url_safe_and_opaque() {
        let id = Uuid::now_v7();
        let text = Cursor::new(id).encode();
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert!(!text.contains(&id.to_string()));
    }

    /// The shape the OpenAPI document gives cursors: every string of that
    /// shape is a cursor this API accepts.
    const SHAPE_FIRST: &str = "A";
    const SHAPE_SECOND: &str = "QRSTUVWXYZabcdef";
    const SHAPE_LAST: &str = "AEIMQUYcgkosw048";
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    #[test]
    fn every_string_of_the_documented_shape_decodes() {
        use rand::seq::IndexedRandom;
        let mut rng = rand::rng();
        let pick = |set: &str, rng: &mut rand::rngs::ThreadRng| {
            *set.as_bytes().choose(rng).unwrap() as char
        };
        for _ in 0..10_000 {
            let mut text = String::from(SHAPE_FIRST);
            text.push(pick(SHAPE_SECOND, &mut rng));
            for _ in 0..20 {
                text.push(pick(ALPHABET, &mut rng));
            }
            text.push(pick(SHAPE_LAST, &mut rng));
            assert!(Cursor::decode(&text).is_ok(), "{text}");
        }
        // And every encoded cursor has that shape.
        for _ in 0..1000 {
            let text = Cursor::new(Uuid::now_v7()).encode();
            assert!(text.starts_with(SHAPE_FIRST));
            assert!(SHAPE_SECOND.contains(&text[1..2]));
            assert!(SHAPE_LAST.contains(&text[22..]));
        }
    }

    #[test]
    fn garbage_is_refused() {
        let bad = [
            "",
            "abc",
            "not a cursor at all!!!!",
            &"A".repeat(23), // decodes, but carries version 0
            &"A".repeat(1000),
            "01890a5d-ac96-774b-bcce-b302099a8057",
        ];
        for text in bad {
            assert_eq!(Cursor::decode(text), Err(CursorError), "{text:?}");
        }
    }

    #[test]
    fn a_changed_version_byte_is_refused() {
        let mut bytes = [0u8; 17];
        bytes[0] = 2;
        let text = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(Cursor::decode(&text), Err(CursorError));
    }
}
