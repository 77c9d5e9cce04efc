//! Bad input: one clear stderr line naming the source, and the documented
//! exit code (2 for usage and configuration, 1 for runtime failures).

use std::net::TcpListener;

use crate::harness::{Sydney, one_error_line, write_file};

/// A bad-configuration case: how to break it, and what the one error line
/// must mention.
struct Case {
    name: &'static str,
    /// Config file contents (passed with `--config`), if any.
    file: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    /// Substrings of the error line; `{file}` stands for the config path.
    want: &'static [&'static str],
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_the_source() {
    let cases = [
        Case {
            name: "unknown key",
            file: Some("port = 0\nprot = 8080\n"),
            env: &[],
            args: &[],
            want: &[
                "unknown key \"prot\" in config file {file} line 2",
                "valid keys are",
            ],
        },
        Case {
            name: "wrong type",
            file: Some("port = \"8080\"\n"),
            env: &[],
            args: &[],
            want: &[
                "invalid port \"8080\" in config file {file} line 1 (key port)",
                "expected an integer 0-65535",
            ],
        },
        Case {
            name: "out of range",
            file: Some("\nshutdown_timeout_secs = 99999\n"),
            env: &[],
            args: &[],
            want: &["invalid shutdown timeout 99999", "{file} line 2", "0-3600"],
        },
        Case {
            name: "unparseable toml",
            file: Some("port = = 1\n"),
            env: &[],
            args: &[],
            want: &[
                "cannot parse config file {file} line 1",
                "fix the TOML syntax",
            ],
        },
        Case {
            name: "table instead of keys",
            file: Some("[server]\nport = 1\n"),
            env: &[],
            args: &[],
            want: &[
                "unknown table \"server\" in config file {file} line 1",
                "write its keys at the top level",
            ],
        },
        Case {
            name: "bad PORT",
            file: None,
            env: &[("PORT", "abc")],
            args: &[],
            want: &[
                "invalid port \"abc\" in environment variable PORT: expected an integer 0-65535",
            ],
        },
        Case {
            name: "bad BIND",
            file: None,
            env: &[("BIND", "localhost")],
            args: &[],
            want: &["invalid bind address \"localhost\" in environment variable BIND"],
        },
        Case {
            name: "bad RUST_LOG",
            file: None,
            env: &[("RUST_LOG", "info,hyper=warn")],
            args: &[],
            want: &["invalid log level \"info,hyper=warn\" in environment variable RUST_LOG"],
        },
        Case {
            name: "bad --port",
            file: None,
            env: &[],
            args: &["--port", "70000"],
            want: &["invalid port \"70000\" in flag --port: expected an integer 0-65535"],
        },
        Case {
            name: "bad --bind",
            file: None,
            env: &[],
            args: &["--bind", "example.com"],
            want: &["invalid bind address \"example.com\" in flag --bind"],
        },
        Case {
            name: "bad --shutdown-timeout",
            file: None,
            env: &[],
            args: &["--shutdown-timeout", "soon"],
            want: &["invalid shutdown timeout \"soon\" in flag --shutdown-timeout"],
        },
        Case {
            name: "bad --log-level",
            file: None,
            env: &[],
            args: &["--log-level", "verbose"],
            want: &[
                "invalid log level \"verbose\" in flag --log-level",
                "error, warn, info",
            ],
        },
        Case {
            name: "unknown flag",
            file: None,
            env: &[],
            args: &["--prot", "8080"],
            want: &["invalid option '--prot'", "sydney --help"],
        },
        Case {
            name: "missing flag value",
            file: None,
            env: &[],
            args: &["--port"],
            want: &["missing argument for option '--port'", "sydney --help"],
        },
        Case {
            name: "stray argument",
            file: None,
            env: &[],
            args: &["serve"],
            want: &["unexpected argument \"serve\"", "sydney --help"],
        },
        Case {
            name: "missing --config file",
            file: None,
            env: &[],
            args: &["--config", "/nonexistent/sydney.toml"],
            want: &[
                "cannot read config file /nonexistent/sydney.toml (given with --config)",
                "No such file or directory",
                "check the path given to --config",
            ],
        },
        Case {
            name: "unreadable --config (a directory)",
            file: None,
            env: &[],
            args: &["--config", "/"],
            want: &[
                "cannot read config file / (given with --config)",
                "check the path",
            ],
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Sydney::loopback();
        let mut file_path = String::new();
        if let Some(text) = case.file {
            let path = write_file(dir.path(), "sydney.toml", text);
            file_path = path.display().to_string();
            cmd = cmd.args(["--config".as_ref(), path.as_os_str()]);
        }
        for (name, value) in case.env {
            cmd = cmd.env(name, value);
        }
        cmd = cmd.args(case.args);
        let finished = cmd.run();
        assert_eq!(finished.code(), 2, "case {}\n{finished}", case.name);
        let line = one_error_line(&finished);
        for want in case.want {
            let want = want.replace("{file}", &file_path);
            assert!(
                line.contains(&want),
                "case {}: {line:?} lacks {want:?}\n{finished}",
                case.name
            );
        }
    }
}

#[test]
fn unreadable_bundle_root_config_names_bundle_root() {
    let root = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be: it exists but cannot be read.
    std::fs::create_dir_all(root.path().join("etc/sydney.toml")).expect("mkdir");
    let finished = Sydney::loopback().env("BUNDLE_ROOT", root.path()).run();
    assert_eq!(finished.code(), 2, "{finished}");
    let line = one_error_line(&finished);
    assert!(line.contains("(found via BUNDLE_ROOT)"), "{line}");
    assert!(line.contains("unset BUNDLE_ROOT"), "{line}");
}

#[test]
fn bad_bundle_root_config_names_the_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = write_file(root.path(), "etc/sydney.toml", "port = true\n");
    let finished = Sydney::loopback().env("BUNDLE_ROOT", root.path()).run();
    assert_eq!(finished.code(), 2, "{finished}");
    let line = one_error_line(&finished);
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(line.contains("invalid port true"), "{line}");
}

