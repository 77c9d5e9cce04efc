//! Portable payloads (`pack --portable`): a real mix release, built against
//! this machine's glibc 2.36, runs as one file where nothing of it exists:
//! an empty root, a musl root, a Debian bullseye root (glibc 2.31); and a
//! musl-linked C program runs on this glibc host and in an empty root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use e2e::bundle_format::Codec;
use e2e::bundle_format::portable_pack::PortableOptions;
use e2e::*;

use crate::mix::mix_release;

const START: Duration = Duration::from_secs(60);

/// The mix release packed with `--portable`, once per test run, beside the
/// release in the run's mix work directory.
fn portable_bundle() -> &'static PathBuf {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let out = mix_release().with_file_name("hello-portable");
        let mut options = pack_options("hello", "bin/hello", Codec::Gzip);
        options.version = "0.1.0".to_owned();
        options.args = vec!["start".to_owned()];
        options.needs_tree = true;
        // As sydney-pack infers for a mix release: the release's temporary
        // files go to the state directory, not into its tree (which
        // `verify --deep` must find exactly as packed).
        options.env = vec![(
            "RELEASE_TMP".to_owned(),
            "${BUNDLE_STATE_DIR}/tmp".to_owned(),
        )];
        options.portable = Some(PortableOptions::default());
        pack(mix_release(), &options, &out);
        out
    })
}

/// A root holding only `/bundle` and the empty mount points `dev` and `proc`.
fn bare_root(sandbox: &Sandbox, bundle: &Path) -> PathBuf {
    let root = sandbox.join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir(root.join("dev")).unwrap();
    fs::create_dir(root.join("proc")).unwrap();
    fs::copy(bundle, root.join("bundle")).unwrap();
    root
}

/// `unshare` (mount, pid, uts and network namespaces, killed with the test)
/// running `script` with the host's sh. Each test has its own loopback, so
/// its node's epmd (port 4369) and names never meet another test's; the
/// host name is set so that a distributed node (`-sname`) can name itself.
fn in_namespace(script: &str) -> Command {
    require_root();
    require_program("unshare", "util-linux");
    require_program("busybox", "busybox-static");
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--pid",
            "--uts",
            "--net",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
        ])
        .args([
            "sh",
            "-c",
            &format!("hostname portable-e2e && busybox ip link set lo up && {script}"),
        ])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    command
}

/// Mounts `/dev` and `/proc` into `root`, then runs `/bundle start` there
/// with distribution on (the release's default).
fn start_in(root: &Path, port: u16) -> Server {
    let r = root.display();
    Server::start(
        &mut in_namespace(&format!(
            "mount --bind /dev {r}/dev && mount -t proc proc {r}/proc && \
             exec env -i PORT={port} /usr/sbin/chroot {r} /bundle start"
        )),
        START,
    )
}

/// `nsenter` into the namespaces, root and working directory of `server`
/// (through its first child, the chrooted bundle), with an empty environment.
fn beside(server: &Server) -> Command {
    require_program("nsenter", "util-linux");
    let unshare = server.child.id();
    let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let inner = children
        .split_whitespace()
        .next()
        .expect("unshare has a child")
        .to_owned();
    let mut command = Command::new("nsenter");
    command.env_clear().args([
        "--target", &inner, "--mount", "--uts", "--pid", "--net", "--root", "--wd",
    ]);
    command
}

/// Runs `/bundle ARGS` beside `server`.
fn exec_beside(server: &Server, args: &[&str]) -> Ran {
    run_timeout(
        beside(server).arg("/bundle").args(args),
        Duration::from_secs(60),
    )
}

/// `GET /` answers 2xx, asked by the bundle's own `healthcheck` in the
/// server's network namespace.
fn expect_serving(server: &Server, bundle: &str) {
    let url = format!("http://{}/", server.addr);
    run_timeout(
        beside(server).args([bundle, "healthcheck", "--url", &url]),
        Duration::from_secs(30),
    )
    .expect_success();
}

/// The pids of `beam.smp` processes whose root is `root`, with their exe.
fn beams_in(root: &Path) -> Vec<(u32, PathBuf)> {
    let root = root.canonicalize().unwrap();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(exe), Ok(their_root)) = (
            fs::read_link(entry.path().join("exe")),
            fs::read_link(entry.path().join("root")),
        ) else {
            continue;
        };
        if their_root == root && exe.to_string_lossy().ends_with("beam.smp") {
            found.push((pid, exe));
        }
    }
    found
}

