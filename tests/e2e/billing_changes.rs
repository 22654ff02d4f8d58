//! Issue 20, billing changes against the emulator: one idempotency key per intent (defect 5), schedules
//! (defect 7), the preview against the invoice the upgrade creates (defect 8), 3-D Secure (defect 6) and the
//! portal (defect 10).

use crate::billing::{
    LONG, await_stored, entitlements, owner, paying, setup_with, setup_with_env, sign_up, stored,
};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate_e2e::app::{Auth, Resp, TestApp};
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::stripe::StripeEmulator;
use tollgate_e2e::wait;

/// POSTs `body` as `auth` with an `Idempotency-Key`.
async fn post_keyed(app: &TestApp, path: &str, auth: Auth<'_>, key: &str, body: &Value) -> Resp {
    let req = app
        .http
        .post(app.url(path))
        .header("idempotency-key", key)
        .json(body);
    app.send(req, auth).await
}

/// The org's Stripe customer id, as stored.
async fn customer_of(m: &Metering, org: &str) -> String {
    sqlx::query_scalar("SELECT stripe_customer_id FROM orgs WHERE clerk_org_id = $1")
        .bind(org)
        .fetch_one(&m.app.state.pg)
        .await
        .expect("read orgs")
}

/// The org's stored default payment method.
async fn stored_default_pm(m: &Metering, org: &str) -> Option<String> {
    sqlx::query_scalar("SELECT stripe_default_payment_method FROM orgs WHERE clerk_org_id = $1")
        .bind(org)
        .fetch_one(&m.app.state.pg)
        .await
        .expect("read orgs")
}

/// The customer's SetupIntents in Stripe.
async fn setup_intents(stripe: &StripeEmulator, customer: &str) -> usize {
    stripe
        .get(&format!("/v1/setup_intents?customer={customer}&limit=100"))
        .await["data"]
        .as_array()
        .map_or(0, Vec::len)
}

