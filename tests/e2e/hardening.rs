//! Regression tests for issue 20 (an adversarial run against the bundle),
//! one section per class of bug: trusting state others can write, deleting
//! what the bundle did not create, failures that leave half-done state,
//! sizes not enforced, misleading errors. Each reproduction from the issue
//! is here, with variants of our own.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use e2e::bundle_format::layout::LEAD_IN_LEN;
use e2e::bundle_format::pack::{assemble, compress, pack_to_path};
use e2e::bundle_format::{Bundle, Codec, Index, Manifest};
use e2e::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A real second user, created with `useradd` and removed on drop (also
/// when the test fails).
struct OtherUser {
    name: String,
    uid: u32,
}

impl OtherUser {
    fn create(tag: &str) -> OtherUser {
        require_root();
        require_program("useradd", "passwd");
        // useradd locks /etc/passwd: one at a time within this binary.
        static USERADD: Mutex<()> = Mutex::new(());
        let _one = USERADD.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("sydh{}{tag}", std::process::id() % 100_000);
        let _ = Command::new("userdel").arg(&name).output();
        run(Command::new("useradd").args([
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]))
        .expect_success();
        let id = run(Command::new("id").args(["-u", &name]));
        id.expect_success();
        let uid = id.stdout().trim().parse().unwrap();
        OtherUser { name, uid }
    }

    /// `sh -c script` as this user.
    /// Runs `script` with `sh` as this user. The shell execs what the
    /// script names, so "text file busy" (a file written just now, its
    /// descriptor still held by another test thread's child between fork
    /// and exec; see `process::spawn`) reaches us as the shell's 126: tried
    /// again, as `spawn` does.
    fn sh(&self, script: &str) -> Ran {
        require_program("setpriv", "util-linux");
        let mut tries = 0;
        loop {
            let ran = run(Command::new("setpriv")
                .arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.uid))
                .args(["--clear-groups", "sh", "-c", script]));
            let busy =
                ran.output.status.code() == Some(126) && ran.stderr().contains("Text file busy");
            if !busy || tries == 100 {
                return ran;
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A process that must survive (`sleep 300`), killed on drop.
struct Victim {
    child: Child,
}

impl Victim {
    fn start() -> Victim {
        let child = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Victim { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `pid start-time`, as a pidfile records it.
    fn record(&self) -> String {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after_name = stat.rsplit(')').next().unwrap();
        let start = after_name.split_whitespace().nth(19).unwrap();
        format!("{} {start}\n", self.pid())
    }

    #[track_caller]
    fn assert_alive(&mut self, after: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the victim (pid {}) was killed by {after}",
            self.pid()
        );
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The name of the sydney bundle's tree.
fn sydney_tree_name() -> String {
    let bytes = fs::read(&artifacts().bundle).unwrap();
    Bundle::open(&bytes).unwrap().tree_dir_name()
}

/// A bundle (real stub for `codec`) whose payload is `tar`, with a manifest
/// that tells the truth unless `lie` changes it.
fn forged_bundle(codec: Codec, tar: &[u8], lie: impl FnOnce(&mut Manifest)) -> Vec<u8> {
    let payload = compress(codec, tar).unwrap();
    let mut manifest = Manifest {
        name: "forged".into(),
        version: "1".into(),
        entry: "bin/app".into(),
        args: vec![],
        codec,
        tar_len: tar.len() as u64,
        unpacked_bytes: tar.len() as u64,
        file_count: 1000,
        needs_tree: false,
        default_cache_dir: None,
        index_sha256: [0; 32],
        build: vec![],
        env: vec![],
    };
    lie(&mut manifest);
    assemble(&stub(codec), &payload, &manifest, &Index::default())
}

/// Writes `bytes` as an executable bundle in `sandbox`.
fn write_bundle(sandbox: &Sandbox, name: &str, bytes: &[u8]) -> PathBuf {
    let path = sandbox.join(name);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[track_caller]
fn assert_cache_clean(sandbox: &Sandbox, what: &str) {
    let (trees, temps) = cache_contents(&sandbox.cache());
    assert!(
        trees.is_empty() && temps.is_empty(),
        "{what}: left {trees:?} {temps:?}"
    );
}

// ---------------------------------------------------------------------------
// Trusting state others can write
// ---------------------------------------------------------------------------

/// The issue's reproduction: a state directory another user can write makes
/// every command that reads it refuse (exit 23), and the victim lives.
#[test]
fn control_commands_refuse_a_state_dir_another_user_can_write() {
    let other = OtherUser::create("a");
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    fs::set_permissions(sandbox.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let state = sandbox.join("S");
    fs::create_dir(&state).unwrap();
    run(Command::new("chown").arg(&other.name).arg(&state)).expect_success();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let mut victim = Victim::start();
    other
        .sh(&format!(
            "printf '{}' > {}/pid",
            victim.record().trim_end(),
            state.display()
        ))
        .expect_success();
    assert!(
        state.join("pid").exists(),
        "precondition: the forged pidfile"
    );

    for args in [
        &["daemon", "--", "--port", "0"][..],
        &["pid"],
        &["stop", "--timeout", "1"],
        &["restart", "--timeout", "1"],
    ] {
        let ran = run(sandbox
            .command(&bundle)
            .env("SYDNEY_BUNDLE_STATE_DIR", &state)
            .args(args));
        ran.expect_code(23)
            .expect_stderr("state directory")
            .expect_one_line_error();
        victim.assert_alive(args[0]);
    }
}

/// Variants in a private state directory: a pidfile or lock file that is a
/// symlink, owned by another user, or writable by others; the directory
/// itself a symlink or group-writable. All refused with exit 23.
#[test]
fn tampered_state_files_are_refused_by_every_control_command() {
    let other = OtherUser::create("b");
    let mut victim = Victim::start();
    let record = victim.record();
    type Setup = fn(&Path, &str, &OtherUser);
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "pidfile owned by another user",
            |s, record, other| {
                fs::write(s.join("pid"), record).unwrap();
                run(Command::new("chown").arg(&other.name).arg(s.join("pid"))).expect_success();
            },
            "owned by uid",
        ),
        (
            "pidfile a symlink",
            |s, record, _| {
                fs::write(s.join("elsewhere"), record).unwrap();
                symlink(s.join("elsewhere"), s.join("pid")).unwrap();
            },
            "symlink",
        ),
        (
            "pidfile writable by others",
            |s, record, _| {
                fs::write(s.join("pid"), record).unwrap();
                fs::set_permissions(s.join("pid"), fs::Permissions::from_mode(0o666)).unwrap();
            },
            "writable by group or others",
        ),
        (
            "lock file a symlink",
            |s, record, _| {
                fs::write(s.join("pid"), record).unwrap();
                symlink("/etc/hostname", s.join("lock")).unwrap();
            },
            "symlink",
        ),
        (
            "lock file owned by another user",
            |s, record, other| {
                fs::write(s.join("pid"), record).unwrap();
                fs::write(s.join("lock"), "").unwrap();
                run(Command::new("chown").arg(&other.name).arg(s.join("lock"))).expect_success();
            },
            "owned by uid",
        ),
    ];
    for (what, setup, needle) in cases {
        let sandbox = Sandbox::new();
        let bundle = sandbox.sydney_bundle();
        let state = sandbox.join("S");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        setup(&state, &record, &other);
        for args in [&["pid"][..], &["stop", "--timeout", "1"], &["restart"]] {
            let ran = run(sandbox
                .command(&bundle)
                .env("SYDNEY_BUNDLE_STATE_DIR", &state)
                .env("PORT", "0")
                .args(args));
            assert_eq!(ran.output.status.code(), Some(23), "{what}: {ran}");
            assert!(ran.stderr().contains(needle), "{what}: {ran}");
            ran.expect_one_line_error();
            victim.assert_alive(what);
        }
    }

    // The log, which only `daemon` (and `restart`) open: never followed.
    {
        let sandbox = Sandbox::new();
        let bundle = sandbox.sydney_bundle();
        let state = sandbox.join("S");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        let target = sandbox.join("target");
        fs::write(&target, "untouched").unwrap();
        symlink(&target, state.join("log")).unwrap();
        for command in ["daemon", "restart"] {
            let ran = run(sandbox
                .command(&bundle)
                .env("SYDNEY_BUNDLE_STATE_DIR", &state)
                .args([command, "--", "--port", "0"]));
            ran.expect_code(23)
                .expect_stderr("symlink")
                .expect_one_line_error();
        }
        assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
    }

    // A relative state directory would be a different one in another
    // working directory: refused by every command.
    {
        let sandbox = Sandbox::new();
        let bundle = sandbox.sydney_bundle();
        for args in [&["pid"][..], &["stop"], &["daemon"]] {
            let ran = run(sandbox
                .command(&bundle)
                .env("SYDNEY_BUNDLE_STATE_DIR", "relative/state")
                .args(args));
            ran.expect_code(20)
                .expect_stderr("not an absolute path")
                .expect_one_line_error();
        }
        assert!(!sandbox.join("relative").exists());
    }

    // The directory itself: a symlink to a private directory, or group-writable.
    for what in ["state dir a symlink", "state dir group-writable"] {
        let sandbox = Sandbox::new();
        let bundle = sandbox.sydney_bundle();
        let real = sandbox.join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(real.join("pid"), &record).unwrap();
        let state = if what.contains("symlink") {
            let link = sandbox.join("S");
            symlink(&real, &link).unwrap();
            link
        } else {
            fs::set_permissions(&real, fs::Permissions::from_mode(0o770)).unwrap();
            real
        };
        for args in [&["pid"][..], &["stop", "--timeout", "1"], &["daemon"]] {
            let ran = run(sandbox
                .command(&bundle)
                .env("SYDNEY_BUNDLE_STATE_DIR", &state)
                .args(args));
            assert_eq!(ran.output.status.code(), Some(23), "{what}: {ran}");
            ran.expect_one_line_error();
            victim.assert_alive(what);
        }
    }
}

/// Defence in depth: in a private state directory, a pidfile with the right
/// pid and start time is not enough; the instance lock must be held, by
/// that process.
#[test]
fn a_matching_start_time_alone_never_gets_a_process_signalled() {
    require_program("flock", "util-linux");
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let state = sandbox.join("S");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    let mut victim = Victim::start();
    let control = |args: &[&str]| {
        run(sandbox
            .command(&bundle)
            .env("SYDNEY_BUNDLE_STATE_DIR", &state)
            .args(args))
    };

    // No lock held at all.
    fs::write(state.join("pid"), victim.record()).unwrap();
    control(&["pid"]).expect_code(3);
    fs::write(state.join("pid"), victim.record()).unwrap();
    control(&["stop", "--timeout", "1"]).expect_code(3);
    victim.assert_alive("stop with no lock held");

    // The lock held, but by another process than the recorded one.
    let lock = state.join("lock");
    fs::write(&lock, "").unwrap();
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o600)).unwrap();
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "300"])
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "flock to hold the lock", || {
        !Command::new("flock")
            .args(["-n", "-s"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    });
    fs::write(state.join("pid"), victim.record()).unwrap();
    control(&["pid"]).expect_code(3);
    fs::write(state.join("pid"), victim.record()).unwrap();
    control(&["stop", "--timeout", "1"]).expect_code(3);
    let _ = holder.kill();
    let _ = holder.wait();
    victim.assert_alive("stop with the lock held by another process");
}

// ---------------------------------------------------------------------------
// Deleting what the bundle did not create
// ---------------------------------------------------------------------------

/// The issue's reproduction: a cache root shared with other data.
#[test]
fn a_shared_cache_root_is_never_walked_for_deletion() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let h = sandbox.join("H");
    fs::create_dir(&h).unwrap();
    fs::set_permissions(&h, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(h.join(".tmp-important")).unwrap();
    fs::write(h.join(".tmp-important/data"), "precious").unwrap();
    fs::create_dir_all(h.join("project")).unwrap();
    fs::write(h.join("project/.sydney-bundle"), "name=sydney\n").unwrap();

    let ran = run(sandbox.command(&bundle).env("SYDNEY_BUNDLE_DIR", &h).args([
        "exec",
        "--",
        "--version",
    ]));
    ran.expect_success()
        .expect_stderr("also holds files the bundle did not create");
    assert!(
        h.join(sydney_tree_name()).is_dir(),
        "precondition: extracted"
    );
    let ran = run(sandbox
        .command(&bundle)
        .env("SYDNEY_BUNDLE_DIR", &h)
        .args(["clean", "--all"]));
    ran.expect_success().expect_stdout("skipped");
    assert!(!ran.stdout().contains("removed"), "{ran}");
    assert_eq!(
        fs::read_to_string(h.join(".tmp-important/data")).unwrap(),
        "precious"
    );
    assert!(h.join("project/.sydney-bundle").exists());
    assert!(h.join(sydney_tree_name()).is_dir());
}

/// In a root the bundle owns, only its exact names with matching markers go:
/// look-alikes, symlinks and trees whose marker names another tree stay; a
/// real crash leftover and the real tree are removed. A cache made by an
/// older stub (no root marker, only the stub's entries) is adopted.
#[test]
fn housekeeping_removes_only_its_own_exact_names() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let cache = sandbox.cache();
    run(sandbox.command(&bundle).args(["exec", "--", "--version"])).expect_success();
    let tree = sydney_tree_name();
    assert!(
        cache.join(".sydney-bundle-cache").is_file(),
        "precondition: root marked"
    );

    // An older stub's cache: no root marker. It is adopted (only our names).
    fs::remove_file(cache.join(".sydney-bundle-cache")).unwrap();
    let leftover = cache.join(format!(".tmp-{tree}-999999-0"));
    fs::create_dir(&leftover).unwrap();
    // Look-alikes, outside data behind a symlink, a tree with a wrong marker.
    let outside = sandbox.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("data"), "precious").unwrap();
    let old_tree = "sydney-0.0.1-0123456789abcdef";
    fs::create_dir(cache.join(old_tree)).unwrap();
    fs::write(
        cache.join(old_tree).join(".sydney-bundle"),
        "name=sydney\nversion=0.0.2\npayload_sha256=0123456789abcdef00\n",
    )
    .unwrap();
    let run_clean = || {
        run(sandbox.command(&bundle).args(["clean", "--all"]))
            .expect_success()
            .stdout()
    };
    let out = run_clean();
    assert!(
        out.contains(&format!("removed {}", leftover.display())),
        "{out}"
    );
    assert!(!leftover.exists());
    assert!(!cache.join(&tree).exists(), "the real tree goes: {out}");
    assert!(
        cache.join(old_tree).is_dir(),
        "a marker naming another tree: kept"
    );
    assert!(cache.join(".sydney-bundle-cache").is_file(), "adopted");

    // Now foreign entries in an owned root: still never touched.
    let look_alikes = [
        ".tmp-important",
        ".tmp-sydney-0.1.0-0123456789abcdef",
        ".tmp-sydney-0.1.0-0123456789ABCDEF-1-0",
        ".tmp-gc-project-1",
        "sydney-backup",
    ];
    for name in look_alikes {
        fs::create_dir(cache.join(name)).unwrap();
        fs::write(cache.join(name).join("data"), "precious").unwrap();
    }
    let linked = cache.join(format!(".tmp-{tree}-999998-0"));
    symlink(&outside, &linked).unwrap();
    let out = run_clean();
    for name in look_alikes {
        assert!(cache.join(name).join("data").exists(), "{name}: {out}");
    }
    assert!(
        fs::symlink_metadata(&linked).is_ok(),
        "symlinked temp: {out}"
    );
    assert_eq!(
        fs::read_to_string(outside.join("data")).unwrap(),
        "precious"
    );
}

/// Bundles `app` and `app-extra` share a root: `app`'s housekeeping never
/// takes `app-extra`'s trees, whose names start with `app-` too.
#[test]
fn a_bundle_whose_name_extends_another_keeps_its_trees() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    write_exec(&release.join("bin/run"), "#!/bin/sh\nexit 0\n");
    let bundle = |name: &str, version: &str| {
        let path = sandbox.join(&format!("{name}-{version}"));
        let mut options = pack_options(name, "bin/run", Codec::Gzip);
        options.version = version.to_owned();
        pack(&release, &options, &path);
        path
    };
    let extra = bundle("app-extra", "1");
    run(sandbox.command(&extra).arg("start")).expect_success();
    let (extra_trees, _) = cache_contents(&sandbox.cache());
    assert_eq!(extra_trees.len(), 1, "precondition: {extra_trees:?}");
    // Cold starts of four versions of `app` (housekeeping each time), then
    // `clean --all`.
    for version in ["1", "2", "3", "4"] {
        run(sandbox.command(bundle("app", version)).arg("start")).expect_success();
    }
    run(sandbox.command(bundle("app", "4")).args(["clean", "--all"])).expect_success();
    let (trees, _) = cache_contents(&sandbox.cache());
    assert_eq!(trees, extra_trees);
}