/// Serves `/`, answers an rpc through distribution, and its BEAM is
/// `beam.smp` (not a loader).
fn check_release(server: &Server, root: &Path) {
    expect_serving(server, "/bundle");
    exec_beside(server, &["exec", "--", "rpc", "IO.puts(:pong)"])
        .expect_success()
        .expect_stdout("pong");
    let beams = beams_in(root);
    assert_eq!(beams.len(), 1, "{beams:?}");
}

#[test]
fn a_portable_release_runs_in_an_empty_root_with_distribution_on() {
    let sandbox = Sandbox::new();
    let root = bare_root(&sandbox, portable_bundle());
    let server = start_in(&root, free_port());
    check_release(&server, &root);
    exec_beside(&server, &["exec", "--", "eval", "IO.puts(1+1)"])
        .expect_success()
        .expect_stdout("2\n");
    // Nothing but what the bundle made: its cache in /tmp.
    let mut top = Sandbox::list(&root);
    top.sort();
    assert_eq!(top, ["bundle", "dev", "proc", "tmp"]);
}

#[test]
fn a_portable_release_runs_in_a_musl_root() {
    let sandbox = Sandbox::new();
    let root = bare_root(&sandbox, portable_bundle());
    // What alpine has at its core: musl's loader and a static busybox.
    fs::create_dir_all(root.join("lib")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(
        "/lib/ld-musl-x86_64.so.1",
        root.join("lib/ld-musl-x86_64.so.1"),
    )
    .unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let server = start_in(&root, free_port());
    check_release(&server, &root);
}

fn bullseye() -> PathBuf {
    let root = PathBuf::from(
        std::env::var_os("SYDNEY_TEST_BULLSEYE_ROOT")
            .expect("SYDNEY_TEST_BULLSEYE_ROOT is unset; run the tests with `cargo xtask test`"),
    );
    assert!(
        root.join("etc/debian_version").is_file(),
        "{} is not a Debian root; `cargo xtask test` builds it",
        root.display()
    );
    root
}

/// Runs `script` in a namespace where the sandbox is mounted at `/mnt` of
/// the bullseye root (its cache goes there too; the cached root is not
/// written).
fn in_bullseye(sandbox: &Sandbox, script: &str) -> Command {
    let b = bullseye();
    let b = b.display();
    in_namespace(&format!(
        "mount --bind {s} {b}/mnt && mount -t proc proc {b}/proc && mount --bind /dev {b}/dev && \
         {}",
        script.replace("{root}", &b.to_string()),
        s = sandbox.path().display(),
    ))
}

#[test]
fn a_portable_release_runs_on_bullseye_where_the_plain_one_cannot() {
    let sandbox = Sandbox::new();
    fs::set_permissions(sandbox.path(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(sandbox.join("cache")).unwrap();
    fs::set_permissions(sandbox.join("cache"), fs::Permissions::from_mode(0o700)).unwrap();

    // The precondition: packed as it is, the release cannot run there.
    let mut options = pack_options("plain", "bin/hello", Codec::Gzip);
    options.args = vec!["start".to_owned()];
    options.needs_tree = true;
    pack(mix_release(), &options, &sandbox.join("plain"));
    let plain = run_timeout(
        &mut in_bullseye(
            &sandbox,
            "exec chroot {root} env -i SYDNEY_BUNDLE_DIR=/mnt/cache RELEASE_DISTRIBUTION=none \
             /mnt/plain start",
        ),
        Duration::from_secs(60),
    );
    assert!(
        !plain.stderr().is_empty() && plain.stderr().contains("GLIBC_2.3"),
        "{plain}"
    );

    fs::copy(portable_bundle(), sandbox.join("bundle")).unwrap();
    let port = free_port();
    let server = Server::start(
        &mut in_bullseye(
            &sandbox,
            &format!(
                "exec chroot {{root}} env -i SYDNEY_BUNDLE_DIR=/mnt/cache PORT={port} \
                 /mnt/bundle start"
            ),
        ),
        START,
    );
    expect_serving(&server, "/mnt/bundle");
    // A host program the release starts runs with the host's own libraries:
    // no LD_LIBRARY_PATH reaches it.
    let ran = run_timeout(
        beside(&server)
            .env("SYDNEY_BUNDLE_DIR", "/mnt/cache")
            .arg("/mnt/bundle")
            .args([
                "exec",
                "--",
                "rpc",
                "IO.inspect({System.cmd(\"cat\", [\"/etc/debian_version\"]), \
                 System.get_env(\"LD_LIBRARY_PATH\")})",
            ]),
        Duration::from_secs(60),
    );
    ran.expect_success()
        .expect_stdout("{{\"11.")
        .expect_stdout(", 0}, nil}");
    // The BEAM is beam.smp itself, not a loader running it.
    let beams = beams_in(&bullseye());
    assert_eq!(beams.len(), 1, "{beams:?}");
}

#[test]
fn verify_deep_accepts_a_patched_tree_and_catches_a_flipped_library_byte() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.join("bundle");
    fs::copy(portable_bundle(), &bundle).unwrap();
    run(sandbox.command(&bundle).args(["inspect", "--doctor"]))
        .expect_success()
        .expect_stdout("bin/hello: script, #!(carried in the payload")
        .expect_stdout("beam.smp: ELF, dynamic, loader (carried in the payload")
        .expect_stdout("runs on: FROM scratch, musl hosts, glibc hosts (any version)\n");
    // Runs on this host too (its own glibc is never used).
    run_timeout(
        sandbox
            .command(&bundle)
            .args(["exec", "--", "eval", "IO.puts(1+1)"]),
        START,
    )
    .expect_success()
    .expect_stdout("2\n");
    run(sandbox.command(&bundle).args(["verify", "--deep"]))
        .expect_success()
        .expect_stdout("tree ok");

    let (trees, _) = cache_contents(&sandbox.cache());
    let tree = sandbox.cache().join(&trees[0]);
    let libc = tree.join(".sydney-portable/glibc/libc.so.6");
    let mut bytes = fs::read(&libc).unwrap();
    bytes[4096] ^= 1;
    fs::write(&libc, &bytes).unwrap();
    run(sandbox.command(&bundle).args(["verify", "--deep"]))
        .expect_code(6)
        .expect_stderr("changed: .sydney-portable/glibc/libc.so.6 (content differs)");
    bytes[4096] ^= 1;
    fs::write(&libc, &bytes).unwrap();

    // A patched placeholder that no longer holds this tree's path.
    let script = tree.join("bin/hello");
    let original = fs::read(&script).unwrap();
    let mut changed = original.clone();
    changed[3] = b'Z';
    fs::write(&script, &changed).unwrap();
    run(sandbox.command(&bundle).args(["verify", "--deep"]))
        .expect_code(6)
        .expect_stderr("changed: bin/hello (patched bytes at offset 2");
    fs::write(&script, &original).unwrap();
    run(sandbox.command(&bundle).args(["verify", "--deep"])).expect_success();
}

#[test]
fn a_cache_path_too_long_for_the_placeholders_fails_clearly() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.join("bundle");
    fs::copy(portable_bundle(), &bundle).unwrap();
    let long = sandbox.join(&"d".repeat(180));
    fs::create_dir(&long).unwrap();
    fs::set_permissions(&long, fs::Permissions::from_mode(0o700)).unwrap();
    let ran = run(sandbox
        .command(&bundle)
        .args(["exec", "--", "eval", "IO.puts(1)"])
        .env("SYDNEY_BUNDLE_DIR", &long));
    ran.expect_code(25)
        .expect_stderr("too long for this portable payload")
        .expect_stderr("SYDNEY_BUNDLE_DIR")
        .expect_one_line_error();
    assert!(
        Sandbox::list(&long).is_empty(),
        "{:?}",
        Sandbox::list(&long)
    );
}

#[test]
fn a_musl_linked_dynamic_program_runs_on_glibc_and_in_an_empty_root() {
    require_program("musl-gcc", "musl-tools");
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    fs::create_dir_all(release.join("bin")).unwrap();
    let source = sandbox.join("hello.c");
    fs::write(
        &source,
        "#include <stdio.h>\nint main(void) { puts(\"hello from musl\"); return 0; }\n",
    )
    .unwrap();
    run(Command::new("musl-gcc")
        .arg("-o")
        .arg(release.join("bin/hello"))
        .arg(&source))
    .expect_success();
    let facts =
        bundle_format::doctor::elf_facts(&fs::read(release.join("bin/hello")).unwrap()).unwrap();
    assert!(facts.is_musl() && !facts.is_static(), "{facts:?}");

    let mut options = pack_options("muslhello", "bin/hello", Codec::Gzip);
    options.needs_tree = true;
    options.portable = Some(PortableOptions::default());
    let bundle = sandbox.join("bundle");
    pack(&release, &options, &bundle);
    run(sandbox.command(&bundle).arg("start"))
        .expect_success()
        .expect_stdout("hello from musl");
    // `extract DIR` patches the copy for DIR, where it then runs.
    let copy = sandbox.join("copy");
    run(sandbox.command(&bundle).arg("extract").arg(&copy)).expect_success();
    run(&mut Command::new(copy.join("bin/hello")))
        .expect_success()
        .expect_stdout("hello from musl");

    let root = bare_root(&sandbox, &bundle);
    let r = root.display();
    run(&mut in_namespace(&format!(
        "mount --bind /dev {r}/dev && exec chroot {r} /bundle start"
    )))
    .expect_success()
    .expect_stdout("hello from musl");
}

/// A docker image or container of these tests, removed on drop.
struct Docker {
    kind: &'static str,
    name: String,
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args([self.kind, "rm", "-f", &self.name])
            .output();
    }
}

