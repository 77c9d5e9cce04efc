//! The daemonless image writer (crates/bundle-image): reproducible, valid
//! for skopeo and umoci, loaded by Docker and podman, running as uid 65532,
//! and equivalent to what Dockerfile.scratch builds.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use bundle_image::ImageOptions;
use e2e::*;

use crate::fleet::{Container, LoadedImage, docker, docker_json, unique};

fn options(tag: &str) -> ImageOptions {
    ImageOptions {
        tag: Some(tag.parse().unwrap()),
        ports: vec!["8080".to_owned()],
        revision: Some("0123456789abcdef".to_owned()),
        source: Some("https://example.invalid/sydney-bundle".to_owned()),
        created: 1_700_000_000,
        ..ImageOptions::default()
    }
}

#[test]
fn image_written_twice_is_identical_and_a_valid_oci_layout() {
    require_program("skopeo", "skopeo");
    require_program("umoci", "umoci");
    let sandbox = Sandbox::new();
    let bundle = &artifacts().bundle;
    let write = |name: &str, options: &ImageOptions| {
        let out = sandbox.join(name);
        let report = bundle_image::write_image(bundle, options, &out).unwrap();
        (fs::read(&out).unwrap(), report)
    };
    let (first, report) = write("a.tar", &options("sydney-fleet:1.0"));
    let (second, again) = write("b.tar", &options("sydney-fleet:1.0"));
    assert_eq!(report.manifest_digest, again.manifest_digest);
    assert!(first == second, "the same bundle gave different archives");
    let later = ImageOptions {
        created: 1_700_000_001,
        ..options("sydney-fleet:1.0")
    };
    let (_, other) = write("c.tar", &later);
    assert_ne!(
        other.manifest_digest, report.manifest_digest,
        "created must reach the digest"
    );
    let bundle_bytes = fs::metadata(bundle).unwrap().len();
    eprintln!(
        "image digest {}; archive {} bytes, bundle {bundle_bytes} bytes",
        report.manifest_digest, report.archive_bytes
    );

    // skopeo reads the archive as an OCI layout and finds our config.
    let archive = sandbox.join("a.tar");
    let ran = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display())));
    ran.expect_success();
    let inspected: serde_json::Value = serde_json::from_str(&ran.stdout()).unwrap();
    assert_eq!(
        inspected["Digest"],
        report.manifest_digest.as_str(),
        "{ran}"
    );
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Created"], "2023-11-14T22:13:20Z");
    let labels = &inspected["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "0.1.0");
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        "0123456789abcdef"
    );
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://example.invalid/sydney-bundle"
    );

    // umoci checks every digest while unpacking into a runtime bundle.
    let layout = sandbox.join("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout))
    .expect_success();
    let unpacked = sandbox.join("unpacked");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:1.0", layout.display()))
        .arg(&unpacked))
    .expect_success();
    let rootfs = unpacked.join("rootfs");
    assert_eq!(Sandbox::list(&rootfs), ["app", "tmp"]);
    assert!(fs::read(rootfs.join("app")).unwrap() == fs::read(bundle).unwrap());
    let mode = |path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(rootfs.join("app")), 0o755);
    assert_eq!(mode(rootfs.join("tmp")), 0o1777);
    let runtime: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(unpacked.join("config.json")).unwrap()).unwrap();
    assert_eq!(runtime["process"]["user"]["uid"], 65532);
    assert_eq!(
        runtime["process"]["args"],
        serde_json::json!(["/app", "start"])
    );
}

