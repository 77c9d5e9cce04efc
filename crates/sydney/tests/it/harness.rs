//! Runs the real `sydney` binary and speaks raw HTTP/1.1 to it.
//!
//! Every failure message carries the command line, the environment given to
//! the child and everything it printed, so a red test explains itself.
//!
//! Tests wait on what the server shows, never on time passing: its
//! `listening on` line, other log lines ([`Server::wait_for_line`]), the
//! kernel's view of a connection ([`Conn::wait_until_read`]), and the
//! signal handlers it has installed ([`Server::signal`] checks them).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait in these tests may take before it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A `sydney` command line with a clean environment.
#[derive(Debug, Clone, Default)]
pub struct Sydney {
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    passed: Option<Passed>,
}

/// Descriptors handed to the child from fd 3 on, as systemd's socket
/// activation does.
#[derive(Debug, Clone)]
struct Passed {
    fds: Vec<Arc<OwnedFd>>,
    listen_pid: ListenPid,
}

/// The most descriptors a test can pass.
const MAX_PASSED: usize = 8;

/// What `LISTEN_PID` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenPid {
    /// The child's own pid, as systemd sets it.
    Child,
    /// This value (another process's pid, or something malformed).
    Value(String),
}

/// The wrapper that sets `LISTEN_PID` to the pid the server will have: a
/// shell's `$$` survives its `exec`. (`pre_exec` cannot do it: the child's
/// environment is fixed before fork.)
const SET_LISTEN_PID: &str = "export LISTEN_PID=$$; exec \"$0\" \"$@\"";

