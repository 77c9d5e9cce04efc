//! Runs anywhere: an empty root, a read-only root, a noexec /tmp, no
//! environment, a full disk, another user; each in a mount namespace made
//! by the test.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::bundle_format::Codec;
use e2e::*;

const START: Duration = Duration::from_secs(30);

/// A root directory holding only the bundle, as `/sydney-bundle`.
fn bare_root(sandbox: &Sandbox) -> std::path::PathBuf {
    let root = sandbox.join("root");
    fs::create_dir(&root).unwrap();
    fs::copy(&artifacts().bundle, root.join("sydney-bundle")).unwrap();
    root
}

/// Where [`with_fresh_tmp`] keeps the sandbox reachable.
const SANDBOX_ALIAS: &str = "/mnt/sydney-e2e";

/// Shell commands that give the namespace a new, empty `/tmp`, followed by
/// `script`, in which `{sandbox}` stands for the sandbox's path. The sandbox
/// is bind-mounted at [`SANDBOX_ALIAS`] first (on a tmpfs over `/mnt`,
/// private to the namespace), because a checkout under `/tmp` would
/// otherwise vanish under the new `/tmp`.
fn with_fresh_tmp(sandbox: &Sandbox, script: &str) -> String {
    format!(
        "mount -t tmpfs tmpfs /mnt && mkdir {SANDBOX_ALIAS} && \
         mount --bind {} {SANDBOX_ALIAS} && mount -t tmpfs tmpfs /tmp && {}",
        sandbox.path().display(),
        script.replace("{sandbox}", SANDBOX_ALIAS)
    )
}

fn check_routes(server: &Server) {
    assert_eq!(
        server.get("/"),
        (200, "Ok".to_owned()),
        "{}",
        server.stderr()
    );
    assert_eq!(server.get("/404"), (404, "Page not found".to_owned()));
}

