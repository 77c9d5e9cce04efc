//! Pack, then run: the sydney release and synthetic releases, cold and warm
//! starts, concurrency, crashes during extraction, and housekeeping.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use e2e::bundle_format::Codec;
use e2e::*;

const START: Duration = Duration::from_secs(20);

#[test]
fn sydney_bundle_serves_both_routes_and_exports_its_environment() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let server = Server::start(
        sandbox
            .command(&bundle)
            .args(["start", "--", "--port", "0", "--bind", "127.0.0.1"]),
        START,
    );
    assert_eq!(server.get("/"), (200, "Ok".to_owned()));
    assert_eq!(server.get("/404"), (404, "Page not found".to_owned()));
    assert_eq!(server.get("/nope"), (404, "Page not found".to_owned()));
    let (trees, temps) = cache_contents(&sandbox.cache());
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(trees[0].starts_with("sydney-0.1.0-"), "{trees:?}");
    assert!(temps.is_empty());
    // The extracted tree holds the release.
    let tree = sandbox.cache().join(&trees[0]);
    assert!(tree.join("bin/sydney").is_file());
    assert!(tree.join("etc/sydney.toml").is_file());
}

#[test]
fn version_prints_name_and_version() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    run(sandbox.command(&bundle).arg("version"))
        .expect_success()
        .expect_stdout("sydney 0.1.0\n");
}

#[test]
fn warm_start_reuses_the_tree_and_does_not_touch_it() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let args = ["start", "--", "--port", "0", "--bind", "127.0.0.1"];
    drop(Server::start(sandbox.command(&bundle).args(args), START));
    let (trees, _) = cache_contents(&sandbox.cache());
    let marker = sandbox.cache().join(&trees[0]).join(".sydney-bundle");
    let before = fs::metadata(&marker).unwrap().modified().unwrap();
    let server = Server::start(sandbox.command(&bundle).args(args), START);
    assert_eq!(server.get("/"), (200, "Ok".to_owned()));
    assert_eq!(fs::metadata(&marker).unwrap().modified().unwrap(), before);
    assert_eq!(cache_contents(&sandbox.cache()).0, trees);
}

/// A release with nested folders, exec bits, in-tree symlinks and a script
/// entry that reports what it sees.
fn synthetic_release(dir: &std::path::Path) {
    write_exec(
        &dir.join("bin/real-entry"),
        "#!/bin/sh\n\
         echo \"root=$BUNDLE_ROOT name=$BUNDLE_NAME version=$BUNDLE_VERSION\"\n\
         echo \"args=$*\"\n\
         echo \"keep=$KEEP_ME bundle-name-entries=$(env | grep -c '^BUNDLE_NAME=')\"\n\
         cat \"$BUNDLE_ROOT/share/data/hello.txt\"\n\
         test -x \"$BUNDLE_ROOT/lib/tool\" && echo tool-is-executable\n\
         test -x \"$BUNDLE_ROOT/share/data/hello.txt\" || echo data-is-not-executable\n\
         readlink \"$BUNDLE_ROOT/share/latest\"\n",
    );
    std::os::unix::fs::symlink("real-entry", dir.join("bin/entry")).unwrap();
    write_exec(&dir.join("lib/tool"), "#!/bin/sh\necho tool\n");
    fs::create_dir_all(dir.join("share/data")).unwrap();
    fs::write(dir.join("share/data/hello.txt"), "hello from the payload\n").unwrap();
    std::os::unix::fs::symlink("data/hello.txt", dir.join("share/latest")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
}

#[test]
fn synthetic_release_runs_with_symlinks_exec_bits_args_and_env() {
    for codec in [Codec::Gzip, Codec::Zstd] {
        let sandbox = Sandbox::new();
        let release = sandbox.join("release");
        synthetic_release(&release);
        let mut options = pack_options("synth", "bin/entry", codec);
        options.args = vec!["default-arg".to_owned()];
        let bundle = sandbox.join("synth");
        pack(&release, &options, &bundle);
        // The stub's variables replace stale ones (exactly once each); the
        // rest of the environment passes through unchanged.
        let ran = run(sandbox
            .command(&bundle)
            .env("BUNDLE_NAME", "stale")
            .env("BUNDLE_ROOT", "/stale")
            .env("KEEP_ME", "kept")
            .args(["start", "--", "user-arg", "--flag"]));
        ran.expect_success()
            .expect_stdout("name=synth version=1.0.0")
            .expect_stdout("keep=kept bundle-name-entries=1\n")
            .expect_stdout("args=default-arg user-arg --flag")
            .expect_stdout("hello from the payload")
            .expect_stdout("tool-is-executable")
            .expect_stdout("data-is-not-executable")
            .expect_stdout("data/hello.txt");
        let root = ran
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("root="))
            .and_then(|l| l.split(' ').next())
            .unwrap()
            .to_owned();
        assert!(
            root.starts_with(&sandbox.cache().display().to_string()),
            "{root}"
        );
        assert!(std::path::Path::new(&root).join("empty").is_dir());

        // `exec` passes exactly the given arguments, without the defaults.
        run(sandbox.command(&bundle).args(["exec", "--", "only"]))
            .expect_success()
            .expect_stdout("args=only\n");
    }
}