impl Sydney {
    /// No arguments, empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// The usual test server: loopback, a free port.
    pub fn loopback() -> Self {
        Self::new().args(["--bind", "127.0.0.1", "--port", "0"])
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child (the rest is cleared).
    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Passes `fd` to the server at fd 3 with `LISTEN_FDS=1` (unless the
    /// test sets it itself) and `LISTEN_PID`, exactly as systemd's socket
    /// activation does.
    pub fn pass_fd(self, fd: impl Into<OwnedFd>, listen_pid: ListenPid) -> Self {
        self.pass_fds(vec![fd.into()], listen_pid)
    }

    /// Passes `fds` at fd 3, 4, ... with `LISTEN_FDS` set to their number.
    pub fn pass_fds(mut self, fds: Vec<OwnedFd>, listen_pid: ListenPid) -> Self {
        assert!(fds.len() <= MAX_PASSED, "at most {MAX_PASSED} descriptors");
        self.passed = Some(Passed {
            fds: fds.into_iter().map(Arc::new).collect(),
            listen_pid,
        });
        self
    }

    fn command(&self) -> Command {
        let sydney = env!("CARGO_BIN_EXE_sydney");
        let mut cmd = match &self.passed {
            Some(Passed {
                listen_pid: ListenPid::Child,
                ..
            }) => {
                let mut cmd = Command::new("/bin/sh");
                cmd.args(["-c", SET_LISTEN_PID, sydney]);
                cmd
            }
            _ => Command::new(sydney),
        };
        // A clean environment: the developer's PORT, RUST_LOG or
        // RUST_BACKTRACE must not change what the tests see.
        cmd.env_clear().args(&self.args);
        if let Some(passed) = &self.passed {
            cmd.env("LISTEN_FDS", passed.fds.len().to_string());
            if let ListenPid::Value(pid) = &passed.listen_pid {
                cmd.env("LISTEN_PID", pid);
            }
            let count = passed.fds.len();
            let mut fds = [-1; MAX_PASSED];
            for (slot, fd) in fds.iter_mut().zip(&passed.fds) {
                *slot = fd.as_raw_fd();
            }
            // SAFETY: the closure only makes async-signal-safe system calls
            // (fcntl, dup2) on descriptors the parent keeps open (`Passed`
            // holds them until `command` has spawned), and allocates
            // nothing (its arrays live on its stack).
            unsafe {
                cmd.pre_exec(move || {
                    // Copy each out of the way first (close-on-exec, at 100
                    // and up), so that placing one at 3 + i cannot overwrite
                    // another still to be placed; dup2 then leaves each
                    // final copy inheritable.
                    let mut high = [-1; MAX_PASSED];
                    for i in 0..count {
                        high[i] = libc::fcntl(fds[i], libc::F_DUPFD_CLOEXEC, 100);
                        if high[i] < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for (i, &fd) in high.iter().enumerate().take(count) {
                        if libc::dup2(fd, 3 + i as libc::c_int) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd.envs(self.env.iter().cloned());
        cmd
    }

    /// The command line, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(passed) = &self.passed {
            for (i, fd) in passed.fds.iter().enumerate() {
                let _ = write!(out, "[fd {}: {fd:?}] ", 3 + i);
            }
            let _ = write!(out, "LISTEN_FDS={} ", passed.fds.len());
            match &passed.listen_pid {
                ListenPid::Child => out.push_str("LISTEN_PID=<its own pid> "),
                ListenPid::Value(pid) => {
                    let _ = write!(out, "LISTEN_PID={pid} ");
                }
            }
        }
        for (name, value) in &self.env {
            let _ = write!(out, "{name}={} ", value.to_string_lossy());
        }
        out.push_str(env!("CARGO_BIN_EXE_sydney"));
        for arg in &self.args {
            let _ = write!(out, " {}", arg.to_string_lossy());
        }
        out
    }

    /// Starts the server and waits for its `listening on ADDR` line.
    pub fn spawn(self) -> Server {
        let mut server = self.start();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        let addr = addr.trim().parse().unwrap_or_else(|err| {
                            server.fail(&format!("cannot parse address {addr:?}: {err}"))
                        });
                        server.addr = Some(addr);
                        return server;
                    }
                }
                Err(_) => server.fail("no `listening on` line"),
            }
        }
    }

    /// Starts the server without waiting for anything.
    pub fn start(self) -> Server {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run `{}`: {err}", self.describe()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines, reader) = read_lines(child.stderr.take().expect("stderr is piped"), &stderr);
        Server {
            child,
            cmd: self,
            stderr,
            lines,
            reader: Some(reader),
            addr: None,
        }
    }

    /// Runs the binary to completion (it is expected to exit by itself).
    pub fn run(self) -> Finished {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run `{}`: {err}", self.describe()));
        let stdout = collect(child.stdout.take().expect("stdout is piped"));
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        let status = wait_with_timeout(&mut child, PATIENCE);
        let finished = Finished {
            cmd: self.describe(),
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        };
        if status.is_none() {
            panic!("did not exit within {PATIENCE:?}\n{finished}");
        }
        finished
    }
}

/// A process that has exited (or was killed after [`PATIENCE`]).
#[derive(Debug)]
pub struct Finished {
    /// The command line.
    pub cmd: String,
    /// `None` if it had to be killed.
    pub status: Option<ExitStatus>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Finished {
    /// The exit code; fails if the process was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status
            .and_then(|status| status.code())
            .unwrap_or_else(|| panic!("no exit code\n{self}"))
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {:?}\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }
}

/// A running server; killed on drop if a test did not stop it.
#[derive(Debug)]
pub struct Server {
    child: Child,
    cmd: Sydney,
    stderr: Arc<Mutex<String>>,
    lines: Receiver<String>,
    /// The thread reading stderr; joined once the process has exited, so
    /// that [`Server::stderr`] is then complete.
    reader: Option<thread::JoinHandle<()>>,
    addr: Option<SocketAddr>,
}

impl Server {
    /// The address from the `listening on` line.
    pub fn bound(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| self.fail("no address: started without waiting for it"))
    }

    /// Where to connect: the bound address, with a wildcard replaced by
    /// loopback.
    pub fn addr(&self) -> SocketAddr {
        let mut addr = self.bound();
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
            _ => {}
        }
        addr
    }

    /// Opens a connection.
    pub fn connect(&self) -> Conn {
        Conn::open(self.addr()).unwrap_or_else(|err| self.fail(&format!("cannot connect: {err}")))
    }

