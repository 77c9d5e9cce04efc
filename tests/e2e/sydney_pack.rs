//! `sydney-pack`, the static packing tool (built by `cargo xtask dist`):
//! alone in an empty root, the same bytes as `cargo xtask pack`, a mix
//! release's lifecycle through its bundle, shell completions, and each bad
//! input's error and exit code (docs/SYDNEY_PACK.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::*;

use crate::mix::mix_release;

/// `sydney-pack DIR --out OUT` with a clean environment.
fn sydney_pack_cmd(sandbox: &Sandbox, dir: &Path, out: &Path) -> Command {
    let mut command = sandbox.command(sydney_pack());
    command.arg(dir).arg("--out").arg(out);
    command
}

/// The test's mix release, packed with no flags but `--out`.
fn packed_mix(sandbox: &Sandbox) -> PathBuf {
    let bundle = sandbox.join("hello");
    run_timeout(
        &mut sydney_pack_cmd(sandbox, mix_release(), &bundle),
        Duration::from_secs(300),
    )
    .expect_success();
    bundle
}

#[test]
fn sydney_pack_alone_in_an_empty_root_packs_a_mix_release() {
    require_root();
    let sandbox = Sandbox::new();
    let root = sandbox.join("root");
    fs::create_dir(&root).unwrap();
    fs::copy(sydney_pack(), root.join("sydney-pack")).unwrap();
    copy_tree(mix_release(), &root.join("rel"));
    // Precondition: the root holds the tool and the release, nothing else
    // (no /bin/sh, no libc, no /proc, no /tmp, no /dev).
    assert_eq!(Sandbox::list(&root), ["rel", "sydney-pack"]);
    let ran = run_timeout(
        Command::new("chroot")
            .arg(&root)
            .args(["/sydney-pack", "/rel", "--out", "/hello"])
            .env_clear()
            // Only for finding chroot here; inside, nothing is looked up.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        Duration::from_secs(300),
    );
    ran.expect_success()
        .expect_stderr("/rel is a mix release (hello 0.1.0")
        .expect_stderr("entry       bin/hello")
        .expect_stderr("codec       zstd")
        .expect_stderr("packed hello 0.1.0 into /hello");

    let bundle = root.join("hello");
    let port = free_port();
    let server = Server::start(
        sandbox
            .command(&bundle)
            .arg("start")
            .env("PORT", port.to_string())
            .env("RELEASE_DISTRIBUTION", "none"),
        Duration::from_secs(60),
    );
    assert_eq!(server.get("/"), (200, "Ok".to_owned()));
    run(sandbox.command(&bundle).arg("version"))
        .expect_success()
        .expect_stdout("hello 0.1.0");
    run(Command::new(sydney_pack()).arg("inspect").arg(&bundle))
        .expect_success()
        .expect_stdout("entry:       bin/hello")
        .expect_stdout("args:        start")
        .expect_stdout("env:         RELEASE_TMP=${BUNDLE_STATE_DIR}/tmp (unless set)")
        .expect_stdout("needs tree:  yes");
}

#[test]
fn sydney_pack_and_xtask_pack_write_the_same_bytes() {
    let sandbox = Sandbox::new();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // (folder, flags both front ends take the same way)
    let release = artifacts().release.clone();
    // A signed bundle too: ed25519 signatures are deterministic, and both
    // front ends put the same signing stub in front.
    let key = sandbox.join("release.key");
    run(sandbox.command(sydney_pack()).arg("keygen").arg(&key)).expect_success();
    let key = key.to_str().unwrap();
    let cases: [(&Path, Vec<&str>); 4] = [
        (mix_release(), vec![]),
        (
            mix_release(),
            vec![
                "--codec",
                "gzip",
                "--level",
                "6",
                "--arg",
                "start",
                "--arg",
                "--x",
                "--env",
                "A=b",
                "--cache-dir",
                "/var/cache/hello",
            ],
        ),
        (&release, vec!["--entry", "bin/sydney", "--name", "sydney"]),
        (
            &release,
            vec!["--entry", "bin/sydney", "--name", "sydney", "--sign", key],
        ),
    ];
    for (n, (dir, flags)) in cases.iter().enumerate() {
        let by_tool = sandbox.join(&format!("tool-{n}"));
        let by_xtask = sandbox.join(&format!("xtask-{n}"));
        let mut tool = sydney_pack_cmd(&sandbox, dir, &by_tool);
        tool.args(flags);
        // The version flag is the only one spelled differently.
        let generic = flags.contains(&"--entry");
        if generic {
            tool.args(["--app-version", "1.0.0"]);
        }
        run_timeout(&mut tool, Duration::from_secs(300)).expect_success();
        // xtask is built in its own target dir: the outer `cargo test`
        // holds the lock on the workspace's.
        let mut xtask = Command::new(&cargo);
        xtask
            .current_dir(root())
            .args(["run", "--quiet", "--locked", "--package", "xtask"])
            .arg("--target-dir")
            .arg(root().join("target/xtask-e2e"))
            .args(["--", "pack"])
            .arg(dir)
            .arg("--out")
            .arg(&by_xtask)
            .args(flags)
            .env_remove("RUSTFLAGS");
        if generic {
            xtask.args(["--version", "1.0.0"]);
        }
        run_timeout(&mut xtask, Duration::from_secs(1800)).expect_success();
        let (a, b) = (fs::read(&by_tool).unwrap(), fs::read(&by_xtask).unwrap());
        assert!(a.len() > 100_000, "case {n}: {} bytes", a.len());
        assert!(a == b, "case {n}: sydney-pack and cargo xtask pack differ");
    }
}