#[test]
fn entry_exit_code_is_the_process_exit_code() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    write_exec(&release.join("bin/fail"), "#!/bin/sh\nexit 42\n");
    let bundle = sandbox.join("fail");
    pack(
        &release,
        &pack_options("fail", "bin/fail", Codec::Gzip),
        &bundle,
    );
    run(sandbox.command(&bundle).arg("start")).expect_code(42);
}

#[test]
fn sixteen_simultaneous_cold_starts_share_one_tree() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let mut children = Vec::new();
    for _ in 0..16 {
        let mut command = sandbox.command(&bundle);
        command.args(["start", "--", "--port", "0", "--bind", "127.0.0.1"]);
        children.push(std::thread::spawn(move || {
            Server::start(&mut command, Duration::from_secs(60))
        }));
    }
    let servers: Vec<Server> = children.into_iter().map(|c| c.join().unwrap()).collect();
    for server in &servers {
        assert_eq!(server.get("/"), (200, "Ok".to_owned()));
    }
    let (trees, temps) = cache_contents(&sandbox.cache());
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(temps.is_empty(), "leftovers: {temps:?}");
}

/// A release big enough that extraction takes a while: the sydney server
/// plus 48 MB of incompressible data.
fn big_release(dir: &std::path::Path) {
    copy_release(dir);
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..48 {
        let mut data = vec![0u8; 1 << 20];
        for chunk in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes());
        }
        let path = dir.join(format!("data/blob-{i:02}"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
}

#[test]
fn kill_9_during_extraction_then_a_start_succeeds_and_cleans_up() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    big_release(&release);
    let bundle = sandbox.join("big");
    let mut options = pack_options("big", "bin/sydney", Codec::Gzip);
    options.level = 1;
    pack(&release, &options, &bundle);

    // Stop the first start as soon as its temp dir appears, check that it is
    // still extracting (a temp dir, no tree), and only then kill it: killing
    // "once a temp dir appears" could land after the extraction finished.
    // An extraction that wins the race anyway is thrown away and retried.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut first = spawn(
            sandbox
                .command(&bundle)
                .args(["start", "--", "--port", "0"])
                .stderr(std::process::Stdio::null()),
        )
        .unwrap();
        eventually(Duration::from_secs(30), "a temp dir to appear", || {
            !cache_contents(&sandbox.cache()).1.is_empty()
        });
        kill(first.id() as i32, SIGSTOP);
        let (trees, temps) = cache_contents(&sandbox.cache());
        let mid_extraction = trees.is_empty() && temps.len() == 1;
        kill(first.id() as i32, SIGKILL);
        first.wait().unwrap();
        if mid_extraction {
            break;
        }
        assert!(
            attempts < 5,
            "the extraction finished before it could be stopped, {attempts} times"
        );
        fs::remove_dir_all(sandbox.cache()).unwrap();
    }
    let (trees, temps) = cache_contents(&sandbox.cache());
    assert!(
        trees.is_empty(),
        "a killed extraction left a tree: {trees:?}"
    );
    assert_eq!(temps.len(), 1, "{temps:?}");

    let server = Server::start(
        sandbox
            .command(&bundle)
            .args(["start", "--", "--port", "0", "--bind", "127.0.0.1"]),
        Duration::from_secs(60),
    );
    assert_eq!(server.get("/"), (200, "Ok".to_owned()));
    let (trees, temps) = cache_contents(&sandbox.cache());
    assert_eq!(trees.len(), 1);
    assert!(
        temps.is_empty(),
        "the crash leftover was not removed: {temps:?}"
    );
}

/// The modification time of the newest tree in the cache root `cache`, as
/// housekeeping ranks trees: by their marker file (docs/FORMAT.md).
fn newest_tree_mtime(cache: &std::path::Path) -> std::time::SystemTime {
    let (trees, _) = cache_contents(cache);
    trees
        .iter()
        .map(|tree| {
            let marker = cache.join(tree).join(".sydney-bundle");
            fs::metadata(marker).unwrap().modified().unwrap()
        })
        .max()
        .expect("at least one tree")
}

