//! `daemon`, `stop`, `restart`, `pid`: a mix-release style lifecycle that
//! needs no shell.
//!
//! The state directory holds `pid` (pid and kernel start time of the
//! running instance), `lock`, `claim.lock` and `log`.
//!
//! Everything read from the state directory is checked first, by every
//! command: the directory must be ours and private (as a cache root), and
//! the pidfile and lock regular files of ours that nobody else can write,
//! opened without following symlinks. Anything else is refused (exit 23):
//! whoever can write there could otherwise make us signal any process.
//!
//! The pidfile names the instance; the process table and the instance lock
//! confirm it. The instance holds an flock on `lock` through a descriptor
//! that survives exec. A recorded pid counts as ours only while it lives,
//! is not a zombie, has the recorded start time (where /proc exists), and
//! the lock is held, by that process where /proc shows its descriptors. A
//! stale or reused pid is never signalled. `claim.lock` is held only while
//! `daemon` registers an instance, so two of them cannot both register (a
//! foreground `start` is not recorded).
//!
//! `daemon` records first: it reserves the pidfile's space before it forks,
//! writes the record once the child's pid is known, and only then lets the
//! child exec the entry. A failure (or a kill of `daemon` itself) at any
//! step leaves no process that the pidfile does not name. See
//! docs/decisions/0051-lifecycle-state-trust.md.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bundle_format::Bundle;

use crate::cache;
use crate::exit::{Exit, coded, exit_for};
use crate::launch::{self, Launch};
use crate::sys::{self, Forked, Lock};
use crate::ui::note;

/// The state directory of one bundle name.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// A pid and the start time the kernel gave it (clock ticks since boot;
/// 0 when /proc was not available to read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRecord {
    /// The process id.
    pub pid: i32,
    /// Its start time, or 0 if unknown.
    pub start_time: u64,
}

/// Whether an instance runs.
#[derive(Debug)]
pub enum Status {
    /// Nothing runs; `stale` explains a leftover pidfile, if there is one.
    NotRunning {
        /// What the leftover pidfile said.
        stale: Option<String>,
    },
    /// The recorded process runs and is ours.
    Running(PidRecord),
}