#[test]
fn a_packed_mix_release_stops_cleanly_and_reaches_its_own_commands() {
    let sandbox = Sandbox::new();
    let bundle = packed_mix(&sandbox);
    let port = free_port();
    // Distribution on (rpc needs it), with a private epmd port and node
    // name so that no other test's node is reached.
    let epmd_port = free_port();
    let node = format!("hello{}", std::process::id());
    let cmd = |args: &[&str]| {
        let mut command = sandbox.command(&bundle);
        command
            .args(args)
            .env("PORT", port.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RELEASE_NODE", &node);
        command
    };
    // Whatever happens, stop the node, then the epmd it started on that
    // port (with the release's own epmd: `-kill` ends that daemon only).
    struct Cleanup(Command, PathBuf, u16);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.output();
            let Some(tree) = Sandbox::list(&self.1)
                .into_iter()
                .find(|n| n.starts_with("hello-"))
            else {
                return;
            };
            let tree = self.1.join(tree);
            let Some(erts) = Sandbox::list(&tree)
                .into_iter()
                .find(|n| n.starts_with("erts-"))
            else {
                return;
            };
            let _ = Command::new(tree.join(erts).join("bin/epmd"))
                .arg("-kill")
                .env("ERL_EPMD_PORT", self.2.to_string())
                .output();
        }
    }
    let _cleanup = Cleanup(
        cmd(&["stop", "--timeout", "10"]),
        sandbox.cache(),
        epmd_port,
    );

    run(&mut cmd(&["daemon"])).expect_success();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        wait_for_http(addr, "/", Duration::from_secs(60)),
        (200, "Ok".into())
    );
    // `exec --` reaches the release's own commands: rpc into the running
    // node (which booted with its runtime config), eval in a new one.
    run_timeout(
        &mut cmd(&[
            "exec",
            "--",
            "rpc",
            "IO.puts(Application.get_env(:hello, :started_by))",
        ]),
        Duration::from_secs(60),
    )
    .expect_success()
    .expect_stdout("runtime");
    run_timeout(
        &mut cmd(&["exec", "--", "eval", "IO.puts(6 * 7)"]),
        Duration::from_secs(60),
    )
    .expect_success()
    .expect_stdout("42");
    // The runtime config went to RELEASE_TMP, in the state directory.
    let tmp = sandbox.cache().join("state/hello/tmp");
    let written = Sandbox::list(&tmp);
    assert!(
        written.iter().any(|f| f.ends_with(".runtime.config")),
        "{written:?}"
    );
    // stop: SIGTERM, which the BEAM takes as an orderly shutdown.
    run(&mut cmd(&["stop", "--timeout", "30"])).expect_success();
    let log = fs::read_to_string(sandbox.cache().join("state/hello/log")).unwrap();
    assert!(log.contains("hello: stopped cleanly"), "log:\n{log}");
    run(&mut cmd(&["pid"])).expect_code(3);
}

#[test]
fn a_packed_mix_release_boots_from_a_read_only_tree() {
    require_root();
    require_program("unshare", "util-linux");
    let sandbox = Sandbox::new();
    let bundle = packed_mix(&sandbox);
    // Unpack it, as an image build would.
    run_timeout(
        sandbox
            .command(&bundle)
            .args(["exec", "--", "eval", "IO.puts(:unpacked)"])
            .env("RELEASE_DISTRIBUTION", "none"),
        Duration::from_secs(60),
    )
    .expect_success();
    let tree = sandbox.cache().join(
        Sandbox::list(&sandbox.cache())
            .into_iter()
            .find(|n| n.starts_with("hello-"))
            .unwrap(),
    );
    let state = sandbox.join("state");
    fs::create_dir(&state).unwrap();
    let read_only_start = |extra_env: Option<(&str, String)>| {
        let port = free_port();
        let mut command = sandbox.command("unshare");
        command
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
            ])
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "mount --bind {c} {c} && mount -o remount,bind,ro {c} && exec {b} start",
                c = sandbox.cache().display(),
                b = bundle.display()
            ))
            .env("PORT", port.to_string())
            .env("RELEASE_DISTRIBUTION", "none")
            .env("SYDNEY_BUNDLE_STATE_DIR", &state);
        if let Some((name, value)) = extra_env {
            command.env(name, value);
        }
        Server::try_start(&mut command, Duration::from_secs(60))
    };
    // Control: the release's own default (RELEASE_TMP=$RELEASE_ROOT/tmp)
    // cannot boot from a read-only tree.
    let control = read_only_start(Some(("RELEASE_TMP", format!("{}/tmp", tree.display()))));
    assert!(
        control.is_err(),
        "booted with RELEASE_TMP in a read-only tree"
    );
    let server = read_only_start(None).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(server.get("/"), (200, "Ok".to_owned()));
    assert!(
        Sandbox::list(&state.join("tmp"))
            .iter()
            .any(|f| f.ends_with(".runtime.config"))
    );
}

