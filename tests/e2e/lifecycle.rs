//! Stripe's real lifecycle on the emulator's clock (issue 20): dunning, trials that end without a card,
//! subscribing again, paying what is owed with a new card, a usage record's period, and the whole walk from trial
//! to cancellation with the entitlements of the README's state table after each step.

use crate::billing::{LONG, await_stored, entitlements, owner, setup_with_env, sign_up};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate_e2e::app::Auth;
use tollgate_e2e::metering::Metering;
use tollgate_e2e::stripe::StripeEmulator;
use tollgate_e2e::wait;

/// The wall clock, as a client stamps `occurredAt`.
fn wall_clock() -> chrono::DateTime<chrono::Utc> {
    use tollgate_common::clock::{Clock, SystemClock};
    SystemClock.now()
}

/// A card that attaches and then fails every charge (Stripe's test card for "the renewal payment fails").
const FAILING_CARD: &str = "4000000000000341";
const GOOD_CARD: &str = "4242424242424242";

/// Makes `number` the org's default payment method through 2.2; the answer.
async fn set_card(
    stripe: &StripeEmulator,
    m: &Metering,
    org: &str,
    number: &str,
) -> tollgate_e2e::app::Resp {
    let card = stripe.card(number).await;
    m.app
        .post(
            "/api/payments/default-method.set",
            Auth::Bearer(&owner(m, org)),
            &json!({"paymentMethodId": card}),
        )
        .await
}

async fn subscribe(m: &Metering, org: &str, price: &str) -> tollgate_e2e::app::Resp {
    m.app
        .post(
            "/api/stripe/subscription.create",
            Auth::Bearer(&owner(m, org)),
            &json!({"priceLookup": price}),
        )
        .await
}

