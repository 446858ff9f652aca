//! The strict, bounded JSON check in front of the nanoserde codec.
//!
//! nanoserde 0.2.1 is not safe on hostile input: some malformed unknown
//! fields panic, an unterminated unknown value loops forever, integers wrap,
//! and comments, `+1`, `007`, trailing commas and trailing garbage are
//! accepted. So the nanoserde codec runs every inbound message through
//! [`check`] first. It is a small, dependency-free, **non-recursive** scanner
//! (O(n) time; nesting costs one byte of heap per level, so it is bounded by
//! the connection's message-size limit and cannot overflow the stack) that
//! reproduces exactly the verdict of `serde_json::from_slice::<Message>`
//! (serde_json 1.0.x with `#[serde(default)]` on [`Message`]):
//!
//! - RFC 8259 syntax: whitespace is only space, tab, CR and LF; literals are
//!   exactly `true`, `false`, `null`; numbers are `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`;
//!   no comments, trailing commas or trailing characters.
//! - The top level is an object. Anything else is the wrong type, arrays
//!   included: serde's derive would read `[requestID, command, ...]` as a
//!   message, but the protocol (the Go program, the README) speaks only of
//!   objects, so the serde codec refuses arrays before serde sees them.
//! - Top-level keys and the values of known fields are decoded strictly:
//!   valid UTF-8, valid escapes, `\u` surrogates paired. Keys are compared
//!   after unescaping (`"request\u0049D"` is `requestID`).
//! - A known field twice is an error (`duplicate field`); unknown fields are
//!   skipped with serde_json's *lenient* rules: any syntax-valid JSON value,
//!   at any nesting depth (serde_json skips iteratively, without its 128
//!   recursion limit), where strings may hold lone surrogate escapes and
//!   invalid UTF-8 but never raw control characters.
//! - `requestID` is an integer in i64 range: no fraction or exponent (`1.0`
//!   and `1e2` are floats), and not `-0` (serde_json reads it as `-0.0`).
//!   `command`, `someOtherThing`, `error` are strings and `success` a bool;
//!   `null` is the wrong type for all of them.
//!
//! On a rejection it also reproduces serde_json's salvage of `requestID`
//! (the codec's `IdOnly` read: valid JSON with exactly one integer
//! `requestID`), and reports a 1-based position close to serde_json's.
//! On acceptance it returns the raw JSON text of each known field, which
//! the codec reads itself: the integer and the bool by their text, the
//! strings through [`unescape`] (nanoserde reads none of it).
//!
//! `cli/tests/codec.rs` runs the same table under both codecs, the codec's unit
//! tests compare the two verdicts on random inputs when both features are on,
//! and `fuzz/` compares them on arbitrary bytes.

#![cfg(feature = "nanoserde")]

use crate::DecodeError;

/// Smallest UTF-16 trailing (low) surrogate.
const TRAIL_SURROGATE_MIN: u16 = 0xDC00;
/// Largest UTF-16 trailing (low) surrogate.
const TRAIL_SURROGATE_MAX: u16 = 0xDFFF;
/// Smallest UTF-16 leading (high) surrogate.
const LEAD_SURROGATE_MIN: u16 = 0xD800;
/// Largest UTF-16 leading (high) surrogate.
const LEAD_SURROGATE_MAX: u16 = 0xDBFF;
/// The first code point beyond the BMP, the one a surrogate pair of zero
/// offsets encodes.
const SUPPLEMENTARY_MIN: u32 = 0x1_0000;

/// The magnitude of `i64::MIN`, the largest negative integer `requestID` takes.
const I64_MIN_MAGNITUDE: u64 = 1 << 63;

/// One of [`Message`](crate::Message)'s wire fields, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// `requestID`, an i64.
    RequestId,
    /// `command`, a string.
    Command,
    /// `someOtherThing`, a string.
    SomeOtherThing,
    /// `success`, a bool.
    Success,
    /// `error`, a string.
    Error,
}

