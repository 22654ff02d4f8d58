//! Billing against the Stripe emulator: sign-up, trials, payment methods, webhooks exactly once, plan changes,
//! invoices, the portal, Stripe outages and several control planes.

use futures_util::future::join_all;
use serde_json::{Value, json};
use std::time::Duration;
use tollgate_control_plane::stripe::signature;
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::stripe::{StripeEmulator, WEBHOOK_SECRET};
use tollgate_e2e::{metric_value, wait};

pub(crate) const LONG: Duration = Duration::from_secs(30);

/// An emulator with the test plans' prices, and a metering set-up billing against it.
async fn setup(limit: u64) -> (StripeEmulator, Metering) {
    setup_with(limit, None).await
}

/// [`setup`], mirroring into `stigg` when given.
pub(crate) async fn setup_with(
    limit: u64,
    stigg: Option<&tollgate_e2e::stigg::FakeStigg>,
) -> (StripeEmulator, Metering) {
    setup_with_env(limit, stigg, &[]).await
}

/// [`setup_with`], with settings added to the control plane's.
pub(crate) async fn setup_with_env(
    limit: u64,
    stigg: Option<&tollgate_e2e::stigg::FakeStigg>,
    env: &[(&str, &str)],
) -> (StripeEmulator, Metering) {
    let stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let m = Metering::start(Options {
        limit,
        stripe: Some(&stripe),
        stigg,
        control_plane_env: tollgate_e2e::metering::owned_env(env),
        ..Options::default()
    })
    .await;
    (stripe, m)
}

/// The user who owns `org` (as `TestApp::create_org` makes it).
pub(crate) fn owner(m: &Metering, org: &str) -> String {
    m.app.user_token(&format!("user_{}", &org[4..]), org)
}