/// The customer's subscriptions as Stripe holds them (every status).
async fn stripe_subscriptions(stripe: &StripeEmulator, customer: &str) -> Vec<Value> {
    stripe
        .get(&format!(
            "/v1/subscriptions?customer={customer}&status=all&limit=100"
        ))
        .await["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn customer_of(m: &Metering, org: &str) -> String {
    sqlx::query_scalar("SELECT stripe_customer_id FROM orgs WHERE clerk_org_id = $1")
        .bind(org)
        .fetch_one(&m.app.state.pg)
        .await
        .expect("customer")
}

/// The account's retry settings: `days` after the first failure, then `final_action`.
async fn dunning(stripe: &StripeEmulator, days: &[&str], final_action: &str) {
    let mut form: Vec<(&str, &str)> = days.iter().map(|d| ("retry_days[]", *d)).collect();
    form.push(("final_action", final_action));
    stripe.post("/_test/account/dunning", &form).await;
}

/// Moves the subscription's clock `days` past its period's start, running the payment retries due meanwhile.
async fn retries_until(stripe: &StripeEmulator, sub: &str, days: i64) -> Value {
    let s = stripe.get(&format!("/v1/subscriptions/{sub}")).await;
    let start = s["items"]["data"][0]["current_period_start"]
        .as_i64()
        .expect("period start");
    let to = (start + days * 86_400).to_string();
    stripe
        .post(
            &format!("/_test/subscriptions/{sub}/advance_clock"),
            &[("to", to.as_str())],
        )
        .await
}

/// Entitlements as the state table's columns: plan, included, whether the period is the subscription's (else the
/// calendar month of an unsubscribed org), the pending plan and `cancelAt`.
async fn row(m: &Metering, org: &str, sub: &str) -> (String, u64, bool, Value, Value) {
    let e = entitlements(m, org).await;
    let stored = crate::billing::stored(m, sub).await;
    let start = chrono::DateTime::parse_from_rfc3339(e["periodStart"].as_str().expect("start"))
        .expect("rfc3339");
    let stated = chrono::DateTime::parse_from_rfc3339(
        stored["current_period_start"]
            .as_str()
            .expect("stored start"),
    )
    .expect("rfc3339");
    (
        e["planCode"].as_str().expect("plan").to_owned(),
        e["included"].as_u64().expect("included"),
        start == stated,
        e["pendingPlanCode"].clone(),
        e["cancelAt"].clone(),
    )
}

// === defect 2 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_after_unpaid_never_opens_a_second_subscription_or_trial() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    dunning(&stripe, &["1", "3"], "unpaid").await;
    let org = "org_unpaid";
    let sub = sign_up(&m, org).await;
    let r = set_card(&stripe, &m, org, FAILING_CARD).await;
    assert_eq!(r.status, 200, "{}", r.text);
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "the failed renewal", |row| {
        row["status"] == "past_due"
    })
    .await;
    retries_until(&stripe, &sub, 4).await;
    await_stored(&m, &sub, "Stripe to give up", |row| {
        row["status"] == "unpaid"
    })
    .await;
    let (plan, _, own_period, ..) = row(&m, org, &sub).await;
    assert_eq!(
        (plan.as_str(), own_period),
        ("trial", false),
        "unpaid: the unsubscribed plan over the calendar month"
    );

    // With the declining card still the default: the unpaid one is ended, and the new one (charged at once,
    // `allow_incomplete`) waits `incomplete` for a payment, its first invoice open: 202 with the secret another
    // card confirms it with. No trial, and the org stays unsubscribed.
    let customer = customer_of(&m, org).await;
    let r = subscribe(&m, org, "plan_starter_m").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["status"], "incomplete", "{}", r.text);
    assert!(
        r.json["trialEndsAt"].is_null(),
        "no second trial: {}",
        r.text
    );
    assert!(
        r.json["clientSecret"]
            .as_str()
            .is_some_and(|s| s.contains("_secret_")),
        "{}",
        r.text
    );
    let incomplete = r.json["subscriptionId"].as_str().expect("id").to_owned();
    let all = stripe_subscriptions(&stripe, &customer).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all.iter()
            .filter(|s| s["status"] == "canceled" && s["id"] == sub.as_str())
            .count(),
        1,
        "{all:?}"
    );
    let (plan, _, own_period, ..) = row(&m, org, &incomplete).await;
    assert_eq!(
        (plan.as_str(), own_period),
        ("trial", false),
        "incomplete: unsubscribed"
    );

    // A working card pays that invoice (2.2); concurrent calls then all see the one subscription, without a trial.
    let r = set_card(&stripe, &m, org, GOOD_CARD).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let answers = join_all((0..6).map(|_| subscribe(&m, org, "plan_starter_m"))).await;
    for a in &answers {
        assert!(
            a.status == 200 || a.status == 409,
            "{} {}",
            a.status,
            a.text
        );
    }
    let r = subscribe(&m, org, "plan_starter_m").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "active", "{}", r.text);
    assert!(
        r.json["trialEndsAt"].is_null(),
        "no second trial: {}",
        r.text
    );
    let new = r.json["subscriptionId"].as_str().expect("id").to_owned();
    assert_ne!(new, sub);
    assert_eq!(new, incomplete, "the incomplete one, paid");
    assert!(r.json.get("clientSecret").is_none(), "{}", r.text);

    let all = stripe_subscriptions(&stripe, &customer).await;
    let open: Vec<&Value> = all.iter().filter(|s| s["status"] != "canceled").collect();
    assert_eq!(
        open.len(),
        1,
        "exactly one non-canceled subscription: {all:?}"
    );
    assert_eq!(open[0]["id"], new.as_str());
    assert!(open[0]["trial_end"].is_null(), "{}", open[0]);
    assert!(open[0]["trial_start"].is_null(), "{}", open[0]);
    assert_eq!(all.len(), 2, "{all:?}");

    await_stored(&m, &new, "the new subscription", |row| {
        row["status"] == "active"
    })
    .await;
    await_stored(&m, &sub, "the old one canceled", |row| {
        row["status"] == "canceled"
    })
    .await;
    assert_eq!(entitlements(&m, org).await["planCode"], "starter");
}