#[test]
fn older_versions_are_collected_unless_in_use() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    write_exec(
        &release.join("bin/run"),
        "#!/bin/sh\nexec sleep \"${1:-0}\"\n",
    );
    let bundle_for = |version: &str| {
        let path = sandbox.join(&format!("app-{version}"));
        let mut options = pack_options("app", "bin/run", Codec::Gzip);
        options.version = version.to_owned();
        pack(&release, &options, &path);
        path
    };
    // v1 keeps running (holding its tree); v2..v5 run once and exit.
    let v1 = bundle_for("1");
    let mut running = spawn(sandbox.command(&v1).args(["start", "--", "30"])).unwrap();
    eventually(Duration::from_secs(10), "v1's tree", || {
        cache_contents(&sandbox.cache()).0.len() == 1
    });
    for version in ["2", "3", "4", "5"] {
        // Trees are ranked by modification time: before the next version,
        // wait until the file system's clock has moved past the newest
        // tree's (it ticks coarsely), so no two trees tie.
        let newest = newest_tree_mtime(&sandbox.cache());
        let probe = sandbox.join("clock-probe");
        eventually(
            Duration::from_secs(5),
            "the file system clock to move on",
            || {
                fs::write(&probe, "").unwrap();
                fs::metadata(&probe).unwrap().modified().unwrap() > newest
            },
        );
        run(sandbox.command(bundle_for(version)).arg("start")).expect_success();
    }
    let (trees, _) = cache_contents(&sandbox.cache());
    let versions: Vec<&str> = trees.iter().map(|t| t.split('-').nth(1).unwrap()).collect();
    // Newest (5) plus two older (4, 3) kept; 2 collected; 1 kept, in use.
    assert_eq!(versions, ["1", "3", "4", "5"], "{trees:?}");
    kill(running.id() as i32, SIGKILL);
    running.wait().unwrap();

    // `clean` now removes v1 (no longer in use) but keeps the newest few;
    // `clean --all` removes them all.
    run(sandbox.command(bundle_for("5")).arg("clean")).expect_success();
    let (trees, _) = cache_contents(&sandbox.cache());
    assert_eq!(trees.len(), 3, "{trees:?}");
    run(sandbox.command(bundle_for("5")).args(["clean", "--all"])).expect_success();
    assert!(cache_contents(&sandbox.cache()).0.is_empty());
}

#[test]
fn extract_unpacks_into_a_new_directory_and_refuses_a_full_one() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let dest = sandbox.join("out");
    run(sandbox
        .command(&bundle)
        .args(["extract", dest.to_str().unwrap()]))
    .expect_success()
    .expect_stdout("extracted 4 entries");
    assert_eq!(
        fs::metadata(dest.join("bin/sydney"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111,
        0o111
    );
    run(sandbox
        .command(&bundle)
        .args(["extract", dest.to_str().unwrap()]))
    .expect_code(1)
    .expect_stderr("not empty")
    .expect_one_line_error();
    // No partial directories next to it.
    assert_eq!(
        Sandbox::list(sandbox.path()),
        ["home", "out", "sydney-bundle"]
    );
}

#[test]
fn inspect_and_verify_describe_the_bundle() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let ran = run(sandbox.command(&bundle).arg("inspect"));
    ran.expect_success()
        .expect_stdout("name:        sydney")
        .expect_stdout("entry:       bin/sydney")
        .expect_stdout("codec:       gzip")
        .expect_stdout("digest:      sha256:")
        .expect_stdout("not extracted yet");
    run(sandbox.command(&bundle).args(["inspect", "--files"]))
        .expect_success()
        .expect_stdout("bin/sydney")
        .expect_stdout("etc/sydney.toml");
    run(sandbox.command(&bundle).arg("verify"))
        .expect_success()
        .expect_stdout("payload ok");
    // --deep needs a tree; make one, then damage it.
    run(sandbox.command(&bundle).args(["verify", "--deep"])).expect_code(6);
    drop(Server::start(
        sandbox
            .command(&bundle)
            .args(["start", "--", "--port", "0"]),
        START,
    ));
    run(sandbox.command(&bundle).args(["verify", "--deep"]))
        .expect_success()
        .expect_stdout("tree ok");
    let tree = sandbox.cache().join(&cache_contents(&sandbox.cache()).0[0]);
    fs::write(tree.join("etc/sydney.toml"), "# edited\n").unwrap();
    fs::remove_file(tree.join("bin/sydney")).unwrap();
    fs::write(tree.join("stray"), "x").unwrap();
    run(sandbox.command(&bundle).args(["verify", "--deep"]))
        .expect_code(6)
        .expect_stderr("missing: bin/sydney")
        .expect_stderr("changed: etc/sydney.toml")
        .expect_stderr("extra: stray");
}

