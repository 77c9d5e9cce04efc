//! The Mix integration (`integrations/mix`, package `sydney_bundle`): a
//! project made here depends on it by path, and `MIX_ENV=prod mix release`
//! gives one file through the release step. No hex: everything is local.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::*;

use crate::mix::{mix, mix_exs, new_project};

/// The project's mix.exs: the `sydney_bundle` path dependency and the
/// release step. `TEST_SYDNEY_BUNDLE_EXTRA=frobnicate` adds an unknown
/// option, so the error cases share one compiled project.
fn step_mix_exs(integration: &Path) -> String {
    mix_exs(
        &format!(
            "{{:sydney_bundle, path: \"{}\", runtime: false}}",
            integration.display()
        ),
        "steps: [:assemble, &SydneyBundle.pack/1], \
         sydney_bundle: [codec: :gzip, portable: true] ++ if(System.get_env(\"TEST_SYDNEY_BUNDLE_EXTRA\"), \
         do: [frobnicate: true], else: []),",
    )
}

/// A folder holding only `sydney-pack`, to put on PATH.
fn tool_dir(sandbox: &Sandbox) -> PathBuf {
    let dir = sandbox.join("tools");
    fs::create_dir(&dir).unwrap();
    fs::copy(sydney_pack(), dir.join("sydney-pack")).unwrap();
    dir
}

#[test]
fn mix_release_with_the_step_gives_one_file_that_serves() {
    let sandbox = Sandbox::new();
    let project = new_project(sandbox.path());
    fs::write(
        project.join("mix.exs"),
        step_mix_exs(&root().join("integrations/mix")),
    )
    .unwrap();
    let tools = tool_dir(&sandbox);
    let path_with_tool = format!("{}:/usr/local/bin:/usr/bin:/bin", tools.display());
    let release = |path: &str, extra: Option<&str>| {
        let mut command = mix(sandbox.path(), &["release", "--overwrite"]);
        command.current_dir(&project).env("PATH", path);
        if let Some(extra) = extra {
            command.env("TEST_SYDNEY_BUNDLE_EXTRA", extra);
        }
        run_timeout(&mut command, Duration::from_secs(600))
    };
    let bundle_dir = project.join("_build/prod/bundle");

    // Errors first (each leaves no bundle): sydney-pack missing from PATH,
    // then an unknown option.
    release("/usr/local/bin:/usr/bin:/bin", None)
        .expect_code(127)
        .expect_stderr("sydney_bundle: error: sydney-pack not found on PATH");
    assert!(Sandbox::list(&bundle_dir).is_empty());
    release(&path_with_tool, Some("frobnicate"))
        .expect_code(2)
        .expect_stderr("sydney_bundle: error: unknown sydney_bundle option :frobnicate");
    assert!(Sandbox::list(&bundle_dir).is_empty());

    release(&path_with_tool, None)
        .expect_success()
        .expect_stderr("packed hello 0.1.0 into");
    assert_eq!(Sandbox::list(&bundle_dir), ["hello"], "one file");
    let bundle = bundle_dir.join("hello");
    run(sandbox.command(&bundle).arg("version"))
        .expect_success()
        .expect_stdout("hello 0.1.0");
    // `portable: true` reached sydney-pack as --portable.
    run(sandbox.command(&bundle).args(["inspect", "--doctor"]))
        .expect_success()
        .expect_stdout("runs on: FROM scratch, musl hosts, glibc hosts (any version)");
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

    // The task packs an assembled release again, without `mix release`.
    drop(server);
    fs::remove_file(&bundle).unwrap();
    run_timeout(
        mix(sandbox.path(), &["sydney_bundle.pack"])
            .current_dir(&project)
            .env("PATH", &path_with_tool),
        Duration::from_secs(300),
    )
    .expect_success();
    assert_eq!(Sandbox::list(&bundle_dir), ["hello"]);
    run(sandbox.command(&bundle).arg("version"))
        .expect_success()
        .expect_stdout("hello 0.1.0");

    // The task documents itself.
    run_timeout(
        mix(sandbox.path(), &["help", "sydney_bundle.pack"]).current_dir(&project),
        Duration::from_secs(120),
    )
    .expect_success()
    .expect_stdout("steps: [:assemble, &SydneyBundle.pack/1]")
    .expect_stdout("127 - `sydney-pack` was not found");
}