#[test]
fn image_loads_in_docker_and_podman_and_serves_as_uid_65532_from_tmp() {
    require_program("podman", "podman");
    let sandbox = Sandbox::new();
    let tag = format!("{}:1.0", unique("image"));
    let image = LoadedImage::write_and_load(&artifacts().bundle, &tag, sandbox.path(), |_| {});

    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).stdout();
    assert_eq!(
        id.trim(),
        image.report.config_digest,
        "Docker's image ID is the config digest"
    );
    let config = docker_json(&["image", "inspect", "--format", "{{json .Config}}", &tag]);
    assert_eq!(config["User"], "65532");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/app"]));
    assert_eq!(config["Cmd"], serde_json::json!(["start"]));
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/app", "healthcheck"]),
        "docker load dropped the healthcheck: {config}"
    );

    let container = Container::run(
        &tag,
        &["--health-interval", "500ms", "--health-start-period", "0s"],
    );
    container.expect_serving();
    let processes = container.processes();
    assert!(processes.len() >= 2, "{processes:?}");
    for (uid, args) in &processes {
        assert_eq!(uid, "65532", "{args} runs as {uid}: {processes:?}");
    }
    // No writable HOME (Docker sets HOME=/ for a uid without a passwd
    // entry): the tree is in /tmp, and the server runs from it.
    let server = &processes
        .iter()
        .find(|(_, args)| args.contains("bin/sydney"));
    let server = server.unwrap_or_else(|| panic!("no server process: {processes:?}"));
    assert!(
        server
            .1
            .starts_with("/tmp/sydney-bundle-65532/sydney-0.1.0-"),
        "{processes:?}\n{}",
        container.logs()
    );
    eventually(Duration::from_secs(20), "a healthy container", || {
        docker(&["inspect", "-f", "{{.State.Health.Status}}", &container.name])
            .stdout()
            .trim()
            == "healthy"
    });

    // podman reads the same file.
    let ran = run(Command::new("podman")
        .args(["load", "-i"])
        .arg(&image.archive));
    ran.expect_success();
    let podman_name = format!("docker.io/library/{tag}");
    let _cleanup = PodmanImage(podman_name.clone());
    let ran = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &podman_name,
    ]));
    ran.expect_success();
    let config: serde_json::Value = serde_json::from_str(ran.stdout().trim()).unwrap();
    assert_eq!(config["User"], "65532", "{ran}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/app"]), "{ran}");
}

/// A podman image, removed on drop.
struct PodmanImage(String);

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn image_serves_as_non_root_on_a_read_only_root_with_a_tmpfs() {
    let sandbox = Sandbox::new();
    let tag = format!("{}:1.0", unique("image"));
    let _image = LoadedImage::write_and_load(&artifacts().bundle, &tag, sandbox.path(), |_| {});
    let container = Container::run(&tag, &["--read-only", "--tmpfs", "/tmp"]);
    container.expect_serving();
    assert!(container.logs().contains("noexec"), "{}", container.logs());
    for (uid, args) in container.processes() {
        assert_eq!(uid, "65532", "{args}");
    }
}

/// Path, kind and mode, owner and size of each file in a container made
/// from `image` (`docker export`; mtimes differ by design).
fn files_of(image: &str) -> BTreeMap<String, String> {
    let name = unique("export");
    docker(&["create", "--name", &name, image]);
    let _remove = Container { name: name.clone() };
    let export = std::env::temp_dir().join(format!("{name}.tar"));
    docker(&["export", "-o", export.to_str().unwrap(), &name]);
    let ran = run(Command::new("tar")
        .args(["-tvf"])
        .arg(&export)
        .arg("--numeric-owner"));
    let _ = fs::remove_file(&export);
    ran.expect_success();
    ran.stdout()
        .lines()
        .map(|line| {
            // perms owner size date time path
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields[5..].join(" ");
            (path, format!("{} {} {}", fields[0], fields[1], fields[2]))
        })
        .collect()
}