// ---------------------------------------------------------------------------
// Failures that leave half-done state
// ---------------------------------------------------------------------------

/// Shell functions for the full-disk scripts: `check LABEL CODE` prints the
/// bundle's view (`pid`'s exit code), the servers really running in the
/// namespace, and leftover temp pidfiles.
const CHECK: &str = r#"
check() {
  $B pid >/dev/null 2>&1; p=$?
  n=$(for d in /proc/[0-9]*; do readlink $d/exe; done 2>/dev/null | grep -c '/bin/sydney$')
  t=$(ls -A "$STATE" 2>/dev/null | grep -c '^\.pid\.')
  echo "$1 code=$2 pid=$p servers=$n temps=$t"
}
fill_inodes() { i=0; while touch $T/i$i 2>/dev/null; do i=$((i+1)); done; }
fill_blocks() { dd if=/dev/zero of=$T/blocks bs=4k >/dev/null 2>&1; true; }
"#;

/// Runs `body` in a namespace with a tmpfs at `T`, the sydney bundle as
/// `$B`, its cache on the tmpfs (tree extracted first); returns the `check`
/// lines.
fn full_disk_script(sandbox: &Sandbox, tmpfs_options: &str, body: &str) -> Vec<String> {
    let bundle = sandbox.sydney_bundle();
    let t = sandbox.join("T");
    fs::create_dir(&t).unwrap();
    let script = format!(
        "set -u; T={t}; B={b}; export PORT=0; {CHECK}
         mount -t tmpfs -o {tmpfs_options},mode=0700 tmpfs $T || exit 90
         export SYDNEY_BUNDLE_DIR=$T/c
         $B exec -- --version >/dev/null || exit 91
         {body}
         umount -l $T",
        t = t.display(),
        b = bundle.display(),
    );
    let ran = run(&mut in_namespace_with_proc(&script));
    ran.expect_success();
    ran.stdout().lines().map(str::to_owned).collect()
}

