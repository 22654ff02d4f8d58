//! Revocation without amplification (issue 19): a revocation is announced once, a replica evicts only the key
//! announced, and the whole key cache is dropped only when announcements were missed.

use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;
use tollgate_common::keys;
use tollgate_e2e::app::{Auth, Resp, TestApp};
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::metric_value;
use tollgate_e2e::proxy::ProxyProcess;
use tollgate_e2e::redis_server::RedisServer;

const FLUSH_REASONS: [&str; 3] = ["reconnect", "missed", "unreadable"];

async fn revoke(app: &TestApp, token: &str, key_id: &str) -> Resp {
    app.post(
        "/api/keys.revoke",
        Auth::Bearer(token),
        &json!({"keyId": key_id}),
    )
    .await
}

async fn epoch(redis_url: &str, namespace: &str) -> i64 {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("GET")
        .arg(keys::revocations_epoch_key(namespace))
        .query_async::<Option<i64>>(&mut conn)
        .await
        .expect("GET the epoch")
        .unwrap_or(0)
}

/// The status of one proxied request made with `key`.
async fn call(http: &reqwest::Client, proxy: &ProxyProcess, key: &str) -> u16 {
    http.get(format!("{}/v1/x", proxy.url()))
        .header("x-api-key", key)
        .send()
        .await
        .expect("the proxy answers")
        .status()
        .as_u16()
}

fn flushes(metrics: &str, prefix: &str) -> Vec<(&'static str, u64)> {
    FLUSH_REASONS
        .iter()
        .map(|r| {
            let series = format!("{prefix}_key_cache_flushes_total{{reason=\"{r}\"}}");
            (*r, metric_value(metrics, &series))
        })
        .collect()
}

fn no_flushes() -> Vec<(&'static str, u64)> {
    FLUSH_REASONS.iter().map(|r| (*r, 0)).collect()
}

const VALID: &str = "tollgate_proxy_key_resolutions_total{outcome=\"valid\"}";
const HEARD: &str = "tollgate_proxy_revocation_announcements_total";

/// The storm of the issue: 200 revocations of one already revoked key, 8 at a time, while another org's key is
/// used through two proxies. Nothing is written or announced, and that key is never looked up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_revocations_of_a_revoked_key_reresolves_no_key() {
    let m = Metering::start(Options {
        limit: 1_000_000,
        // The per-org limit of keys.revoke would refuse most of the storm; no amplification must hold without it.
        control_plane_env: vec![("TOLLGATE_CP_KEYS_RATE_LIMIT".to_owned(), "off".to_owned())],
        ..Options::default()
    })
    .await;
    let proxies = [m.proxy(&[]).await, m.proxy(&[]).await];
    m.app.create_org("org_storm_a").await;
    let (a_id, a_key) = m.app.create_key("org_storm_a").await;
    let b_key = m.org_with_key("org_storm_b").await;
    let http = reqwest::Client::new();
    for p in &proxies {
        assert_eq!(call(&http, p, &b_key).await, 200, "B's key works");
        assert_eq!(metric_value(&p.metrics().await, VALID), 1, "and is cached");
    }

    // A's key is revoked once: announced once, heard by both proxies.
    let a_token = m.app.user_token("user_storm_a", "org_storm_a");
    let r = revoke(&m.app, &a_token, &a_id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for p in &proxies {
        tollgate_e2e::wait::until(
            Duration::from_secs(5),
            "the proxy to hear the revocation",
            || async { (metric_value(&p.metrics().await, HEARD) == 1).then_some(()) },
        )
        .await;
    }
    let namespace = m.app.namespace().to_owned();
    assert_eq!(epoch(&m.redis_url, &namespace).await, 1);
    let row_version = |pg: sqlx::PgPool, id: String| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT xmin::text || ' ' || revoked_at::text FROM api_keys WHERE id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&pg)
        .await
        .expect("the key's row")
    };
    let before = row_version(m.app.state.pg.clone(), a_id.clone()).await;

    // 25 rounds of 8 concurrent repeats, each round while B's key is used through both proxies.
    let mut b_calls = 0;
    for _ in 0..25 {
        let repeats = futures_util::stream::iter(0..8)
            .map(|_| revoke(&m.app, &a_token, &a_id))
            .buffer_unordered(8)
            .collect::<Vec<_>>();
        let uses = futures_util::future::join_all(proxies.iter().map(|p| call(&http, p, &b_key)));
        let (repeats, uses) = tokio::join!(repeats, uses);
        for r in repeats {
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.json, json!({"revoked": true}));
        }
        assert!(
            uses.iter().all(|s| *s == 200),
            "B's key keeps working: {uses:?}"
        );
        b_calls += uses.len();
    }
    assert_eq!(b_calls, 50);

    assert_eq!(
        row_version(m.app.state.pg.clone(), a_id.clone()).await,
        before,
        "the repeats wrote nothing"
    );
    assert_eq!(
        epoch(&m.redis_url, &namespace).await,
        1,
        "the repeats announced nothing"
    );
    for p in &proxies {
        assert_eq!(call(&http, p, &a_key).await, 401, "A's key stays refused");
        let metrics = p.metrics().await;
        assert_eq!(
            metric_value(&metrics, VALID),
            1,
            "B's key was looked up in PostgreSQL once on this proxy"
        );
        assert_eq!(metric_value(&metrics, HEARD), 1, "one announcement heard");
        assert_eq!(flushes(&metrics, "tollgate_proxy"), no_flushes());
    }
    let cp = m.app.get("/metrics", Auth::None).await.text;
    assert_eq!(
        metric_value(&cp, "tollgate_cp_revocation_announcements_total"),
        1
    );
    assert_eq!(flushes(&cp, "tollgate_cp"), no_flushes());
}

