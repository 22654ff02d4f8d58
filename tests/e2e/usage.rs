//! The metering API of the control plane: records, checks, entitlements, seeding, history, resets, rollover.

use chrono::{Duration as ChronoDuration, Utc};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::time::Duration;
use tollgate_common::clock::{Clock, OffsetClock, SystemClock};
use tollgate_common::domain::{DenyEnvelope, Metric, Period};
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::metering::{Metering, Options};

fn now() -> chrono::DateTime<Utc> {
    SystemClock.now()
}

pub(crate) fn record(request_id: &str, value: u64) -> Value {
    json!({"metric": "api_call", "value": value, "occurredAt": now().to_rfc3339(), "request_id": request_id})
}

/// `retry-<i>` for each `i`, 4 units each, all sent at once.
async fn record_at_once(
    app: &TestApp,
    key: &str,
    ids: std::ops::RangeInclusive<u32>,
) -> Vec<tollgate_e2e::app::Resp> {
    join_all(ids.map(|i| {
        let body = record(&format!("retry-{i}"), 4);
        async move {
            app.post("/api/usage/record", Auth::ApiKey(key), &body)
                .await
        }
    }))
    .await
}

async fn entitlements(app: &TestApp, key: &str) -> Value {
    let r = app
        .get("/api/me/entitlements.read", Auth::ApiKey(key))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_simultaneous_duplicates_count_once_with_identical_bodies() {
    let m = Metering::start(Options::default()).await;
    let key = m.org_with_key("org_dup").await;
    let body = record("req-dup-1", 7);
    let calls = (0..100).map(|_| m.app.post("/api/usage/record", Auth::ApiKey(&key), &body));
    let responses = join_all(calls).await;
    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.text, responses[0].text, "byte-identical bodies");
    }
    assert_eq!(responses[0].json["used"], 7);
    assert_eq!(entitlements(&m.app, &key).await["used"], 7);
    m.await_durable("org_dup", "api_call", 7, Duration::from_secs(5))
        .await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(events, 1);

    // The same id with another value is a conflict, not a silent replay.
    let r = m
        .app
        .post(
            "/api/usage/record",
            Auth::ApiKey(&key),
            &record("req-dup-1", 8),
        )
        .await;
    assert_eq!(r.problem(409)["field"], "request_id");
    // `requestId` is the same key.
    let mut camel = record("x", 7);
    camel.as_object_mut().unwrap().remove("request_id");
    camel["requestId"] = json!("req-dup-1");
    let r = m
        .app
        .post("/api/usage/record", Auth::ApiKey(&key), &camel)
        .await;
    assert_eq!(r.text, responses[0].text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_racing_records_add_up_exactly_and_with_proxied_calls() {
    let m = Metering::start(Options {
        limit: 100_000,
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_sum").await;
    let calls = (0..200u64).map(|i| {
        let body = record(&format!("req-{i}"), i % 7 + 1);
        let app = &m.app;
        let key = key.clone();
        async move {
            app.post("/api/usage/record", Auth::ApiKey(&key), &body)
                .await
        }
    });
    for r in join_all(calls).await {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let expected: u64 = (0..200u64).map(|i| i % 7 + 1).sum();
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let r = http
            .get(format!("{}/v1/x", proxy.url()))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Proxied calls are settled into the counter within the settle interval (20 ms).
    let e = tollgate_e2e::wait::until(
        Duration::from_secs(5),
        "proxied usage to settle",
        || async {
            let e = entitlements(&m.app, &key).await;
            (e["used"] == expected + 5).then_some(e)
        },
    )
    .await;
    assert_eq!(
        e["remaining"],
        100_000 - expected - 5,
        "recorded and proxied usage share one counter: {e}"
    );
    m.await_durable(
        "org_sum",
        "api_call",
        i64::try_from(expected + 5).unwrap(),
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn recording_is_accounting_not_admission() {
    let m = Metering::start(Options {
        limit: 10,
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_over").await;
    let r = m
        .app
        .post("/api/usage/record", Auth::ApiKey(&key), &record("big", 25))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"periodKey": Period::calendar_month(now()).key().to_string(), "used": 25, "remaining": 0})
    );
}

#[tokio::test]
async fn a_check_rebuilds_a_missing_counter_once_and_then_reads_redis() {
    let m = Metering::start(Options {
        limit: 10,
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_rebuild").await;
    let r = m
        .app
        .post(
            "/api/usage/record",
            Auth::ApiKey(&key),
            &record("before", 4),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Redis loses the counter (a restart); PostgreSQL's durable copy says 4.
    let org_id: i64 = sqlx::query_scalar("SELECT id FROM orgs WHERE clerk_org_id = 'org_rebuild'")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    let mut redis = m.app.state.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{o{org_id}}}:c:*", m.app.namespace()))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    redis::cmd("DEL")
        .arg(&keys)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let check = || async {
        let r = m
            .app
            .post(
                "/api/quota/check",
                Auth::ApiKey(&key),
                &json!({"metric": "api_call"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["remaining"].clone()
    };
    assert_eq!(check().await, 6, "rebuilt from the durable copy");
    // Were the next check to read PostgreSQL again, it would now answer 10.
    sqlx::query("UPDATE usage_counters SET used = 0 WHERE org_id = $1")
        .bind(org_id)
        .execute(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(check().await, 6, "the rebuilt counter is read from Redis");
}

#[tokio::test]
async fn quota_check_consumes_nothing_and_answers_the_envelope_at_the_limit() {
    let m = Metering::start(Options {
        limit: 3,
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_check").await;
    for _ in 0..20 {
        let r = m
            .app
            .post(
                "/api/quota/check",
                Auth::ApiKey(&key),
                &json!({"metric": "api_call"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json, json!({"allow": true, "remaining": 3}));
    }
    m.app
        .post("/api/usage/record", Auth::ApiKey(&key), &record("fill", 3))
        .await;
    let r = m
        .app
        .post(
            "/api/quota/check",
            Auth::ApiKey(&key),
            &json!({"metric": "api_call"}),
        )
        .await;
    let when = now();
    let p = r.problem(429);
    assert_eq!(p["allow"], false);
    assert_eq!(p["remaining"], 0);
    assert_eq!(p["limit"], 3);
    let retry: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((retry - (Period::calendar_month(when).end - when).num_seconds()).abs() <= 2);
    let expected = DenyEnvelope::new(
        Metric::parse("api_call").unwrap(),
        3,
        3,
        &Period::calendar_month(when),
        when,
    );
    assert_eq!(
        r.text,
        expected.to_json(),
        "the proxy's envelope, byte for byte"
    );
    assert_eq!(
        entitlements(&m.app, &key).await["used"],
        3,
        "checks consumed nothing"
    );
}

#[tokio::test]
async fn the_example_envelope_is_the_standard_one() {
    let app = TestApp::start().await;
    let r = app
        .post_raw("/api/quota/deny-envelope.example", Auth::None, "")
        .await;
    let p = r.problem(429).clone();
    let when = now();
    let period = Period::calendar_month(when);
    let expected = DenyEnvelope::new(
        Metric::parse("api_call").unwrap(),
        1000,
        1000,
        &period,
        when,
    );
    assert_eq!(r.text, expected.to_json());
    assert_eq!(p["periodKey"], period.key().to_string());
    let retry: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0);
}

#[tokio::test]
async fn seeding_creates_the_counter_once_and_never_resets_it() {
    let m = Metering::start(Options {
        limit: 50,
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_seed").await;
    let period = Period::calendar_month(now()).key().to_string();
    let r = m
        .app
        .post(
            "/api/usage/seed",
            Auth::ApiKey(&key),
            &json!({"periodKey": period}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"used": 0, "remaining": 50, "periodKey": period})
    );
    assert_eq!(m.durable_used("org_seed", "api_call").await, 0);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_counters")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(rows, 2, "every metric of the plan is seeded");

    m.app
        .post("/api/usage/record", Auth::ApiKey(&key), &record("r1", 4))
        .await;
    let r = m
        .app
        .post("/api/usage/seed", Auth::ApiKey(&key), &json!({}))
        .await;
    assert_eq!(
        r.json,
        json!({"used": 4, "remaining": 46, "periodKey": period}),
        "never resets a used counter"
    );

    let r = m
        .app
        .post(
            "/api/usage/seed",
            Auth::ApiKey(&key),
            &json!({"periodKey": "2001-01"}),
        )
        .await;
    assert_eq!(r.problem(409)["field"], "periodKey");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_period_is_recorded_to_itself_and_leaves_todays_quota_alone() {
    let m = Metering::start(Options {
        limit: 100,
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_late").await;
    m.app
        .post("/api/usage/record", Auth::ApiKey(&key), &record("now", 10))
        .await;
    let current = Period::calendar_month(now());
    let last_month = current.start - ChronoDuration::days(3);
    let body = json!({"metric": "api_call", "value": 30, "occurredAt": last_month.to_rfc3339(), "request_id": "late"});
    let r = m
        .app
        .post("/api/usage/record", Auth::ApiKey(&key), &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let previous_key = Period::calendar_month(last_month).key().to_string();
    assert_eq!(r.json["periodKey"], previous_key);
    assert_eq!(r.json["used"], 30);
    assert_eq!(
        entitlements(&m.app, &key).await["used"],
        10,
        "today's quota is untouched"
    );

    let h = m
        .app
        .get("/api/usage/history?periods=3", Auth::ApiKey(&key))
        .await;
    assert_eq!(h.status, 200, "{}", h.text);
    let items = h.json.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[0],
        json!({"periodKey": current.key().to_string(), "used": 10, "included": 100})
    );
    assert_eq!(
        items[1],
        json!({"periodKey": previous_key, "used": 30, "included": 100})
    );
    assert_eq!(items[2]["used"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periods_roll_over_by_themselves() {
    let clock = OffsetClock::default();
    let m = Metering::start(Options {
        limit: 100,
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_roll").await;
    m.app
        .post(
            "/api/usage/record",
            Auth::ApiKey(&key),
            &record("before", 12),
        )
        .await;
    let before = entitlements(&m.app, &key).await;
    assert_eq!(before["used"], 12);

    // Past the end of this calendar month, without any endpoint or webhook.
    let t = now();
    let next_month = Period::calendar_month(t).end + ChronoDuration::hours(1);
    clock.advance(next_month - t);
    let after = entitlements(&m.app, &key).await;
    assert_eq!(
        after["periodKey"],
        Period::calendar_month(next_month).key().to_string()
    );
    assert_eq!(after["used"], 0);
    let h = m
        .app
        .get("/api/usage/history?periods=2", Auth::ApiKey(&key))
        .await;
    assert_eq!(h.json[1]["periodKey"], before["periodKey"]);
    assert_eq!(h.json[1]["used"], 12, "the old period keeps its total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_a_subscription_period_rollover_within_seconds() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_sub").await;
    // An active starter subscription whose stated period ends three seconds from now: the next one follows from
    // the billing cycle anchor without any webhook.
    let end = now() + ChronoDuration::seconds(3);
    sqlx::query("UPDATE orgs SET stripe_customer_id = 'cus_roll' WHERE clerk_org_id = 'org_sub'")
        .execute(&m.app.state.pg)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO subscriptions (org_id, stripe_customer_id, stripe_subscription_id, status, plan_code,
                                    stripe_price_id, current_period_start, current_period_end, billing_cycle_anchor)
         SELECT id, 'cus_roll', 'sub_roll', 'active', 'starter', 'price_roll', $1 - interval '1 month', $1,
                $1 - interval '1 month'
           FROM orgs WHERE clerk_org_id = 'org_sub'",
    )
    .bind(end)
    .execute(&m.app.state.pg)
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let get = || {
        http.get(format!("{}/v1/x", proxy.url()))
            .header("x-api-key", &key)
            .send()
    };
    // The proxy picks up the plan change (starter: 100 000) within its refresh interval.
    tollgate_e2e::wait::until(
        Duration::from_secs(5),
        "the plan change to reach the proxy",
        || async {
            let r = get().await.ok()?;
            (r.headers().get("ratelimit-limit")?.to_str().ok()? == "100000").then_some(())
        },
    )
    .await;
    for _ in 0..3 {
        get().await.unwrap();
    }
    // Then the period ends, and the next request meters against a fresh period.
    let r = tollgate_e2e::wait::until(
        Duration::from_secs(10),
        "the proxy to roll over",
        || async {
            let r = get().await.ok()?;
            (r.headers().get("ratelimit-remaining")?.to_str().ok()? == "99999").then_some(r)
        },
    )
    .await;
    let reset: u64 = r.headers()["ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        reset > 27 * 24 * 3600,
        "a whole new period lies ahead: {reset}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reset_raced_by_write_back_stays_reset() {
    let m = Metering::start(Options {
        limit: 1000,
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[("TOLLGATE_WRITEBACK_INTERVAL_MS", "10")]).await;
    let key = m.org_with_key("org_reset").await;
    let other = m.org_with_key("org_other").await;
    let http = reqwest::Client::new();
    for k in [&key, &key, &key, &other] {
        for _ in 0..10 {
            http.get(format!("{}/v1/x", proxy.url()))
                .header("x-api-key", k)
                .send()
                .await
                .unwrap();
        }
    }
    m.await_durable("org_reset", "api_call", 30, Duration::from_secs(5))
        .await;
    let period = Period::calendar_month(now()).key().to_string();
    let r = m
        .app
        .post(
            "/api/admin/quotas.reset",
            Auth::Operator,
            &json!({"periodKey": period, "orgId": "org_reset"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"updated": 1, "periodKey": period}));
    // The proxy hears of the reset and drops its lease on the counter.
    tollgate_e2e::wait::until(
        Duration::from_secs(5),
        "the proxy to hear of the reset",
        || async {
            proxy
                .metrics()
                .await
                .contains("tollgate_proxy_reset_announcements_total 1")
                .then_some(())
        },
    )
    .await;
    // Write-back keeps running every 10 ms. A write by another org proves rounds ran after the reset.
    http.get(format!("{}/v1/x", proxy.url()))
        .header("x-api-key", &other)
        .send()
        .await
        .unwrap();
    m.await_durable("org_other", "api_call", 11, Duration::from_secs(5))
        .await;
    assert_eq!(m.durable_used("org_reset", "api_call").await, 0);
    assert_eq!(entitlements(&m.app, &key).await["used"], 0);
    assert_eq!(
        entitlements(&m.app, &other).await["used"],
        11,
        "other orgs are untouched"
    );
    let r = http
        .get(format!("{}/v1/x", proxy.url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["ratelimit-remaining"],
        "999",
        "the proxy meters from zero"
    );
    tollgate_e2e::wait::until(Duration::from_secs(5), "the new call to settle", || async {
        (entitlements(&m.app, &key).await["used"] == 1).then_some(())
    })
    .await;

    let again = m
        .app
        .post(
            "/api/admin/quotas.reset",
            Auth::Operator,
            &json!({"periodKey": period}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        again.json["updated"], 2,
        "every org: org_reset (1 since) and org_other (11)"
    );
    let again = m
        .app
        .post(
            "/api/admin/quotas.reset",
            Auth::Operator,
            &json!({"periodKey": period}),
        )
        .await;
    assert_eq!(again.json["updated"], 0, "idempotent");
    m.await_durable("org_other", "api_call", 0, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn every_usage_endpoint_rejects_bad_input_naming_the_field_and_writes_nothing() {
    let m = Metering::start(Options::default()).await;
    let key = m.org_with_key("org_bad").await;
    let at = now().to_rfc3339();
    let future = (now() + ChronoDuration::minutes(10)).to_rfc3339();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 0, "occurredAt": at, "request_id": "a"}),
            422,
            "value",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": -1, "occurredAt": at, "request_id": "a"}),
            422,
            "value",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 1.5, "occurredAt": at, "request_id": "a"}),
            422,
            "value",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 5_000_000_000u64, "occurredAt": at, "request_id": "a"}),
            422,
            "value",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": "3", "occurredAt": at, "request_id": "a"}),
            422,
            "value",
        ),
        (
            "/api/usage/record",
            json!({"metric": "images", "value": 1, "occurredAt": at, "request_id": "a"}),
            422,
            "metric",
        ),
        (
            "/api/usage/record",
            json!({"metric": "API CALL", "value": 1, "occurredAt": at, "request_id": "a"}),
            422,
            "metric",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 1, "occurredAt": at}),
            422,
            "request_id",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 1, "occurredAt": at, "request_id": ""}),
            422,
            "request_id",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 1, "occurredAt": future, "request_id": "a"}),
            409,
            "occurredAt",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 1, "occurredAt": "yesterday", "request_id": "a"}),
            422,
            "occurredAt",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 1, "request_id": "a"}),
            422,
            "occurredAt",
        ),
        (
            "/api/usage/record",
            json!({"value": 1, "occurredAt": at, "request_id": "a"}),
            422,
            "metric",
        ),
        (
            "/api/usage/record",
            json!({"metric": "api_call", "value": 1, "occurredAt": at, "request_id": "a", "x": 1}),
            422,
            "x",
        ),
        ("/api/quota/check", json!({}), 422, "metric"),
        ("/api/quota/check", json!({"metric": "nope"}), 422, "metric"),
        ("/api/quota/check", json!({"metric": 5}), 422, "metric"),
        (
            "/api/usage/seed",
            json!({"periodKey": "2026-13"}),
            422,
            "periodKey",
        ),
        (
            "/api/usage/seed",
            json!({"periodKey": 202611}),
            422,
            "periodKey",
        ),
        ("/api/usage/seed", json!({"metric": "nope"}), 422, "metric"),
    ];
    for (path, body, status, field) in cases {
        let r = m.app.post(path, Auth::ApiKey(&key), &body).await;
        let p = r.problem(status);
        assert_eq!(p["field"], field, "{path} {body}: {}", r.text);
        assert!(p["detail"].as_str().unwrap().contains(field), "{}", r.text);
    }
    for path in [
        "/api/usage/record",
        "/api/quota/check",
        "/api/usage/seed",
        "/api/admin/quotas.reset",
    ] {
        let auth = if path.contains("admin") {
            Auth::Operator
        } else {
            Auth::ApiKey(&key)
        };
        let r = m.app.post_raw(path, auth, "{\"metric\":").await;
        assert_eq!(r.problem(400)["field"], "body");
        let r = m
            .app
            .post_raw(
                path,
                auth,
                format!("{{\"x\":\"{}\"}}", "y".repeat(70 * 1024)),
            )
            .await;
        assert_eq!(r.problem(413)["field"], "body");
    }
    let r = m
        .app
        .post("/api/admin/quotas.reset", Auth::Operator, &json!({}))
        .await;
    assert_eq!(r.problem(422)["field"], "periodKey");
    let r = m
        .app
        .post(
            "/api/admin/quotas.reset",
            Auth::Operator,
            &json!({"periodKey": "26-11"}),
        )
        .await;
    assert_eq!(r.problem(422)["field"], "periodKey");
    let r = m
        .app
        .get("/api/me/entitlements.read?metric=nope", Auth::ApiKey(&key))
        .await;
    assert_eq!(r.problem(422)["field"], "metric");
    let r = m
        .app
        .get("/api/usage/history?periods=0", Auth::ApiKey(&key))
        .await;
    assert_eq!(r.problem(422)["field"], "periods");
    let r = m
        .app
        .get("/api/usage/history?periods=many", Auth::ApiKey(&key))
        .await;
    assert_eq!(r.problem(422)["field"], "periods");

    let (events, used): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_events), (SELECT COALESCE(sum(used), 0)::bigint FROM usage_counters)",
    )
    .fetch_one(&m.app.state.pg)
    .await
    .unwrap();
    assert_eq!((events, used), (0, 0), "nothing was written");
    assert_eq!(entitlements(&m.app, &key).await["used"], 0);
}

#[tokio::test]
async fn usage_endpoints_admit_exactly_their_principals() {
    let m = Metering::start(Options::default()).await;
    let key = m.org_with_key("org_a").await;
    let other_key = m.org_with_key("org_b").await;
    let user = m.app.user_token("user_a", "org_a");
    let period = Period::calendar_month(now()).key().to_string();
    let post = |path: &'static str, body: Value| (path, true, body);
    let routes = [
        post("/api/usage/seed", json!({"orgId": "org_a"})),
        post(
            "/api/usage/record",
            json!({"orgId": "org_a", "metric": "api_call", "value": 1, "occurredAt": now().to_rfc3339(), "request_id": "m1"}),
        ),
        post(
            "/api/quota/check",
            json!({"orgId": "org_a", "metric": "api_call"}),
        ),
        ("/api/usage/history?orgId=org_a", false, Value::Null),
    ];
    let app = &m.app;
    for (path, is_post, body) in &routes {
        let call = |auth| async move {
            if *is_post {
                app.post(path, auth, body).await
            } else {
                app.get(path, auth).await
            }
        };
        assert_eq!(call(Auth::None).await.status, 401, "{path}");
        assert_eq!(call(Auth::ApiKey(&key)).await.status, 200, "{path} own key");
        assert_eq!(
            call(Auth::Bearer(&user)).await.status,
            200,
            "{path} own user"
        );
        assert_eq!(call(Auth::Operator).await.status, 200, "{path} operator");
        assert_eq!(
            call(Auth::ApiKey(&other_key)).await.status,
            403,
            "{path} another org's key"
        );
    }
    let r = m
        .app
        .get("/api/me/entitlements.read", Auth::ApiKey(&key))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        m.app
            .get("/api/me/entitlements.read", Auth::Bearer(&user))
            .await
            .status,
        200
    );
    assert_eq!(
        m.app
            .get("/api/me/entitlements.read", Auth::Operator)
            .await
            .status,
        403
    );
    assert_eq!(
        m.app
            .get("/api/me/entitlements.read", Auth::None)
            .await
            .status,
        401
    );

    let reset = json!({"periodKey": period});
    assert_eq!(
        m.app
            .post("/api/admin/quotas.reset", Auth::ApiKey(&key), &reset)
            .await
            .status,
        403
    );
    assert_eq!(
        m.app
            .post("/api/admin/quotas.reset", Auth::Bearer(&user), &reset)
            .await
            .status,
        403
    );
    assert_eq!(
        m.app
            .post("/api/admin/quotas.reset", Auth::None, &reset)
            .await
            .status,
        401
    );
    assert_eq!(
        m.app
            .post("/api/admin/quotas.reset", Auth::Operator, &reset)
            .await
            .status,
        200
    );
    assert_eq!(
        m.app
            .post_raw("/api/quota/deny-envelope.example", Auth::None, "")
            .await
            .status,
        429
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_recording_the_same_ids_at_once_count_each_once() {
    let m = Metering::start(Options {
        limit: 100_000,
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_twice").await;
    let other = m.replica().start().await;
    // Each of 60 ids three times, spread over both replicas, all at once; and 10 ids sent with two different
    // values to the two replicas at once: one of each pair is recorded, the other refused.
    let mut calls = Vec::new();
    for i in 0..60u64 {
        for replica in [0, 1, 0] {
            calls.push((format!("same-{i}"), i % 5 + 1, replica));
        }
    }
    for i in 0..10u64 {
        calls.push((format!("clash-{i}"), 2, 0));
        calls.push((format!("clash-{i}"), 3, 1));
    }
    let responses = join_all(calls.iter().map(|(id, value, replica)| {
        let app = if *replica == 0 { &m.app } else { &other };
        let body = record(id, *value);
        let key = key.clone();
        async move {
            let r = app
                .post("/api/usage/record", Auth::ApiKey(&key), &body)
                .await;
            (id.clone(), *value, r)
        }
    }))
    .await;
    let mut bodies: std::collections::HashMap<String, String> = Default::default();
    let mut expected: i64 = 0;
    for (id, value, r) in &responses {
        if id.starts_with("clash-") && r.status == 409 {
            assert_eq!(r.problem(409)["field"], "request_id");
            continue;
        }
        assert_eq!(r.status, 200, "{id}: {}", r.text);
        match bodies.get(id) {
            Some(first) => assert_eq!(first, &r.text, "{id}: byte-identical bodies"),
            None => {
                bodies.insert(id.clone(), r.text.clone());
                expected += i64::try_from(*value).unwrap();
            }
        }
    }
    let clashes_accepted = responses
        .iter()
        .filter(|(id, _, r)| id.starts_with("clash-") && r.status == 200)
        .count();
    assert_eq!(clashes_accepted, 10, "one of each clashing pair");
    assert_eq!(bodies.len(), 70);
    for app in [&m.app, &other] {
        assert_eq!(entitlements(app, &key).await["used"], expected);
    }
    m.await_durable("org_twice", "api_call", expected, Duration::from_secs(5))
        .await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(events, 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_while_redis_is_down_counts_once_when_retried() {
    let mut redis = tollgate_e2e::redis_server::RedisServer::start().await;
    let m = Metering::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_retry").await;
    let r = m
        .app
        .post(
            "/api/usage/record",
            Auth::ApiKey(&key),
            &record("retry-0", 4),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    redis.stop();
    let batch = record_at_once(&m.app, &key, 1..=5).await;
    for r in &batch {
        r.problem(503);
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(stored, 1, "a failed batch stores none of its events");
    redis.restart().await;
    for _ in 0..2 {
        let retried = record_at_once(&m.app, &key, 0..=5).await;
        for r in &retried {
            assert_eq!(r.status, 200, "{}", r.text);
        }
    }
    assert_eq!(entitlements(&m.app, &key).await["used"], 24);
}