/// Every line says: either the command succeeded and `pid` tracks the one
/// server running, or it failed with exit 21 and nothing runs; and no temp
/// pidfile is left either way.
#[track_caller]
fn assert_consistent(lines: &[String], expected_lines: usize) {
    assert_eq!(lines.len(), expected_lines, "{lines:#?}");
    for line in lines {
        let ok = line.contains(" code=0 pid=0 servers=1 temps=0");
        let failed_cleanly = line.contains(" code=21 pid=3 servers=0 temps=0");
        assert!(ok || failed_cleanly, "inconsistent: {line}\n{lines:#?}");
    }
}

/// `daemon` fell back past a full cache root (`~/.cache` on a tiny tmpfs)
/// to `$TMPDIR`; `pid` and `stop` find its pidfile there rather than saying
/// "not running" about the root the chain would pick first.
#[test]
fn control_commands_find_a_daemon_that_fell_back_to_another_root() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let tmpdir = sandbox.join("tmp");
    fs::create_dir(&tmpdir).unwrap();
    let ran = run(&mut in_namespace_with_proc(&format!(
        "H={h}; B={b}; export HOME=$H TMPDIR={t} PORT=0
         mkdir -p $H/.cache && mount -t tmpfs -o size=64k,mode=0700 tmpfs $H/.cache || exit 90
         $B daemon -- --bind 127.0.0.1 >/dev/null 2>&1; echo daemon=$?
         $B pid >/dev/null 2>&1; echo pid=$?
         $B stop --timeout 5 >/dev/null 2>&1; echo stop=$?
         echo servers=$(for d in /proc/[0-9]*; do readlink $d/exe; done 2>/dev/null | grep -c '/bin/sydney$')
         umount -l $H/.cache",
        h = sandbox.join("home").display(),
        t = tmpdir.display(),
        b = bundle.display()
    )));
    ran.expect_success();
    assert_eq!(
        ran.stdout(),
        "daemon=0\npid=0\nstop=0\nservers=0\n",
        "{ran}"
    );
    assert_eq!(Sandbox::list(&tmpdir), ["sydney-bundle-0"]);
}

