//! A command's record: what was asked of which client, under which
//! `requestID`, and where it stands. Every record ends in exactly one final
//! state; the operator reads records through the API.
//!
//! ```text
//!   queued ──▶ sent ──▶ replied | interrupted
//!     │          │
//!     ├──────────┴──▶ expired        (its time to live ran out)
//!     └──▶ cancelled                 (DELETE while still queued)
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Message;

/// A reply that starts `someOtherThing` with this (and says `success:
/// false`) means the device had started the command but could not finish
/// it (it crashed): the record ends `interrupted`, not `replied`. Fixed in
/// the wire contract with the device side.
pub const INTERRUPTED_PREFIX: &str = "interrupted:";

/// Where a command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded, not yet written to the client.
    Queued,
    /// Written to the client at least once; no reply yet.
    Sent,
    /// Final: the client replied (with `success` true or false).
    Replied,
    /// Final: its time to live ran out before a reply.
    Expired,
    /// Final: the operator cancelled it while it was queued.
    Cancelled,
    /// Final: the client had started it but could not finish.
    Interrupted,
}

impl Status {
    /// Whether no further state can follow.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Sent)
    }

    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sent => "sent",
            Status::Replied => "replied",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
        }
    }
}

/// The client's reply, as it came (the article's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// What the client reported.
    pub success: bool,
    /// The client's text.
    #[serde(rename = "someOtherThing")]
    pub some_other_thing: String,
    /// The client's error text, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// One command for one named client and everything that happened to it.
/// Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unique for this client, never reused (across restarts too).
    #[serde(rename = "requestID")]
    pub request_id: i64,
    /// The client's name.
    pub client: String,
    /// The command text.
    pub command: String,
    /// Where it stands.
    pub status: Status,
    /// The reply, once `replied` or `interrupted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// When it was recorded (and acknowledged).
    pub queued_at: u64,
    /// When it was last written to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<u64>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// When it expires unless final by then.
    pub expires_at: u64,
}

impl Record {
    /// The message that carries this command to the client.
    pub fn message(&self) -> Message {
        Message::request(self.request_id, self.command.clone())
    }

    /// Moves to the final state `status` at `now`.
    pub fn finish(&mut self, status: Status, now: u64) {
        self.status = status;
        self.finished_at = Some(now);
    }

    /// Completes the record with the client's `reply`: `interrupted` when
    /// the reply says so (see [`INTERRUPTED_PREFIX`]), else `replied`.
    pub fn complete(&mut self, reply: &Message, now: u64) {
        let interrupted = !reply.success && reply.some_other_thing.starts_with(INTERRUPTED_PREFIX);
        self.reply = Some(Reply {
            success: reply.success,
            some_other_thing: reply.some_other_thing.clone(),
            error: reply.error.clone(),
        });
        let status = match interrupted {
            true => Status::Interrupted,
            false => Status::Replied,
        };
        self.finish(status, now);
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            request_id: 7,
            client: "dev-1".into(),
            command: "reboot".into(),
            status: Status::Sent,
            reply: None,
            queued_at: 1,
            sent_at: Some(2),
            finished_at: None,
            expires_at: 10,
        }
    }

    #[test]
    fn interrupted_only_with_the_prefix_and_no_success() {
        let mut r = record();
        let mut reply = Message::error_reply(7, "");
        reply.some_other_thing = "interrupted: device restarted".into();
        r.complete(&reply, 3);
        assert_eq!(r.status, Status::Interrupted);
        let mut r = record();
        reply.success = true;
        r.complete(&reply, 3);
        assert_eq!(r.status, Status::Replied);
        assert_eq!(r.finished_at, Some(3));
    }

    #[test]
    fn json_names_match_the_api() {
        let text = serde_json::to_string(&record()).unwrap_or_default();
        assert!(text.contains("\"requestID\":7"), "{text}");
        assert!(text.contains("\"status\":\"sent\""), "{text}");
        assert!(!text.contains("reply"), "{text}");
    }
}
