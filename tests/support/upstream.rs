//! The customer's API behind the proxy: an HTTP/1.1 server on a loopback port that records what reaches it.
//!
//! Bodies are hashed as they stream in and streamed out as they are produced, so tests can send and fetch
//! hundreds of MiB without either side holding them in memory.
//!
//! # Routes
//!
//! * `GET /big/<n>` — `n` bytes where byte `i` is `(i % 251) as u8`, in chunks, with `Content-Length` and the
//!   body's SHA-256 in `x-body-sha256`. With `?chunked` in the query the length is left out, so the body goes
//!   out with chunked transfer encoding.
//! * `/status/<code>` (any method) — the echo below with status `<code>` (200–599).
//! * anything else — 200 with the echo: `{"method","path","query","bodyBytes","bodySha256"}`.
//!
//! Every response carries `x-upstream: echo`, and every request is recorded, whatever its route.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes per chunk of a `/big` body.
const CHUNK: usize = 251 * 256;

/// A request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query, without the `?`.
    pub query: Option<String>,
    /// Every header in arrival order per name, names in lowercase; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    /// Body bytes received. A body cut off mid-way is recorded with what arrived.
    pub body_len: u64,
    /// Lowercase hex SHA-256 of the bytes received.
    pub body_sha256: String,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    count: AtomicUsize,
    // Hashing a large `/big` body costs seconds in a debug build; tests ask for the same sizes repeatedly.
    big_sha256: Mutex<HashMap<u64, String>>,
}

/// A running upstream. It stops accepting connections when dropped.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Serves on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let router = axum::Router::new()
            .fallback(handle)
            // The handler reads the raw body stream, which no limit applies to; this states the intent.
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request recorded so far, oldest first. A request is recorded once its body has been read.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("upstream lock").clone()
    }

    /// How many requests have been recorded.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// How many recorded requests have a path starting with `prefix`.
    pub fn count_path_prefix(&self, prefix: &str) -> usize {
        self.shared
            .requests
            .lock()
            .expect("upstream lock")
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut body_len = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                body_len += chunk.len() as u64;
                hasher.update(&chunk);
            }
            // The client went away mid-body; what arrived is still worth recording.
            Err(_) => break,
        }
    }
    let recorded = Recorded {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
        body_sha256: hex::encode(hasher.finalize()),
    };
    let echo = json!({
        "method": recorded.method,
        "path": recorded.path,
        "query": recorded.query,
        "bodyBytes": recorded.body_len,
        "bodySha256": recorded.body_sha256,
    });
    let path = recorded.path.clone();
    let chunked = recorded.query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "chunked" || p.starts_with("chunked="))
    });
    {
        let mut requests = shared.requests.lock().expect("upstream lock");
        requests.push(recorded);
        // Under the lock, so that `count()` never runs ahead of `requests()`.
        shared.count.fetch_add(1, Ordering::SeqCst);
    }

    let mut response = if let Some(n) = path.strip_prefix("/big/")
        && parts.method == axum::http::Method::GET
    {
        match n.parse::<u64>() {
            Ok(n) => big(&shared, n, chunked).await,
            Err(_) => (StatusCode::BAD_REQUEST, "bad /big length").into_response(),
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
            Some(code) => {
                let status = StatusCode::from_u16(code).expect("200..=599 is a valid status");
                (status, axum::Json(echo)).into_response()
            }
            None => (StatusCode::BAD_REQUEST, "bad /status code").into_response(),
        }
    } else {
        axum::Json(echo).into_response()
    };
    response
        .headers_mut()
        .insert("x-upstream", HeaderValue::from_static("echo"));
    response
}

/// The `/big` body pattern from a multiple of 251 onwards: every chunk is a prefix of it.
fn pattern() -> Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN
        .get_or_init(|| Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
        .clone()
}

/// The chunks of an `n`-byte `/big` body.
fn big_chunks(n: u64) -> impl Iterator<Item = Bytes> {
    let pattern = pattern();
    let chunk = CHUNK as u64;
    (0..n.div_ceil(chunk)).map(move |i| {
        let len = chunk.min(n - i * chunk);
        pattern.slice(..usize::try_from(len).expect("a chunk fits in usize"))
    })
}

async fn big(shared: &Shared, n: u64, chunked: bool) -> Response {
    let cached = shared
        .big_sha256
        .lock()
        .expect("upstream lock")
        .get(&n)
        .cloned();
    let sha256 = match cached {
        Some(sha256) => sha256,
        None => {
            // Seconds of CPU for large bodies: off the runtime's threads.
            let sha256 = tokio::task::spawn_blocking(move || {
                let mut hasher = Sha256::new();
                big_chunks(n).for_each(|c| hasher.update(&c));
                hex::encode(hasher.finalize())
            })
            .await
            .expect("hash /big body");
            shared
                .big_sha256
                .lock()
                .expect("upstream lock")
                .insert(n, sha256.clone());
            sha256
        }
    };
    let stream = futures_util::stream::iter(big_chunks(n).map(Ok::<_, std::convert::Infallible>));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        "x-body-sha256",
        HeaderValue::from_str(&sha256).expect("hex is a valid header value"),
    );
    if !chunked {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    response
}