/// A temp pidfile left by a `daemon` that was killed mid-way (a pid that
/// cannot exist: above the kernel's PID_MAX_LIMIT) is removed by the next
/// `daemon`; one of a live process, and other names, are not.
#[test]
fn daemon_removes_only_temp_pidfiles_of_dead_daemons() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let state = sandbox.join("S");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    let victim = Victim::start();
    let dead = state.join(".pid.4194305");
    let live = state.join(format!(".pid.{}", victim.pid()));
    let other = state.join(".pid.notes");
    for path in [&dead, &live, &other] {
        fs::write(path, "").unwrap();
    }
    let cmd = |args: &[&str]| {
        let mut command = sandbox.command(&bundle);
        command
            .env("SYDNEY_BUNDLE_STATE_DIR", &state)
            .env("PORT", "0")
            .args(args);
        command
    };
    run(&mut cmd(&["daemon", "--", "--bind", "127.0.0.1"])).expect_success();
    run(&mut cmd(&["stop", "--timeout", "5"])).expect_success();
    assert!(!dead.exists());
    assert!(live.exists() && other.exists());
}

/// The issue's reproduction: the tree fits, the pidfile does not.
#[test]
fn daemon_on_a_full_disk_never_leaves_an_untracked_server() {
    let sandbox = Sandbox::new();
    let lines = full_disk_script(
        &sandbox,
        "size=2m",
        "STATE=$T/c/state/sydney; fill_blocks
         $B daemon -- --bind 127.0.0.1 >/dev/null 2>&1; check daemon $?",
    );
    assert_consistent(&lines, 1);
    assert!(lines[0].contains("code=21"), "{lines:#?}");
}

