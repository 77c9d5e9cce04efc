//! The command line. Doc comments are the help text; the top-level help
//! ends with the exit codes, written from [`Exit::TABLE`] by
//! [`exit_code_footer`] (argh's own `error_code` list would be a second copy).
//!
//! argh, not clap: it derives the same kind of parser with per-command
//! `--help`, examples and notes, for a fraction of clap's size in every
//! bundle (docs/decisions/0001-argh-over-clap.md).

use std::fmt::Write;

use argh::FromArgs;

use crate::exit::Exit;

/// Run and manage the release packed in this file.
#[derive(FromArgs, Debug)]
#[argh(
    example = "{command_name} start\n\
               {command_name} start -- --port 9000\n\
               {command_name} daemon && {command_name} pid && {command_name} stop\n\
               {command_name} inspect --doctor",
    note = "Environment:\n  \
            SYDNEY_BUNDLE_DIR        cache root to extract into (an error if unusable)\n  \
            SYDNEY_BUNDLE_STATE_DIR  where pidfile, lock and log live (default: <cache root>/state/<name>)\n  \
            SYDNEY_BUNDLE_INIT=0     as PID 1, exec the entry instead of staying as a minimal init\n\
            The entry gets BUNDLE_ROOT (its extracted tree), BUNDLE_NAME, BUNDLE_VERSION and the packed environment defaults."
)]
pub struct Cli {
    #[argh(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Start(Start),
    Daemon(Daemon),
    Stop(Stop),
    Restart(Restart),
    Upgrade(Upgrade),
    Rollback(Rollback),
    Pid(Pid),
    Version(Version),
    Exec(Exec),
    Healthcheck(Healthcheck),
    Inspect(Inspect),
    Verify(Verify),
    Extract(Extract),
    Clean(Clean),
}

/// Run the release in the foreground (the process becomes the release's
/// entry; as PID 1 it stays as a minimal init that forwards signals and
/// reaps zombies).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "start",
    example = "{command_name}\n{command_name} -- --port 9000",
    note = "Arguments after -- are passed to the entry after the bundle's default arguments."
)]
pub struct Start {
    /// arguments for the entry (after --)
    #[argh(positional, greedy)]
    pub args: Vec<String>,
}

/// Start the release in the background: detached, output appended to the log
/// file in the state directory, pid recorded. Returns once it runs.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "daemon",
    example = "{command_name}\n{command_name} -- --port 9000",
    note = "Refuses to start a second instance (exit code 4). The log is <state dir>/log. A \
            foreground `start` is not recorded: it belongs to whoever started it."
)]
pub struct Daemon {
    /// arguments for the entry (after --)
    #[argh(positional, greedy)]
    pub args: Vec<String>,
}

/// Stop the instance started by `daemon`: SIGTERM, then SIGKILL after the
/// timeout.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "stop",
    example = "{command_name}\n{command_name} --timeout 30",
    note = "Exits 3 if nothing is running. A stale pidfile is detected and never signalled. \
            With --timeout 0 SIGKILL follows SIGTERM at once: no grace period."
)]
pub struct Stop {
    /// seconds to wait after SIGTERM before SIGKILL (default 15; 0: none)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

/// Restart the `daemon` instance: a handover if it has a supervisor, else
/// stop (if running) and start.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restart", example = "{command_name}")]
pub struct Restart {
    /// seconds to wait after SIGTERM before SIGKILL (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
    /// arguments for the entry (after --)
    #[argh(positional, greedy)]
    pub args: Vec<String>,
}

/// Hand the running `daemon` instance over to NEWFILE with no dropped
/// request; this file is then replaced (the old one kept as .previous).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "upgrade",
    example = "{command_name} ./app-1.2.0",
    note = "Without declared sockets (pack --listen) it stops, then starts. On failure the \
            old version keeps serving and no file changes (docs/UPGRADES.md)."
)]
pub struct Upgrade {
    /// the new bundle file (same name)
    #[argh(positional)]
    pub file: String,
    /// seconds the new server may take to report ready (default 30)
    #[argh(option, default = "30")]
    pub timeout: u64,
}

