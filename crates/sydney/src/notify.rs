//! systemd's readiness notification (`sd_notify(3)`): once the listeners
//! are ready, send `READY=1` to the datagram socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). systemd
//! (`Type=notify`) and the bundle's supervisor during an upgrade wait for
//! it; a health check cannot tell, as the old server answers on the same
//! socket.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable of the protocol.
pub const VAR: &str = "NOTIFY_SOCKET";

/// Sends `READY=1` to `socket`.
pub fn ready(socket: &OsStr) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(b"READY=1", &addr)?;
    Ok(())
}

/// Reads `NOTIFY_SOCKET`, ignoring an empty value.
pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Option<OsString> {
    get(VAR).filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_empty_variable_means_none() {
        assert_eq!(from_env(|_| Some(OsString::new())), None);
        assert_eq!(from_env(|_| None), None);
        assert_eq!(
            from_env(|_| Some("/run/x".into())),
            Some(OsString::from("/run/x"))
        );
    }
}
