//! Differential fuzz target: on arbitrary bytes, wsloop's nanoserde codec
//! (strict check + nanoserde) must give exactly what its serde_json codec
//! gives: the same verdict, the same message, the same salvaged `requestID`,
//! a position on every error, and byte-identical encoding.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../src/wire/codec.rs"]
mod codec;
#[path = "../../src/wire/json_check.rs"]
mod json_check;
#[path = "../../src/wire/message.rs"]
mod message;

// The paths those files name (`crate::Message`, `crate::DecodeError`).
use codec::DecodeError;
use message::Message;

use codec::{nano, serde_codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let a = serde_codec::decode(data);
    let b = nano::decode(data);
    match (&a, &b) {
        (Ok(x), Ok(y)) => {
            assert_eq!(x, y);
            assert_eq!(serde_codec::encode(x), nano::encode(y));
        }
        (Err(x), Err(y)) => {
            assert_eq!(x.request_id, y.request_id, "salvaged id differs");
            assert!(y.line >= 1 && y.column >= 1, "no position: {y}");
        }
        _ => panic!("verdicts differ: serde_json {a:?}, nanoserde {b:?}"),
    }

    // Encoding: any text in every string field.
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{1}');
    let msg = Message {
        request_id: data.len() as i64 - 64,
        command: parts.next().unwrap_or_default().to_string(),
        some_other_thing: parts.next().unwrap_or_default().to_string(),
        success: data.first().is_some_and(|b| b & 1 == 1),
        error: parts.next().unwrap_or_default().to_string(),
    };
    let json = serde_codec::encode(&msg);
    assert_eq!(json, nano::encode(&msg));
    assert_eq!(nano::decode(json.as_bytes()).as_ref(), Ok(&msg));
});
