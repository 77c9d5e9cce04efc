//! `sydney`: a tiny HTTP/1.1 server, the Rust counterpart of an Elixir Plug
//! router. `GET /` and `HEAD /` answer `Ok`; everything else is a 404.
//!
//! This file is the edge: it reads the process's arguments and environment,
//! takes over listening sockets a service manager passed (systemd's
//! `LISTEN_FDS`), turns every failure into one line on stderr and a
//! documented exit code (see [`cli::HELP`] and docs/SERVER.md), and runs the
//! server on a tokio runtime until SIGTERM or SIGINT.

mod activation;
mod cli;
mod config;
mod log;
mod notify;
mod server;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::pin::pin;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;

use crate::activation::{Activation, ActivationError};
use crate::cli::Command;
use crate::config::{Config, ConfigError, Layer};
use crate::server::{Limits, Stopped};

/// Everything that stops the server, sorted by exit code.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// Bad command line: exit 2.
    #[error(transparent)]
    Usage(#[from] cli::UsageError),
    /// Bad environment variable or config file: exit 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad `LISTEN_*` variable (exit 2) or inherited socket (exit 1).
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// The server could not start or keep running: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) | Error::Config(_) => ExitCode::from(2),
            Error::Activation(err) => ExitCode::from(err.exit_code()),
            Error::Runtime(_) => ExitCode::from(1),
        }
    }
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Straight to the writer: errors print whatever the log level.
            log::write(log::Level::Error, format_args!("{err}"));
            err.exit_code()
        }
    }
}

fn try_main() -> Result<(), Error> {
    let args = match cli::parse(std::env::args_os().skip(1))? {
        Command::Help => return print_stdout(cli::HELP),
        Command::Version => {
            return print_stdout(&format!("sydney {}\n", env!("CARGO_PKG_VERSION")));
        }
        Command::Run(args) => args,
    };
    // Read before take_activation_env unsets it with the others.
    let notify_socket = notify::from_env(|name| std::env::var_os(name));
    let activation = take_activation_env()?;
    let inherited = match &activation {
        Activation::Sockets(sockets) => Some(activation::adopt(sockets)?),
        Activation::None | Activation::Foreign { .. } => None,
    };
    let env = config::env_layer(|name| std::env::var_os(name))?;
    let file = match config::config_path(args.config, std::env::var_os("BUNDLE_ROOT")) {
        Some((path, origin)) => match config::read_file(&path, origin)? {
            Some(text) => config::parse_file(&text, &path)?,
            None => Layer::default(),
        },
        None => Layer::default(),
    };
    let config = Config::resolve(&[&file, &env, &args.flags]);
    log::set_max_level(config.log_level);
    if let Activation::Foreign { listen_pid } = activation {
        // What sd_listen_fds does: the sockets are not ours; bind as configured.
        debug!("ignoring LISTEN_FDS: LISTEN_PID {listen_pid} is another process");
    }
    serve(
        &config,
        &activation,
        inherited,
        notify_socket,
        args.reuse_port,
    )
}

/// Reads the systemd socket-activation variables and unsets them, so that
/// no child process inherits them.
///
/// Runs first, while the process is single-threaded and before anything
/// else is opened: the descriptors from 3 on are then still the ones passed.
fn take_activation_env() -> Result<Activation, Error> {
    let activation = activation::from_env(|name| std::env::var_os(name), std::process::id());
    for name in activation::VARS.iter().chain(&[notify::VAR]) {
        // SAFETY: no other thread exists yet (the tokio runtime is built
        // later, in `serve`), so nothing can read the environment while it
        // changes.
        unsafe { std::env::remove_var(name) };
    }
    Ok(activation?)
}

