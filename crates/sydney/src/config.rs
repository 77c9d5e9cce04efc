//! Server settings and where they come from.
//!
//! Every setting has a built-in default; the config file overrides the
//! default, the environment overrides the file, and a command-line flag
//! overrides the environment. Each source is turned into a [`Layer`] (the
//! settings it names), and [`Config::resolve`] stacks the layers.
//!
//! Everything here is pure apart from [`read_file`]: sources come in as
//! strings and closures, so the precedence rules and every error message are
//! unit-tested without touching the process environment or the disk.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_spanner::{Arena, Value};

use crate::log::Level;

/// The settings the server runs with, after all sources are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address of the interface to listen on; `0.0.0.0` or `::` for all.
    pub bind: IpAddr,
    /// TCP port to listen on; 0 asks the kernel for a free one.
    pub port: u16,
    /// Least important log level that is printed.
    pub log_level: Level,
    /// How long a client may take to send a complete request head, and how
    /// long an idle keep-alive connection stays open (hyper uses one timer
    /// for both); this is what defeats slowloris clients.
    pub header_read_timeout: Duration,
    /// Largest request head (request line plus headers) accepted; larger
    /// ones are answered 431.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            log_level: Level::Info,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Applies `layers` over the built-in defaults, later layers winning.
    ///
    /// Callers pass `[file, env, flags]`, which gives the documented
    /// precedence flag > environment > file > default.
    pub fn resolve(layers: &[&Layer]) -> Config {
        let mut config = Config::default();
        for layer in layers {
            let Layer {
                bind,
                port,
                log_level,
                header_read_timeout,
                max_header_bytes,
                shutdown_timeout,
            } = **layer;
            config.bind = bind.unwrap_or(config.bind);
            config.port = port.unwrap_or(config.port);
            config.log_level = log_level.unwrap_or(config.log_level);
            config.header_read_timeout = header_read_timeout.unwrap_or(config.header_read_timeout);
            config.max_header_bytes = max_header_bytes.unwrap_or(config.max_header_bytes);
            config.shutdown_timeout = shutdown_timeout.unwrap_or(config.shutdown_timeout);
        }
        config
    }
}

/// The settings one source names; `None` leaves the setting to sources of
/// lower precedence.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// See [`Config::bind`].
    pub bind: Option<IpAddr>,
    /// See [`Config::port`].
    pub port: Option<u16>,
    /// See [`Config::log_level`].
    pub log_level: Option<Level>,
    /// See [`Config::header_read_timeout`].
    pub header_read_timeout: Option<Duration>,
    /// See [`Config::max_header_bytes`].
    pub max_header_bytes: Option<usize>,
    /// See [`Config::shutdown_timeout`].
    pub shutdown_timeout: Option<Duration>,
}

/// One setting, with what it accepts; shared by every source so that a bad
/// value reads the same whether it came from a flag, the environment or the
/// file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// [`Config::bind`].
    Bind,
    /// [`Config::port`].
    Port,
    /// [`Config::log_level`].
    LogLevel,
    /// [`Config::header_read_timeout`].
    HeaderReadTimeout,
    /// [`Config::max_header_bytes`].
    MaxHeaderBytes,
    /// [`Config::shutdown_timeout`].
    ShutdownTimeout,
}

/// Accepted range of `header_read_timeout_secs`: zero would time every
/// client out at once.
const HEADER_TIMEOUT_SECS: (u64, u64) = (1, 3600);
/// Accepted range of `max_header_bytes`: below 1 KiB ordinary browsers fail;
/// above 256 KiB the cap stops meaning anything (hyper's read buffer tops out
/// near 400 KiB).
const HEADER_BYTES: (u64, u64) = (1024, 256 * 1024);
/// Accepted range of `shutdown_timeout_secs`; 0 closes connections at once.
const SHUTDOWN_SECS: (u64, u64) = (0, 3600);

impl Setting {
    /// All settings, in the order the template file lists them.
    pub const ALL: [Setting; 6] = [
        Setting::Bind,
        Setting::Port,
        Setting::LogLevel,
        Setting::HeaderReadTimeout,
        Setting::MaxHeaderBytes,
        Setting::ShutdownTimeout,
    ];

