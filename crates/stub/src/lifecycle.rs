//! `daemon`, `stop`, `restart`, `pid`: a mix-release style lifecycle that
//! needs no shell.
//!
//! The state directory holds `pid` (pid and kernel start time of the
//! running instance), `lock`, `claim.lock` and `log`.
//!
//! The pidfile is the authority, checked against the process table: a pid
//! that is gone, a zombie, or (where /proc exists) a process with another
//! start time is stale, and is never signalled. Without /proc start times
//! cannot be read, so the instance also holds an flock on `lock` through a
//! descriptor that survives exec; there, a pid counts as ours only while
//! that lock is held. `claim.lock` is held only while `daemon` registers an
//! instance, so two of them cannot both register (a foreground `start` is
//! not recorded).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bundle_format::Bundle;

use crate::exit::{Exit, coded, exit_for};
use crate::launch::{self, Prepared};
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
        let meta = fs::symlink_metadata(&self.dir)?;
        crate::cache::check_private(&meta).map_err(|reason| {
            coded(
                Exit::UnsafeCacheDir,
                format!(
                    "cannot use the state directory {}: {reason}",
                    self.dir.display()
                ),
            )
        })
    }

    fn open_lock(path: &PathBuf) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
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

    /// Writes the pidfile atomically (temp file, then rename).
    pub fn record(&self, record: PidRecord) -> Result<()> {
        let temp = self.dir.join(format!(".pid.{}", std::process::id()));
        let text = format!("{} {}\n", record.pid, record.start_time);
        fs::write(&temp, text)
            .and_then(|()| fs::rename(&temp, self.pid_path()))
            .with_context(|| format!("cannot write {}", self.pid_path().display()))
    }

    fn read_record(&self) -> Option<Result<PidRecord, String>> {
        let text = fs::read_to_string(self.pid_path()).ok()?;
        let mut fields = text.split_whitespace();
        let pid = fields.next().and_then(|p| p.parse::<i32>().ok());
        let start_time = fields.next().and_then(|t| t.parse::<u64>().ok());
        Some(match (pid, start_time) {
            (Some(pid), Some(start_time)) if pid > 0 => Ok(PidRecord { pid, start_time }),
            _ => Err(format!(
                "the pidfile {} is garbage ({:?})",
                self.pid_path().display(),
                text.trim()
            )),
        })
    }

    /// Whether nobody holds the instance lock.
    fn lock_is_free(&self) -> bool {
        match File::open(self.lock_path()) {
            Ok(lock) => sys::flock(&lock, Lock::SharedNow).unwrap_or(false),
            Err(_) => true,
        }
    }

    /// Is an instance running?
    pub fn status(&self) -> Status {
        let record = match self.read_record() {
            None => return Status::NotRunning { stale: None },
            Some(Err(garbage)) => {
                return Status::NotRunning {
                    stale: Some(format!("removed a stale pidfile: {garbage}")),
                };
            }
            Some(Ok(record)) => record,
        };
        if self.is_ours(record) {
            Status::Running(record)
        } else {
            Status::NotRunning {
                stale: Some(format!(
                    "removed a stale pidfile (pid {} is gone or is not ours)",
                    record.pid
                )),
            }
        }
    }

    /// Is `record` a live process, and the one that was recorded?
    fn is_ours(&self, record: PidRecord) -> bool {
        // EPERM: it exists but belongs to another user: not ours.
        if !sys::kill(record.pid, 0).unwrap_or(false) {
            return false;
        }
        match proc_stat(record.pid) {
            Some((state, start_time)) if record.start_time != 0 => {
                state != 'Z' && start_time == record.start_time
            }
            Some(('Z', _)) => false,
            // No start time to compare: the instance lock decides.
            _ => !self.lock_is_free(),
        }
    }

    /// Removes the pidfile.
    pub fn forget(&self) {
        let _ = fs::remove_file(self.pid_path());
    }
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

/// The state dir for this bundle under the chain's decision.
pub fn state_dir(
    bundle: &Bundle<'_>,
    prepared_decision: &crate::cache::Decision,
) -> Result<StateDir> {
    crate::cache::state_dir(prepared_decision, &bundle.manifest().name)
        .map(StateDir::new)
        .ok_or_else(|| {
            coded(
                Exit::NoCacheDir,
                format!(
                    "no writable directory for the pidfile and log (tried {}); \
                     set SYDNEY_BUNDLE_STATE_DIR or SYDNEY_BUNDLE_DIR",
                    prepared_decision.refusal_summary()
                ),
            )
        })
}

/// `daemon`: starts the entry detached and returns its pid once it runs.
pub fn daemon(
    bundle: &Bundle<'_>,
    prepared: &Prepared,
    argv: &[std::ffi::CString],
    bundle_env: &[std::ffi::CString],
) -> Result<i32> {
    let name = &bundle.manifest().name;
    let state = state_dir(bundle, &prepared.decision)?;
    state.ensure()?;
    let _registering = state.registration()?;
    match state.status() {
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
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open the log {}", log_path.display()))?;
    let stdin = null_input()?;
    let (mut report_reader, report_writer) = io::pipe().context("cannot create a pipe")?;

    // SAFETY: single-threaded here (see init.rs); the children only set up
    // descriptors and exec, or exit.
    match unsafe { sys::fork() }.context("cannot fork")? {
        Forked::Child => {
            drop(report_reader);
            let _ = sys::setsid();
            // SAFETY: as above.
            match unsafe { sys::fork() } {
                Ok(Forked::Child) => {
                    let mut report = report_writer;
                    let setup = sys::dup_onto(&stdin, 0)
                        .and_then(|()| sys::dup_onto(&log, 1))
                        .and_then(|()| sys::dup_onto(&log, 2))
                        .and_then(|()| sys::keep_across_exec(&lock));
                    let err = match setup {
                        Ok(()) => launch::exec(bundle, prepared, argv, bundle_env),
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
            sys::wait_pid(first);
            // The pipe closes on the grandchild's exec (close-on-exec), so
            // end of file means the entry is running.
            let mut report = Vec::new();
            report_reader
                .read_to_end(&mut report)
                .context("cannot read the daemon's start report")?;
            let Some(pid) = report
                .get(..4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            else {
                anyhow::bail!("the daemon failed to start (no report)");
            };
            if let Some((&code, message)) = report[4..].split_first() {
                let exit = Exit::TABLE
                    .iter()
                    .map(|(e, _)| *e)
                    .find(|e| e.code() == code)
                    .unwrap_or(Exit::Failure);
                return Err(coded(exit, String::from_utf8_lossy(message).into_owned()));
            }
            state.record(PidRecord {
                pid,
                start_time: proc_stat(pid).map_or(0, |(_, t)| t),
            })?;
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
    let record = match state.status() {
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
        if !state.is_ours(record) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
