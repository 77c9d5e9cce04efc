//! Listening sockets inherited from a service manager, with systemd's
//! socket-activation protocol (`sd_listen_fds(3)`).
//!
//! The manager binds the sockets, starts us with them open from fd 3 on,
//! and sets `LISTEN_FDS` (how many), `LISTEN_PID` (which process they are
//! for) and optionally `LISTEN_FDNAMES` (colon-separated names). Variables
//! meant for another process (a parent that forgot to unset them) are
//! ignored, as `sd_listen_fds` does. [`from_env`] is pure, so every rule is
//! unit-tested; [`adopt`] checks each descriptor with the kernel and takes
//! ownership of it.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first inherited descriptor (after stdin, stdout and stderr).
pub const FIRST_FD: RawFd = 3;

/// The most sockets accepted. The protocol sets no limit, but the list is
/// built before the descriptors are checked, so a claimed count must not
/// decide how much memory that takes.
pub const MAX_SOCKETS: usize = 1024;

/// The environment variables of the protocol. `main` unsets all three once
/// they are read, so that no child process inherits them.
pub const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// What the environment says about inherited sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// No sockets are passed: bind as configured.
    None,
    /// Sockets are passed to another process (`LISTEN_PID` names it):
    /// ignored, bind as configured.
    Foreign {
        /// The process the sockets were meant for.
        listen_pid: u32,
    },
    /// These descriptors are ours to serve on.
    Sockets(Vec<Inherited>),
}

/// One inherited descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// The descriptor number (3, 4, ...).
    pub fd: RawFd,
    /// Its name from `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`, by
    /// default the socket unit's name), if given.
    pub name: Option<String>,
}

impl fmt::Display for Inherited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {}", self.fd)?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

/// Why inherited sockets cannot be used. Bad variables are a configuration
/// error (exit 2); a descriptor that is not a listening TCP socket is a
/// failure to listen (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_PID` or `LISTEN_FDS` is not a number (or out of range).
    #[error(
        "invalid {name} \"{value}\" in the environment: expected {expected}; \
         fix or unset {name} in whatever starts sydney"
    )]
    InvalidVar {
        /// The variable.
        name: &'static str,
        /// Its value, escaped.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// An inherited descriptor cannot be served on.
    #[error(
        "cannot listen on inherited {socket} (LISTEN_FDS={count}): {problem}; \
         pass listening TCP sockets (ListenStream= in a systemd .socket unit) or unset LISTEN_FDS"
    )]
    BadSocket {
        /// The descriptor.
        socket: Inherited,
        /// How many were passed.
        count: usize,
        /// What is wrong with it.
        problem: String,
    },
}

impl ActivationError {
    /// The documented exit code (docs/SERVER.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            ActivationError::InvalidVar { .. } => 2,
            ActivationError::BadSocket { .. } => 1,
        }
    }
}

/// Reads the protocol's variables (looked up through `var`) for the
/// process `our_pid`.
pub fn from_env(
    var: impl Fn(&str) -> Option<OsString>,
    our_pid: u32,
) -> Result<Activation, ActivationError> {
    let get = |name| var(name).filter(|value| !value.is_empty());
    // Both must be set, as in sd_listen_fds; either alone means nothing.
    let (Some(pid), Some(fds)) = (get("LISTEN_PID"), get("LISTEN_FDS")) else {
        return Ok(Activation::None);
    };
    let listen_pid = number(
        "LISTEN_PID",
        &pid,
        "the id of the process the sockets are for",
    )?;
    let count = number(
        "LISTEN_FDS",
        &fds,
        "the number of listening sockets passed from fd 3 on",
    )?;
    if listen_pid != our_pid {
        return Ok(Activation::Foreign { listen_pid });
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_SOCKETS)
        .ok_or_else(|| invalid("LISTEN_FDS", &fds, "at most 1024 sockets"))?;
    if count == 0 {
        return Ok(Activation::None);
    }
    // Names are only used in log lines; a count that does not match is
    // ignored rather than fatal (sd_listen_fds_with_names would refuse).
    let names: Vec<String> = get("LISTEN_FDNAMES")
        .map(|names| {
            names
                .to_string_lossy()
                .split(':')
                .map(crate::config::one_line)
                .collect()
        })
        .filter(|names: &Vec<String>| names.len() == count)
        .unwrap_or_default();
    let sockets = (0..count)
        .map(|i| Inherited {
            // Cannot overflow: at most MAX_SOCKETS.
            fd: FIRST_FD + i as RawFd,
            name: names.get(i).cloned(),
        })
        .collect();
    Ok(Activation::Sockets(sockets))
}

fn number(
    name: &'static str,
    value: &OsString,
    expected: &'static str,
) -> Result<u32, ActivationError> {
    value
        .to_str()
        .filter(|text| text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| invalid(name, value, expected))
}

fn invalid(name: &'static str, value: &OsString, expected: &'static str) -> ActivationError {
    ActivationError::InvalidVar {
        name,
        value: crate::config::one_line(&value.to_string_lossy()),
        expected,
    }
}

/// Checks that each descriptor is a listening TCP socket, marks it
/// close-on-exec (the manager passes it inheritable, and no child of ours
/// should keep it) and takes ownership of it.
///
/// Must run before the process opens anything else that lives on, and at
/// most once: the descriptors become owned by the returned listeners.
pub fn adopt(sockets: &[Inherited]) -> Result<Vec<TcpListener>, ActivationError> {
    let mut listeners = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let bad = |problem: String| ActivationError::BadSocket {
            socket: socket.clone(),
            count: sockets.len(),
            problem,
        };
        check_listening_tcp(socket.fd).map_err(bad)?;
        // SAFETY: `check_listening_tcp` showed that `fd` is open. The
        // protocol hands it to this process, nothing else in it knows the
        // number (std only uses 0-2, and this runs before anything else is
        // opened for good), and `from_env` lists each number once, so this
        // OwnedFd is its only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(socket.fd) };
        listeners.push(TcpListener::from(owned));
    }
    Ok(listeners)
}