#[test]
fn empty_root_with_no_proc_tmp_dev_or_shell() {
    let sandbox = Sandbox::new();
    let root = bare_root(&sandbox);
    let server = Server::start(
        Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child", "chroot"])
            .arg(&root)
            .args([
                "/sydney-bundle",
                "start",
                "--",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        START,
    );
    check_routes(&server);
    // It made /tmp itself and extracted there.
    let tmp = root.join("tmp");
    assert_eq!(
        fs::metadata(&tmp).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    let (trees, temps) = cache_contents(&tmp.join("sydney-bundle-0"));
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(temps.is_empty());
    assert!(!root.join("proc").exists() && !root.join("dev").exists());
}

#[test]
fn read_only_root_holding_only_the_bundle_runs_from_memory() {
    let sandbox = Sandbox::new();
    let root = bare_root(&sandbox);
    let r = root.display();
    let server = Server::start(
        &mut in_namespace(&format!(
            "mount --bind {r} {r} && mount -o remount,bind,ro {r} && \
             exec chroot {r} /sydney-bundle start -- --port 0 --bind 127.0.0.1"
        )),
        START,
    );
    check_routes(&server);
    let stderr = server.stderr();
    assert!(stderr.contains("from memory"), "{stderr}");
    assert!(
        stderr.contains("etc/sydney.toml"),
        "names the unavailable files: {stderr}"
    );
    assert!(
        stderr.contains("read-only file system"),
        "says why: {stderr}"
    );
    assert_eq!(Sandbox::list(&root), ["sydney-bundle"]);
}

#[test]
fn only_a_noexec_tmpfs_is_writable() {
    let sandbox = Sandbox::new();
    let root = bare_root(&sandbox);
    fs::create_dir(root.join("tmp")).unwrap();
    let r = root.display();
    let server = Server::start(
        &mut in_namespace(&format!(
            "mount --bind {r} {r} && mount -t tmpfs -o noexec,mode=1777 tmpfs {r}/tmp && \
             mount -o remount,bind,ro {r} && \
             exec chroot {r} /sydney-bundle start -- --port 0 --bind 127.0.0.1"
        )),
        START,
    );
    check_routes(&server);
    let stderr = server.stderr();
    assert!(stderr.contains("noexec"), "{stderr}");
    assert!(stderr.contains("runs from memory"), "{stderr}");
}

#[test]
fn no_environment_at_all() {
    let sandbox = Sandbox::new();
    sandbox.sydney_bundle(); // copied in; run below as {sandbox}/sydney-bundle
    let server = Server::start(
        &mut in_namespace(&with_fresh_tmp(
            &sandbox,
            "exec env -i {sandbox}/sydney-bundle start -- --port 0 --bind 127.0.0.1",
        )),
        START,
    );
    check_routes(&server);
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_nothing() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let cache = sandbox.join("small");
    fs::create_dir(&cache).unwrap();
    let ran = run(&mut in_namespace(&format!(
        "mount -t tmpfs -o size=64k,mode=0700 tmpfs {c} && \
         SYDNEY_BUNDLE_DIR={c} {b} start; code=$?; echo \"left: $(ls -A {c})\"; exit $code",
        c = cache.display(),
        b = bundle.display()
    )));
    ran.expect_code(21)
        .expect_stderr("disk full")
        .expect_stderr("SYDNEY_BUNDLE_DIR")
        .expect_stdout("left: \n");
    ran.expect_one_line_error();
}

#[test]
fn a_full_chain_candidate_gives_way_to_the_next() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let home = sandbox.join("home");
    let tmpdir = sandbox.join("tmp");
    fs::create_dir(&tmpdir).unwrap();
    let server = Server::start(
        &mut in_namespace(&format!(
            "mkdir -p {h}/.cache && mount -t tmpfs -o size=64k,mode=0700 tmpfs {h}/.cache && \
             exec env HOME={h} TMPDIR={t} {b} start -- --port 0 --bind 127.0.0.1",
            h = home.display(),
            t = tmpdir.display(),
            b = bundle.display()
        )),
        START,
    );
    check_routes(&server);
    assert!(
        server.stderr().contains("is full; trying the next"),
        "{}",
        server.stderr()
    );
    assert_eq!(Sandbox::list(&tmpdir), ["sydney-bundle-0"]);
}

#[test]
fn another_user_and_an_unreadable_home() {
    require_program("setpriv", "util-linux");
    let sandbox = Sandbox::new();
    sandbox.sydney_bundle(); // copied in; run below as {sandbox}/sydney-bundle
    fs::set_permissions(sandbox.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = sandbox.join("home");
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    // Root extracts first; then nobody, whose HOME it cannot read, runs the
    // same bundle from its own per-uid directory.
    let ran = run(&mut in_namespace(&with_fresh_tmp(
        &sandbox,
        "HOME={sandbox}/home {sandbox}/sydney-bundle exec -- --version && \
         setpriv --reuid=65534 --regid=65534 --clear-groups \
         env HOME={sandbox}/home {sandbox}/sydney-bundle exec -- --version && \
         ls /tmp",
    )));
    ran.expect_success()
        .expect_stdout("sydney 0.1.0")
        .expect_stdout("sydney-bundle-65534");
    assert!(ran.stderr().contains("permission denied"), "{ran}");
}

#[test]
fn a_payload_that_needs_its_tree_fails_clearly_when_nothing_is_writable() {
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    copy_release(&release);
    let root = sandbox.join("root");
    fs::create_dir(&root).unwrap();
    let mut options = pack_options("treeful", "bin/sydney", Codec::Gzip);
    options.needs_tree = true;
    pack(&release, &options, &root.join("bundle"));
    let r = root.display();
    let ran = run(&mut in_namespace(&format!(
        "mount --bind {r} {r} && mount -o remount,bind,ro {r} && exec chroot {r} /bundle start"
    )));
    ran.expect_code(20)
        .expect_stderr("no usable cache directory")
        .expect_stderr("/tmp/sydney-bundle-0")
        .expect_stderr("read-only file system")
        .expect_one_line_error();
}

#[test]
fn inspect_shows_what_the_chain_would_choose() {
    let sandbox = Sandbox::new();
    let root = bare_root(&sandbox);
    let r = root.display();
    let ran = run(&mut in_namespace(&format!(
        "mount --bind {r} {r} && mount -o remount,bind,ro {r} && exec chroot {r} /sydney-bundle inspect"
    )));
    ran.expect_success()
        .expect_stdout("none usable: the entry would run from memory")
        .expect_stdout("read-only file system");
    assert!(!Path::new(&root).join("tmp").exists());
}
