//! `healthcheck`: an HTTP GET with a timeout, for HEALTHCHECK in FROM scratch
//! images (which have no curl) and for scripts.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Result;

use crate::exit::{Exit, coded};

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses the small subset of URLs a health check needs.
pub fn parse_url(url: &str) -> Result<HttpUrl, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported URL {url:?}: only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("bad IPv6 address in {url:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    let port = match port {
        Some(port) => port
            .parse()
            .map_err(|_| format!("bad port {port:?} in {url:?}"))?,
        None => 80,
    };
    Ok(HttpUrl {
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

/// An IP address, or `localhost`. Names are not looked up: a health check
/// probes its own container, and leaving out the resolver keeps ~10 KB of
/// DNS client out of every bundle.
fn resolve(host: &str) -> Result<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.parse().map_err(|_| {
        coded(
            Exit::Usage,
            format!("{host:?} is not an IP address; use an address such as 127.0.0.1 or [::1]"),
        )
    })
}

/// The default URL: `http://127.0.0.1:$PORT/`, PORT defaulting to 8080.
pub fn default_url() -> String {
    let port = std::env::var("PORT")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "8080".to_owned());
    format!("http://127.0.0.1:{port}/")
}

/// GETs `url`; `Ok(status line)` on 2xx, an `Unhealthy` error otherwise.
pub fn check(url: &str, timeout: Duration) -> Result<String> {
    let unhealthy = |why: String| coded(Exit::Unhealthy, format!("unhealthy: {why}"));
    let target = parse_url(url).map_err(|why| coded(Exit::Usage, why))?;
    let addr = SocketAddr::new(resolve(&target.host)?, target.port);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|err| unhealthy(format!("cannot connect to {addr}: {err}")))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let host_header = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: sydney-bundle-healthcheck\r\n\
         Connection: close\r\n\r\n",
        target.path
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|err| unhealthy(format!("cannot send the request to {addr}: {err}")))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(err) => {
                return Err(unhealthy(format!(
                    "no answer from {url} within {} ms: {err}",
                    timeout.as_millis()
                )));
            }
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim().to_owned();
    let status: Option<u16> = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok());
    match status {
        Some(200..=299) => Ok(line),
        Some(_) => Err(unhealthy(format!("{url} answered {line:?}"))),
        None if line.is_empty() => Err(unhealthy(format!(
            "{url} closed the connection without answering"
        ))),
        None => Err(unhealthy(format!(
            "{url} answered something that is not HTTP: {line:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:9000/health?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/health?x=1")
        );
        let u = parse_url("http://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/")
        );
        assert_eq!(parse_url("http://example.com/").unwrap().port, 80);
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:99999/").is_err());
    }

    #[test]
    fn statuses() {
        use std::net::TcpListener;
        let serve = |answer: &'static [u8]| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                conn.write_all(answer).unwrap();
            });
            format!("http://127.0.0.1:{port}/")
        };
        let t = Duration::from_secs(2);
        assert!(check(&serve(b"HTTP/1.1 200 OK\r\n\r\nOk"), t).is_ok());
        let err = check(&serve(b"HTTP/1.1 404 Not Found\r\n\r\n"), t).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        let err = check(&serve(b"garbage\r\n"), t).unwrap_err();
        assert!(err.to_string().contains("not HTTP"), "{err}");
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let err = check(&url, t).unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}
