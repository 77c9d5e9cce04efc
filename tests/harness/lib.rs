//! The end-to-end test harness: the real static bundle, real processes,
//! real HTTP on loopback, real chroots and containers.
//!
//! Artifacts come from `cargo xtask test` (environment variables
//! `SYDNEY_TEST_*`) or, failing that, from where `cargo xtask bundle` puts
//! them. A missing artifact fails the test with instructions; nothing is
//! skipped.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use bundle_format;
use bundle_format::Codec;
use bundle_format::pack::{PackOptions, PackReport, pack_to_path};

/// Paths of the real artifacts under test.
#[derive(Debug)]
pub struct Artifacts {
    /// `target/bundle/sydney-bundle`.
    pub bundle: PathBuf,
    /// The release folder packed into it.
    pub release: PathBuf,
    /// The static server.
    pub server: PathBuf,
    /// The gzip-only stub.
    pub stub_gzip: PathBuf,
    /// The zstd-only stub.
    pub stub_zstd: PathBuf,
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The artifacts, checked to exist (once per test binary).
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let bundle_dir = root().join("target/bundle");
        let pick = |var: &str, default: PathBuf| -> PathBuf {
            let path = std::env::var_os(var).map_or(default, PathBuf::from);
            assert!(
                path.exists(),
                "{} not found ({var}). Run the tests with `cargo xtask test`, which builds the \
                 static bundle, stubs and server first.",
                path.display()
            );
            path
        };
        Artifacts {
            bundle: pick("SYDNEY_TEST_BUNDLE", bundle_dir.join("sydney-bundle")),
            release: pick("SYDNEY_TEST_RELEASE", bundle_dir.join("release")),
            server: pick("SYDNEY_TEST_SERVER", bundle_dir.join("release/bin/sydney")),
            stub_gzip: pick(
                "SYDNEY_TEST_STUB_GZIP",
                bundle_dir.join("stubs/bundle-stub-gzip"),
            ),
            stub_zstd: pick(
                "SYDNEY_TEST_STUB_ZSTD",
                bundle_dir.join("stubs/bundle-stub-zstd"),
            ),
        }
    })
}

/// The static `sydney-pack` that `cargo xtask dist` builds
/// (`SYDNEY_TEST_SYDNEY_PACK`, else target/dist/sydney-pack).
pub fn sydney_pack() -> PathBuf {
    let path = std::env::var_os("SYDNEY_TEST_SYDNEY_PACK")
        .map_or_else(|| root().join("target/dist/sydney-pack"), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found (SYDNEY_TEST_SYDNEY_PACK). Run the tests with `cargo xtask test`, which \
         runs `cargo xtask dist` first.",
        path.display()
    );
    path
}

/// The stub for `codec`.
pub fn stub(codec: Codec) -> Vec<u8> {
    let a = artifacts();
    let path = match codec {
        Codec::Gzip => &a.stub_gzip,
        Codec::Zstd => &a.stub_zstd,
    };
    fs::read(path).unwrap()
}

/// Fails loudly unless we are root: chroot, mount namespaces and tmpfs
/// mounts need it, and these tests must not silently skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (chroot, mount namespaces, tmpfs); run the suite as root as CI does"
    );
}

/// A scratch directory for one test, with a private HOME.
#[derive(Debug)]
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// Creates it, with `home/` inside.
    pub fn new() -> Sandbox {
        // Not under /tmp: some tests mount a fresh tmpfs there.
        let base = root().join("target/e2e-tmp");
        fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("sydney-e2e-")
            .tempdir_in(base)
            .unwrap();
        fs::create_dir(dir.path().join("home")).unwrap();
        Sandbox { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path/rel`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command with a clean environment: PATH, HOME in the sandbox, and
    /// `SYDNEY_BUNDLE_DIR` in the sandbox (so tests never share a cache).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", self.join("home"))
            .env("SYDNEY_BUNDLE_DIR", self.cache())
            .current_dir(self.path());
        command
    }

    /// The cache root tests use.
    pub fn cache(&self) -> PathBuf {
        self.join("cache")
    }

    /// Copies the sydney bundle into the sandbox and returns its path.
    pub fn sydney_bundle(&self) -> PathBuf {
        let path = self.join("sydney-bundle");
        fs::copy(&artifacts().bundle, &path).unwrap();
        path
    }

    /// Names of the entries directly in `dir` (sorted), or empty if missing.
    pub fn list(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

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

/// A plain HTTP/1.1 GET over a fresh connection: `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET path` until it answers (or `timeout`).
pub fn wait_for_http(addr: SocketAddr, path: &str, timeout: Duration) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        match http_get(addr, path) {
            Ok(answer) => return answer,
            Err(err) if Instant::now() > deadline => panic!("{addr}{path} never answered: {err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Packing options with test defaults.
pub fn pack_options(name: &str, entry: &str, codec: Codec) -> PackOptions {
    PackOptions {
        name: name.to_owned(),
        version: "1.0.0".to_owned(),
        entry: entry.to_owned(),
        args: Vec::new(),
        codec,
        level: bundle_format::codec::default_level(codec),
        needs_tree: false,
        default_cache_dir: None,
        mtime: 0,
        build: Vec::new(),
        portable: None,
        env: Vec::new(),
    }
}

/// Packs `dir` behind the real stub for the codec.
pub fn pack(dir: &Path, options: &PackOptions, out: &Path) -> PackReport {
    pack_to_path(dir, &stub(options.codec), options, out, &mut |_| {})
        .unwrap_or_else(|err| panic!("pack {}: {err}", dir.display()))
}

/// Writes an executable file.
pub fn write_exec(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A copy of the sydney release folder at `dest`.
pub fn copy_release(dest: &Path) {
    copy_tree(&artifacts().release, dest);
}

/// Copies a directory tree (files, dirs, symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Tree directories and temp leftovers in a cache root.
pub fn cache_contents(root: &Path) -> (Vec<String>, Vec<String>) {
    let names = Sandbox::list(root);
    let trees = names
        .iter()
        .filter(|n| !n.starts_with('.') && n.as_str() != "state")
        .cloned()
        .collect();
    let temps = names
        .iter()
        .filter(|n| n.starts_with(".tmp-"))
        .cloned()
        .collect();
    (trees, temps)
}

/// Waits until `check` holds (or panics after `timeout` with `what`).
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Is `program` on PATH? Tests that need it fail with this message if not.
#[track_caller]
pub fn require_program(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not installed; install the Debian package `{package}` (.ci/run does)"
    );
}

#[cfg(test)]
mod tests {
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