/// Concurrent first revocations of one key: every call answers 200, one of them announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_of_one_key_announce_once() {
    let app = TestApp::start().await;
    app.create_org("org_race").await;
    let (key_id, key) = app.create_key("org_race").await;
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(keys::revocations_channel(app.namespace()))
        .await
        .unwrap();
    let token = app.user_token("user_race", "org_race");

    let answers =
        futures_util::future::join_all((0..16).map(|_| revoke(&app, &token, &key_id))).await;
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Every announcement moves the epoch before it is published: one move, one announcement.
    assert_eq!(epoch("redis://127.0.0.1:6379", app.namespace()).await, 1);
    let message = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("the revocation is announced")
        .unwrap();
    let announcement = keys::Announcement::parse(&message.get_payload::<String>().unwrap())
        .expect("a readable announcement");
    assert_eq!(announcement.epoch, 1);
    assert_eq!(announcement.revocation.hash(), &keys::hash(&key));
    let owed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE announce_due_at IS NOT NULL")
            .fetch_one(&app.state.pg)
            .await
            .unwrap();
    assert_eq!(owed, 0, "nothing is left to announce");
}

/// An epoch moved without an announcement (one missed) makes every replica drop its key cache at its next checks;
/// the key is then looked up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_announcement_makes_every_replica_flush() {
    let m = Metering::start(Options::default()).await;
    let proxies = [m.proxy(&[]).await, m.proxy(&[]).await];
    let key = m.org_with_key("org_missed").await;
    let http = reqwest::Client::new();
    for p in &proxies {
        assert_eq!(call(&http, p, &key).await, 200);
    }
    let client = redis::Client::open(m.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("INCR")
        .arg(keys::revocations_epoch_key(m.app.namespace()))
        .query_async::<i64>(&mut conn)
        .await
        .unwrap();
    let missed = "tollgate_proxy_key_cache_flushes_total{reason=\"missed\"}";
    for p in &proxies {
        tollgate_e2e::wait::until(
            Duration::from_secs(5),
            "the proxy to notice the missed announcement",
            || async { (metric_value(&p.metrics().await, missed) == 1).then_some(()) },
        )
        .await;
        assert_eq!(call(&http, p, &key).await, 200);
        assert_eq!(
            metric_value(&p.metrics().await, VALID),
            2,
            "the key was looked up again"
        );
    }
    tollgate_e2e::wait::until(
        Duration::from_secs(10),
        "the control plane to notice the missed announcement",
        || async {
            let cp = m.app.get("/metrics", Auth::None).await.text;
            (metric_value(
                &cp,
                "tollgate_cp_key_cache_flushes_total{reason=\"missed\"}",
            ) == 1)
                .then_some(())
        },
    )
    .await;
}

