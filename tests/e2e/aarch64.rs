//! aarch64 bundles, cross-built on this (x86_64) machine and run under
//! qemu-user emulation: through binfmt_misc (`cargo xtask test` registers
//! Debian's qemu-aarch64 rule), or through `qemu-aarch64-static` named
//! explicitly where nothing needs to be exec'd.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::bundle_format::Bundle;
use e2e::bundle_format::elf::{self, Arch};
use e2e::bundle_format::layout::LEAD_IN_LEN;
use e2e::*;

/// Emulated start-up is slower than native; still bounded.
const START: Duration = Duration::from_secs(60);

/// The aarch64 bundle `cargo xtask test` builds
/// (target/bundle/aarch64/sydney-bundle), checked to be one.
fn aarch64_bundle() -> PathBuf {
    let path = std::env::var_os("SYDNEY_TEST_AARCH64_BUNDLE").map_or_else(
        || root().join("target/bundle/aarch64/sydney-bundle"),
        PathBuf::from,
    );
    let bytes = fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "{} ({err}): run the tests with `cargo xtask test`, which builds the aarch64 bundle",
            path.display()
        )
    });
    assert_eq!(
        elf::machine(&bytes).and_then(Arch::from_machine),
        Some(Arch::Aarch64),
        "{} is not an aarch64 program",
        path.display()
    );
    path
}

/// Fails loudly unless the kernel runs aarch64 programs through qemu with
/// the emulator opened at registration (flag F), which chroots need.
fn require_binfmt() {
    assert_ne!(
        std::env::consts::ARCH,
        "aarch64",
        "these tests prove emulation; on an aarch64 host run the x86_64 suite instead"
    );
    require_program("qemu-aarch64-static", "qemu-user-static");
    let rule = fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_else(|err| {
        panic!(
            "no binfmt_misc rule for aarch64 programs ({err}); `cargo xtask test` registers \
             Debian's /usr/lib/binfmt.d/qemu-aarch64.conf"
        )
    });
    assert!(rule.starts_with("enabled"), "{rule}");
    let flags = rule
        .lines()
        .find_map(|l| l.strip_prefix("flags: "))
        .unwrap_or_default();
    assert!(flags.contains('F'), "the rule lacks flag F: {rule}");
}

/// The program a process runs, as the kernel sees it.
fn exe_of(pid: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// The emulator binfmt_misc starts for aarch64 programs, resolved.
fn emulator() -> PathBuf {
    let rule = fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap();
    let interpreter = rule
        .lines()
        .find_map(|l| l.strip_prefix("interpreter "))
        .unwrap();
    fs::canonicalize(interpreter).unwrap()
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
fn the_aarch64_bundle_serves_under_emulation() {
    require_binfmt();
    let sandbox = Sandbox::new();
    let bundle = sandbox.join("sydney-bundle");
    fs::copy(aarch64_bundle(), &bundle).unwrap();
    let server = Server::start(
        sandbox
            .command(&bundle)
            .args(["start", "--", "--port", "0", "--bind", "127.0.0.1"]),
        START,
    );
    // The stub became the aarch64 server, which the kernel runs through
    // qemu: the process's program is the emulator.
    assert_eq!(exe_of(server.child.id()), emulator());
    check_routes(&server);
    let (trees, temps) = cache_contents(&sandbox.cache());
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(temps.is_empty(), "{temps:?}");
    // Its own inspect names its architecture (sydney-pack's does too).
    run_timeout(sandbox.command(&bundle).arg("inspect"), START)
        .expect_success()
        .expect_stdout("arch:        aarch64 (Linux)");
}

#[test]
fn the_aarch64_bundle_runs_its_lifecycle_under_emulation() {
    require_binfmt();
    let sandbox = Sandbox::new();
    let bundle = sandbox.join("sydney-bundle");
    fs::copy(aarch64_bundle(), &bundle).unwrap();
    let port = free_port();
    let cmd = |args: &[&str]| {
        let mut command = sandbox.command(&bundle);
        command.args(args).env("PORT", port.to_string());
        command
    };
    struct StopOnDrop<'a>(&'a dyn Fn(&[&str]) -> Command);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            let _ = run(&mut (self.0)(&["stop", "--timeout", "2"]));
        }
    }
    let _stop = StopOnDrop(&cmd);

    run_timeout(&mut cmd(&["daemon", "--", "--bind", "127.0.0.1"]), START)
        .expect_success()
        .expect_stdout("started sydney (pid ");
    let ran = run(&mut cmd(&["pid"]));
    ran.expect_success();
    let pid: u32 = ran.stdout().trim().parse().unwrap();
    assert_eq!(exe_of(pid), emulator(), "the daemon is not emulated");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(wait_for_http(addr, "/", START), (200, "Ok".into()));
    run(&mut cmd(&["healthcheck"]))
        .expect_success()
        .expect_stdout("200");
    run_timeout(&mut cmd(&["stop"]), START)
        .expect_success()
        .expect_stdout(&format!("pid {pid}"));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z')),
        "pid {pid} still runs after stop"
    );
    run(&mut cmd(&["healthcheck", "--timeout-ms", "500"]))
        .expect_code(5)
        .expect_stderr("unhealthy: cannot connect");
    run(&mut cmd(&["pid"]))
        .expect_code(3)
        .expect_stderr("not running");
}