/// Runs `bundle version`, stopped right after its exec (ptrace) while
/// `replacement` is renamed over the bundle's path, the way a deployment
/// replaces a file; returns what it printed.
fn version_after_replacing(bundle: &std::path::Path, replacement: &std::path::Path) -> Ran {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    let mut command = std::process::Command::new(bundle);
    command
        .arg("version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: ptrace(PTRACE_TRACEME) is a plain system call, safe between
    // fork and exec; it makes the child stop with SIGTRAP once exec is done.
    unsafe {
        command.pre_exec(|| {
            let null = std::ptr::null_mut::<libc::c_void>();
            if libc::ptrace(libc::PTRACE_TRACEME, 0, null, null) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let line = describe(&command);
    let child = spawn(&mut command).unwrap_or_else(|err| panic!("cannot run {line}: {err}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: waits for our own child's stop; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGTRAP,
        "{line} did not stop after exec (status {status:#x})"
    );
    // The process now runs the old image, and has not opened anything yet.
    fs::rename(replacement, bundle).unwrap();
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: detaches from our stopped tracee, letting it run on.
    let detached = unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, null, null) };
    assert_eq!(detached, 0, "detach: {}", std::io::Error::last_os_error());
    Ran {
        line,
        output: child.wait_with_output().unwrap(),
    }
}

/// The stub reads its payload through the path it was started by
/// (AT_EXECFN; opening /proc/self/exe costs 20-30 µs of every start), but
/// only while the file there is the image it runs. Replaced by another
/// build between exec and start-up, it reads its own file through
/// /proc/self/exe; replaced by the same build with another payload, it
/// reads the new file (the same code would have read it either way).
#[test]
fn a_bundle_replaced_right_after_exec_reads_the_right_file() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("other-release");
    write_exec(&release.join("bin/other"), "#!/bin/sh\nexit 0\n");
    let mut options = pack_options("other", "bin/other", Codec::Zstd);
    options.version = "9.9.9".to_owned();

    // Another build of the stub (the zstd one): the original payload runs.
    let bundle = sandbox.sydney_bundle();
    let other_build = sandbox.join("other-build");
    pack(&release, &options, &other_build);
    version_after_replacing(&bundle, &other_build)
        .expect_success()
        .expect_stdout("sydney 0.1.0\n");
    run(sandbox.command(&bundle).arg("version")).expect_stdout("other 9.9.9\n");

    // The same build of the stub with another payload: read from the path.
    fs::remove_file(&bundle).unwrap();
    let bundle = sandbox.sydney_bundle();
    let same_build = sandbox.join("same-build");
    options.codec = Codec::Gzip;
    options.level = bundle_format::codec::default_level(Codec::Gzip);
    pack(&release, &options, &same_build);
    version_after_replacing(&bundle, &same_build)
        .expect_success()
        .expect_stdout("other 9.9.9\n");
}

/// The shipped stubs are laid out for a fast warm start (see
/// xtask/src/warm_order/): a static executable at a fixed address, so
/// nothing is relocated at start-up, with the warm path's functions side by
/// side in `.text.warm`. Fails when `crates/stub/warm-path.ld` has drifted
/// from the code: `cargo xtask warm-order` regenerates it.
#[test]
fn stubs_are_linked_for_a_fast_warm_start() {
    let a = artifacts();
    for stub in [&a.stub_gzip, &a.stub_zstd] {
        let header = fs::read(stub).unwrap();
        // e_type 2 is ET_EXEC: not a position-independent executable.
        assert_eq!(
            u16::from_le_bytes([header[16], header[17]]),
            2,
            "{} is not a fixed-address static executable",
            stub.display()
        );
        let mut summary_path = stub.clone().into_os_string();
        summary_path.push(".warm-order");
        let summary = fs::read_to_string(&summary_path).unwrap_or_else(|err| {
            panic!(
                "{}: {err} (written by every stub build)",
                std::path::Path::new(&summary_path).display()
            )
        });
        let field = |key: &str| -> u64 {
            summary
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key} in {summary}"))
                .parse()
                .unwrap()
        };
        assert_eq!(
            field("checked"),
            1,
            "the link map did not list the patterns:\n{summary}"
        );
        let (patterns, matched, bytes) = (field("patterns"), field("matched"), field("bytes"));
        assert!(
            patterns >= 50,
            "only {patterns} warm-path patterns:\n{summary}"
        );
        assert!(
            matched * 10 >= patterns * 9,
            "{} of {patterns} warm-path patterns no longer match the code; run \
             `cargo xtask warm-order` to regenerate crates/stub/warm-path.ld:\n{summary}",
            patterns - matched
        );
        assert!(
            bytes >= 32 * 1024,
            "the warm path holds only {bytes} bytes:\n{summary}"
        );
    }
}