// === defect 5: one idempotency key per intent ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_method_a_b_a_leaves_stripe_and_the_database_on_a() {
    let (stripe, m) = setup_with(50, None).await;
    sign_up(&m, "org_aba").await;
    let token = owner(&m, "org_aba");
    let a = stripe.card("4242424242424242").await;
    let b = stripe.card("5555555555554444").await;
    for pm in [&a, &b, &a] {
        let r = m
            .app
            .post(
                "/api/payments/default-method.set",
                Auth::Bearer(&token),
                &json!({"paymentMethodId": pm}),
            )
            .await;
        assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    }
    let customer = customer_of(&m, "org_aba").await;
    let in_stripe = stripe.get(&format!("/v1/customers/{customer}")).await;
    assert_eq!(
        in_stripe["invoice_settings"]["default_payment_method"], a,
        "Stripe ends on A: {in_stripe}"
    );
    assert_eq!(
        stored_default_pm(&m, "org_aba").await.as_deref(),
        Some(a.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_replays_its_request_and_refuses_another() {
    let (stripe, m) = setup_with(50, None).await;
    sign_up(&m, "org_idem").await;
    let token = owner(&m, "org_idem");
    let customer = customer_of(&m, "org_idem").await;
    let before = setup_intents(&stripe, &customer).await;

    let first = post_keyed(
        &m.app,
        "/api/payments/setup-intent.create",
        Auth::Bearer(&token),
        "intent-1",
        &json!({}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = post_keyed(
        &m.app,
        "/api/payments/setup-intent.create",
        Auth::Bearer(&token),
        "intent-1",
        &json!({}),
    )
    .await;
    assert_eq!(
        (again.status, &again.json),
        (200, &first.json),
        "the stored answer"
    );
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(
        setup_intents(&stripe, &customer).await,
        before + 1,
        "one SetupIntent for one intent"
    );

    // The same key with another body (or path) is another request: 409 naming the header.
    let other = post_keyed(
        &m.app,
        "/api/payments/setup-intent.create",
        Auth::Bearer(&token),
        "intent-1",
        &json!({"orgId": "org_idem"}),
    )
    .await;
    assert_eq!(other.problem(409)["field"], "Idempotency-Key");
    let other = post_keyed(
        &m.app,
        "/api/payments/portal.create",
        Auth::Bearer(&token),
        "intent-1",
        &json!({}),
    )
    .await;
    assert_eq!(other.problem(409)["field"], "Idempotency-Key");

    // After 24 h the key is forgotten (Stripe's window): the same key is a new intent, and the purge deletes it.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&m.app.state.pg)
        .await
        .unwrap();
    let later = post_keyed(
        &m.app,
        "/api/payments/portal.create",
        Auth::Bearer(&token),
        "intent-1",
        &json!({}),
    )
    .await;
    assert_eq!(later.status, 200, "{}", later.text);
    assert!(later.headers.get("idempotent-replayed").is_none());
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&m.app.state.pg)
        .await
        .unwrap();
    use tollgate_common::clock::Clock;
    let table = tollgate_control_plane::services::retention::Table::IdempotencyKeys;
    let purger = &m.app.state.purger;
    let deleted = purger
        .purge_batch(
            table,
            table.cutoff(purger.settings(), tollgate_common::clock::SystemClock.now()),
            100,
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1, "the purge deletes keys older than 24 h");

    // Keys are the caller's: the operator's "intent-1" is another intent.
    let operator = post_keyed(
        &m.app,
        "/api/payments/setup-intent.create",
        Auth::Operator,
        "intent-1",
        &json!({"orgId": "org_idem"}),
    )
    .await;
    assert_eq!(operator.status, 200, "{}", operator.text);
    assert_ne!(operator.json, first.json);

    // Without the header each call is a new intent.
    let n = setup_intents(&stripe, &customer).await;
    for _ in 0..2 {
        let r = m
            .app
            .post(
                "/api/payments/setup-intent.create",
                Auth::Bearer(&token),
                &json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(setup_intents(&stripe, &customer).await, n + 2);

    // A bad header is bad input naming it.
    for bad in ["x".repeat(256), "tab\there".to_owned()] {
        let r = post_keyed(
            &m.app,
            "/api/payments/setup-intent.create",
            Auth::Bearer(&token),
            &bad,
            &json!({}),
        )
        .await;
        assert_eq!(r.problem(400)["field"], "Idempotency-Key", "{bad:?}");
    }
    // The OpenAPI document names the header on POSTs.
    let doc = m.app.get("/api/openapi.json", Auth::None).await;
    let params = &doc.json["paths"]["/api/payments/setup-intent.create"]["post"]["parameters"];
    assert!(
        params.as_array().is_some_and(|ps| ps
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")),
        "{params}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_run_once() {
    let (stripe, m) = setup_with(50, None).await;
    sign_up(&m, "org_idem_conc").await;
    let token = owner(&m, "org_idem_conc");
    let customer = customer_of(&m, "org_idem_conc").await;
    let before = setup_intents(&stripe, &customer).await;
    let body = json!({});
    let calls = (0..12).map(|_| {
        post_keyed(
            &m.app,
            "/api/payments/setup-intent.create",
            Auth::Bearer(&token),
            "one-intent",
            &body,
        )
    });
    let answers = join_all(calls).await;
    let mut secrets = std::collections::BTreeSet::new();
    for r in &answers {
        match r.status {
            200 => {
                secrets.insert(r.json["clientSecret"].as_str().unwrap().to_owned());
            }
            _ => {
                // The first still runs: Stripe's idempotency_key_in_use, a 409 that is not stored.
                assert_eq!(r.problem(409)["field"], "Idempotency-Key", "{}", r.text);
            }
        }
    }
    assert!(secrets.len() <= 1, "one answer: {secrets:?}");
    assert_eq!(
        setup_intents(&stripe, &customer).await,
        before + 1,
        "the intent ran once"
    );
    // Once it finished, the key replays its answer.
    let after = post_keyed(
        &m.app,
        "/api/payments/setup-intent.create",
        Auth::Bearer(&token),
        "one-intent",
        &json!({}),
    )
    .await;
    assert_eq!(after.status, 200, "{}", after.text);
    if let Some(secret) = secrets.first() {
        assert_eq!(after.json["clientSecret"], *secret);
    }
    assert_eq!(setup_intents(&stripe, &customer).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_is_never_replayed_as_the_result() {
    let (mut stripe, m) = setup_with(50, None).await;
    m.app.create_org("org_idem_down").await;
    let body = json!({"orgId": "org_idem_down", "email": "b@idem.test"});
    stripe.stop();
    let failed = post_keyed(
        &m.app,
        "/api/stripe/customer.ensure",
        Auth::Operator,
        "ensure-1",
        &body,
    )
    .await;
    assert!(matches!(failed.status, 502 | 503), "{}", failed.text);
    let stored_keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(stored_keys, 0, "a 5xx frees the key");

    stripe.restart().await;
    // The retry of the same intent runs again (Stripe is back) instead of replaying the outage.
    let retried = post_keyed(
        &m.app,
        "/api/stripe/customer.ensure",
        Auth::Operator,
        "ensure-1",
        &body,
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert!(retried.headers.get("idempotent-replayed").is_none());
    let customer = retried.json["stripeCustomerId"]
        .as_str()
        .unwrap()
        .to_owned();
    // And so does the org's next call without a key.
    let next = m
        .app
        .post("/api/stripe/customer.ensure", Auth::Operator, &body)
        .await;
    assert_eq!(next.json["stripeCustomerId"], customer, "{}", next.text);
    let replay = post_keyed(
        &m.app,
        "/api/stripe/customer.ensure",
        Auth::Operator,
        "ensure-1",
        &body,
    )
    .await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.json, retried.json);
}

/// Stripe saves a 500 under the request's idempotency key and replays it to every retry with that key for 24 h
/// (<https://docs.stripe.com/api/idempotent_requests>). Keys per intent keep an incident's 500 out of the org's
/// next call: with keys derived from the org alone, every `customer.ensure` of that day would replay it.
#[tokio::test]
async fn a_500_stripe_saved_under_a_key_never_reaches_the_next_intent() {
    let (stripe, m) = setup_with(50, None).await;
    m.app.create_org("org_incident").await;
    let body = json!({"orgId": "org_incident", "email": "i@idem.test"});
    stripe
        .post(
            "/_test/faults",
            &[
                ("method", "POST"),
                ("path", "^/v1/customers$"),
                ("kind", "api_error"),
                ("count", "1"),
                ("saved", "true"),
            ],
        )
        .await;
    let failed = m
        .app
        .post("/api/stripe/customer.ensure", Auth::Operator, &body)
        .await;
    assert!(matches!(failed.status, 502 | 503), "{}", failed.text);
    let orgs_customer: Option<String> = sqlx::query_scalar(
        "SELECT stripe_customer_id FROM orgs WHERE clerk_org_id = 'org_incident'",
    )
    .fetch_one(&m.app.state.pg)
    .await
    .unwrap();
    assert_eq!(orgs_customer, None, "nothing half-written");
    assert_eq!(stripe.fault_hits(0).await, 1, "the incident answered once");

    let next = m
        .app
        .post("/api/stripe/customer.ensure", Auth::Operator, &body)
        .await;
    assert_eq!(
        next.status, 200,
        "the next intent reaches Stripe anew: {}",
        next.text
    );
    let customer = next.json["stripeCustomerId"].as_str().unwrap().to_owned();
    let ours = stripe.customers_of_org("org_incident").await;
    assert_eq!(ours.len(), 1, "one customer in Stripe: {ours:?}");
    assert_eq!(ours[0]["id"], customer.as_str());
}

// === defect 7: schedules ===

/// A downgrade to `plan` as the org's owner; the answer.
async fn downgrade(m: &Metering, org: &str, plan: &str) -> Resp {
    m.app
        .post(
            "/api/plans/downgrade.schedule",
            Auth::Bearer(&owner(m, org)),
            &json!({"newPlanCode": plan}),
        )
        .await
}

/// An upgrade to `plan` as the org's owner; the answer.
async fn upgrade(m: &Metering, org: &str, plan: &str) -> Resp {
    m.app
        .post(
            "/api/plans/upgrade.now",
            Auth::Bearer(&owner(m, org)),
            &json!({"newPlanCode": plan}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_downgrade_after_the_first_took_effect_is_scheduled() {
    let (stripe, m) = setup_with(50, None).await;
    let sub = paying(&stripe, &m, "org_twice").await;
    let r = upgrade(&m, "org_twice", "pro").await;
    assert_eq!(r.json["planCode"], "pro", "{}", r.text);
    let r = downgrade(&m, "org_twice", "growth").await;
    assert_eq!(r.json["pendingPlanCode"], "growth", "{}", r.text);
    stripe.advance(&sub).await;
    let renewed = await_stored(&m, &sub, "the first downgrade to take effect", |row| {
        row["plan_code"] == "growth" && row["pending_plan_code"].is_null()
    })
    .await;
    // The schedule's first phase now lies in the past: the second downgrade is built from the phase in force.
    let r = downgrade(&m, "org_twice", "starter").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["pendingPlanCode"], "starter");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(r.json["effectiveAt"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339(renewed["current_period_end"].as_str().unwrap())
            .unwrap(),
        "at the end of the period in force"
    );
    let e = entitlements(&m, "org_twice").await;
    assert_eq!(
        (e["planCode"].as_str(), e["pendingPlanCode"].as_str()),
        (Some("growth"), Some("starter"))
    );
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "the second downgrade to take effect", |row| {
        row["plan_code"] == "starter" && row["pending_plan_code"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_during_a_trial_keeps_the_trial() {
    let (stripe, m) = setup_with(50, None).await;
    m.app.create_org("org_trial_down").await;
    let token = owner(&m, "org_trial_down");
    let r = m
        .app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&token),
            &json!({"email": "billing@trial-down.test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = m
        .app
        .post(
            "/api/stripe/subscription.create",
            Auth::Bearer(&token),
            &json!({"priceLookup": "plan_growth_m"}),
        )
        .await;
    assert_eq!(r.json["status"], "trialing", "{}", r.text);
    let sub = r.json["subscriptionId"].as_str().unwrap().to_owned();
    let trial_end = stored(&m, &sub).await["trial_end"].clone();

    let r = downgrade(&m, "org_trial_down", "starter").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["pendingPlanCode"], "starter");
    let in_stripe = stripe.get(&format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(in_stripe["status"], "trialing", "{in_stripe}");
    let row = stored(&m, &sub).await;
    assert_eq!(
        (&row["status"], &row["trial_end"]),
        (&json!("trialing"), &trial_end),
        "the trial is kept"
    );
    let e = entitlements(&m, "org_trial_down").await;
    assert_eq!(
        (e["planCode"].as_str(), e["pendingPlanCode"].as_str()),
        (Some("trial"), Some("starter"))
    );
    // With a card on file, the trial ends into the downgraded plan.
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
    await_stored(&m, &sub, "the trial to end into starter", |row| {
        row["status"] == "active" && row["plan_code"] == "starter"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_upgrade_downgrade_in_one_period_is_scheduled() {
    let (stripe, m) = setup_with(50, None).await;
    let sub = paying(&stripe, &m, "org_dud").await;
    let r = upgrade(&m, "org_dud", "growth").await;
    assert_eq!(r.json["planCode"], "growth", "{}", r.text);
    let r = downgrade(&m, "org_dud", "starter").await;
    assert_eq!(r.json["pendingPlanCode"], "starter", "{}", r.text);
    let first_schedule = stored(&m, &sub).await["stripe_schedule_id"].clone();
    let r = upgrade(&m, "org_dud", "pro").await;
    assert_eq!(r.json["planCode"], "pro", "{}", r.text);
    if let Some(id) = first_schedule.as_str() {
        let s = stripe
            .get(&format!("/v1/subscription_schedules/{id}"))
            .await;
        assert_eq!(s["status"], "released", "the upgrade released it: {s}");
    }
    let r = downgrade(&m, "org_dud", "growth").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["pendingPlanCode"], "growth");
    let e = entitlements(&m, "org_dud").await;
    assert_eq!(
        (e["planCode"].as_str(), e["pendingPlanCode"].as_str()),
        (Some("pro"), Some("growth"))
    );
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "the last downgrade to take effect", |row| {
        row["plan_code"] == "growth" && row["pending_plan_code"].is_null()
    })
    .await;
}

// === defect 8: the preview is what the upgrade invoices ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_equals_the_invoice_the_upgrade_creates() {
    let clock = tollgate_common::clock::OffsetClock::default();
    let stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let m = Metering::start(Options {
        limit: 50,
        stripe: Some(&stripe),
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    // Three orgs with the same period; each is upgraded at another point of it.
    let orgs = ["org_prev_a", "org_prev_b", "org_prev_c"];
    let mut subs = Vec::new();
    for org in orgs {
        subs.push(paying(&stripe, &m, org).await);
    }
    for ((org, sub), fraction) in orgs.iter().zip(&subs).zip([0.1_f64, 0.47, 0.88]) {
        let row = stored(&m, sub).await;
        let at = |field: &str| {
            chrono::DateTime::parse_from_rfc3339(row[field].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let (start, end) = (at("current_period_start"), at("current_period_end"));
        // A point of the period, early in its minute (the proration minute of preview and upgrade is the same).
        let target = start
            + chrono::Duration::seconds(((end - start).num_seconds() as f64 * fraction) as i64);
        let target = target - chrono::Duration::seconds(target.timestamp().rem_euclid(60) - 2);
        use tollgate_common::clock::Clock;
        clock.advance(target - clock.now());

        let preview = m
            .app
            .post(
                "/api/plans/preview",
                Auth::Operator,
                &json!({"orgId": org, "newPlanCode": "growth"}),
            )
            .await;
        assert_eq!(preview.status, 200, "{}", preview.text);
        assert_eq!(preview.json["proration"], true);
        let amount = preview.json["amount"].as_i64().unwrap();
        let items: i64 = preview.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                assert_eq!(i["proration"], true, "{i}");
                i["amount"].as_i64().unwrap()
            })
            .sum();
        assert_eq!(items, amount);
        assert_eq!(
            preview.json["nextInvoice"]["amount"], 4900,
            "{}",
            preview.text
        );
        assert_eq!(preview.json["nextInvoice"]["currency"], "usd");

        let r = m
            .app
            .post(
                "/api/plans/upgrade.now",
                Auth::Operator,
                &json!({"orgId": org, "newPlanCode": "growth"}),
            )
            .await;
        assert_eq!(r.json["planCode"], "growth", "{}", r.text);
        let customer = customer_of(&m, org).await;
        let invoice = &stripe
            .get(&format!("/v1/invoices?customer={customer}&limit=1"))
            .await["data"][0];
        assert_eq!(
            invoice["billing_reason"], "subscription_update",
            "{invoice}"
        );
        assert_eq!(
            invoice["total"].as_i64(),
            Some(amount),
            "at {fraction} of the period the preview is the invoice, to the cent: {invoice}"
        );
        // Stripe's per-second proration of the two prices for the rest of the period.
        let t = target.timestamp() - target.timestamp().rem_euclid(60);
        let (s, e) = (start.timestamp(), end.timestamp());
        let share = |price: i64| ((price * (e - t)) as f64 / (e - s) as f64 + 0.5).floor() as i64;
        assert_eq!(amount, share(4900) - share(900), "per-second proration");
    }
}

// === defect 6: 3-D Secure ===

/// An org paying for growth with a downgrade to starter scheduled, whose default card is now the test card
/// `card`: the emulator, the stack and the subscription id.
async fn on_growth_with_a_pending_downgrade(
    org: &str,
    card: &str,
) -> (StripeEmulator, Metering, String) {
    let (stripe, m) = setup_with(50, None).await;
    let sub = paying(&stripe, &m, org).await;
    let r = upgrade(&m, org, "growth").await;
    assert_eq!(r.json["planCode"], "growth", "{}", r.text);
    let r = downgrade(&m, org, "starter").await;
    assert_eq!(r.json["pendingPlanCode"], "starter", "{}", r.text);
    let card = stripe.card(card).await;
    let r = m
        .app
        .post(
            "/api/payments/default-method.set",
            Auth::Bearer(&owner(&m, org)),
            &json!({"paymentMethodId": card}),
        )
        .await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    (stripe, m, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_needing_3ds_returns_requires_action_and_keeps_the_pending_downgrade() {
    let (stripe, m, sub) = on_growth_with_a_pending_downgrade("org_3ds", "4000002760003184").await;

    let r = upgrade(&m, "org_3ds", "pro").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["status"], "requires_action");
    let secret = r.json["clientSecret"]
        .as_str()
        .expect("clientSecret")
        .to_owned();
    assert!(secret.contains("_secret_"), "{secret}");
    // Nothing changed: the plan, and the pending downgrade, stay until the payment is made.
    let e = entitlements(&m, "org_3ds").await;
    assert_eq!(
        (e["planCode"].as_str(), e["pendingPlanCode"].as_str()),
        (Some("growth"), Some("starter")),
        "{e}"
    );
    let in_stripe = stripe.get(&format!("/v1/subscriptions/{sub}")).await;
    assert!(in_stripe["pending_update"].is_object(), "{in_stripe}");
    assert_eq!(
        in_stripe["items"]["data"][0]["price"]["lookup_key"],
        "plan_growth_m"
    );
    let action_required = wait::until(
        LONG,
        "invoice.payment_action_required to arrive",
        || async {
            let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE event_type = 'invoice.payment_action_required'
                AND status = 'applied'",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
            (n == 1).then_some(n)
        },
    )
    .await;
    assert_eq!(action_required, 1);
    assert_eq!(
        entitlements(&m, "org_3ds").await["pendingPlanCode"],
        "starter",
        "still pending after the webhook"
    );

    // The customer passes 3-D Secure (Stripe.js confirms the payment): Stripe applies the upgrade, and the
    // webhooks bring the mirror in step, dropping the downgrade.
    let pi = secret.split("_secret_").next().unwrap();
    stripe
        .post(&format!("/_test/payment_intents/{pi}/confirm"), &[])
        .await;
    await_stored(&m, &sub, "the paid upgrade to be mirrored", |row| {
        row["plan_code"] == "pro" && row["pending_plan_code"].is_null()
    })
    .await;
    let e = entitlements(&m, "org_3ds").await;
    assert_eq!(
        (e["planCode"].as_str(), e["pendingPlanCode"].as_str()),
        (Some("pro"), None),
        "{e}"
    );
    let in_stripe = stripe.get(&format!("/v1/subscriptions/{sub}")).await;
    assert!(in_stripe["pending_update"].is_null(), "{in_stripe}");
    assert!(
        in_stripe["schedule"].is_null(),
        "the downgrade's schedule is released: {in_stripe}"
    );
    // And it stays dropped at the renewal.
    let before = stored(&m, &sub).await;
    stripe.advance(&sub).await;
    let row = await_stored(&m, &sub, "the renewal", |row| {
        row["current_period_start"] != before["current_period_start"]
    })
    .await;
    assert_eq!(
        (&row["plan_code"], &row["pending_plan_code"]),
        (&json!("pro"), &Value::Null),
        "{row}"
    );
}

// === defect 10: the portal ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_uses_the_configured_configuration() {
    let (stripe, m) = setup_with_env(
        50,
        None,
        &[(
            "TOLLGATE_STRIPE_PORTAL_CONFIGURATION",
            "bpc_tollgate_default",
        )],
    )
    .await;
    sign_up(&m, "org_portal_cfg").await;
    let r = m
        .app
        .post(
            "/api/payments/portal.create",
            Auth::Bearer(&owner(&m, "org_portal_cfg")),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page = reqwest::get(r.json["url"].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"<p id="configuration">bpc_tollgate_default</p>"#),
        "{page}"
    );
    drop(m);
    // A configuration Stripe does not have is refused by Stripe, so the setting is really passed.
    let m = Metering::start(Options {
        limit: 50,
        stripe: Some(&stripe),
        control_plane_env: vec![(
            "TOLLGATE_STRIPE_PORTAL_CONFIGURATION".to_owned(),
            "bpc_not_saved".to_owned(),
        )],
        ..Options::default()
    })
    .await;
    sign_up(&m, "org_portal_cfg2").await;
    let r = m
        .app
        .post(
            "/api/payments/portal.create",
            Auth::Bearer(&owner(&m, "org_portal_cfg2")),
            &json!({}),
        )
        .await;
    r.problem(422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_switch_made_in_stripe_is_mirrored() {
    use stripe_billing::subscription::{
        UpdateSubscription, UpdateSubscriptionItems, UpdateSubscriptionProrationBehavior,
    };
    use tollgate_control_plane::stripe::{IdempotencyKey, Op, StripeClient, StripeMetrics};

    let (stripe, m) = setup_with(50, None).await;
    let sub = paying(&stripe, &m, "org_dashboard").await;
    let growth = stripe.get("/v1/prices?lookup_keys[]=plan_growth_m").await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let item = stripe.get(&format!("/v1/subscriptions/{sub}")).await["items"]["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // As the Dashboard or the portal would: the item's price changes in Stripe, not through Tollgate.
    let client = StripeClient::new(
        &tollgate_control_plane::stripe::StripeSettings {
            secret_key: tollgate_e2e::stripe::SECRET_KEY.to_owned().into(),
            api_base: stripe.url.clone(),
            attempt_timeout: std::time::Duration::from_secs(10),
            budget: std::time::Duration::from_secs(20),
        },
        StripeMetrics::register(&prometheus::Registry::new()).unwrap(),
    )
    .unwrap();
    let request = UpdateSubscription::new(sub.as_str())
        .items(vec![UpdateSubscriptionItems {
            id: Some(item.clone()),
            price: Some(growth.clone()),
            ..UpdateSubscriptionItems::new()
        }])
        .proration_behavior(UpdateSubscriptionProrationBehavior::None);
    let updated = client
        .send(
            Op::SubscriptionUpdate,
            &request,
            Some(&IdempotencyKey::fresh(Op::SubscriptionUpdate)),
        )
        .await
        .expect("the item's price changes in Stripe");
    assert_eq!(updated.items.data[0].price.id.as_str(), growth);
    await_stored(
        &m,
        &sub,
        "the switch made in Stripe to be mirrored",
        |row| row["plan_code"] == "growth",
    )
    .await;
    let e = entitlements(&m, "org_dashboard").await;
    assert_eq!(
        (e["planCode"].as_str(), e["included"].as_u64()),
        (Some("growth"), Some(1_000_000)),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_upgrade_changes_nothing_and_keeps_the_pending_downgrade() {
    let (stripe, m, sub) =
        on_growth_with_a_pending_downgrade("org_declined", "4000000000000341").await;
    let r = upgrade(&m, "org_declined", "pro").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["status"], "requires_action");
    let e = entitlements(&m, "org_declined").await;
    assert_eq!(
        (e["planCode"].as_str(), e["pendingPlanCode"].as_str()),
        (Some("growth"), Some("starter")),
        "{e}"
    );
    let row = stored(&m, &sub).await;
    assert_eq!(row["status"], "active", "{row}");
    let in_stripe = stripe.get(&format!("/v1/subscriptions/{sub}")).await;
    assert!(
        in_stripe["schedule"].is_string(),
        "the downgrade's schedule stays: {in_stripe}"
    );
}