/// Each step of `daemon` and of `restart` (state dir, claim lock, instance
/// lock, log, pidfile) failing with ENOSPC in turn, by leaving 0, 1, 2, ...
/// inodes free; then `restart` and `stop` of a running instance on a disk
/// with no inode and no block left.
#[test]
fn every_step_of_daemon_restart_and_stop_fails_cleanly_on_a_full_disk() {
    let sandbox = Sandbox::new();
    let steps = 7;
    let lines = full_disk_script(
        &sandbox,
        "size=4m,nr_inodes=200",
        &format!(
            "for cmd in daemon restart; do for k in $(seq 0 {last}); do
               export SYDNEY_BUNDLE_STATE_DIR=$T/s-$cmd-$k; STATE=$SYDNEY_BUNDLE_STATE_DIR
               fill_inodes; j=0; while [ $j -lt $k ]; do rm $T/i$j; j=$((j+1)); done
               $B $cmd -- --bind 127.0.0.1 >/dev/null 2>&1; check $cmd-$k $?
               $B stop --timeout 5 >/dev/null 2>&1; rm -f $T/i*
             done; done
             export SYDNEY_BUNDLE_STATE_DIR=$T/s-full; STATE=$SYDNEY_BUNDLE_STATE_DIR
             $B daemon -- --bind 127.0.0.1 >/dev/null 2>&1; check started $?
             fill_inodes; fill_blocks
             $B restart -- --bind 127.0.0.1 >/dev/null 2>&1; check restart-full $?
             $B stop --timeout 5 >/dev/null 2>&1; c=$?
             n=$(for d in /proc/[0-9]*; do readlink $d/exe; done 2>/dev/null | grep -c '/bin/sydney$')
             echo \"stop-full code=$c servers=$n pidfile=$(ls $STATE | grep -c '^pid$')\"",
            last = steps - 1
        ),
    );
    let (stop, checks) = lines.split_last().unwrap();
    assert_consistent(checks, 2 * steps + 2);
    for cmd in ["daemon", "restart"] {
        let first = checks
            .iter()
            .find(|l| l.starts_with(&format!("{cmd}-0 ")))
            .unwrap();
        assert!(first.contains("code=21"), "no inode at all: {first}");
        let last = checks
            .iter()
            .find(|l| l.starts_with(&format!("{cmd}-{} ", steps - 1)))
            .unwrap();
        assert!(last.contains("code=0"), "enough inodes: {last}");
    }
    // Every step failed once: the first success comes after a failure for
    // each inode the command needs.
    let failures = checks.iter().filter(|l| l.contains("code=21")).count();
    assert!(failures >= 2 * 5, "{checks:#?}");
    assert!(
        checks
            .iter()
            .any(|l| l.starts_with("started ") && l.contains("code=0"))
    );
    assert_eq!(
        stop, "stop-full code=0 servers=0 pidfile=0",
        "stop on a full disk"
    );
}