// === defect 4 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_without_a_card_ends_into_the_configured_state() {
    for (setting, ended) in [
        (None, "paused"),
        (Some("pause"), "paused"),
        (Some("cancel"), "canceled"),
    ] {
        let env: Vec<(&str, &str)> = setting
            .map(|s| vec![("TOLLGATE_TRIAL_END_WITHOUT_CARD", s)])
            .unwrap_or_default();
        let (stripe, m) = setup_with_env(50, None, &env).await;
        let org = "org_nocard";
        let sub = sign_up(&m, org).await;
        let s = stripe.get(&format!("/v1/subscriptions/{sub}")).await;
        assert_eq!(
            s["trial_settings"]["end_behavior"]["missing_payment_method"],
            setting.unwrap_or("pause"),
            "{s}"
        );
        let (plan, included, own_period, ..) = row(&m, org, &sub).await;
        assert_eq!((plan.as_str(), included, own_period), ("trial", 50, true));

        let ended_s = stripe.advance(&sub).await;
        assert_eq!(ended_s["status"], ended, "{ended_s}");
        await_stored(&m, &sub, "the trial's end", |row| row["status"] == ended).await;
        let (plan, _, own_period, _, cancel_at) = row(&m, org, &sub).await;
        assert_eq!(
            (plan.as_str(), own_period, cancel_at),
            ("trial", false, Value::Null),
            "{ended}: the unsubscribed plan over the calendar month, never the paid plan"
        );
        let invoices = stripe
            .get(&format!("/v1/invoices?subscription={sub}"))
            .await;
        assert!(
            invoices["data"]
                .as_array()
                .expect("invoices")
                .iter()
                .all(|i| i["status"] == "paid" && i["total"] == 0),
            "nothing was charged or left open: {invoices}"
        );

        // Subscribing again needs a card; then no second trial either way.
        let r = subscribe(&m, org, "plan_starter_m").await;
        assert_eq!(r.problem(409)["field"], "orgId", "{}", r.text);
        let r = set_card(&stripe, &m, org, GOOD_CARD).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = subscribe(&m, org, "plan_starter_m").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["status"], "active", "{}", r.text);
        let again = r.json["subscriptionId"].as_str().expect("id").to_owned();
        if ended == "paused" {
            assert_eq!(again, sub, "a paused subscription is resumed");
        } else {
            assert_ne!(again, sub);
            let s = stripe.get(&format!("/v1/subscriptions/{again}")).await;
            assert!(s["trial_end"].is_null(), "no second trial: {s}");
        }
        await_stored(&m, &again, "the paid subscription", |row| {
            row["status"] == "active"
        })
        .await;
        assert_eq!(entitlements(&m, org).await["planCode"], "starter");
    }
}

// === defect 9 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_card_while_past_due_pays_the_open_invoice() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let org = "org_pastdue";
    let sub = sign_up(&m, org).await;
    assert_eq!(set_card(&stripe, &m, org, FAILING_CARD).await.status, 200);
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "the failed renewal", |row| {
        row["status"] == "past_due"
    })
    .await;
    let open = stripe
        .get(&format!("/v1/invoices?subscription={sub}&status=open"))
        .await;
    let invoice = open["data"][0]["id"]
        .as_str()
        .expect("open invoice")
        .to_owned();

    // A second declining card: 402, and the invoice stays open.
    let r = set_card(&stripe, &m, org, FAILING_CARD).await;
    assert_eq!(r.status, 402, "{}", r.text);
    assert_eq!(
        stripe.get(&format!("/v1/invoices/{invoice}")).await["status"],
        "open"
    );

    let r = set_card(&stripe, &m, org, GOOD_CARD).await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    assert_eq!(
        stripe.get(&format!("/v1/invoices/{invoice}")).await["status"],
        "paid"
    );
    // Mirrored by the call itself, before any webhook.
    assert_eq!(crate::billing::stored(&m, &sub).await["status"], "active");
    assert_eq!(entitlements(&m, org).await["planCode"], "starter");
}

