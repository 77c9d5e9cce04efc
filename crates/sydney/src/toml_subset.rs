//! The subset of TOML that sydney's config file needs: a flat list of
//! `key = value` lines whose values are strings or integers.
//!
//! Why not a TOML crate: every one measured costs 55-130 KB of a binary
//! whose whole budget is 800 KB (`toml` with only its parser: +102 KB,
//! `toml-spanner`: +57 KB, `basic-toml`/`toml-span` about as much as `toml`;
//! see docs/SERVER.md), while this file costs at most 20 KB. To keep it honest,
//! the tests compare it with the `toml` crate on thousands of documents:
//! whatever this parser accepts, `toml` reads the same way; whatever `toml`
//! rejects, this parser rejects too. Valid TOML that sydney's config never
//! needs (tables, arrays, multi-line strings, dotted or quoted keys) is
//! refused with an "unsupported" message rather than misread.

use std::ops::Range;

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The bare key.
    pub key: &'a str,
    /// Byte offset of the key in the document.
    pub key_offset: usize,
    /// The value.
    pub value: Value,
    /// Byte range of the value's source text.
    pub value_span: Range<usize>,
}

/// A value, as far as the config needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A basic (`"..."`) or literal (`'...'`) string, escapes decoded.
    String(String),
    /// An integer, in any of TOML's notations.
    Integer(i64),
    /// A well-formed value of another type (boolean, float, date, array or
    /// inline table); the config never accepts one, so its content is not
    /// decoded.
    Other(&'static str),
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What is wrong, or what is not supported.
    pub message: &'static str,
    /// The document is valid TOML using something this subset leaves out.
    pub unsupported: bool,
}

/// Parses a document into its entries, in order.
pub fn parse(text: &str) -> Result<Vec<Entry<'_>>, Error> {
    let mut entries: Vec<Entry<'_>> = Vec::new();
    // A byte-order mark may lead the document.
    let mut start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    for line in text[start..].split_inclusive('\n') {
        let entry = Line {
            text,
            pos: start,
            end: start + line.len(),
        }
        .parse()?;
        if let Some(entry) = entry {
            if entries.iter().any(|e| e.key == entry.key) {
                return Err(invalid(entry.key_offset, "duplicate key"));
            }
            entries.push(entry);
        }
        start += line.len();
    }
    Ok(entries)
}

fn invalid(offset: usize, message: &'static str) -> Error {
    Error {
        offset,
        message,
        unsupported: false,
    }
}

fn unsupported(offset: usize, message: &'static str) -> Error {
    Error {
        offset,
        message,
        unsupported: true,
    }
}

/// A cursor over one line, `text[pos..end]`, newline included.
struct Line<'a> {
    text: &'a str,
    pos: usize,
    end: usize,
}

impl<'a> Line<'a> {
    fn peek(&self) -> Option<u8> {
        (self.pos < self.end).then(|| self.text.as_bytes()[self.pos])
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..self.end]
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Blanks, an optional comment, the end of the line.
    fn expect_line_end(&mut self, message: &'static str) -> Result<(), Error> {
        self.skip_blanks();
        match self.peek() {
            None | Some(b'\n') => Ok(()),
            Some(b'\r') if self.rest() == "\r\n" => Ok(()),
            Some(b'#') => {
                let comment = self.rest().trim_end_matches('\n').trim_end_matches('\r');
                match comment.find(|c: char| c != '\t' && c.is_control()) {
                    Some(i) => Err(invalid(self.pos + i, "control character in comment")),
                    None => Ok(()),
                }
            }
            Some(_) => Err(invalid(self.pos, message)),
        }
    }

