//! The proxy when its stores fail: Redis restarts and outages, PostgreSQL cuts, shutdown.

use std::time::Duration;
use tollgate_e2e::forwarder::TcpForwarder;
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::metric_value;
use tollgate_e2e::proxy::ProxyProcess;
use tollgate_e2e::redis_server::RedisServer;

async fn get(proxy: &ProxyProcess, path: &str, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", proxy.url()))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

fn remaining(r: &reqwest::Response) -> u64 {
    r.headers()["ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Requests the proxy admitted under quota (from a lease or a round trip), by its own count.
async fn metered(proxy: &ProxyProcess) -> u64 {
    let m = proxy.metrics().await;
    ["within", "near"]
        .iter()
        .map(|d| {
            metric_value(
                &m,
                &format!(
                    "tollgate_proxy_quota_decisions_total{{decision=\"{d}\",metric=\"api_call\"}}"
                ),
            )
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_resumes_counters_from_postgres_never_from_zero() {
    let mut redis = RedisServer::start().await;
    let m = Metering::start(Options {
        limit: 100,
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let mut proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_restart").await;
    for _ in 0..30 {
        assert_eq!(get(&proxy, "/v1/x", &key).await.status(), 200);
    }
    m.await_durable("org_restart", "api_call", 30, Duration::from_secs(10))
        .await;

    redis.stop();
    // Fail-open (the default): requests still pass while Redis is gone — from what is left of the replica's
    // lease, then unmetered — and the process stays up.
    for _ in 0..20 {
        assert_eq!(get(&proxy, "/v1/x", &key).await.status(), 200);
    }
    assert!(proxy.is_running());
    let failed_open = metric_value(
        &proxy.metrics().await,
        "tollgate_proxy_quota_decisions_total{decision=\"failed_open\",metric=\"api_call\"}",
    );
    assert!(
        failed_open > 0,
        "once the lease ran out, requests failed open"
    );
    redis.restart().await;

    let r = tollgate_e2e::wait::until(Duration::from_secs(10), "metering to resume", || async {
        let r = get(&proxy, "/v1/x", &key).await;
        r.headers().contains_key("ratelimit-remaining").then_some(r)
    })
    .await;
    assert!(
        remaining(&r) <= 100 - 31,
        "rebuilt from PostgreSQL's 30, not from zero: {}",
        remaining(&r)
    );
    for _ in 0..9 {
        assert_eq!(get(&proxy, "/v1/x", &key).await.status(), 200);
    }
    // Everything the proxy metered — before, during (from its lease) and after the outage — reaches PostgreSQL.
    let total = i64::try_from(metered(&proxy).await).unwrap();
    assert!(total >= 40, "{total}");
    m.await_durable("org_restart", "api_call", total, Duration::from_secs(10))
        .await;
    assert!(proxy.is_running());
    let log = proxy.log();
    assert_eq!(
        log.matches("redis unreachable").count(),
        1,
        "one log line per outage, not per request:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_metered_requests_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start().await;
    let m = Metering::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let mut proxy = m
        .proxy(&[("TOLLGATE_REDIS_FAILURE_POLICY", "fail_closed")])
        .await;
    let key = m.org_with_key("org_closed").await;
    assert_eq!(get(&proxy, "/v1/x", &key).await.status(), 200);

    redis.stop();
    let r = get(&proxy, "/v1/x", &key).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        get(&proxy, "/health", &key).await.status(),
        200,
        "unmetered routes need no Redis"
    );
    assert!(proxy.is_running());

    redis.restart().await;
    tollgate_e2e::wait::until(Duration::from_secs(10), "metering to resume", || async {
        (get(&proxy, "/v1/x", &key).await.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_keeps_enforcing_and_loses_nothing() {
    let m = Metering::start(Options {
        limit: 40,
        ..Options::default()
    })
    .await;
    let pg_addr = "127.0.0.1:5432".parse().unwrap();
    let forwarder = TcpForwarder::start(pg_addr).await;
    let url = m
        .app
        .db
        .url
        .replace("127.0.0.1:5432", &forwarder.addr().to_string());
    let proxy = m.proxy(&[("DATABASE_URL", url.as_str())]).await;
    let key = m.org_with_key("org_pgcut").await;
    for _ in 0..20 {
        assert_eq!(get(&proxy, "/v1/x", &key).await.status(), 200);
    }
    m.await_durable("org_pgcut", "api_call", 20, Duration::from_secs(10))
        .await;

    forwarder.cut();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get(&proxy, "/v1/x", &key).await.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "enforcement goes on from Redis"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10);
    assert_eq!(
        m.durable_used("org_pgcut", "api_call").await,
        20,
        "nothing could be written meanwhile"
    );

    forwarder.restore();
    m.await_durable("org_pgcut", "api_call", 40, Duration::from_secs(15))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_pending_usage() {
    let m = Metering::start(Options::default()).await;
    let mut proxy = m
        .proxy(&[("TOLLGATE_WRITEBACK_INTERVAL_MS", "60000")])
        .await;
    let key = m.org_with_key("org_shutdown").await;
    for _ in 0..25 {
        assert_eq!(get(&proxy, "/v1/x", &key).await.status(), 200);
    }
    assert_eq!(
        m.durable_used("org_shutdown", "api_call").await,
        0,
        "nothing flushed yet"
    );
    proxy.signal_term();
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the proxy exits");
    assert!(status.success(), "{status:?}\n{}", proxy.log());
    assert_eq!(m.durable_used("org_shutdown", "api_call").await, 25);
}

/// `tollgate_proxy_settle_passes_total{outcome}` and `tollgate_proxy_settle_reports_total` as scraped.
async fn settles(proxy: &ProxyProcess) -> (u64, u64, u64) {
    let m = proxy.metrics().await;
    (
        metric_value(&m, "tollgate_proxy_settle_passes_total{outcome=\"ok\"}"),
        metric_value(&m, "tollgate_proxy_settle_passes_total{outcome=\"failed\"}"),
        metric_value(&m, "tollgate_proxy_settle_reports_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_passes_are_counted_ok_while_redis_answers_and_failed_while_it_is_down() {
    let mut redis = RedisServer::start().await;
    let m = Metering::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_settle_metrics").await;
    let metrics = proxy.metrics().await;
    for series in [
        "tollgate_proxy_settle_passes_total{outcome=\"ok\"} 0",
        "tollgate_proxy_settle_passes_total{outcome=\"failed\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} from the start");
    }

    // Consumption from the lease is reported by a settle pass that reaches Redis.
    for _ in 0..3 {
        assert_eq!(get(&proxy, "/v1/x", &key).await.status(), 200);
    }
    let (ok, _, reports) =
        tollgate_e2e::wait::until(Duration::from_secs(10), "a settle pass", || async {
            let s = settles(&proxy).await;
            (s.0 > 0 && s.2 > 0).then_some(s)
        })
        .await;
    assert!(
        reports >= ok,
        "every counted pass reported at least one lease"
    );
    assert_eq!(
        settles(&proxy).await.1,
        0,
        "no failed pass while Redis answers"
    );

    // With Redis gone, the lease's unreported consumption makes every pass fail until Redis returns.
    redis.stop();
    assert_eq!(get(&proxy, "/v1/x", &key).await.status(), 200);
    tollgate_e2e::wait::until(Duration::from_secs(10), "a failed settle pass", || async {
        (settles(&proxy).await.1 > 0).then_some(())
    })
    .await;
    redis.restart().await;
    let ok_before = settles(&proxy).await.0;
    tollgate_e2e::wait::until(Duration::from_secs(10), "settling to recover", || async {
        (settles(&proxy).await.0 > ok_before).then_some(())
    })
    .await;
}
