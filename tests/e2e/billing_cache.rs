//! Issue 21: one billing-state cache (`tollgate_common::billing_cache`) in the proxies and the control plane,
//! pushed by PostgreSQL's announcements in O(changes), repaired after a reconnect and by the safety net, bounded.

use serde_json::Value;
use std::time::{Duration, Instant};
use tollgate_e2e::app::Auth;
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::metric_value;
use tollgate_e2e::proxy::ProxyProcess;
use tollgate_e2e::wait;

/// How long a change may take to show in a test (generous: CI machines are slow; the time is printed).
const SHOW: Duration = Duration::from_secs(20);
/// A safety net that never runs during a test (one round a day).
const NO_SAFETY_NET: &str = "86400000";
/// The listener's `application_name` (`tollgate_common::billing_cache::LISTENER_APPLICATION_NAME`).
const LISTENER: &str = tollgate_common::billing_cache::LISTENER_APPLICATION_NAME;

/// Moves `org`'s subscription to `plan` by plain SQL; with `announced` false, in a session whose triggers do not
/// fire (`session_replication_role = replica`): a change no announcement names.
async fn set_plan(m: &Metering, org: &str, plan: &str, announced: bool) {
    let mut tx = m.app.state.pg.begin().await.expect("begin");
    if !announced {
        sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .expect("silence triggers");
    }
    let n = sqlx::query(
        "UPDATE subscriptions SET plan_code = $2
          WHERE org_id = (SELECT id FROM orgs WHERE clerk_org_id = $1)",
    )
    .bind(org)
    .bind(plan)
    .execute(&mut *tx)
    .await
    .expect("update subscription")
    .rows_affected();
    assert_eq!(n, 1);
    tx.commit().await.expect("commit");
}

/// The `RateLimit-Limit` a proxy answers `key` with.
async fn limit_at(proxy: &ProxyProcess, key: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("{}/v1/x", proxy.url()))
        .header("x-api-key", key)
        .send()
        .await
        .ok()?;
    Some(
        r.headers()
            .get("ratelimit-limit")?
            .to_str()
            .ok()?
            .to_owned(),
    )
}

async fn await_limit(proxy: &ProxyProcess, key: &str, limit: &str) {
    wait::until(
        SHOW,
        &format!("the proxy to meter against {limit}"),
        || async { (limit_at(proxy, key).await.as_deref() == Some(limit)).then_some(()) },
    )
    .await;
}

/// The plan `entitlements.read` names for `key`'s org.
async fn plan_at_control_plane(m: &Metering, key: &str) -> Value {
    let r = m
        .app
        .get("/api/me/entitlements.read", Auth::ApiKey(key))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["planCode"].clone()
}

async fn await_plan(m: &Metering, key: &str, plan: &str) {
    wait::until(
        SHOW,
        &format!("the control plane to show {plan}"),
        || async { (plan_at_control_plane(m, key).await == plan).then_some(()) },
    )
    .await;
}

fn proxy_metric(metrics: &str, name: &str) -> u64 {
    metric_value(metrics, &format!("tollgate_proxy_billing_cache_{name}"))
}

fn cp_metric(metrics: &str, name: &str) -> u64 {
    metric_value(metrics, &format!("tollgate_cp_billing_cache_{name}"))
}

async fn cp_metrics(m: &Metering) -> String {
    m.app.get("/metrics", Auth::None).await.text
}