    /// The key in the config file.
    pub fn key(self) -> &'static str {
        match self {
            Setting::Bind => "bind",
            Setting::Port => "port",
            Setting::LogLevel => "log_level",
            Setting::HeaderReadTimeout => "header_read_timeout_secs",
            Setting::MaxHeaderBytes => "max_header_bytes",
            Setting::ShutdownTimeout => "shutdown_timeout_secs",
        }
    }

    /// What the setting is, for error messages ("invalid port ...").
    fn noun(self) -> &'static str {
        match self {
            Setting::Bind => "bind address",
            Setting::Port => "port",
            Setting::LogLevel => "log level",
            Setting::HeaderReadTimeout => "header read timeout",
            Setting::MaxHeaderBytes => "max header bytes",
            Setting::ShutdownTimeout => "shutdown timeout",
        }
    }

    /// What a valid value looks like, for error messages.
    fn expected(self) -> &'static str {
        match self {
            Setting::Bind => "an IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1, :: or ::1",
            Setting::Port => "an integer 0-65535",
            Setting::LogLevel => "one of error, warn, info, debug, trace",
            Setting::HeaderReadTimeout => "an integer number of seconds 1-3600",
            Setting::MaxHeaderBytes => "an integer number of bytes 1024-262144",
            Setting::ShutdownTimeout => "an integer number of seconds 0-3600",
        }
    }

    /// Whether the file holds this setting as a TOML string (else integer).
    fn is_text(self) -> bool {
        matches!(self, Setting::Bind | Setting::LogLevel)
    }

    /// Parses a value given as text (a flag or an environment variable) into
    /// `layer`. On failure returns nothing: the caller knows the source and
    /// builds the error.
    fn set_from_str(self, layer: &mut Layer, text: &str) -> Option<()> {
        if self.is_text() {
            self.set_text(layer, text)
        } else {
            // Accept only plain decimal digits: `u64::from_str` would also
            // take a leading `+`, which no one means on purpose.
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            self.set_integer(layer, text.parse().ok()?)
        }
    }

    fn set_text(self, layer: &mut Layer, text: &str) -> Option<()> {
        match self {
            Setting::Bind => layer.bind = Some(text.parse().ok()?),
            Setting::LogLevel => layer.log_level = Some(text.parse().ok()?),
            _ => return None,
        }
        Some(())
    }

    fn set_integer(self, layer: &mut Layer, value: u64) -> Option<()> {
        let in_range = |(low, high): (u64, u64)| (low..=high).contains(&value).then_some(value);
        match self {
            Setting::Port => layer.port = Some(u16::try_from(value).ok()?),
            Setting::HeaderReadTimeout => {
                layer.header_read_timeout =
                    Some(Duration::from_secs(in_range(HEADER_TIMEOUT_SECS)?));
            }
            Setting::MaxHeaderBytes => {
                layer.max_header_bytes = Some(usize::try_from(in_range(HEADER_BYTES)?).ok()?);
            }
            Setting::ShutdownTimeout => {
                layer.shutdown_timeout = Some(Duration::from_secs(in_range(SHUTDOWN_SECS)?));
            }
            Setting::Bind | Setting::LogLevel => return None,
        }
        Some(())
    }
}

/// Where a value came from; printed in error messages so the user knows
/// what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag, such as `--port`.
    Flag(&'static str),
    /// An environment variable, such as `PORT`.
    Env(&'static str),
    /// A key in the config file.
    File {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// 1-based line of the value.
        line: usize,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::File { path, key, line } => {
                write!(f, "config file {} line {line} (key {key})", path.display())
            }
        }
    }
}

/// Why the configuration could not be built. Each message is one line that
/// names the source of the bad value and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse, is out of range or has the wrong type.
    #[error("invalid {noun} {value} in {from}: expected {expected}", noun = .setting.noun(), expected = .setting.expected())]
    InvalidValue {
        /// The setting the value was meant for.
        setting: Setting,
        /// The offending value, quoted and escaped so it fits on one line.
        value: String,
        /// Where it came from.
        from: Source,
    },
    /// A key the config file must not contain.
    #[error(
        "unknown {} \"{key}\" in config file {} line {line}: {}; valid keys are {}",
        if *table { "table" } else { "key" },
        path.display(),
        if *table { "the config has no tables, write its keys at the top level" } else { "remove it" },
        VALID_KEYS
    )]
    UnknownKey {
        /// The config file.
        path: PathBuf,
        /// The key (or table name), escaped to fit on one line.
        key: String,
        /// 1-based line of the key.
        line: usize,
        /// The key names a table (`[server]`, or the `a` of `a.b = 1`).
        table: bool,
    },
    /// The config file is not valid TOML.
    #[error(
        "cannot parse config file {} line {line} column {column}: {message}",
        path.display()
    )]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {} ({origin}): {cause}; {}", path.display(), origin.hint())]
    Read {
        /// The config file.
        path: PathBuf,
        /// How the path was chosen.
        origin: FileOrigin,
        /// The I/O error.
        cause: io::Error,
    },
}

