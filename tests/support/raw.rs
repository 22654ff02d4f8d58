//! Raw HTTP/1.1 over TCP, for requests no well-behaved client would send: missing `Host`, absolute-form targets,
//! trickled headers, bodies that never arrive.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code, 0 when nothing parseable arrived.
    pub status: u16,
    /// Header lines, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// What followed the header.
    pub body: String,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Parses what a server sent.
    pub fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Self {
            status,
            headers,
            body: body.to_owned(),
        }
    }
}

/// Sends `request` as is and reads one response: until its `Content-Length` body is complete, the server closes
/// the connection, or `timeout` passes.
pub async fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if complete(&out) {
                break;
            }
        }
    })
    .await;
    RawResponse::parse(&out)
}

/// Whether `bytes` hold a whole response with a `Content-Length` body.
fn complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]);
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| bytes.len() >= end + 4 + len)
}

/// Everything the peer sends until it closes (or resets) the connection, or `timeout` passes.
pub async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// The socket address of an `http://host:port` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("http://ip:port")
}
