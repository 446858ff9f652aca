//! The message codec: [`Message`](crate::Message) to JSON text and back.
//!
//! Two interchangeable implementations, chosen by Cargo feature:
//!
//! - `serde` (the default): serde + serde_json.
//! - `nanoserde`: nanoserde's JSON derive behind wsloop's strict JSON check
//!   (`json_check`), for small builds with no serde crate in the tree.
//!
//! **nanoserde wins whenever it is enabled**, including under
//! `--all-features` and `--features nanoserde` on top of the defaults
//! (otherwise that command would silently keep serde_json). Both produce the
//! same bytes on output and the same verdict, salvaged `requestID` and
//! (nearly always the same) position on input; `cli/tests/codec.rs` runs one
//! suite under both, and with both features on the unit tests below also
//! compare the two on random inputs.
//!
//! Decoding errors carry the position of the fault and, where the input was
//! valid JSON with an integer `requestID`, that id, so the error reply can be
//! correlated by the peer.

use std::fmt;

// A sibling in `wire`, named from here so that `nano` below reaches it as
// `super::json_check` both in the crate and in the fuzz target, which
// compiles these files at its root.
#[cfg(feature = "nanoserde")]
use super::json_check;

#[cfg(not(any(feature = "serde", feature = "nanoserde")))]
compile_error!(
    "wsloop needs a message codec: enable the `serde` feature (the default) or `nanoserde` \
     (e.g. `--no-default-features --features nanoserde`)"
);

#[cfg(feature = "nanoserde")]
pub use nano::{decode, encode};
#[cfg(all(feature = "serde", not(feature = "nanoserde")))]
pub use serde_codec::{decode, encode};

/// The reason for a top-level array (serde_json's words for the wrong
/// type): only JSON objects are messages.
pub(crate) const NOT_AN_OBJECT: &str = "invalid type: sequence, expected struct Message";

/// Why an inbound message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The `requestID` of the message, if it could still be read.
    pub request_id: Option<i64>,
    /// 1-based line of the fault.
    pub line: usize,
    /// 1-based column of the fault (in bytes, as serde_json counts).
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

/// Encodes `msg` as one line of compact JSON, the seed's field order, byte
/// for byte as serde_json writes the derived `Serialize` (the tests hold
/// the two to the same bytes). Both codecs encode with it.
///
/// Written by hand rather than with nanoserde's `SerJson` derive, which
/// would differ from serde_json on the wire: it cannot omit an empty
/// `error`, and it escapes DEL (U+007F) as `\u007f` where serde_json
/// writes it raw. And rather than with serde_json, whose generic
/// serializer escapes each field name at run time: this costs a quarter
/// of its instructions, on the path of every reply (callgrind, a seed
/// reply: 1,736 instructions with serde_json).
#[cfg(any(feature = "serde", feature = "nanoserde"))]
fn write_message(msg: &crate::Message) -> String {
    let mut out = String::with_capacity(
        64 + msg.command.len() + msg.some_other_thing.len() + msg.error.len(),
    );
    out.push_str("{\"requestID\":");
    write_integer(&mut out, msg.request_id);
    out.push_str(",\"command\":");
    write_json_string(&mut out, &msg.command);
    out.push_str(",\"someOtherThing\":");
    write_json_string(&mut out, &msg.some_other_thing);
    out.push_str(",\"success\":");
    out.push_str(if msg.success { "true" } else { "false" });
    if !msg.error.is_empty() {
        out.push_str(",\"error\":");
        write_json_string(&mut out, &msg.error);
    }
    out.push('}');
    out
}

