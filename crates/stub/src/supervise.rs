//! The resident supervisor behind `daemon` when the bundle declares
//! listening sockets (`SYDNEY_BUNDLE_LISTEN`, packed with `--listen`), and
//! the handover that `upgrade`, `rollback` and `restart` ask it for.
//!
//! The supervisor is the stub itself, forked by `daemon`: it binds nothing
//! (the `daemon` command bound the sockets, so a port in use is reported
//! there), holds the sockets and the instance lock, and runs the server as
//! its child with the systemd protocol: the sockets as fds 3, 4, ...,
//! `LISTEN_FDS`, `LISTEN_PID` (the child's own pid, written by the child
//! after the fork) and `NOTIFY_SOCKET`. A child is `<bundle file> start --
//! <args>`: that stub verifies and extracts as usual and execs the entry in
//! the same process, so `LISTEN_PID` stays true.
//!
//! A handover starts the new child on the same sockets and waits for its
//! `READY=1` on a notify socket of its own (a health check could be
//! answered by the old server, which accepts on the same socket). A child
//! that exits first, or the timeout, is a failure: the new child is stopped
//! and the old one keeps serving. Once it is ready the pidfile names the
//! new server, and the old one gets SIGTERM and drains (SIGKILL after
//! [`DRAIN`]). Servers get SIGTERM if the supervisor dies
//! (`PR_SET_PDEATHSIG`), so a `kill -9` of the supervisor leaves nothing on
//! the port once they have drained.
//!
//! The state directory holds `supervisor` (its pid record), `control` (the
//! socket `upgrade` talks to; only the owner can reach it, and the peer's
//! uid is checked) and `notify.N` while a child starts. See
//! docs/decisions/0090-supervisor-and-handover.md.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bundle_format::Bundle;

use crate::exit::{Exit, coded, exit_for};
use crate::lifecycle::{PidRecord, StateDir, proc_stat};
use crate::sys::{self, Forked};

/// The variable (or packed environment default) that declares the sockets.
pub const LISTEN_VAR: &str = "SYDNEY_BUNDLE_LISTEN";

/// How long an old server may drain after SIGTERM before SIGKILL.
pub const DRAIN: Duration = Duration::from_secs(30);

/// How long a new server may take to report ready, by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The supervisor keeps its descriptors at or above this, out of the way
/// of the fds 3, 4, ... it gives a child.
const HIGH_FD: RawFd = 64;

/// What `daemon` hands the supervisor.
#[derive(Debug)]
pub struct Plan {
    /// The bundle file a child runs (`<file> start -- args`).
    pub bundle_path: PathBuf,
    /// The user's arguments for the entry.
    pub args: Vec<String>,
    /// The sockets, bound by `daemon`.
    pub listeners: Vec<TcpListener>,
}

/// What `daemon` already holds: passed on so the supervisor keeps the
/// instance lock and drops the registration lock.
#[derive(Debug)]
pub struct Held {
    /// The registration lock (released once the fork is done).
    pub registering: Option<File>,
    /// The instance lock.
    pub lock: File,
    /// The log file.
    pub log: File,
    /// Standard input for the daemon.
    pub stdin: File,
}

/// The declared sockets: `SYDNEY_BUNDLE_LISTEN` from the environment, else
/// what `pack --listen` stored (the manifest's build fact `listen`). `None` (no supervisor) when unset or empty.
pub fn listen_spec(bundle: &Bundle<'_>) -> Option<String> {
    let spec = match std::env::var(LISTEN_VAR) {
        Ok(spec) => spec,
        Err(_) => bundle.manifest().build_value("listen")?.to_owned(),
    };
    Some(spec).filter(|spec| !spec.trim().is_empty())
}