fn docker(args: &[&str]) -> Ran {
    run_timeout(Command::new("docker").args(args), Duration::from_secs(120))
}

#[test]
fn a_portable_release_in_a_scratch_image_with_distribution_on() {
    require_program("docker", "docker.io");
    let sandbox = Sandbox::new();
    fs::copy(portable_bundle(), sandbox.join("hello")).unwrap();
    fs::write(
        sandbox.join("Dockerfile"),
        "FROM scratch\nCOPY hello /hello\nENV PORT=4000\nENTRYPOINT [\"/hello\", \"start\"]\n",
    )
    .unwrap();
    let id = std::process::id();
    let image = Docker {
        kind: "image",
        name: format!("sydney-e2e-portable:{id}"),
    };
    docker(&[
        "build",
        "-q",
        "-t",
        &image.name,
        &sandbox.path().to_string_lossy(),
    ])
    .expect_success();
    let healthy = |name: &str| {
        docker(&[
            "exec",
            name,
            "/hello",
            "healthcheck",
            "--url",
            "http://127.0.0.1:4000/",
        ])
        .code()
            == 0
    };

    // The release's defaults: distribution on, epmd needed, no /bin/sh.
    let container = Docker {
        kind: "container",
        name: format!("sydney-e2e-portable-{id}-scratch"),
    };
    docker(&["run", "-d", "--name", &container.name, &image.name]).expect_success();
    eventually(Duration::from_secs(60), "the release to serve", || {
        healthy(&container.name)
    });
    docker(&[
        "exec",
        &container.name,
        "/hello",
        "exec",
        "--",
        "rpc",
        "IO.puts(:pong)",
    ])
    .expect_success()
    .expect_stdout("pong");
    let started = std::time::Instant::now();
    docker(&["stop", &container.name]).expect_success();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "docker stop took {took:?}");
    docker(&["inspect", "-f", "{{.State.ExitCode}}", &container.name])
        .expect_success()
        .expect_stdout("0\n");

    // Read-only, with an exec-capable tmpfs for the tree: serves.
    let read_only = Docker {
        kind: "container",
        name: format!("sydney-e2e-portable-{id}-ro"),
    };
    docker(&[
        "run",
        "-d",
        "--name",
        &read_only.name,
        "--read-only",
        "--tmpfs",
        "/tmp:exec",
        &image.name,
    ])
    .expect_success();
    eventually(
        Duration::from_secs(60),
        "the read-only release to serve",
        || healthy(&read_only.name),
    );

    // Nothing writable at all: a multi-program release cannot run from
    // memory; one clear line and its exit code.
    let ran = docker(&["run", "--rm", "--read-only", &image.name]);
    ran.expect_code(20)
        .expect_stderr("no usable cache directory")
        .expect_stderr("SYDNEY_BUNDLE_DIR");
    ran.expect_one_line_error();
}

#[test]
fn portable_packing_is_reproducible() {
    let sandbox = Sandbox::new();
    let mut options = pack_options("hello", "bin/hello", Codec::Gzip);
    options.portable = Some(PortableOptions::default());
    let (a, b) = (sandbox.join("a"), sandbox.join("b"));
    pack(mix_release(), &options, &a);
    pack(mix_release(), &options, &b);
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "two packs differ"
    );
}
