//! Graceful shutdown on SIGTERM and SIGINT.
//!
//! The order of events is made certain by waiting on what the server and
//! the kernel show, never on time: [`Conn::wait_until_read`] (the server
//! has read what was sent), and the server's own log lines (at debug level
//! it says when shutdown reached a connection).
//!
//! [`Conn::wait_until_read`]: crate::harness::Conn::wait_until_read

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::Sydney;

/// What the server logs (at debug) when shutdown finds a request part-way
/// in on a connection.
const PART_WAY_IN: &str = "answering the request part-way in, then closing";

/// An idle server must exit well within this.
const PROMPT: Duration = Duration::from_secs(2);

#[test]
fn idle_server_exits_0_promptly_on_sigterm() {
    let mut server = Sydney::loopback().spawn();
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.stderr());
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
}

#[test]
fn sigint_exits_0() {
    let mut server = Sydney::loopback().spawn();
    server.signal(libc::SIGINT);
    let status = server.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.stderr());
    assert!(
        server.stderr().contains("received SIGINT"),
        "{}",
        server.stderr()
    );
}

#[test]
fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let mut server = Sydney::loopback().spawn();
    let mut conn = server.connect();
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.response(false).map(|r| r.status), Ok(200));
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(5)).code(), Some(0));
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    assert!(conn.is_closed());
}

#[test]
fn request_part_way_in_on_a_new_connection_is_answered() {
    let mut server = Sydney::loopback().args(["--log-level", "debug"]).spawn();
    let mut conn = server.connect();
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
    conn.wait_until_read();
    server.signal(libc::SIGTERM);
    server.wait_for_line(PART_WAY_IN);
    conn.send(b"\r\n");
    let response = conn.response(false).unwrap_or_else(|err| server.fail(&err));
    assert_eq!((response.status, response.text().as_str()), (200, "Ok"));
    assert_eq!(response.header("connection"), Some("close"));
    assert!(conn.is_closed());
    let status = server.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.stderr());
}

/// hyper alone would drop this one: after the first answer the connection
/// counts as idle, even with half of the next request already read.
#[test]
fn second_request_part_way_in_on_a_keep_alive_connection_is_answered() {
    let mut server = Sydney::loopback().args(["--log-level", "debug"]).spawn();
    let mut conn = server.connect();
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.response(false).map(|r| r.status), Ok(200));
    conn.send(b"GET /nope HTTP/1.1\r\n");
    conn.wait_until_read();
    server.signal(libc::SIGTERM);
    server.wait_for_line(PART_WAY_IN);
    conn.send(b"Host: t\r\n\r\n");
    let response = conn.response(false).unwrap_or_else(|err| server.fail(&err));
    assert_eq!(response.status, 404);
    assert_eq!(response.header("connection"), Some("close"));
    let status = server.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.stderr());
}

/// A keep-alive client between two requests at the signal: its next
/// request, sent within the grace, is answered (`connection: close`), not
/// met by a closed socket (docs/decisions/0091-idle-keep-alive-grace.md).
#[test]
fn next_request_of_an_idle_keep_alive_connection_is_answered() {
    let mut server = Sydney::loopback().args(["--log-level", "debug"]).spawn();
    let mut conn = server.connect();
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.response(false).map(|r| r.status), Ok(200));
    server.signal(libc::SIGTERM);
    server.wait_for_line("idle; its next request");
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = conn.response(false).unwrap_or_else(|err| server.fail(&err));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(conn.is_closed());
    let status = server.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.stderr());
}

/// The worst case of that race, made deterministic: the server is stopped
/// (SIGSTOP) while a client connects and sends a whole request and SIGTERM
/// arrives, so on resuming it finds the connection still in the listen
/// backlog, its bytes unread in the kernel, and the signal, all at once.
#[test]
fn connection_in_the_backlog_at_the_signal_is_answered() {
    for round in 0..5 {
        let mut server = Sydney::loopback().spawn();
        server.signal(libc::SIGSTOP);
        let mut conn = server.connect();
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        server.signal(libc::SIGTERM);
        server.signal(libc::SIGCONT);
        let response = conn
            .response(false)
            .unwrap_or_else(|err| server.fail(&format!("round {round}: {err}")));
        assert_eq!(response.status, 200, "round {round}");
        let status = server.wait(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.stderr());
    }
}

/// The request and the signal race: the connection may still sit in the
/// listen backlog and its bytes in the kernel when the signal lands.
#[test]
fn request_sent_just_before_the_signal_is_answered() {
    for round in 0..5 {
        let mut server = Sydney::loopback().spawn();
        let mut conn = server.connect();
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        server.signal(libc::SIGTERM);
        let response = conn
            .response(false)
            .unwrap_or_else(|err| server.fail(&format!("round {round}: {err}")));
        assert_eq!(response.status, 200, "round {round}");
        assert_eq!(server.wait(Duration::from_secs(5)).code(), Some(0));
    }
}

#[test]
fn listener_closes_while_draining() {
    let mut server = Sydney::loopback().args(["--log-level", "debug"]).spawn();
    let addr = server.addr();
    // Keeps the server draining.
    let mut slow = server.connect();
    slow.send(b"GET / HTTP/1.1\r\n");
    slow.wait_until_read();
    server.signal(libc::SIGTERM);
    // Logged once the listener is closed.
    server.wait_for_line("draining 1 connections");
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "new connection accepted while draining");
    slow.send(b"Host: t\r\n\r\n");
    assert_eq!(slow.response(false).map(|r| r.status), Ok(200));
    assert_eq!(server.wait(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn drain_is_bounded_by_the_shutdown_timeout() {
    let mut server = Sydney::loopback().args(["--shutdown-timeout", "1"]).spawn();
    // A request that never completes (the header timeout is 10 s).
    let mut stuck = server.connect();
    stuck.send(b"GET / HTTP/1.1\r\n");
    stuck.wait_until_read();
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait(Duration::from_secs(5));
    let waited = start.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.stderr());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "exited after {waited:?}"
    );
    assert!(
        server.stderr().contains("shutdown timeout"),
        "{}",
        server.stderr()
    );
}

#[test]
fn second_signal_exits_at_once() {
    let mut server = Sydney::loopback().spawn();
    let mut stuck = server.connect();
    stuck.send(b"GET / HTTP/1.1\r\n");
    stuck.wait_until_read();
    server.signal(libc::SIGTERM);
    server.wait_for_line("received SIGTERM");
    let start = Instant::now();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait(Duration::from_secs(5)).code(), Some(0));
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
}