/// Binds every socket of `spec`: comma-separated `tcp:[ADDRESS:]PORT`,
/// where PORT may be `$PORT` (the `PORT` variable, default 8080) and the
/// address defaults to 0.0.0.0; `reuseport` binds nothing (the servers bind
/// with SO_REUSEPORT).
pub fn bind(spec: &str) -> Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for item in spec.split(',').map(str::trim) {
        // The server binds the port itself with SO_REUSEPORT; the
        // supervisor holds no socket (docs/UPGRADES.md).
        if item == "reuseport" {
            continue;
        }
        let bad = |why: &str| {
            coded(
                Exit::Usage,
                format!(
                    "{LISTEN_VAR}={spec}: {item:?} {why}; expected tcp:[ADDRESS:]PORT, \
                     e.g. tcp:8080 or tcp:127.0.0.1:$PORT"
                ),
            )
        };
        let address = item
            .strip_prefix("tcp:")
            .ok_or_else(|| bad("is not a tcp: socket"))?;
        let (host, port) = address.rsplit_once(':').unwrap_or(("", address));
        let port = match port {
            "$PORT" => std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned()),
            port => port.to_owned(),
        };
        let port: u16 = port.parse().map_err(|_| bad("has no valid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = match host {
            "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            host => host.parse().map_err(|_| bad("has no valid IP address"))?,
        };
        let listener = TcpListener::bind((ip, port)).map_err(|err| {
            anyhow::Error::new(err).context(format!(
                "cannot listen on {item} ({LISTEN_VAR}); stop whatever uses the port, \
                 or set {LISTEN_VAR} to another"
            ))
        })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// `daemon` with a supervisor: forks it (detached) and returns the first
/// server's pid once that server reported ready.
pub fn daemon(state: &StateDir, name: &str, plan: Plan, mut held: Held) -> Result<i32> {
    let (mut report_reader, report_writer) = io::pipe().context("cannot create a pipe")?;
    // SAFETY: single-threaded here (see init.rs); the first child only
    // forks again and exits; the supervisor is a full process of its own.
    match unsafe { sys::fork() }.context("cannot fork")? {
        Forked::Child => {
            drop(report_reader);
            drop(held.registering.take());
            let _ = sys::setsid();
            // SAFETY: as above.
            match unsafe { sys::fork() } {
                Ok(Forked::Child) => {
                    let code = supervise(state, name, plan, held, report_writer);
                    sys::exit_now(code)
                }
                Ok(Forked::Parent(_)) => sys::exit_now(0),
                Err(_) => sys::exit_now(1),
            }
        }
        Forked::Parent(first) => {
            drop(report_writer);
            sys::wait_pid(first);
            // The supervisor closes its end once the first server is ready
            // (or has failed).
            let mut report = Vec::new();
            let _ = report_reader.read_to_end(&mut report);
            decode_report(&report).unwrap_or_else(|| {
                Err(anyhow::anyhow!(
                    "the supervisor of {name} ended before the server started; see the log {}",
                    state.log_path().display()
                ))
            })
        }
    }
}

/// A report (to `daemon`) or a control reply (to `upgrade`): a zero byte
/// and the server's pid (4 bytes, little-endian), or an exit code and the
/// message. The same encoding both ways keeps the stub smaller.
fn encode_report(result: &Result<i32>) -> Vec<u8> {
    match result {
        Ok(pid) => [&[0u8][..], &pid.to_le_bytes()].concat(),
        Err(err) => {
            let mut bytes = vec![exit_for(err).code().max(1)];
            bytes.extend_from_slice(format!("{err:#}").as_bytes());
            bytes
        }
    }
}

/// The pid or the error a report carries; `None` when it is empty (the
/// other side ended without one).
fn decode_report(report: &[u8]) -> Option<Result<i32>> {
    Some(match report.split_first()? {
        (0, pid) if pid.len() == 4 => Ok(i32::from_le_bytes([pid[0], pid[1], pid[2], pid[3]])),
        (&code, message) => Err(coded(
            exit_from_code(code),
            String::from_utf8_lossy(message).into_owned(),
        )),
    })
}

/// The exit code a report carries.
pub fn exit_from_code(code: u8) -> Exit {
    Exit::TABLE
        .iter()
        .map(|(e, _)| *e)
        .find(|e| e.code() == code)
        .unwrap_or(Exit::Failure)
}

/// The supervisor process: returns its exit code.
fn supervise(
    state: &StateDir,
    name: &str,
    plan: Plan,
    held: Held,
    mut report: io::PipeWriter,
) -> i32 {
    let bundle_path = plan.bundle_path.clone();
    let started = sys::dup_onto(&held.stdin, 0)
        .and_then(|()| sys::dup_onto(&held.log, 1))
        .and_then(|()| sys::dup_onto(&held.log, 2))
        .map_err(|err| anyhow::Error::new(err).context("cannot set up the daemon"))
        .and_then(|()| Supervisor::new(state, name, plan, &held.lock));
    drop(held);
    let mut supervisor = match started {
        Ok(supervisor) => supervisor,
        Err(err) => {
            let _ = report.write_all(&encode_report(&Err(err)));
            return 1;
        }
    };
    let first = supervisor.handover(&bundle_path, READY_TIMEOUT);
    let _ = report.write_all(&encode_report(&first));
    if let Err(err) = first {
        supervisor.cleanup();
        return i32::from(exit_for(&err).code().max(1));
    }
    drop(report);
    supervisor.run()
}

struct Supervisor<'a> {
    state: &'a StateDir,
    name: &'a str,
    sockets: Vec<OwnedFd>,
    lock: OwnedFd,
    args: Vec<String>,
    signals: File,
    control: UnixListener,
    control_path: PathBuf,
    server: Option<i32>,
    generation: u32,
    stopping: bool,
}

