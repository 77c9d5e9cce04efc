//! Socket activation: listening sockets passed as systemd passes them (the
//! socket at fd 3, `LISTEN_FDS=1`, `LISTEN_PID` the server's own pid).

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::harness::{Conn, ListenPid, Sydney, free_port, one_error_line};

/// A listening socket on loopback, as a `.socket` unit would hold it.
fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// A clone of the listener's descriptor to hand over; the test keeps its
/// own copy, as systemd does.
fn fd_of(listener: &TcpListener) -> OwnedFd {
    listener.try_clone().expect("dup listener").into()
}

fn is_refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => false,
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

#[test]
fn serves_on_the_inherited_socket_and_binds_nothing() {
    let (listener, addr) = loopback_listener();
    // A port the server would bind if it ignored the inherited socket.
    let own_port = free_port("127.0.0.1");
    let own = SocketAddr::from(([127, 0, 0, 1], own_port));
    let mut server = Sydney::new()
        .args(["--bind", "127.0.0.1", "--port", &own_port.to_string()])
        .pass_fd(fd_of(&listener), ListenPid::Child)
        .spawn();

    assert_eq!(server.bound(), addr, "announced address");
    let response = server.get("/");
    assert_eq!((response.status, response.text().as_str()), (200, "Ok"));
    assert!(is_refused(own), "the server also bound its own port {own}");

    // The descriptor is close-on-exec in the server (O_CLOEXEC is 02000000
    // in fdinfo's octal flags), so no child of it would inherit it.
    let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", server.pid()))
        .unwrap_or_else(|err| server.fail(&format!("cannot read fdinfo of fd 3: {err}")));
    let flags = fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|octal| u32::from_str_radix(octal.trim(), 8).ok())
        .unwrap_or_else(|| server.fail(&format!("no flags in fdinfo: {fdinfo}")));
    assert_ne!(flags & 0o2000000, 0, "fd 3 lacks O_CLOEXEC: {flags:o}");

    server.signal(libc::SIGTERM);
    let status = server.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.stderr());
    assert!(
        server
            .stderr()
            .contains("serving on the sockets the service manager passed (LISTEN_FDS): fd 3"),
        "{}",
        server.stderr()
    );
}

/// Graceful shutdown works on an inherited socket, and since the socket
/// outlives the server (the manager keeps it), a connection made while no
/// server runs waits in it and the next server answers it: a restart
/// refuses nothing.
#[test]
fn shutdown_drains_and_the_next_server_takes_over_the_socket() {
    let (listener, addr) = loopback_listener();
    let mut first = Sydney::new()
        .args(["--log-level", "debug"])
        .pass_fd(fd_of(&listener), ListenPid::Child)
        .spawn();
    let mut conn = first.connect();
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
    conn.wait_until_read();
    first.signal(libc::SIGTERM);
    first.wait_for_line("answering the request part-way in");
    conn.send(b"\r\n");
    let response = conn.response(false).unwrap_or_else(|err| first.fail(&err));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    let status = first.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", first.stderr());

    // No server now; the kernel still queues connections on the socket.
    let mut waiting = Conn::open(addr).expect("connect while no server runs");
    waiting.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");

    let second = Sydney::new()
        .pass_fd(fd_of(&listener), ListenPid::Child)
        .spawn();
    let response = waiting
        .response(false)
        .unwrap_or_else(|err| second.fail(&err));
    assert_eq!((response.status, response.text().as_str()), (200, "Ok"));
    assert_eq!(second.get("/").status, 200);
}

