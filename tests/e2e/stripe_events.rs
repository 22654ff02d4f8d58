//! Stripe events that can never be mirrored end `ignored` (issue 20, defect 1), and Stripe's real failure modes —
//! injected 500, 429 `rate_limit`, `lock_timeout`, slow answers, webhooks delivered out of order and late — leave
//! the mirror whole.

use crate::billing::{LONG, await_stored, owner, setup_with_env, sign_up, stored};
use reqwest::Method;
use serde_json::{Value, json};
use tollgate_e2e::app::Auth;
use tollgate_e2e::metering::Metering;
use tollgate_e2e::stripe::StripeEmulator;
use tollgate_e2e::{metric_value, wait};

/// One stored event: `(event_id, status, ignored_reason, attempts, last_error)`.
type Row = (String, String, Option<String>, i32, Option<String>);

/// The stored event of `kind` about `object_id`, once one has been received.
async fn event_row(m: &Metering, kind: &str, object_id: &str) -> Option<Row> {
    sqlx::query_as(
        "SELECT event_id, status, ignored_reason, attempts, last_error FROM stripe_events
          WHERE event_type = $1 AND object_id = $2 ORDER BY received_at LIMIT 1",
    )
    .bind(kind)
    .bind(object_id)
    .fetch_optional(&m.app.state.pg)
    .await
    .expect("read stripe_events")
}

/// Waits until the event of `kind` about `object_id` has been received and processed (applied or ignored).
async fn settled(m: &Metering, kind: &str, object_id: &str) -> Row {
    wait::until(
        LONG,
        &format!("{kind} of {object_id} to be processed"),
        || async {
            event_row(m, kind, object_id)
                .await
                .filter(|row| row.1 == "applied" || row.1 == "ignored")
        },
    )
    .await
}

/// Waits until no received event waits (pending or failed).
async fn all_settled(m: &Metering) {
    wait::until(LONG, "every received event to be processed", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE status NOT IN ('applied', 'ignored')",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (waiting == 0).then_some(())
    })
    .await;
}

async fn metrics(m: &Metering) -> String {
    m.app.get("/metrics", Auth::None).await.text
}

/// The operator's listing.
async fn listed(m: &Metering, query: &str) -> Vec<Value> {
    let r = m
        .app
        .get(&format!("/api/admin/webhooks.list{query}"), Auth::Operator)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json.as_array().cloned().expect("an array")
}

/// The id of a test plan's price (seeded by the set-up) by its lookup key.
async fn price_id(stripe: &StripeEmulator, lookup_key: &str) -> String {
    let list = stripe
        .get(&format!("/v1/prices?lookup_keys[0]={lookup_key}"))
        .await;
    list["data"][0]["id"]
        .as_str()
        .expect("the seeded price")
        .to_owned()
}

/// A price on a product of its own, which no plan of PLANS_CONFIG names.
async fn foreign_price(stripe: &StripeEmulator) -> String {
    let product = stripe
        .post("/v1/products", &[("name", "Another product")])
        .await;
    let price = stripe
        .post(
            "/v1/prices",
            &[
                ("currency", "usd"),
                ("unit_amount", "1234"),
                ("recurring[interval]", "month"),
                ("product", product["id"].as_str().expect("product id")),
            ],
        )
        .await;
    price["id"].as_str().expect("price id").to_owned()
}

/// An org with a Stripe customer made by 1.2; returns the customer id.
async fn org_with_customer(m: &Metering, org: &str) -> String {
    m.app.create_org(org).await;
    let r = m
        .app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&owner(m, org)),
            &json!({"email": format!("billing@{}.test", &org[4..])}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["stripeCustomerId"]
        .as_str()
        .expect("customerId")
        .to_owned()
}