    /// One request on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        let mut conn = self.connect();
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        conn.response(false)
            .unwrap_or_else(|err| self.fail(&format!("GET {path}: {err}")))
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`). For SIGTERM and SIGINT it
    /// first asserts that the server has installed its handler, so a test
    /// can never mistake the kernel's default action (death by signal) for
    /// the server's behaviour, or race the server's start-up.
    pub fn signal(&self, signal: libc::c_int) {
        if signal == libc::SIGTERM || signal == libc::SIGINT {
            let caught = self.caught_signals();
            if caught & (1 << (signal - 1)) == 0 {
                self.fail(&format!(
                    "signal {signal} would be sent before the server handles it \
                     (SigCgt {caught:#x})"
                ));
            }
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions. The child has
        // not been reaped yet (that only happens in `wait`/drop), so its pid
        // cannot have been reused by another process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            self.fail(&format!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }

    /// The signals the process has handlers for (`SigCgt` in
    /// /proc/PID/status; bit N-1 is signal N).
    pub fn caught_signals(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_else(|err| self.fail(&format!("cannot read /proc/PID/status: {err}")));
        status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or_else(|| self.fail("no SigCgt line in /proc/PID/status"))
    }

    /// Waits for a stderr line containing `text` (lines the server printed
    /// before, and that an earlier wait consumed, do not count) and
    /// returns it.
    pub fn wait_for_line(&self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => self.fail(&format!("no stderr line containing {text:?}")),
            }
        }
    }

    /// Waits for the process to exit; fails after `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        match wait_with_timeout(&mut self.child, within) {
            Some(status) => {
                // The pipe is at its end: let the reader take everything.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                status
            }
            None => self.fail(&format!("did not exit within {within:?}")),
        }
    }

    /// Everything the server printed on stderr so far (all of it, once
    /// [`Server::wait`] has returned).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Fails the test with the command line and the server's stderr.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\ncommand: {}\n--- server stderr ---\n{}--- end ---",
            self.cmd.describe(),
            self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client connection speaking raw HTTP/1.1.
#[derive(Debug)]
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Connects, with timeouts so a broken server fails the test instead of
    /// hanging it.
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_write_timeout(Some(PATIENCE))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// Waits until the server has read everything sent on this connection
    /// so far, as the kernel sees it: the client's send queue is empty (the
    /// server's kernel acknowledged every byte) and the server's receive
    /// queue is empty (its process read them). IPv4 only.
    pub fn wait_until_read(&self) {
        let stream = self.stream.get_ref();
        let here = stream.local_addr().expect("local addr");
        let there = stream.peer_addr().expect("peer addr");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let client = tcp_queues(here, there);
            let server = tcp_queues(there, here);
            if let (Some((0, _)), Some((_, 0))) = (client, server) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not read what was sent within {PATIENCE:?} \
                 (client tx/rx queues {client:?}, server {server:?})"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).expect("write to server");
        stream.flush().expect("flush to server");
    }

    /// Reads one response; `head` says it answers a HEAD request, so it has
    /// no body whatever its content-length says.
    pub fn response(&mut self, head: bool) -> Result<Response, String> {
        let mut status_line = String::new();
        self.stream
            .read_line(&mut status_line)
            .map_err(|err| format!("reading status line: {err}"))?;
        if status_line.is_empty() {
            return Err("connection closed before a response".into());
        }
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.stream
                .read_line(&mut line)
                .map_err(|err| format!("reading headers: {err}"))?;
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if !head {
            let len: usize = response
                .header("content-length")
                .ok_or("no content-length")?
                .parse()
                .map_err(|err| format!("bad content-length: {err}"))?;
            response.body = vec![0; len];
            self.stream
                .read_exact(&mut response.body)
                .map_err(|err| format!("reading body: {err}"))?;
        }
        Ok(response)
    }

    /// Whether the server has closed the connection (reads EOF or a reset)
    /// with nothing more to say.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    /// Reads everything until the server closes the connection.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.stream.read_to_end(&mut out);
        out
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The transmit and receive queue lengths of the IPv4 TCP socket from
/// `local` to `remote`, from /proc/net/tcp.
fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |addr: SocketAddr| match addr {
        // /proc/net/tcp prints the address as a native-endian u32.
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("wait_until_read supports IPv4 only, not {addr}"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (tx, rx) = fields.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// A port that was free a moment ago on `ip`.
pub fn free_port(ip: &str) -> u16 {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dir");
    }
    std::fs::write(&path, text).expect("write file");
    path
}

/// Asserts that stderr holds exactly one line, an error with no panic or
/// backtrace, and returns it.
pub fn one_error_line(finished: &Finished) -> &str {
    let stderr = finished.stderr.as_str();
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains("backtrace")
            && !stderr.contains("RUST_BACKTRACE"),
        "panic or backtrace on stderr\n{finished}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one stderr line\n{finished}"
    );
    assert!(
        lines[0].starts_with("sydney: error: "),
        "not an error line\n{finished}"
    );
    lines[0]
}

fn read_lines(
    stderr: impl Read + Send + 'static,
    log: &Arc<Mutex<String>>,
) -> (Receiver<String>, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let log = Arc::clone(log);
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    (rx, reader)
}

fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

fn wait_with_timeout(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