impl<'a> Supervisor<'a> {
    fn new(state: &'a StateDir, name: &'a str, plan: Plan, lock: &File) -> Result<Self> {
        let sockets = plan
            .listeners
            .iter()
            .map(|l| sys::dup_above(l, HIGH_FD))
            .collect::<io::Result<Vec<_>>>()
            .context("cannot keep the listening sockets")?;
        drop(plan.listeners);
        let lock = sys::dup_above(lock, HIGH_FD).context("cannot keep the instance lock")?;
        let signals = sys::signal_fd(&[
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
        ])
        .context("cannot create a signalfd")?;
        let control_path = state.file("control");
        let _ = fs::remove_file(&control_path);
        let control = UnixListener::bind(&control_path)
            .with_context(|| format!("cannot create {}", control_path.display()))?;
        let reserved = state.reserve_record()?;
        let pid = sys::getpid();
        let record = PidRecord {
            pid,
            start_time: proc_stat(pid).map_or(0, |(_, t)| t),
        };
        state.record_as(&reserved, record, &state.file("supervisor"))?;
        Ok(Supervisor {
            state,
            name,
            sockets,
            lock,
            args: plan.args,
            signals,
            control,
            control_path,
            server: None,
            generation: 0,
            stopping: false,
        })
    }

    /// Starts `<bundle> start -- args` on the sockets, waits until it is
    /// ready, records it, then drains the previous server. On failure the
    /// new child is stopped and the previous server stays as it was.
    fn handover(&mut self, bundle: &Path, timeout: Duration) -> Result<i32> {
        self.generation += 1;
        let notify_path = self.state.file(&format!("notify.{}", self.generation));
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .with_context(|| format!("cannot create {}", notify_path.display()))?;
        let _remove = RemoveOnDrop(notify_path.clone());
        notify.set_nonblocking(true)?;
        let mut argv: Vec<&OsStr> = vec![bundle.as_os_str(), "start".as_ref(), "--".as_ref()];
        argv.extend(self.args.iter().map(OsStr::new));
        let extra = [format!("NOTIFY_SOCKET={}", notify_path.display())];
        let mut spawn = sys::ServerSpawn::new(bundle, &argv, &extra, self.sockets.len())
            .context("cannot prepare the server's command line")?;
        // Before the child starts: on a full disk this is what fails.
        let reserved = self.state.reserve_record()?;
        let sockets: Vec<RawFd> = self.sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let new = spawn
            .spawn(&sockets, Some(self.lock.as_raw_fd()))
            .context("cannot start the server")?;
        let ready = self.wait_ready(new, &notify, timeout).and_then(|()| {
            let record = PidRecord {
                pid: new,
                start_time: proc_stat(new).map_or(0, |(_, t)| t),
            };
            self.state
                .record_as(&reserved, record, &self.state.file("pid"))
        });
        if let Err(err) = ready {
            self.end(new, Duration::from_secs(5));
            return Err(err);
        }
        eprintln!(
            "{}: supervisor: server pid {new} ({}) is ready",
            self.name,
            bundle.display()
        );
        if let Some(old) = self.server.replace(new) {
            self.end(old, DRAIN);
        }
        Ok(new)
    }