/// A subscription made again may have missed announcements: every replica drops its key cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribed_replica_flushes() {
    let redis = RedisServer::start().await;
    let m = Metering::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_resub").await;
    let http = reqwest::Client::new();
    assert_eq!(call(&http, &proxy, &key).await, 200);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Both subscribers (the proxy's and the control plane's) are listening before they are cut off.
    let channel = keys::revocations_channel(m.app.namespace());
    tollgate_e2e::wait::until(Duration::from_secs(10), "the subscribers", || {
        let (mut conn, channel) = (conn.clone(), channel.clone());
        async move {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .ok()?;
            (n == 2).then_some(())
        }
    })
    .await;
    let cut: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        cut >= 2,
        "the proxy's and the control plane's subscriptions: {cut}"
    );
    let reconnect = "tollgate_proxy_key_cache_flushes_total{reason=\"reconnect\"}";
    tollgate_e2e::wait::until(
        Duration::from_secs(10),
        "the proxy to subscribe again and flush",
        || async { (metric_value(&proxy.metrics().await, reconnect) >= 1).then_some(()) },
    )
    .await;
    assert_eq!(call(&http, &proxy, &key).await, 200);
    assert_eq!(
        metric_value(&proxy.metrics().await, VALID),
        2,
        "the key was looked up again"
    );
    tollgate_e2e::wait::until(
        Duration::from_secs(10),
        "the control plane to subscribe again and flush",
        || async {
            let cp = m.app.get("/metrics", Auth::None).await.text;
            (metric_value(
                &cp,
                "tollgate_cp_key_cache_flushes_total{reason=\"reconnect\"}",
            ) >= 1)
                .then_some(())
        },
    )
    .await;
}

async fn announce_due(app: &TestApp, key_id: &str) -> Option<bool> {
    sqlx::query_scalar("SELECT announce_due_at <= now() FROM api_keys WHERE id = $1::uuid")
        .bind(key_id)
        .fetch_one(&app.state.pg)
        .await
        .expect("the key's row")
}

async fn await_ready(app: &TestApp) {
    tollgate_e2e::wait::until(
        Duration::from_secs(10),
        "the control plane to reach Redis again",
        || async { (app.get("/readyz", Auth::None).await.status == 200).then_some(()) },
    )
    .await;
}

/// The announce fails: 503, the key is refused anyway, and repeating the call announces it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_announce_answers_503_and_a_repeat_announces_once() {
    let mut redis = RedisServer::start().await;
    // The sweep runs at start and then once a minute: here the repeats announce.
    let app = TestApp::builder()
        .redis_url(&redis.url())
        .env("TOLLGATE_REFRESH_INTERVAL_MS", "60000")
        .start()
        .await;
    app.create_org("org_down").await;
    let (key_id, key) = app.create_key("org_down").await;
    let token = app.user_token("user_down", "org_down");

    redis.stop();
    for _ in 0..2 {
        let r = revoke(&app, &token, &key_id).await;
        let problem = r.problem(503);
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("repeat the call")),
            "{}",
            r.text
        );
        assert_eq!(
            announce_due(&app, &key_id).await,
            Some(true),
            "the announcement is owed"
        );
    }
    assert_eq!(keys::resolve(&app.state.pg, &key).await.unwrap(), None);
    assert_eq!(
        app.get("/api/keys.list", Auth::Bearer(&token)).await.json,
        json!([])
    );

    redis.restart().await;
    await_ready(&app).await;
    let r = revoke(&app, &token, &key_id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(epoch(&redis.url(), app.namespace()).await, 1, "announced");
    assert_eq!(announce_due(&app, &key_id).await, None, "nothing owed");
    let r = revoke(&app, &token, &key_id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        epoch(&redis.url(), app.namespace()).await,
        1,
        "and not again"
    );
}

/// An announcement owed and never repeated is made by the sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_announcement_is_made_without_a_repeat() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::builder()
        .redis_url(&redis.url())
        .env("TOLLGATE_REFRESH_INTERVAL_MS", "100")
        .start()
        .await;
    app.create_org("org_owed").await;
    let (key_id, _) = app.create_key("org_owed").await;
    let token = app.user_token("user_owed", "org_owed");
    redis.stop();
    revoke(&app, &token, &key_id).await.problem(503);

    redis.restart().await;
    let url = redis.url();
    tollgate_e2e::wait::until(
        Duration::from_secs(10),
        "the sweep to announce the revocation",
        || async { (announce_due(&app, &key_id).await.is_none()).then_some(()) },
    )
    .await;
    assert_eq!(epoch(&url, app.namespace()).await, 1);
}
