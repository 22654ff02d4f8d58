//! One tenant cannot starve the others (issue 19): no pooled connection or lock is held across a Stripe call, a
//! second concurrent billing change of an org is 409 at once, per-org rate limits are exact across replicas and
//! fail open, and metering answers while billing is saturated and Stripe is down.
//!
//! "Holds no connection" is asserted on the pool itself: while a change (or the webhook worker) is still waiting for
//! Stripe, the connections in use fall to the one the billing-change listener keeps (`LISTEN`), which a change
//! holding its connection across Stripe's budget could never allow.

use crate::billing::{event, now};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_common::clock::{Clock, SystemClock};
use tollgate_control_plane::stripe::signature;
use tollgate_e2e::app::{Auth, Resp, TestApp};
use tollgate_e2e::redis_server::RedisServer;
use tollgate_e2e::stripe::{StripeEmulator, WEBHOOK_SECRET};
use tollgate_e2e::{metric_value, wait};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// The one connection the control plane keeps checked out for good: `jobs::caches`' `LISTEN`.
const LISTENER: u32 = 1;

/// POSTs an owned body (so closures can return the request's future).
async fn post(app: &TestApp, path: &str, auth: Auth<'_>, body: Value) -> Resp {
    app.post(path, auth, &body).await
}

fn owner(app: &TestApp, org: &str) -> String {
    app.user_token(&format!("user_{}", &org[4..]), org)
}

/// A control plane billing against `stripe`, with `env` added.
async fn billing_app(stripe: &StripeEmulator, env: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder().stripe(stripe);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let app = builder.start().await;
    app.receive_stripe_webhooks(stripe).await;
    app
}

