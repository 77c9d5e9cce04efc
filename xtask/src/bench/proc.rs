//! Processes the bench starts: spawned cheaply (std uses posix_spawn here,
//! also with a process group and a working directory), timed, and always
//! killed and reaped, also when a measurement fails.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::tools;
use crate::util;

// The one libc call std does not wrap: signalling a whole process group.
// std links libc already.
unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
}

/// `prctl` option: the calling thread's timer slack, in ns.
const PR_SET_TIMERSLACK: i32 = 29;

const SIGKILL: i32 = 9;

/// How often a start-up is polled. A start-up answers from about 0.35 ms on
/// this kind of machine, so a coarser step (0.25 ms was used before) rounds
/// the fast variants to whole steps and makes their ratios jump. Polling
/// faster than this starts to take CPU from what is measured (2 cores).
pub const POLL: Duration = Duration::from_micros(50);

/// A process that leads its own process group. Dropping it kills the whole
/// group with SIGKILL and reaps the leader, so no measured process outlives
/// its measurement (a shell's children included).
#[derive(Debug)]
pub struct Group {
    child: Child,
}

impl Group {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> Result<Group> {
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", util::describe(command)))?;
        Ok(Group { child })
    }

    /// The leader's exit status, if it has exited (its group may live on).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) only takes integers. A negative pid names the
        // process group; this child leads it (process_group(0) above) and
        // stays unreaped until the wait below, so the id cannot be reused.
        unsafe {
            kill(-pid, SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A command that ran to its end.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// From just before spawn to its exit.
    pub elapsed: Duration,
    /// Peak resident set of the program and the children it waited for.
    pub max_rss_kib: u64,
}

/// Runs `command` to its end under GNU time (`time -f %M`), timed from
/// spawn to exit, and fails with its stderr unless it exits 0. `scratch`
/// receives time's report and the program's stderr.
///
/// Why GNU time and not wait4 here: a process spawned straight from this
/// (much larger) one is charged this one's peak RSS when it execs, since
/// Linux records the old address space's high-water mark at exec. GNU time
/// is small, so the figure it reports is the program's own, give or take
/// time's 2 MiB.
pub fn measure_ok(command: &Command, scratch: &Path) -> Result<Finished> {
    let line = util::describe(command);
    let rss_file = scratch.join("peak-rss");
    let log = scratch.join("stderr");
    let mut wrapped = Command::new(tools::path("time")?);
    wrapped
        .args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    wrapped
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log)?);
    let start = Instant::now();
    let status = wrapped
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    let elapsed = start.elapsed();
    if !status.success() {
        let stderr = fs::read_to_string(&log).unwrap_or_default();
        bail!("`{line}` failed ({status}): {}", tail(&stderr));
    }
    let report = fs::read_to_string(&rss_file)?;
    let max_rss_kib = report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("unexpected GNU time report {report:?}"))?;
    Ok(Finished {
        elapsed,
        max_rss_kib,
    })
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// One `GET /` on 127.0.0.1:`port`: `Ok(true)` for `200` with body `Ok`,
/// `Ok(false)` for any other complete answer, `Err` if none came.
pub fn get_ok(port: u16) -> io::Result<bool> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(verdict) = verdict(&answer) {
            return Ok(verdict);
        }
        match stream.read(&mut chunk)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `Some(true)` once `answer` holds a 200 with body `Ok`, `Some(false)` for
/// another complete answer, `None` while incomplete.
fn verdict(answer: &[u8]) -> Option<bool> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if !answer.starts_with(b"HTTP/1.1 200 ") {
        return Some(false);
    }
    let body = &answer[end..];
    if body.len() < 2 {
        return None;
    }
    Some(body == b"Ok")
}

/// Polls `GET /` every [`POLL`] until a `200 Ok`, and returns the time since
/// `start`. Fails when the group's leader exits first, on another answer,
/// or after `timeout`.
pub fn wait_for_ok(
    group: &mut Group,
    port: u16,
    start: Instant,
    timeout: Duration,
) -> Result<Duration> {
    exact_sleeps();
    loop {
        match get_ok(port) {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => bail!("port {port} answered, but not `200 Ok`"),
            Err(err) => {
                if let Some(status) = group.exited() {
                    bail!("it exited ({status}) before answering on port {port}");
                }
                if start.elapsed() > timeout {
                    bail!(
                        "no `200 Ok` on port {port} within {} s (last: {err})",
                        timeout.as_secs()
                    );
                }
                thread::sleep(POLL);
            }
        }
    }
}

/// Makes this thread's sleeps end on time: by default Linux may let a sleep
/// run 50 µs long (timer slack), which would double [`POLL`].
fn exact_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // this thread's timer slack; no memory is passed.
    unsafe { prctl(PR_SET_TIMERSLACK, 1 as std::ffi::c_ulong) };
}

/// The last few lines of a program's output, for error messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(6);
    lines[start..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn reads_answers() {
        assert_eq!(verdict(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"), None);
        assert_eq!(verdict(b"HTTP/1.1 200 OK\r\n\r\nO"), None);
        assert_eq!(verdict(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nOk"), Some(true));
        assert_eq!(
            verdict(b"HTTP/1.1 404 Not Found\r\n\r\nPage not found"),
            Some(false)
        );
        assert_eq!(verdict(b"HTTP/1.1 200 OK\r\n\r\nNo"), Some(false));
    }
}