/// What JSON type a field's value must have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An integer in i64 range.
    I64,
    /// A string.
    Str,
    /// `true` or `false`.
    Bool,
}

impl Field {
    /// Every field, in wire order.
    pub(crate) const ALL: [Field; 5] = [
        Field::RequestId,
        Field::Command,
        Field::SomeOtherThing,
        Field::Success,
        Field::Error,
    ];

    /// The field's name on the wire.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::RequestId => "requestID",
            Field::Command => "command",
            Field::SomeOtherThing => "someOtherThing",
            Field::Success => "success",
            Field::Error => "error",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Field::RequestId => Kind::I64,
            Field::Success => Kind::Bool,
            Field::Command | Field::SomeOtherThing | Field::Error => Kind::Str,
        }
    }

    fn from_name(name: &[u8]) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name().as_bytes() == name)
    }
}

/// An accepted message: the raw JSON text of each known field present.
#[derive(Debug, Default)]
pub(crate) struct Fields<'a> {
    raw: [Option<&'a str>; 5],
}

impl<'a> Fields<'a> {
    /// The field's value exactly as written in the input (a string keeps its
    /// quotes and escapes), or `None` when the field was absent.
    pub(crate) fn raw(&self, field: Field) -> Option<&'a str> {
        self.raw[field as usize]
    }
}

/// Which serde read is being reproduced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `Message` with `#[serde(default)]`: every field known and optional.
    Message,
    /// The codec's salvage struct: only `requestID` known, and required.
    IdOnly,
    /// Any object: no field known, every value skipped (the syntax check
    /// in front of [`NanoJson`](crate::NanoJson)).
    Syntax,
}

impl Mode {
    fn field(self, key: &[u8]) -> Option<Field> {
        match (self, Field::from_name(key)) {
            (Mode::IdOnly, Some(Field::RequestId)) => Some(Field::RequestId),
            (Mode::IdOnly | Mode::Syntax, _) => None,
            (Mode::Message, f) => f,
        }
    }
}

/// Checks one inbound message. `Ok` means serde_json would decode it, and
/// each field's raw text is well-formed and in range for its type;
/// `Err` carries the position, reason and salvaged `requestID`.
pub(crate) fn check(input: &[u8]) -> Result<Fields<'_>, DecodeError> {
    let mut scan = Scan::new(input);
    match scan.top(Mode::Message) {
        Ok(fields) => Ok(fields),
        Err(fault) => {
            let salvaged = Scan::new(input)
                .top(Mode::IdOnly)
                .ok()
                .and_then(|f| f.raw(Field::RequestId))
                .and_then(|raw| raw.parse().ok());
            let (line, column) = position_of_index(input, fault.at);
            Err(DecodeError {
                request_id: salvaged,
                line,
                column: column.max(1),
                reason: fault.reason,
            })
        }
    }
}

/// Checks that `input` is one syntactically valid JSON object (the rules
/// above, every field unknown), so that nanoserde never reads the malformed
/// input it mishandles.
pub(crate) fn check_syntax(input: &[u8]) -> Result<(), DecodeError> {
    Scan::new(input)
        .top(Mode::Syntax)
        .map(drop)
        .map_err(|fault| {
            let (line, column) = position_of_index(input, fault.at);
            DecodeError {
                request_id: None,
                line,
                column: column.max(1),
                reason: fault.reason,
            }
        })
}

/// serde_json's position of byte index `at`: 1-based line, and the number of
/// bytes from the start of that line up to `at`.
fn position_of_index(input: &[u8], at: usize) -> (usize, usize) {
    let at = at.min(input.len());
    let before = &input[..at];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let column = match before.iter().rposition(|&b| b == b'\n') {
        Some(nl) => at - nl - 1,
        None => at,
    };
    (line, column)
}

