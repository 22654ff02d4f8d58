//! Issue 22: admission past a plan's included units, up to the bound (the plan's ceiling, or what the org's spend
//! cap buys at the overage price), exact with two proxies and 64 clients; spend caps set by the org; the bound in
//! entitlements and in the 429.

use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tollgate_e2e::app::Auth;
use tollgate_e2e::metering::{Metering, Options, count, hammer};
use tollgate_e2e::proxy::ProxyProcess;
use tollgate_e2e::stripe::StripeEmulator;
use tollgate_e2e::wait;

/// Included units of both test plans.
const INCLUDED: u64 = 300;
/// `capped`'s ceiling.
const CEILING: u64 = 500;
/// The overage price: half a cent per call.
const UNIT_DECIMAL: &str = "0.5";

const PLANS: &str = r#"
trial_days = 14
unsubscribed = "trial"

[plans.trial]
included = { api_call = 10, tokens = 100 }

[plans.capped]
price = "plan_starter_m"
included = { api_call = 300 }

[plans.capped.overage.api_call]
price = "api_call_overage"
ceiling = 500

[plans.payg]
price = "plan_growth_m"
included = { api_call = 300 }

[plans.payg.overage.api_call]
price = "api_call_overage"
"#;

async fn start(stripe: &StripeEmulator) -> Metering {
    start_with(stripe, &[]).await
}

/// The test plans against `stripe` (its overage price seeded), with `env` added to the control plane's settings.
async fn start_with(stripe: &StripeEmulator, env: &[(&str, &str)]) -> Metering {
    stripe
        .seed_overage_price("api_call_overage", UNIT_DECIMAL, "api_call_overage")
        .await;
    Metering::start(Options {
        plans: Some(PLANS.to_owned()),
        stripe: Some(stripe),
        control_plane_env: tollgate_e2e::metering::owned_env(env),
        ..Options::default()
    })
    .await
}

async fn entitlements(m: &Metering, key: &str) -> Value {
    let r = m
        .app
        .get("/api/me/entitlements.read", Auth::ApiKey(key))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

/// One request through `proxy`: its status, its body and its `RateLimit-Limit`.
async fn one(proxy: &ProxyProcess, key: &str) -> (u16, Value, Option<String>) {
    let r = reqwest::Client::new()
        .get(format!("{}/v1/items", proxy.url()))
        .header("x-api-key", key)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let limit = r
        .headers()
        .get("ratelimit-limit")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, limit)
}

/// Waits until `proxy` meters `key` against `bound`, answering from a lease or the 429.
/// Returns how many of the requests it sent were admitted.
async fn await_bound(proxy: &ProxyProcess, key: &str, bound: u64) -> u64 {
    let admitted = AtomicU64::new(0);
    wait::until(
        Duration::from_secs(20),
        &format!("the proxy to meter against {bound}"),
        || async {
            let (status, body, limit) = one(proxy, key).await;
            if status == 200 {
                admitted.fetch_add(1, Ordering::Relaxed);
            }
            let seen = limit.or_else(|| body["limit"].as_u64().map(|l| l.to_string()));
            (seen == Some(bound.to_string())).then_some(())
        },
    )
    .await;
    admitted.into_inner()
}

