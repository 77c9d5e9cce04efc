//! A real Elixir `mix release`, packed and run as one file, and diagnosed by
//! the doctor. Needs Elixir (Debian's `elixir` package; .ci/run installs it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use e2e::bundle_format::Codec;
use e2e::*;

/// A tiny Elixir app that answers every HTTP request with `Ok`, using only
/// OTP's :gen_tcp (hex.pm is not reachable here, so no Plug). It says when
/// it stops cleanly (the application's `stop/1` runs only on an orderly
/// shutdown).
pub(crate) const APPLICATION: &str = r#"
defmodule Hello.Application do
  use Application

  @impl true
  def start(_type, _args) do
    port = String.to_integer(System.get_env("PORT") || "4000")
    children = [{Task, fn -> Hello.serve(port) end}]
    Supervisor.start_link(children, strategy: :one_for_one, name: Hello.Supervisor)
  end

  @impl true
  def stop(_state) do
    IO.puts(:stderr, "hello: stopped cleanly")
  end
end

defmodule Hello do
  def serve(port) do
    {:ok, socket} =
      :gen_tcp.listen(port, [:binary, packet: :http_bin, active: false, reuseaddr: true, ip: {127, 0, 0, 1}])
    IO.puts(:stderr, "hello: listening on 127.0.0.1:#{port}")
    accept(socket)
  end

  defp accept(socket) do
    {:ok, client} = :gen_tcp.accept(socket)
    spawn(fn -> answer(client) end)
    accept(socket)
  end

  defp answer(client) do
    drain(client)
    :gen_tcp.send(client, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOk")
    :gen_tcp.close(client)
  end

  defp drain(client) do
    case :gen_tcp.recv(client, 0, 5000) do
      {:ok, :http_eoh} -> :ok
      {:ok, _} -> drain(client)
      _ -> :ok
    end
  end
end
"#;

/// A runtime configuration: with one, a release's `start` writes the
/// merged config into `RELEASE_TMP` before it boots.
pub(crate) const RUNTIME_CONFIG: &str = "import Config\nconfig :hello, started_by: :runtime\n";

/// A `mix` command for the project in `work` (`MIX_ENV=prod`, a private
/// HOME and MIX_HOME: nothing from the machine's user).
pub(crate) fn mix(work: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("mix");
    command
        .args(args)
        .current_dir(work)
        .env("MIX_ENV", "prod")
        .env("HOME", work)
        .env("MIX_HOME", work.join(".mix"));
    command
}

/// The project file: `deps` and `release` are Elixir keyword-list items
/// (empty, or ending with a comma). The release reboots after reading its
/// runtime config, so `start` writes that config into `RELEASE_TMP` (without
/// a reboot, Elixir 1.14 reads it in place).
pub(crate) fn mix_exs(deps: &str, release: &str) -> String {
    format!(
        r#"defmodule Hello.MixProject do
  use Mix.Project

  def project do
    [
      app: :hello,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [{deps}],
      releases: [hello: [{release} reboot_system_after_config: true]]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {{Hello.Application, []}}]
  end
end
"#
    )
}

/// `mix new hello --sup` in `work`, with the app above, [`mix_exs`] and a
/// runtime config; returns the project folder.
pub(crate) fn new_project(work: &Path) -> PathBuf {
    require_program("mix", "elixir");
    run_timeout(
        &mut mix(work, &["new", "hello", "--sup"]),
        Duration::from_secs(120),
    )
    .expect_success();
    let project = work.join("hello");
    fs::write(project.join("mix.exs"), mix_exs("", "")).unwrap();
    fs::write(project.join("lib/hello/application.ex"), APPLICATION).unwrap();
    fs::create_dir_all(project.join("config")).unwrap();
    fs::write(project.join("config/runtime.exs"), RUNTIME_CONFIG).unwrap();
    project
}

/// Builds the release once per test run: `_build/prod/rel/hello`.
pub(crate) fn mix_release() -> &'static PathBuf {
    static RELEASE: OnceLock<PathBuf> = OnceLock::new();
    RELEASE.get_or_init(|| {
        // Shared by the tests that use it, so it outlives each of them;
        // removed when the test binary exits.
        let work = tempfile::Builder::new()
            .prefix("sydney-mix-")
            .tempdir()
            .unwrap()
            .keep();
        let removed = work.clone();
        at_exit(move || fs::remove_dir_all(&removed).unwrap());
        let project = new_project(&work);
        run_timeout(
            mix(&work, &["release", "--overwrite"]).current_dir(&project),
            Duration::from_secs(600),
        )
        .expect_success();
        project.join("_build/prod/rel/hello")
    })
}

fn packed(sandbox: &Sandbox) -> PathBuf {
    let bundle = sandbox.join("hello-bundle");
    let mut options = pack_options("hello", "bin/hello", Codec::Gzip);
    options.version = "0.1.0".to_owned();
    options.args = vec!["start".to_owned()];
    options.needs_tree = true;
    pack(mix_release(), &options, &bundle);
    bundle
}

#[test]
fn a_real_mix_release_runs_from_one_file() {
    let sandbox = Sandbox::new();
    let bundle = packed(&sandbox);
    let port = free_port();
    let server = Server::start(
        sandbox
            .command(&bundle)
            .arg("start")
            .env("PORT", port.to_string())
            // No epmd or cookie: this test is about packing, not clustering.
            .env("RELEASE_DISTRIBUTION", "none"),
        Duration::from_secs(60),
    );
    assert_eq!(server.get("/"), (200, "Ok".to_owned()));

    // The lifecycle works for it too: daemon, pid, stop.
    drop(server);
    let cmd = |args: &[&str]| {
        let mut command = sandbox.command(&bundle);
        command
            .args(args)
            .env("PORT", port.to_string())
            .env("RELEASE_DISTRIBUTION", "none");
        command
    };
    run(&mut cmd(&["daemon"])).expect_success();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        wait_for_http(addr, "/", Duration::from_secs(60)),
        (200, "Ok".into())
    );
    run(&mut cmd(&["pid"])).expect_success();
    run(&mut cmd(&["stop", "--timeout", "20"])).expect_success();
    run(&mut cmd(&["pid"])).expect_code(3);
}

#[test]
fn the_doctor_says_what_a_mix_release_needs() {
    let sandbox = Sandbox::new();
    let bundle = packed(&sandbox);
    let ran = run(sandbox.command(&bundle).args(["inspect", "--doctor"]));
    ran.expect_success()
        .expect_stdout("bin/hello: script, #!/bin/sh")
        .expect_stdout("beam.smp: ELF, dynamic, loader /lib64/ld-linux-x86-64.so.2")
        .expect_stdout("FROM scratch: needs /bin/sh")
        .expect_stdout("alpine (musl): needs glibc-linked programs")
        .expect_stdout("glibc hosts: needs glibc >= 2.")
        .expect_stdout("libraries ");
}