/// 8.1 for one event.
async fn replay(m: &Metering, event_id: String) {
    let r = m
        .app
        .post(
            "/api/admin/webhooks.replay",
            Auth::Operator,
            &json!({"eventIds": [event_id]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["enqueued"], 1);
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

// === defect 1: ignored, once ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_a_customer_no_org_owns_is_ignored_once_and_never_retried() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let starter = price_id(&stripe, "plan_starter_m").await;
    // Every read of a subscription, counted by the emulator (a fault that only delays, by 0 ms).
    let reads = stripe
        .fault("GET", "^/v1/subscriptions/sub_", "slow", 1_000_000, 0)
        .await;
    // Made in the Dashboard: a customer without metadata, a trial on a plan's own price.
    let customer = id(&stripe
        .post("/v1/customers", &[("email", "someone@dashboard.test")])
        .await);
    let sub = id(&stripe
        .post(
            "/v1/subscriptions",
            &[
                ("customer", customer.as_str()),
                ("items[0][price]", starter.as_str()),
                ("trial_period_days", "14"),
            ],
        )
        .await);
    let (event_id, status, reason, attempts, detail) =
        settled(&m, "customer.subscription.created", &sub).await;
    assert_eq!(status, "ignored");
    assert_eq!(reason.as_deref(), Some("foreign_customer"));
    assert_eq!(attempts, 1, "processed once");
    assert!(
        detail.as_deref().is_some_and(|d| d.contains(&customer)),
        "says which customer: {detail:?}"
    );
    // The customer's own event is the same: nobody's.
    let (_, status, reason, ..) = settled(&m, "customer.created", &customer).await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("ignored", Some("foreign_customer"))
    );
    all_settled(&m).await;
    assert_eq!(stored(&m, &sub).await, Value::Null, "nothing mirrored");

    // Never retried: even made due long ago, the worker's due-work path does not pick it, and Stripe is not read.
    let reads_before = stripe.fault_hits(reads).await;
    sqlx::query("UPDATE stripe_events SET next_attempt_at = now() - interval '1 hour'")
        .execute(&m.app.state.pg)
        .await
        .unwrap();
    let billing = m.app.state.billing.clone().expect("billing is configured");
    assert!(
        billing
            .process_next()
            .await
            .expect("the worker's step")
            .is_none(),
        "an ignored event is not due work"
    );
    let (_, status, _, attempts, _) = event_row(&m, "customer.subscription.created", &sub)
        .await
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("ignored", 1));
    assert_eq!(
        stripe.fault_hits(reads).await,
        reads_before,
        "Stripe not read again"
    );

    // Counted, and the queue is empty: nothing failed, nothing waits.
    let text = metrics(&m).await;
    assert!(
        metric_value(
            &text,
            r#"tollgate_cp_webhook_ignored_total{reason="foreign_customer"}"#
        ) >= 2,
        "{text}"
    );
    assert!(
        metric_value(
            &text,
            r#"tollgate_cp_webhook_events_total{outcome="ignored"}"#
        ) >= 2
    );
    assert_eq!(
        metric_value(
            &text,
            r#"tollgate_cp_webhook_events_total{outcome="failed"}"#
        ),
        0
    );
    wait::until(LONG, "the queue gauge to read 0", || async {
        let text = metrics(&m).await;
        (text.contains("\ntollgate_cp_queue_depth{kind=\"stripe_event\"} 0\n")).then_some(())
    })
    .await;

    // Listed for the operator, newest first, a page at a time.
    let doc = m.app.get("/api/openapi.json", Auth::None).await;
    assert!(
        doc.json["paths"]["/api/admin/webhooks.list"]["get"].is_object(),
        "the listing is in the OpenAPI document"
    );
    let ignored = listed(&m, "?status=ignored&limit=100").await;
    let row = ignored
        .iter()
        .find(|e| e["eventId"] == event_id.as_str())
        .unwrap_or_else(|| panic!("{event_id} listed: {ignored:?}"));
    assert_eq!(row["type"], "customer.subscription.created");
    assert_eq!(row["objectId"], sub.as_str());
    assert_eq!(row["status"], "ignored");
    assert_eq!(row["reason"], "foreign_customer");
    assert_eq!(row["attempts"], 1);
    assert!(row["receivedAt"].is_string() && row["lastError"].is_string());
    assert!(ignored.iter().all(|e| e["status"] == "ignored"));
    // `limit` takes an integral number written as a float, as every integer field does.
    let first = listed(&m, "?status=ignored&limit=1.0").await;
    assert_eq!(first.len(), 1);
    let next = listed(
        &m,
        &format!(
            "?status=ignored&limit=1&after={}",
            first[0]["eventId"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(next.len(), 1);
    assert_ne!(next[0]["eventId"], first[0]["eventId"]);
    assert_eq!(ignored[..2], [first[0].clone(), next[0].clone()]);
    for (query, field, status) in [
        ("?status=lost", "status", 422),
        ("?limit=0", "limit", 422),
        ("?limit=1.5", "limit", 422),
        ("?after=evt_never_received", "after", 404),
        ("?after=nope", "after", 422),
    ] {
        let r = m
            .app
            .get(&format!("/api/admin/webhooks.list{query}"), Auth::Operator)
            .await;
        assert_eq!(r.status, status, "{query}: {}", r.text);
        assert!(r.text.contains(field), "{query}: {}", r.text);
    }

    // Still replayable (8.1): reprocessed once more, ignored again while nobody owns the customer...
    replay(&m, event_id.clone()).await;
    wait::until(LONG, "the replay to be processed", || async {
        event_row(&m, "customer.subscription.created", &sub)
            .await
            .filter(|row| row.3 == 2 && row.1 == "ignored")
    })
    .await;
    // ... and applied once the subscription names an org (the operator tags it in Stripe).
    m.app.create_org("org_claims_it").await;
    stripe
        .post(
            &format!("/v1/subscriptions/{sub}"),
            &[("metadata[orgId]", "org_claims_it")],
        )
        .await;
    await_stored(&m, &sub, "the tagged subscription to be mirrored", |row| {
        row["status"] == "trialing"
    })
    .await;
    replay(&m, event_id.clone()).await;
    let (_, status, reason, attempts, _) = wait::until(LONG, "the replay to apply", || async {
        event_row(&m, "customer.subscription.created", &sub)
            .await
            .filter(|row| row.1 == "applied")
    })
    .await;
    assert_eq!((reason, attempts), (None, 3), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_on_a_price_not_in_plans_config_is_ignored_once() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let customer = org_with_customer(&m, "org_other_product").await;
    let price = foreign_price(&stripe).await;
    // Another product billed to the same customer, made outside Tollgate.
    let sub = id(&stripe
        .post(
            "/v1/subscriptions",
            &[
                ("customer", customer.as_str()),
                ("items[0][price]", price.as_str()),
                ("trial_period_days", "7"),
            ],
        )
        .await);
    let (event_id, status, reason, attempts, detail) =
        settled(&m, "customer.subscription.created", &sub).await;
    assert_eq!(
        (status.as_str(), reason.as_deref(), attempts),
        ("ignored", Some("unknown_price"), 1)
    );
    assert!(detail.is_some_and(|d| d.contains(&price)));
    all_settled(&m).await;
    assert_eq!(stored(&m, &sub).await, Value::Null, "nothing mirrored");
    let text = metrics(&m).await;
    assert!(
        metric_value(
            &text,
            r#"tollgate_cp_webhook_ignored_total{reason="unknown_price"}"#
        ) >= 1
    );
    assert_eq!(
        metric_value(
            &text,
            r#"tollgate_cp_webhook_events_total{outcome="failed"}"#
        ),
        0
    );
    assert!(
        listed(&m, "?status=ignored")
            .await
            .iter()
            .any(|e| e["eventId"] == event_id.as_str() && e["reason"] == "unknown_price")
    );
    // 2.4 says the same, at once.
    let r = m
        .app
        .post(
            "/api/jobs/stripe.process",
            Auth::Operator,
            &json!({"eventId": event_id}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"converged": true, "outcome": "ignored", "reason": "unknown_price"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_invoice_deleted_as_a_draft_is_ignored_as_deleted() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let customer = org_with_customer(&m, "org_one_off").await;
    all_settled(&m).await;
    // Made in the Dashboard and deleted before its events were delivered (Stripe deletes drafts).
    stripe.hold_webhooks().await;
    let draft = stripe.one_off_invoice(&customer, 500).await;
    assert_eq!(
        stripe.delete(&format!("/v1/invoices/{draft}")).await["deleted"],
        true
    );
    let (status, _) = stripe
        .call(Method::GET, &format!("/v1/invoices/{draft}"), &[])
        .await;
    assert_eq!(status, 404);
    // And one that stays: a one-off invoice, finalized, about no subscription.
    let kept = stripe.one_off_invoice(&customer, 700).await;
    stripe
        .post(&format!("/v1/invoices/{kept}/finalize"), &[])
        .await;
    assert!(!stripe.release_webhooks("fifo", 0).await.is_empty());

    let (_, status, reason, attempts, _) = settled(&m, "invoice.created", &draft).await;
    assert_eq!(
        (status.as_str(), reason.as_deref(), attempts),
        ("ignored", Some("object_deleted"), 1)
    );
    let (_, status, reason, _, _) = settled(&m, "invoice.deleted", &draft).await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("ignored", Some("unhandled_type"))
    );
    let (_, status, reason, attempts, _) = settled(&m, "invoice.finalized", &kept).await;
    assert_eq!(
        (status.as_str(), reason.as_deref(), attempts),
        ("ignored", Some("no_subscription"), 1)
    );
    all_settled(&m).await;
    let text = metrics(&m).await;
    assert!(
        metric_value(
            &text,
            r#"tollgate_cp_webhook_ignored_total{reason="object_deleted"}"#
        ) >= 1
    );
    assert_eq!(
        metric_value(
            &text,
            r#"tollgate_cp_webhook_events_total{outcome="failed"}"#
        ),
        0
    );
}

// === Stripe's transient failures ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_stripe_faults_are_retried_and_nothing_is_half_written() {
    // One attempt may take 1 s, a call 8 s (retries included).
    let (stripe, m) = setup_with_env(
        50,
        None,
        &[
            ("TOLLGATE_STRIPE_TIMEOUT_MS", "1000"),
            ("TOLLGATE_STRIPE_BUDGET_MS", "8000"),
        ],
    )
    .await;
    m.app.create_org("org_faults").await;
    let token = owner(&m, "org_faults");
    // customer.ensure's POST meets a lock_timeout, a rate limit and a 500 before Stripe runs it: retried with
    // its idempotency key, it makes one customer.
    let lock = stripe
        .fault("POST", "^/v1/customers$", "lock_timeout", 1, 0)
        .await;
    let limited = stripe
        .fault("POST", "^/v1/customers$", "rate_limit", 1, 0)
        .await;
    let failed = stripe
        .fault("POST", "^/v1/customers$", "api_error", 1, 0)
        .await;
    let r = m
        .app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&token),
            &json!({"email": "billing@faults.test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for fault in [lock, limited, failed] {
        assert_eq!(stripe.fault_hits(fault).await, 1);
    }
    let customer = r.json["stripeCustomerId"].as_str().unwrap().to_owned();
    let ours = stripe.customers_of_org("org_faults").await;
    assert_eq!(ours.len(), 1, "one customer: {ours:?}");
    assert_eq!(ours[0]["id"], customer.as_str());

    // The worker's reads meet two 500s: retried within the budget, the events apply on their first attempt.
    let reads = stripe
        .fault("GET", "^/v1/subscriptions/sub_", "api_error", 2, 0)
        .await;
    let r = m
        .app
        .post(
            "/api/stripe/subscription.create",
            Auth::Bearer(&token),
            &json!({"priceLookup": "plan_starter_m"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sub = r.json["subscriptionId"].as_str().unwrap().to_owned();
    let (_, status, _, attempts, _) = settled(&m, "customer.subscription.created", &sub).await;
    assert_eq!((status.as_str(), attempts), ("applied", 1));
    assert_eq!(stripe.fault_hits(reads).await, 2);

    // A slow answer to a change (longer than one attempt's timeout): the retry carries the same key, so the
    // default payment method is set once, and Stripe and the database agree.
    let card = stripe.card("4242424242424242").await;
    let slow = stripe
        .fault("POST", "^/v1/customers/cus_", "slow", 1, 1500)
        .await;
    let r = m
        .app
        .post(
            "/api/payments/default-method.set",
            Auth::Bearer(&token),
            &json!({"paymentMethodId": card}),
        )
        .await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    assert_eq!(stripe.fault_hits(slow).await, 1);
    let in_stripe = stripe.get(&format!("/v1/customers/{customer}")).await;
    assert_eq!(
        in_stripe["invoice_settings"]["default_payment_method"],
        card.as_str()
    );
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT stripe_default_payment_method FROM orgs WHERE clerk_org_id = 'org_faults'",
    )
    .fetch_one(&m.app.state.pg)
    .await
    .unwrap();
    assert_eq!(stored.as_deref(), Some(card.as_str()));
    all_settled(&m).await;
    assert_eq!(
        metric_value(
            &metrics(&m).await,
            r#"tollgate_cp_webhook_events_total{outcome="failed"}"#
        ),
        0
    );
}

// === webhooks out of order and late ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriptions_events_delivered_in_reverse_and_late_converge_to_stripes_final_state() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let sub = sign_up(&m, "org_reverse").await;
    all_settled(&m).await;
    // Changes made in Stripe directly (the Dashboard, the portal), whose events arrive late and newest first.
    stripe.hold_webhooks().await;
    let path = format!("/v1/subscriptions/{sub}");
    stripe
        .post(&path, &[("cancel_at_period_end", "true")])
        .await;
    stripe
        .post(&path, &[("cancel_at_period_end", "false")])
        .await;
    stripe
        .post(&path, &[("cancel_at_period_end", "true")])
        .await;
    let released = stripe.release_webhooks("reverse", 300).await;
    assert!(released.len() >= 3, "{released:?}");
    wait::until(LONG, "the held events to be received and processed", || async {
        let processed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE event_id = ANY($1) AND status IN ('applied', 'ignored')",
        )
        .bind(&released)
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (processed == i64::try_from(released.len()).ok()?).then_some(())
    })
    .await;
    let in_stripe = stripe.get(&path).await;
    let row = await_stored(&m, &sub, "Stripe's final state", |row| {
        row["cancel_at_period_end"] == true
    })
    .await;
    assert_eq!(row["status"], in_stripe["status"]);
    assert_eq!(
        row["cancel_at_period_end"],
        in_stripe["cancel_at_period_end"]
    );

    // Then canceled now, delivered after a delay: the newest state wins whatever the order.
    stripe.hold_webhooks().await;
    stripe
        .post(&path, &[("cancel_at_period_end", "false")])
        .await;
    stripe.delete(&path).await;
    stripe.release_webhooks("reverse", 200).await;
    let row = await_stored(&m, &sub, "the cancellation", |row| {
        row["status"] == "canceled"
    })
    .await;
    assert_eq!(stripe.get(&path).await["status"], "canceled");
    all_settled(&m).await;
    assert_eq!(
        stored(&m, &sub).await,
        row,
        "later (older) events changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_ignore_each_event_of_a_foreign_backlog_once() {
    use tollgate_control_plane::stripe::signature;
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let other = m.replica().stripe(&stripe).start().await;
    let starter = price_id(&stripe, "plan_starter_m").await;
    let customer = id(&stripe
        .post("/v1/customers", &[("email", "someone@dashboard.test")])
        .await);
    let sub = id(&stripe
        .post(
            "/v1/subscriptions",
            &[
                ("customer", customer.as_str()),
                ("items[0][price]", starter.as_str()),
                ("trial_period_days", "14"),
            ],
        )
        .await);
    // A backlog about a Dashboard subscription, delivered to both replicas at once.
    let deliveries = (0..60).map(|i| {
        let body = crate::billing::event(
            &format!("evt_foreign_{i}"),
            "customer.subscription.updated",
            &sub,
            "subscription",
        );
        let app = if i % 2 == 0 { &m.app } else { &other };
        async move {
            let header = signature::sign(
                body.as_bytes(),
                tollgate_e2e::stripe::WEBHOOK_SECRET,
                crate::billing::now(),
            );
            let req = app
                .http
                .post(app.url("/api/webhooks/stripe.receive"))
                .header("content-type", "application/json")
                .header("stripe-signature", header)
                .body(body);
            app.send(req, Auth::None).await
        }
    });
    for r in futures_util::future::join_all(deliveries).await {
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let rows: Vec<(String, Option<String>, i32)> =
        wait::until(LONG, "the backlog to be ignored", || async {
            let rows: Vec<(String, String, Option<String>, i32)> = sqlx::query_as(
                "SELECT event_id, status, ignored_reason, attempts FROM stripe_events
                  WHERE event_id LIKE 'evt_foreign_%'",
            )
            .fetch_all(&m.app.state.pg)
            .await
            .ok()?;
            (rows.len() == 60 && rows.iter().all(|r| r.1 == "ignored"))
                .then(|| rows.into_iter().map(|(id, _, r, a)| (id, r, a)).collect())
        })
        .await;
    assert!(
        rows.iter().all(
            |(_, reason, attempts)| reason.as_deref() == Some("foreign_customer") && *attempts == 1
        ),
        "each ignored once, for its customer: {rows:?}"
    );
    all_settled(&m).await;
    let counted: u64 = [
        metrics(&m).await,
        other.get("/metrics", Auth::None).await.text,
    ]
    .iter()
    .map(|t| {
        metric_value(
            t,
            r#"tollgate_cp_webhook_ignored_total{reason="foreign_customer"}"#,
        )
    })
    .sum();
    assert!(
        counted >= 60,
        "every ignored event counted once somewhere: {counted}"
    );
}