/// Whether `fd` is an open, listening TCP (IPv4 or IPv6) socket; also sets
/// its close-on-exec flag. The error says what it is instead.
fn check_listening_tcp(fd: RawFd) -> Result<(), String> {
    // SAFETY: fcntl(F_GETFD/F_SETFD) only reads and sets descriptor flags;
    // an fd that is not open yields EBADF, which is handled.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!("it is not open ({})", io::Error::last_os_error()));
    }
    // SAFETY: as above; `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(format!(
            "cannot set close-on-exec ({})",
            io::Error::last_os_error()
        ));
    }
    let option = |name| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes and `len` holds
        // the size of `value`, as getsockopt requires for these int options.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            let err = io::Error::last_os_error();
            Err(if err.raw_os_error() == Some(libc::ENOTSOCK) {
                "it is not a socket".to_owned()
            } else {
                format!("cannot inspect it ({err})")
            })
        }
    };
    match option(libc::SO_DOMAIN)? {
        libc::AF_INET | libc::AF_INET6 => {}
        libc::AF_UNIX => return Err("it is a unix socket; sydney serves TCP only".to_owned()),
        other => return Err(format!("it is a socket of address family {other}, not TCP")),
    }
    if option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(
            "it is not a stream socket (ListenDatagram= instead of ListenStream=?)".to_owned(),
        );
    }
    if option(libc::SO_ACCEPTCONN)? == 0 {
        return Err("it is a TCP socket that is not listening".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn sockets(fds: &[(RawFd, Option<&str>)]) -> Activation {
        Activation::Sockets(
            fds.iter()
                .map(|&(fd, name)| Inherited {
                    fd,
                    name: name.map(str::to_owned),
                })
                .collect(),
        )
    }

    #[test]
    fn sockets_for_this_process_start_at_fd_3() {
        let got = from_env(env(&[("LISTEN_PID", "42"), ("LISTEN_FDS", "2")]), 42).unwrap();
        assert_eq!(got, sockets(&[(3, None), (4, None)]));
        let got = from_env(
            env(&[
                ("LISTEN_PID", "42"),
                ("LISTEN_FDS", "2"),
                ("LISTEN_FDNAMES", "http:admin"),
            ]),
            42,
        )
        .unwrap();
        assert_eq!(got, sockets(&[(3, Some("http")), (4, Some("admin"))]));
    }

    #[test]
    fn names_that_do_not_match_the_count_are_ignored() {
        let got = from_env(
            env(&[
                ("LISTEN_PID", "42"),
                ("LISTEN_FDS", "2"),
                ("LISTEN_FDNAMES", "http"),
            ]),
            42,
        )
        .unwrap();
        assert_eq!(got, sockets(&[(3, None), (4, None)]));
    }

    #[test]
    fn nothing_passed_means_bind_as_configured() {
        for vars in [
            &[][..],
            &[("LISTEN_FDS", "1")],
            &[("LISTEN_PID", "42")],
            &[("LISTEN_PID", ""), ("LISTEN_FDS", "1")],
            &[("LISTEN_PID", "42"), ("LISTEN_FDS", "0")],
        ] {
            assert_eq!(
                from_env(env(vars), 42).unwrap(),
                Activation::None,
                "{vars:?}"
            );
        }
    }

    #[test]
    fn sockets_for_another_process_are_ignored() {
        let got = from_env(env(&[("LISTEN_PID", "7"), ("LISTEN_FDS", "1")]), 42).unwrap();
        assert_eq!(got, Activation::Foreign { listen_pid: 7 });
    }

    #[test]
    fn malformed_variables_are_configuration_errors() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("LISTEN_PID", "42"), ("LISTEN_FDS", "one")],
                "invalid LISTEN_FDS \"one\" in the environment: expected the number of \
                 listening sockets passed from fd 3 on; fix or unset LISTEN_FDS in whatever \
                 starts sydney",
            ),
            (
                &[("LISTEN_PID", "42"), ("LISTEN_FDS", "-1")],
                "invalid LISTEN_FDS \"-1\"",
            ),
            (
                &[("LISTEN_PID", "42"), ("LISTEN_FDS", "4294967295")],
                "invalid LISTEN_FDS \"4294967295\" in the environment: expected at most 1024 \
                 sockets",
            ),
            (
                &[("LISTEN_PID", "42"), ("LISTEN_FDS", "1025")],
                "invalid LISTEN_FDS \"1025\"",
            ),
            (
                &[("LISTEN_PID", "self"), ("LISTEN_FDS", "1")],
                "invalid LISTEN_PID \"self\" in the environment: expected the id of the process",
            ),
            (
                &[("LISTEN_PID", "+42"), ("LISTEN_FDS", "1")],
                "invalid LISTEN_PID \"+42\"",
            ),
        ];
        for (vars, want) in cases {
            let err = from_env(env(vars), 42).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{vars:?}");
            let msg = err.to_string();
            assert!(msg.starts_with(want), "{vars:?}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn adopt_refuses_what_is_not_a_listening_tcp_socket() {
        // A descriptor number far above anything this test process opened.
        let closed = Inherited {
            fd: 1000,
            name: None,
        };
        let err = adopt(std::slice::from_ref(&closed)).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("fd 1000"), "{err}");
        assert!(err.to_string().contains("it is not open"), "{err}");
    }
}