/// Several sockets (an IPv4 and an IPv6 one here), each served, named in
/// the log by `LISTEN_FDNAMES`.
#[test]
fn serves_on_every_inherited_socket() {
    let (v4, v4_addr) = loopback_listener();
    let v6 = TcpListener::bind("[::1]:0").expect("bind ::1");
    let v6_addr = v6.local_addr().expect("local addr");
    let mut server = Sydney::new()
        .env("LISTEN_FDNAMES", "public:admin")
        .pass_fds(vec![fd_of(&v4), fd_of(&v6)], ListenPid::Child)
        .spawn();
    // The second `listening on` line.
    let second = server.wait_for_line("listening on");
    assert!(second.ends_with(&v6_addr.to_string()), "{second}");
    assert_eq!(server.bound(), v4_addr);
    for addr in [v4_addr, v6_addr] {
        let mut conn = Conn::open(addr).unwrap_or_else(|err| server.fail(&err.to_string()));
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let response = conn.response(false).unwrap_or_else(|err| server.fail(&err));
        assert_eq!(response.status, 200, "{addr}");
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(5)).code(), Some(0));
    assert!(
        server.stderr().contains("fd 3 (public), fd 4 (admin)"),
        "{}",
        server.stderr()
    );
}

/// Sockets meant for another process (a parent that did not unset the
/// variables) are ignored, as sd_listen_fds ignores them.
#[test]
fn sockets_for_another_pid_are_ignored() {
    let (listener, addr) = loopback_listener();
    // PID 1 is never the server.
    let server = Sydney::loopback()
        .pass_fd(fd_of(&listener), ListenPid::Value("1".into()))
        .spawn();
    assert_ne!(server.bound(), addr, "served on a socket meant for pid 1");
    assert_eq!(server.bound().ip().to_string(), "127.0.0.1");
    assert_eq!(server.get("/").status, 200);
}

/// Each bad input: one error line naming the problem and the fix, and the
/// documented exit code.
#[test]
fn bad_inherited_sockets_exit_with_one_clear_line() {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let unconnected = unused_tcp_socket();
    let file = std::fs::File::open("/dev/null").expect("open /dev/null");
    let (listener, _) = loopback_listener();
    let cases: Vec<(&str, Sydney, i32, &[&str])> = vec![
        (
            "LISTEN_FDS not a number",
            Sydney::loopback()
                .pass_fd(fd_of(&listener), ListenPid::Child)
                .env("LISTEN_FDS", "one"),
            2,
            &[
                "invalid LISTEN_FDS \"one\"",
                "expected the number of listening sockets passed from fd 3 on",
            ],
        ),
        (
            "LISTEN_PID not a number",
            Sydney::loopback().pass_fd(fd_of(&listener), ListenPid::Value("self".into())),
            2,
            &["invalid LISTEN_PID \"self\""],
        ),
        (
            "a file, not a socket",
            Sydney::loopback().pass_fd(OwnedFd::from(file), ListenPid::Child),
            1,
            &[
                "cannot listen on inherited fd 3 (LISTEN_FDS=1): it is not a socket",
                "ListenStream=",
            ],
        ),
        (
            "a UDP socket",
            Sydney::loopback().pass_fd(OwnedFd::from(udp), ListenPid::Child),
            1,
            &["inherited fd 3", "it is not a stream socket"],
        ),
        (
            "a TCP socket that is not listening",
            Sydney::loopback().pass_fd(unconnected, ListenPid::Child),
            1,
            &["inherited fd 3", "it is a TCP socket that is not listening"],
        ),
        (
            "more sockets announced than passed",
            Sydney::loopback()
                .pass_fd(fd_of(&listener), ListenPid::Child)
                .env("LISTEN_FDS", "2"),
            1,
            &[
                "cannot listen on inherited fd 4 (LISTEN_FDS=2): it is not open",
                "unset LISTEN_FDS",
            ],
        ),
    ];
    for (name, cmd, code, wants) in cases {
        let finished = cmd.run();
        assert_eq!(finished.code(), code, "case {name}\n{finished}");
        let line = one_error_line(&finished);
        for want in wants {
            assert!(
                line.contains(want),
                "case {name}: {line:?} lacks {want:?}\n{finished}"
            );
        }
    }
}

/// A TCP socket that is neither listening nor connected.
fn unused_tcp_socket() -> OwnedFd {
    // SAFETY: socket(2) has no memory-safety preconditions; the result is
    // checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created by socket(2) and nothing else owns it.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}