#[test]
fn a_truncated_aarch64_bundle_is_rejected_with_exit_11() {
    // Explicitly through the emulator (no binfmt needed: nothing is exec'd).
    require_program("qemu-aarch64-static", "qemu-user-static");
    let bytes = fs::read(aarch64_bundle()).unwrap();
    let stub_len = Bundle::open(&bytes).unwrap().layout().stub_len as usize;
    for cut in [stub_len + LEAD_IN_LEN + 1000, (stub_len + bytes.len()) / 2] {
        let sandbox = Sandbox::new();
        let path = sandbox.join("bad-bundle");
        fs::write(&path, &bytes[..cut]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        for command in ["start", "verify"] {
            let mut qemu = sandbox.command("qemu-aarch64-static");
            qemu.arg(&path).arg(command);
            let ran = run(&mut qemu);
            ran.expect_code(11)
                .expect_stderr("truncated bundle")
                .expect_one_line_error();
            let (trees, temps) = cache_contents(&sandbox.cache());
            assert!(
                trees.is_empty() && temps.is_empty(),
                "cut at {cut} ({command}): left {trees:?} {temps:?}"
            );
        }
    }
}

#[test]
fn the_aarch64_bundle_serves_from_an_empty_root() {
    require_binfmt();
    require_root();
    let sandbox = Sandbox::new();
    let root = sandbox.join("root");
    fs::create_dir(&root).unwrap();
    fs::copy(aarch64_bundle(), root.join("sydney-bundle")).unwrap();
    // Nothing but the bundle: the emulator comes from the binfmt rule
    // (flag F), not from the root.
    assert_eq!(Sandbox::list(&root), ["sydney-bundle"]);
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
    let (trees, temps) = cache_contents(&root.join("tmp/sydney-bundle-0"));
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(temps.is_empty(), "{temps:?}");
    assert!(!root.join("proc").exists() && !root.join("dev").exists());
}

/// A static "hello" program for `arch`, compiled in the test: a payload
/// that is not the sydney server, cross-built on this machine.
fn hello_program(dir: &Path, arch: Arch) -> PathBuf {
    let (compiler, package) = match arch {
        Arch::Aarch64 => ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        Arch::X86_64 => ("gcc", "gcc"),
    };
    require_program(compiler, package);
    let source = dir.join("hello.c");
    fs::write(
        &source,
        "#include <stdio.h>\nint main(void) { puts(\"hello from the payload\"); return 0; }\n",
    )
    .unwrap();
    let out = dir.join(format!("hello-{arch}"));
    run(Command::new(compiler)
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&source))
    .expect_success();
    assert_eq!(
        elf::machine(&fs::read(&out).unwrap()).and_then(Arch::from_machine),
        Some(arch)
    );
    out
}

/// `sydney-pack inspect`'s `arch:` line.
fn inspected_arch(bundle: &Path) -> String {
    let ran = run(Command::new(sydney_pack()).arg("inspect").arg(bundle));
    ran.expect_success();
    ran.stdout()
        .lines()
        .find_map(|l| l.strip_prefix("arch:"))
        .unwrap_or_else(|| panic!("no arch line:\n{ran}"))
        .trim()
        .to_owned()
}