impl StateDir {
    /// The state directory at `dir`.
    pub fn new(dir: PathBuf) -> StateDir {
        StateDir { dir }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Creates the directory (0700) and refuses one that others can tamper with.
    pub fn ensure(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create the state directory {}", self.dir.display()))?;
        self.check()?;
        Ok(())
    }

    /// For `stop`, `pid` and `restart`: `false` if the directory does not
    /// exist (nothing was ever started), an error (exit 23) if others could
    /// have tampered with it.
    pub fn check(&self) -> Result<bool> {
        let meta = match fs::symlink_metadata(&self.dir) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!(
                    "cannot use the state directory {}",
                    self.dir.display()
                )));
            }
        };
        cache::check_private(&meta).map_err(|reason| {
            coded(
                Exit::UnsafeCacheDir,
                format!(
                    "cannot use the state directory {}: {reason}",
                    self.dir.display()
                ),
            )
        })?;
        Ok(true)
    }

    /// Opens a file of the state directory without following a symlink,
    /// and refuses it unless it is a regular file of ours that nobody else
    /// can write (exit 23).
    pub(crate) fn open_checked(path: &Path, options: &mut OpenOptions) -> Result<Option<File>> {
        let file = match options.custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                return Err(unsafe_state(path, "it is a symlink".to_owned()));
            }
            Err(err) => {
                return Err(
                    anyhow::Error::new(err).context(format!("cannot open {}", path.display()))
                );
            }
        };
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?;
        let uid = sys::geteuid();
        let mode = meta.mode() & 0o7777;
        let problem = if !meta.is_file() {
            Some("it is not a regular file".to_owned())
        } else if meta.uid() != uid {
            Some(format!(
                "it is owned by uid {}, not by this user (uid {uid})",
                meta.uid()
            ))
        } else if mode & 0o022 != 0 {
            Some(format!("it is writable by group or others (mode {mode:o})"))
        } else {
            None
        };
        match problem {
            Some(problem) => Err(unsafe_state(path, problem)),
            None => Ok(Some(file)),
        }
    }

    pub(crate) fn open_lock(path: &Path) -> Result<File> {
        Self::open_checked(
            path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600),
        )?
        .with_context(|| format!("cannot open {}", path.display()))
    }

    /// Serialises registration: held (never inherited) while one `daemon`
    /// or `start` checks for a running instance and records itself.
    pub fn registration(&self) -> Result<File> {
        let claim = Self::open_lock(&self.dir.join("claim.lock"))?;
        sys::flock(&claim, Lock::Exclusive)?;
        Ok(claim)
    }

    /// The instance lock for a new instance, to be kept across exec. Leftover
    /// children of a dead instance may still hold the old one (they inherited
    /// it); a fresh lock file then replaces it.
    pub fn instance_lock(&self) -> Result<File> {
        let path = self.lock_path();
        let lock = Self::open_lock(&path)?;
        if sys::flock(&lock, Lock::ExclusiveNow)? {
            return Ok(lock);
        }
        let _ = fs::remove_file(&path);
        let lock = Self::open_lock(&path)?;
        sys::flock(&lock, Lock::ExclusiveNow)?;
        Ok(lock)
    }

    /// Creates the pidfile's temp file and writes a placeholder of the
    /// record's full size, so that space runs out here, before anything is
    /// started, rather than after. Removed again on failure.
    pub(crate) fn reserve_record(&self) -> Result<Reserved> {
        self.remove_dead_temps();
        let path = self.dir.join(format!(".pid.{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let reserved = Reserved { path, file };
        reserved
            .file
            .write_all_at(&[b' '; RECORD_LEN], 0)
            .with_context(|| format!("cannot write {}", reserved.path.display()))?;
        Ok(reserved)
    }

    /// Removes `.pid.<pid>` temp files whose `daemon` process is gone (it
    /// was killed between reserving and renaming); nothing else.
    fn remove_dead_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(".pid."))
                .and_then(|pid| pid.parse::<i32>().ok())
                .filter(|&pid| pid > 0);
            let dead = pid.is_some_and(|pid| {
                pid == std::process::id() as i32 || matches!(sys::kill(pid, 0), Ok(false))
            });
            if dead && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Fills the reserved pidfile in place (no new space needed) and renames
    /// it over the pidfile.
    fn record(&self, reserved: &Reserved, record: PidRecord) -> Result<()> {
        self.record_as(reserved, record, &self.pid_path())
    }

    /// [`Self::record`] into `path` (the pidfile, or the supervisor's record).
    pub(crate) fn record_as(
        &self,
        reserved: &Reserved,
        record: PidRecord,
        path: &Path,
    ) -> Result<()> {
        let mut text = format!("{} {}", record.pid, record.start_time).into_bytes();
        text.resize(RECORD_LEN - 1, b' ');
        text.push(b'\n');
        reserved
            .file
            .write_all_at(&text, 0)
            .and_then(|()| fs::rename(&reserved.path, path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn read_record(&self) -> Result<Option<Result<PidRecord, String>>> {
        self.read_record_at(self.pid_path())
    }

    /// A file of the state directory, by name.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The record at `path` (the pidfile, or the supervisor's record).
    pub(crate) fn read_record_at(
        &self,
        path: PathBuf,
    ) -> Result<Option<Result<PidRecord, String>>> {
        let Some(file) = Self::open_checked(&path, OpenOptions::new().read(true))? else {
            return Ok(None);
        };
        let mut text = String::new();
        // A real record is under 64 bytes; never read more than a page.
        if file.take(4096).read_to_string(&mut text).is_err() {
            text = "(not text)".to_owned();
        }
        let mut fields = text.split_whitespace();
        let pid = fields.next().and_then(|p| p.parse::<i32>().ok());
        let start_time = fields.next().and_then(|t| t.parse::<u64>().ok());
        Ok(Some(match (pid, start_time) {
            (Some(pid), Some(start_time)) if pid > 0 => Ok(PidRecord { pid, start_time }),
            _ => Err(format!(
                "the pidfile {} is garbage ({:?})",
                path.display(),
                text.trim()
            )),
        }))
    }

    /// The instance lock's identity `(dev, ino)` if somebody holds it.
    fn held_lock(&self) -> Result<Option<(u64, u64)>> {
        let path = self.lock_path();
        let Some(lock) = Self::open_checked(&path, OpenOptions::new().read(true))? else {
            return Ok(None);
        };
        if sys::flock(&lock, Lock::SharedNow).unwrap_or(false) {
            return Ok(None);
        }
        let meta = lock.metadata()?;
        Ok(Some((meta.dev(), meta.ino())))
    }

    /// Is an instance running?
    pub fn status(&self) -> Result<Status> {
        let record = match self.read_record()? {
            None => return Ok(Status::NotRunning { stale: None }),
            Some(Err(garbage)) => {
                return Ok(Status::NotRunning {
                    stale: Some(format!("removed a stale pidfile: {garbage}")),
                });
            }
            Some(Ok(record)) => record,
        };
        Ok(if self.is_ours(record)? {
            Status::Running(record)
        } else {
            Status::NotRunning {
                stale: Some(format!(
                    "removed a stale pidfile (pid {} is gone or is not ours)",
                    record.pid
                )),
            }
        })
    }

    /// Is `record` a live process, and the instance that was recorded? It
    /// must have the recorded start time, and the instance lock must be
    /// held, by that very process where /proc shows its descriptors.
    pub(crate) fn is_ours(&self, record: PidRecord) -> Result<bool> {
        // EPERM: it exists but belongs to another user: not ours.
        if !sys::kill(record.pid, 0).unwrap_or(false) {
            return Ok(false);
        }
        let live = match proc_stat(record.pid) {
            Some(('Z', _)) => false,
            Some((_, start_time)) => record.start_time == 0 || start_time == record.start_time,
            None => true,
        };
        if !live {
            return Ok(false);
        }
        let Some(lock) = self.held_lock()? else {
            return Ok(false);
        };
        Ok(holds_open(record.pid, lock).unwrap_or(true))
    }

    /// Removes the pidfile.
    pub fn forget(&self) {
        let _ = fs::remove_file(self.pid_path());
    }
}

/// Length of the pidfile: `pid start-time`, padded with spaces, newline.
const RECORD_LEN: usize = 48;

/// The pidfile's temp file, space reserved; removed on drop unless renamed.
pub(crate) struct Reserved {
    path: PathBuf,
    file: File,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // After the rename the name is gone and this fails harmlessly.
        let _ = fs::remove_file(&self.path);
    }
}

fn unsafe_state(path: &Path, problem: String) -> anyhow::Error {
    coded(
        Exit::UnsafeCacheDir,
        format!(
            "refusing to trust {}: {problem}; only this user may write the state directory \
             (remove the file, or set SYDNEY_BUNDLE_STATE_DIR to a private directory)",
            path.display()
        ),
    )
}

/// Whether process `pid` has the file `(dev, ino)` open: `None` where its
/// descriptors cannot be read (no /proc).
fn holds_open(pid: i32, (dev, ino): (u64, u64)) -> Option<bool> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.flatten().any(|fd| {
            fs::metadata(fd.path()).is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino)
        }),
    )
}

