//! The business vocabulary of svc: a record, the value a client may submit,
//! the message that carries an accepted write to the consumer, and the
//! opaque cursor of the list endpoint. Pure code, no I/O.

pub mod cursor;
pub mod message;
pub mod record;

pub use cursor::{Cursor, CursorError};
pub use message::{DataMessage, MessageError};
pub use record::{MAX_VALUE_BYTES, Record, ValueError, validate_value};