    fn parse(mut self) -> Result<Option<Entry<'a>>, Error> {
        self.skip_blanks();
        match self.peek() {
            None | Some(b'\n' | b'\r' | b'#') => {
                self.expect_line_end("expected a key")?;
                return Ok(None);
            }
            Some(b'[') => {
                return Err(unsupported(
                    self.pos,
                    "tables ([name]) are not used; write the keys at the top level",
                ));
            }
            Some(b'"' | b'\'') => {
                return Err(unsupported(
                    self.pos,
                    "quoted keys are not used; write the key bare",
                ));
            }
            Some(_) => {}
        }
        let key_offset = self.pos;
        while matches!(
            self.peek(),
            Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')
        ) {
            self.pos += 1;
        }
        if self.pos == key_offset {
            return Err(invalid(self.pos, "expected a key"));
        }
        let key = &self.text[key_offset..self.pos];
        self.skip_blanks();
        match self.peek() {
            Some(b'=') => self.pos += 1,
            Some(b'.') => {
                return Err(unsupported(
                    self.pos,
                    "dotted keys are not used; write the key bare",
                ));
            }
            _ => return Err(invalid(self.pos, "expected `=` after the key")),
        }
        self.skip_blanks();
        let value_start = self.pos;
        let value = self.value()?;
        let value_span = value_start..self.pos;
        self.expect_line_end("expected the end of the line after the value")?;
        Ok(Some(Entry {
            key,
            key_offset,
            value,
            value_span,
        }))
    }

    fn value(&mut self) -> Result<Value, Error> {
        match self.peek() {
            Some(b'"') if self.rest().starts_with("\"\"\"") => Err(unsupported(
                self.pos,
                "multi-line strings are not used; write the value on one line",
            )),
            Some(b'\'') if self.rest().starts_with("'''") => Err(unsupported(
                self.pos,
                "multi-line strings are not used; write the value on one line",
            )),
            Some(b'"') => self.basic_string().map(Value::String),
            Some(b'\'') => self.literal_string().map(Value::String),
            Some(b'[' | b'{') => self.bracketed(),
            None | Some(b'\n' | b'\r' | b'#') => Err(invalid(self.pos, "expected a value")),
            Some(_) => self.bare_value(),
        }
    }

    fn basic_string(&mut self) -> Result<String, Error> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let rest = self.rest();
            let Some(c) = rest.chars().next() else {
                return Err(invalid(self.pos, "unterminated string"));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                '\\' => {
                    let escape_at = self.pos;
                    self.pos += 1;
                    let (decoded, len) = decode_escape(self.rest())
                        .ok_or_else(|| invalid(escape_at, "invalid escape sequence in string"))?;
                    out.push(decoded);
                    self.pos += len;
                }
                '\n' | '\r' => return Err(invalid(self.pos, "unterminated string")),
                c if c != '\t' && c.is_control() => {
                    return Err(invalid(self.pos, "control character in string"));
                }
                c => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    fn literal_string(&mut self) -> Result<String, Error> {
        self.pos += 1; // opening quote
        let rest = self.rest();
        let Some(close) = rest
            .find(['\'', '\n'])
            .filter(|&i| rest.as_bytes()[i] == b'\'')
        else {
            return Err(invalid(self.pos, "unterminated string"));
        };
        let content = &rest[..close];
        if let Some(i) = content.find(|c: char| c != '\t' && c.is_control()) {
            return Err(invalid(self.pos + i, "control character in string"));
        }
        self.pos += close + 1;
        Ok(content.to_owned())
    }

    /// An array or inline table: only its extent is found (on this line);
    /// the config has no use for its content.
    fn bracketed(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        let kind = if self.peek() == Some(b'[') {
            "an array"
        } else {
            "an inline table"
        };
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'[' | b'{' => depth += 1,
                b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        self.pos += 1;
                        return Ok(Value::Other(kind));
                    }
                }
                b'"' if !self.rest().starts_with("\"\"\"") => {
                    self.basic_string()?;
                    continue;
                }
                b'\'' if !self.rest().starts_with("'''") => {
                    self.literal_string()?;
                    continue;
                }
                b'\n' | b'#' | b'"' | b'\'' => break,
                _ => {}
            }
            self.pos += 1;
        }
        Err(unsupported(
            start,
            "arrays and inline tables spanning lines are not used",
        ))
    }

    /// An unquoted value: integer, boolean, float or date-time.
    fn bare_value(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'#' | b',' | b']' | b'}') {
                break;
            }
            self.pos += 1;
        }
        // A date, a space and a time are one value.
        if is_date_or_time(&self.text[start..self.pos])
            && self.rest().starts_with(' ')
            && self
                .rest()
                .as_bytes()
                .get(1)
                .is_some_and(u8::is_ascii_digit)
        {
            self.pos += 1;
            while let Some(b) = self.peek() {
                if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'#' | b',' | b']' | b'}') {
                    break;
                }
                self.pos += 1;
            }
        }
        let token = &self.text[start..self.pos];
        if let Some(n) = parse_integer(token) {
            return Ok(Value::Integer(n));
        }
        if token == "true" || token == "false" {
            return Ok(Value::Other("a boolean"));
        }
        if is_float(token) {
            return Ok(Value::Other("a float"));
        }
        if is_date_or_time(token) {
            return Ok(Value::Other("a date-time"));
        }
        Err(invalid(
            start,
            "invalid value; strings need quotes, integers plain digits",
        ))
    }
}

