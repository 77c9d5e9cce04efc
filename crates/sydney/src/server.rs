//! The HTTP service, the accept loop and graceful shutdown.
//!
//! Shape borrowed from mini-redis and hyper-util's `server_graceful`
//! example: [`run`] accepts until `shutdown` resolves, then drops the
//! listeners and waits, bounded by a timeout, for each connection to finish.
//!
//! Why this goes beyond hyper's own graceful shutdown:
//! docs/decisions/0012-graceful-shutdown.md. In short, what hyper 1.x's
//! `graceful_shutdown` does with an HTTP/1 connection
//! (read from `proto/h1/conn.rs`, `disable_keep_alive`, and confirmed by the
//! tests in `tests/it/shutdown.rs`):
//!
//! * nothing read yet: closed at once;
//! * part-way through its first request head: the head is read to the end
//!   and answered with `connection: close` (good);
//! * request parsed, answer not yet written: answered, then closed (good);
//! * keep-alive connection part-way through its *second or later* request
//!   head: hyper still counts it as idle until the head is complete, so it
//!   is closed and the half-sent request is lost. hyper-util's
//!   `GracefulShutdown` only calls `graceful_shutdown`, so it has the gap too.
//!
//! So each socket is wrapped in [`Tracked`], which records whether bytes
//! were read since the last response was written. On shutdown a connection
//! with such unanswered bytes is not shut down through hyper: its next
//! response carries `connection: close` and hyper closes after it. A
//! connection with nothing unanswered is given [`IDLE_GRACE`] for its next
//! request (a busy keep-alive client has one on the way, and closing would
//! lose it: during an upgrade, every such close is a failed request), which
//! is answered with `connection: close`; only if none comes does it get
//! `graceful_shutdown`. Before
//! deciding, each connection gets one more turn of the I/O driver, so bytes
//! that reached the kernel together with the signal are read first.
//!
//! The listeners need care too: dropping one resets every connection still
//! waiting in the kernel's accept backlog, although those clients connected
//! (and may have sent their request) before the signal. [`run`] accepts
//! what is waiting before it drops the listeners.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{debug, warn};

/// Limits that apply to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed to receive a whole request head; also the keep-alive
    /// idle timeout.
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger ones get a 431.
    pub max_header_bytes: usize,
    /// Time allowed for open connections to finish after shutdown begins.
    pub shutdown_timeout: Duration,
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection finished within the shutdown timeout.
    Drained,
    /// The shutdown timeout passed with this many connections still open;
    /// they are dropped when the runtime is.
    TimedOut(usize),
}

/// Serves HTTP/1.1 on `listeners` (one bound by us, or those a service
/// manager passed) until `shutdown` resolves, then stops accepting and
/// waits up to `limits.shutdown_timeout` for open connections to finish.
pub async fn run(
    listeners: Vec<TcpListener>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    let http = Arc::new(http);

    // Each connection task holds a receiver; `closed()` on the sender then
    // tells when the last connection has finished.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut next = 0;
    loop {
        tokio::select! {
            // Shutdown first, so that once it is due no more connections are
            // taken here; the backlogs are drained below either way.
            biased;
            () = &mut shutdown => break,
            accepted = accept_any(&listeners, &mut next) => match accepted {
                Ok((stream, peer)) => spawn_connection(stream, peer, &http, &stop_rx),
                Err(err) => accept_failed(err).await,
            },
        }
    }

    // Connections that completed the TCP handshake before the signal wait in
    // the kernel's backlogs; closing a listener would reset them, so take
    // them first. Anything that arrives later is refused by the kernel.
    for listener in &listeners {
        while let Some(accepted) = accept_now(listener).await {
            match accepted {
                Ok((stream, peer)) => spawn_connection(stream, peer, &http, &stop_rx),
                Err(err) => debug!("accept during shutdown failed: {err}"),
            }
        }
    }
    drop(listeners);
    drop(stop_rx);

    let open = stop_tx.receiver_count();
    debug!("draining {open} connections");
    // Ignore the error: it only means every connection has already ended.
    let _ = stop_tx.send(true);
    tokio::select! {
        () = stop_tx.closed() => Stopped::Drained,
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            let open = stop_tx.receiver_count();
            warn!(
                "shutdown timeout ({}s) passed with {open} connections open; closing them",
                limits.shutdown_timeout.as_secs()
            );
            Stopped::TimedOut(open)
        }
    }
}