    /// Waits for `READY=1` from `child`; its exit, a stop request or the
    /// timeout is an error.
    fn wait_ready(&mut self, child: i32, notify: &UnixDatagram, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // The first server is `daemon`'s; later ones are handovers.
        let (which, exit) = match self.server {
            Some(_) => ("the new server", Exit::UpgradeFailed),
            None => ("the server", Exit::Failure),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(coded(
                    exit,
                    format!(
                        "{which} (pid {child}) did not report ready within {}s; a server \
                         must send READY=1 to $NOTIFY_SOCKET once it accepts (docs/UPGRADES.md)",
                        timeout.as_secs()
                    ),
                ));
            }
            let wait = left.as_millis().min(1000) as i32;
            let readable =
                sys::poll_readable(&[notify.as_raw_fd(), self.signals.as_raw_fd()], wait);
            if readable & 1 != 0 {
                let mut buf = [0u8; 512];
                while let Ok(n) = notify.recv(&mut buf) {
                    if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") {
                        return Ok(());
                    }
                }
            }
            if readable & 2 != 0 {
                self.take_signals();
                if self.stopping {
                    return Err(anyhow::anyhow!(
                        "{} is being stopped; the new server was not kept",
                        self.name
                    ));
                }
                if let Some(how) = sys::reap_now(child) {
                    return Err(coded(
                        exit,
                        format!(
                            "{which} (pid {child}) exited with status {} before it was \
                             ready; see the log {}",
                            how.status(),
                            self.state.log_path().display()
                        ),
                    ));
                }
                self.reap_current();
            }
        }
    }

    /// Reads pending signals: any but SIGCHLD means stop.
    fn take_signals(&mut self) {
        while let Some(signal) = sys::read_signal(&self.signals) {
            if signal != libc::SIGCHLD {
                self.stopping = true;
            }
        }
    }

    /// Notices that the current server has ended.
    fn reap_current(&mut self) {
        if let Some(pid) = self.server {
            if let Some(how) = sys::reap_now(pid) {
                eprintln!(
                    "{}: supervisor: server pid {pid} exited with status {}",
                    self.name,
                    how.status()
                );
                self.server = None;
            }
        }
    }

    /// SIGTERM to `pid`, SIGKILL after `grace`; returns once it is reaped.
    fn end(&mut self, pid: i32, grace: Duration) {
        let _ = sys::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if sys::reap_now(pid).is_some() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = sys::kill(pid, libc::SIGKILL);
                sys::wait_pid(pid);
                return;
            }
            let wait = left.as_millis().min(200) as i32;
            if sys::poll_readable(&[self.signals.as_raw_fd()], wait) != 0 {
                self.take_signals();
            }
        }
    }

    /// Serves control requests until the server ends; returns the exit code.
    fn run(&mut self) -> i32 {
        let mut forwarded = false;
        while let Some(server) = self.server {
            if self.stopping && !forwarded {
                let _ = sys::kill(server, libc::SIGTERM);
                forwarded = true;
            }
            let readable =
                sys::poll_readable(&[self.signals.as_raw_fd(), self.control.as_raw_fd()], -1);
            if readable & 1 != 0 {
                self.take_signals();
                self.reap_current();
            }
            if readable & 2 != 0 && !self.stopping && self.server.is_some() {
                self.serve_request();
            }
        }
        self.cleanup();
        0
    }

    /// One control request: `timeout NUL path NUL (keep | set NUL args...)`.
    fn serve_request(&mut self) {
        let Ok((mut conn, _)) = self.control.accept() else {
            return;
        };
        // The directory is private; this is the second lock on the door.
        if sys::peer_uid(&conn).ok() != Some(sys::geteuid()) {
            return;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = Vec::new();
        if (&mut conn)
            .take(64 * 1024)
            .read_to_end(&mut request)
            .is_err()
        {
            return;
        }
        let reply = self.handle(&request);
        let _ = conn.write_all(&encode_report(&reply));
    }

    fn handle(&mut self, request: &[u8]) -> Result<i32> {
        let text = std::str::from_utf8(request).context("the request is not UTF-8")?;
        let mut fields = text.split('\0');
        let timeout = fields
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .context("the request has no timeout")?;
        let path = PathBuf::from(fields.next().context("the request names no bundle")?);
        let previous_args = match fields.next() {
            Some("set") => Some(std::mem::replace(
                &mut self.args,
                fields.map(str::to_owned).collect(),
            )),
            _ => None,
        };
        let result = self.handover(&path, Duration::from_secs(timeout));
        if let (Err(_), Some(args)) = (&result, previous_args) {
            self.args = args;
        }
        result
    }

    fn cleanup(&self) {
        let _ = fs::remove_file(&self.control_path);
        let _ = fs::remove_file(self.state.file("supervisor"));
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The running supervisor of this state directory, if there is one (its
/// record names a live process of ours that holds the instance lock).
pub fn running(state: &StateDir) -> Result<Option<PidRecord>> {
    match state.read_record_at(state.file("supervisor"))? {
        Some(Ok(record)) if state.is_ours(record)? => Ok(Some(record)),
        _ => Ok(None),
    }
}

/// Waits (bounded) until the supervisor `record` has exited.
pub fn wait_gone(record: PidRecord, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let gone = !sys::kill(record.pid, 0).unwrap_or(false)
            || proc_stat(record.pid)
                .is_some_and(|(state, start)| state == 'Z' || start != record.start_time);
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks the supervisor to hand over to `bundle` (with `args`, or the
/// current ones); returns the new server's pid.
pub fn request_handover(
    state: &StateDir,
    bundle: &Path,
    timeout: Duration,
    args: Option<&[String]>,
) -> Result<i32> {
    let path = state.file("control");
    let mut conn = UnixStream::connect(&path)
        .with_context(|| format!("cannot reach the supervisor at {}", path.display()))?;
    let mut request = format!("{}\0{}", timeout.as_secs(), bundle.display());
    if let Some(args) = args {
        request.push_str("\0set");
        for arg in args {
            request.push('\0');
            request.push_str(arg);
        }
    }
    conn.write_all(request.as_bytes())
        .and_then(|()| conn.shutdown(std::net::Shutdown::Write))
        .context("cannot send the request to the supervisor")?;
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    decode_report(&reply).unwrap_or_else(|| {
        Err(coded(
            Exit::UpgradeFailed,
            "the supervisor ended during the handover (was it killed?); its servers stop with it",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let ok = encode_report(&Ok(4_194_303));
        assert!(matches!(decode_report(&ok), Some(Ok(4_194_303))));
        let failed = encode_report(&Err(coded(Exit::UpgradeFailed, "not ready")));
        let err = decode_report(&failed).unwrap().unwrap_err();
        assert_eq!(exit_for(&err), Exit::UpgradeFailed);
        assert_eq!(err.to_string(), "not ready");
        // Success is never encoded as code 0 with a message.
        let plain = encode_report(&Err(anyhow::anyhow!("plain")));
        assert_eq!(plain[0], Exit::Failure.code());
        assert!(decode_report(&[]).is_none());
    }

    #[test]
    fn listen_specs_are_checked_before_binding() {
        for bad in [
            "8080",
            "udp:53",
            "tcp:",
            "tcp:host:80",
            "tcp:127.0.0.1:http",
        ] {
            let err = bind(bad).unwrap_err();
            assert_eq!(exit_for(&err), Exit::Usage, "{bad}");
            assert!(
                err.to_string().contains("expected tcp:[ADDRESS:]PORT"),
                "{bad}: {err}"
            );
        }
        assert!(bind("reuseport").unwrap().is_empty());
        let listeners = bind("tcp:127.0.0.1:0, tcp:[::1]:0").unwrap();
        assert_eq!(listeners.len(), 2);
        assert!(listeners[1].local_addr().unwrap().is_ipv6());
    }
}
