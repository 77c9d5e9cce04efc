//! Real processes: commands run to completion with their output kept for
//! failure messages, servers waited for on their `listening on` line,
//! signals, namespaces, clean-ups at exit, and bounded waits.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::http_get;
use crate::sandbox::{require_program, require_root};

/// Runs a command to completion; on a failed expectation, prints
/// everything needed to understand it.
#[derive(Debug)]
pub struct Ran {
    /// The command line.
    pub line: String,
    /// What it produced.
    pub output: Output,
}

impl Ran {
    /// Stdout as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.output
            .status
            .code()
            .unwrap_or_else(|| panic!("{self}\nkilled by a signal"))
    }

    /// Asserts the exit code and returns self.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.output.status.code(), Some(code), "{self}");
        self
    }

    /// Asserts success.
    #[track_caller]
    pub fn expect_success(&self) -> &Self {
        self.expect_code(0)
    }

    /// Asserts stderr contains `needle`.
    #[track_caller]
    pub fn expect_stderr(&self, needle: &str) -> &Self {
        assert!(
            self.stderr().contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// Asserts stdout contains `needle`.
    #[track_caller]
    pub fn expect_stdout(&self, needle: &str) -> &Self {
        assert!(
            self.stdout().contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }

    /// Asserts an error is exactly one line on stderr (notes aside), with no
    /// panic or backtrace.
    #[track_caller]
    pub fn expect_one_line_error(&self) -> &Self {
        let stderr = self.stderr();
        let errors: Vec<&str> = stderr.lines().filter(|l| !l.contains(": note: ")).collect();
        assert_eq!(errors.len(), 1, "expected one error line\n{self}");
        assert!(!stderr.contains("panicked"), "{self}");
        self
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.line,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
}

/// The command line of `command`, for messages.
pub fn describe(command: &Command) -> String {
    let mut line = String::new();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            let _ = write!(
                line,
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            );
        }
    }
    line.push_str(&command.get_program().to_string_lossy());
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Spawns `command`, retrying while the kernel says "text file busy".
///
/// The tests write executables (bundles, scripts) and run them at once,
/// from many threads. Another thread's child, between its fork and its
/// exec, may still hold a copy of the descriptor a file was written through
/// (O_CLOEXEC closes it only at exec), and exec'ing the file then fails
/// with ETXTBSY. The window is that short, so waiting a little suffices.
pub fn spawn(command: &mut Command) -> std::io::Result<Child> {
    const TEXT_FILE_BUSY: i32 = 26;
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(err) if err.raw_os_error() == Some(TEXT_FILE_BUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// Runs `command` with a timeout (default 60 s) and captures its output.
pub fn run(command: &mut Command) -> Ran {
    run_timeout(command, Duration::from_secs(60))
}

/// Runs `command`, killing it after `timeout`.
pub fn run_timeout(command: &mut Command, timeout: Duration) -> Ran {
    let line = describe(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(command).unwrap_or_else(|err| panic!("cannot run {line}: {err}"));
    let (stdout, stdout_done) = drain(child.stdout.take().unwrap());
    let (stderr, stderr_done) = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{line} did not finish within {timeout:?}\nstderr so far:\n{}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // All the output: the readers reach end of file once every copy of the
    // pipes is closed. A grandchild that keeps one open (and is not ours to
    // wait for) gets a bounded wait, then we take what has arrived.
    for done in [stdout_done, stderr_done] {
        let _ = done.recv_timeout(Duration::from_secs(10));
    }
    let output = Output {
        status,
        stdout: stdout.lock().unwrap().clone(),
        stderr: stderr.lock().unwrap().clone(),
    };
    Ran { line, output }
}

/// Reads `reader` to its end on a thread: the bytes so far, and a channel
/// that is signalled (or dropped) at end of file.
fn drain(mut reader: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, mpsc::Receiver<()>) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
        let _ = done.send(());
    });
    (buffer, finished)
}

/// A running server process, killed (process group included) on drop.
#[derive(Debug)]
pub struct Server {
    /// The child.
    pub child: Child,
    /// Where it listens (from its `listening on` line).
    pub addr: SocketAddr,
    /// The command line.
    pub line: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Spawns `command` and waits (up to `timeout`) for the server's
    /// `listening on ADDR` line on stderr.
    pub fn start(command: &mut Command, timeout: Duration) -> Server {
        Self::try_start(command, timeout).unwrap_or_else(|message| panic!("{message}"))
    }

    /// Like [`Server::start`], returning the failure instead of panicking.
    pub fn try_start(command: &mut Command, timeout: Duration) -> Result<Server, String> {
        use std::os::unix::process::CommandExt;
        let line = describe(command);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = spawn(command).map_err(|err| format!("cannot run {line}: {err}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let reader = BufReader::new(child.stderr.take().unwrap());
        let log = stderr.clone();
        std::thread::spawn(move || {
            for text in reader.lines().map_while(Result::ok) {
                if let Some(addr) = text.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&text);
                log.push('\n');
            }
            let _ = done.send(());
        });
        match rx.recv_timeout(timeout) {
            Ok(addr) => {
                let mut addr: SocketAddr =
                    addr.parse().map_err(|_| format!("bad address {addr}"))?;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                Ok(Server {
                    child,
                    addr,
                    line,
                    stderr,
                })
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // The rest of its stderr, for the message (bounded: a
                // grandchild may hold the pipe).
                let _ = finished.recv_timeout(Duration::from_secs(5));
                Err(format!(
                    "{line} did not report `listening on` within {timeout:?} (status {status:?})\n\
                     --- stderr ---\n{}",
                    stderr.lock().unwrap()
                ))
            }
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// GET `path`: `(status, body)`.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
            .unwrap_or_else(|err| panic!("GET {path} on {}: {err}\n{}", self.line, self.stderr()))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        kill(self.child.id() as i32, signal);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The whole process group: unshare and its children go too.
        kill(-(self.child.id() as i32), 9);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cleanup` when the test binary exits, for what is built once and
/// shared by several tests (the Docker image, the mix release), so that a
/// run leaves nothing behind. libtest returns from `main` or calls
/// `process::exit` after the last test; both run `atexit` handlers. A
/// panicking cleanup is reported and the others still run.
pub fn at_exit(cleanup: impl FnOnce() + Send + 'static) {
    type Cleanup = Box<dyn FnOnce() + Send>;
    static CLEANUPS: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn run_cleanups() {
        let cleanups = std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()));
        for cleanup in cleanups.into_iter().rev() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(cleanup)).is_err() {
                eprintln!("e2e: a cleanup at exit failed; see the panic above");
            }
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: `run_cleanups` is an `extern "C"` function with no
        // arguments that never unwinds (panics are caught above); atexit
        // only stores the pointer.
        let registered = unsafe { libc::atexit(run_cleanups) };
        assert_eq!(registered, 0, "atexit failed");
    });
    CLEANUPS.lock().unwrap().push(Box::new(cleanup));
}

/// `kill(pid, signal)`, ignoring errors.
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// SIGTERM.
pub const SIGTERM: i32 = 15;
/// SIGKILL.
pub const SIGKILL: i32 = 9;
/// SIGSTOP.
pub const SIGSTOP: i32 = 19;
/// SIGINT.
pub const SIGINT: i32 = 2;

/// `unshare --mount --pid --fork` running `script` with the host's sh, in
/// a clean environment: mounts stay private to the namespace, and every
/// process in it dies with it (`--kill-child`) when the test ends.
pub fn in_namespace(script: &str) -> Command {
    unshare(&[], script)
}

/// Like [`in_namespace`], with the namespace's own `/proc`
/// (`--mount-proc`): it shows only the namespace's processes.
pub fn in_namespace_with_proc(script: &str) -> Command {
    unshare(&["--mount-proc"], script)
}

fn unshare(extra: &[&str], script: &str) -> Command {
    require_root();
    require_program("unshare", "util-linux");
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--pid", "--fork", "--kill-child"])
        .args(extra)
        .args(["--propagation", "private"])
        .args(["sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    command
}

/// Waits until `check` holds (or panics after `timeout` with `what`).
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn spawn_waits_out_a_busy_executable() {
        let dir = std::env::temp_dir().join(format!("sydney-harness-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("busy");
        // Still open for writing: exec fails with ETXTBSY until it is closed.
        let mut writer = fs::File::create(&script).unwrap();
        writer.write_all(b"#!/bin/sh\nexit 7\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(writer);
        });
        let status = spawn(&mut Command::new(&script)).unwrap().wait().unwrap();
        closer.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(status.code(), Some(7));
    }
}