/// Where and why the input was rejected.
struct Fault {
    /// Byte index handed to [`position_of_index`].
    at: usize,
    /// serde_json-style reason, without the position.
    reason: String,
}

type Res<T> = Result<T, Fault>;

/// A cursor over the input.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scan { b, i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips JSON whitespace and peeks at the next byte.
    fn ws(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
        self.peek()
    }

    /// A fault at the byte under the cursor (serde_json's `peek_error`).
    fn peek_fault(&self, reason: impl Into<String>) -> Fault {
        Fault {
            at: (self.i + 1).min(self.b.len()),
            reason: reason.into(),
        }
    }

    /// A fault at the last byte consumed (serde_json's `error`).
    fn fault(&self, reason: impl Into<String>) -> Fault {
        Fault {
            at: self.i.min(self.b.len()),
            reason: reason.into(),
        }
    }

    fn top(&mut self, mode: Mode) -> Res<Fields<'a>> {
        let fields = match self.ws() {
            None => return Err(self.peek_fault("EOF while parsing a value")),
            Some(b'{') => self.object(mode)?,
            // Where serde_json's `peek_invalid_type` puts it: at the `[`.
            Some(b'[') => return Err(self.peek_fault(super::codec::NOT_AN_OBJECT)),
            Some(_) => return Err(self.invalid_type("struct Message")),
        };
        if self.ws().is_some() {
            return Err(self.peek_fault("trailing characters"));
        }
        Ok(fields)
    }

    /// The top-level object; the cursor is on `{`.
    fn object(&mut self, mode: Mode) -> Res<Fields<'a>> {
        self.i += 1;
        let mut fields = Fields::default();
        let mut first = true;
        loop {
            match self.ws() {
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                Some(b',') if !first => {
                    self.i += 1;
                    match self.ws() {
                        Some(b'"') => {}
                        Some(b'}') => return Err(self.peek_fault("trailing comma")),
                        Some(_) => return Err(self.peek_fault("key must be a string")),
                        None => return Err(self.peek_fault("EOF while parsing a value")),
                    }
                }
                Some(b'"') if first => {}
                Some(_) if first => return Err(self.peek_fault("key must be a string")),
                Some(_) => return Err(self.peek_fault("expected `,` or `}`")),
                None => return Err(self.peek_fault("EOF while parsing an object")),
            }
            first = false;
            self.i += 1;
            let key = self.string(true)?;
            // Compared after unescaping; a strict key always unescapes.
            let name = std::str::from_utf8(key).ok().and_then(unescape_text);
            let field = name.and_then(|name| mode.field(name.as_bytes()));
            if let Some(f) = field {
                if fields.raw[f as usize].is_some() {
                    return Err(self.fault(format!("duplicate field `{}`", f.name())));
                }
            }
            match self.ws() {
                Some(b':') => self.i += 1,
                Some(_) => return Err(self.peek_fault("expected `:`")),
                None => return Err(self.peek_fault("EOF while parsing an object")),
            }
            match field {
                Some(f) => fields.raw[f as usize] = Some(self.typed(f)?),
                None => self.skip_value()?,
            }
        }
        if mode == Mode::IdOnly && fields.raw(Field::RequestId).is_none() {
            return Err(self.fault("missing field `requestID`"));
        }
        Ok(fields)
    }

    /// A known field's value, checked strictly; returns its raw text.
    fn typed(&mut self, field: Field) -> Res<&'a str> {
        self.ws();
        let start = self.i;
        match field.kind() {
            Kind::I64 => self.i64_value()?,
            Kind::Bool => match self.peek() {
                Some(b't') => {
                    self.i += 1;
                    self.ident(b"rue")?
                }
                Some(b'f') => {
                    self.i += 1;
                    self.ident(b"alse")?
                }
                _ => return Err(self.invalid_type("a boolean")),
            },
            Kind::Str => match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    self.string(true)?;
                }
                _ => return Err(self.invalid_type("a string")),
            },
        }
        // Strict strings are valid UTF-8 and everything else here is ASCII.
        std::str::from_utf8(&self.b[start..self.i])
            .map_err(|_| self.fault("invalid unicode code point"))
    }

    /// The wrong JSON type where `expected` was wanted (or no value at all).
    /// Like serde_json, a scalar is read first, so the position is its end
    /// (and a fault inside it wins).
    fn invalid_type(&mut self, expected: &str) -> Fault {
        let found = match self.peek() {
            None => return self.peek_fault("EOF while parsing a value"),
            Some(b'"') => {
                self.i += 1;
                if let Err(fault) = self.string(true) {
                    return fault;
                }
                "string"
            }
            Some(b'n') => {
                self.i += 1;
                if let Err(fault) = self.ident(b"ull") {
                    return fault;
                }
                "null"
            }
            Some(b't') => {
                self.i += 1;
                if let Err(fault) = self.ident(b"rue") {
                    return fault;
                }
                "boolean"
            }
            Some(b'f') => {
                self.i += 1;
                if let Err(fault) = self.ident(b"alse") {
                    return fault;
                }
                "boolean"
            }
            Some(b'-' | b'0'..=b'9') => {
                if let Err(fault) = self.skip_number() {
                    return fault;
                }
                "number"
            }
            Some(b'[') => "sequence",
            Some(b'{') => "map",
            Some(_) => return self.peek_fault("expected value"),
        };
        self.fault(format!("invalid type: {found}, expected {expected}"))
    }

    /// An integer in i64 range, as serde_json reads `i64`.
    fn i64_value(&mut self) -> Res<()> {
        let negative = match self.peek() {
            Some(b'-') => {
                self.i += 1;
                true
            }
            Some(b'0'..=b'9') => false,
            _ => return Err(self.invalid_type("i64")),
        };
        let mut magnitude: Option<u64> = Some(0);
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.peek_fault("invalid number"));
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(d @ b'0'..=b'9') = self.peek() {
                    self.i += 1;
                    magnitude = magnitude
                        .and_then(|m| m.checked_mul(10))
                        .and_then(|m| m.checked_add(u64::from(d - b'0')));
                }
            }
            _ => {
                self.i += 1;
                return Err(self.fault("invalid number"));
            }
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            self.skip_fraction_and_exponent()?;
            return Err(self.fault("invalid type: floating point, expected i64"));
        }
        // serde_json reads a u64 overflow as a float, and `-0` as `-0.0`.
        let fits = match (negative, magnitude) {
            (_, None) | (true, Some(0)) => {
                return Err(self.fault("invalid type: floating point, expected i64"))
            }
            (true, Some(m)) => m <= I64_MIN_MAGNITUDE,
            (false, Some(m)) => i64::try_from(m).is_ok(),
        };
        if !fits {
            let text = String::from_utf8_lossy(&self.b[..self.i]);
            let digits = text
                .rsplit(|c: char| c != '-' && !c.is_ascii_digit())
                .next();
            return Err(self.fault(format!(
                "invalid value: integer `{}`, expected i64",
                digits.unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The rest of a literal whose first byte was consumed.
    fn ident(&mut self, rest: &[u8]) -> Res<()> {
        for &want in rest {
            match self.peek() {
                None => return Err(self.peek_fault("EOF while parsing a value")),
                Some(got) => {
                    self.i += 1;
                    if got != want {
                        return Err(self.fault("expected ident"));
                    }
                }
            }
        }
        Ok(())
    }

    /// A string whose opening quote was consumed; returns the raw bytes
    /// between the quotes. `strict` is serde_json's `parse_str` (valid UTF-8,
    /// paired surrogates), otherwise its `ignore_str`.
    fn string(&mut self, strict: bool) -> Res<&'a [u8]> {
        let start = self.i;
        loop {
            match self.peek() {
                None => return Err(self.peek_fault("EOF while parsing a string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    self.i += 1;
                    self.escape(strict)?;
                }
                Some(0..=0x1F) => {
                    self.i += 1;
                    return Err(self.fault(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ));
                }
                Some(_) => self.i += 1,
            }
        }
        let content = &self.b[start..self.i];
        self.i += 1;
        // Escapes are ASCII, so the decoded text is valid UTF-8 exactly when
        // the raw text is.
        if strict && std::str::from_utf8(content).is_err() {
            return Err(self.fault("invalid unicode code point"));
        }
        Ok(content)
    }

    /// One escape whose backslash was consumed.
    fn escape(&mut self, strict: bool) -> Res<()> {
        let Some(c) = self.peek() else {
            return Err(self.peek_fault("EOF while parsing a string"));
        };
        self.i += 1;
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let n = self.hex4()?;
                if strict {
                    self.surrogate_pair(n)
                } else {
                    Ok(())
                }
            }
            _ => Err(self.fault("invalid escape")),
        }
    }

    /// serde_json's strict rule after `\uXXXX` = `n`: a trailing surrogate
    /// alone is an error; a leading one must be followed by `\u` + trailing.
    fn surrogate_pair(&mut self, n: u16) -> Res<()> {
        if (TRAIL_SURROGATE_MIN..=TRAIL_SURROGATE_MAX).contains(&n) {
            return Err(self.fault("lone leading surrogate in hex escape"));
        }
        if !(LEAD_SURROGATE_MIN..=LEAD_SURROGATE_MAX).contains(&n) {
            return Ok(());
        }
        for want in [b'\\', b'u'] {
            match self.peek() {
                None => return Err(self.peek_fault("EOF while parsing a string")),
                Some(got) => {
                    self.i += 1;
                    if got != want {
                        return Err(self.fault("unexpected end of hex escape"));
                    }
                }
            }
        }
        let n2 = self.hex4()?;
        if !(TRAIL_SURROGATE_MIN..=TRAIL_SURROGATE_MAX).contains(&n2) {
            return Err(self.fault("lone leading surrogate in hex escape"));
        }
        Ok(())
    }

    /// Four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Res<u16> {
        let Some(digits) = self.b.get(self.i..self.i + 4) else {
            self.i = self.b.len();
            return Err(self.peek_fault("EOF while parsing a string"));
        };
        self.i += 4;
        let mut n: u16 = 0;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.fault("invalid escape")),
            };
            n = n * 16 + u16::from(v);
        }
        Ok(n)
    }

    /// A number with serde_json's `ignore_integer` grammar (no range check).
    fn skip_number(&mut self) -> Res<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.peek_fault("invalid number"));
                }
            }
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => {
                self.i += 1;
                return Err(self.fault("invalid number"));
            }
        }
        self.skip_fraction_and_exponent()
    }

    /// The optional `.digits` and `e[+-]digits` parts of a number.
    fn skip_fraction_and_exponent(&mut self) -> Res<()> {
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.peek_fault("invalid number"));
            }
            self.skip_digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
                return Err(self.fault("invalid number"));
            }
            self.skip_digits();
        }
        Ok(())
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    /// An object key and its colon inside a skipped value; the cursor is
    /// before the key.
    fn skip_key(&mut self) -> Res<()> {
        match self.ws() {
            Some(b'"') => self.i += 1,
            Some(_) => return Err(self.peek_fault("key must be a string")),
            None => return Err(self.peek_fault("EOF while parsing an object")),
        }
        self.string(false)?;
        match self.ws() {
            Some(b':') => {
                self.i += 1;
                Ok(())
            }
            Some(_) => Err(self.peek_fault("expected `:`")),
            None => Err(self.peek_fault("EOF while parsing an object")),
        }
    }

    /// Skips one value of an unknown field, as serde_json's `ignore_value`:
    /// iteratively, with an explicit stack of open containers.
    fn skip_value(&mut self) -> Res<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value is expected here.
            match self.ws() {
                None => return Err(self.peek_fault("EOF while parsing a value")),
                Some(b'n') => {
                    self.i += 1;
                    self.ident(b"ull")?;
                }
                Some(b't') => {
                    self.i += 1;
                    self.ident(b"rue")?;
                }
                Some(b'f') => {
                    self.i += 1;
                    self.ident(b"alse")?;
                }
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                Some(b'"') => {
                    self.i += 1;
                    self.string(false)?;
                }
                Some(bracket @ (b'[' | b'{')) => {
                    self.i += 1;
                    let close = if bracket == b'[' { b']' } else { b'}' };
                    if self.ws() == Some(close) {
                        self.i += 1;
                    } else {
                        open.push(close);
                        if bracket == b'{' {
                            self.skip_key()?;
                        }
                        continue;
                    }
                }
                Some(_) => return Err(self.peek_fault("expected value")),
            }
            // A value ended: close containers until one wants another value.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(());
                };
                match self.ws() {
                    Some(b',') => {
                        self.i += 1;
                        if close == b'}' {
                            self.skip_key()?;
                        }
                        break;
                    }
                    Some(c) if c == close => {
                        self.i += 1;
                        open.pop();
                    }
                    Some(_) if close == b']' => return Err(self.peek_fault("expected `,` or `]`")),
                    Some(_) => return Err(self.peek_fault("expected `,` or `}`")),
                    None if close == b']' => {
                        return Err(self.peek_fault("EOF while parsing a list"))
                    }
                    None => return Err(self.peek_fault("EOF while parsing an object")),
                }
            }
        }
    }
}