async fn set_budget(m: &Metering, org: &str, amount: u64) -> Value {
    let r = m
        .app
        .post(
            "/api/billing/budget.set",
            Auth::Operator,
            &json!({"orgId": org, "amount": amount, "currency": "usd"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_and_64_clients_never_admit_past_the_ceiling() {
    let stripe = StripeEmulator::start().await;
    let m = start(&stripe).await;
    let key = m.org_with_key("org_ceiling").await;
    m.subscribe("org_ceiling", "capped", None).await;
    let (a, b) = (m.proxy(&[]).await, m.proxy(&[]).await);

    let statuses = hammer(&[&a, &b], &key, "/v1/items", 64, 800).await;
    assert_eq!(
        count(&statuses, 200),
        500,
        "included and overage up to the ceiling, exactly"
    );
    assert_eq!(count(&statuses, 429), 300);
    assert_eq!(m.upstream.count_path_prefix("/v1/items"), 500);

    let (status, body, _) = one(&a, &key).await;
    assert_eq!(status, 429);
    assert_eq!(body["type"], "/problems/quota-exceeded", "{body}");
    assert_eq!(body["limit"], CEILING);
    m.await_durable("org_ceiling", "api_call", 500, Duration::from_secs(10))
        .await;

    let e = entitlements(&m, &key).await;
    assert_eq!(e["included"], INCLUDED, "{e}");
    assert_eq!(e["used"], 500);
    assert_eq!(e["remaining"], 0);
    assert_eq!(e["overageUsed"], 200);
    assert_eq!(e["bound"], CEILING);
    assert_eq!(e["boundBy"], "ceiling");
    // 200 units at half a cent: 100 cents, as Stripe's line computes it.
    assert_eq!(e["overageCost"], json!({"amount": 100, "currency": "usd"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_and_64_clients_never_admit_past_the_spend_cap() {
    let stripe = StripeEmulator::start().await;
    let m = start(&stripe).await;
    let key = m.org_with_key("org_cap").await;
    m.subscribe("org_cap", "payg", None).await;
    let (a, b) = (m.proxy(&[]).await, m.proxy(&[]).await);

    // Overage without a ceiling or a cap: no bound, so no RateLimit headers.
    let (status, _, limit) = one(&a, &key).await;
    assert_eq!((status, limit), (200, None));
    let e = entitlements(&m, &key).await;
    assert_eq!(
        (e["bound"].clone(), e["boundBy"].clone()),
        (Value::Null, Value::Null),
        "{e}"
    );

    // A dollar at half a cent a call buys 200 calls past the 300 included.
    let set = set_budget(&m, "org_cap", 100).await;
    assert_eq!(
        set,
        json!({"orgId": "org_cap", "amount": 100, "currency": "usd", "units": 200})
    );
    let mut admitted = 1 + await_bound(&a, &key, 500).await + await_bound(&b, &key, 500).await;
    let statuses = hammer(&[&a, &b], &key, "/v1/items", 64, 800).await;
    admitted += count(&statuses, 200) as u64;
    assert_eq!(admitted, 500, "exactly what the cap allows");
    let (status, body, _) = one(&b, &key).await;
    assert_eq!(status, 429);
    assert_eq!(body["type"], "/problems/spend-cap-reached", "{body}");
    assert_eq!(body["limit"], 500);
    let check = m
        .app
        .post(
            "/api/quota/check",
            Auth::ApiKey(&key),
            &json!({"metric": "api_call"}),
        )
        .await;
    assert_eq!(check.status, 429, "{}", check.text);
    assert_eq!(check.json["type"], "/problems/spend-cap-reached");
    let e = entitlements(&m, &key).await;
    assert_eq!(e["boundBy"], "budget", "{e}");
    assert_eq!(e["bound"], 500);
    assert_eq!(e["overageCost"], json!({"amount": 100, "currency": "usd"}));
    m.await_durable("org_cap", "api_call", 500, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_below_what_was_spent_stops_admission_at_once_and_clearing_it_lifts_the_bound() {
    let stripe = StripeEmulator::start().await;
    let m = start(&stripe).await;
    let key = m.org_with_key("org_lower").await;
    m.subscribe("org_lower", "payg", None).await;
    let (a, b) = (m.proxy(&[]).await, m.proxy(&[]).await);
    set_budget(&m, "org_lower", 100).await;
    let mut admitted = await_bound(&a, &key, 500).await + await_bound(&b, &key, 500).await;
    let statuses = hammer(&[&a, &b], &key, "/v1/items", 16, 450 - admitted as usize).await;
    admitted += count(&statuses, 200) as u64;
    assert_eq!(admitted, 450);

    // 50 cents buy 100 calls: a bound of 400, below the 450 used. Both proxies hand their leases back.
    let set = set_budget(&m, "org_lower", 50).await;
    assert_eq!(set["units"], 100);
    // A request that reached a proxy before the announcement did is admitted from its lease (counted); once the
    // proxy meters against the new bound, nothing more is.
    let late = await_bound(&a, &key, 400).await + await_bound(&b, &key, 400).await;
    let statuses = hammer(&[&a, &b], &key, "/v1/items", 64, 200).await;
    assert_eq!(count(&statuses, 429), 200, "every request is refused");
    m.await_durable(
        "org_lower",
        "api_call",
        450 + i64::try_from(late).expect("small"),
        Duration::from_secs(10),
    )
    .await;

    // A user of the org clears it: overage runs unbounded again.
    let token = m.app.user_token("user_lower", "org_lower");
    let r = m
        .app
        .post(
            "/api/billing/budget.clear",
            Auth::Bearer(&token),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"orgId": "org_lower", "cleared": true}));
    wait::until(
        Duration::from_secs(20),
        "both proxies to admit again",
        || async {
            let (sa, _, _) = one(&a, &key).await;
            let (sb, _, _) = one(&b, &key).await;
            (sa == 200 && sb == 200).then_some(())
        },
    )
    .await;
    let statuses = hammer(&[&a, &b], &key, "/v1/items", 16, 100).await;
    assert_eq!(count(&statuses, 200), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_calls_are_checked() {
    let stripe = StripeEmulator::start().await;
    let m = start(&stripe).await;
    let key = m.org_with_key("org_budget_checks").await;
    let cases = [
        (
            json!({"orgId": "org_budget_checks", "amount": 100, "currency": "eur"}),
            422,
            "currency",
        ),
        (
            json!({"orgId": "org_budget_checks", "amount": 100, "currency": "us"}),
            422,
            "currency",
        ),
        (
            json!({"orgId": "org_budget_checks", "amount": -1, "currency": "usd"}),
            422,
            "amount",
        ),
        (
            json!({"orgId": "org_budget_checks", "currency": "usd"}),
            422,
            "amount",
        ),
    ];
    for (body, status, field) in cases {
        let r = m
            .app
            .post("/api/billing/budget.set", Auth::Operator, &body)
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert!(r.text.contains(field), "{body}: names {field}: {}", r.text);
    }
    let r = m
        .app
        .post(
            "/api/billing/budget.set",
            Auth::ApiKey(&key),
            &json!({"amount": 100, "currency": "usd"}),
        )
        .await;
    assert_eq!(r.status, 403, "an API key cannot set the cap: {}", r.text);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM org_budgets")
        .fetch_one(&m.app.state.pg)
        .await
        .expect("count");
    assert_eq!(stored, 0, "nothing was written");
}

/// Gives `org` a Stripe customer in the emulator (meter events name it) and a live subscription on `plan`.
async fn subscribe_with_customer(m: &Metering, stripe: &StripeEmulator, org: &str, plan: &str) {
    let customer = stripe
        .post("/v1/customers", &[("email", &format!("{org}@example.com"))])
        .await;
    m.subscribe(org, plan, customer["id"].as_str()).await;
}

async fn reconciled(app: &tollgate_e2e::app::TestApp, org: &str, period: &str) -> Value {
    let r = app
        .get(
            &format!("/api/usage/reconcile?orgId={org}&periodKey={period}&metric=api_call"),
            Auth::Operator,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

async fn await_reconciled(app: &tollgate_e2e::app::TestApp, org: &str, period: &str, overage: u64) {
    wait::until(
        Duration::from_secs(30),
        &format!("Stripe's meter to show {overage}"),
        || async {
            let r = reconciled(app, org, period).await;
            (r["overage"] == overage && r["reported"] == overage && r["stripe"] == overage as f64)
                .then_some(())
        },
    )
    .await;
}

/// Issue 22: each unit of overage reaches Stripe's meter once — under load from two proxies, through 500s and
/// 429s, a control plane stopped in the middle and a repeated report — and never two calls in flight for one
/// customer and meter; reports are coalesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overage_reaches_stripes_meter_once_through_faults_and_restarts() {
    let stripe = StripeEmulator::start().await;
    let mut m = start_with(&stripe, &[("TOLLGATE_METER_REPORT_INTERVAL_MS", "200")]).await;
    let key = m.org_with_key("org_meter").await;
    subscribe_with_customer(&m, &stripe, "org_meter", "capped").await;
    // Every meter call takes 50 ms, so two calls for one customer would overlap; Stripe fails for a while.
    stripe
        .post("/_test/meter_delay", &[("delay_ms", "50")])
        .await;
    stripe
        .fault("POST", "/v1/billing/meter_events", "api_error", 3, 0)
        .await;
    stripe
        .fault("POST", "/v1/billing/meter_events", "rate_limit", 3, 0)
        .await;
    let (a, b) = (m.proxy(&[]).await, m.proxy(&[]).await);

    let statuses = hammer(&[&a, &b], &key, "/v1/items", 64, 400).await;
    assert_eq!(count(&statuses, 200), 400);
    let period = entitlements(&m, &key).await["periodKey"]
        .as_str()
        .expect("periodKey")
        .to_owned();
    // Some overage reported: the control plane stops, a new one takes over, more usage arrives.
    wait::until(Duration::from_secs(30), "a first report", || async {
        (reconciled(&m.app, "org_meter", &period).await["reported"].as_u64() > Some(0))
            .then_some(())
    })
    .await;
    m.app.stop();
    let replica = m
        .replica()
        .stripe(&stripe)
        .env("TOLLGATE_METER_REPORT_INTERVAL_MS", "200")
        .start()
        .await;
    let statuses = hammer(&[&a, &b], &key, "/v1/items", 64, 200).await;
    assert_eq!(count(&statuses, 200), 100, "up to the ceiling of 500");
    await_reconciled(&replica, "org_meter", &period, 200).await;

    // A report repeated as after a crash between Stripe's answer and our commit: the same identifier, which Stripe
    // refuses as a duplicate; nothing is counted twice.
    let repeated = sqlx::query(
        "UPDATE overage_reports
            SET reported = 0, pending = 200, pending_identifier = 'tg_' || org_id || '_api_call_'
                    || floor(extract(epoch FROM period_start))::bigint || '_200',
                status = 'pending', done_at = NULL, next_attempt_at = now()
          WHERE metric = 'api_call'",
    )
    .execute(&replica.state.pg)
    .await
    .expect("repeat")
    .rows_affected();
    assert_eq!(repeated, 1);
    await_reconciled(&replica, "org_meter", &period, 200).await;

    let concurrency = stripe.get("/_test/meter_concurrency").await;
    let most = concurrency["max_in_flight"]
        .as_object()
        .expect("map")
        .values()
        .filter_map(Value::as_u64)
        .max();
    assert_eq!(
        most,
        Some(1),
        "never two meter calls in flight: {concurrency}"
    );
    let hits: usize = {
        let faults = stripe.faults().await;
        faults
            .iter()
            .filter_map(|f| f["hits"].as_array().map(Vec::len))
            .sum()
    };
    assert_eq!(hits, 6, "every injected failure was met and retried");
    // Coalesced: a handful of calls for 600 requests (each report sums what came since the last).
    let metrics = replica.get("/metrics", Auth::None).await.text;
    let calls = tollgate_e2e::metric_value(
        &metrics,
        "tollgate_cp_stripe_requests_total{operation=\"billing.meter_events.create\",outcome=\"ok\"}",
    );
    assert!(
        calls <= 20,
        "{calls} meter event calls for one period's 600 requests"
    );
}

/// `TOLLGATE_STRIPE_METER_RATE` holds for every replica together: with a rate of 2 a second, two control planes
/// and six orgs owing overage at once, Stripe never sees more than 2 meter events in any second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_events_stay_within_the_configured_rate() {
    let stripe = StripeEmulator::start().await;
    let env = [
        ("TOLLGATE_METER_REPORT_INTERVAL_MS", "100"),
        ("TOLLGATE_STRIPE_METER_RATE", "2/1s"),
    ];
    let m = start_with(&stripe, &env).await;
    let second = m
        .replica()
        .stripe(&stripe)
        .env(env[0].0, env[0].1)
        .env(env[1].0, env[1].1)
        .start()
        .await;
    let proxy = m.proxy(&[]).await;
    let mut keys = Vec::new();
    for i in 0..6 {
        let org = format!("org_rate{i}");
        keys.push(m.org_with_key(&org).await);
        subscribe_with_customer(&m, &stripe, &org, "payg").await;
    }
    for key in &keys {
        let statuses = hammer(&[&proxy], key, "/v1/items", 8, 310).await;
        assert_eq!(count(&statuses, 200), 310);
    }
    let events = wait::until(Duration::from_secs(30), "six reports", || async {
        let events = stripe.get("/_test/meter_events").await["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (events.len() >= 6).then_some(events)
    })
    .await;
    let arrived: Vec<f64> = events
        .iter()
        .filter_map(|e| e["arrived"].as_f64())
        .collect();
    // Admitted on Redis's clock, seen on arrival: allow 200 ms of jitter between the two.
    for (i, t) in arrived.iter().enumerate() {
        let within = arrived[i..].iter().take_while(|u| **u < t + 0.8).count();
        assert!(
            within <= 2,
            "{within} meter events within 0.8 s of {t}: {arrived:?}"
        );
    }
    drop(second);
}