/// Accepts the next connection on any of `listeners`. Polling starts after
/// the listener that accepted last (`next`), so a busy one cannot starve
/// the others.
async fn accept_any(
    listeners: &[TcpListener],
    next: &mut usize,
) -> io::Result<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for _ in 0..listeners.len() {
            let i = *next % listeners.len();
            *next = i + 1;
            if let Poll::Ready(result) = listeners[i].poll_accept(cx) {
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    })
    .await
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    http: &Arc<http1::Builder>,
    stop: &watch::Receiver<bool>,
) {
    tokio::spawn(serve_connection(
        stream,
        peer,
        Arc::clone(http),
        stop.clone(),
    ));
}

/// Accepts a connection if one is waiting, without waiting for one.
async fn accept_now(listener: &TcpListener) -> Option<io::Result<(TcpStream, SocketAddr)>> {
    std::future::poll_fn(|cx| match listener.poll_accept(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Handles a failed `accept`. Most failures concern one connection (it was
/// reset before we took it) and are not worth a log line; running out of
/// file descriptors is, and sleeping a little keeps the loop from spinning
/// while it lasts.
async fn accept_failed(err: io::Error) {
    match err.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => debug!("accept failed: {err}"),
        _ => {
            warn!("accept failed: {err}; retrying in 100ms");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Serves one connection until the client closes it, an error ends it, or
/// shutdown closes it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    http: Arc<http1::Builder>,
    mut stop: watch::Receiver<bool>,
) {
    // Responses are single small writes; don't let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(Tracked {
        stream,
        state: Arc::clone(&state),
    });
    let mut conn = pin!(http.serve_connection(
        io,
        Hello {
            state: Arc::clone(&state)
        }
    ));

    // `biased`: when both are ready, let hyper read first, so a request that
    // arrived with the signal is seen before deciding how to close.
    let result = tokio::select! {
        biased;
        result = conn.as_mut() => result,
        () = async { let _ = stop.wait_for(|&stop| stop).await; } => {
            // Yield once: the I/O driver then polls epoll, so bytes that
            // reached the kernel by now are seen (tokio only learns that a
            // socket became readable when its driver runs), and hyper, polled
            // first again, reads them before we decide how to close.
            let early = tokio::select! {
                biased;
                result = conn.as_mut() => Some(result),
                () = tokio::task::yield_now() => None,
            };
            match early {
                Some(result) => result,
                None => {
                    if state.unanswered.load(Ordering::Relaxed) {
                        // Part of a request is in; answer it, then close.
                        state.closing.store(true, Ordering::Relaxed);
                        debug!("shutdown: {peer}: answering the request part-way in, then closing");
                    } else {
                        // Idle between requests: a keep-alive client may
                        // have its next request on the way, and closing now
                        // would lose it. Answer it with `connection: close`
                        // if it comes within the grace; then close.
                        state.closing.store(true, Ordering::Relaxed);
                        debug!("shutdown: {peer}: idle; its next request, if it comes soon, is answered, then it closes");
                        let grace = tokio::time::sleep(IDLE_GRACE);
                        tokio::select! {
                            biased;
                            result = conn.as_mut() => return finished(result),
                            () = grace => {}
                        }
                        if !state.unanswered.load(Ordering::Relaxed) {
                            // Still idle: closes now. Busy: hyper finishes,
                            // then closes.
                            conn.as_mut().graceful_shutdown();
                            debug!("shutdown: {peer}: closing after the request in progress, if any");
                        }
                    }
                    conn.await
                }
            }
        }
    };
    finished(result);
}

/// How long shutdown waits for the next request of an idle keep-alive
/// connection before closing it (docs/decisions/0091-idle-keep-alive-grace.md).
const IDLE_GRACE: Duration = Duration::from_millis(500);

fn finished(result: hyper::Result<()>) {
    if let Err(err) = result {
        // Resets, timeouts and malformed requests are the client's business;
        // hyper has already answered what deserved an answer (400, 431).
        debug!("connection ended: {err}");
    }
}

/// What a connection's socket wrapper and its service share.
#[derive(Debug, Default)]
struct ConnState {
    /// Bytes were read since the last write, so a request is part-way in
    /// (or being answered).
    unanswered: AtomicBool,
    /// Shutdown has begun: answer with `connection: close`.
    closing: AtomicBool,
}

/// A socket that records in [`ConnState`] whether a request is part-way in.
#[derive(Debug)]
struct Tracked {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.unanswered.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_write(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Tracked {
    /// A write is a response going out: whatever was read has been answered.
    /// (Pipelining can defeat this: when one read holds a whole request and
    /// the start of the next, answering the first clears the flag, and a
    /// shutdown at that moment drops the half-read second request.)
    fn note_write(&self, poll: &Poll<io::Result<usize>>) {
        if matches!(poll, Poll::Ready(Ok(n)) if *n > 0) {
            self.state.unanswered.store(false, Ordering::Relaxed);
        }
    }
}

/// The service: `GET /` and `HEAD /` answer `Ok`, anything else 404.
#[derive(Debug, Clone)]
struct Hello {
    state: Arc<ConnState>,
}

/// The body type: static bytes, so a response costs no body allocation.
type Body = Full<&'static [u8]>;

impl Service<Request<Incoming>> for Hello {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let found = is_root(req.method(), req.uri().path());
        let closing = self.state.closing.load(Ordering::Relaxed);
        // Recycle the request's header map for the response: hyper hands the
        // response's map back to the parser for the next request, so on a
        // keep-alive connection no request allocates a header map.
        let headers = req.into_parts().0.headers;
        ready(Ok(respond(found, closing, headers)))
    }
}

/// Whether a request is for the one page there is. hyper leaves the body
/// out of HEAD answers itself, so HEAD shares GET's response.
fn is_root(method: &Method, path: &str) -> bool {
    path == "/" && (method == Method::GET || method == Method::HEAD)
}

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Builds a response from static parts in `headers` (emptied first; passing
/// a used map saves an allocation); `close` asks hyper to close the
/// connection after it.
fn respond(found: bool, close: bool, mut headers: HeaderMap) -> Response<Body> {
    let (status, body): (_, &'static [u8]) = if found {
        (StatusCode::OK, b"Ok")
    } else {
        (StatusCode::NOT_FOUND, b"Page not found")
    };
    headers.clear();
    headers.insert(CONTENT_TYPE, TEXT_PLAIN);
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    #[test]
    fn routes_only_get_and_head_of_root() {
        assert!(is_root(&Method::GET, "/"));
        assert!(is_root(&Method::HEAD, "/"));
        assert!(!is_root(&Method::POST, "/"));
        assert!(!is_root(&Method::GET, "/nope"));
        assert!(!is_root(&Method::GET, ""));
    }

    #[test]
    fn responses_carry_status_type_and_length() {
        let ok = respond(true, false, HeaderMap::new());
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(ok.body().size_hint().exact(), Some(2));
        assert!(ok.headers().get(CONNECTION).is_none());

        let mut used = HeaderMap::new();
        used.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        used.insert("x-request", HeaderValue::from_static("1"));
        let missing = respond(false, true, used);
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.body().size_hint().exact(), Some(14));
        assert_eq!(missing.headers()[CONNECTION], "close");
        assert_eq!(
            missing.headers().len(),
            2,
            "request headers leaked into the response"
        );
    }
}
