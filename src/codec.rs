//! The message codec: [`Message`] to JSON text and back.
//!
//! serde + serde_json is the default codec. Decoding errors carry the position
//! of the fault and, where the input was valid JSON with an integer
//! `requestID`, that id, so the error reply can be correlated by the peer.

use std::fmt;

use crate::Message;

#[cfg(not(feature = "serde"))]
compile_error!("wsloop needs a message codec: enable the `serde` feature (the default)");

/// Why an inbound message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The `requestID` of the message, if it could still be read.
    pub request_id: Option<i64>,
    /// 1-based line of the fault (0 when unknown).
    pub line: usize,
    /// 1-based column of the fault (0 when unknown).
    pub column: usize,
    /// What was wrong, without the position.
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid message at line {} column {}: {}",
            self.line, self.column, self.reason
        )
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `msg` as one line of compact JSON, the seed's field order.
pub fn encode(msg: &Message) -> String {
    // Serializing a struct of strings, an integer and a bool cannot fail.
    serde_json::to_string(msg).unwrap_or_default()
}

/// Decodes one message from the bytes of a text or binary frame.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    serde_json::from_slice(bytes).map_err(|err| DecodeError {
        request_id: salvage_request_id(bytes),
        line: err.line(),
        column: err.column(),
        reason: strip_position(&err.to_string()),
    })
}

/// Reads just `requestID` from input that failed to decode as a whole
/// (for example `{"requestID":4,"success":"yes"}`), so the error reply can
/// carry it. Returns `None` unless the input is valid JSON with an integer id.
fn salvage_request_id(bytes: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(rename = "requestID")]
        request_id: i64,
    }
    serde_json::from_slice::<IdOnly>(bytes)
        .ok()
        .map(|m| m.request_id)
}

/// serde_json appends " at line L column C"; we report the position in our
/// own fields, so keep just the reason.
fn strip_position(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_seed_fields_in_order_and_omits_empty_error() {
        let json = encode(&Message::request(1, "go"));
        assert_eq!(
            json,
            r#"{"requestID":1,"command":"go","someOtherThing":"","success":false}"#
        );
    }

    #[test]
    fn encodes_error_when_set() {
        let json = encode(&Message::error_reply(2, "bad"));
        assert!(
            json.ends_with(r#""success":false,"error":"bad"}"#),
            "{json}"
        );
    }

    #[test]
    fn ignores_unknown_fields_and_defaults_missing_ones() {
        let m = decode(br#"{"requestID":5,"extra":[1,{"a":null}]}"#).unwrap();
        assert_eq!(m, Message::request(5, ""));
    }

    #[test]
    fn reports_position_and_salvages_the_id() {
        let err = decode(br#"{"requestID":9,"success":"yes"}"#).unwrap_err();
        assert_eq!(err.request_id, Some(9));
        assert_eq!((err.line, err.column), (1, 30));
        assert!(err.to_string().contains("line 1 column 30"), "{err}");

        let err = decode(b"{\"requestID\":").unwrap_err();
        assert_eq!(err.request_id, None);
        assert!(err.column > 0);
    }
}
