//! daemon, pid, healthcheck, restart, stop: a mix-release lifecycle with no
//! shell, end to end; stale and garbage pidfiles; PID 1 duties.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::bundle_format::Codec;
use e2e::*;

struct Daemonized {
    sandbox: Sandbox,
    bundle: PathBuf,
    port: u16,
}

impl Daemonized {
    fn new() -> Daemonized {
        let sandbox = Sandbox::new();
        let bundle = sandbox.sydney_bundle();
        Daemonized {
            sandbox,
            bundle,
            port: free_port(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut command = self.sandbox.command(&self.bundle);
        command.args(args).env("PORT", self.port.to_string());
        command
    }

    fn state(&self) -> PathBuf {
        self.sandbox.cache().join("state/sydney")
    }

    fn pid(&self) -> i32 {
        let ran = run(&mut self.cmd(&["pid"]));
        ran.expect_success();
        ran.stdout().trim().parse().unwrap()
    }
}

impl Drop for Daemonized {
    fn drop(&mut self) {
        let _ = run(&mut self.cmd(&["stop", "--timeout", "2"]));
    }
}

fn alive(pid: i32) -> bool {
    // State from /proc: gone, or a zombie, counts as dead.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn daemon_pid_healthcheck_restart_stop() {
    let d = Daemonized::new();
    let ran = run(&mut d.cmd(&["daemon", "--", "--bind", "127.0.0.1"]));
    ran.expect_success().expect_stdout("started sydney (pid ");
    let first = d.pid();
    assert!(alive(first));
    // daemon returns once the process runs; the port opens a moment later.
    let addr = format!("127.0.0.1:{}", d.port).parse().unwrap();
    assert_eq!(
        wait_for_http(addr, "/", Duration::from_secs(10)),
        (200, "Ok".into())
    );
    run(&mut d.cmd(&["healthcheck"]))
        .expect_success()
        .expect_stdout("200");

    // Detached: a session of its own with no terminal, output in the log.
    let session = |pid: &str| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<String> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (fields[3].clone(), fields[4].clone())
    };
    let (daemon_session, daemon_tty) = session(&first.to_string());
    assert_ne!(
        daemon_session,
        session("self").0,
        "still in the caller's session"
    );
    assert_eq!(daemon_tty, "0", "has a controlling terminal");
    let log = fs::read_to_string(d.state().join("log")).unwrap();
    assert!(log.contains("listening on"), "{log}");

    // A second daemon is refused.
    run(&mut d.cmd(&["daemon"]))
        .expect_code(4)
        .expect_stderr(&format!("already running (pid {first})"))
        .expect_one_line_error();

    let ran = run(&mut d.cmd(&["restart", "--", "--bind", "127.0.0.1"]));
    ran.expect_success()
        .expect_stdout(&format!("stopped sydney (pid {first})"));
    let second = d.pid();
    assert_ne!(first, second);
    assert!(!alive(first));
    assert_eq!(wait_for_http(addr, "/", Duration::from_secs(10)).0, 200);

    let started = Instant::now();
    run(&mut d.cmd(&["stop"]))
        .expect_success()
        .expect_stdout(&format!("pid {second}"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(!alive(second));
    run(&mut d.cmd(&["healthcheck", "--timeout-ms", "500"]))
        .expect_code(5)
        .expect_stderr("unhealthy: cannot connect");
    run(&mut d.cmd(&["stop"]))
        .expect_code(3)
        .expect_stderr("sydney is not running")
        .expect_one_line_error();
    run(&mut d.cmd(&["pid"]))
        .expect_code(3)
        .expect_stderr("not running");
}

#[test]
fn garbage_and_stale_pidfiles_are_detected_and_never_signalled() {
    let d = Daemonized::new();
    fs::create_dir_all(d.state()).unwrap();

    fs::write(d.state().join("pid"), "not a pid\n").unwrap();
    run(&mut d.cmd(&["pid"])).expect_code(3);
    run(&mut d.cmd(&["stop"]))
        .expect_code(3)
        .expect_stderr("garbage")
        .expect_stderr("not running");
    assert!(
        !d.state().join("pid").exists(),
        "the garbage pidfile was not removed"
    );

    // A live, unrelated process in the pidfile: not ours, never signalled.
    let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = bystander.id();
    fs::write(d.state().join("pid"), format!("{pid} 12345\n")).unwrap();
    run(&mut d.cmd(&["stop", "--timeout", "1"]))
        .expect_code(3)
        .expect_stderr("stale");
    run(&mut d.cmd(&["pid"])).expect_code(3);
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();

    // A daemon still starts over the leftovers.
    fs::write(d.state().join("pid"), "999999 1\n").unwrap();
    run(&mut d.cmd(&["daemon", "--", "--bind", "127.0.0.1"])).expect_success();
    assert!(alive(d.pid()));
}

#[test]
fn stop_escalates_to_sigkill_after_the_timeout() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    // It says when SIGTERM is ignored: stopping it before that would test
    // nothing (and a loaded machine can take a while to get there).
    let ready = sandbox.join("trap-set");
    write_exec(
        &release.join("bin/stubborn"),
        &format!(
            "#!/bin/sh\ntrap '' TERM\n: > {}\nwhile :; do sleep 0.05; done\n",
            ready.display()
        ),
    );
    let bundle = sandbox.join("stubborn");
    pack(
        &release,
        &pack_options("stubborn", "bin/stubborn", Codec::Gzip),
        &bundle,
    );
    run(sandbox.command(&bundle).arg("daemon")).expect_success();
    eventually(Duration::from_secs(30), "the trap", || ready.exists());
    let started = Instant::now();
    run(sandbox.command(&bundle).args(["stop", "--timeout", "1"]))
        .expect_success()
        .expect_stderr("sending SIGKILL");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "{took:?}"
    );
    run(sandbox.command(&bundle).arg("pid")).expect_code(3);
}

#[test]
fn daemon_reports_an_entry_that_cannot_start() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    write_exec(&release.join("bin/app"), "#!/nonexistent/interpreter\n");
    let bundle = sandbox.join("broken");
    pack(
        &release,
        &pack_options("broken", "bin/app", Codec::Gzip),
        &bundle,
    );
    run(sandbox.command(&bundle).arg("daemon"))
        .expect_code(127)
        .expect_stderr("/nonexistent/interpreter does not exist on this host")
        .expect_one_line_error();
    run(sandbox.command(&bundle).arg("pid")).expect_code(3);
}

