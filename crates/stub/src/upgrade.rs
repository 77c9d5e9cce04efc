//! `upgrade NEWFILE`, `rollback` and the supervised `restart`: verify,
//! stage and extract the new file, ask the supervisor for a handover
//! (supervise.rs), and only once the new server is ready replace the bundle
//! file by a rename in its own directory, keeping the previous file as
//! `<bundle>.previous` for `rollback`.
//!
//! One at a time: `<state dir>/upgrade.lock` (exit 28 when held). Any
//! failure before the rename removes the staged copy and leaves the bundle
//! file, the previous file and the running server as they were.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bundle_format::Bundle;

use crate::exit::{Exit, coded};
use crate::launch;
use crate::lifecycle::{StateDir, Status};
use crate::supervise;
use crate::sys::{self, Lock};
use crate::ui::note;

/// The running instance's bundle, as the command sees it.
pub struct Running<'a> {
    /// The bundle this command runs from.
    pub bundle: &'a Bundle<'a>,
    /// Its file.
    pub path: PathBuf,
    /// Its state directory.
    pub state: StateDir,
}

/// `<bundle>.previous`, next to the bundle file.
pub fn previous_path(app: &Path) -> PathBuf {
    let mut name = app.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    app.with_file_name(name)
}

/// The lock that serialises upgrades; held until dropped.
fn upgrade_lock(running: &Running<'_>) -> Result<fs::File> {
    let lock = StateDir::open_lock(&running.state.file("upgrade.lock"))?;
    if !sys::flock(&lock, Lock::ExclusiveNow)? {
        return Err(coded(
            Exit::UpgradeBusy,
            format!(
                "another upgrade, rollback or restart of {} is running; wait for it to finish",
                running.bundle.manifest().name
            ),
        ));
    }
    Ok(lock)
}

/// `upgrade NEWFILE` (and `rollback`, which is an upgrade to the previous
/// file). Returns the line to print.
pub fn upgrade(running: &Running<'_>, new_file: &Path, timeout: Duration) -> Result<String> {
    switch_to(running, new_file, timeout, "upgraded")
}

fn switch_to(
    running: &Running<'_>,
    new_file: &Path,
    timeout: Duration,
    done: &str,
) -> Result<String> {
    let name = &running.bundle.manifest().name;
    if !running.state.check()? || !matches!(running.state.status()?, Status::Running(_)) {
        return Err(coded(Exit::NotRunning, format!("{name} is not running")));
    }
    let supervised = supervise::running(&running.state)?.is_some();
    if !supervised {
        note(&format!(
            "{name} runs without a supervisor (no listening sockets declared), so this upgrade \
             stops it and then starts the new version: connections are refused in between \
             (docs/UPGRADES.md)"
        ));
    }
    let _lock = upgrade_lock(running)?;
    let manifest = running.bundle.manifest();
    let staged = Staged::copy(new_file, &running.path)?;
    let file =
        fs::File::open(&staged.0).with_context(|| format!("cannot open {}", staged.0.display()))?;
    let map = sys::map_staged_copy(&file)
        .with_context(|| format!("cannot read {}", new_file.display()))?;
    let new = Bundle::open(&map)
        .with_context(|| format!("{} is not a usable bundle", new_file.display()))?;
    new.verify_payload()
        .with_context(|| format!("{} is damaged", new_file.display()))?;
    if new.manifest().name != manifest.name {
        return Err(coded(
            Exit::WrongBundle,
            format!(
                "{} is a bundle of {}, not of {}; upgrade only to a file of the same name",
                new_file.display(),
                new.manifest().name,
                manifest.name
            ),
        ));
    }
    crate::trust::require_same_signer(running.bundle, &new)?;
    // Extract now, so the readiness timeout measures only the server.
    drop(launch::prepare(&new, true, &[])?);
    let switched = if supervised {
        supervise::request_handover(&running.state, &staged.0, timeout, None)
    } else {
        stop_then_start(running, &staged.0)
    };
    let pid = switched.with_context(|| {
        format!(
            "the upgrade of {} to {} failed; the running version keeps serving and no \
                 file was replaced",
            manifest.name,
            new.manifest().version
        )
    })?;
    let previous = previous_path(&running.path);
    keep_previous(&running.path, &previous)?;
    fs::rename(&staged.0, &running.path)
        .with_context(|| format!("cannot replace {}", running.path.display()))?;
    staged.keep();
    Ok(format!(
        "{done} {} from {} to {} (pid {pid}); the previous file is {}",
        manifest.name,
        manifest.version,
        new.manifest().version,
        previous.display()
    ))
}

