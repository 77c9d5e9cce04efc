//! Config loading checked against an independent TOML parser.
//!
//! [`parse_file`] reads the TOML with `toml-spanner`. Here the `toml` crate
//! reads the same documents, and a small reference maps its result onto
//! the settings. Over many generated documents the two must agree: both
//! accept (with the same settings) or both refuse, and a refusal for a bad
//! key or value names the same key and line. So a parser bug, a span that
//! points at the wrong line, or a value read wrongly shows up here.

use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::{ConfigError, Layer, Setting, Source, parse_file};

/// What loading a document amounts to, for comparison.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Loaded: these settings.
    Loaded(Layer),
    /// Not valid TOML (lines are not compared: two parsers may point at
    /// different tokens of one mistake).
    Syntax,
    /// Valid TOML with a key the config does not have.
    UnknownKey { key: String, line: usize },
    /// A known key with a value of the wrong type or out of range.
    InvalidValue { setting: Setting, line: usize },
    /// Anything else (a read error cannot happen here).
    Other(String),
}

fn ours(doc: &str) -> Outcome {
    match parse_file(doc, Path::new("/t.toml")) {
        Ok(layer) => Outcome::Loaded(layer),
        Err(ConfigError::Syntax { .. }) => Outcome::Syntax,
        Err(ConfigError::UnknownKey { key, line, .. }) => Outcome::UnknownKey { key, line },
        Err(ConfigError::InvalidValue {
            setting,
            from: Source::File { line, .. },
            ..
        }) => Outcome::InvalidValue { setting, line },
        Err(other) => Outcome::Other(other.to_string()),
    }
}

/// The reference: `toml` reads the document; the first entry (in document
/// order) that is not a setting with a valid value decides the outcome.
///
/// One difference between the parsers is settled here, not hidden: TOML
/// integers are 64-bit, and `toml` (whose `DeTable::parse` leaves numbers
/// to be checked later) would reject `99999999999999999999` when
/// deserializing, while `toml-spanner` reads integers up to 128 bits. For
/// the config both mean the same thing: a value out of the setting's range,
/// reported as such.
fn reference(doc: &str) -> Outcome {
    let Ok(table) = DeTable::parse(doc) else {
        return Outcome::Syntax;
    };
    let line_of = |offset: usize| doc[..offset].matches('\n').count() + 1;
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    // `DeTable::parse` leaves numbers to be checked when they are
    // deserialized: digits that form no number at all (`0x`) are a TOML
    // error, which `toml-spanner` reports at once.
    if !entries
        .iter()
        .all(|(_, value)| numbers_valid(value.get_ref()))
    {
        return Outcome::Syntax;
    }
    let mut layer = Layer::default();
    for (key, value) in entries {
        let Some(setting) = Setting::ALL.into_iter().find(|s| s.key() == key.get_ref()) else {
            return Outcome::UnknownKey {
                key: super::one_line(key.get_ref()),
                line: line_of(key.span().start),
            };
        };
        let set = match value.get_ref() {
            DeValue::String(s) if setting.is_text() => setting.set_text(&mut layer, s),
            DeValue::Integer(i) if !setting.is_text() => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .and_then(|n| setting.set_integer(&mut layer, n)),
            _ => None,
        };
        if set.is_none() {
            return Outcome::InvalidValue {
                setting,
                line: line_of(value.span().start),
            };
        }
    }
    Outcome::Loaded(layer)
}

/// Whether every number in `value`, nested ones included, is one.
fn numbers_valid(value: &DeValue<'_>) -> bool {
    match value {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).is_ok(),
        DeValue::Float(f) => f.as_str().parse::<f64>().is_ok(),
        DeValue::Array(items) => items.iter().all(|item| numbers_valid(item.get_ref())),
        DeValue::Table(table) => table.values().all(|item| numbers_valid(item.get_ref())),
        _ => true,
    }
}

fn agrees(doc: &str) -> Outcome {
    let ours = ours(doc);
    let theirs = reference(doc);
    assert_eq!(ours, theirs, "document {doc:?}");
    ours
}

/// Keys: every setting, spellings TOML reads as a setting (quoted), and
/// keys that are wrong in every way the config can be.
const KEYS: &[&str] = &[
    "port",
    "bind",
    "log_level",
    "header_read_timeout_secs",
    "max_header_bytes",
    "shutdown_timeout_secs",
    "\"port\"",
    "'bind'",
    "prot",
    "Port",
    "port.x",
    "a-b_9",
    "",
    "p ort",
    "[t]",
];