/// Decodes the escape after a backslash; returns the character and how many
/// bytes of `rest` it used.
fn decode_escape(rest: &str) -> Option<(char, usize)> {
    let simple = match rest.as_bytes().first()? {
        b'b' => '\u{8}',
        b't' => '\t',
        b'n' => '\n',
        b'f' => '\u{c}',
        b'r' => '\r',
        b'e' => '\u{1b}',
        b'"' => '"',
        b'\\' => '\\',
        b'x' => return hex_escape(rest, 2),
        b'u' => return hex_escape(rest, 4),
        b'U' => return hex_escape(rest, 8),
        _ => return None,
    };
    Some((simple, 1))
}

fn hex_escape(rest: &str, digits: usize) -> Option<(char, usize)> {
    let hex = rest.get(1..=digits)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
    Some((c, 1 + digits))
}

/// TOML integers: decimal with optional sign and no leading zero, or
/// 0x/0o/0b with no sign; single underscores only between digits.
fn parse_integer(token: &str) -> Option<i64> {
    let (radix, digits, negative) = match token.get(..2) {
        Some("0x") => (16, &token[2..], false),
        Some("0o") => (8, &token[2..], false),
        Some("0b") => (2, &token[2..], false),
        _ => {
            let (negative, unsigned) = match token.as_bytes().first()? {
                b'-' => (true, &token[1..]),
                b'+' => (false, &token[1..]),
                _ => (false, token),
            };
            if unsigned.len() > 1 && unsigned.starts_with('0') {
                return None;
            }
            (10, unsigned, negative)
        }
    };
    if !underscores_between_digits(digits, radix) {
        return None;
    }
    let plain: String = digits.chars().filter(|&c| c != '_').collect();
    let magnitude = i128::from_str_radix(&plain, radix).ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// Non-empty, only digits of `radix` and underscores, each underscore
/// between two digits.
fn underscores_between_digits(digits: &str, radix: u32) -> bool {
    let bytes = digits.as_bytes();
    !bytes.is_empty()
        && bytes.iter().enumerate().all(|(i, &b)| {
            if b == b'_' {
                i > 0 && i + 1 < bytes.len() && bytes[i - 1] != b'_' && bytes[i + 1] != b'_'
            } else {
                (b as char).is_digit(radix)
            }
        })
}

/// TOML floats, checked just enough to tell them from typos.
fn is_float(token: &str) -> bool {
    let unsigned = token.strip_prefix(['+', '-']).unwrap_or(token);
    if unsigned == "inf" || unsigned == "nan" {
        return true;
    }
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (int_part, fraction) = match mantissa.split_once('.') {
        Some((int_part, fraction)) => (int_part, Some(fraction)),
        None => (mantissa, None),
    };
    let decimal = |s: &str| underscores_between_digits(s, 10);
    let int_ok = decimal(int_part) && !(int_part.len() > 1 && int_part.starts_with('0'));
    let fraction_ok = fraction.is_none_or(decimal);
    let exponent_ok = exponent.is_none_or(|e| decimal(e.strip_prefix(['+', '-']).unwrap_or(e)));
    int_ok && fraction_ok && exponent_ok && (fraction.is_some() || exponent.is_some())
}

/// A local date, local time or date-time; the shape is checked, not the
/// calendar.
fn is_date_or_time(token: &str) -> bool {
    let shape = |s: &str, pattern: &str| {
        s.len() == pattern.len()
            && s.bytes().zip(pattern.bytes()).all(|(c, p)| {
                if p == b'9' {
                    c.is_ascii_digit()
                } else {
                    c == p
                }
            })
    };
    let time = |s: &str| {
        let s = s.split_once('.').map_or(s, |(hms, frac)| {
            if !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()) {
                hms
            } else {
                ""
            }
        });
        shape(s, "99:99:99") || shape(s, "99:99")
    };
    if token.len() >= 10 && shape(&token[..10], "9999-99-99") {
        let rest = &token[10..];
        let Some(rest) = rest.strip_prefix(['T', 't', ' ']) else {
            return rest.is_empty();
        };
        let time_part = rest
            .strip_suffix(['Z', 'z'])
            .or_else(|| {
                let i = rest.rfind(['+', '-'])?;
                shape(&rest[i + 1..], "99:99").then(|| &rest[..i])
            })
            .unwrap_or(rest);
        return time(time_part);
    }
    time(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::de::{DeTable, DeValue};

    fn value(text: &str) -> Result<Value, Error> {
        parse(text).map(|mut entries| entries.remove(0).value)
    }

    #[test]
    fn reads_the_config_shapes() {
        let text = "# comment\n\nbind = \"::1\" # trailing\nport=8080\r\nlevel = 'warn'\n";
        let entries = parse(text).unwrap();
        let got: Vec<_> = entries.iter().map(|e| (e.key, e.value.clone())).collect();
        assert_eq!(
            got,
            [
                ("bind", Value::String("::1".into())),
                ("port", Value::Integer(8080)),
                ("level", Value::String("warn".into())),
            ]
        );
        assert_eq!(&text[entries[0].value_span.clone()], "\"::1\"");
        assert_eq!(&text[entries[1].key_offset..][..4], "port");
    }

    #[test]
    fn integers_in_every_notation() {
        for (text, want) in [
            ("0", 0),
            ("+1", 1),
            ("-1_000", -1000),
            ("0x1F", 31),
            ("0o17", 15),
            ("0b101", 5),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(
                value(&format!("k = {text}")),
                Ok(Value::Integer(want)),
                "{text}"
            );
        }
        for text in [
            "01",
            "1__0",
            "_1",
            "1_",
            "0x",
            "+0x1",
            "9223372036854775808",
            "1a",
        ] {
            assert!(value(&format!("k = {text}")).is_err(), "{text}");
        }
    }

    #[test]
    fn strings_decode_escapes() {
        assert_eq!(
            value(r#"k = "a\tb\u00e9\"""#),
            Ok(Value::String("a\tbé\"".into()))
        );
        assert_eq!(
            value(r"k = 'C:\path'"),
            Ok(Value::String(r"C:\path".into()))
        );
        assert!(value(r#"k = "\q""#).is_err());
        assert!(value("k = \"open").is_err());
    }

    #[test]
    fn other_types_are_recognised_not_decoded() {
        for (text, kind) in [
            ("true", "a boolean"),
            ("1.5", "a float"),
            ("-1e3", "a float"),
            ("nan", "a float"),
            ("1979-05-27", "a date-time"),
            ("1979-05-27T07:32:00Z", "a date-time"),
            ("07:32:00", "a date-time"),
            ("[1, \"]\"]", "an array"),
            ("{ a = 1 }", "an inline table"),
        ] {
            assert_eq!(
                value(&format!("k = {text}")),
                Ok(Value::Other(kind)),
                "{text}"
            );
        }
    }

    #[test]
    fn unsupported_toml_says_so() {
        for text in [
            "[server]",
            "\"port\" = 1",
            "a.b = 1",
            "k = \"\"\"x\"\"\"",
            "k = [\n1]",
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.unsupported, "{text}: {err:?}");
        }
    }

    #[test]
    fn errors_point_at_the_problem() {
        let err = parse("port = 1\nbind ==\n").unwrap_err();
        assert_eq!(err.offset, 15);
        assert!(!err.unsupported);
        let err = parse("port = 1\nport = 2\n").unwrap_err();
        assert_eq!((err.offset, err.message), (9, "duplicate key"));
    }

    /// Whatever this parser accepts, the `toml` crate reads the same way;
    /// whatever `toml` rejects, this parser rejects; and where only this
    /// parser refuses, it says "unsupported".
    fn agrees_with_toml(doc: &str) {
        let ours = parse(doc);
        // `DeTable::parse` leaves numbers to be checked when they are
        // deserialized; check them here, as deserializing would.
        let theirs = DeTable::parse(doc)
            .map_err(|err| err.message().to_owned())
            .and_then(|table| {
                for (_, value) in table.get_ref().iter() {
                    let valid = match value.get_ref() {
                        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).is_ok(),
                        DeValue::Float(f) => f.as_str().parse::<f64>().is_ok(),
                        _ => true,
                    };
                    if !valid {
                        return Err("invalid number".to_owned());
                    }
                }
                Ok(table)
            });
        match (&ours, &theirs) {
            (Ok(entries), Ok(table)) => {
                let table = table.get_ref();
                assert_eq!(entries.len(), table.len(), "{doc:?}");
                for entry in entries {
                    let (_, value) = table
                        .iter()
                        .find(|(key, _)| key.get_ref() == entry.key)
                        .unwrap_or_else(|| panic!("{doc:?}: toml lacks {}", entry.key));
                    match (&entry.value, value.get_ref()) {
                        (Value::String(a), DeValue::String(b)) => assert_eq!(a, b, "{doc:?}"),
                        (Value::Integer(a), DeValue::Integer(b)) => {
                            let b = i64::from_str_radix(b.as_str(), b.radix());
                            assert_eq!(Ok(*a), b, "{doc:?}");
                        }
                        (Value::Other(kind), other) => {
                            let toml_kind = match other {
                                DeValue::Boolean(_) => "a boolean",
                                DeValue::Float(_) => "a float",
                                DeValue::Datetime(_) => "a date-time",
                                DeValue::Array(_) => "an array",
                                DeValue::Table(_) => "an inline table",
                                _ => "something else",
                            };
                            assert_eq!(*kind, toml_kind, "{doc:?}");
                        }
                        (ours, theirs) => panic!("{doc:?}: we read {ours:?}, toml {theirs:?}"),
                    }
                    assert_eq!(value.span(), entry.value_span, "{doc:?}: value span");
                }
            }
            (Err(err), Ok(_)) => {
                assert!(
                    err.unsupported,
                    "{doc:?}: valid TOML called invalid: {err:?}"
                );
            }
            (Ok(entries), Err(err)) => {
                panic!("{doc:?}: accepted {entries:?}, but toml says {err}")
            }
            (Err(_), Err(_)) => {}
        }
    }

    #[test]
    fn agrees_with_the_toml_crate() {
        let keys = [
            "port",
            "log_level",
            "a-b_9",
            "\"port\"",
            "'k'",
            "a.b",
            "",
            "p ort",
            "[t]",
        ];
        let separators = ["=", " = ", "\t=\t", " ", "=="];
        let values = [
            "1",
            "+1",
            "-0",
            "0x1F",
            "0xff",
            "0o17",
            "0b101",
            "1_000",
            "1__0",
            "01",
            "_1",
            "1_",
            "0x",
            "99999999999999999999",
            "\"a\"",
            "'a'",
            "\"\"",
            "''",
            "\"a\\nb\"",
            "\"\\u00e9\"",
            "\"\\x41\"",
            "\"\\q\"",
            "\"a\tb\"",
            "\"a\u{1}b\"",
            "'a\u{7f}'",
            "\"é\"",
            "\"unterminated",
            "'unterminated",
            "true",
            "false",
            "True",
            "1.5",
            "1e3",
            "1.",
            ".5",
            "-inf",
            "nan",
            "1979-05-27",
            "1979-05-27T07:32:00Z",
            "1979-05-27 07:32:00",
            "07:32:00",
            "07:32",
            "[1]",
            "[1, [2]]",
            "[\"]\"]",
            "[",
            "{a = 1}",
            "{}",
            "\"\"\"a\"\"\"",
            "'''a'''",
            "abc",
            "",
            "0.0.0.0",
            "\"0.0.0.0\"",
        ];
        let trailers = ["", " # c", "#c", " x", "\t", "\r", " #\u{1}"];
        let endings = ["", "\n", "\r\n"];
        let mut checked = 0;
        for key in keys {
            for separator in separators {
                for value in values {
                    for trailer in trailers {
                        for ending in endings {
                            agrees_with_toml(&format!("{key}{separator}{value}{trailer}{ending}"));
                            checked += 1;
                        }
                    }
                }
            }
        }
        for doc in [
            "a = 1\nb = 2\n",
            "a = 1\na = 2\n",
            "a = 1\n[t]\nb = 2\n",
            "\n\n  # only comments\n\t\n",
            "a = 1 b = 2",
            "a = 1\n\rb = 2",
            "\u{feff}a = 1",
        ] {
            agrees_with_toml(doc);
            checked += 1;
        }
        assert!(checked > 50_000, "{checked}");
    }
}