/// `extract` into an existing empty directory that fails (a corrupt
/// payload) leaves that directory as it was, and no partial copy.
#[test]
fn a_failed_extract_keeps_the_empty_directory_it_was_given() {
    let mut bytes = fs::read(&artifacts().bundle).unwrap();
    let payload = Bundle::open(&bytes)
        .unwrap()
        .layout()
        .trailer
        .payload
        .clone();
    bytes[(payload.start + payload.end) as usize / 2] ^= 0x20;
    let sandbox = Sandbox::new();
    let path = write_bundle(&sandbox, "damaged", &bytes);
    let out = sandbox.join("out");
    fs::create_dir(&out).unwrap();
    run(sandbox.command(&path).args(["extract", "out"]))
        .expect_code(14)
        .expect_one_line_error();
    assert!(out.is_dir(), "the empty directory was removed");
    assert_eq!(Sandbox::list(sandbox.path()), ["damaged", "home", "out"]);
}

// ---------------------------------------------------------------------------
// Sizes not enforced
// ---------------------------------------------------------------------------

/// A manifest that understates the tar stream, the files' bytes or the
/// entry count: extraction stops (exit 14) and leaves nothing.
#[test]
fn extraction_enforces_the_declared_sizes() {
    let big = vec![0u8; 12 << 20];
    let tar = tar_of(&[
        tar_record(b'5', "bin/", 0o755, "", b""),
        tar_record(b'0', "bin/app", 0o755, "", &big),
    ]);
    type Lie = fn(&mut Manifest);
    let cases: Vec<(&str, Codec, Lie, &str)> = vec![
        (
            "zstd bomb: tar_len 1 MiB",
            Codec::Zstd,
            |m| m.tar_len = 1 << 20,
            "inflates to more than",
        ),
        (
            "gzip bomb: tar_len 5 MiB (streamed)",
            Codec::Gzip,
            |m| m.tar_len = 5 << 20,
            "inflates to more than",
        ),
        (
            "files' bytes understated",
            Codec::Zstd,
            |m| m.unpacked_bytes = 1 << 20,
            "bytes of files its manifest declares",
        ),
        (
            "entry count understated",
            Codec::Gzip,
            |m| m.file_count = 1,
            "entries its manifest declares",
        ),
    ];
    for (what, codec, lie, needle) in cases {
        let sandbox = Sandbox::new();
        let path = write_bundle(&sandbox, "forged", &forged_bundle(codec, &tar, lie));
        let ran = run(sandbox.command(&path).arg("start"));
        assert_eq!(ran.output.status.code(), Some(14), "{what}: {ran}");
        assert!(ran.stderr().contains(needle), "{what}: {ran}");
        ran.expect_one_line_error();
        assert_cache_clean(&sandbox, what);
    }
}

/// Free space is checked against the declared size before extracting.
#[test]
fn too_little_space_is_reported_before_extracting() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    write_exec(&release.join("bin/app"), "#!/bin/sh\necho hi\n");
    fs::write(release.join("data"), vec![7u8; 2 << 20]).unwrap();
    let bundle = sandbox.join("app");
    pack(
        &release,
        &pack_options("app", "bin/app", Codec::Gzip),
        &bundle,
    );
    let c = sandbox.join("C");
    fs::create_dir(&c).unwrap();
    let ran = run(&mut in_namespace_with_proc(&format!(
        "mount -t tmpfs -o size=256k,mode=0700 tmpfs {c} && \
         SYDNEY_BUNDLE_DIR={c} {b} start; code=$?; echo \"left: $(ls -A {c})\"; exit $code",
        c = c.display(),
        b = bundle.display()
    )));
    ran.expect_code(21)
        .expect_stderr("the payload needs 2049 KB, 256 KB free")
        .expect_stdout("left: \n")
        .expect_one_line_error();
    // `extract DIR` checks the same before writing anything.
    let ran = run(&mut in_namespace_with_proc(&format!(
        "mount -t tmpfs -o size=256k,mode=0700 tmpfs {c} && \
         {b} extract {c}/out; code=$?; echo \"left: $(ls -A {c})\"; exit $code",
        c = c.display(),
        b = bundle.display()
    )));
    ran.expect_code(21)
        .expect_stderr("the payload needs 2049 KB, 256 KB free")
        .expect_stdout("left: \n")
        .expect_one_line_error();
}

