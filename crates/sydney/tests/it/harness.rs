//! Runs the real `sydney` binary and speaks raw HTTP/1.1 to it.
//!
//! Every failure message carries the command line, the environment given to
//! the child and everything it printed, so a red test explains itself.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
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
}

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

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sydney"));
        // A clean environment: the developer's PORT, RUST_LOG or
        // RUST_BACKTRACE must not change what the tests see.
        cmd.env_clear()
            .args(&self.args)
            .envs(self.env.iter().cloned());
        cmd
    }

    /// The command line, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
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
        let lines = read_lines(child.stderr.take().expect("stderr is piped"), &stderr);
        Server {
            child,
            cmd: self,
            stderr,
            lines,
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

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: libc::c_int) {
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

    /// Waits for the process to exit; fails after `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        match wait_with_timeout(&mut self.child, within) {
            Some(status) => status,
            None => self.fail(&format!("did not exit within {within:?}")),
        }
    }

    /// Everything the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        // Give the reader thread a moment to catch up with what was printed.
        thread::sleep(Duration::from_millis(50));
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

fn read_lines(stderr: impl Read + Send + 'static, log: &Arc<Mutex<String>>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let log = Arc::clone(log);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    rx
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