#[test]
fn an_aarch64_payload_packed_here_gets_the_aarch64_stub_and_a_mixed_folder_is_refused() {
    require_binfmt();
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    fs::create_dir_all(release.join("bin")).unwrap();
    fs::copy(
        hello_program(sandbox.path(), Arch::Aarch64),
        release.join("bin/hello"),
    )
    .unwrap();
    fs::set_permissions(release.join("bin/hello"), fs::Permissions::from_mode(0o755)).unwrap();
    let pack = |out: &Path, extra: &[&str]| {
        let mut command = sandbox.command(sydney_pack());
        command
            .arg(&release)
            .args([
                "--entry",
                "bin/hello",
                "--name",
                "hello",
                "--app-version",
                "1.0",
            ])
            .arg("--out")
            .arg(out)
            .args(extra);
        run(&mut command)
    };

    // Chosen by the entry's ELF machine, and said so.
    let bundle = sandbox.join("hello-aarch64");
    let ran = pack(&bundle, &[]);
    ran.expect_success().expect_stderr(
        "target  aarch64  (bin/hello is an aarch64 program; override with --target)",
    );
    let bytes = fs::read(&bundle).unwrap();
    let stub_len = Bundle::open(&bytes).unwrap().layout().stub_len as usize;
    let aarch64_stub =
        fs::read(root().join("target/bundle/stubs/aarch64/bundle-stub-gzip")).unwrap();
    assert!(
        bytes[..stub_len] == aarch64_stub[..],
        "the bundle does not start with the aarch64 gzip stub"
    );
    assert_eq!(inspected_arch(&bundle), "aarch64 (Linux)");
    run(Command::new(sydney_pack()).arg("doctor").arg(&release))
        .expect_success()
        .expect_stdout("\narchitecture: aarch64\n");
    // It runs here only through emulation, and runs the payload.
    run_timeout(sandbox.command(&bundle).arg("start"), START)
        .expect_success()
        .expect_stdout("hello from the payload");

    // A folder with programs for two architectures: refused, nothing written.
    fs::create_dir_all(release.join("lib")).unwrap();
    fs::copy(
        hello_program(sandbox.path(), Arch::X86_64),
        release.join("lib/helper"),
    )
    .unwrap();
    let mixed = sandbox.join("hello-mixed");
    pack(&mixed, &[])
        .expect_code(3)
        .expect_stderr(
            "the folder mixes architectures (bin/hello is aarch64, lib/helper is x86_64)",
        )
        .expect_one_line_error();
    assert!(!mixed.exists());
    run(Command::new(sydney_pack()).arg("doctor").arg(&release))
        .expect_success()
        .expect_stdout("architectures: bin/hello is aarch64, lib/helper is x86_64");
    assert!(
        !Sandbox::list(sandbox.path())
            .iter()
            .any(|n| n.starts_with(".tmp")),
        "left a temporary file: {:?}",
        Sandbox::list(sandbox.path())
    );

    // --target overrides the choice (and the refusal).
    let forced = sandbox.join("hello-forced");
    pack(&forced, &["--target", "x86_64"]).expect_success();
    assert_eq!(inspected_arch(&forced), "x86_64 (Linux)");

    // A --stub for another architecture than the payload's is refused.
    let wrong = sandbox.join("hello-wrong-stub");
    let x86_stub = artifacts().stub_gzip.to_str().unwrap().to_owned();
    pack(&wrong, &["--target", "aarch64", "--stub", &x86_stub])
        .expect_code(3)
        .expect_stderr("is a stub for x86_64, but the bundle is for aarch64")
        .expect_one_line_error();
    assert!(!wrong.exists());
}