/// The text of a strictly checked JSON string literal (`raw`, quotes
/// included) with its escapes decoded, exactly as serde_json's `parse_str`
/// gives it: `\" \\ \/ \b \f \n \r \t`, and `\uXXXX`, a surrogate pair as
/// the one character it encodes. The nanoserde codec reads the seed's
/// string fields through it, so that no JSON reader of nanoserde's (whose
/// tokenizer parses every number as a float, bringing std's float parser
/// and its tables into the binary) is needed for them.
///
/// `None` if `raw` is not such a literal. [`check`] has made sure it is:
/// valid UTF-8, every escape one of those, four hex digits after each `\u`,
/// a leading surrogate always followed by `\u` and a trailing one, never a
/// trailing one alone.
pub(crate) fn unescape(raw: &str) -> Option<String> {
    unescape_text(raw.strip_prefix('"')?.strip_suffix('"')?)
}

/// [`unescape`] of a literal's text between its quotes (also the keys,
/// which are compared with the field names once unescaped).
fn unescape_text(content: &str) -> Option<String> {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        // A cursor after the escape's letter; `\u` reads on from there.
        let mut scan = Scan::new(rest.as_bytes());
        scan.i = at + 2;
        let plain = match rest.as_bytes().get(at + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => scan.code_point()?,
            _ => return None,
        };
        out.push(plain);
        // Escapes are ASCII, so the cursor is on a character boundary.
        rest = rest.get(scan.i..)?;
    }
    out.push_str(rest);
    Some(out)
}

