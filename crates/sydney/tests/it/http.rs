//! What clients see: routes, keep-alive, and hostile requests.

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Sydney, write_file};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

#[test]
fn get_root_answers_ok() {
    let server = Sydney::loopback().spawn();
    let response = server.get("/");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "Ok");
    assert_eq!(response.header("content-type"), Some(TEXT_PLAIN));
    assert_eq!(response.header("content-length"), Some("2"));
}

#[test]
fn query_strings_do_not_change_the_route() {
    let server = Sydney::loopback().spawn();
    assert_eq!(server.get("/?x=1").status, 200);
}

#[test]
fn head_root_has_the_headers_and_no_body() {
    let server = Sydney::loopback().spawn();
    let mut conn = server.connect();
    conn.send(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n");
    let head = conn.response(true).unwrap_or_else(|err| server.fail(&err));
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-type"), Some(TEXT_PLAIN));
    assert_eq!(head.header("content-length"), Some("2"));
    // Had a body been sent, it would now be read as the next status line.
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    let get = conn.response(false).unwrap_or_else(|err| server.fail(&err));
    assert_eq!((get.status, get.text().as_str()), (200, "Ok"));
}

#[test]
fn everything_else_is_404() {
    let server = Sydney::loopback().spawn();
    let requests: &[(&str, bool)] = &[
        ("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", false),
        ("GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n", false),
        (
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        (
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
            false,
        ),
        (
            "PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        ("DELETE / HTTP/1.1\r\nHost: t\r\n\r\n", false),
        ("OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", false),
        ("HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n", true),
    ];
    for (request, head) in requests {
        let mut conn = server.connect();
        conn.send(request.as_bytes());
        let response = conn
            .response(*head)
            .unwrap_or_else(|err| server.fail(&format!("{request:?}: {err}")));
        assert_eq!(response.status, 404, "{request:?} -> {response:?}");
        assert_eq!(
            response.header("content-type"),
            Some(TEXT_PLAIN),
            "{request:?}"
        );
        assert_eq!(response.header("content-length"), Some("14"), "{request:?}");
        if !head {
            assert_eq!(response.text(), "Page not found", "{request:?}");
        }
    }
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Sydney::loopback().spawn();
    let mut conn = server.connect();
    for path in ["/", "/nope", "/"] {
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        let response = conn.response(false).unwrap_or_else(|err| server.fail(&err));
        assert_eq!(response.header("connection"), None, "{response:?}");
        assert!(matches!(response.status, 200 | 404), "{response:?}");
    }
    // Pipelined: two requests in one write, two answers in order.
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    let first = conn.response(false).unwrap_or_else(|err| server.fail(&err));
    let second = conn.response(false).unwrap_or_else(|err| server.fail(&err));
    assert_eq!((first.status, second.status), (200, 404));
}

#[test]
fn malformed_requests_get_400_and_the_server_carries_on() {
    let mut server = Sydney::loopback().spawn();
    let garbage: &[&[u8]] = &[
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"G\xffT / HTTP/1.1\r\n\r\n",
    ];
    for bytes in garbage {
        let mut conn = server.connect();
        conn.send(bytes);
        let answer = String::from_utf8_lossy(&conn.read_to_end()).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{bytes:?} got {answer:?}\n{}",
            server.stderr()
        );
        assert_eq!(server.get("/").status, 200, "after {bytes:?}");
    }
    // A client that resets mid-request must not disturb anyone either.
    let mut conn = server.connect();
    conn.send(b"GET / HTTP/1.1\r\nHo");
    drop(conn);
    assert_eq!(server.get("/").status, 200);
    // None of this is worth a log line at the default level: once the
    // server has stopped, its whole log is the start and the stop.
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(5)).code(), Some(0));
    let stderr = server.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "log noise:\n{stderr}");
    assert!(lines[0].contains("listening on"), "{stderr}");
    assert!(lines[1].contains("received SIGTERM"), "{stderr}");
}

#[test]
fn oversized_heads_get_431_and_the_server_carries_on() {
    let server = Sydney::loopback().spawn();
    let big = "a".repeat(20_000); // over the 16 KiB default
    let mut conn = server.connect();
    conn.send(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let answer = String::from_utf8_lossy(&conn.read_to_end()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 431 "), "got {answer:?}");
    assert_eq!(server.get("/").status, 200);

    // Just under the limit is fine.
    let fits = "a".repeat(15_000);
    let mut conn = server.connect();
    conn.send(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {fits}\r\n\r\n").as_bytes());
    assert_eq!(conn.response(false).map(|r| r.status), Ok(200));
}

#[test]
fn max_header_bytes_comes_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_file(dir.path(), "s.toml", "max_header_bytes = 2048\n");
    let server = Sydney::loopback()
        .args(["--config".as_ref(), config.as_os_str()])
        .spawn();
    let mut conn = server.connect();
    let big = "a".repeat(3000);
    conn.send(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let answer = String::from_utf8_lossy(&conn.read_to_end()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 431 "), "got {answer:?}");
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn slow_clients_are_disconnected_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_file(dir.path(), "s.toml", "header_read_timeout_secs = 1\n");
    let server = Sydney::loopback()
        .args(["--config".as_ref(), config.as_os_str()])
        .spawn();

    // Slowloris: a head that never ends, a byte at a time. (These sleeps
    // are the client's pace, which is what is under test, not a wait.)
    let mut slow = server.connect();
    let start = Instant::now();
    slow.send(b"GET / HTTP/1.1\r\n");
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(200));
        slow.send(b"X");
    }
    // Meanwhile everyone else is served.
    assert_eq!(server.get("/").status, 200);
    let rest = slow.read_to_end();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408 "),
        "got {rest:?}"
    );

    // An idle keep-alive connection is closed by the same timer.
    let mut idle = server.connect();
    idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.response(false).map(|r| r.status), Ok(200));
    let start = Instant::now();
    assert!(idle.is_closed());
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn ipv6_loopback_works() {
    let server = Sydney::new().args(["--bind", "::1", "--port", "0"]).spawn();
    assert!(server.bound().is_ipv6(), "{}", server.bound());
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn wildcard_bind_reports_the_real_port() {
    let server = Sydney::new().env("PORT", "0").spawn();
    let bound = server.bound();
    assert!(bound.ip().is_unspecified(), "{bound}");
    assert_ne!(bound.port(), 0);
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn reuse_port_lets_a_second_server_bind_the_same_port() {
    let first = Sydney::loopback().args(["--reuse-port"]).spawn();
    let port = first.bound().port().to_string();
    let args = ["--bind", "127.0.0.1", "--port", &port, "--reuse-port"];
    // Precondition: without the flag, the port is taken (exit 1).
    let refused = Sydney::new()
        .args(["--bind", "127.0.0.1", "--port", &port])
        .run();
    assert_eq!(refused.code(), 1, "{refused}");

    let mut second = Sydney::new().args(args).spawn();
    assert_eq!(second.bound(), first.bound());
    assert_eq!(second.get("/").status, 200);
    // The second keeps serving the port once the first has gone.
    drop(first);
    for _ in 0..20 {
        assert_eq!(second.get("/").status, 200);
    }
    second.signal(libc::SIGTERM);
    assert!(second.wait(Duration::from_secs(10)).success());
}