#[test]
fn writer_and_dockerfile_scratch_give_equivalent_images() {
    let sandbox = Sandbox::new();
    let expected = root().join("target/bundle/sydney-bundle");
    assert_eq!(
        artifacts().bundle.canonicalize().unwrap(),
        expected.canonicalize().unwrap(),
        "Dockerfile.scratch copies target/bundle/sydney-bundle; run `cargo xtask test`"
    );
    let written = format!("{}:written", unique("equiv"));
    let _written =
        LoadedImage::write_and_load(&artifacts().bundle, &written, sandbox.path(), |_| {});
    let built = format!("{}:built", unique("equiv"));
    let dockerfile = root().join("Dockerfile.scratch");
    // --no-cache: docker.rs builds the same Dockerfile at the same time; a
    // shared cache chain would let one test's `rmi` remove the other's
    // intermediate images mid-build.
    docker(&[
        "build",
        "--no-cache",
        "-q",
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        &built,
        root().to_str().unwrap(),
    ]);
    struct Image(String);
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let _built = Image(built.clone());

    let (a, b) = (files_of(&written), files_of(&built));
    assert_eq!(a, b, "different files in the two images");
    let bundle_bytes = fs::metadata(&expected).unwrap().len();
    assert_eq!(a["app"], format!("-rwxr-xr-x 0/0 {bundle_bytes}"));
    assert_eq!(a["tmp/"].split(' ').next(), Some("drwxrwxrwt"));
    let config =
        |image: &str| docker_json(&["image", "inspect", "--format", "{{json .Config}}", image]);
    let (a, b) = (config(&written), config(&built));
    for key in ["Entrypoint", "Cmd", "User", "Healthcheck", "ExposedPorts"] {
        assert_eq!(a[key], b[key], "{key} differs:\nwritten {a}\nbuilt {b}");
    }

    // The Dockerfile's image runs as the writer's does: uid 65532, the
    // tree unpacked into /tmp.
    let container = Container::run(&built, &[]);
    container.expect_serving();
    let processes = container.processes();
    assert!(
        processes.iter().all(|(uid, _)| uid == "65532"),
        "{processes:?}"
    );
    assert!(
        processes
            .iter()
            .any(|(_, args)| args.starts_with("/tmp/sydney-bundle-65532/")),
        "{processes:?}\n{}",
        container.logs()
    );
}

/// `sydney-pack image` is the same writer behind the static tool's command
/// line: the same bytes as the library with the same options, and its errors
/// carry sydney-pack's exit codes (docs/SYDNEY_PACK.md).
#[test]
fn sydney_pack_image_writes_the_same_archive_and_names_bad_input() {
    let sandbox = Sandbox::new();
    let bundle = &artifacts().bundle;
    let by_tool = sandbox.join("tool.tar");
    run(Command::new(sydney_pack())
        .arg("image")
        .arg(bundle)
        .arg("--out")
        .arg(&by_tool)
        .args(["--tag", "sydney-fleet:1.0", "--port", "8080"])
        .args(["--revision", "0123456789abcdef"])
        .args(["--source", "https://example.invalid/sydney-bundle"])
        .env("SOURCE_DATE_EPOCH", "1700000000"))
    .expect_success()
    .expect_stderr("wrote image sydney-fleet:1.0");
    let by_library = sandbox.join("library.tar");
    bundle_image::write_image(bundle, &options("sydney-fleet:1.0"), &by_library).unwrap();
    assert!(
        fs::read(&by_tool).unwrap() == fs::read(&by_library).unwrap(),
        "sydney-pack image and the library wrote different archives"
    );

    // Bad input: one line, its exit code, and no archive left behind.
    let out = sandbox.join("bad.tar");
    let image = |args: &[&str]| {
        run(Command::new(sydney_pack())
            .arg("image")
            .args(args)
            .arg("--out")
            .arg(&out))
    };
    image(&[bundle.to_str().unwrap(), "--label", "no-equals-sign"])
        .expect_code(2)
        .expect_one_line_error()
        .expect_stderr("give KEY=VALUE");
    let not_a_bundle = sandbox.join("notes.txt");
    fs::write(&not_a_bundle, "not a bundle\n").unwrap();
    image(&[not_a_bundle.to_str().unwrap()])
        .expect_code(5)
        .expect_one_line_error()
        .expect_stderr("is not a usable sydney bundle");
    assert!(!out.exists(), "a failed image left {}", out.display());
}