/// `(state, start time)` from `/proc/PID/stat`, if /proc is mounted.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    // One read: the line is well under 1 KB (read_to_string would take six
    // growing reads on this start-up path).
    let mut buf = [0u8; 1024];
    let n = File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read(&mut buf)
        .ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall is the 20th after the name.
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

/// The state dir that [`cache::state_dir`] located, or the error that
/// explains why there is none (exit 20).
pub fn state_dir(
    located: Result<PathBuf, cache::NoStateDir>,
    decision: &cache::Decision,
) -> Result<StateDir> {
    match located {
        Ok(dir) => Ok(StateDir::new(dir)),
        Err(cache::NoStateDir::NoRoot) => Err(coded(
            Exit::NoCacheDir,
            format!(
                "no writable directory for the pidfile and log (tried {}); \
                 set SYDNEY_BUNDLE_STATE_DIR or SYDNEY_BUNDLE_DIR",
                decision.refusal_summary()
            ),
        )),
        Err(cache::NoStateDir::NotAbsolute(dir)) => Err(coded(
            Exit::NoCacheDir,
            format!(
                "cannot use SYDNEY_BUNDLE_STATE_DIR={}: it is not an absolute path",
                dir.display()
            ),
        )),
    }
}

/// `daemon`: starts the entry detached and returns its pid once it runs.
pub fn daemon(
    bundle: &Bundle<'_>,
    ready: &Launch,
    supervised: Option<crate::supervise::Plan>,
) -> Result<i32> {
    let name = &bundle.manifest().name;
    let state = state_dir(
        cache::state_dir(&ready.cache_env, &ready.decision, name),
        &ready.decision,
    )?;
    state.ensure()?;
    let _registering = state.registration()?;
    match state.status()? {
        Status::Running(record) => {
            return Err(coded(
                Exit::AlreadyRunning,
                format!(
                    "{name} is already running (pid {}); use `stop` or `restart`",
                    record.pid
                ),
            ));
        }
        Status::NotRunning { stale: Some(why) } => {
            state.forget();
            note(&why);
        }
        Status::NotRunning { stale: None } => {}
    }
    let lock = state.instance_lock()?;
    let log_path = state.log_path();
    let log = StateDir::open_checked(
        &log_path,
        OpenOptions::new().create(true).append(true).mode(0o600),
    )?
    .with_context(|| format!("cannot open the log {}", log_path.display()))?;
    let stdin = null_input()?;
    if let Some(plan) = supervised {
        return crate::supervise::daemon(
            &state,
            name,
            plan,
            crate::supervise::Held {
                registering: Some(_registering),
                lock,
                log,
                stdin,
            },
        );
    }
    // Before anything runs: on a full disk this is what fails.
    let reserved = state.reserve_record()?;
    let (mut report_reader, report_writer) = io::pipe().context("cannot create a pipe")?;
    // The entry execs only once its pid is recorded: the parent writes one
    // byte here after the pidfile is in place. End of file (the parent
    // failed, or was killed) means: exit without running anything.
    let (mut go_reader, go_writer) = io::pipe().context("cannot create a pipe")?;

    // SAFETY: single-threaded here (see init.rs); the children only set up
    // descriptors and exec, or exit.
    match unsafe { sys::fork() }.context("cannot fork")? {
        Forked::Child => {
            drop(report_reader);
            drop(go_writer);
            std::mem::forget(reserved); // the parent removes or renames it
            let _ = sys::setsid();
            // SAFETY: as above.
            match unsafe { sys::fork() } {
                Ok(Forked::Child) => {
                    let mut report = report_writer;
                    let mut go = [0u8; 1];
                    if !matches!(go_reader.read(&mut go), Ok(1)) {
                        sys::exit_now(1);
                    }
                    drop(go_reader);
                    let setup = sys::dup_onto(&stdin, 0)
                        .and_then(|()| sys::dup_onto(&log, 1))
                        .and_then(|()| sys::dup_onto(&log, 2))
                        .and_then(|()| sys::keep_across_exec(&lock));
                    let err = match setup {
                        Ok(()) => launch::exec(bundle, ready),
                        Err(err) => anyhow::Error::new(err).context("cannot set up the daemon"),
                    };
                    let code = exit_for(&err).code();
                    let _ = report.write_all(&[code]);
                    let _ = report.write_all(format!("{err:#}").as_bytes());
                    sys::exit_now(i32::from(code));
                }
                Ok(Forked::Parent(pid)) => {
                    let mut report = report_writer;
                    let _ = report.write_all(&pid.to_le_bytes());
                    sys::exit_now(0);
                }
                Err(_) => sys::exit_now(1),
            }
        }
        Forked::Parent(first) => {
            drop(report_writer);
            drop(go_reader);
            sys::wait_pid(first);
            let mut pid = [0u8; 4];
            if report_reader.read_exact(&mut pid).is_err() {
                anyhow::bail!("the daemon failed to start (no report)");
            }
            let pid = i32::from_le_bytes(pid);
            // The start time does not change at exec: it is the entry's.
            let record = PidRecord {
                pid,
                start_time: proc_stat(pid).map_or(0, |(_, t)| t),
            };
            // On failure `go_writer` closes and the child exits unrun.
            state.record(&reserved, record).with_context(|| {
                format!("{name} was not started: its pid could not be recorded")
            })?;
            let mut go_writer = go_writer;
            let released = go_writer.write_all(&[1]);
            drop(go_writer);
            // The report pipe closes on the grandchild's exec (close-on-exec),
            // so end of file without a message means the entry is running.
            let mut report = Vec::new();
            let read = report_reader.read_to_end(&mut report);
            let failure = match (released, read, report.split_first()) {
                (Ok(()), Ok(_), None) => None,
                (_, _, Some((&code, message))) => {
                    let exit = Exit::TABLE
                        .iter()
                        .map(|(e, _)| *e)
                        .find(|e| e.code() == code)
                        .unwrap_or(Exit::Failure);
                    Some(coded(exit, String::from_utf8_lossy(message).into_owned()))
                }
                (Err(err), _, None) | (_, Err(err), None) => Some(
                    anyhow::Error::new(err)
                        .context(format!("{name} was stopped before it could start")),
                ),
            };
            if let Some(err) = failure {
                state.forget();
                return Err(err);
            }
            drop(lock);
            Ok(pid)
        }
    }
}