/// Org, customer and trial, as the org's owner would do it; returns the subscription id.
pub(crate) async fn sign_up(m: &Metering, org: &str) -> String {
    m.app.create_org(org).await;
    let token = owner(m, org);
    let r = m
        .app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&token),
            &json!({"email": format!("billing@{}.test", &org[4..])}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = m
        .app
        .post(
            "/api/stripe/subscription.create",
            Auth::Bearer(&token),
            &json!({"priceLookup": "plan_starter_m"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "trialing");
    r.json["subscriptionId"]
        .as_str()
        .expect("subscriptionId")
        .to_owned()
}

/// The stored subscription row, as JSON.
pub(crate) async fn stored(m: &Metering, subscription: &str) -> Value {
    sqlx::query_scalar(
        "SELECT to_jsonb(s) - 'updated_at' - 'stripe_updated_at' - 'created_at' FROM subscriptions s
          WHERE stripe_subscription_id = $1",
    )
    .bind(subscription)
    .fetch_optional(&m.app.state.pg)
    .await
    .expect("read subscriptions")
    .unwrap_or(Value::Null)
}

/// Waits until the stored subscription satisfies `done`, and the control plane's cached billing state of its
/// org has followed (PostgreSQL announces the change when it commits).
pub(crate) async fn await_stored(
    m: &Metering,
    subscription: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let row = wait::until(LONG, what, || async {
        let row = stored(m, subscription).await;
        done(&row).then_some(row)
    })
    .await;
    let org_id = row["org_id"].as_i64().expect("org_id");
    wait::until(LONG, "the cached billing state to follow", || async {
        let stored = tollgate_common::store::billing::load(&m.app.state.pg, org_id)
            .await
            .ok()?;
        match m.app.state.accounts.cached(org_id) {
            Some(cached) if cached.billing() != stored.billing => None,
            _ => Some(()),
        }
    })
    .await;
    row
}

pub(crate) async fn entitlements(m: &Metering, org: &str) -> Value {
    let r = m
        .app
        .get("/api/me/entitlements.read", Auth::Bearer(&owner(m, org)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

/// A webhook delivery of `event`, signed as Stripe signs at `timestamp` with `secret`.
async fn deliver(app: &TestApp, body: &str, header: Option<String>) -> tollgate_e2e::app::Resp {
    let mut req = app
        .http
        .post(app.url("/api/webhooks/stripe.receive"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(header) = header {
        req = req.header("stripe-signature", header);
    }
    app.send(req, Auth::None).await
}

fn rfc3339_now() -> String {
    use tollgate_common::clock::{Clock, SystemClock};
    SystemClock.now().to_rfc3339()
}

pub(crate) fn now() -> i64 {
    use tollgate_common::clock::{Clock, SystemClock};
    SystemClock.now().timestamp()
}

/// A Stripe event envelope about one object, as Stripe sends it.
pub(crate) fn event(id: &str, kind: &str, object_id: &str, object: &str) -> String {
    json!({
        "id": id, "object": "event", "api_version": "2026-09-30", "created": now(), "livemode": false,
        "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null}, "type": kind,
        "data": {"object": {"id": object_id, "object": object}},
    })
    .to_string()
}

/// Stored events with this id (the emulator's own webhooks arrive whenever it sends them: count by id).
async fn events_count(app: &TestApp, event_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(&app.state.pg)
        .await
        .expect("count events")
}

// === sign-up ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_starts_a_trial_with_trial_limits_and_the_proxy_meters_it() {
    let (_stripe, m) = setup(50).await;
    let proxy = m.proxy(&[]).await;
    let sub = sign_up(&m, "org_signup").await;
    let (_, key) = m.app.create_key("org_signup").await;

    let token = owner(&m, "org_signup");
    let seeded = m
        .app
        .post("/api/usage/seed", Auth::Bearer(&token), &json!({}))
        .await;
    assert_eq!(seeded.status, 200, "{}", seeded.text);
    assert_eq!(
        (
            seeded.json["used"].as_u64(),
            seeded.json["remaining"].as_u64()
        ),
        (Some(0), Some(50))
    );

    let e = entitlements(&m, "org_signup").await;
    assert_eq!(e["planCode"], "trial");
    assert_eq!(e["included"], 50);
    assert_eq!(e["periodKey"], seeded.json["periodKey"]);

    let row = stored(&m, &sub).await;
    assert_eq!(row["status"], "trialing");
    assert_eq!(
        row["plan_code"], "starter",
        "the plan the trial converts to"
    );
    assert!(row["trial_end"].is_string());

    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = http
            .get(format!("{}/v1/x", proxy.url()))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "50");
    }
    wait::until(LONG, "proxied usage to settle", || async {
        (entitlements(&m, "org_signup").await["used"] == 3).then_some(())
    })
    .await;
    // The emulator's customer.subscription.created reached the worker, which found nothing new to write.
    wait::until(LONG, "the created event to be applied", || async {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE event_type = 'customer.subscription.created' AND status = 'applied'",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
        (applied == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_ensures_make_one_customer_and_overlapping_ones_are_told_so() {
    let (stripe, m) = setup(50).await;
    m.app.create_org("org_twenty").await;
    let body = json!({"orgId": "org_twenty", "email": "billing@twenty.test"});
    let calls = (0..20).map(|_| {
        m.app
            .post("/api/stripe/customer.ensure", Auth::Operator, &body)
    });
    let answers = join_all(calls).await;
    // The first call claims the org and makes the customer; calls that overlap it are told so at once (409), and
    // none makes another.
    let mut ids: std::collections::BTreeSet<String> = answers
        .iter()
        .filter_map(|r| match r.status {
            200 => Some(r.json["stripeCustomerId"].as_str().unwrap().to_owned()),
            _ => {
                assert_eq!(r.problem(409)["field"], "orgId", "{}", r.text);
                None
            }
        })
        .collect();
    assert!(!ids.is_empty(), "one call made the customer");
    let after = m
        .app
        .post("/api/stripe/customer.ensure", Auth::Operator, &body)
        .await;
    assert_eq!(after.status, 200, "{}", after.text);
    ids.insert(after.json["stripeCustomerId"].as_str().unwrap().to_owned());
    assert_eq!(ids.len(), 1, "{ids:?}");
    let found = stripe
        .get("/v1/customers/search?query=metadata%5B%27orgId%27%5D%3A%27org_twenty%27")
        .await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found}");
    // And a second subscription.create while one is live returns it.
    let first = m
        .app
        .post(
            "/api/stripe/subscription.create",
            Auth::Operator,
            &json!({"orgId": "org_twenty", "priceLookup": "plan_growth_m"}),
        )
        .await;
    let again = m
        .app
        .post(
            "/api/stripe/subscription.create",
            Auth::Operator,
            &json!({"orgId": "org_twenty", "priceLookup": "plan_growth_m"}),
        )
        .await;
    assert_eq!(first.json["subscriptionId"], again.json["subscriptionId"]);
}

// === webhooks ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_delivered_ten_times_is_stored_and_applied_once() {
    let (stripe, m) = setup(50).await;
    let sub = sign_up(&m, "org_hooks").await;
    let body = event(
        "evt_tollgate_ten",
        "customer.subscription.updated",
        &sub,
        "subscription",
    );
    let deliveries = (0..10).map(|_| {
        let header = signature::sign(body.as_bytes(), WEBHOOK_SECRET, now());
        deliver(&m.app, &body, Some(header))
    });
    for r in join_all(deliveries).await {
        assert_eq!(r.status, 202, "{}", r.text);
        assert_eq!(
            r.json,
            json!({"queued": true, "eventId": "evt_tollgate_ten"})
        );
    }
    let row: (i64, String, i32) = wait::until(LONG, "the event to be applied", || async {
        let row: (i64, String, i32) = sqlx::query_as(
            "SELECT count(*) OVER (), status, attempts FROM stripe_events WHERE event_id = 'evt_tollgate_ten'",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (row.1 == "applied").then_some(row)
    })
    .await;
    assert_eq!((row.0, row.2), (1, 1), "stored once, processed once");

    // Refused deliveries store nothing.
    let fresh = event(
        "evt_tollgate_bad",
        "customer.subscription.updated",
        &sub,
        "subscription",
    );
    let good = signature::sign(fresh.as_bytes(), WEBHOOK_SECRET, now());
    let cases = [
        (fresh.replace("updated", "deleted"), Some(good.clone())),
        (
            fresh.clone(),
            Some(signature::sign(fresh.as_bytes(), "whsec_wrong", now())),
        ),
        (
            fresh.clone(),
            Some(signature::sign(
                fresh.as_bytes(),
                WEBHOOK_SECRET,
                now() - 301,
            )),
        ),
        (fresh.clone(), None),
        (fresh.clone(), Some("t=1,v1=zz".to_owned())),
    ];
    for (body, header) in cases {
        let r = deliver(&m.app, &body, header).await;
        assert_eq!(r.problem(400)["field"], "Stripe-Signature", "{}", r.text);
    }
    assert_eq!(
        events_count(&m.app, "evt_tollgate_bad").await,
        0,
        "nothing stored"
    );

    // Events out of order and replays all converge on what Stripe says now.
    stripe
        .post(
            &format!("/v1/subscriptions/{sub}"),
            &[("cancel_at_period_end", "true")],
        )
        .await;
    let mut bodies: Vec<String> = ["created", "updated", "trial_will_end", "updated"]
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            event(
                &format!("evt_tollgate_shuffled_{i}"),
                &format!("customer.subscription.{kind}"),
                &sub,
                "subscription",
            )
        })
        .collect();
    bodies.reverse();
    for body in &bodies {
        let r = deliver(
            &m.app,
            body,
            Some(signature::sign(body.as_bytes(), WEBHOOK_SECRET, now())),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let converged = await_stored(&m, &sub, "the cancellation to be mirrored", |row| {
        row["cancel_at_period_end"] == true
    })
    .await;
    let r = m
        .app
        .post(
            "/api/admin/webhooks.replay",
            Auth::Operator,
            &json!({"eventIds": ["evt_tollgate_ten", "evt_tollgate_shuffled_0", "evt_never_received"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"enqueued": 2, "unknown": ["evt_never_received"]})
    );
    wait::until(LONG, "the replayed events to be processed", || async {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE status NOT IN ('applied', 'ignored')",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
        (pending == 0).then_some(())
    })
    .await;
    assert_eq!(stored(&m, &sub).await, converged, "replay changed nothing");
    // 2.4 on demand says the same.
    let r = m
        .app
        .post(
            "/api/jobs/stripe.process",
            Auth::Operator,
            &json!({"eventId": "evt_tollgate_ten"}),
        )
        .await;
    assert_eq!(
        r.json,
        json!({"converged": true, "outcome": "applied"}),
        "{}",
        r.text
    );
    assert_eq!(stored(&m, &sub).await, converged);
    let r = m
        .app
        .post(
            "/api/jobs/stripe.process",
            Auth::Operator,
            &json!({"eventId": "evt_never_received"}),
        )
        .await;
    assert_eq!(r.problem(404)["field"], "eventId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_stored_fails_alone_among_concurrent_deliveries() {
    let (_stripe, m) = setup(50).await;
    // PostgreSQL's jsonb refuses \u0000: a body that is valid JSON, correctly signed, and cannot be stored.
    let poisoned = json!({
        "id": "evt_poisoned", "object": "event", "created": now(), "type": "customer.updated",
        "data": {"object": {"id": "cus_x", "object": "customer", "description": "\u{0}"}},
    })
    .to_string();
    let mut bodies: Vec<String> = (0..30)
        .map(|i| {
            event(
                &format!("evt_neighbour_{i}"),
                "charge.succeeded",
                &format!("ch_{i}"),
                "charge",
            )
        })
        .collect();
    bodies.insert(15, poisoned);
    let deliveries = bodies.iter().map(|body| async {
        let header = signature::sign(body.as_bytes(), WEBHOOK_SECRET, now());
        deliver(&m.app, body, Some(header)).await
    });
    let replies = join_all(deliveries).await;
    for (body, r) in bodies.iter().zip(&replies) {
        if body.contains("evt_poisoned") {
            assert_eq!(r.problem(400)["field"], "body", "{}", r.text);
        } else {
            assert_eq!(
                r.status, 202,
                "a neighbour of the bad event failed with it: {}",
                r.text
            );
        }
    }
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_events WHERE event_id LIKE 'evt_neighbour_%'",
    )
    .fetch_one(&m.app.state.pg)
    .await
    .unwrap();
    assert_eq!(stored, 30);
    assert_eq!(events_count(&m.app, "evt_poisoned").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_apply_each_event_of_a_backlog_once() {
    let (_stripe, m) = setup(50).await;
    let sub = sign_up(&m, "org_backlog").await;
    let other = m.replica().stripe(&_stripe).start().await;
    let deliveries = (0..60).map(|i| {
        let body = event(
            &format!("evt_backlog_{i}"),
            "customer.subscription.updated",
            &sub,
            "subscription",
        );
        let app = if i % 2 == 0 { &m.app } else { &other };
        async move {
            let header = signature::sign(body.as_bytes(), WEBHOOK_SECRET, now());
            deliver(app, &body, Some(header)).await
        }
    });
    for r in join_all(deliveries).await {
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let rows: Vec<(String, i32)> = wait::until(LONG, "the backlog to drain", || async {
        let rows: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT event_id, status, attempts FROM stripe_events WHERE event_id LIKE 'evt_backlog_%'",
        )
        .fetch_all(&m.app.state.pg)
        .await
        .unwrap();
        (rows.len() == 60 && rows.iter().all(|(_, s, _)| s == "applied"))
            .then(|| rows.into_iter().map(|(id, _, a)| (id, a)).collect())
    })
    .await;
    assert!(
        rows.iter().all(|(_, attempts)| *attempts == 1),
        "each processed once: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_about_one_subscription_costs_a_stripe_read_per_worker_not_per_event() {
    let (_stripe, m) = setup(50).await;
    let sub = sign_up(&m, "org_coalesce").await;
    let reads = || async {
        let metrics = m.app.get("/metrics", Auth::None).await.text;
        metric_value(
            &metrics,
            r#"tollgate_cp_stripe_requests_total{operation="subscriptions.retrieve",outcome="ok"}"#,
        )
    };
    // Sign-up's own events settled first, so what follows counts only the backlog's reads.
    wait::until(LONG, "sign-up's events to be processed", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE status NOT IN ('applied', 'ignored')",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
        (waiting == 0).then_some(())
    })
    .await;
    let before = reads().await;
    // A backlog as an outage leaves it: 40 updates of one subscription, all stored before any is claimed.
    let ids: Vec<String> = (0..40).map(|i| format!("evt_coalesce_{i}")).collect();
    let bodies: Vec<String> = ids
        .iter()
        .map(|id| event(id, "customer.subscription.updated", &sub, "subscription"))
        .collect();
    sqlx::query(
        "INSERT INTO stripe_events (event_id, event_type, payload, stripe_created, object_type, object_id)
         SELECT e, 'customer.subscription.updated', p::jsonb, now(), 'subscription', $3
           FROM UNNEST($1::text[], $2::text[]) AS u(e, p)",
    )
    .bind(&ids)
    .bind(&bodies)
    .bind(&sub)
    .execute(&m.app.state.pg)
    .await
    .unwrap();
    let attempts: Vec<i32> = wait::until(LONG, "the backlog to drain", || async {
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "SELECT status, attempts FROM stripe_events WHERE event_id LIKE 'evt_coalesce_%'",
        )
        .fetch_all(&m.app.state.pg)
        .await
        .unwrap();
        (rows.len() == 40 && rows.iter().all(|(s, _)| s == "applied"))
            .then(|| rows.into_iter().map(|(_, a)| a).collect())
    })
    .await;
    assert!(
        attempts.iter().all(|a| *a == 1),
        "each settled once: {attempts:?}"
    );
    let spent = reads().await - before;
    let workers = u64::try_from(m.app.state.config.stripe.as_ref().unwrap().workers).unwrap();
    assert!(
        (1..=workers).contains(&spent),
        "40 waiting events about one subscription took {spent} Stripe reads (at most one per worker: {workers})"
    );
}

// === trial to paid, plan changes ===

/// A signed-up org with a card, past its trial: active on starter. Returns the subscription id.
pub(crate) async fn paying(stripe: &StripeEmulator, m: &Metering, org: &str) -> String {
    let sub = sign_up(m, org).await;
    let token = owner(m, org);
    let r = m
        .app
        .post(
            "/api/payments/setup-intent.create",
            Auth::Bearer(&token),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json["clientSecret"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let card = stripe.card("4242424242424242").await;
    let r = m
        .app
        .post(
            "/api/payments/default-method.set",
            Auth::Bearer(&token),
            &json!({"paymentMethodId": card}),
        )
        .await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    stripe.advance(&sub).await;
    await_stored(m, &sub, "the trial's end to be mirrored", |row| {
        row["status"] == "active"
    })
    .await;
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_ends_into_the_paid_plan_without_anyone_calling_the_processor() {
    let (stripe, m) = setup(50).await;
    let proxy = m.proxy(&[]).await;
    let sub = sign_up(&m, "org_convert").await;
    let (_, key) = m.app.create_key("org_convert").await;
    let http = reqwest::Client::new();
    let get = || {
        http.get(format!("{}/v1/x", proxy.url()))
            .header("x-api-key", &key)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(get().await.unwrap().status(), 200);
    }
    wait::until(LONG, "trial usage to settle", || async {
        (entitlements(&m, "org_convert").await["used"] == 2).then_some(())
    })
    .await;
    let trial_period = entitlements(&m, "org_convert").await["periodStart"].clone();

    let token = owner(&m, "org_convert");
    let card = stripe.card("4242424242424242").await;
    let r = m
        .app
        .post(
            "/api/payments/default-method.set",
            Auth::Bearer(&token),
            &json!({"paymentMethodId": card}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    stripe.advance(&sub).await;
    let row = await_stored(&m, &sub, "the paid period", |row| row["status"] == "active").await;
    assert_eq!(row["plan_code"], "starter");

    let e = entitlements(&m, "org_convert").await;
    assert_eq!(
        (e["planCode"].as_str(), e["included"].as_u64()),
        (Some("starter"), Some(100_000))
    );
    assert_eq!(e["used"], 0, "the paid period starts at 0");
    assert_ne!(e["periodStart"], trial_period);
    wait::until(LONG, "the proxy to meter the paid plan", || async {
        let r = get().await.ok()?;
        (r.headers().get("ratelimit-limit")?.to_str().ok()? == "100000").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_subscription_returns_the_org_to_the_unsubscribed_plan() {
    let (stripe, m) = setup(50).await;
    let sub = paying(&stripe, &m, "org_cancel").await;
    assert_eq!(entitlements(&m, "org_cancel").await["planCode"], "starter");
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/subscriptions/{sub}", stripe.url))
        .bearer_auth(tollgate_e2e::stripe::SECRET_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    await_stored(&m, &sub, "the cancellation", |row| {
        row["status"] == "canceled"
    })
    .await;
    let e = entitlements(&m, "org_cancel").await;
    assert_eq!(
        (e["planCode"].as_str(), e["included"].as_u64()),
        (Some("trial"), Some(50)),
        "the unsubscribed plan"
    );
    // And the org may subscribe again: a new subscription, not the canceled one replayed.
    let again = m
        .app
        .post(
            "/api/stripe/subscription.create",
            Auth::Bearer(&owner(&m, "org_cancel")),
            &json!({"priceLookup": "plan_starter_m"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_ne!(again.json["subscriptionId"].as_str(), Some(sub.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_applies_at_once_as_previewed_and_a_downgrade_at_renewal() {
    let (stripe, m) = setup(50).await;
    let sub = paying(&stripe, &m, "org_change").await;
    let token = owner(&m, "org_change");
    for i in 0..5 {
        let r = m
            .app
            .post(
                "/api/usage/record",
                Auth::Bearer(&token),
                &json!({"metric": "api_call", "value": 1, "occurredAt": rfc3339_now(),
                        "request_id": format!("r{i}")}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Preview, then upgrade: Stripe invoices exactly the previewed amount, at once.
    let preview = m
        .app
        .post(
            "/api/plans/preview",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "growth"}),
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.text);
    assert_eq!(preview.json["proration"], true);
    assert_eq!(preview.json["currency"], "usd");
    let amount = preview.json["amount"].as_i64().unwrap();
    assert!(amount > 0 && amount < 4900 - 900 + 1, "{}", preview.text);
    let lines: i64 = preview.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(lines, amount);

    let r = m
        .app
        .post(
            "/api/plans/upgrade.now",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "growth"}),
        )
        .await;
    assert_eq!(
        r.json,
        json!({"planCode": "growth", "effective": "immediate"}),
        "{}",
        r.text
    );
    let invoices = m
        .app
        .get("/api/invoices.list?limit=1", Auth::Bearer(&token))
        .await;
    assert_eq!(invoices.status, 200, "{}", invoices.text);
    assert_eq!(
        invoices.json[0]["total"].as_i64(),
        Some(amount),
        "invoiced as previewed"
    );
    assert_eq!(invoices.json[0]["status"], "paid");
    let e = entitlements(&m, "org_change").await;
    assert_eq!(
        (
            e["planCode"].as_str(),
            e["included"].as_u64(),
            e["used"].as_u64()
        ),
        (Some("growth"), Some(1_000_000), Some(5))
    );

    // The same plan, and the wrong direction for each endpoint.
    let r = m
        .app
        .post(
            "/api/plans/upgrade.now",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "growth"}),
        )
        .await;
    assert_eq!(r.problem(409)["field"], "newPlanCode");
    let r = m
        .app
        .post(
            "/api/plans/upgrade.now",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "starter"}),
        )
        .await;
    assert_eq!(r.problem(422)["field"], "newPlanCode");
    let r = m
        .app
        .post(
            "/api/plans/downgrade.schedule",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "pro"}),
        )
        .await;
    assert_eq!(r.problem(422)["field"], "newPlanCode");

    // A downgrade: scheduled in Stripe for the period's end; nothing changes until the renewal.
    let period_end = stored(&m, &sub).await["current_period_end"].clone();
    let r = m
        .app
        .post(
            "/api/plans/downgrade.schedule",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "starter"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["pendingPlanCode"], "starter");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(r.json["effectiveAt"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339(period_end.as_str().unwrap()).unwrap()
    );
    let e = entitlements(&m, "org_change").await;
    assert_eq!(
        (
            e["planCode"].as_str(),
            e["pendingPlanCode"].as_str(),
            e["used"].as_u64()
        ),
        (Some("growth"), Some("starter"), Some(5))
    );

    stripe.advance(&sub).await;
    await_stored(&m, &sub, "the renewal to apply the downgrade", |row| {
        row["plan_code"] == "starter" && row["pending_plan_code"].is_null()
    })
    .await;
    let e = entitlements(&m, "org_change").await;
    assert_eq!(
        (
            e["planCode"].as_str(),
            e["included"].as_u64(),
            e["used"].as_u64()
        ),
        (Some("starter"), Some(100_000), Some(0))
    );
    assert!(e["pendingPlanCode"].is_null());

    // A later upgrade drops a pending downgrade.
    let r = m
        .app
        .post(
            "/api/plans/downgrade.schedule",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "starter"}),
        )
        .await;
    assert_eq!(r.problem(409)["field"], "newPlanCode", "already on starter");
    let r = m
        .app
        .post(
            "/api/plans/upgrade.now",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "growth"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = m
        .app
        .post(
            "/api/plans/downgrade.schedule",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "starter"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        entitlements(&m, "org_change").await["pendingPlanCode"],
        "starter"
    );
    let r = m
        .app
        .post(
            "/api/plans/upgrade.now",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "pro"}),
        )
        .await;
    assert_eq!(r.json["planCode"], "pro", "{}", r.text);
    let e = entitlements(&m, "org_change").await;
    assert_eq!(
        (e["planCode"].as_str(), e["pendingPlanCode"].as_str()),
        (Some("pro"), None),
        "the downgrade is dropped"
    );
    let row = stored(&m, &sub).await;
    assert!(
        row["pending_plan_code"].is_null() && row["pending_effective_at"].is_null(),
        "{row}"
    );
    // And it stays dropped at the next renewal.
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "the next renewal", |r| {
        r["current_period_start"] != row["current_period_start"]
    })
    .await;
    assert_eq!(entitlements(&m, "org_change").await["planCode"], "pro");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_page_newest_first_and_the_portal_returns_to_the_app() {
    let (stripe, m) = setup(50).await;
    let sub = paying(&stripe, &m, "org_invoices").await;
    stripe.advance(&sub).await;
    let token = owner(&m, "org_invoices");
    let all = m
        .app
        .get("/api/invoices.list?limit=100", Auth::Bearer(&token))
        .await;
    assert_eq!(all.status, 200, "{}", all.text);
    let all = all.json.as_array().unwrap().clone();
    assert!(all.len() >= 2, "{all:?}");
    let created: Vec<&str> = all.iter().map(|i| i["created"].as_str().unwrap()).collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "newest first");
    assert!(
        all.iter()
            .all(|i| i["url"].as_str().is_some_and(|u| u.starts_with("http")))
    );
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = if cursor.is_empty() {
            "/api/invoices.list?limit=1".to_owned()
        } else {
            format!("/api/invoices.list?limit=1&cursor={cursor}")
        };
        let page = m.app.get(&path, Auth::Bearer(&token)).await;
        let items = page.json.as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        cursor = items[0]["id"].as_str().unwrap().to_owned();
        paged.extend(items);
    }
    assert_eq!(
        paged, all,
        "paging by the last id visits every invoice once, in order"
    );
    for bad in ["limit=0", "limit=101", "cursor=sub_1"] {
        let r = m
            .app
            .get(&format!("/api/invoices.list?{bad}"), Auth::Bearer(&token))
            .await;
        r.problem(422);
    }
    let r = m
        .app
        .post(
            "/api/payments/portal.create",
            Auth::Bearer(&token),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let url = r.json["url"].as_str().unwrap();
    let page = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(
        page.contains(r#"href="https://app.tollgate.test/settings/billing""#),
        "the portal returns to TOLLGATE_BILLING_RETURN_URL: {page}"
    );
}

// === failures ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stripe_down_nothing_is_half_written_and_the_worker_resumes() {
    let (mut stripe, m) = setup(50).await;
    let sub = sign_up(&m, "org_down").await;
    m.app.create_org("org_down_b").await;
    stripe.stop();

    let r = m
        .app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Operator,
            &json!({"orgId": "org_down_b", "email": "b@down.test"}),
        )
        .await;
    r.problem(503);
    let customer: Option<String> =
        sqlx::query_scalar("SELECT stripe_customer_id FROM orgs WHERE clerk_org_id = 'org_down_b'")
            .fetch_one(&m.app.state.pg)
            .await
            .unwrap();
    assert_eq!(customer, None, "nothing half-written");
    let r = m
        .app
        .post(
            "/api/plans/preview",
            Auth::Operator,
            &json!({"orgId": "org_down", "newPlanCode": "growth"}),
        )
        .await;
    assert!(matches!(r.status, 502 | 503), "{}", r.text);

    // Intake needs no Stripe; processing fails, is recorded, and is retried until Stripe is back.
    let body = event(
        "evt_tollgate_outage",
        "customer.subscription.updated",
        &sub,
        "subscription",
    );
    let r = deliver(
        &m.app,
        &body,
        Some(signature::sign(body.as_bytes(), WEBHOOK_SECRET, now())),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait::until(LONG, "the failure to be recorded", || async {
        let (attempts, error): (i32, Option<String>) = sqlx::query_as(
            "SELECT attempts, last_error FROM stripe_events WHERE event_id = 'evt_tollgate_outage'",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (attempts >= 1 && error.is_some()).then_some(())
    })
    .await;
    stripe.restart().await;
    wait::until(
        Duration::from_secs(60),
        "the worker to catch up",
        || async {
            let status: String = sqlx::query_scalar(
                "SELECT status FROM stripe_events WHERE event_id = 'evt_tollgate_outage'",
            )
            .fetch_one(&m.app.state.pg)
            .await
            .ok()?;
            (status == "applied").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_refuses_bad_input_and_other_orgs_and_says_when_it_is_off() {
    let off = TestApp::start().await;
    off.create_org("org_off").await;
    let r = off
        .post(
            "/api/stripe/customer.ensure",
            Auth::Operator,
            &json!({"orgId": "org_off", "email": "a@off.test"}),
        )
        .await;
    assert_eq!(r.problem(503)["setting"], "STRIPE_SECRET_KEY", "{}", r.text);
    let r = deliver(&off, "{}", None).await;
    assert_eq!(r.problem(503)["setting"], "STRIPE_SECRET_KEY");

    let (_stripe, m) = setup(50).await;
    m.app.create_org("org_alpha").await;
    m.app.create_org("org_beta").await;
    let (_, key) = m.app.create_key("org_alpha").await;
    let alpha = owner(&m, "org_alpha");
    let routes = [
        (
            "/api/stripe/customer.ensure",
            json!({"orgId": "org_beta", "email": "a@beta.test"}),
        ),
        (
            "/api/stripe/subscription.create",
            json!({"orgId": "org_beta", "priceLookup": "plan_starter_m"}),
        ),
        (
            "/api/payments/setup-intent.create",
            json!({"orgId": "org_beta"}),
        ),
        (
            "/api/payments/default-method.set",
            json!({"orgId": "org_beta", "paymentMethodId": "pm_1"}),
        ),
        ("/api/payments/portal.create", json!({"orgId": "org_beta"})),
        (
            "/api/plans/preview",
            json!({"orgId": "org_beta", "newPlanCode": "growth"}),
        ),
        (
            "/api/plans/upgrade.now",
            json!({"orgId": "org_beta", "newPlanCode": "growth"}),
        ),
        (
            "/api/plans/downgrade.schedule",
            json!({"orgId": "org_beta", "newPlanCode": "starter"}),
        ),
    ];
    for (route, body) in &routes {
        let r = m.app.post(route, Auth::None, body).await;
        r.problem(401);
        let r = m.app.post(route, Auth::ApiKey(&key), body).await;
        r.problem(403);
        let r = m.app.post(route, Auth::Bearer(&alpha), body).await;
        assert_eq!(r.status, 403, "{route}: {}", r.text);
    }
    let r = m
        .app
        .get("/api/invoices.list?orgId=org_beta", Auth::Bearer(&alpha))
        .await;
    r.problem(403);
    for route in ["/api/jobs/stripe.process", "/api/admin/webhooks.replay"] {
        let r = m.app.post(route, Auth::Bearer(&alpha), &json!({})).await;
        r.problem(403);
    }

    let cases = [
        (
            "/api/stripe/customer.ensure",
            json!({"email": "not an email"}),
            422,
            "email",
        ),
        (
            "/api/stripe/subscription.create",
            json!({"priceLookup": "plan_gold_m"}),
            422,
            "priceLookup",
        ),
        (
            "/api/stripe/subscription.create",
            json!({"priceLookup": "plan_starter_m"}),
            409,
            "orgId",
        ),
        (
            "/api/payments/default-method.set",
            json!({"paymentMethodId": "card_1"}),
            422,
            "paymentMethodId",
        ),
        ("/api/payments/setup-intent.create", json!({}), 409, "orgId"),
        (
            "/api/plans/preview",
            json!({"newPlanCode": "enterprise"}),
            422,
            "newPlanCode",
        ),
        (
            "/api/plans/upgrade.now",
            json!({"newPlanCode": "trial"}),
            422,
            "newPlanCode",
        ),
        (
            "/api/plans/downgrade.schedule",
            json!({"newPlanCode": 7}),
            422,
            "newPlanCode",
        ),
    ];
    for (route, body, status, field) in cases {
        let r = m.app.post(route, Auth::Bearer(&alpha), &body).await;
        assert_eq!(r.problem(status)["field"], field, "{route}: {}", r.text);
    }
    // A payment method that does not exist, once there is a customer.
    let r = m
        .app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&alpha),
            &json!({"email": "a@alpha.test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = m
        .app
        .post(
            "/api/payments/default-method.set",
            Auth::Bearer(&alpha),
            &json!({"paymentMethodId": "pm_doesnotexist"}),
        )
        .await;
    assert_eq!(r.problem(404)["field"], "paymentMethodId", "{}", r.text);
    let r = m
        .app
        .post(
            "/api/plans/preview",
            Auth::Bearer(&alpha),
            &json!({"newPlanCode": "growth"}),
        )
        .await;
    assert_eq!(r.problem(409)["field"], "orgId", "no live subscription");
    let r = m
        .app
        .post(
            "/api/admin/webhooks.replay",
            Auth::Operator,
            &json!({"eventIds": ["evt_ok", "bad"]}),
        )
        .await;
    assert_eq!(r.problem(422)["field"], "eventIds[1]");
    let subscriptions: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(subscriptions, 0, "nothing written");
}

/// Issue 20, defect 12: only Stripe's `resource_missing` means an object is gone. A `STRIPE_API_BASE` with a wrong
/// path answers 404 to every read; the event must fail visibly and be retried, never be marked applied as if the
/// subscription had been deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_that_is_not_resource_missing_never_marks_an_event_applied() {
    let stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let m = Metering::start(Options {
        stripe: Some(&stripe),
        control_plane_env: vec![(
            "STRIPE_API_BASE".to_owned(),
            format!("{}/not-stripe", stripe.url),
        )],
        ..Options::default()
    })
    .await;
    let body = event(
        "evt_wrong_base",
        "customer.subscription.updated",
        "sub_wrong_base",
        "subscription",
    );
    let header = signature::sign(body.as_bytes(), WEBHOOK_SECRET, now());
    let r = deliver(&m.app, &body, Some(header)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait::until(LONG, "the worker's first attempt", || async {
        let attempts: i32 = sqlx::query_scalar(
            "SELECT attempts FROM stripe_events WHERE event_id = 'evt_wrong_base'",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (attempts >= 1).then_some(())
    })
    .await;
    let (status, last_error): (String, Option<String>) = sqlx::query_as(
        "SELECT status, last_error FROM stripe_events WHERE event_id = 'evt_wrong_base'",
    )
    .fetch_one(&m.app.state.pg)
    .await
    .unwrap();
    assert_ne!(status, "applied", "a bare 404 is not a deletion");
    assert_ne!(status, "ignored");
    assert!(last_error.is_some(), "the failure is visible");
    // 2.4 says the same: Stripe's "Unrecognized request URL" is a refusal passed on, not a convergence.
    let r = m
        .app
        .post(
            "/api/jobs/stripe.process",
            Auth::Operator,
            &json!({"eventId": "evt_wrong_base"}),
        )
        .await;
    assert_ne!(r.status, 200, "{}", r.text);
    let status: String =
        sqlx::query_scalar("SELECT status FROM stripe_events WHERE event_id = 'evt_wrong_base'")
            .fetch_one(&m.app.state.pg)
            .await
            .unwrap();
    assert_ne!(status, "applied");
}