/// Runs the server until a signal stops it, on the inherited listeners if
/// there are any, else on the configured address.
fn serve(
    config: &Config,
    activation: &Activation,
    inherited: Option<Vec<std::net::TcpListener>>,
    notify_socket: Option<std::ffi::OsString>,
    reuse_port: bool,
) -> Result<(), Error> {
    // One thread: on the target machines (2 cores, with the load generator
    // or the proxy on the other) it beat a multi-threaded runtime
    // (docs/decisions/0013-server-runtime-and-allocator.md).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|err| Error::Runtime(format!("cannot start the tokio runtime: {err}")))?;
    runtime.block_on(async {
        // Before binding: once "listening on" is printed, a test or a
        // supervisor may send SIGTERM at any moment, and until the handlers
        // are installed that would kill the process (or, as PID 1 in a
        // container, be ignored).
        let mut signals = Signals::install()
            .map_err(|err| Error::Runtime(format!("cannot install signal handlers: {err}")))?;
        let listeners = match inherited {
            Some(inherited) => adopt_listeners(activation, inherited)?,
            None => vec![bind(SocketAddr::new(config.bind, config.port), reuse_port)?],
        };

        if let Some(socket) = &notify_socket {
            // The listeners accept from here on: tell the supervisor.
            if let Err(err) = notify::ready(socket) {
                warn!(
                    "cannot send READY=1 to {}={}: {err}",
                    notify::VAR,
                    socket.display()
                );
            }
        }

        let limits = Limits {
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.max_header_bytes,
            shutdown_timeout: config.shutdown_timeout,
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut server = pin!(server::run(listeners, limits, async {
            let _ = stop_rx.await;
        }));
        let mut stop_tx = Some(stop_tx);
        loop {
            tokio::select! {
                // Signals first: a fixed order makes shutdown take the same
                // path every time (and its tests deterministic).
                biased;
                name = signals.recv() => match stop_tx.take() {
                    Some(tx) => {
                        info!("received {name}, shutting down");
                        let _ = tx.send(());
                    }
                    None => {
                        warn!("received {name} again, exiting without waiting for connections");
                        return Ok(());
                    }
                },
                stopped = &mut server => {
                    if let Stopped::Drained = stopped {
                        debug!("all connections finished");
                    }
                    return Ok(());
                }
            }
        }
    })
}

/// The signals that stop the server. Handlers are installed explicitly, so
/// this works as PID 1 in a container, where the kernel applies no default
/// action to SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Binds the configured address (with `SO_REUSEPORT` if asked) and
/// announces it.
fn bind(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, Error> {
    let listener = bind_socket(addr, reuse_port).map_err(|err| bind_error(addr, &err))?;
    let local = listener
        .local_addr()
        .map_err(|err| bind_error(addr, &err))?;
    info!("listening on {local}");
    Ok(listener)
}

/// What `TcpListener::bind` does (`SO_REUSEADDR`, backlog 1024), plus
/// `SO_REUSEPORT` when asked.
fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Hands inherited listeners to tokio and announces each address (in the
/// same `listening on ADDR` form as a bound one).
fn adopt_listeners(
    activation: &Activation,
    inherited: Vec<std::net::TcpListener>,
) -> Result<Vec<TcpListener>, Error> {
    let runtime_error =
        |err: io::Error| Error::Runtime(format!("cannot serve on the inherited sockets: {err}"));
    if let Activation::Sockets(sockets) = activation {
        let sockets: Vec<String> = sockets.iter().map(ToString::to_string).collect();
        info!(
            "serving on the sockets the service manager passed (LISTEN_FDS): {}; \
             bind and port settings are not used",
            sockets.join(", ")
        );
    }
    let mut listeners = Vec::with_capacity(inherited.len());
    for listener in inherited {
        listener.set_nonblocking(true).map_err(runtime_error)?;
        let listener = TcpListener::from_std(listener).map_err(runtime_error)?;
        info!(
            "listening on {}",
            listener.local_addr().map_err(runtime_error)?
        );
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Explains a failure to listen and what to do about it.
fn bind_error(addr: SocketAddr, err: &io::Error) -> Error {
    let hint = match err.kind() {
        io::ErrorKind::AddrInUse => {
            "another process is listening there; stop it or choose another port with --port"
        }
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another with --port"
        }
        io::ErrorKind::AddrNotAvailable => {
            "no interface has this address; choose another with --bind"
        }
        _ => "check --bind and --port",
    };
    Error::Runtime(format!("cannot listen on {addr}: {err}; {hint}"))
}

/// Prints help or version text. A closed stdout is not an error worth a
/// panic (`println!` would panic).
fn print_stdout(text: &str) -> Result<(), Error> {
    let _ = io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}
