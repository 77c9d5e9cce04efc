//! Command-line parsing.
//!
//! `lexopt` instead of clap: six flags do not need clap, and every byte of
//! the server ships in every bundle (docs/decisions/0011-server-size.md).

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::{self, ConfigError, Layer, Setting, Source};

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Print [`HELP`] and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
    /// Run the server.
    Run(Args),
}

/// The settings and config path named on the command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `--config PATH`.
    pub config: Option<PathBuf>,
    /// Settings given as flags; they override every other source.
    pub flags: Layer,
    /// `--reuse-port`: bind with `SO_REUSEPORT`, so that a second server
    /// (the next version, during an upgrade) can bind the same port while
    /// this one still serves (docs/SERVER.md).
    pub reuse_port: bool,
}

/// A command line that cannot be understood (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A flag's value is invalid; the message names the flag.
    #[error(transparent)]
    Value(#[from] ConfigError),
    /// An unknown flag, a missing value, a stray argument.
    #[error("{0}; run 'sydney --help' for usage")]
    Syntax(String),
}

/// The help text; also documents the environment and the exit codes.
pub const HELP: &str = "\
sydney: a tiny HTTP/1.1 server. GET / and HEAD / answer 200 \"Ok\"; everything
else answers 404 \"Page not found\".

Usage: sydney [OPTIONS]

Options:
  --bind ADDR              IPv4 or IPv6 address to listen on [env: BIND]
                           [default: 0.0.0.0]
  --port N                 TCP port, 0-65535; 0 picks a free one [env: PORT]
                           [default: 8080]
  --reuse-port             Bind with SO_REUSEPORT: another server started
                           with it may bind the same port (for upgrades
                           without an inherited socket)
  --config PATH            TOML config file; without it, the server reads
                           $BUNDLE_ROOT/etc/sydney.toml if BUNDLE_ROOT is set
                           and that file exists
  --log-level LEVEL        error, warn, info, debug or trace [env: RUST_LOG]
                           [default: info]
  --shutdown-timeout SECS  How long to let in-flight requests finish after
                           SIGTERM/SIGINT [default: 10]
  -h, --help               Print this help
  -V, --version            Print the version

Precedence: flag, then environment variable, then config file, then default.
The config file also sets header_read_timeout_secs and max_header_bytes; see
the template shipped as etc/sydney.toml.

Listening sockets passed by a service manager (systemd socket activation:
LISTEN_FDS, LISTEN_PID, fds from 3) are served instead of --bind and --port.

On start the server prints one line to stderr per socket, 'sydney: info:
listening on ADDR', with the address actually bound. SIGTERM or SIGINT stops
it gracefully; a second signal stops it at once.

Exit codes:
  0  stopped by SIGTERM or SIGINT (or --help, --version)
  1  runtime failure, such as the address being in use
  2  usage or configuration error (bad flag, environment variable or file)
";

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut out = Args::default();
    while let Some(arg) = parser.next().map_err(syntax)? {
        let (flag, setting) = match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("config") => {
                out.config = Some(parser.value().map_err(syntax)?.into());
                continue;
            }
            Long("reuse-port") => {
                out.reuse_port = true;
                continue;
            }
            Long("bind") => ("--bind", Setting::Bind),
            Long("port") => ("--port", Setting::Port),
            Long("log-level") => ("--log-level", Setting::LogLevel),
            Long("shutdown-timeout") => ("--shutdown-timeout", Setting::ShutdownTimeout),
            other => return Err(syntax(other.unexpected())),
        };
        let value = parser.value().map_err(syntax)?;
        config::set_from_os_str(&mut out.flags, setting, &value, Source::Flag(flag))?;
    }
    Ok(Command::Run(out))
}

fn syntax(err: lexopt::Error) -> UsageError {
    UsageError::Syntax(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn flags_fill_the_flag_layer() {
        let cmd = parse_strs(&[
            "--port",
            "0",
            "--bind=::1",
            "--config",
            "/c.toml",
            "--log-level",
            "debug",
            "--shutdown-timeout",
            "3",
            "--reuse-port",
        ])
        .unwrap();
        let Command::Run(args) = cmd else {
            panic!("expected Run, got {cmd:?}")
        };
        assert_eq!(args.config, Some(PathBuf::from("/c.toml")));
        assert_eq!(args.flags.port, Some(0));
        assert_eq!(args.flags.bind, Some("::1".parse().unwrap()));
        assert_eq!(args.flags.log_level, Some(crate::log::Level::Debug));
        assert_eq!(args.flags.shutdown_timeout, Some(Duration::from_secs(3)));
        assert!(args.reuse_port);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_strs(&["--help"]).unwrap(), Command::Help);
        assert_eq!(parse_strs(&["-h", "--bogus"]).unwrap(), Command::Help);
        assert_eq!(parse_strs(&["-V"]).unwrap(), Command::Version);
        assert_eq!(parse_strs(&[]).unwrap(), Command::Run(Args::default()));
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--port", "abc"],
                "invalid port \"abc\" in flag --port: expected an integer 0-65535",
            ),
            (
                &["--bogus"],
                "invalid option '--bogus'; run 'sydney --help' for usage",
            ),
            (
                &["--port"],
                "missing argument for option '--port'; run 'sydney --help' for usage",
            ),
            (
                &["serve"],
                "unexpected argument \"serve\"; run 'sydney --help' for usage",
            ),
            (
                &["--shutdown-timeout", "-1"],
                "invalid shutdown timeout \"-1\" in flag --shutdown-timeout: expected an \
                 integer number of seconds 0-3600",
            ),
        ];
        for (args, want) in cases {
            let err = parse_strs(args).unwrap_err();
            assert_eq!(err.to_string(), *want, "for {args:?}");
        }
    }

    #[test]
    fn help_fits_a_terminal() {
        for line in HELP.lines() {
            assert!(line.len() <= 80, "help line too long: {line:?}");
        }
    }
}
