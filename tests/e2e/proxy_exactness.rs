//! Exactness under concurrency: two proxies, 64 clients, never one admission past the limit.

use futures_util::future::join_all;
use std::time::Duration;
use tollgate_e2e::metering::{Metering, Options, count, hammer};
use tollgate_e2e::redis_cluster::RedisCluster;

async fn exactly_the_limit_reaches_the_upstream(m: &Metering) {
    let a = m.proxy(&[]).await;
    let b = m.proxy(&[]).await;
    let key = m.org_with_key("org_exact").await;

    let statuses = hammer(&[&a, &b], &key, "/v1/items", 64, 800).await;
    assert_eq!(count(&statuses, 200), 500, "exactly the limit is admitted");
    assert_eq!(count(&statuses, 429), 300, "every other request is refused");
    assert_eq!(
        m.upstream.count_path_prefix("/v1/items"),
        500,
        "only admitted requests reach the upstream"
    );
    m.await_durable("org_exact", "api_call", 500, Duration::from_secs(10))
        .await;

    // Cost-weighted: /v1/embeddings costs 10; a second org has the same 500.
    let key = m.org_with_key("org_weighted").await;
    let statuses = hammer(&[&a, &b], &key, "/v1/embeddings", 64, 120).await;
    assert_eq!(count(&statuses, 200), 50, "500 / 10");
    assert_eq!(count(&statuses, 429), 70);
    m.await_durable("org_weighted", "api_call", 500, Duration::from_secs(10))
        .await;
    // And the `tokens` metric (cost 7, limit 100) is a counter of its own.
    let statuses = hammer(&[&a, &b], &key, "/v1/tokens", 16, 40).await;
    assert_eq!(count(&statuses, 200), 14, "floor(100 / 7)");
    m.await_durable("org_weighted", "tokens", 98, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_from_the_limit_most_requests_are_admitted_from_a_lease() {
    let m = Metering::start(Options {
        limit: 1_000_000,
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_lease").await;
    let statuses = hammer(&[&proxy], &key, "/v1/items", 8, 2000).await;
    assert_eq!(count(&statuses, 200), 2000);
    let metrics = proxy.metrics().await;
    let round_trips: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_proxy_redis_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        round_trips <= 2000 / 20,
        "{round_trips} Redis round trips for 2000 requests"
    );
    m.await_durable("org_lease", "api_call", 2000, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_and_64_clients_admit_exactly_the_limit() {
    let m = Metering::start(Options {
        limit: 500,
        ..Options::default()
    })
    .await;
    exactly_the_limit_reaches_the_upstream(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactness_holds_on_a_three_master_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let m = Metering::start(Options {
        limit: 500,
        redis_url: Some(cluster.urls()),
        ..Options::default()
    })
    .await;
    exactly_the_limit_reaches_the_upstream(&m).await;

    // Several orgs (several hash slots) at once: write-back, settling and resets batch across slots.
    let proxy = m.proxy(&[]).await;
    let proxies = [&proxy];
    let orgs = ["org_slot_a", "org_slot_b", "org_slot_c", "org_slot_d"];
    let mut keys = Vec::new();
    for org in orgs {
        keys.push(m.org_with_key(org).await);
    }
    let bursts = keys
        .iter()
        .map(|key| hammer(&proxies, key, "/v1/items", 4, 20));
    for statuses in join_all(bursts).await {
        assert_eq!(count(&statuses, 200), 20);
    }
    for org in orgs {
        m.await_durable(org, "api_call", 20, Duration::from_secs(10))
            .await;
    }
    let now = tollgate_common::clock::Clock::now(&tollgate_common::clock::SystemClock);
    let period = tollgate_common::domain::Period::calendar_month(now)
        .key()
        .to_string();
    let r = m
        .app
        .post(
            "/api/admin/quotas.reset",
            tollgate_e2e::app::Auth::Operator,
            &serde_json::json!({"periodKey": period}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for org in orgs {
        m.await_durable(org, "api_call", 0, Duration::from_secs(10))
            .await;
    }
}