#[test]
fn port_in_use_exits_1_with_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let finished = Sydney::new()
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .run();
    assert_eq!(finished.code(), 1, "{finished}");
    let line = one_error_line(&finished);
    assert!(
        line.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{line}"
    );
    assert!(line.contains("in use"), "{line}");
    assert!(line.contains("--port"), "{line}");
}

#[test]
fn unavailable_address_exits_1() {
    // TEST-NET-1: no interface here has it.
    let finished = Sydney::new()
        .args(["--bind", "192.0.2.1", "--port", "0"])
        .run();
    assert_eq!(finished.code(), 1, "{finished}");
    let line = one_error_line(&finished);
    assert!(line.contains("cannot listen on 192.0.2.1:0"), "{line}");
    assert!(line.contains("--bind"), "{line}");
}

#[test]
fn help_documents_flags_and_exit_codes() {
    for flag in ["--help", "-h"] {
        let finished = Sydney::new().args([flag]).run();
        assert_eq!(finished.code(), 0, "{finished}");
        assert_eq!(finished.stderr, "", "{finished}");
        for want in [
            "--port",
            "--bind",
            "--config",
            "--log-level",
            "--shutdown-timeout",
            "PORT",
            "BIND",
            "RUST_LOG",
            "BUNDLE_ROOT",
            "LISTEN_FDS",
            "Exit codes",
            "  1  ",
            "  2  ",
        ] {
            assert!(
                finished.stdout.contains(want),
                "help lacks {want:?}\n{finished}"
            );
        }
    }
}

#[test]
fn version_prints_the_crate_version() {
    let finished = Sydney::new().args(["--version"]).run();
    assert_eq!(finished.code(), 0, "{finished}");
    assert_eq!(
        finished.stdout,
        format!("sydney {}\n", env!("CARGO_PKG_VERSION"))
    );
}
