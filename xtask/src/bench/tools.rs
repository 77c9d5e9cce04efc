//! The programs the bench compares against, installed from Debian's
//! packages with apt-get when missing.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Result, anyhow, bail};

use crate::util::{self, command};

/// Programs the bench runs, with the Debian package that provides each.
pub const NEEDED: &[(&str, &str)] = &[
    ("tar", "tar"),
    ("gzip", "gzip"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("makeself", "makeself"),
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("sync", "coreutils"),
    ("time", "time"),
    // The portable mix release: Debian's Elixir, and the static shell
    // `--portable` carries.
    ("mix", "elixir"),
    ("busybox", "busybox-static"),
];

/// Where `program` is: on PATH, or in an sbin directory (nginx lives in
/// /usr/sbin, which a non-root PATH may lack).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The path of `program`, or an error saying it is missing.
pub fn path(program: &str) -> Result<PathBuf> {
    find(program).ok_or_else(|| {
        let package = NEEDED
            .iter()
            .find(|(p, _)| *p == program)
            .map_or(program, |(_, package)| package);
        anyhow!("{program} is missing and could not be installed; run `apt-get install {package}`")
    })
}

/// Installs the missing programs' packages with apt-get (one call; an
/// `apt-get update` and a retry if that fails). Returns what is still
/// missing, for the report; the rows needing it then fail.
pub fn ensure() -> Vec<String> {
    let missing: Vec<(&str, &str)> = NEEDED
        .iter()
        .copied()
        .filter(|(program, _)| find(program).is_none())
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    let packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    eprintln!(
        "bench: installing {} with apt-get (missing: {})",
        packages.join(" "),
        missing
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if apt_get(&["install", "-y", "--no-install-recommends"], &packages).is_err() {
        let _ = apt_get(&["update"], &[]);
        if let Err(err) = apt_get(&["install", "-y", "--no-install-recommends"], &packages) {
            eprintln!("bench: {err:#}");
        }
    }
    missing
        .iter()
        .filter(|(program, _)| find(program).is_none())
        .map(|(program, package)| {
            format!("{program} is missing and could not be installed (Debian package {package})")
        })
        .collect()
}

fn apt_get(args: &[&str], packages: &[&str]) -> Result<()> {
    if find("apt-get").is_none() {
        bail!("apt-get is not available");
    }
    // apt's chatter goes to stderr: stdout is the report.
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    util::run(
        command("apt-get")
            .args(args)
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::from(stderr)),
    )
}

/// The first line of `program --version` (or `-v`), for the record.
pub fn version(program: &Path, flag: &str) -> String {
    util::output(command(program).arg(flag))
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}