#[test]
fn portable_packing_of_a_dynamic_aarch64_program_here_is_refused_clearly() {
    require_program("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu");
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    fs::create_dir_all(release.join("bin")).unwrap();
    let source = sandbox.join("hello.c");
    fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let program = release.join("bin/hello");
    // Dynamic: it needs /lib/ld-linux-aarch64.so.1, which --portable would
    // have to copy from this x86_64 machine.
    run(Command::new("aarch64-linux-gnu-gcc")
        .arg("-o")
        .arg(&program)
        .arg(&source))
    .expect_success();
    let out = sandbox.join("hello");
    run(sandbox
        .command(sydney_pack())
        .arg(&release)
        .args([
            "--entry",
            "bin/hello",
            "--name",
            "hello",
            "--app-version",
            "1.0",
        ])
        // Nothing left to infer, so the error is the only output.
        .args(["--codec", "gzip", "--target", "aarch64", "--portable"])
        .arg("--out")
        .arg(&out))
    .expect_code(3)
    .expect_stderr("it is an aarch64 program, and --portable carries this machine's (x86_64)")
    .expect_one_line_error();
    assert!(!out.exists());
}

/// A docker image, removed on drop.
struct DockerImage(String);

impl Drop for DockerImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// A podman image, removed on drop.
struct PodmanImage(String);

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn the_multi_arch_image_loads_in_docker_and_podman_and_the_arm64_one_serves() {
    require_binfmt();
    require_program("docker", "docker.io");
    require_program("podman", "podman");
    let sandbox = Sandbox::new();
    let name = crate::fleet::unique("multiarch");
    let tag = format!("{name}:1.0");
    let archive = sandbox.join("image.tar");
    let ran = run(Command::new(sydney_pack())
        .arg("image")
        .arg(&artifacts().bundle)
        .arg(aarch64_bundle())
        .args(["--tag", &tag, "--port", "8080", "--out"])
        .arg(&archive));
    ran.expect_success()
        .expect_stderr("linux/amd64 + linux/arm64");
    // Two bundles for one architecture are refused (a bad option, exit 2).
    let twice = sandbox.join("twice.tar");
    run(Command::new(sydney_pack())
        .arg("image")
        .arg(aarch64_bundle())
        .arg(aarch64_bundle())
        .arg("--out")
        .arg(&twice))
    .expect_code(2)
    .expect_stderr("two bundles are for aarch64; give one bundle per architecture")
    .expect_one_line_error();
    assert!(!twice.exists());

    // The layout: index.json names one index, which lists both platforms.
    let layout = sandbox.join("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout))
    .expect_success();
    let json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    };
    let blob = |digest: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(digest.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let index = json(layout.join("index.json"));
    let top = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json");
    let platforms = json(blob(&top["digest"]));
    let listed: Vec<String> = platforms["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let config = json(blob(&json(blob(&m["digest"]))["config"]["digest"]));
            assert_eq!(config["architecture"], m["platform"]["architecture"], "{m}");
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(listed, ["linux/amd64", "linux/arm64"]);

    // Docker (20.10 here, no containerd image store) loads Docker's
    // manifest.json: the amd64 image as the tag, the arm64 one as TAG-arm64.
    let arm64_tag = format!("{tag}-arm64");
    let _images = (DockerImage(tag.clone()), DockerImage(arm64_tag.clone()));
    let loaded = crate::fleet::docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        loaded.stdout().contains(&format!("Loaded image: {tag}")),
        "{loaded}"
    );
    assert!(
        loaded
            .stdout()
            .contains(&format!("Loaded image: {arm64_tag}")),
        "{loaded}"
    );
    let arch_of = |image: &str| {
        crate::fleet::docker(&["image", "inspect", "--format", "{{.Architecture}}", image])
            .stdout()
            .trim()
            .to_owned()
    };
    assert_eq!(arch_of(&tag), "amd64");
    assert_eq!(arch_of(&arm64_tag), "arm64");
    let container = crate::fleet::Container::run(&arm64_tag, &["--platform", "linux/arm64"]);
    container.expect_serving();
    // The server in the container is the aarch64 one, emulated.
    let processes = container.processes();
    assert!(
        processes.iter().any(|(_, args)| args.contains("bin/sydney")
            && (args.contains("qemu-aarch64") || args.contains("aarch64-binfmt"))),
        "no emulated server process: {processes:?}"
    );

    // podman reads the index and picks this machine's platform.
    let podman_name = format!("docker.io/library/{tag}");
    let _podman = PodmanImage(podman_name.clone());
    run(Command::new("podman").args(["load", "-i"]).arg(&archive)).expect_success();
    let ran = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Architecture}}",
        &podman_name,
    ]));
    ran.expect_success();
    assert_eq!(ran.stdout().trim(), "amd64", "{ran}");
}