impl Scan<'_> {
    /// The character of a `\uXXXX` escape whose `\u` was consumed, reading
    /// the second half of a surrogate pair too; `None` for a lone surrogate.
    fn code_point(&mut self) -> Option<char> {
        let n = self.hex4().ok()?;
        if !(LEAD_SURROGATE_MIN..=LEAD_SURROGATE_MAX).contains(&n) {
            // A trailing surrogate alone is no character: `None` here too.
            return char::from_u32(u32::from(n));
        }
        if self.b.get(self.i..self.i + 2)? != b"\\u" {
            return None;
        }
        self.i += 2;
        let low = self.hex4().ok()?;
        if !(TRAIL_SURROGATE_MIN..=TRAIL_SURROGATE_MAX).contains(&low) {
            return None;
        }
        let high_bits = u32::from(n - LEAD_SURROGATE_MIN) << 10;
        char::from_u32(SUPPLEMENTARY_MIN + high_bits + u32::from(low - TRAIL_SURROGATE_MIN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(s: &str) -> Result<Option<i64>, Option<i64>> {
        check(s.as_bytes())
            .map(|f| f.raw(Field::RequestId).and_then(|r| r.parse().ok()))
            .map_err(|e| e.request_id)
    }

    #[test]
    fn reads_keys_after_unescaping() {
        assert_eq!(verdict(r#"{"request\u0049D":3}"#), Ok(Some(3)));
        assert_eq!(verdict(r#"{"request\u00c9D":3}"#), Ok(None));
        assert_eq!(verdict(r#"{"\u0072equest\u0049\u0044":4}"#), Ok(Some(4)));
        assert_eq!(verdict(r#"{"requestID\u0000":3}"#), Ok(None));
        assert_eq!(verdict(r#"{"requestI\n":3,"\/requestID":3}"#), Ok(None));
        assert_eq!(verdict(r#"{"\ud83d\ude00":1,"requestID":5}"#), Ok(Some(5)));
    }

    #[test]
    fn skips_deep_unknown_values_without_recursion() {
        let deep = format!(
            "{{\"x\":{}0{}}}",
            "[{\"a\":".repeat(200_000),
            "}]".repeat(200_000)
        );
        assert_eq!(verdict(&deep), Ok(None));
        let open = format!("{{\"x\":{}", "[".repeat(200_000));
        assert!(verdict(&open).is_err());
    }

    /// serde_json's string for each literal, which the check accepts as
    /// a `command` and [`unescape`] reads alike.
    #[test]
    fn unescape_gives_serde_jsons_strings() {
        let mut literals: Vec<String> = [
            r#""""#,
            r#""plain""#,
            r#""\"\\\/\b\f\n\r\t""#,
            r#""\\n\\u0041\\""#,
            "\"é弹😀\\u00e9\\n\u{2028}\"",
        ]
        .map(String::from)
        .to_vec();
        // Every code point of the BMP outside the surrogates, in lower- and
        // uppercase hex, between other text.
        for n in (0..=0xFFFF_u32).filter(|n| !(0xD800..=0xDFFF).contains(n)) {
            literals.push(format!("\"a\\u{n:04x}b\\u{n:04X}\""));
        }
        // Every leading surrogate with the ends and middle of the trailing
        // ones, and every trailing one after the first and last leading.
        for high in 0xD800..=0xDBFF_u32 {
            for low in [0xDC00, 0xDE00, 0xDFFF] {
                literals.push(format!("\"\\u{high:04x}\\u{low:04X}x\""));
            }
        }
        for low in 0xDC00..=0xDFFF_u32 {
            for high in [0xD800, 0xDBFF] {
                literals.push(format!("\"\\u{high:04X}\\u{low:04x}\""));
            }
        }
        for literal in literals {
            let want: String = serde_json::from_str(&literal).expect("serde_json reads it");
            let message = format!("{{\"command\":{literal}}}");
            let raw = check(message.as_bytes())
                .ok()
                .and_then(|fields| fields.raw(Field::Command));
            assert_eq!(raw, Some(literal.as_str()));
            assert_eq!(unescape(&literal), Some(want), "{literal}");
        }
    }

    #[test]
    fn reports_serde_json_positions() {
        let err = check(b"{\"requestID\":9,\"success\":\"yes\"}").unwrap_err();
        assert_eq!((err.line, err.column, err.request_id), (1, 30, Some(9)));
        let err = check(b"{\n \"a\":1,}").unwrap_err();
        assert_eq!((err.line, err.column), (2, 8));
        assert_eq!(err.reason, "trailing comma");
    }
}