/// The real case from the issue: an entry script that orphans background
/// children and then execs a long sleep, as PID 1 of a fresh pid namespace.
#[test]
fn as_pid_1_it_reaps_orphans_and_forwards_sigterm() {
    require_root();
    require_program("unshare", "util-linux");
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    write_exec(
        &release.join("bin/orphans"),
        "#!/bin/sh\n\
         # Each subshell starts a sleeper and exits at once: the sleepers are\n\
         # orphans, re-parented to PID 1; the test ends them, and they stay\n\
         # zombies unless PID 1 reaps them.\n\
         for i in 1 2 3 4 5; do ( sleep 999 & ) ; done\n\
         exec sleep 1000\n",
    );
    let bundle = sandbox.join("orphans");
    pack(
        &release,
        &pack_options("orphans", "bin/orphans", Codec::Gzip),
        &bundle,
    );

    // Killed on drop, also when an assertion fails: --kill-child then takes
    // the whole namespace with it.
    let mut unshare = KilledOnDrop(
        sandbox
            .command("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(&bundle)
            .arg("start")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // PID 1 of the namespace is unshare's child: our stub, as init.
    let init = {
        let mut found = None;
        eventually(Duration::from_secs(10), "the namespace's init", || {
            found = children(unshare.0.id() as i32).first().copied();
            found.is_some()
        });
        found.unwrap()
    };
    let running = |args: &str| {
        let cmdline = format!("sleep\u{0}{args}\u{0}");
        move |pid: &i32| {
            fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline)
        }
    };
    // Precondition: the entry runs, and the five orphans are PID 1's
    // children now.
    let mut orphans = Vec::new();
    eventually(
        Duration::from_secs(10),
        "the entry and five orphans under PID 1",
        || {
            let under_init = children(init);
            orphans = under_init.iter().copied().filter(running("999")).collect();
            under_init.iter().any(running("1000")) && orphans.len() == 5
        },
    );
    // End them: each becomes a zombie until its parent, PID 1, reaps it.
    for &orphan in &orphans {
        kill(orphan, SIGKILL);
    }
    eventually(Duration::from_secs(10), "PID 1 to reap the orphans", || {
        orphans
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    let zombies: Vec<i32> = descendants(init)
        .into_iter()
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| s.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
        })
        .collect();
    assert!(zombies.is_empty(), "zombies left under PID 1: {zombies:?}");

    let started = Instant::now();
    kill(init, SIGTERM);
    let mut status = None;
    eventually(Duration::from_secs(3), "PID 1 to act on SIGTERM", || {
        status = unshare.0.try_wait().unwrap();
        status.is_some()
    });
    // The entry (sleep) died of SIGTERM: init exits 128 + 15.
    assert_eq!(
        status.unwrap().code(),
        Some(143),
        "{status:?} after {:?}",
        started.elapsed()
    );
}

/// A child process killed and reaped when dropped.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        for child in children(p) {
            out.push(child);
            stack.push(child);
        }
    }
    out
}
