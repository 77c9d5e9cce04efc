//! Reproducibility: the same commit and toolchain give the same bundle,
//! from a warm build directory and from a clean one.

use std::process::Command;
use std::time::Duration;

use e2e::*;

fn sha256(path: &std::path::Path) -> String {
    let ran = run(Command::new("sha256sum").arg(path));
    ran.expect_success();
    ran.stdout().split_whitespace().next().unwrap().to_owned()
}

#[test]
fn two_bundle_builds_give_the_same_sha256() {
    let sandbox = Sandbox::new();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // xtask is built in its own target dir: the outer `cargo test` holds the
    // lock on the workspace's.
    let build = |out: &std::path::Path, extra: &[&str]| {
        let mut command = Command::new(&cargo);
        command
            .current_dir(root())
            .args(["run", "--quiet", "--locked", "--package", "xtask"])
            .arg("--target-dir")
            .arg(root().join("target/xtask-e2e"))
            .args(["--", "bundle", "--out"])
            .arg(out)
            .args(extra)
            .env_remove("RUSTFLAGS");
        run_timeout(&mut command, Duration::from_secs(1800)).expect_success();
    };
    let clean_dir = sandbox.join("clean-build");
    let warm = sandbox.join("warm");
    let clean = sandbox.join("clean");
    build(&warm, &[]);
    build(&clean, &["--build-dir", clean_dir.to_str().unwrap()]);
    let a = sha256(&warm);
    let b = sha256(&clean);
    assert_eq!(a, b, "a clean rebuild changed the bundle");
    assert_eq!(
        a,
        sha256(&artifacts().bundle),
        "differs from the bundle under test"
    );
    eprintln!("sydney-bundle sha256 {a} (warm and clean builds)");
}
