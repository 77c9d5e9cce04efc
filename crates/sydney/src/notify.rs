//! systemd's readiness notification (`sd_notify(3)`): once the listeners
//! are ready, send `READY=1` to the datagram socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). systemd
//! (`Type=notify`) and the bundle's supervisor during an upgrade wait for
//! it; a health check cannot tell, as the old server answers on the same
//! socket.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// The variable of the protocol.
pub const VAR: &str = "NOTIFY_SOCKET";

/// Sends `READY=1` to `socket`. Raw libc rather than std's `UnixDatagram`
/// and `SocketAddr`, which would add their address handling to the bundle's
/// payload (decision 0092).
pub fn ready(socket: &OsStr) -> io::Result<()> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = socket.as_bytes();
    // `@name`: an abstract socket, whose address starts with a NUL byte.
    let path: Vec<u8> = match bytes.strip_prefix(b"@") {
        Some(name) => [&[0u8][..], name].concat(),
        None => bytes.to_vec(),
    };
    if path.len() >= addr.sun_path.len() || (bytes.first() != Some(&b'@') && bytes.contains(&0)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a unix socket address (too long, or a NUL byte)",
        ));
    }
    for (slot, &byte) in addr.sun_path.iter_mut().zip(&path) {
        *slot = byte as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + path.len();
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let message = b"READY=1";
    // SAFETY: the message and the address are valid for the lengths given;
    // `fd` is open.
    let sent = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_NOSIGNAL,
            (&raw const addr).cast(),
            len as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads `NOTIFY_SOCKET`, ignoring an empty value.
pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Option<OsString> {
    get(VAR).filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    #[test]
    fn ready_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        ready(path.as_os_str()).unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn ready_reaches_an_abstract_socket() {
        let name = format!("sydney-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        ready(OsStr::new(&format!("@{name}"))).unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn bad_addresses_are_errors() {
        let long = "/".repeat(200);
        assert!(ready(OsStr::new(&long)).is_err());
        assert!(ready(OsStr::new("/nonexistent/notify")).is_err());
    }

    #[test]
    fn an_empty_variable_means_none() {
        assert_eq!(from_env(|_| Some(OsString::new())), None);
        assert_eq!(from_env(|_| None), None);
        assert_eq!(
            from_env(|_| Some("/run/x".into())),
            Some(OsString::from("/run/x"))
        );
    }
}