// === defect 11 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_before_the_renewal_lands_in_the_trial_period_stripe_stated() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let org = "org_period";
    let sub = sign_up(&m, org).await;
    let trial = crate::billing::stored(&m, &sub).await;
    assert_eq!(set_card(&stripe, &m, org, GOOD_CARD).await.status, 200);
    // What a client measured just before the renewal, sent after it (to the second, as clients send it).
    let before_renewal = wall_clock() - chrono::Duration::seconds(1);
    stripe.advance(&sub).await;
    let renewed = await_stored(&m, &sub, "the renewal", |row| row["status"] == "active").await;
    assert_ne!(
        renewed["current_period_start"],
        trial["current_period_start"]
    );

    let r = m
        .app
        .post(
            "/api/usage/record",
            Auth::Bearer(&owner(&m, org)),
            &json!({"orgId": org, "metric": "api_call", "value": 3,
                    "occurredAt": before_renewal.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "request_id": "req_before_renewal"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let org_id: i64 = sqlx::query_scalar("SELECT id FROM orgs WHERE clerk_org_id = $1")
        .bind(org)
        .fetch_one(&m.app.state.pg)
        .await
        .expect("org");
    let (start, end): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        wait::until(LONG, "the record's counter", || async {
            sqlx::query_as(
                "SELECT period_start, period_end FROM usage_counters
                  WHERE org_id = $1 AND metric = 'api_call' AND used = 3",
            )
            .bind(org_id)
            .fetch_optional(&m.app.state.pg)
            .await
            .ok()
            .flatten()
        })
        .await;
    let stated = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("instant"))
            .expect("rfc3339")
            .with_timezone(&chrono::Utc)
    };
    assert_eq!(
        (start, end),
        (
            stated(&trial["current_period_start"]),
            stated(&trial["current_period_end"])
        ),
        "the trial period Stripe stated, not one derived from the anchor"
    );
    // And a record from after Tollgate saw the renewal counts toward the renewed period (rounded up to the
    // second: truncated, it could fall before the moment the renewal was mirrored).
    let after = wall_clock() + chrono::Duration::seconds(1);
    let r = m
        .app
        .post(
            "/api/usage/record",
            Auth::Bearer(&owner(&m, org)),
            &json!({"orgId": org, "metric": "api_call", "value": 1,
                    "occurredAt": after.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "request_id": "req_after_renewal"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(entitlements(&m, org).await["used"], 1);
}

// === the walk ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_walk_from_trial_to_cancellation_follows_the_state_table() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    dunning(&stripe, &["1", "3", "5"], "cancel").await;
    let org = "org_walk";
    m.app.create_org(org).await;
    let token = owner(&m, org);
    let r = m
        .app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&token),
            &json!({"email": "billing@walk.test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Trial.
    let r = subscribe(&m, org, "plan_growth_m").await;
    assert_eq!(r.json["status"], "trialing", "{}", r.text);
    let sub = r.json["subscriptionId"].as_str().expect("id").to_owned();
    await_stored(&m, &sub, "the trial", |row| row["status"] == "trialing").await;
    assert_eq!(
        row(&m, org, &sub).await,
        ("trial".into(), 50, true, Value::Null, Value::Null)
    );

    // Card, then paid at the trial's end.
    assert_eq!(set_card(&stripe, &m, org, GOOD_CARD).await.status, 200);
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "paid", |row| row["status"] == "active").await;
    assert_eq!(
        row(&m, org, &sub).await,
        ("growth".into(), 1_000_000, true, Value::Null, Value::Null)
    );

    // Renewal.
    let before = crate::billing::stored(&m, &sub).await["current_period_start"].clone();
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "the renewal", |row| {
        row["current_period_start"] != before
    })
    .await;
    assert_eq!(
        row(&m, org, &sub).await,
        ("growth".into(), 1_000_000, true, Value::Null, Value::Null)
    );

    // A failing card; the next renewal fails: past_due keeps the paid plan while Stripe retries.
    assert_eq!(set_card(&stripe, &m, org, FAILING_CARD).await.status, 200);
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "past_due", |row| row["status"] == "past_due").await;
    assert_eq!(
        row(&m, org, &sub).await,
        ("growth".into(), 1_000_000, true, Value::Null, Value::Null)
    );
    retries_until(&stripe, &sub, 2).await;
    let failed = stripe
        .get(&format!("/v1/invoices?subscription={sub}&status=open"))
        .await;
    assert_eq!(failed["data"][0]["attempt_count"], 2, "{failed}");
    assert_eq!(crate::billing::stored(&m, &sub).await["status"], "past_due");

    // A card update pays: active again.
    let r = set_card(&stripe, &m, org, GOOD_CARD).await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    await_stored(&m, &sub, "paid again", |row| row["status"] == "active").await;
    assert_eq!(
        row(&m, org, &sub).await,
        ("growth".into(), 1_000_000, true, Value::Null, Value::Null)
    );

    // Downgrade at renewal.
    let r = m
        .app
        .post(
            "/api/plans/downgrade.schedule",
            Auth::Bearer(&token),
            &json!({"newPlanCode": "starter"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    await_stored(&m, &sub, "the pending downgrade", |row| {
        row["pending_plan_code"] == "starter"
    })
    .await;
    assert_eq!(
        row(&m, org, &sub).await,
        (
            "growth".into(),
            1_000_000,
            true,
            json!("starter"),
            Value::Null
        )
    );

    // Renewal at the new price.
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "the downgrade's renewal", |row| {
        row["plan_code"] == "starter" && row["pending_plan_code"].is_null()
    })
    .await;
    assert_eq!(
        row(&m, org, &sub).await,
        ("starter".into(), 100_000, true, Value::Null, Value::Null)
    );
    let s = stripe.get(&format!("/v1/subscriptions/{sub}")).await;
    let latest = stripe
        .get(&format!(
            "/v1/invoices/{}",
            s["latest_invoice"].as_str().expect("latest invoice")
        ))
        .await;
    assert_eq!(
        (latest["total"].as_i64(), latest["status"].as_str()),
        (Some(900), Some("paid")),
        "{latest}"
    );

    // Cancel at the period's end (as the portal or the Dashboard would: the downgrade's schedule, in its last
    // phase, is released first, since Stripe refuses cancellation changes on a scheduled subscription): cancelAt
    // shown, the plan kept.
    if let Some(schedule) = s["schedule"].as_str() {
        stripe
            .post(
                &format!("/v1/subscription_schedules/{schedule}/release"),
                &[],
            )
            .await;
    }
    stripe
        .post(
            &format!("/v1/subscriptions/{sub}"),
            &[("cancel_at_period_end", "true")],
        )
        .await;
    let stored = await_stored(&m, &sub, "the cancellation request", |row| {
        row["cancel_at_period_end"] == true
    })
    .await;
    let (plan, included, own, pending, cancel_at) = row(&m, org, &sub).await;
    assert_eq!(
        (plan.as_str(), included, own, pending),
        ("starter", 100_000, true, Value::Null)
    );
    let instant = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("instant")).expect("rfc3339")
    };
    assert_eq!(
        instant(&cancel_at),
        instant(&stored["current_period_end"]),
        "cancelAt is the period's end"
    );

    // Canceled: the unsubscribed plan over the calendar month.
    stripe.advance(&sub).await;
    await_stored(&m, &sub, "canceled", |row| row["status"] == "canceled").await;
    let (plan, _, own, pending, cancel_at) = row(&m, org, &sub).await;
    assert_eq!(
        (plan.as_str(), own, pending, cancel_at),
        ("trial", false, Value::Null, Value::Null)
    );
}

