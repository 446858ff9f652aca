//! [`Protocol`]: what the connection layer needs to know about a message
//! format (encode, decode, which messages are replies and how they are
//! correlated), and the ready-made ones: [`Seed`], the original program's
//! [`Message`]; with feature `serde`, [`Json<T>`] for the application's own
//! serde types; with feature `nanoserde`, [`NanoJson<T>`] for its nanoserde
//! types.
//!
//! The loop, the outbound queue and the hub never see a message: they carry
//! encoded frames. A protocol is used only at the edges, where a typed
//! [`Peer`](crate::Peer) encodes what it sends and the handler decodes what
//! arrives, so a program speaking one protocol has one copy of the loop.

use async_tungstenite::tungstenite::Message as Frame;

use super::codec::{self, DecodeError};
use crate::Message;

/// A message format spoken over a connection.
///
/// Correlation: a message for which [`is_reply`](Self::is_reply) is true
/// completes the outstanding request (from [`Peer::request_message`]) whose
/// id [`correlation_id`](Self::correlation_id) reads; every other message
/// goes to the [`Handler`](crate::Handler). Ids are `i64` (the seed's
/// `requestID`, Go's `int`); a request is stamped with a fresh one through
/// [`set_correlation_id`](Self::set_correlation_id).
///
/// [`Peer::request_message`]: crate::Peer::request_message
pub trait Protocol: Send + Sync + 'static {
    /// The messages of this protocol.
    type Message: Send + 'static;

    /// The frame that carries `message` (text or binary).
    fn encode(message: &Self::Message) -> Frame;

    /// Reads one message from the payload of a text or binary frame. The
    /// error says where the fault is and, when it can still be read, the
    /// message's correlation id (in [`DecodeError::request_id`]).
    fn decode(bytes: &[u8]) -> Result<Self::Message, DecodeError>;

    /// Whether `message` answers a request rather than asks something.
    fn is_reply(message: &Self::Message) -> bool;

    /// The id that correlates `message` with its request, if it has one.
    fn correlation_id(message: &Self::Message) -> Option<i64>;

    /// Stamps `message` with the correlation id `id` (a request's fresh id).
    fn set_correlation_id(message: &mut Self::Message, id: i64);

    /// What to answer a message that could not be decoded (`None`: answer
    /// nothing; the connection lives on either way).
    fn error_reply(error: &DecodeError) -> Option<Self::Message>;
}

/// The original program's protocol: [`Message`] as JSON, through whichever
/// codec feature is on; the default type parameter everywhere.
///
/// A reply is a message without a `command` that reports a result
/// (`success`, or an `error`); it is correlated by `requestID`. A malformed
/// message is answered with [`Message::error_reply`] under the id that could
/// be salvaged (or 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seed;

impl Protocol for Seed {
    type Message = Message;

    fn encode(message: &Message) -> Frame {
        Frame::text(codec::encode(message))
    }

    fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        codec::decode(bytes)
    }

    fn is_reply(message: &Message) -> bool {
        message.command.is_empty() && (message.success || !message.error.is_empty())
    }

    fn correlation_id(message: &Message) -> Option<i64> {
        Some(message.request_id)
    }

    fn set_correlation_id(message: &mut Message, id: i64) {
        message.request_id = id;
    }

    fn error_reply(error: &DecodeError) -> Option<Message> {
        let id = error.request_id.unwrap_or(0);
        Some(Message::error_reply(id, error.to_string()))
    }
}

/// What [`Json<T>`] and [`NanoJson<T>`] need to know about the
/// application's own message type: which field correlates replies with
/// requests, and which messages are replies.
///
/// ```
/// use wsloop::Correlated;
///
/// // With `#[derive(serde::Serialize, serde::Deserialize)]` for `Json<Chat>`.
/// struct Chat {
///     id: i64,
///     text: String,
///     ok: bool,
/// }
///
/// impl Correlated for Chat {
///     const ID_FIELD: &'static str = "id";
///     fn correlation_id(&self) -> Option<i64> {
///         Some(self.id)
///     }
///     fn set_correlation_id(&mut self, id: i64) {
///         self.id = id;
///     }
///     fn is_reply(&self) -> bool {
///         self.ok
///     }
/// }
/// ```
pub trait Correlated: Sized + Send + 'static {
    /// The name of the JSON field holding the correlation id (an integer):
    /// it is read from a message that fails to decode, so that the error
    /// reply can be correlated too.
    const ID_FIELD: &'static str;

    /// The correlation id, if this message has one.
    fn correlation_id(&self) -> Option<i64>;

    /// Stamps a request with its fresh correlation id.
    fn set_correlation_id(&mut self, id: i64);

    /// Whether this message answers a request.
    fn is_reply(&self) -> bool;

    /// What to answer a malformed message; `error.request_id` is the
    /// salvaged [`ID_FIELD`](Self::ID_FIELD). Answers nothing by default.
    fn error_reply(error: &DecodeError) -> Option<Self> {
        let _ = error;
        None
    }
}

/// JSON through serde for the application's own type `T` (feature
/// `serde`): `T` is [`Serialize`](serde::Serialize),
/// [`Deserialize`](serde::Deserialize) and [`Correlated`]. Sent as text
/// frames; text and binary frames are read alike.
///
/// `examples/typed_chat.rs` is a whole program with its own request, reply
/// and push types.
#[cfg(feature = "serde")]
pub struct Json<T>(std::marker::PhantomData<fn() -> T>);

#[cfg(feature = "serde")]
impl<T> Protocol for Json<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Correlated,
{
    type Message = T;

