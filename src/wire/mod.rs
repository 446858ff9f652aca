//! The wire format and its codecs: [`Message`](crate::Message), the JSON
//! text it travels as, and the strict check the small codec reads it through;
//! [`Protocol`](crate::Protocol), how the connection layer speaks any other
//! message format. Nothing here does I/O; the connection loop calls in with
//! whole frames.

pub(crate) mod codec;
pub(crate) mod json_check;
pub(crate) mod message;
pub(crate) mod protocol;
