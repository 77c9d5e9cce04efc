//! Where settings come from: flag > environment > config file > default.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::harness::{Conn, ListenPid, Sydney, free_port, write_file};

/// One row of a precedence table: the value each source sets (if any) and
/// the value that should win.
struct Case<T, W> {
    name: &'static str,
    file: Option<T>,
    env: Option<T>,
    flag: Option<T>,
    want: W,
}

const fn case<T, W>(
    name: &'static str,
    file: Option<T>,
    env: Option<T>,
    flag: Option<T>,
    want: W,
) -> Case<T, W> {
    Case {
        name,
        file,
        env,
        flag,
        want,
    }
}

/// Builds the command for one row: `file_line` renders a value as a config
/// file line, `env_var` and `flag` name where the other sources go.
fn command<T: ToString, W>(
    base: Sydney,
    dir: &Path,
    row: &Case<T, W>,
    file_line: impl Fn(&T) -> String,
    env_var: &str,
    flag: &str,
) -> Sydney {
    let mut cmd = base;
    if let Some(value) = &row.file {
        let path = write_file(dir, "sydney.toml", &file_line(value));
        cmd = cmd.args(["--config".as_ref(), path.as_os_str()]);
    }
    if let Some(value) = &row.env {
        cmd = cmd.env(env_var, value.to_string());
    }
    if let Some(value) = &row.flag {
        cmd = cmd.args([flag.to_owned(), value.to_string()]);
    }
    cmd
}

/// Loopback addresses stand for the sources, so the `listening on` line
/// shows which one won.
const FILE_IP: &str = "127.0.0.2";
const ENV_IP: &str = "127.0.0.3";
const FLAG_IP: &str = "127.0.0.4";

#[test]
fn bind_precedence() {
    let rows = [
        case("default", None, None, None, "0.0.0.0"),
        case("file", Some(FILE_IP), None, None, FILE_IP),
        case("env beats file", Some(FILE_IP), Some(ENV_IP), None, ENV_IP),
        case(
            "flag beats env",
            Some(FILE_IP),
            Some(ENV_IP),
            Some(FLAG_IP),
            FLAG_IP,
        ),
        case(
            "flag beats file",
            Some(FILE_IP),
            None,
            Some(FLAG_IP),
            FLAG_IP,
        ),
        case("env alone", None, Some(ENV_IP), None, ENV_IP),
    ];
    for row in rows {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Sydney::new().env("PORT", "0");
        let file_line = |ip: &&str| format!("bind = \"{ip}\"\n");
        let server = command(base, dir.path(), &row, file_line, "BIND", "--bind").spawn();
        assert_eq!(
            server.bound().ip().to_string(),
            row.want,
            "case {}",
            row.name
        );
        assert_eq!(server.get("/").status, 200, "case {}", row.name);
    }
}

#[test]
fn port_precedence() {
    // Free ports stand for the sources.
    let [file, env, flag] = [0; 3].map(|_| free_port("127.0.0.1"));
    let rows = [
        case("file", Some(file), None, None, file),
        case("env beats file", Some(file), Some(env), None, env),
        case("flag beats env", Some(file), Some(env), Some(flag), flag),
        case("flag beats file", Some(file), None, Some(flag), flag),
    ];
    for row in rows {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Sydney::new().args(["--bind", "127.0.0.1"]);
        let file_line = |port: &u16| format!("port = {port}\n");
        let server = command(base, dir.path(), &row, file_line, "PORT", "--port").spawn();
        assert_eq!(server.bound().port(), row.want, "case {}", row.name);
    }
}

/// The log level shows in whether the (info) start-up line is printed.
#[test]
fn log_level_precedence() {
    let rows = [
        case("default is info", None, None, None, true),
        case("file warn", Some("warn"), None, None, false),
        case("env beats file", Some("warn"), Some("info"), None, true),
        case(
            "flag beats env",
            Some("info"),
            Some("info"),
            Some("error"),
            false,
        ),
        case("env alone, any case", None, Some("WARN"), None, false),
    ];
    for row in rows {
        let dir = tempfile::tempdir().expect("tempdir");
        let file_line = |level: &&str| format!("log_level = \"{level}\"\n");
        let cmd = command(
            Sydney::loopback(),
            dir.path(),
            &row,
            file_line,
            "RUST_LOG",
            "--log-level",
        );
        if row.want {
            let server = cmd.spawn();
            assert!(
                server.stderr().contains("listening on"),
                "case {}",
                row.name
            );
        } else {
            // Without the line there is nothing to wait for on stderr, so
            // the test hands the server a listening socket (as systemd
            // would) and waits for an answer on it: the server then runs,
            // with its signal handlers installed before it accepted.
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let mut server = cmd.pass_fd(listener, ListenPid::Child).start();
            let mut conn = Conn::open(addr).expect("connect");
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            let response = conn.response(false).unwrap_or_else(|err| server.fail(&err));
            assert_eq!(response.status, 200, "case {}", row.name);
            server.signal(libc::SIGTERM);
            let status = server.wait(Duration::from_secs(5));
            assert_eq!(status.code(), Some(0), "case {}", row.name);
            assert_eq!(server.stderr(), "", "case {}", row.name);
        }
    }
}

#[test]
fn bundle_root_config_is_picked_up() {
    let root = tempfile::tempdir().expect("tempdir");
    write_file(
        root.path(),
        "etc/sydney.toml",
        "bind = \"127.0.0.5\"\nport = 0\n",
    );
    let server = Sydney::new().env("BUNDLE_ROOT", root.path()).spawn();
    assert_eq!(server.bound().ip().to_string(), "127.0.0.5");
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn missing_bundle_root_config_is_fine() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Sydney::loopback().env("BUNDLE_ROOT", root.path()).spawn();
    assert_eq!(server.get("/").status, 200);
    let missing_root = root.path().join("does-not-exist");
    let server = Sydney::loopback().env("BUNDLE_ROOT", &missing_root).spawn();
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn explicit_config_replaces_the_bundle_root_one() {
    let root = tempfile::tempdir().expect("tempdir");
    // Would fail to parse if it were read.
    write_file(root.path(), "etc/sydney.toml", "this is not toml");
    let explicit = write_file(
        root.path(),
        "other.toml",
        "bind = \"127.0.0.6\"\nport = 0\n",
    );
    let server = Sydney::new()
        .env("BUNDLE_ROOT", root.path())
        .args(["--config".as_ref(), explicit.as_os_str()])
        .spawn();
    assert_eq!(server.bound().ip().to_string(), "127.0.0.6");
}

#[test]
fn shipped_template_runs() {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/sydney.toml");
    let server = Sydney::loopback()
        .args(["--config".as_ref(), template.as_os_str()])
        .spawn();
    assert_eq!(server.get("/").status, 200);
}