/// Org, customer, trial and card, past the trial: active on starter. Returns the subscription id.
async fn paying(stripe: &StripeEmulator, app: &TestApp, org: &str) -> String {
    app.create_org(org).await;
    let token = owner(app, org);
    let r = app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&token),
            &json!({"email": format!("billing@{}.test", &org[4..])}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .post(
            "/api/stripe/subscription.create",
            Auth::Bearer(&token),
            &json!({"priceLookup": "plan_starter_m"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sub = r.json["subscriptionId"].as_str().unwrap().to_owned();
    let card = stripe.card("4242424242424242").await;
    let r = app
        .post(
            "/api/payments/default-method.set",
            Auth::Bearer(&token),
            &json!({"paymentMethodId": card}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    stripe.advance(&sub).await;
    wait::until(LONG, "the paid period to be mirrored", || async {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM subscriptions WHERE stripe_subscription_id = $1",
        )
        .bind(&sub)
        .fetch_optional(&app.state.pg)
        .await
        .ok()?;
        (status.as_deref() == Some("active")).then_some(())
    })
    .await;
    sub
}

/// `call` and how long it took.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = call.await;
    (out, started.elapsed())
}

/// Connections of the pool checked out right now.
fn in_use(app: &TestApp) -> u32 {
    let idle = u32::try_from(app.state.pg.num_idle()).unwrap_or(u32::MAX);
    app.state.pg.size().saturating_sub(idle)
}

/// Whether a billing change of `org` holds its claim.
async fn claim_held(app: &TestApp, org: &str) -> bool {
    claim_token(app, org).await.is_some()
}

/// The token of the claim a billing change of `org` holds: one change's, from its start to its end.
async fn claim_token(app: &TestApp, org: &str) -> Option<Uuid> {
    sqlx::query_scalar(
        "SELECT c.token FROM billing_claims c JOIN orgs o ON o.id = c.org_id
          WHERE o.clerk_org_id = $1 AND c.expires_at > now()",
    )
    .bind(org)
    .fetch_optional(&app.state.pg)
    .await
    .unwrap()
}

/// Waits until nothing is waiting in the webhook queue.
async fn events_settled(app: &TestApp) {
    wait::until(LONG, "the events so far to be processed", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE status NOT IN ('applied', 'ignored')",
        )
        .fetch_one(&app.state.pg)
        .await
        .ok()?;
        (waiting == 0).then_some(())
    })
    .await;
}

async fn deliver(app: &TestApp, body: &str) -> Resp {
    let req = app
        .http
        .post(app.url("/api/webhooks/stripe.receive"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            signature::sign(body.as_bytes(), WEBHOOK_SECRET, now()),
        )
        .body(body.to_owned());
    app.send(req, Auth::None).await
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics", Auth::None).await.text
}

/// Asserts the rate-limit envelope: the standard members, and `Retry-After` equal to `retryAfter`.
#[track_caller]
fn assert_rate_limited(r: &Resp, group: &str, limit: u64, window: u64) {
    let body = r.problem(429);
    assert_eq!(body["type"], "/problems/rate-limited", "{}", r.text);
    assert_eq!(body["title"], "Too many requests");
    assert_eq!(
        (
            &body["allow"],
            &body["remaining"],
            &body["group"],
            &body["limit"],
            &body["windowSeconds"]
        ),
        (
            &json!(false),
            &json!(0),
            &json!(group),
            &json!(limit),
            &json!(window)
        ),
        "{}",
        r.text
    );
    let retry_after = body["retryAfter"].as_u64().expect("retryAfter");
    assert!((1..=window).contains(&retry_after), "{}", r.text);
    assert_eq!(
        r.headers["retry-after"].to_str().unwrap(),
        retry_after.to_string()
    );
}

// === claims ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_billing_change_of_an_org_is_409_at_once_while_the_first_waits_for_stripe() {
    let mut stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    // A budget far longer than the test needs: the first change is still retrying when Stripe comes back.
    let app = billing_app(&stripe, &[("TOLLGATE_STRIPE_BUDGET_MS", "60000")]).await;
    let org = "org_claimed";
    paying(&stripe, &app, org).await;
    events_settled(&app).await;
    let token = owner(&app, org);
    let change = |path: &'static str, plan: &'static str| {
        post(
            &app,
            path,
            Auth::Bearer(&token),
            json!({"newPlanCode": plan}),
        )
    };

    stripe.stop();
    let first = change("/api/plans/upgrade.now", "growth");
    let meanwhile = async {
        wait::until(LONG, "the first change to claim the org", || async {
            claim_held(&app, org).await.then_some(())
        })
        .await;
        for (path, plan) in [
            ("/api/plans/upgrade.now", "pro"),
            ("/api/plans/downgrade.schedule", "starter"),
        ] {
            let r = change(path, plan).await;
            let body = r.problem(409);
            assert_eq!(body["field"], "orgId", "{}", r.text);
            assert!(
                body["detail"].as_str().unwrap().contains("in progress"),
                "{}",
                r.text
            );
        }
        let r = app
            .post(
                "/api/payments/default-method.set",
                Auth::Bearer(&token),
                &json!({"paymentMethodId": "pm_card_visa"}),
            )
            .await;
        assert_eq!(r.problem(409)["field"], "orgId", "{}", r.text);
        // Reads of what exists do not wait either: the org's customer is answered from the database.
        let r = app
            .post(
                "/api/stripe/customer.ensure",
                Auth::Bearer(&token),
                &json!({"email": "billing@claimed.test"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            claim_held(&app, org).await,
            "the refusals came while the first change was still waiting for Stripe"
        );
        let busy = metric_value(
            &metrics(&app).await,
            r#"tollgate_cp_billing_claims_total{outcome="busy"}"#,
        );
        assert_eq!(busy, 3);
        stripe.restart().await;
    };
    let (first, ()) = tokio::join!(first, meanwhile);
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["planCode"], "growth");
    assert!(!claim_held(&app, org).await, "released when it ended");
    let r = change("/api/plans/downgrade.schedule", "starter").await;
    assert_eq!(r.status, 200, "the next change goes ahead: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_replica_that_died_expires_and_is_taken_over() {
    let stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let app = billing_app(&stripe, &[]).await;
    let org = "org_orphan";
    paying(&stripe, &app, org).await;
    let token = owner(&app, org);
    // A replica claimed the org and died (nothing will release it).
    sqlx::query(
        "INSERT INTO billing_claims (org_id, token, operation, expires_at)
         SELECT id, gen_random_uuid(), 'upgrade.now', now() + interval '1 hour' FROM orgs WHERE clerk_org_id = $1",
    )
    .bind(org)
    .execute(&app.state.pg)
    .await
    .unwrap();
    let upgrade = || {
        post(
            &app,
            "/api/plans/upgrade.now",
            Auth::Bearer(&token),
            json!({"newPlanCode": "growth"}),
        )
    };
    assert_eq!(upgrade().await.problem(409)["field"], "orgId");
    // Its expiry (the change timeout and a margin) passes.
    sqlx::query("UPDATE billing_claims SET claimed_at = now() - interval '2 hours', expires_at = now() - interval '1 second'")
        .execute(&app.state.pg)
        .await
        .unwrap();
    let r = upgrade().await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        metric_value(
            &metrics(&app).await,
            r#"tollgate_cp_billing_claims_total{outcome="taken_over"}"#
        ),
        1
    );
    assert!(!claim_held(&app, org).await);
}

// === starvation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_flooding_plan_changes_while_stripe_is_down_starves_no_other_org() {
    let mut stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let app = billing_app(
        &stripe,
        &[
            ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "4"),
            // Longer than the test: the flood's change is still waiting for Stripe when the checks are done.
            ("TOLLGATE_STRIPE_BUDGET_MS", "60000"),
            ("TOLLGATE_BILLING_CHANGE_TIMEOUT_MS", "120000"),
            // Claims and connections are under test here; the rate limit has its own tests.
            ("TOLLGATE_CP_BILLING_RATE_LIMIT", "off"),
        ],
    )
    .await;
    let sub = paying(&stripe, &app, "org_flood").await;
    app.create_org("org_quiet").await;
    let (_, key) = app.create_key("org_quiet").await;
    events_settled(&app).await;
    let token = owner(&app, "org_flood");
    let wave = || {
        join_all((0..32).map(|_| {
            post(
                &app,
                "/api/plans/upgrade.now",
                Auth::Bearer(&token),
                json!({"newPlanCode": "growth"}),
            )
        }))
    };

    stripe.stop();
    // A backlog for the workers while Stripe is down: updates of the flooding org's subscription.
    for i in 0..8 {
        let body = event(
            &format!("evt_flood_{i}"),
            "customer.subscription.updated",
            &sub,
            "subscription",
        );
        assert_eq!(deliver(&app, &body).await.status, 202);
    }
    let first = wave();
    let meanwhile = async {
        // The change that claims the org is waiting for the stopped Stripe from here on, for the whole budget.
        let holder = wait::until(LONG, "a change of the flood to claim the org", || {
            claim_token(&app, "org_flood")
        })
        .await;
        // More waves of the flood, and beside them the other org's metering and webhook intake.
        let floods = join_all((0..3).map(|_| wave()));
        let records = join_all((0..20).map(|i| {
            timed(post(
                &app,
                "/api/usage/record",
                Auth::ApiKey(&key),
                json!({"metric": "api_call", "value": 1, "occurredAt": SystemClock.now().to_rfc3339(),
                       "request_id": format!("quiet-{i}")}),
            ))
        }));
        let checks = join_all((0..20).map(|_| {
            timed(post(
                &app,
                "/api/quota/check",
                Auth::ApiKey(&key),
                json!({"metric": "api_call"}),
            ))
        }));
        let target = &app;
        let intake = join_all((0..5).map(|i| async move {
            let body = event(
                &format!("evt_quiet_{i}"),
                "charge.succeeded",
                &format!("ch_quiet_{i}"),
                "charge",
            );
            deliver(target, &body).await
        }));
        let (floods, records, checks, intake) = tokio::join!(floods, records, checks, intake);
        let slowest = records.iter().chain(&checks).map(|(_, took)| *took).max();
        eprintln!("the quiet org's slowest record or check beside the flood: {slowest:?}");
        for (r, _) in records.iter().chain(&checks) {
            assert_eq!(r.status, 200, "the quiet org was refused: {}", r.text);
        }
        // Every one of the quiet org's calls has ended, and the change that claimed the org before they began
        // still holds its claim: it is still waiting for Stripe, so none of them waited for it (for a connection
        // or a lock it held, they would have ended only after it — or with the pool's 503, refused above).
        assert_eq!(
            claim_token(&app, "org_flood").await,
            Some(holder),
            "the quiet org's calls ended while the flood's change was still waiting for Stripe"
        );
        for r in &intake {
            assert_eq!(r.status, 202, "{}", r.text);
        }
        for r in floods.iter().flatten() {
            assert_eq!(r.problem(409)["field"], "orgId", "{}", r.text);
        }
        // The change holding the claim, and the workers with their backlog, are all waiting for Stripe: none of
        // them holds a connection.
        wait::until(
            LONG,
            "the pool to hold only the listener's connection",
            || async {
                if in_use(&app) > LISTENER {
                    return None;
                }
                let leased: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM stripe_events WHERE lease_until > now() AND event_id LIKE 'evt_flood_%'",
                )
                .fetch_one(&app.state.pg)
                .await
                .unwrap();
                assert!(
                    claim_held(&app, "org_flood").await && leased > 0,
                    "the change and the workers were still waiting for Stripe"
                );
                Some(())
            },
        )
        .await;
        let m = metrics(&app).await;
        for route in ["/api/usage/record", "/api/quota/check"] {
            for (status, count) in [("200", 20), ("500", 0), ("503", 0)] {
                let series = format!(
                    r#"tollgate_cp_http_requests_total{{method="POST",route="{route}",status="{status}"}}"#
                );
                assert_eq!(metric_value(&m, &series), count, "{series}");
            }
        }
        stripe.restart().await;
    };
    let (first, ()) = tokio::join!(first, meanwhile);
    let changed: Vec<&Resp> = first.iter().filter(|r| r.status == 200).collect();
    assert_eq!(changed.len(), 1, "one change of the first wave went ahead");
    assert_eq!(changed[0].json["planCode"], "growth");
    for r in first.iter().filter(|r| r.status != 200) {
        // Refused at once by the claim (or, had one come after the change, as already on growth).
        r.problem(409);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_worker_holds_no_connection_while_it_reads_stripe() {
    let mut stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let app = billing_app(
        &stripe,
        &[
            ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "2"),
            ("TOLLGATE_STRIPE_BUDGET_MS", "5000"),
        ],
    )
    .await;
    stripe.stop();
    // A backlog of events about twenty subscriptions, received while Stripe is down.
    let ids: Vec<String> = (0..20).map(|i| format!("evt_backlog_{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let body = event(
            id,
            "customer.subscription.updated",
            &format!("sub_backlog{i}"),
            "subscription",
        );
        assert_eq!(deliver(&app, &body).await.status, 202);
    }
    wait::until(
        LONG,
        "the workers to read Stripe holding no connection",
        || async {
            if in_use(&app) > LISTENER {
                return None;
            }
            let leased: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stripe_events WHERE lease_until > now() AND status = 'pending'",
            )
            .fetch_one(&app.state.pg)
            .await
            .ok()?;
            (leased > 0).then_some(())
        },
    )
    .await;
    // Other queries keep getting the one connection the listener leaves.
    let creates = join_all((0..20).map(|i| {
        post(
            &app,
            "/api/orgs.create",
            Auth::Operator,
            json!({"orgId": format!("org_busy{i}"), "name": "Busy", "ownerUserId": "user_busy"}),
        )
    }))
    .await;
    for r in &creates {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // 2.4 on an event a worker holds does not wait for the worker: it takes the event over while the worker's own
    // attempt is in progress, and answers 503 after its own Stripe budget. The event: one a worker claims after
    // the leases seen now, so its attempt (a Stripe read retried through most of the budget) has only just begun.
    let seen: Vec<Uuid> =
        sqlx::query_scalar("SELECT lease_token FROM stripe_events WHERE lease_token IS NOT NULL")
            .fetch_all(&app.state.pg)
            .await
            .unwrap();
    let (leased, attempts): (String, i32) =
        wait::until(LONG, "a worker to claim an event afresh", || async {
            sqlx::query_as(
                "SELECT event_id, attempts FROM stripe_events
                  WHERE lease_until > now() AND lease_token <> ALL($1) LIMIT 1",
            )
            .bind(&seen)
            .fetch_optional(&app.state.pg)
            .await
            .ok()?
        })
        .await;
    let started = Instant::now();
    let r = app
        .post(
            "/api/jobs/stripe.process",
            Auth::Operator,
            &json!({"eventId": leased}),
        )
        .await;
    let took = started.elapsed();
    eprintln!("2.4 with Stripe down and the event held by a worker answered in {took:?}");
    r.problem(503);
    // Only 2.4's attempt is recorded: the worker's attempt, under way when 2.4 came, marked nothing, because 2.4
    // had taken its lease over. A 2.4 that queued behind the worker (the old row lock, or waiting out the lease)
    // would find the worker's failed attempt recorded before its own: two attempts.
    let recorded: i32 =
        sqlx::query_scalar("SELECT attempts FROM stripe_events WHERE event_id = $1")
            .bind(&leased)
            .fetch_one(&app.state.pg)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        attempts + 1,
        "2.4 took {leased} over while its worker's attempt was still in progress"
    );
    stripe.restart().await;
    wait::until(LONG, "the backlog to be processed once Stripe is back", || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE event_id LIKE 'evt_backlog_%' AND status = 'ignored'",
        )
        .fetch_one(&app.state.pg)
        .await
        .ok()?;
        (done == 20).then_some(())
    })
    .await;
}