/// Standard input for a daemon: /dev/null, or, where there is none (an
/// empty FROM scratch image), a pipe with no writer, which reads as empty.
fn null_input() -> Result<File> {
    if let Ok(null) = File::open("/dev/null") {
        return Ok(null);
    }
    let (reader, writer) = io::pipe().context("cannot create a pipe")?;
    drop(writer);
    Ok(File::from(std::os::fd::OwnedFd::from(reader)))
}

/// `stop`: SIGTERM, wait up to `timeout`, then SIGKILL. Returns the pid stopped.
pub fn stop(name: &str, state: &StateDir, timeout: Duration) -> Result<i32> {
    if !state.check()? {
        return Err(coded(Exit::NotRunning, format!("{name} is not running")));
    }
    let record = match state.status()? {
        Status::Running(record) => record,
        Status::NotRunning { stale } => {
            if let Some(stale) = stale {
                state.forget();
                note(&stale);
            }
            return Err(coded(Exit::NotRunning, format!("{name} is not running")));
        }
    };
    sys::kill(record.pid, libc::SIGTERM).context("cannot send SIGTERM")?;
    if !wait_gone(state, record, timeout) {
        note(&format!(
            "pid {} did not stop within {}s of SIGTERM; sending SIGKILL",
            record.pid,
            timeout.as_secs()
        ));
        sys::kill(record.pid, libc::SIGKILL).context("cannot send SIGKILL")?;
        if !wait_gone(state, record, Duration::from_secs(5)) {
            anyhow::bail!("pid {} is still there after SIGKILL", record.pid);
        }
    }
    state.forget();
    Ok(record.pid)
}

/// Waits until the recorded process is gone.
fn wait_gone(state: &StateDir, record: PidRecord, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !state.is_ours(record).unwrap_or(false) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
