//! A tiny levelled logger: one line per message on stderr.
//!
//! The server logs almost nothing (one start-up line, shutdown, rare
//! warnings), so a global level and `eprintln`-style output is all it needs;
//! a `tracing` subscriber would cost more binary size than the rest of the
//! server's own code (docs/decisions/0011-server-size.md).

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// How important a message is; a message is printed when its level is at or
/// above the configured one (`Error` is the most important).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The server cannot do what it was asked to.
    Error = 1,
    /// Something is wrong but the server carries on.
    Warn = 2,
    /// Start-up and shutdown milestones.
    Info = 3,
    /// Per-connection events, such as client errors and timeouts.
    Debug = 4,
    /// Per-request events.
    Trace = 5,
}

impl Level {
    /// The lower-case name used in configuration and in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned when a string names no [`Level`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownLevel;

impl FromStr for Level {
    type Err = UnknownLevel;

    /// Accepts a plain level name in any case (`info`, `INFO`); `RUST_LOG`
    /// filter syntax such as `info,hyper=warn` is deliberately not supported.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ]
        .into_iter()
        .find(|level| level.as_str().eq_ignore_ascii_case(s))
        .ok_or(UnknownLevel)
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the least important level that is still printed.
pub fn set_max_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a message at `level` would be printed.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes `sydney: LEVEL: message` to stderr.
///
/// The line is formatted first and written with one call, so that lines
/// from several processes sharing a log never interleave (stderr is
/// unbuffered). Write errors are ignored on purpose: `eprintln!` panics when
/// stderr is a closed pipe, and a server must not die because nobody reads
/// its log.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let line = format!("sydney: {level}: {args}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Logs at an explicit [`Level`], formatting only when the level is enabled.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {{
        let level = $level;
        if $crate::log::enabled(level) {
            $crate::log::write(level, format_args!($($arg)+));
        }
    }};
}

/// Logs at [`Level::Warn`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

/// Logs at [`Level::Info`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

/// Logs at [`Level::Debug`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_levels_in_any_case() {
        assert_eq!("warn".parse(), Ok(Level::Warn));
        assert_eq!("TRACE".parse(), Ok(Level::Trace));
        assert_eq!("Info".parse(), Ok(Level::Info));
        assert_eq!("info,hyper=warn".parse::<Level>(), Err(UnknownLevel));
        assert_eq!("".parse::<Level>(), Err(UnknownLevel));
    }

    #[test]
    fn more_important_levels_sort_first() {
        assert!(Level::Error < Level::Warn);
        assert!(Level::Debug < Level::Trace);
    }
}