// === rate limits ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_past_the_limit_are_429_per_org_and_the_operator_is_not_limited() {
    let app = TestApp::builder()
        .env("TOLLGATE_CP_KEYS_RATE_LIMIT", "5/1h")
        .start()
        .await;
    app.create_org("org_keys").await;
    app.create_org("org_keys_other").await;
    let token = owner(&app, "org_keys");
    let create = |token: &str| {
        let token = token.to_owned();
        let app = &app;
        async move {
            post(
                app,
                "/api/keys.create",
                Auth::Bearer(&token),
                json!({"name": "limited"}),
            )
            .await
        }
    };
    let mut key_ids = Vec::new();
    for _ in 0..5 {
        let r = create(&token).await;
        assert_eq!(r.status, 200, "{}", r.text);
        key_ids.push(r.json["keyId"].as_str().unwrap().to_owned());
    }
    assert_rate_limited(&create(&token).await, "keys", 5, 3600);
    // Revocation is in the same group.
    let r = app
        .post(
            "/api/keys.revoke",
            Auth::Bearer(&token),
            &json!({"keyId": key_ids[0]}),
        )
        .await;
    assert_rate_limited(&r, "keys", 5, 3600);
    // Another org has its own limit; the operator has none.
    let r = create(&owner(&app, "org_keys_other")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for _ in 0..8 {
        let r = app
            .post(
                "/api/keys.create",
                Auth::Operator,
                &json!({"orgId": "org_keys", "name": "operator"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let m = metrics(&app).await;
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_cp_rate_limit_decisions_total{decision="limited",group="keys"}"#
        ),
        2
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_cp_rate_limit_decisions_total{decision="admitted",group="keys"}"#
        ),
        6
    );
    // The document says so.
    let doc = app.get("/api/openapi.json", Auth::None).await.json;
    for (path, _) in tollgate_control_plane::limits::ROUTES {
        let operations = doc["paths"][path].as_object().expect(path);
        assert!(
            operations
                .values()
                .all(|op| op["responses"]["429"].is_object()),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_share_an_orgs_limit_exactly() {
    let limit = "10/1h";
    let app = TestApp::builder()
        .env("TOLLGATE_CP_KEYS_RATE_LIMIT", limit)
        .start()
        .await;
    let other = TestApp::builder()
        .database(Arc::clone(&app.db))
        .env("TOLLGATE_REDIS_NAMESPACE", app.namespace())
        .env("TOLLGATE_CP_KEYS_RATE_LIMIT", limit)
        .start()
        .await;
    app.create_org("org_shared").await;
    let token = owner(&app, "org_shared");
    let calls = (0..40).map(|i| {
        let replica = if i % 2 == 0 { &app } else { &other };
        post(
            replica,
            "/api/keys.create",
            Auth::Bearer(&token),
            json!({"name": format!("key {i}")}),
        )
    });
    let answers = join_all(calls).await;
    let admitted = answers.iter().filter(|r| r.status == 200).count();
    for r in answers.iter().filter(|r| r.status != 200) {
        assert_rate_limited(r, "keys", 10, 3600);
    }
    assert_eq!(admitted, 10, "exactly the limit, across both replicas");
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys k JOIN orgs o ON o.id = k.org_id WHERE o.clerk_org_id = 'org_shared'",
    )
    .fetch_one(&app.state.pg)
    .await
    .unwrap();
    assert_eq!(stored, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_calls_past_the_limit_are_429_before_stripe_is_called() {
    let stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let app = billing_app(&stripe, &[("TOLLGATE_CP_BILLING_RATE_LIMIT", "3/60s")]).await;
    app.create_org("org_billing_limit").await;
    let token = owner(&app, "org_billing_limit");
    let r = app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&token),
            &json!({"email": "billing@limit.test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let intents = || {
        post(
            &app,
            "/api/payments/setup-intent.create",
            Auth::Bearer(&token),
            json!({}),
        )
    };
    for _ in 0..2 {
        let r = intents().await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let stripe_calls = |m: &str| {
        metric_value(
            m,
            r#"tollgate_cp_stripe_requests_total{operation="setup_intents.create",outcome="ok"}"#,
        )
    };
    let before = stripe_calls(&metrics(&app).await);
    for path in [
        "/api/payments/setup-intent.create",
        "/api/payments/portal.create",
    ] {
        let r = app.post(path, Auth::Bearer(&token), &json!({})).await;
        assert_rate_limited(&r, "billing", 3, 60);
    }
    assert_eq!(
        stripe_calls(&metrics(&app).await),
        before,
        "Stripe was not called"
    );
    let r = app
        .post(
            "/api/payments/setup-intent.create",
            Auth::Operator,
            &json!({"orgId": "org_billing_limit"}),
        )
        .await;
    assert_eq!(r.status, 200, "the operator is not limited: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_limiter_fails_open_and_counts_it() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::builder()
        .redis_url(&redis.url())
        .env("TOLLGATE_CP_KEYS_RATE_LIMIT", "1/1h")
        .start()
        .await;
    app.create_org("org_open").await;
    let token = owner(&app, "org_open");
    let create = || {
        post(
            &app,
            "/api/keys.create",
            Auth::Bearer(&token),
            json!({"name": "open"}),
        )
    };
    assert_eq!(create().await.status, 200);
    assert_rate_limited(&create().await, "keys", 1, 3600);
    redis.stop();
    for _ in 0..3 {
        let r = create().await;
        assert_eq!(
            r.status, 200,
            "a Redis outage must not block key changes: {}",
            r.text
        );
    }
    assert_eq!(
        metric_value(
            &metrics(&app).await,
            r#"tollgate_cp_rate_limit_decisions_total{decision="failed_open",group="keys"}"#
        ),
        3
    );
    redis.restart().await;
    // Back: a fresh Redis has no log, so the limit starts over, exactly.
    wait::until(LONG, "the limiter to reach Redis again", || async {
        let r = create().await;
        (r.status == 429).then_some(())
    })
    .await;
}
