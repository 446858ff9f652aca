//! The shared codec suite: this one file runs under both codecs
//! (`cargo test` for serde_json, `cargo test --no-default-features
//! --features nanoserde` for nanoserde), and every expectation in it was
//! taken from the serde_json build, so passing under nanoserde means the
//! same wire bytes, the same accept/reject verdict, the same salvaged
//! `requestID` and a usable position. (One rule is wsloop's, not
//! serde_json's: a top-level array is refused, where serde's derive would
//! accept it.)

mod common;

use async_tungstenite::tungstenite::Message as Frame;
use common::{bounded, next_message, request, ws_connect, TestServer};
use wsloop::{decode, encode, Config, Message};

/// What decoding one input must give.
#[derive(Debug)]
enum Want {
    /// Accepted, as this message.
    Accept(Message),
    /// Rejected, with this salvaged `requestID`.
    Reject(Option<i64>),
}
use Want::{Accept, Reject};

fn msg(request_id: i64, command: &str, other: &str, success: bool, error: &str) -> Message {
    Message {
        request_id,
        command: command.into(),
        some_other_thing: other.into(),
        success,
        error: error.into(),
    }
}

fn id(request_id: i64) -> Message {
    Message::request(request_id, "")
}

/// Tricky inputs and serde_json's verdict on each.
fn table() -> Vec<(&'static [u8], Want)> {
    vec![
        // The seed's own messages, and fields in any order with whitespace.
        (
            br#"{"requestID":1,"command":"Eject the hot dog 1.","someOtherThing":"","success":false}"#,
            Accept(Message::request(1, "Eject the hot dog 1.")),
        ),
        (
            b" {\n\t\"error\" : \"e\" ,\r\n \"success\":true,\"requestID\":-3 } \n",
            Accept(msg(-3, "", "", true, "e")),
        ),
        // Missing fields default, unknown fields are ignored whatever they hold.
        (b"{}", Accept(Message::default())),
        (br#"{"requestID":5,"extra":[1,{"a":null}]}"#, Accept(id(5))),
        (br#"{"x":1e999999,"y":123456789012345678901234567890,"z":-0.5E-3}"#, Accept(id(0))),
        (br#"{"x":1,"x":2,"y":{"a":1,"a":2}}"#, Accept(id(0))),
        (br#"{"Command":"case matters"}"#, Accept(id(0))),
        // Escapes and non-ASCII text.
        (
            "{\"command\":\"弹出热狗 \\\"1\\\"\\n\"}".as_bytes(),
            Accept(Message::request(0, "弹出热狗 \"1\"\n")),
        ),
        (
            br#"{"command":"\ud83d\ude00 \u00e9\/\b\f\n\r\t\\\"\u0000"}"#,
            Accept(Message::request(0, "😀 é/\u{8}\u{c}\n\r\t\\\"\u{0}")),
        ),
        ("{\"command\":\"😀\u{7f}\u{2028}\"}".as_bytes(), Accept(Message::request(0, "😀\u{7f}\u{2028}"))),
        (br#"{"request\u0049D":3}"#, Accept(id(3))),
        // Every escape in every string field, alone, adjacent and at the
        // ends (the nanoserde codec's own unescape reads them).
        (
            br#"{"command":"\"","someOtherThing":"\\","error":"\/"}"#,
            Accept(msg(0, "\"", "\\", false, "/")),
        ),
        (
            br#"{"command":"\b\f","someOtherThing":"\n\r\t","error":"x\\\\n"}"#,
            Accept(msg(0, "\u{8}\u{c}", "\n\r\t", false, "x\\\\n")),
        ),
        (
            br#"{"command":"\\u0041","someOtherThing":"a\\","error":"\"\"\""}"#,
            Accept(msg(0, "\\u0041", "a\\", false, "\"\"\"")),
        ),
        // `\u` escapes: ASCII, upper- and lowercase hex, the ends of the
        // BMP around the surrogates, and the first and last surrogate pairs.
        (
            br#"{"command":"\u0041\u00E9\u00e9\u007f\u0001\u001F","error":"\u2028"}"#,
            Accept(msg(0, "Aéé\u{7f}\u{1}\u{1f}", "", false, "\u{2028}")),
        ),
        (
            br#"{"command":"\ud7ff\ue000\uffff\uFEFF"}"#,
            Accept(Message::request(0, "\u{d7ff}\u{e000}\u{ffff}\u{feff}")),
        ),
        (
            br#"{"command":"\ud800\udc00","someOtherThing":"\uDBFF\uDFFF","error":"\ud83d\ude00\ud83d\ude00x"}"#,
            Accept(msg(0, "\u{10000}", "\u{10ffff}", false, "😀😀x")),
        ),
        // Raw non-ASCII (two, three and four bytes) beside escapes.
        (
            "{\"someOtherThing\":\"é\\n弹\\u00e9😀\\t\",\"error\":\"\\\"ü\\\"\"}".as_bytes(),
            Accept(msg(0, "", "é\n弹é😀\t", false, "\"ü\"")),
        ),
        // Surrogates that do not pair, in every string field.
        (br#"{"someOtherThing":"\ud800\ud800"}"#, Reject(None)),
        (br#"{"error":"\udbff\\n"}"#, Reject(None)),
        (br#"{"requestID":3,"error":"\udfff"}"#, Reject(Some(3))),
        (br#"{"command":"\ud800"#, Reject(None)),
        (br#"{"command":"\ud800\u"}"#, Reject(None)),
        // The bool, and the id's extremes beside every other field.
        (
            br#"{"requestID":9223372036854775807,"command":"c","someOtherThing":"o","success":true,"error":"e"}"#,
            Accept(msg(i64::MAX, "c", "o", true, "e")),
        ),
        (
            br#"{"requestID":-9223372036854775808,"success":false,"error":""}"#,
            Accept(msg(i64::MIN, "", "", false, "")),
        ),
        (br#"{"requestID":-1,"success":true}"#, Accept(msg(-1, "", "", true, ""))),
        // Big and negative integers.
        (br#"{"requestID":9223372036854775807}"#, Accept(id(i64::MAX))),
        (br#"{"requestID":-9223372036854775808}"#, Accept(id(i64::MIN))),
        (br#"{"requestID":9223372036854775808}"#, Reject(None)),
        (br#"{"requestID":-9223372036854775809}"#, Reject(None)),
        (br#"{"requestID":18446744073709551615}"#, Reject(None)),
        (br#"{"requestID":184467440737095516150}"#, Reject(None)),
        (br#"{"requestID":-0}"#, Reject(None)),
        (br#"{"requestID":0}"#, Accept(id(0))),
        (br#"{"requestID":1.0}"#, Reject(None)),
        (br#"{"requestID":1e2}"#, Reject(None)),
        (br#"{"requestID":+1}"#, Reject(None)),
        (br#"{"requestID":007}"#, Reject(None)),
        (br#"{"requestID":"7"}"#, Reject(None)),
        // Wrong types for known fields; the id is still salvaged.
        (br#"{"requestID":9,"success":"yes"}"#, Reject(Some(9))),
        (br#"{"requestID":4,"command":1}"#, Reject(Some(4))),
        (br#"{"requestID":4,"command":null}"#, Reject(Some(4))),
        (br#"{"requestID":4,"error":["x"]}"#, Reject(Some(4))),
        (br#"{"requestID":4,"success":1}"#, Reject(Some(4))),
        (br#"{"requestID":null}"#, Reject(None)),
        (br#"{"requestID":1,"requestID":2}"#, Reject(None)),
        (br#"{"requestID":1,"command":"a","command":"b"}"#, Reject(Some(1))),
        // Strictness differs between known and unknown string values.
        (br#"{"requestID":4,"command":"\ud800"}"#, Reject(Some(4))),
        (br#"{"command":"\udc00"}"#, Reject(None)),
        (br#"{"command":"\ud800\u0041"}"#, Reject(None)),
        (br#"{"x":"\ud800","requestID":2}"#, Accept(id(2))),
        (br#"{"\ud800":1}"#, Reject(None)),
        (b"{\"x\":\"\xff\"}", Accept(id(0))),
        (b"{\"command\":\"\xff\"}", Reject(None)),
        (b"{\"\xff\":1}", Reject(None)),
        (b"{\"x\":\"\x01\"}", Reject(None)),
        (br#"{"x":"\q"}"#, Reject(None)),
        (br#"{"x":"\u12"}"#, Reject(None)),
        // Arrays, which serde's derive would read as the fields in order:
        // only objects are messages (the Go program, the README), so both
        // codecs refuse them, with no id salvaged.
        (br#"[5,"a","b",true,"e"]"#, Reject(None)),
        (br#"[7,"Open valve","",false]"#, Reject(None)),
        (b"[]", Reject(None)),
        (b"[4]", Reject(None)),
        (b" \n[4,\"a\"]", Reject(None)),
        (br#"[5,"a","b",true,"e",1]"#, Reject(None)),
        (b"[1,]", Reject(None)),
        (br#"["1"]"#, Reject(None)),
        // Not an object at all.
        (b"", Reject(None)),
        (b"   ", Reject(None)),
        (b"null", Reject(None)),
        (b"\"x\"", Reject(None)),
        (b"42", Reject(None)),
        (b"\xef\xbb\xbf{}", Reject(None)),
        // Syntax nanoserde 0.2.1 gets wrong: panics, hangs, leniency.
        (br#"{"requestID":1,"zzz":}"#, Reject(None)),
        (br#"{"zzz"::1}"#, Reject(None)),
        (br#"{"requestID":1,"zzz":[1,2"#, Reject(None)),
        (br#"{"requestID":1,"zzz":[1,2]"#, Reject(None)),
        (br#"{"x":1e+5,"requestID":6}"#, Accept(id(6))),
        (b"{\"requestID\":1 // comment\n}", Reject(None)),
        (b"{\"requestID\":1 /* c */}", Reject(None)),
        (br#"{"requestID":1,}"#, Reject(None)),
        (br#"{"requestID":1} x"#, Reject(None)),
        (br#"{"requestID":1}{}"#, Reject(None)),
        (br#"{"x":[1,]}"#, Reject(None)),
        (br#"{"x":{"a"}}"#, Reject(None)),
        (br#"{"x":tru}"#, Reject(None)),
        (br#"{"x":NaN}"#, Reject(None)),
        (br#"{'requestID':1}"#, Reject(None)),
        (br#"{requestID:1}"#, Reject(None)),
        (b"{\"requestID\":1\x00}", Reject(None)),
        // Truncated input.
        (br#"{"requestID":1"#, Reject(None)),
        (br#"{"requestID":"#, Reject(None)),
        (br#"{"command":"abc"#, Reject(None)),
        (br#"{"command":"\u00"#, Reject(None)),
        (br#"{"command":"\"#, Reject(None)),
        (b"{", Reject(None)),
        (b"[", Reject(None)),
    ]
}

#[test]
fn every_tricky_input_gets_serde_jsons_verdict() {
    let mut wrong = Vec::new();
    for (input, want) in table() {
        let shown = String::from_utf8_lossy(input);
        let got = decode(input);
        let ok = match (&got, &want) {
            (Ok(got), Accept(want)) => got == want,
            (Err(err), Reject(want)) => {
                err.request_id == *want
                    && err.line >= 1
                    && err.column >= 1
                    && !err.reason.is_empty()
            }
            _ => false,
        };
        if !ok {
            wrong.push(format!("{shown:?}: got {got:?}, serde_json gives {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn errors_report_serde_jsons_position() {
    let cases: &[(&[u8], (usize, usize), &str)] = &[
        (
            br#"{"requestID":9,"success":"yes"}"#,
            (1, 30),
            "invalid type",
        ),
        (b"{\"requestID\":", (1, 13), "EOF while parsing a value"),
        (b"{\n \"a\":1,}", (2, 8), "trailing comma"),
        (br#"{"requestID":1} x"#, (1, 17), "trailing characters"),
        (
            br#"{"requestID":1,"requestID":2}"#,
            (1, 26),
            "duplicate field `requestID`",
        ),
        (b"", (1, 1), "EOF while parsing a value"),
        (
            b"[7,\"Open valve\",\"\",false]",
            (1, 1),
            "invalid type: sequence, expected struct Message",
        ),
        (b" \n  [4]", (2, 3), "invalid type: sequence"),
    ];
    for (input, (line, column), reason) in cases {
        let err = decode(input).unwrap_err();
        let shown = String::from_utf8_lossy(input);
        assert_eq!((err.line, err.column), (*line, *column), "{shown}: {err}");
        assert!(err.reason.starts_with(reason), "{shown}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("invalid message at line {line} column {column}: ")),
            "{err}"
        );
    }
}

#[test]
fn deep_nesting_in_unknown_fields_is_skipped_not_recursed() {
    // serde_json skips unknown values without a depth limit; so must we,
    // and without using the stack.
    let depth = 100_000;
    let deep = format!(
        "{{\"x\":{}{},\"requestID\":8}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(decode(deep.as_bytes()), Ok(id(8)));
    let deep = format!(
        "{{\"x\":{}1{}}}",
        "{\"a\":[".repeat(depth),
        "]}".repeat(depth)
    );
    assert_eq!(decode(deep.as_bytes()), Ok(id(0)));
    let unclosed = format!("{{\"requestID\":8,\"x\":{}", "[".repeat(depth));
    assert_eq!(decode(unclosed.as_bytes()).unwrap_err().request_id, None);
}

#[test]
fn one_mebibyte_strings_round_trip() {
    let big = "弹出热狗 \"1\"\n😀".repeat((1 << 20) / 24);
    let m = msg(1, &big, &big, true, &big);
    let json = encode(&m);
    assert_eq!(decode(json.as_bytes()), Ok(m));
    let unknown = format!("{{\"x\":\"{}\",\"requestID\":2}}", "a".repeat(1 << 20));
    assert_eq!(decode(unknown.as_bytes()), Ok(id(2)));
    let unterminated = format!("{{\"command\":\"{}", "a".repeat(1 << 20));
    assert!(decode(unterminated.as_bytes()).is_err());
}

#[test]
fn encodes_the_seed_fields_in_order_and_omits_empty_error() {
    assert_eq!(
        encode(&Message::request(1, "go")),
        r#"{"requestID":1,"command":"go","someOtherThing":"","success":false}"#
    );
    assert_eq!(
        encode(&Message::error_reply(-2, "bad")),
        r#"{"requestID":-2,"command":"","someOtherThing":"","success":false,"error":"bad"}"#
    );
    assert_eq!(
        encode(&Message::request(3, "x").seed_reply()),
        r#"{"requestID":3,"command":"","someOtherThing":"Command 'x' processed successfully.","success":true}"#
    );
}

#[test]
fn escapes_strings_exactly_like_serde_json() {
    let cases: &[(&str, &str)] = &[
        ("弹出热狗 \"1\"\n", r#""弹出热狗 \"1\"\n""#),
        ("😀 é \u{2028}", "\"😀 é \u{2028}\""),
        ("a/b\\c", r#""a/b\\c""#),
        ("\u{8}\u{c}\n\r\t", r#""\b\f\n\r\t""#),
        ("\u{0}\u{1}\u{1f}\u{7f}", "\"\\u0000\\u0001\\u001f\u{7f}\""),
    ];
    for (text, literal) in cases {
        let json = encode(&Message::request(i64::MIN, *text));
        let want = format!(
            r#"{{"requestID":-9223372036854775808,"command":{literal},"someOtherThing":"","success":false}}"#
        );
        assert_eq!(json, want);
        assert_eq!(
            decode(json.as_bytes()),
            Ok(Message::request(i64::MIN, *text))
        );
    }
}

#[test]
fn non_objects_get_an_error_reply_and_the_connection_lives_on() {
    let server = TestServer::start(Config::default());
    bounded(10, async {
        let mut ws = ws_connect(server.addr).await;
        for text in [
            r#"[7,"Open valve","",false]"#,
            "[]",
            "42",
            r#""Open valve""#,
            "null",
        ] {
            ws.send(Frame::text(text)).await.expect("send");
            let reply = next_message(&mut ws).await;
            assert!(!reply.success, "{text} was accepted: {reply:?}");
            assert_eq!(reply.request_id, 0, "{text}: {reply:?}");
            assert!(reply.error.contains("invalid type"), "{text}: {reply:?}");
        }
        let reply = request(&mut ws, 8, "still here").await;
        assert_eq!(reply, Message::request(8, "still here").seed_reply());
    });
}