const VALID_KEYS: &str = "bind, port, log_level, header_read_timeout_secs, max_header_bytes, \
                          shutdown_timeout_secs";

/// How the config file path was chosen; decides whether a missing file is
/// an error and what the error message suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOrigin {
    /// Named with `--config`: it must exist.
    Flag,
    /// `$BUNDLE_ROOT/etc/sydney.toml`: optional.
    BundleRoot,
}

impl FileOrigin {
    fn hint(self) -> &'static str {
        match self {
            FileOrigin::Flag => "check the path given to --config",
            FileOrigin::BundleRoot => "fix the file's permissions or unset BUNDLE_ROOT",
        }
    }
}

impl fmt::Display for FileOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileOrigin::Flag => "given with --config",
            FileOrigin::BundleRoot => "found via BUNDLE_ROOT",
        })
    }
}

/// Picks the config file: `--config PATH` if given, else
/// `$BUNDLE_ROOT/etc/sydney.toml` if `BUNDLE_ROOT` is set and not empty.
pub fn config_path(
    flag: Option<PathBuf>,
    bundle_root: Option<OsString>,
) -> Option<(PathBuf, FileOrigin)> {
    if let Some(path) = flag {
        return Some((path, FileOrigin::Flag));
    }
    let root = bundle_root.filter(|root| !root.is_empty())?;
    Some((
        Path::new(&root).join("etc").join("sydney.toml"),
        FileOrigin::BundleRoot,
    ))
}

/// Reads the config file; a missing file found via `BUNDLE_ROOT` is not an
/// error and yields `None`.
pub fn read_file(path: &Path, origin: FileOrigin) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(cause)
            if cause.kind() == io::ErrorKind::NotFound && origin == FileOrigin::BundleRoot =>
        {
            Ok(None)
        }
        Err(cause) => Err(ConfigError::Read {
            path: path.to_owned(),
            origin,
            cause,
        }),
    }
}

/// Parses the config file's text. `path` is only used in error messages.
///
/// The TOML itself is read by `toml-spanner` (docs/decisions/0010-toml-parser.md),
/// which keeps the byte span of every key and value, so each error names
/// the line of the offending key or value.
pub fn parse_file(text: &str, path: &Path) -> Result<Layer, ConfigError> {
    let arena = Arena::new();
    let doc = toml_spanner::parse(text, &arena).map_err(|err| {
        let (line, column) = line_column(text, err.span().start as usize);
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: format!("{}; fix the TOML syntax", one_line(&err.message(text))),
        }
    })?;
    let mut layer = Layer::default();
    for (key, item) in doc.table() {
        let line = line_column(text, key.span.start as usize).0;
        let Some(setting) = Setting::ALL.into_iter().find(|s| s.key() == key.name) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key: one_line(key.name),
                line,
                table: matches!(item.value(), Value::Table(_)),
            });
        };
        let parsed = match item.value() {
            Value::String(s) if setting.is_text() => setting.set_text(&mut layer, s),
            Value::Integer(n) if !setting.is_text() => {
                n.as_u64().and_then(|n| setting.set_integer(&mut layer, n))
            }
            _ => None,
        };
        if parsed.is_none() {
            let span = item.span();
            return Err(ConfigError::InvalidValue {
                setting,
                value: one_line(text.get(span.range()).unwrap_or("?")),
                from: Source::File {
                    path: path.to_owned(),
                    key: setting.key(),
                    line: line_column(text, span.start as usize).0,
                },
            });
        }
    }
    Ok(layer)
}

/// Environment variables the server reads, besides `BUNDLE_ROOT`.
const ENV_VARS: [(&str, Setting); 3] = [
    ("BIND", Setting::Bind),
    ("PORT", Setting::Port),
    ("RUST_LOG", Setting::LogLevel),
];

/// Builds the environment layer from `BIND`, `PORT` and `RUST_LOG`, read
/// through `var` (`std::env::var_os` in the binary). An empty variable
/// counts as unset, as shells and container runtimes often leave them so.
pub fn env_layer(var: impl Fn(&str) -> Option<OsString>) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    for (name, setting) in ENV_VARS {
        if let Some(value) = var(name).filter(|value| !value.is_empty()) {
            set_from_os_str(&mut layer, setting, &value, Source::Env(name))?;
        }
    }
    Ok(layer)
}

