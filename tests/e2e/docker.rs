//! The real FROM scratch image, built from Dockerfile.scratch and run by the
//! machine's Docker engine (no registry is needed: scratch is empty).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::*;

/// Builds the image once per test run and returns its tag.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        require_program("docker", "docker.io");
        let expected = root().join("target/bundle/sydney-bundle");
        assert_eq!(
            artifacts().bundle.canonicalize().unwrap(),
            expected.canonicalize().unwrap(),
            "the image is built from target/bundle/sydney-bundle; run `cargo xtask test`"
        );
        let tag = format!("sydney-e2e:{}", std::process::id());
        run_timeout(
            Command::new("docker")
                // --no-cache: image.rs builds the same Dockerfile at the same
                // time and removes its image after; with the legacy
                // builder's cache the two would share intermediate images,
                // and that removal made this build fail ("unable to find
                // image sha256:...").
                .args(["build", "--no-cache", "-q", "-f", "Dockerfile.scratch"])
                .args(["-t", &tag, "."])
                .current_dir(root()),
            Duration::from_secs(300),
        )
        .expect_success();
        // Removed when the test binary exits (every container is removed
        // by its test before that).
        let removed = tag.clone();
        at_exit(move || {
            run(Command::new("docker").args(["rmi", "--force", &removed])).expect_success();
        });
        tag
    })
}

/// A container, removed on drop.
struct Container {
    name: String,
}

impl Container {
    fn run(extra: &[&str]) -> Container {
        let name = format!(
            "sydney-e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut command = Command::new("docker");
        command
            .args(["run", "-d", "--name", &name, "-p", "127.0.0.1::8080"])
            .args(extra)
            .arg(image());
        run(&mut command).expect_success();
        Container { name }
    }

    fn addr(&self) -> SocketAddr {
        let ran = run(Command::new("docker").args(["port", &self.name, "8080/tcp"]));
        ran.expect_success();
        ran.stdout().lines().next().unwrap().trim().parse().unwrap()
    }

    fn inspect(&self, format: &str) -> String {
        let ran = run(Command::new("docker").args(["inspect", "-f", format, &self.name]));
        ran.expect_success();
        ran.stdout().trim().to_owned()
    }

    fn logs(&self) -> String {
        let ran = run(Command::new("docker").args(["logs", &self.name]));
        format!("{}{}", ran.stdout(), ran.stderr())
    }

    fn check_routes(&self) {
        let addr = self.addr();
        let answer = std::panic::catch_unwind(|| wait_for_http(addr, "/", Duration::from_secs(20)));
        let answer = answer.unwrap_or_else(|_| panic!("no answer; logs:\n{}", self.logs()));
        assert_eq!(answer, (200, "Ok".to_owned()), "{}", self.logs());
        assert_eq!(
            http_get(addr, "/404").unwrap(),
            (404, "Page not found".to_owned())
        );
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// `docker stop` sends SIGTERM to PID 1 and SIGKILL after its timeout: exit
/// code 0 (not 137) shows the bundle, as PID 1, forwarded SIGTERM and the
/// server shut down on it. How fast is for `cargo xtask bench`, not a test.
#[test]
fn scratch_image_serves_and_stops_on_sigterm_with_exit_0() {
    let container = Container::run(&[]);
    container.check_routes();
    let started = Instant::now();
    run_timeout(
        Command::new("docker").args(["stop", "--time", "30", &container.name]),
        Duration::from_secs(60),
    )
    .expect_success();
    let took = started.elapsed();
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "not stopped by SIGTERM (137 is SIGKILL after the timeout)\n{}",
        container.logs()
    );
    eprintln!("docker stop returned in {took:?}");
}

#[test]
fn image_is_the_bundle_plus_a_few_kilobytes() {
    let ran = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Size}}", image()]));
    ran.expect_success();
    let image_size: u64 = ran.stdout().trim().parse().unwrap();
    let bundle_size = std::fs::metadata(&artifacts().bundle).unwrap().len();
    eprintln!("image {image_size} bytes, bundle {bundle_size} bytes");
    assert!(
        image_size <= bundle_size + 8 * 1024,
        "image {image_size} bytes is more than the bundle ({bundle_size}) plus a few KB"
    );
}

#[test]
fn read_only_container_serves() {
    let container = Container::run(&["--read-only"]);
    container.check_routes();
    assert!(
        container.logs().contains("from memory"),
        "{}",
        container.logs()
    );
}

#[test]
fn read_only_container_with_a_noexec_tmpfs_serves() {
    let container = Container::run(&["--read-only", "--tmpfs", "/tmp"]);
    container.check_routes();
    assert!(container.logs().contains("noexec"), "{}", container.logs());
}

#[test]
fn healthcheck_turns_healthy() {
    let container = Container::run(&["--health-interval", "500ms", "--health-start-period", "0s"]);
    container.check_routes();
    eventually(
        Duration::from_secs(20),
        "the container to be healthy",
        || container.inspect("{{.State.Health.Status}}") == "healthy",
    );
}
