//! Small helpers shared by the tasks: paths and running programs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root (found from this crate's manifest directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_owned()
}

/// `target/` under the workspace root.
pub fn target_dir() -> PathBuf {
    root().join("target")
}

/// The cargo that runs us (`$CARGO`), so the same toolchain builds everything.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// A command, printed before it runs.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.current_dir(root());
    command
}

/// Runs a command with inherited stdio; fails with the command line if it
/// cannot start or exits non-zero.
pub fn run(command: &mut Command) -> Result<()> {
    let line = describe(command);
    eprintln!("$ {line}");
    let status = command
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its output, whatever its status.
pub fn output(command: &mut Command) -> Result<Output> {
    let line = describe(command);
    command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{line}`"))
}

/// Runs a command quietly and returns its stdout; fails with its stderr.
pub fn stdout(command: &mut Command) -> Result<String> {
    let line = describe(command);
    let out = output(command)?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line, for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Is `program` on PATH?
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

pub use bundle_format::text::thousands as grouped;

/// `SOURCE_DATE_EPOCH`, or 0: the mtime written into every payload entry.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.is_empty() => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        _ => Ok(0),
    }
}

/// Makes sure `programs` are installed, installing their Debian packages
/// with apt-get when we can (root on Debian); otherwise fails naming them.
/// Each entry is `(program, package)`.
pub fn ensure_programs(programs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    ensure_packages(&missing)
}

/// Installs Debian `packages` with apt-get (as root on Debian); otherwise
/// fails naming them.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let is_root = stdout(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0");
    if !(is_root && have("apt-get")) {
        bail!(
            "missing programs; install these Debian packages first: {}",
            packages.join(" ")
        );
    }
    eprintln!("note: installing Debian packages: {}", packages.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}