/// Go back to the previous file (<this file>.previous) the same way
/// `upgrade` goes forward.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "rollback",
    example = "{command_name}",
    note = "Exit code 30 if there is no previous file."
)]
pub struct Rollback {
    /// seconds the server may take to report ready (default 30)
    #[argh(option, default = "30")]
    pub timeout: u64,
}

/// Print the pid of the instance started by `daemon`.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "pid",
    example = "{command_name}",
    note = "Prints \"not running\" and exits 3 if nothing runs. With a supervisor, the \
            server's pid (it changes with each upgrade)."
)]
pub struct Pid {}

/// Print the bundle's name and version.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version", example = "{command_name}")]
pub struct Version {}

/// Run the entry with exactly these arguments (no default arguments), e.g. a
/// mix release's `remote` or `eval`.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "exec",
    example = "{command_name} -- remote\n{command_name} -- eval 'IO.puts(:ok)'"
)]
pub struct Exec {
    /// arguments for the entry (after --)
    #[argh(positional, greedy)]
    pub args: Vec<String>,
}

/// Check that the server answers: HTTP GET, exit 0 on a 2xx status.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "healthcheck",
    example = "{command_name}\n{command_name} --url http://127.0.0.1:9000/health",
    note = "The default URL is http://127.0.0.1:$PORT/ (PORT defaults to 8080). Made for \
            HEALTHCHECK in FROM scratch images, which have no curl. Exit code 5 when unhealthy."
)]
pub struct Healthcheck {
    /// the URL to GET: http:// with an IP address or localhost
    #[argh(option)]
    pub url: Option<String>,
    /// timeout in milliseconds for connecting and for the answer (default 3000)
    #[argh(option, default = "3000")]
    pub timeout_ms: u64,
}

/// Show what is in this bundle and where it would run from.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "inspect",
    example = "{command_name}\n{command_name} --files\n{command_name} --doctor"
)]
pub struct Inspect {
    /// list every file in the payload
    #[argh(switch)]
    pub files: bool,
    /// check what the payload's programs need from a host (libc, loader,
    /// shared libraries, #! interpreters) and say where it can run
    #[argh(switch)]
    pub doctor: bool,
}

/// Check the payload digest; with --deep also compare the extracted tree
/// with the manifest.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "verify",
    example = "{command_name}\n{command_name} --deep",
    note = "Exit code 14 if the payload is corrupt; with --deep, every difference is listed and \
            the code says the most serious: 8 a setuid, setgid or sticky bit, 6 changed or \
            missing entries, 7 extra entries, 9 the tree's marker missing or wrong."
)]
pub struct Verify {
    /// also compare the extracted tree with the file index
    #[argh(switch)]
    pub deep: bool,
}

/// Unpack the payload into a new directory.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "extract",
    example = "{command_name} ./release",
    note = "The directory must not exist (or be empty); it appears complete or not at all."
)]
pub struct Extract {
    /// where to unpack
    #[argh(positional)]
    pub dir: String,
}

/// Remove leftovers from crashed extractions and old versions of this bundle
/// that no running process uses.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "clean",
    example = "{command_name}\n{command_name} --all"
)]
pub struct Clean {
    /// remove every cached tree of this bundle, the current one included
    /// (trees in use are kept)
    #[argh(switch)]
    pub all: bool,
}

/// The end of the top-level `--help`: every exit code of [`Exit::TABLE`].
pub fn exit_code_footer() -> String {
    let mut out = String::from("Exit codes (docs/EXIT_CODES.md):\n");
    for (exit, meaning) in Exit::TABLE {
        let _ = writeln!(out, "  {:>3}  {meaning}", exit.code());
    }
    out
}