/// How many billing listeners are connected to the test database.
async fn listeners(m: &Metering) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(LISTENER)
    .fetch_one(&m.app.state.pg)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_written_by_anyone_reaches_both_proxies_and_the_control_plane() {
    let env = [("TOLLGATE_BILLING_RECHECK_MS", NO_SAFETY_NET)];
    let m = Metering::start(Options {
        control_plane_env: vec![(env[0].0.to_owned(), env[0].1.to_owned())],
        ..Options::default()
    })
    .await;
    let (a, b) = tokio::join!(m.proxy(&env), m.proxy(&env));
    let key = m.org_with_key("org_push").await;
    m.subscribe("org_push", "starter", None).await;
    // Cached everywhere, on starter.
    await_limit(&a, &key, "100000").await;
    await_limit(&b, &key, "100000").await;
    await_plan(&m, &key, "starter").await;

    // Written by plain SQL, as anyone might: only the announcement can bring it (no polling, no safety net).
    let started = Instant::now();
    set_plan(&m, "org_push", "growth", true).await;
    let (at_a, at_b, at_cp) = tokio::join!(
        async {
            await_limit(&a, &key, "1000000").await;
            started.elapsed()
        },
        async {
            await_limit(&b, &key, "1000000").await;
            started.elapsed()
        },
        async {
            await_plan(&m, &key, "growth").await;
            started.elapsed()
        },
    );
    println!("plan change shown: proxy A {at_a:?}, proxy B {at_b:?}, control plane {at_cp:?}");
    for p in [&a, &b] {
        let metrics = p.metrics().await;
        assert!(proxy_metric(&metrics, "announcements_total") >= 1);
        assert!(proxy_metric(&metrics, "reloads_total") >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_announcement_is_repaired_after_the_listener_reconnects() {
    let env = [("TOLLGATE_BILLING_RECHECK_MS", NO_SAFETY_NET)];
    let m = Metering::start(Options {
        control_plane_env: vec![(env[0].0.to_owned(), env[0].1.to_owned())],
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&env).await;
    let key = m.org_with_key("org_missed").await;
    m.subscribe("org_missed", "starter", None).await;
    await_limit(&proxy, &key, "100000").await;
    await_plan(&m, &key, "starter").await;
    wait::until(SHOW, "both listeners connected", || async {
        (listeners(&m).await >= 2).then_some(())
    })
    .await;
    // The safety net's first round (started when the org was cached) is over: a day until the next.
    wait::until(SHOW, "the safety nets' first round", || async {
        let proxy = proxy_metric(&proxy.metrics().await, "safety_net_rows_total");
        let cp = cp_metric(&cp_metrics(&m).await, "safety_net_rows_total");
        (proxy >= 1 && cp >= 1).then_some(())
    })
    .await;
    let proxy_before = proxy_metric(&proxy.metrics().await, "full_reloads_total");
    let cp_before = cp_metric(&cp_metrics(&m).await, "full_reloads_total");
    assert!(
        proxy_before >= 1 && cp_before >= 1,
        "the first connect reloads"
    );

    // A change whose announcement nobody hears, then the listeners' connections are cut.
    set_plan(&m, "org_missed", "growth", false).await;
    assert_eq!(
        limit_at(&proxy, &key).await.as_deref(),
        Some("100000"),
        "nothing announced it: the cache still has starter"
    );
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = $1 AND datname = current_database()) t",
    )
    .bind(LISTENER)
    .fetch_one(&m.app.state.pg)
    .await
    .expect("terminate the listeners");
    assert!(terminated >= 2, "the proxy's and the control plane's");

    await_limit(&proxy, &key, "1000000").await;
    await_plan(&m, &key, "growth").await;
    assert!(proxy_metric(&proxy.metrics().await, "full_reloads_total") > proxy_before);
    assert!(cp_metric(&cp_metrics(&m).await, "full_reloads_total") > cp_before);
    assert_eq!(
        proxy_metric(&proxy.metrics().await, "safety_net_corrections_total"),
        0,
        "the reconnect repaired it, not the safety net"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_net_finds_a_change_no_announcement_named() {
    let m = Metering::start(Options::default()).await;
    // The shortest allowed round: 10 s.
    let proxy = m.proxy(&[("TOLLGATE_BILLING_RECHECK_MS", "10000")]).await;
    let key = m.org_with_key("org_net").await;
    m.subscribe("org_net", "starter", None).await;
    await_limit(&proxy, &key, "100000").await;
    // The round that started when the org was cached is over: the change below is for the next one.
    wait::until(SHOW, "the safety net's first round", || async {
        (proxy_metric(&proxy.metrics().await, "safety_net_rows_total") >= 1).then_some(())
    })
    .await;

    set_plan(&m, "org_net", "pro", false).await;
    let started = Instant::now();
    wait::until(
        Duration::from_secs(60),
        "the safety net's correction",
        || async {
            (proxy_metric(&proxy.metrics().await, "safety_net_corrections_total") >= 1)
                .then_some(())
        },
    )
    .await;
    await_limit(&proxy, &key, "10000000").await;
    println!(
        "the safety net corrected the state after {:?}",
        started.elapsed()
    );
    let metrics = proxy.metrics().await;
    assert!(proxy_metric(&metrics, "safety_net_rows_total") >= 2);
    assert_eq!(
        proxy_metric(&metrics, "reloads_total"),
        0,
        "no announcement named the org"
    );
}

/// Waits until the proxy's safety net re-read `more` rows.
async fn await_rows(proxy: &ProxyProcess, more: u64) {
    let rows = proxy_metric(&proxy.metrics().await, "safety_net_rows_total");
    wait::until(Duration::from_secs(90), "safety-net rounds", || async {
        let now = proxy_metric(&proxy.metrics().await, "safety_net_rows_total");
        (now >= rows + more).then_some(())
    })
    .await;
}

/// The proxy's billing queries by reason.
fn queries(metrics: &str) -> [u64; 4] {
    ["cold", "announced", "full", "safety_net"]
        .map(|reason| proxy_metric(metrics, &format!("queries_total{{reason=\"{reason}\"}}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_sends_no_billing_queries() {
    const FEW: usize = 5;
    const MANY: usize = 40;
    /// Steps of a 10 s safety-net round (one a second).
    const STEPS: u64 = 10;
    let m = Metering::start(Options::default()).await;
    let env = [("TOLLGATE_BILLING_RECHECK_MS", "10000")];
    let (few, many) = tokio::join!(m.proxy(&env), m.proxy(&env));
    let mut keys = Vec::new();
    for i in 0..MANY {
        keys.push(m.org_with_key(&format!("org_idle_{i}")).await);
    }
    for (proxy, n) in [(&few, FEW), (&many, MANY)] {
        for key in &keys[..n] {
            assert!(limit_at(proxy, key).await.is_some());
        }
    }
    // Idle from here. Two rounds' worth of rows first, so the round under way began with every org cached; then
    // two more rounds are measured at each proxy.
    for (proxy, n) in [(&few, FEW), (&many, MANY)] {
        await_rows(proxy, 2 * n as u64).await;
    }
    let before = [few.metrics().await, many.metrics().await];
    for (proxy, n) in [(&few, FEW), (&many, MANY)] {
        await_rows(proxy, 2 * n as u64).await;
    }
    for (proxy, n, metrics) in [(&few, FEW, &before[0]), (&many, MANY, &before[1])] {
        let after = proxy.metrics().await;
        let [cold0, announced0, full0, net0] = queries(metrics);
        let [cold1, announced1, full1, net1] = queries(&after);
        assert_eq!(
            (cold1 - cold0, announced1 - announced0, full1 - full0),
            (0, 0, 0),
            "an idle proxy asks nothing but the safety net"
        );
        let rows = proxy_metric(&after, "safety_net_rows_total")
            - proxy_metric(metrics, "safety_net_rows_total");
        let net = net1 - net0;
        let per_query = (n as u64).div_ceil(STEPS);
        println!("{n} cached orgs: {net} safety-net queries for {rows} rows");
        // At most one query a step, however many orgs: each carries ceil(n / steps) of them.
        assert!(
            net <= rows.div_ceil(per_query) + 1,
            "{n} orgs: {net} queries for {rows} rows"
        );
        assert!(net <= (rows / n as u64 + 1) * STEPS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_org_comes_back_cold_and_keeps_its_counter_slot() {
    const EACH: u64 = 20;
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[("TOLLGATE_ORG_CACHE_CAPACITY", "2")]).await;
    let orgs = ["org_ev_a", "org_ev_b", "org_ev_c"];
    let mut keys = Vec::new();
    for org in orgs {
        keys.push(m.org_with_key(org).await);
    }
    let http = reqwest::Client::new();
    for n in 1..=EACH {
        for key in &keys {
            let r = http
                .get(format!("{}/v1/x", proxy.url()))
                .header("x-api-key", key)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers()["ratelimit-remaining"].to_str().expect("header"),
                (1000 - n).to_string(),
                "usage stays exact across evictions"
            );
        }
    }
    let metrics = proxy.metrics().await;
    assert!(
        proxy_metric(&metrics, "misses_total") > orgs.len() as u64,
        "orgs were evicted and loaded cold again: {}",
        proxy_metric(&metrics, "misses_total")
    );
    for org in orgs {
        m.await_durable(org, "api_call", EACH as i64, SHOW).await;
    }
}