// ---------------------------------------------------------------------------
// The reserved marker name, and verify --deep
// ---------------------------------------------------------------------------

/// `.sydney-bundle` at the top of a payload is refused when packing and when
/// unpacking (exit 15), as a symlink, a directory or a file.
#[test]
fn the_marker_name_is_reserved_in_payloads() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    write_exec(&release.join("bin/run"), "#!/bin/sh\necho hi\n");
    symlink("bin/run", release.join(".sydney-bundle")).unwrap();
    let err = pack_to_path(
        &release,
        &stub(Codec::Gzip),
        &pack_options("app", "bin/run", Codec::Gzip),
        &sandbox.join("out"),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    assert!(!sandbox.join("out").exists());

    let run_script = tar_record(b'0', "bin/run", 0o755, "", b"#!/bin/sh\necho hi\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "symlink onto the entry",
            tar_record(b'2', ".sydney-bundle", 0o777, "bin/run", b""),
        ),
        (
            "directory",
            tar_record(b'5', ".sydney-bundle/", 0o755, "", b""),
        ),
        (
            "regular file",
            tar_record(b'0', ".sydney-bundle", 0o644, "", b"name=x\n"),
        ),
    ];
    for (what, record) in cases {
        let tar = tar_of(&[
            tar_record(b'5', "bin/", 0o755, "", b""),
            run_script.clone(),
            record,
        ]);
        let sandbox = Sandbox::new();
        let path = write_bundle(
            &sandbox,
            "forged",
            &forged_bundle(Codec::Gzip, &tar, |m| m.entry = "bin/run".into()),
        );
        let ran = run(sandbox.command(&path).arg("start"));
        assert_eq!(ran.output.status.code(), Some(15), "{what}: {ran}");
        assert!(ran.stderr().contains("reserved"), "{what}: {ran}");
        ran.expect_one_line_error();
        assert_cache_clean(&sandbox, what);
    }
}

/// Extra files, a setuid or setgid bit, and a missing or edited marker each
/// fail `verify --deep` with their own exit code, and are listed.
#[test]
fn verify_deep_names_every_kind_of_tampering() {
    type Tamper = fn(&Path);
    let cases: Vec<(&str, Tamper, i32, &str)> = vec![
        (
            "added file",
            |t| fs::write(t.join("bin/extra"), "x").unwrap(),
            7,
            "extra: bin/extra",
        ),
        (
            "added setuid file",
            |t| {
                fs::write(t.join("bin/su"), "x").unwrap();
                fs::set_permissions(t.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
            },
            8,
            "privileged: bin/su",
        ),
        (
            "setuid bit added",
            |t| {
                fs::set_permissions(t.join("bin/sydney"), fs::Permissions::from_mode(0o4755))
                    .unwrap()
            },
            8,
            "privileged: bin/sydney",
        ),
        (
            "setgid directory",
            |t| fs::set_permissions(t.join("etc"), fs::Permissions::from_mode(0o2755)).unwrap(),
            8,
            "privileged: etc",
        ),
        (
            "marker removed",
            |t| fs::remove_file(t.join(".sydney-bundle")).unwrap(),
            9,
            "marker: .sydney-bundle is missing",
        ),
        (
            "marker edited",
            |t| fs::write(t.join(".sydney-bundle"), "name=other\n").unwrap(),
            9,
            "marker:",
        ),
        (
            "file removed and one added",
            |t| {
                fs::remove_file(t.join("etc/sydney.toml")).unwrap();
                fs::write(t.join("etc/other.toml"), "").unwrap();
            },
            6,
            "missing: etc/sydney.toml",
        ),
    ];
    for (what, tamper, code, needle) in cases {
        let sandbox = Sandbox::new();
        let bundle = sandbox.sydney_bundle();
        run(sandbox.command(&bundle).args(["exec", "--", "--version"])).expect_success();
        run(sandbox.command(&bundle).args(["verify", "--deep"]))
            .expect_success()
            .expect_stdout("tree ok");
        tamper(&sandbox.cache().join(sydney_tree_name()));
        let ran = run(sandbox.command(&bundle).args(["verify", "--deep"]));
        assert_eq!(ran.output.status.code(), Some(code), "{what}: {ran}");
        assert!(ran.stderr().contains(needle), "{what}: {ran}");
    }
}

// ---------------------------------------------------------------------------
// Misleading errors
// ---------------------------------------------------------------------------

/// Runs `start` on `bytes`; expects `code` and `needle`, and no tree.
#[track_caller]
fn expect_start_error(what: &str, bytes: &[u8], code: i32, needle: &str) {
    let sandbox = Sandbox::new();
    let path = write_bundle(&sandbox, "bundle", bytes);
    let ran = run(sandbox.command(&path).arg("start"));
    assert_eq!(ran.output.status.code(), Some(code), "{what}: {ran}");
    assert!(
        ran.stderr().contains(needle),
        "{what}: lacks {needle:?}\n{ran}"
    );
    ran.expect_one_line_error();
    assert_cache_clean(&sandbox, what);
}

#[test]
fn damaged_and_cut_files_name_the_true_cause() {
    let bytes = fs::read(&artifacts().bundle).unwrap();
    let stub_len = Bundle::open(&bytes).unwrap().layout().stub_len as usize;
    // The lead-in's version byte flipped while the trailer says 1: damage.
    let mut flipped = bytes.clone();
    flipped[stub_len + 8] ^= 1;
    expect_start_error("lead-in version 0", &flipped, 14, "lead-in version");
    let mut flipped = bytes.clone();
    flipped[stub_len + 9] = 7;
    expect_start_error("lead-in version 1793", &flipped, 14, "lead-in version");
    // What cannot be caught (README, Troubleshooting): a cut inside the
    // stub's own loaded code crashes before any of our code runs.
    {
        use std::os::unix::process::ExitStatusExt;
        let sandbox = Sandbox::new();
        let path = write_bundle(&sandbox, "cut", &bytes[..stub_len / 2]);
        let ran = run(sandbox.command(&path).arg("version"));
        assert_eq!(ran.output.status.signal(), Some(11), "{ran}");
    }
    // Cuts just after the lead-in's magic: the file then ends in the magic.
    for extra in [8, 9, 12, LEAD_IN_LEN - 1] {
        expect_start_error(
            &format!("cut at stub + {extra}"),
            &bytes[..stub_len + extra],
            11,
            "truncated bundle",
        );
    }
}

#[test]
fn something_in_the_way_of_the_tree_is_named() {
    for what in ["file", "symlink"] {
        let sandbox = Sandbox::new();
        let bundle = sandbox.sydney_bundle();
        let cache = sandbox.cache();
        fs::create_dir(&cache).unwrap();
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o700)).unwrap();
        let in_the_way = cache.join(sydney_tree_name());
        if what == "file" {
            fs::write(&in_the_way, "not a tree").unwrap();
        } else {
            let elsewhere = sandbox.join("elsewhere");
            fs::create_dir(&elsewhere).unwrap();
            symlink(&elsewhere, &in_the_way).unwrap();
        }
        let ran = run(sandbox.command(&bundle).args(["exec", "--", "--version"]));
        ran.expect_code(20)
            .expect_stderr("is in the way")
            .expect_stderr("remove it")
            .expect_one_line_error();
        assert!(fs::symlink_metadata(&in_the_way).is_ok(), "{what} kept");
    }
}

