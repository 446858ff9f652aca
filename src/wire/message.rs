//! The wire format: one JSON object per WebSocket text frame, exactly as the
//! original Go program (`../shared/seed/`) sends it.
//!
//! ```json
//! {"requestID":7,"command":"Eject the hot dog 7.","someOtherThing":"","success":false}
//! ```
//!
//! Every field is optional on input (missing ones take their defaults) and
//! unknown fields are ignored, as Go's `encoding/json` does. On output the four
//! seed fields are always written, in the seed's order; `error` only when set.
//! The serde derives below serve the default codec; the nanoserde codec
//! (see `codec`) reads each field through its own strict check and writes
//! by hand.

/// One protocol message: a request, a reply or a server-pushed command.
///
/// Field names on the wire are the seed's: `requestID`, `command`,
/// `someOtherThing`, `success`, plus wsloop's optional `error`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct Message {
    /// Correlates a reply with its request (`requestID`; Go's `int`, 64 bits).
    #[cfg_attr(feature = "serde", serde(rename = "requestID"))]
    pub request_id: i64,
    /// What the sender asks the other side to do.
    pub command: String,
    /// Free text; the seed's replies put their result here (`someOtherThing`).
    #[cfg_attr(feature = "serde", serde(rename = "someOtherThing"))]
    pub some_other_thing: String,
    /// Whether the request was processed.
    pub success: bool,
    /// Why a request failed; empty (and omitted on the wire) otherwise.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "String::is_empty"))]
    pub error: String,
}

impl Message {
    /// A request carrying `command` under `request_id`.
    pub fn request(request_id: i64, command: impl Into<String>) -> Self {
        Message {
            request_id,
            command: command.into(),
            ..Message::default()
        }
    }

    /// The reply the seed's server sends: same `requestID`, `success: true`
    /// and `someOtherThing: "Command '<command>' processed successfully."`.
    pub fn seed_reply(&self) -> Self {
        // Pushed rather than `format!`ed: one exact allocation and no
        // formatting machinery, on the path of every request the seed answers.
        const BEFORE: &str = "Command '";
        const AFTER: &str = "' processed successfully.";
        let mut text = String::with_capacity(BEFORE.len() + self.command.len() + AFTER.len());
        text.push_str(BEFORE);
        text.push_str(&self.command);
        text.push_str(AFTER);
        Message {
            request_id: self.request_id,
            some_other_thing: text,
            success: true,
            ..Message::default()
        }
    }

    /// An error reply: `success: false` with `error` saying what went wrong.
    pub fn error_reply(request_id: i64, error: impl Into<String>) -> Self {
        Message {
            request_id,
            error: error.into(),
            ..Message::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_reply_matches_the_go_server() {
        let reply = Message::request(3, "Eject the hot dog 3.").seed_reply();
        assert_eq!(reply.request_id, 3);
        assert!(reply.success);
        assert_eq!(
            reply.some_other_thing,
            "Command 'Eject the hot dog 3.' processed successfully."
        );
        assert!(reply.command.is_empty() && reply.error.is_empty());
    }
}