#[test]
fn shell_completions_are_generated() {
    for (shell, marker) in [
        ("bash", "complete -F _sydney__pack"),
        ("zsh", "#compdef sydney-pack"),
        ("fish", "complete -c sydney-pack"),
    ] {
        let ran = run(Command::new(sydney_pack()).args(["completions", shell]));
        ran.expect_success()
            .expect_stdout(marker)
            .expect_stdout("app-version");
    }
    let script = run(Command::new(sydney_pack()).args(["completions", "bash"])).stdout();
    let checked = run(Command::new("bash").args(["-n", "-c", &script]));
    checked.expect_success();
    run(Command::new(sydney_pack()).arg("--version"))
        .expect_success()
        .expect_stdout("sydney-pack 0.1.0");
    run(Command::new(sydney_pack()).arg("--help"))
        .expect_success()
        .expect_stdout("Examples:");
}

#[test]
fn each_bad_input_has_its_error_and_exit_code() {
    let sandbox = Sandbox::new();
    let plain = sandbox.join("plain");
    write_exec(&plain.join("bin/server"), "#!/bin/sh\n");
    let file = sandbox.join("file.txt");
    fs::write(&file, "not a folder, not a bundle").unwrap();
    let rel = mix_release().to_str().unwrap().to_owned();
    let (plain, file) = (plain.to_str().unwrap(), file.to_str().unwrap());
    let missing_dir = sandbox.join("no/such/dir/out");
    let out_dir = sandbox.join("out-dir");
    fs::create_dir(&out_dir).unwrap();
    // (arguments, exit code, message, whether the message is ours: one line)
    let cases: Vec<(Vec<&str>, i32, &str, bool)> = vec![
        (
            vec![&rel, "--frobnicate"],
            2,
            "unexpected argument '--frobnicate'",
            false,
        ),
        (
            vec![&rel, "--codex", "zstd"],
            2,
            "a similar argument exists: '--codec'",
            false,
        ),
        (
            vec![&rel, "--codec", "xz"],
            2,
            "unknown codec \"xz\"",
            false,
        ),
        (
            vec![&rel, "--env", "BUNDLE_ROOT=/x"],
            2,
            "is reserved",
            false,
        ),
        (
            vec![&rel, "--level", "42"],
            2,
            "--level 42 is out of range for zstd",
            true,
        ),
        (
            vec!["--codec", "zstd"],
            2,
            "name the release folder to pack",
            true,
        ),
        (
            vec![plain],
            3,
            "is not a release: no releases/start_erl.data",
            true,
        ),
        (vec![file], 3, "not a folder", true),
        (vec!["/no/such/release"], 3, "no such folder", true),
        (
            vec![
                plain,
                "--entry",
                "bin/nope",
                "--name",
                "x",
                "--app-version",
                "1",
            ],
            3,
            "the entry bin/nope does not exist",
            true,
        ),
        (
            vec![&rel, "--out", missing_dir.to_str().unwrap()],
            4,
            "does not exist; create it or choose another --out",
            true,
        ),
        (
            vec![&rel, "--out", out_dir.to_str().unwrap()],
            4,
            "it is a folder",
            true,
        ),
        (
            vec![&rel, "--out", "/proc/sydney-pack-test"],
            4,
            "cannot create files in /proc",
            true,
        ),
        (vec!["inspect", file], 5, "bad magic", true),
        (
            vec!["inspect", "/no/such/bundle"],
            5,
            "cannot read /no/such/bundle",
            true,
        ),
    ];
    // Nothing at all: the help, as a usage error.
    let bare = run(&mut sandbox.command(sydney_pack()));
    bare.expect_code(2).expect_stdout("Usage: sydney-pack");
    let before = Sandbox::list(sandbox.path());
    for (args, code, needle, ours) in cases {
        let ran = run(sandbox.command(sydney_pack()).args(&args));
        ran.expect_code(code).expect_stderr(needle);
        if ours {
            ran.expect_one_line_error()
                .expect_stderr("sydney-pack: error: ");
        } else {
            assert!(ran.stderr().starts_with("error: "), "{ran}");
        }
        // Nothing half-written is left behind.
        assert_eq!(Sandbox::list(sandbox.path()), before, "{args:?} left files");
        assert!(Sandbox::list(&out_dir).is_empty());
    }
}
