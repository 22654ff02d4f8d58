//! The test support itself: the TCP forwarder, the Redis Cluster and the upstream do what the tests built on them
//! assume. (`ProxyProcess` needs a working proxy binary, so it is only compiled here.)

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_e2e::forwarder::TcpForwarder;
use tollgate_e2e::redis_cluster::RedisCluster;
use tollgate_e2e::upstream::Upstream;

/// A TCP server that echoes every connection's bytes back.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn echoes(stream: &mut TcpStream, msg: &[u8]) -> bool {
    let mut buf = vec![0; msg.len()];
    stream.write_all(msg).await.is_ok()
        && tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .is_ok_and(|r| r.is_ok())
        && buf == msg
}

/// Whether the other end has closed the connection (a read sees EOF or an error).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn wait_connections(fwd: &TcpForwarder, n: usize) {
    tollgate_e2e::wait::until(Duration::from_secs(5), "forwarded connections", || async {
        (fwd.connections() == n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn forwarder_forwards_cuts_and_restores() {
    let fwd = TcpForwarder::start(echo_server().await).await;
    let mut first = TcpStream::connect(fwd.addr()).await.unwrap();
    let mut second = TcpStream::connect(fwd.addr()).await.unwrap();
    assert!(echoes(&mut first, b"hello").await);
    assert!(echoes(&mut second, b"world").await);
    assert_eq!(fwd.connections(), 2);

    fwd.cut();
    assert!(is_closed(&mut first).await, "cut closes live connections");
    assert!(is_closed(&mut second).await, "cut closes live connections");
    wait_connections(&fwd, 0).await;
    let mut during = TcpStream::connect(fwd.addr()).await.unwrap();
    assert!(
        is_closed(&mut during).await,
        "new connections are closed while cut"
    );
    assert_eq!(fwd.connections(), 0);

    fwd.restore();
    let mut after = TcpStream::connect(fwd.addr()).await.unwrap();
    assert!(echoes(&mut after, b"again").await);
    assert_eq!(fwd.connections(), 1);
    drop(after);
    wait_connections(&fwd, 0).await;
}

async fn select_1(conn: &mut PgConnection) -> sqlx::Result<i32> {
    let query = sqlx::query_scalar("SELECT 1").fetch_one(conn);
    tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("query finishes")
}

#[tokio::test]
async fn forwarder_cut_breaks_a_postgres_connection() {
    let server = url::Url::parse(&tollgate_e2e::db::server_url()).unwrap();
    let target = tokio::net::lookup_host((
        server.host_str().unwrap(),
        server.port_or_known_default().unwrap(),
    ))
    .await
    .unwrap()
    .next()
    .unwrap();
    let fwd = TcpForwarder::start(target).await;
    let mut via = server.clone();
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(fwd.addr().port())).unwrap();
    let via = via.to_string();
    let mut conn = PgConnection::connect(&via).await.unwrap();
    assert_eq!(select_1(&mut conn).await.unwrap(), 1);
    assert_eq!(fwd.connections(), 1);

    fwd.cut();
    assert!(select_1(&mut conn).await.is_err(), "query after the cut");
    let reconnect = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&via))
        .await
        .expect("connect finishes");
    assert!(reconnect.is_err(), "connect while cut");
    wait_connections(&fwd, 0).await;

    fwd.restore();
    let mut conn = PgConnection::connect(&via).await.unwrap();
    assert_eq!(select_1(&mut conn).await.unwrap(), 1);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn redis_cluster_spreads_slots_over_three_masters() {
    let cluster = RedisCluster::start().await;
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 3);
    assert_eq!(cluster.urls(), nodes.join(","));
    assert!(
        nodes.iter().all(|n| n.starts_with("redis://127.0.0.1:")),
        "{nodes:?}"
    );

    let client = redis::cluster::ClusterClient::new(nodes.clone()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    // Slots 15495, 3300 and 7365: one per master.
    for tag in ["a", "b", "c"] {
        let () = redis::cmd("SET")
            .arg(format!("{{{tag}}}x"))
            .arg(format!("value-{tag}"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for tag in ["a", "b", "c"] {
        let v: String = redis::cmd("GET")
            .arg(format!("{{{tag}}}x"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(v, format!("value-{tag}"));
    }
    for node in &nodes {
        let mut direct = redis::Client::open(node.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: i64 = redis::cmd("DBSIZE").query_async(&mut direct).await.unwrap();
        assert_eq!(keys, 1, "each master holds one of the keys: {node}");
    }

    // A script over two keys of one hash slot, routed by its first key.
    let copied: String = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[2], redis.call('GET', KEYS[1])) return redis.call('GET', KEYS[2])")
        .arg(2)
        .arg("{a}x")
        .arg("{a}copy")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(copied, "value-a");
}

/// Chunk `i` of the uploaded body: 1 MiB that differs from chunk to chunk (built by copying, which an unoptimised
/// build does far faster than computing each byte).
fn upload_chunk(i: usize) -> bytes::Bytes {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| (0..1 << 20).map(|j: usize| (j % 253) as u8).collect());
    let mut chunk = base.clone();
    chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
    chunk.into()
}

#[tokio::test]
async fn upstream_records_streamed_uploads() {
    const CHUNKS: usize = 50;
    let upstream = Upstream::start().await;
    let mut expected = Sha256::new();
    (0..CHUNKS).for_each(|i| expected.update(upload_chunk(i)));
    let expected = hex::encode(expected.finalize());

    let body =
        futures_util::stream::iter(0..CHUNKS).map(|i| Ok::<_, std::io::Error>(upload_chunk(i)));
    let r = reqwest::Client::new()
        .post(format!("{}/upload/x?a=1&b=two%20words&a=3", upstream.url()))
        .header("x-custom", "One")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "echo");
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        echo,
        serde_json::json!({
            "method": "POST",
            "path": "/upload/x",
            "query": "a=1&b=two%20words&a=3",
            "bodyBytes": CHUNKS << 20,
            "bodySha256": expected,
        })
    );

    assert_eq!(upstream.count(), 1);
    let [req] = &upstream.requests()[..] else {
        panic!("one request recorded")
    };
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/upload/x");
    assert_eq!(req.query.as_deref(), Some("a=1&b=two%20words&a=3"));
    assert_eq!(req.header("X-Custom"), Some("One"));
    assert_eq!(req.header_all("x-multi"), ["1", "2"]);
    assert_eq!(req.header("transfer-encoding"), Some("chunked"));
    assert_eq!(req.body_len, (CHUNKS as u64) << 20);
    assert_eq!(req.body_sha256, expected);
}

#[tokio::test]
async fn upstream_streams_big_bodies_and_answers_statuses() {
    const N: usize = 1_000_000;
    let upstream = Upstream::start().await;
    let pattern: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    let pattern_sha256 = hex::encode(Sha256::digest(&pattern));
    let http = reqwest::Client::new();

    for (query, length) in [("", Some(N as u64)), ("?chunked", None)] {
        let r = http
            .get(format!("{}/big/{N}{query}", upstream.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-upstream"], "echo");
        assert_eq!(r.headers()["x-body-sha256"], pattern_sha256.as_str());
        assert_eq!(r.content_length(), length, "{query}");
        let mut received = Vec::with_capacity(N);
        let mut chunks = 0;
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            received.extend_from_slice(&chunk.unwrap());
            chunks += 1;
        }
        assert!(received == pattern, "/big/{N}{query} bytes");
        assert!(chunks > 1, "/big/{N}{query} arrives in chunks");
    }

    let r = http
        .delete(format!("{}/status/503", upstream.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-upstream"], "echo");
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["method"], "DELETE");
    assert_eq!(echo["path"], "/status/503");

    assert_eq!(upstream.count(), 3);
    assert_eq!(upstream.count_path_prefix("/big/"), 2);
    assert_eq!(upstream.count_path_prefix("/status/"), 1);
    assert_eq!(upstream.requests()[1].query.as_deref(), Some("chunked"));
}