/// The fallback without a supervisor: `stop`, then `daemon` of the new
/// file (with no user arguments: nothing remembers the old ones). If the
/// new one does not start, the old file is started again.
fn stop_then_start(running: &Running<'_>, staged: &Path) -> Result<i32> {
    let name = &running.bundle.manifest().name;
    crate::lifecycle::stop(name, &running.state, Duration::from_secs(15))?;
    // Not std::process::Command: it would add about 10 KB to every bundle.
    let daemon = |file: &Path| -> Result<()> {
        let argv = [file.as_os_str(), "daemon".as_ref()];
        let pid = sys::ServerSpawn::new(file, &argv, &[], 0)
            .and_then(|mut spawn| spawn.spawn(&[], None))
            .with_context(|| format!("cannot run {} daemon", file.display()))?;
        match sys::wait_exit(pid)? {
            sys::ChildExit::Code(0) => Ok(()),
            how => Err(coded(
                Exit::UpgradeFailed,
                format!(
                    "`{} daemon` failed (status {})",
                    file.display(),
                    how.status()
                ),
            )),
        }
    };
    if let Err(err) = daemon(staged) {
        let restarted = match daemon(&running.path) {
            Ok(()) => "the old version was started again",
            Err(_) => "the old version could not be started again either; nothing runs now",
        };
        return Err(err.context(format!("the new version did not start; {restarted}")));
    }
    match running.state.status()? {
        Status::Running(record) => Ok(record.pid),
        Status::NotRunning { .. } => Err(coded(
            Exit::UpgradeFailed,
            "the new version exited right after it started",
        )),
    }
}

/// `rollback`: hand over to `<bundle>.previous`; it becomes the bundle file
/// and the file it replaces becomes the previous one.
pub fn rollback(running: &Running<'_>, timeout: Duration) -> Result<String> {
    let previous = previous_path(&running.path);
    if !previous.is_file() {
        return Err(coded(
            Exit::NoPrevious,
            format!(
                "there is no previous version to roll back to ({} does not exist; `upgrade` \
                 leaves it)",
                previous.display()
            ),
        ));
    }
    switch_to(running, &previous, timeout, "rolled back")
}

/// The supervised `restart` (main checked that a supervisor runs): a
/// handover to the same file.
pub fn restart(running: &Running<'_>, args: &[String], timeout: Duration) -> Result<String> {
    let _lock = upgrade_lock(running)?;
    let args = (!args.is_empty()).then_some(args);
    let pid = supervise::request_handover(&running.state, &running.path, timeout, args)
        .context("the restart failed; the running server keeps serving")?;
    Ok(format!(
        "restarted {} (pid {pid})",
        running.bundle.manifest().name
    ))
}

/// Links the current bundle file as `previous` (atomically replacing an
/// older one); a copy where hard links are not possible.
fn keep_previous(app: &Path, previous: &Path) -> Result<()> {
    let temp = hidden_sibling(app, &format!("previous.{}", sys::getpid()));
    let _ = fs::remove_file(&temp);
    if fs::hard_link(app, &temp).is_err() {
        copy_file(app, &temp)?;
    }
    fs::rename(&temp, previous).with_context(|| {
        let _ = fs::remove_file(&temp);
        format!("cannot keep the previous file as {}", previous.display())
    })
}

/// Copies `from` to the new file `to`, executable. A read and write loop:
/// `std::fs::copy` would add about 1.5 KB to every bundle.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let copy = || -> std::io::Result<()> {
        let mut source = fs::File::open(from)?;
        let mut target = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(to)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match source.read(&mut buf)? {
                0 => return Ok(()),
                n => target.write_all(&buf[..n])?,
            }
        }
    };
    copy().with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// `.<bundle file name>.<suffix>` in the bundle's directory.
fn hidden_sibling(app: &Path, suffix: &str) -> PathBuf {
    let name = app.file_name().unwrap_or_default().to_string_lossy();
    app.with_file_name(format!(".{name}.{suffix}"))
}

/// A copy of the new file next to the bundle file (so the final rename
/// stays in one directory), removed unless kept.
struct Staged(PathBuf);

impl Staged {
    fn copy(new_file: &Path, app: &Path) -> Result<Staged> {
        let staged = Staged(hidden_sibling(app, &format!("upgrade.{}", sys::getpid())));
        copy_file(new_file, &staged.0)?;
        Ok(staged)
    }

    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_and_staged_files_sit_next_to_the_bundle() {
        let app = Path::new("/opt/app/sydney-bundle");
        assert_eq!(
            previous_path(app),
            Path::new("/opt/app/sydney-bundle.previous")
        );
        assert_eq!(
            hidden_sibling(app, "upgrade.7"),
            Path::new("/opt/app/.sydney-bundle.upgrade.7")
        );
    }
}