/// Writes `n` in decimal, as serde_json does (`-` and digits). Digit by
/// digit into a stack buffer: `Display` (through `core::fmt`) took about
/// 400 instructions per reply for this, a third of the whole encoding.
#[cfg(any(feature = "serde", feature = "nanoserde"))]
fn write_integer(out: &mut String, n: i64) {
    // Room for any u64 (20 digits); an i64's magnitude has at most 19.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    // ASCII digits: always UTF-8.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// Writes `s` as a JSON string literal exactly as serde_json does: `"` and
/// `\` escaped, the control characters U+0000..U+001F as `\b \t \n \f \r` or
/// `\u00XX` (lowercase hex), everything else (DEL, `/`, non-ASCII) as is.
#[cfg(any(feature = "serde", feature = "nanoserde"))]
fn write_json_string(out: &mut String, s: &str) {
    /// serde_json's hex digits for `\u00XX`.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    // Most strings need no escape. One pass without an early exit, which
    // the compiler vectorises, tells; those are then copied whole.
    let needs_escape = s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if !needs_escape {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0C => "\\f",
            b'\r' => "\\r",
            0x00..=0x1F => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The small codec (feature `nanoserde`). Despite its name no nanoserde
/// code reads or writes the seed's messages: wsloop's strict check
/// (`json_check`) validates and reads them, and the encoder below writes
/// them by hand. nanoserde stays for the application's own types
/// ([`NanoJson`](crate::NanoJson)).
#[cfg(feature = "nanoserde")]
pub(crate) mod nano {
    use super::json_check::{self, Field, Fields};
    use super::DecodeError;
    use crate::Message;

    /// Encodes `msg` as one line of compact JSON, the seed's field order
    /// (see `write_message`).
    pub fn encode(msg: &Message) -> String {
        super::write_message(msg)
    }

    /// Decodes one message from the bytes of a text or binary frame.
    ///
    /// The strict check decides the verdict (serde_json's, exactly) and hands
    /// over the raw text of each known field, which is then read here: the
    /// integer with `str::parse` (the check has bounded it to i64), the
    /// bool by its text, the strings through `json_check::unescape`.
    /// nanoserde itself reads nothing of the seed's messages any more, only
    /// the application's own types ([`NanoJson`](crate::NanoJson)): its
    /// tokenizer parses every number as a float, which kept std's float
    /// parser (about 5 KB of code and a 10 KB table) in the small build.
    ///
    /// Not nanoserde's `DeJson` derive either: its unknown-field skipping is
    /// the code that panics or never returns on hostile input in nanoserde
    /// 0.2.1, and its panic message brings float formatting along (23 KB).
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let fields = json_check::check(bytes)?;
        Ok(Message {
            request_id: read(&fields, Field::RequestId, |raw| raw.parse().ok())?,
            command: read(&fields, Field::Command, json_check::unescape)?,
            some_other_thing: read(&fields, Field::SomeOtherThing, json_check::unescape)?,
            success: read(&fields, Field::Success, |raw| Some(raw == "true"))?,
            error: read(&fields, Field::Error, json_check::unescape)?,
        })
    }

    /// One field's value read from its checked raw text by `parse`, or its
    /// default when absent.
    fn read<T: Default>(
        fields: &Fields<'_>,
        field: Field,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, DecodeError> {
        match fields.raw(field) {
            None => Ok(T::default()),
            Some(raw) => parse(raw).ok_or_else(|| unreadable(fields, field)),
        }
    }

    /// Cannot happen on checked input; should it, it is still an error
    /// reply, with the id if it can be read.
    fn unreadable(fields: &Fields<'_>, field: Field) -> DecodeError {
        DecodeError {
            request_id: fields
                .raw(Field::RequestId)
                .and_then(|raw| raw.parse().ok()),
            line: 1,
            column: 1,
            reason: format!("could not read {}", field.name()),
        }
    }
}

/// The serde_json codec. With both features on it is still compiled (the
/// differential tests compare it with nanoserde) but not used.
#[cfg(feature = "serde")]
#[cfg_attr(feature = "nanoserde", allow(dead_code))]
pub(crate) mod serde_codec {
    use super::DecodeError;
    use crate::Message;

    /// Encodes `msg` as one line of compact JSON, the seed's field order:
    /// the bytes serde_json would write, by `write_message`.
    pub fn encode(msg: &Message) -> String {
        super::write_message(msg)
    }

    /// Decodes one message from the bytes of a text or binary frame.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        refuse_array(bytes)?;
        serde_json::from_slice(bytes).map_err(|err| DecodeError {
            request_id: salvage_request_id(bytes),
            line: err.line(),
            // serde_json says column 0 for empty input.
            column: err.column().max(1),
            reason: strip_position(&err.to_string()),
        })
    }

    /// Refuses a top-level array, which serde's derive would read as the
    /// fields in order: only objects are messages. The error is the one the
    /// nanoserde codec's check gives (no id salvaged; the position of the
    /// `[`, as serde_json's `peek_invalid_type` reports it).
    fn refuse_array(bytes: &[u8]) -> Result<(), DecodeError> {
        let Some(at) = bytes
            .iter()
            .position(|b| !matches!(b, b' ' | b'\n' | b'\t' | b'\r'))
        else {
            return Ok(());
        };
        if bytes[at] != b'[' {
            return Ok(());
        }
        let before = &bytes[..at];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| nl + 1);
        Err(DecodeError {
            request_id: None,
            line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            column: at - line_start + 1,
            reason: super::NOT_AN_OBJECT.to_string(),
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
}

/// The hand-written encoder against serde_json's own output, in the
/// default build (the differential tests below need both codecs on).
#[cfg(all(test, feature = "serde"))]
mod encoder {
    use crate::Message;

    #[test]
    fn writes_what_serde_json_writes() {
        let texts = [
            "",
            "Eject the hot dog 7.",
            "q\"b\\s/\u{7f}é\u{1F600}",
            "\u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f}",
        ];
        for (i, text) in texts.iter().enumerate() {
            for success in [false, true] {
                let msg = Message {
                    request_id: [0, -1, i64::MIN, i64::MAX][i],
                    command: text.to_string(),
                    some_other_thing: texts[(i + 1) % texts.len()].to_string(),
                    success,
                    error: if success {
                        String::new()
                    } else {
                        text.to_string()
                    },
                };
                let expected = serde_json::to_string(&msg).expect("a Message serializes");
                assert_eq!(super::write_message(&msg), expected);
            }
        }
    }
}

/// Stand-ins so that a build without a codec fails with the one
/// `compile_error!` above rather than a cascade of missing items.
#[cfg(not(any(feature = "serde", feature = "nanoserde")))]
mod no_codec {
    use super::DecodeError;
    use crate::Message;

    /// Unreachable: the crate does not compile without a codec.
    pub fn encode(_: &Message) -> String {
        String::new()
    }

    /// Unreachable: the crate does not compile without a codec.
    pub fn decode(_: &[u8]) -> Result<Message, DecodeError> {
        Ok(Message::default())
    }
}
#[cfg(not(any(feature = "serde", feature = "nanoserde")))]
pub use no_codec::{decode, encode};

/// With both codecs compiled in, compare them on deterministic random
/// inputs: same verdict, same salvaged `requestID`, same message, same bytes.
#[cfg(all(test, feature = "serde", feature = "nanoserde"))]
mod differential {
    use super::{nano, serde_codec};
    use crate::Message;

    /// How many random inputs each test compares.
    const CASES: usize = 300_000;

    /// xorshift64*: tiny, fast and deterministic.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
            items[self.below(items.len())]
        }
    }

    /// Fragments that JSON-ish messages are made of, valid and not.
    const ATOMS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b" ",
        b"\n",
        b"\t",
        b"\r",
        b"\"",
        b"\\",
        b"\"requestID\"",
        b"\"command\"",
        b"\"someOtherThing\"",
        b"\"success\"",
        b"\"error\"",
        b"\"request\\u0049D\"",
        b"\"x\"",
        b"\"\"",
        b"0",
        b"-0",
        b"1",
        b"-1",
        b"007",
        b"1.0",
        b"1e2",
        b"1E+5",
        b"-",
        b"+1",
        b"9223372036854775807",
        b"9223372036854775808",
        b"-9223372036854775808",
        b"-9223372036854775809",
        b"18446744073709551615",
        b"18446744073709551616",
        b"true",
        b"false",
        b"null",
        b"tru",
        b"nul",
        b"\"a\"",
        b"\"\\n\"",
        b"\"\\u0000\"",
        b"\"\\ud83d\\ude00\"",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"\\ud800\\u0041\"",
        b"\"\\ud800x\"",
        b"\"\\x\"",
        b"\"\\u12\"",
        b"\"\xff\"",
        b"\"\xe5\xbc\xb9\"",
        b"\"\xe5\xbc\"",
        b"\"\x01\"",
        b"\"\x7f\"",
        b"/",
        b"//",
        b"/*",
        b"*/",
        b"\xef\xbb\xbf",
        b"\x00",
        b"a",
    ];

    fn random_input(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        match rng.below(4) {
            // A well-formed object of random fields, then maybe a mutation.
            0 | 1 => {
                let values: &[&[u8]] = &[
                    b"1",
                    b"-0",
                    b"1.5",
                    b"\"s\"",
                    b"true",
                    b"null",
                    b"[1,{\"a\":[]}]",
                    b"{}",
                    b"\"\\ud800\"",
                    b"\"\xff\"",
                    b"9223372036854775808",
                    b"\"\\u00e9\\n\"",
                    b"-9223372036854775808",
                    b"[]",
                    b"[[[[[[[[]]]]]]]]",
                ];
                let keys: &[&[u8]] = &[
                    b"\"requestID\"",
                    b"\"command\"",
                    b"\"someOtherThing\"",
                    b"\"success\"",
                    b"\"error\"",
                    b"\"x\"",
                    b"\"request\\u0049D\"",
                    b"\"\\ud800\"",
                ];
                out.push(if rng.below(8) == 0 { b'[' } else { b'{' });
                for i in 0..rng.below(5) {
                    if i > 0 {
                        out.push(b',');
                    }
                    if out[0] == b'{' {
                        out.extend_from_slice(rng.pick(keys));
                        out.push(b':');
                    }
                    out.extend_from_slice(rng.pick(values));
                }
                out.push(if out[0] == b'[' { b']' } else { b'}' });
                for _ in 0..rng.below(4).saturating_sub(1) {
                    let at = rng.below(out.len() + 1);
                    match rng.below(3) {
                        0 if at < out.len() => {
                            out.remove(at);
                        }
                        1 => out.insert(at, rng.next() as u8),
                        _ => {
                            let atom = rng.pick(ATOMS);
                            out.splice(at..at, atom.iter().copied());
                        }
                    }
                }
            }
            // Random fragments.
            _ => {
                for _ in 0..rng.below(12) {
                    out.extend_from_slice(rng.pick(ATOMS));
                }
            }
        }
        out
    }

    fn random_string(rng: &mut Rng) -> String {
        const CHARS: &[char] = &[
            'a', '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}',
            'é', '弹', '😀', '\u{2028}', '\u{feff}', ' ',
        ];
        (0..rng.below(8))
            .map(|_| CHARS[rng.below(CHARS.len())])
            .collect()
    }

    #[test]
    fn both_codecs_agree_on_random_input() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut accepted, mut salvaged, mut same_position) = (0, 0, 0);
        for _ in 0..CASES {
            let input = random_input(&mut rng);
            let a = serde_codec::decode(&input);
            let b = nano::decode(&input);
            let shown = String::from_utf8_lossy(&input);
            match (&a, &b) {
                (Ok(x), Ok(y)) => {
                    assert_eq!(x, y, "{shown}");
                    accepted += 1;
                }
                (Err(x), Err(y)) => {
                    assert_eq!(x.request_id, y.request_id, "{shown}");
                    assert!(y.line >= 1 && y.column >= 1, "{shown}: {y}");
                    salvaged += usize::from(y.request_id.is_some());
                    same_position += usize::from((x.line, x.column) == (y.line, y.column));
                }
                _ => panic!("verdicts differ on {shown:?}: serde {a:?}, nanoserde {b:?}"),
            }
        }
        let rejected = CASES - accepted;
        eprintln!(
            "{CASES} inputs: {accepted} accepted, {rejected} rejected \
             ({salvaged} with a salvaged id, {same_position} at serde_json's exact position)"
        );
        assert!(accepted > CASES / 20 && rejected > CASES / 2 && salvaged > 0);
    }

    #[test]
    fn both_codecs_encode_the_same_bytes() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..CASES / 10 {
            let msg = Message {
                request_id: rng.next() as i64 >> rng.below(64),
                command: random_string(&mut rng),
                some_other_thing: random_string(&mut rng),
                success: rng.below(2) == 1,
                error: random_string(&mut rng),
            };
            // serde_json itself is the reference for both.
            let json = serde_json::to_string(&msg).expect("a Message serializes");
            assert_eq!(json, nano::encode(&msg));
            assert_eq!(json, serde_codec::encode(&msg));
            assert_eq!(nano::decode(json.as_bytes()).as_ref(), Ok(&msg));
        }
    }
}