const SEPARATORS: &[&str] = &["=", " = ", "\t=\t", " ", "=="];

/// Values: what each setting accepts, in every notation, and what it does
/// not (wrong type, out of range, malformed).
const VALUES: &[&str] = &[
    "0",
    "1",
    "+1",
    "-1",
    "-0",
    "80",
    "0x50",
    "0o17",
    "0b101",
    "1_024",
    "8_192",
    "65535",
    "65536",
    "3600",
    "3601",
    "262144",
    "1__0",
    "01",
    "_1",
    "1_",
    "0x",
    "+0x1",
    "99999999999999999999",
    "1.5",
    "1e3",
    "1.",
    ".5",
    "-inf",
    "nan",
    "true",
    "True",
    "1979-05-27",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "[1]",
    "[1, [2]]",
    "[",
    "{a = 1}",
    "{}",
    "\"8080\"",
    "\"127.0.0.1\"",
    "'::1'",
    "\"0.0.0.0\"",
    "\"localhost\"",
    "\"info\"",
    "'WARN'",
    "\"trace\"",
    "\"loud\"",
    "\"\"",
    "\"a\\nb\"",
    "\"\\u0069nfo\"",
    "\"\\x41\"",
    "\"\\q\"",
    "\"a\tb\"",
    "\"a\u{1}b\"",
    "\"\"\"debug\"\"\"",
    "'''::'''",
    "\"unterminated",
    "'unterminated",
    "abc",
    "",
    "0.0.0.0",
];

const TRAILERS: &[&str] = &["", " # c", "#c", " x", "\t", "\r", " #\u{1}"];
const ENDINGS: &[&str] = &["", "\n", "\r\n"];

#[test]
fn agrees_with_the_toml_crate_on_one_line_documents() {
    let mut checked = 0;
    let mut loaded = 0;
    for key in KEYS {
        for separator in SEPARATORS {
            for value in VALUES {
                for trailer in TRAILERS {
                    for ending in ENDINGS {
                        let doc = format!("{key}{separator}{value}{trailer}{ending}");
                        if matches!(agrees(&doc), Outcome::Loaded(_)) {
                            loaded += 1;
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    // The table must exercise both sides: many documents load, many fail.
    assert!(checked > 90_000, "{checked} documents");
    assert!(
        loaded > 1_000,
        "only {loaded} of {checked} documents loaded"
    );
}

#[test]
fn agrees_with_the_toml_crate_on_several_lines() {
    let lines = [
        "port = 8080",
        "port = 0x1F90",
        "bind = \"::1\"",
        "log_level = 'debug'",
        "max_header_bytes = 2_048",
        "shutdown_timeout_secs = 0",
        "header_read_timeout_secs = 0",
        "port = \"8080\"",
        "prot = 1",
        "\"port\" = 1",
        "a.b = 1",
        "a.c = 2",
        "[server]",
        "[[servers]]",
        "# comment",
        "",
        "   ",
        "bind = ",
        "x = [\n1,\n2]",
        "y = \"\"\"\nmulti\n\"\"\"",
    ];
    let mut checked = 0;
    for first in lines {
        for second in lines {
            for third in ["", "port = 1", "[t]", "log_level = \"warn\""] {
                agrees(&format!("{first}\n{second}\n{third}\n"));
                agrees(&format!("\u{feff}{first}\r\n{second}\r\n{third}"));
                checked += 2;
            }
        }
    }
    assert!(checked > 3_000, "{checked} documents");
}

#[test]
fn the_reference_sees_what_it_should() {
    // Guards the test itself: a reference that refused everything would
    // agree with a parser that refuses everything.
    assert_eq!(
        agrees("port = 80\nbind = \"::1\"\n"),
        Outcome::Loaded(Layer {
            port: Some(80),
            bind: Some("::1".parse().unwrap()),
            ..Layer::default()
        })
    );
    assert_eq!(
        agrees("port = 1\n\nprot = 2\n"),
        Outcome::UnknownKey {
            key: "prot".into(),
            line: 3
        }
    );
    assert_eq!(
        agrees("\nport = 70000\n"),
        Outcome::InvalidValue {
            setting: Setting::Port,
            line: 2
        }
    );
    assert_eq!(agrees("port = = 1\n"), Outcome::Syntax);
}