#[test]
fn payload_entries_without_their_parent_directory_are_unsafe() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "parent not in the tar",
            tar_of(&[tar_record(b'0', "bin/app", 0o755, "", b"#!/bin/sh\n")]),
            "parent directory is not in the payload",
        ),
        (
            "parent is a file",
            tar_of(&[
                tar_record(b'0', "bin", 0o644, "", b"x"),
                tar_record(b'0', "bin/app", 0o755, "", b"#!/bin/sh\n"),
            ]),
            "parent is not a directory",
        ),
    ];
    for (what, tar, needle) in cases {
        expect_start_error(what, &forged_bundle(Codec::Gzip, &tar, |_| {}), 15, needle);
    }
}

#[test]
fn an_entry_that_is_not_executable_says_so() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "mode 0644",
            tar_of(&[
                tar_record(b'5', "bin/", 0o755, "", b""),
                tar_record(b'0', "bin/app", 0o644, "", b"#!/bin/sh\necho hi\n"),
            ]),
            "is not executable (mode 644)",
        ),
        (
            "a directory",
            tar_of(&[
                tar_record(b'5', "bin/", 0o755, "", b""),
                tar_record(b'5', "bin/app/", 0o755, "", b""),
            ]),
            "not a regular file",
        ),
    ];
    for (what, tar, needle) in cases {
        let sandbox = Sandbox::new();
        let path = write_bundle(&sandbox, "app", &forged_bundle(Codec::Gzip, &tar, |_| {}));
        let ran = run(sandbox.command(&path).arg("start"));
        assert_eq!(ran.output.status.code(), Some(126), "{what}: {ran}");
        assert!(ran.stderr().contains(needle), "{what}: {ran}");
        assert!(!ran.stderr().contains("noexec"), "{what}: {ran}");
        ran.expect_one_line_error();
    }
}

/// Mode 0111 (execute only) run by a user who cannot read it.
#[test]
fn an_unreadable_bundle_says_it_must_be_readable() {
    let other = OtherUser::create("c");
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    fs::set_permissions(sandbox.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for mode in [0o111, 0o711] {
        fs::set_permissions(&bundle, fs::Permissions::from_mode(mode)).unwrap();
        let ran = other.sh(&format!(
            "HOME=/nonexistent {} exec -- --version",
            bundle.display()
        ));
        ran.expect_code(22)
            .expect_stderr("the bundle must be readable")
            .expect_stderr("chmod a+r")
            .expect_one_line_error();
    }
}
