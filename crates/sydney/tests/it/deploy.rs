//! The systemd unit files in deploy/systemd: their key fields exist and
//! name real commands and flags. No systemd runs here; the server's side of
//! socket activation is tested, as systemd does it, in `activation.rs`.

use std::path::{Path, PathBuf};

use crate::harness::Sydney;

/// A unit file: its sections, each with its `Key=Value` lines in order.
#[derive(Debug)]
struct Unit {
    path: PathBuf,
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Unit {
    fn read(relative: &str) -> Unit {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/systemd")
            .join(relative);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push((name.to_owned(), Vec::new()));
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}:{}: not Key=Value: {line}", path.display(), n + 1));
            let (_, entries) = sections
                .last_mut()
                .unwrap_or_else(|| panic!("{}:{}: a key outside a section", path.display(), n + 1));
            entries.push((key.trim().to_owned(), value.trim().to_owned()));
        }
        Unit { path, sections }
    }

    /// Every value of `key` in `section`.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.sections
            .iter()
            .filter(|(name, _)| name == section)
            .flat_map(|(_, entries)| entries)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of `key` in `section`; fails if it is missing.
    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key).as_slice() {
            [value] => value,
            other => panic!(
                "{}: expected one {key}= in [{section}], found {other:?}",
                self.path.display()
            ),
        }
    }
}

/// The stub's subcommands, from its argh definitions.
fn stub_commands() -> Vec<String> {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stub/src/cli.rs");
    let text = std::fs::read_to_string(&cli).expect("read crates/stub/src/cli.rs");
    text.split("name = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Checks a service's ExecStart: the bundle, a real stub command, and
/// server arguments (after `--`) that sydney accepts.
fn check_exec_start(unit: &Unit) {
    let exec = unit.one("Service", "ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert!(
        words[0].starts_with('/') && words[0].ends_with("/sydney-bundle"),
        "{}: ExecStart does not run the bundle by absolute path: {exec}",
        unit.path.display()
    );
    let command = words.get(1).copied().unwrap_or_default();
    assert_eq!(
        command,
        "start",
        "{}: systemd supervises the foreground command",
        unit.path.display()
    );
    assert!(
        stub_commands().iter().any(|c| c == command),
        "the stub has no `{command}` command: {:?}",
        stub_commands()
    );
    // The server's arguments are valid iff sydney parses them before
    // `--version` (it checks each value as it goes) and exits 0.
    let server_args: Vec<&str> = match words.iter().position(|w| *w == "--") {
        Some(i) => words[i + 1..].to_vec(),
        None => Vec::new(),
    };
    let finished = Sydney::new().args(&server_args).args(["--version"]).run();
    assert_eq!(
        finished.code(),
        0,
        "{}: sydney refuses the arguments in ExecStart\n{finished}",
        unit.path.display()
    );
}

/// The cache directory systemd creates is the one the bundle is told to use.
fn check_cache_dir(unit: &Unit) {
    let cache = unit.one("Service", "CacheDirectory");
    assert_eq!(unit.one("Service", "CacheDirectoryMode"), "0700");
    let envs = unit.all("Service", "Environment");
    let wanted = format!("SYDNEY_BUNDLE_DIR=/var/cache/{cache}");
    assert!(
        envs.contains(&wanted.as_str()),
        "{}: expected Environment={wanted}, found {envs:?}",
        unit.path.display()
    );
}

#[test]
fn plain_service_runs_the_bundle_in_the_foreground() {
    let unit = Unit::read("sydney.service");
    assert!(!unit.one("Unit", "Description").is_empty());
    check_exec_start(&unit);
    check_cache_dir(&unit);
    assert_eq!(unit.one("Install", "WantedBy"), "multi-user.target");
}

#[test]
fn socket_activated_pair_fits_together() {
    let socket = Unit::read("socket-activated/sydney.socket");
    let service = Unit::read("socket-activated/sydney.service");

    // A TCP stream socket: a port or ADDR:PORT, not a unix path, and no
    // datagram or FIFO listeners, which sydney refuses.
    let listen = socket.one("Socket", "ListenStream");
    let port = listen.rsplit(':').next().unwrap_or(listen);
    assert!(
        !listen.starts_with('/') && !listen.starts_with('@') && port.parse::<u16>().is_ok(),
        "ListenStream={listen} is not a TCP port"
    );
    for key in ["ListenDatagram", "ListenSequentialPacket", "ListenFIFO"] {
        assert!(socket.all("Socket", key).is_empty(), "{key}= is not TCP");
    }
    // One socket per service instance, passed at fd 3 (not Accept=yes,
    // which starts a service per connection with no LISTEN_FDS).
    assert!(
        socket
            .all("Socket", "Accept")
            .iter()
            .all(|a| matches!(*a, "no" | "false")),
        "Accept=yes starts one server per connection"
    );
    assert_eq!(socket.one("Install", "WantedBy"), "sockets.target");

    // systemd pairs foo.socket with foo.service unless Service= says
    // otherwise; both files are named sydney.
    assert!(socket.all("Socket", "Service").is_empty());
    assert_eq!(service.one("Unit", "Requires"), "sydney.socket");
    assert_eq!(service.one("Unit", "After"), "sydney.socket");
    check_exec_start(&service);
    check_cache_dir(&service);
    assert_eq!(service.one("Install", "Also"), "sydney.socket");
}