// === defects 2 and 9: an incomplete subscription (made in Stripe directly, its first payment declined) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_subscription_is_returned_and_a_new_card_pays_it() {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let org = "org_incomplete";
    let sub = sign_up(&m, org).await;
    // The trial ends early (canceled in the Dashboard); a subscription made there without a trial on a declining
    // card is `incomplete`.
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/subscriptions/{sub}", stripe.url))
        .bearer_auth(tollgate_e2e::stripe::SECRET_KEY)
        .send()
        .await
        .expect("cancel");
    assert!(r.status().is_success());
    await_stored(&m, &sub, "the cancellation", |row| {
        row["status"] == "canceled"
    })
    .await;
    assert_eq!(set_card(&stripe, &m, org, FAILING_CARD).await.status, 200);
    let customer = customer_of(&m, org).await;
    let price = stripe.get("/v1/prices?lookup_keys[]=plan_starter_m").await["data"][0]["id"]
        .as_str()
        .expect("price")
        .to_owned();
    let made = stripe
        .post(
            "/v1/subscriptions",
            &[
                ("customer", customer.as_str()),
                ("items[0][price]", price.as_str()),
                ("metadata[orgId]", org),
            ],
        )
        .await;
    assert_eq!(made["status"], "incomplete", "{made}");
    let incomplete = made["id"].as_str().expect("id").to_owned();
    await_stored(&m, &incomplete, "the incomplete subscription", |row| {
        row["status"] == "incomplete"
    })
    .await;
    let (plan, _, own_period, ..) = row(&m, org, &incomplete).await;
    assert_eq!(
        (plan.as_str(), own_period),
        ("trial", false),
        "unsubscribed"
    );

    // subscription.create returns it rather than opening a second one, with its open invoice's secret (another
    // card confirms it with Stripe.js).
    let r = subscribe(&m, org, "plan_starter_m").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(r.json["clientSecret"].is_string(), "{}", r.text);
    assert_eq!(
        (r.json["subscriptionId"].as_str(), r.json["status"].as_str()),
        (Some(incomplete.as_str()), Some("incomplete"))
    );
    // A working card pays its first invoice: active.
    let r = set_card(&stripe, &m, org, GOOD_CARD).await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    assert_eq!(
        crate::billing::stored(&m, &incomplete).await["status"],
        "active"
    );
    let all = stripe_subscriptions(&stripe, &customer).await;
    assert_eq!(
        all.iter().filter(|s| s["status"] != "canceled").count(),
        1,
        "{all:?}"
    );
    assert_eq!(entitlements(&m, org).await["planCode"], "starter");
}