/// Parses a flag's or environment variable's value into `layer`.
pub fn set_from_os_str(
    layer: &mut Layer,
    setting: Setting,
    value: &std::ffi::OsStr,
    from: Source,
) -> Result<(), ConfigError> {
    value
        .to_str()
        .and_then(|text| setting.set_from_str(layer, text))
        .ok_or_else(|| ConfigError::InvalidValue {
            setting,
            value: format!("\"{}\"", one_line(&value.to_string_lossy())),
            from,
        })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// Escapes control characters and shortens long text, so that every error
/// stays one readable line whatever the user wrote.
pub(crate) fn one_line(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    let mut out: String = text
        .chars()
        .take(MAX_CHARS)
        .flat_map(|c| {
            let escape = c.is_control();
            let escaped = escape.then(|| c.escape_debug());
            escaped.into_iter().flatten().chain((!escape).then_some(c))
        })
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn path() -> &'static Path {
        Path::new("/etc/sydney.toml")
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn template_parses_to_the_defaults() {
        let template = include_str!("../etc/sydney.toml");
        let layer = parse_file(template, path()).expect("template parses");
        assert_eq!(Config::resolve(&[&layer]), Config::default());
        // Every setting is written out, not left to the defaults.
        assert!(layer.bind.is_some() && layer.port.is_some() && layer.log_level.is_some());
        assert!(layer.header_read_timeout.is_some() && layer.max_header_bytes.is_some());
        assert!(layer.shutdown_timeout.is_some());
    }

    #[test]
    fn empty_file_sets_nothing() {
        assert_eq!(parse_file("", path()).unwrap(), Layer::default());
        assert_eq!(
            parse_file("# just a comment\n", path()).unwrap(),
            Layer::default()
        );
    }

    #[test]
    fn later_layers_win() {
        let file = Layer {
            port: Some(1),
            bind: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            max_header_bytes: Some(2048),
            ..Layer::default()
        };
        let env = Layer {
            port: Some(2),
            log_level: Some(Level::Debug),
            ..Layer::default()
        };
        let flags = Layer {
            port: Some(3),
            ..Layer::default()
        };
        let config = Config::resolve(&[&file, &env, &flags]);
        assert_eq!(config.port, 3);
        assert_eq!(config.log_level, Level::Debug);
        assert_eq!(config.bind, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(config.max_header_bytes, 2048);
        assert_eq!(config.shutdown_timeout, Config::default().shutdown_timeout);
    }

    #[test]
    fn file_values_of_every_kind() {
        let text = "bind = \"::1\"\nport = 0x50\nlog_level = \"WARN\"\n\
                    header_read_timeout_secs = 5\nmax_header_bytes = 8_192\n\
                    shutdown_timeout_secs = 0\n";
        let layer = parse_file(text, path()).unwrap();
        assert_eq!(
            layer,
            Layer {
                bind: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                port: Some(80),
                log_level: Some(Level::Warn),
                header_read_timeout: Some(Duration::from_secs(5)),
                max_header_bytes: Some(8192),
                shutdown_timeout: Some(Duration::ZERO),
            }
        );
    }

    #[test]
    fn bad_file_values_name_file_line_and_key() {
        let cases: &[(&str, &str)] = &[
            (
                "port = \"abc\"",
                "invalid port \"abc\" in config file /etc/sydney.toml line 1 (key port): \
                 expected an integer 0-65535",
            ),
            (
                "\n\nport = 70000",
                "invalid port 70000 in config file /etc/sydney.toml line 3 (key port): \
                 expected an integer 0-65535",
            ),
            (
                "port = -1",
                "invalid port -1 in config file /etc/sydney.toml line 1 (key port): \
                 expected an integer 0-65535",
            ),
            (
                "bind = 127",
                "invalid bind address 127 in config file /etc/sydney.toml line 1 (key bind): \
                 expected an IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1, :: or ::1",
            ),
            (
                "log_level = \"loud\"",
                "invalid log level \"loud\" in config file /etc/sydney.toml line 1 \
                 (key log_level): expected one of error, warn, info, debug, trace",
            ),
            (
                "header_read_timeout_secs = 0",
                "invalid header read timeout 0 in config file /etc/sydney.toml line 1 \
                 (key header_read_timeout_secs): expected an integer number of seconds 1-3600",
            ),
            (
                "max_header_bytes = 1.5",
                "invalid max header bytes 1.5 in config file /etc/sydney.toml line 1 \
                 (key max_header_bytes): expected an integer number of bytes 1024-262144",
            ),
            (
                "shutdown_timeout_secs = [1]",
                "invalid shutdown timeout [1] in config file /etc/sydney.toml line 1 \
                 (key shutdown_timeout_secs): expected an integer number of seconds 0-3600",
            ),
            (
                "port = 1\nprot = 2",
                "unknown key \"prot\" in config file /etc/sydney.toml line 2: remove it; \
                 valid keys are bind, port, log_level, header_read_timeout_secs, \
                 max_header_bytes, shutdown_timeout_secs",
            ),
            (
                "port = 1\n[server]\nport = 1",
                "unknown table \"server\" in config file /etc/sydney.toml line 2: the config \
                 has no tables, write its keys at the top level; valid keys are bind, port, \
                 log_level, header_read_timeout_secs, max_header_bytes, shutdown_timeout_secs",
            ),
            (
                "a.b = 1",
                "unknown table \"a\" in config file /etc/sydney.toml line 1: the config \
                 has no tables, write its keys at the top level; valid keys are bind, port, \
                 log_level, header_read_timeout_secs, max_header_bytes, shutdown_timeout_secs",
            ),
            (
                "port = 1\nport = 2",
                "cannot parse config file /etc/sydney.toml line 2 column 1: the key `port` is \
                 defined multiple times in table; fix the TOML syntax",
            ),
            (
                "\"port\" = \"\"\"\n8080\"\"\"",
                "invalid port \"\"\"\\n8080\"\"\" in config file /etc/sydney.toml line 1 (key port): \
                 expected an integer 0-65535",
            ),
        ];
        for (text, want) in cases {
            let err = parse_file(text, path()).expect_err(text);
            assert_eq!(err.to_string(), *want, "for file {text:?}");
        }
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = parse_file("port = 1\nbind = \n", path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot parse config file /etc/sydney.toml line 2 column "),
            "{msg}"
        );
        assert!(msg.ends_with("; fix the TOML syntax"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");

        let err = parse_file("port = 1\nport = 2\n", path()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn env_values_are_parsed_and_named() {
        let layer = env_layer(env(&[
            ("PORT", "81"),
            ("BIND", "::"),
            ("RUST_LOG", "trace"),
        ]));
        assert_eq!(
            layer.unwrap(),
            Layer {
                port: Some(81),
                bind: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                log_level: Some(Level::Trace),
                ..Layer::default()
            }
        );
        assert_eq!(env_layer(env(&[("PORT", "")])).unwrap(), Layer::default());

        let cases: &[(&str, &str, &str)] = &[
            (
                "PORT",
                "abc",
                "invalid port \"abc\" in environment variable PORT: expected an integer 0-65535",
            ),
            (
                "PORT",
                "+80",
                "invalid port \"+80\" in environment variable PORT: expected an integer 0-65535",
            ),
            (
                "PORT",
                "65536",
                "invalid port \"65536\" in environment variable PORT: expected an integer 0-65535",
            ),
            (
                "BIND",
                "localhost",
                "invalid bind address \"localhost\" in environment variable BIND: expected an \
                 IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1, :: or ::1",
            ),
            (
                "RUST_LOG",
                "info,hyper=warn",
                "invalid log level \"info,hyper=warn\" in environment variable RUST_LOG: \
                 expected one of error, warn, info, debug, trace",
            ),
            (
                "PORT",
                "8\n0",
                "invalid port \"8\\n0\" in environment variable PORT: expected an integer 0-65535",
            ),
        ];
        for (name, value, want) in cases {
            let err = env_layer(env(&[(name, value)])).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
    }

    #[test]
    fn config_path_prefers_the_flag() {
        let flag = Some(PathBuf::from("/x.toml"));
        let root = Some(OsString::from("/bundle"));
        assert_eq!(
            config_path(flag.clone(), root.clone()),
            Some((PathBuf::from("/x.toml"), FileOrigin::Flag))
        );
        assert_eq!(
            config_path(None, root),
            Some((
                PathBuf::from("/bundle/etc/sydney.toml"),
                FileOrigin::BundleRoot
            ))
        );
        assert_eq!(config_path(None, Some(OsString::new())), None);
        assert_eq!(config_path(None, None), None);
    }

    #[test]
    fn one_line_escapes_and_truncates() {
        assert_eq!(one_line("a\nb\tc"), "a\\nb\\tc");
        let long = "x".repeat(100);
        assert_eq!(one_line(&long), format!("{}...", "x".repeat(60)));
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab\ncd", 99), (2, 3));
    }
}