    fn encode(message: &T) -> Frame {
        // A serde type whose Serialize fails (a map with non-string keys)
        // is the application's bug; it goes out as `null`, visibly wrong.
        Frame::text(serde_json::to_string(message).unwrap_or_else(|_| "null".into()))
    }

    fn decode(bytes: &[u8]) -> Result<T, DecodeError> {
        serde_json::from_slice(bytes).map_err(|err| DecodeError {
            request_id: serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|value| value.get(T::ID_FIELD)?.as_i64()),
            line: err.line(),
            column: err.column().max(1),
            reason: strip_position(&err.to_string()),
        })
    }

    fn is_reply(message: &T) -> bool {
        message.is_reply()
    }

    fn correlation_id(message: &T) -> Option<i64> {
        message.correlation_id()
    }

    fn set_correlation_id(message: &mut T, id: i64) {
        message.set_correlation_id(id);
    }

    fn error_reply(error: &DecodeError) -> Option<T> {
        T::error_reply(error)
    }
}

/// serde_json appends " at line L column C"; the position has its own
/// fields in [`DecodeError`].
#[cfg(feature = "serde")]
fn strip_position(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// JSON through nanoserde for the application's own type `T` (feature
/// `nanoserde`, for small builds without serde): `T` is
/// [`SerJson`](nanoserde::SerJson), [`DeJson`](nanoserde::DeJson) and
/// [`Correlated`].
///
/// Every inbound message first passes wsloop's strict JSON syntax check
/// (nanoserde 0.2.1 can panic or loop forever on some malformed input). A
/// decoding error has the position of the fault, but no salvaged id:
/// [`Correlated::error_reply`] gets `request_id: None`.
#[cfg(feature = "nanoserde")]
pub struct NanoJson<T>(std::marker::PhantomData<fn() -> T>);

#[cfg(feature = "nanoserde")]
impl<T> Protocol for NanoJson<T>
where
    T: nanoserde::SerJson + nanoserde::DeJson + Correlated,
{
    type Message = T;

    fn encode(message: &T) -> Frame {
        Frame::text(message.serialize_json())
    }

    fn decode(bytes: &[u8]) -> Result<T, DecodeError> {
        super::json_check::check_syntax(bytes)?;
        let text = std::str::from_utf8(bytes).map_err(|err| DecodeError {
            request_id: None,
            line: 1,
            column: err.valid_up_to() + 1,
            reason: "invalid UTF-8".into(),
        })?;
        T::deserialize_json(text).map_err(|err| DecodeError {
            request_id: None,
            line: err.line + 1,
            column: err.col + 1,
            reason: format!("not a message of this protocol: {:?}", err.msg),
        })
    }

    fn is_reply(message: &T) -> bool {
        message.is_reply()
    }

    fn correlation_id(message: &T) -> Option<i64> {
        message.correlation_id()
    }

    fn set_correlation_id(message: &mut T, id: i64) {
        message.set_correlation_id(id);
    }

    fn error_reply(error: &DecodeError) -> Option<T> {
        T::error_reply(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_protocol_tells_replies_from_requests() {
        let request = Message::request(4, "go");
        assert!(!Seed::is_reply(&request));
        assert!(Seed::is_reply(&request.seed_reply()));
        assert!(Seed::is_reply(&Message::error_reply(4, "no")));
        let mut stamped = Message::request(0, "go");
        Seed::set_correlation_id(&mut stamped, 9);
        assert_eq!(Seed::correlation_id(&stamped), Some(9));
        let err = Seed::decode(br#"{"requestID":5,"success":"yes"}"#).unwrap_err();
        let reply = Seed::error_reply(&err).expect("the seed answers");
        assert_eq!((reply.request_id, reply.success), (5, false));
        assert!(reply.error.contains("line 1"), "{}", reply.error);
    }

    /// A nanoserde message type for [`NanoJson`].
    #[cfg(feature = "nanoserde")]
    #[derive(Debug, PartialEq, nanoserde::SerJson, nanoserde::DeJson)]
    struct Ping {
        seq: i64,
        pong: bool,
    }

    #[cfg(feature = "nanoserde")]
    impl Correlated for Ping {
        const ID_FIELD: &'static str = "seq";
        fn correlation_id(&self) -> Option<i64> {
            Some(self.seq)
        }
        fn set_correlation_id(&mut self, id: i64) {
            self.seq = id;
        }
        fn is_reply(&self) -> bool {
            self.pong
        }
    }

    #[cfg(feature = "nanoserde")]
    #[test]
    fn nano_json_round_trips_and_refuses_what_nanoserde_mishandles() {
        type P = NanoJson<Ping>;
        let ping = Ping {
            seq: 3,
            pong: false,
        };
        let Frame::Text(text) = P::encode(&ping) else {
            panic!("a text frame");
        };
        assert_eq!(P::decode(text.as_bytes()), Ok(ping));
        // Inputs that make nanoserde 0.2.1 panic or loop never reach it.
        for hostile in [
            &br#"{"seq":1,"pong":false,"x":"#[..],
            br#"{"seq":1,"pong":false,"x":[1,}"#,
            br#"{"seq":1,"pong":false} trailing"#,
            br#"{"seq":1,/*c*/"pong":false}"#,
        ] {
            let err = P::decode(hostile).expect_err("refused");
            assert!(err.line >= 1 && err.column >= 1, "{err}");
        }
        // Valid JSON that is not a Ping: an error, not a panic.
        assert!(P::decode(br#"{"seq":"one"}"#).is_err());
    }
}