// === issue 20 follow-up (defect 6): subscribing again with a card that needs 3-D Secure; the 23 h window ===

/// Stripe's test card that needs 3-D Secure on every payment.
const THREE_DS_CARD: &str = "4000002760003184";

/// An org whose trial is spent (its trialing subscription canceled in the Dashboard) and whose default card is now
/// `card`: the stack, the old subscription and the customer.
async fn trial_spent_with(org: &str, card: &str) -> (StripeEmulator, Metering, String, String) {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let sub = sign_up(&m, org).await;
    stripe.delete(&format!("/v1/subscriptions/{sub}")).await;
    await_stored(&m, &sub, "the cancellation", |row| {
        row["status"] == "canceled"
    })
    .await;
    let r = set_card(&stripe, &m, org, card).await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    let customer = customer_of(&m, org).await;
    (stripe, m, sub, customer)
}

/// 1.3's 202 for a subscription waiting for its first payment: its id and the client secret.
fn awaiting_payment(r: &tollgate_e2e::app::Resp) -> (String, String) {
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["status"], "incomplete", "{}", r.text);
    assert!(
        r.json["trialEndsAt"].is_null(),
        "no second trial: {}",
        r.text
    );
    let secret = r.json["clientSecret"]
        .as_str()
        .expect("clientSecret")
        .to_owned();
    assert!(secret.contains("_secret_"), "{secret}");
    (
        r.json["subscriptionId"].as_str().expect("id").to_owned(),
        secret,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_with_a_3ds_card_waits_for_the_customer_then_confirming_activates_the_paid_plan()
 {
    let org = "org_sca";
    let (stripe, m, old, customer) = trial_spent_with(org, THREE_DS_CARD).await;

    let r = subscribe(&m, org, "plan_starter_m").await;
    let (sub, secret) = awaiting_payment(&r);
    assert_ne!(sub, old);
    assert_eq!(
        crate::billing::stored(&m, &sub).await["status"],
        "incomplete"
    );
    // Nothing is paid: the org stays unsubscribed (the state table's `incomplete` row).
    let (plan, included, own_period, ..) = row(&m, org, &sub).await;
    assert_eq!(
        (plan.as_str(), included, own_period),
        ("trial", 50, false),
        "incomplete: unsubscribed"
    );
    let invoice = &stripe.get(&format!("/v1/subscriptions/{sub}")).await["latest_invoice"];
    let invoice = stripe
        .get(&format!(
            "/v1/invoices/{}",
            invoice.as_str().expect("invoice")
        ))
        .await;
    assert_eq!(invoice["status"], "open", "{invoice}");
    wait::until(
        LONG,
        "invoice.payment_action_required to be applied",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stripe_events WHERE event_type = 'invoice.payment_action_required'
                    AND status = 'applied'",
            )
            .fetch_one(&m.app.state.pg)
            .await
            .ok()?;
            (n == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        entitlements(&m, org).await["planCode"],
        "trial",
        "still unsubscribed after the webhook"
    );

    // Asked again meanwhile: the same subscription and the same secret, never a second one.
    let again = subscribe(&m, org, "plan_starter_m").await;
    assert_eq!(awaiting_payment(&again), (sub.clone(), secret.clone()));
    let all = stripe_subscriptions(&stripe, &customer).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all.iter().filter(|s| s["status"] != "canceled").count(),
        1,
        "{all:?}"
    );

    // The customer passes 3-D Secure (Stripe.js confirms the payment): invoice.paid makes it active through the
    // webhooks, and the paid plan's limits apply over its own period.
    let pi = secret.split("_secret_").next().expect("pi");
    stripe
        .post(&format!("/_test/payment_intents/{pi}/confirm"), &[])
        .await;
    await_stored(&m, &sub, "the paid first invoice", |row| {
        row["status"] == "active"
    })
    .await;
    let (plan, included, own_period, ..) = row(&m, org, &sub).await;
    assert_eq!(
        (plan.as_str(), included, own_period),
        ("starter", 100_000, true),
        "active: the paid plan's limits"
    );
    let r = subscribe(&m, org, "plan_starter_m").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.json["subscriptionId"].as_str(), r.json["status"].as_str()),
        (Some(sub.as_str()), Some("active"))
    );
    assert!(r.json.get("clientSecret").is_none(), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_subscription_unpaid_for_23_hours_expires_and_subscribing_again_makes_a_new_one_without_a_trial()
 {
    let org = "org_sca_expired";
    let (stripe, m, old, customer) = trial_spent_with(org, THREE_DS_CARD).await;
    let r = subscribe(&m, org, "plan_starter_m").await;
    let (sub, _) = awaiting_payment(&r);

    // Stripe's payment window: 23 h after creation, on the subscription's clock, the unpaid first invoice is voided
    // and the subscription `incomplete_expired` (final).
    let created = stripe.get(&format!("/v1/subscriptions/{sub}")).await["created"]
        .as_i64()
        .expect("created");
    let almost = (created + 23 * 3600 - 60).to_string();
    let s = stripe
        .post(
            &format!("/_test/subscriptions/{sub}/advance_clock"),
            &[("to", almost.as_str())],
        )
        .await;
    assert_eq!(s["status"], "incomplete", "{s}");
    let expiry = (created + 23 * 3600).to_string();
    let s = stripe
        .post(
            &format!("/_test/subscriptions/{sub}/advance_clock"),
            &[("to", expiry.as_str())],
        )
        .await;
    assert_eq!(s["status"], "incomplete_expired", "{s}");
    await_stored(&m, &sub, "the expiry", |row| {
        row["status"] == "incomplete_expired"
    })
    .await;
    let (plan, included, own_period, pending, cancel_at) = row(&m, org, &sub).await;
    assert_eq!(
        (plan.as_str(), included, own_period, pending, cancel_at),
        ("trial", 50, false, Value::Null, Value::Null),
        "incomplete_expired: unsubscribed"
    );

    // Subscribing again, now with a card that pays at once: a new subscription, without a trial, active.
    let r = set_card(&stripe, &m, org, GOOD_CARD).await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);
    let r = subscribe(&m, org, "plan_starter_m").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "active", "{}", r.text);
    assert!(
        r.json["trialEndsAt"].is_null(),
        "no second trial: {}",
        r.text
    );
    let new = r.json["subscriptionId"].as_str().expect("id").to_owned();
    assert!(new != sub && new != old, "{new}");
    let all = stripe_subscriptions(&stripe, &customer).await;
    let mut statuses: Vec<(&str, &str)> = all
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default(),
                s["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    statuses.sort_unstable();
    let mut expected = vec![
        (old.as_str(), "canceled"),
        (sub.as_str(), "incomplete_expired"),
        (new.as_str(), "active"),
    ];
    expected.sort_unstable();
    assert_eq!(statuses, expected);
    let fresh = all.iter().find(|s| s["id"] == new.as_str()).expect("new");
    assert!(fresh["trial_start"].is_null(), "{fresh}");
    let (plan, included, own_period, ..) = row(&m, org, &new).await;
    assert_eq!(
        (plan.as_str(), included, own_period),
        ("starter", 100_000, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_paused_subscription_with_a_3ds_card_answers_past_due_with_the_secret_and_confirming_activates_it()
 {
    let (stripe, m) = setup_with_env(50, None, &[]).await;
    let org = "org_sca_paused";
    let sub = sign_up(&m, org).await;
    let ended = stripe.advance(&sub).await;
    assert_eq!(ended["status"], "paused", "{ended}");
    await_stored(&m, &sub, "the trial's end", |row| row["status"] == "paused").await;
    let r = set_card(&stripe, &m, org, THREE_DS_CARD).await;
    assert_eq!(r.json, json!({"ok": true}), "{}", r.text);

    // Resume has no payment_behavior: Stripe resumes it `past_due` with the resumption invoice open, and 1.3
    // hands that invoice's secret to the customer.
    let r = subscribe(&m, org, "plan_starter_m").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        (r.json["subscriptionId"].as_str(), r.json["status"].as_str()),
        (Some(sub.as_str()), Some("past_due")),
        "{}",
        r.text
    );
    let secret = r.json["clientSecret"]
        .as_str()
        .expect("clientSecret")
        .to_owned();
    assert_eq!(
        stripe.get(&format!("/v1/subscriptions/{sub}")).await["status"],
        "past_due"
    );
    await_stored(&m, &sub, "the resumption", |row| {
        row["status"] == "past_due"
    })
    .await;

    let pi = secret.split("_secret_").next().expect("pi");
    stripe
        .post(&format!("/_test/payment_intents/{pi}/confirm"), &[])
        .await;
    await_stored(&m, &sub, "the paid resumption invoice", |row| {
        row["status"] == "active"
    })
    .await;
    let (plan, included, own_period, ..) = row(&m, org, &sub).await;
    assert_eq!(
        (plan.as_str(), included, own_period),
        ("starter", 100_000, true)
    );
}
