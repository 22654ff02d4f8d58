//! The Stigg mirror against the fake Stigg: what each billing change sends, in order, once in effect; Stigg down,
//! refusing one org, answering twice; two control planes; 1.4 provisioning.

use crate::billing::{LONG, await_stored, owner, paying, setup_with, sign_up};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tollgate_e2e::app::Auth;
use tollgate_e2e::metering::Metering;
use tollgate_e2e::stigg::{FakeStigg, Mode, StiggState};
use tollgate_e2e::{metric_value, wait};

/// The GraphQL root field the outbox's operation name stands for.
fn root_field(operation: &str) -> &'static str {
    match operation {
        "import_customer" => "importOneCustomer",
        "import_subscription" => "importSubscriptionsBulk",
        "update_subscription" => "updateOneSubscription",
        "cancel_subscription" => "cancelSubscription",
        other => panic!("unknown outbox operation {other}"),
    }
}

/// The org's Stripe customer.
async fn customer_of(m: &Metering, org: &str) -> String {
    sqlx::query_scalar("SELECT stripe_customer_id FROM orgs WHERE clerk_org_id = $1")
        .bind(org)
        .fetch_one(&m.app.state.pg)
        .await
        .expect("read the org")
}

/// Waits until the fake's state satisfies `done`.
async fn mirrored(stigg: &FakeStigg, what: &str, done: impl Fn(&StiggState) -> bool) -> StiggState {
    wait::until(LONG, what, || async {
        let state = stigg.state();
        done(&state).then_some(state)
    })
    .await
}

/// Outbox rows by status.
async fn outbox_statuses(m: &Metering) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status, count(*) FROM stigg_outbox GROUP BY status ORDER BY status")
        .fetch_all(&m.app.state.pg)
        .await
        .expect("read the outbox")
}

/// Waits until nothing is waiting in the outbox.
pub(crate) async fn drained(m: &Metering, timeout: Duration) {
    wait::until(timeout, "the outbox to drain", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stigg_outbox WHERE status IN ('pending', 'failed')",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (waiting == 0).then_some(())
    })
    .await;
}

/// The delivered operations of `org`, in outbox order: `(root field, input)`.
async fn delivered(m: &Metering, org: &str) -> Vec<(String, Value)> {
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT o.operation, o.payload FROM stigg_outbox o JOIN orgs g ON g.id = o.org_id
          WHERE g.clerk_org_id = $1 AND o.status = 'done' ORDER BY o.id",
    )
    .bind(org)
    .fetch_all(&m.app.state.pg)
    .await
    .expect("read the outbox");
    rows.into_iter()
        .map(|(op, input)| (root_field(&op).to_owned(), input))
        .collect()
}

/// What the fake applied for `org`, in arrival order: `(root field, input)`.
fn applied(stigg: &FakeStigg, org: &str) -> Vec<(String, Value)> {
    stigg
        .applied()
        .into_iter()
        .filter(|r| r.customer.as_deref() == Some(org))
        .map(|r| (r.root_field, r.input))
        .collect()
}

/// Only the mirror's four operations ever reached Stigg.
fn assert_only_mirror_operations(stigg: &FakeStigg) {
    for r in stigg.received() {
        assert!(
            [
                "importOneCustomer",
                "importSubscriptionsBulk",
                "updateOneSubscription",
                "cancelSubscription"
            ]
            .contains(&r.root_field.as_str()),
            "Stigg received {} ({})",
            r.root_field,
            r.outcome
        );
    }
}

async fn change_plan(m: &Metering, org: &str, endpoint: &str, plan: &str) {
    let r = m
        .app
        .post(
            endpoint,
            Auth::Bearer(&owner(m, org)),
            &json!({"newPlanCode": plan}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

async fn cancel_in_stripe(stripe: &tollgate_e2e::stripe::StripeEmulator, sub: &str) {
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/subscriptions/{sub}", stripe.url))
        .bearer_auth(tollgate_e2e::stripe::SECRET_KEY)
        .send()
        .await
        .expect("the emulator answers");
    assert!(r.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_follows_sign_up_upgrade_downgrade_and_cancel_in_order() {
    let stigg = FakeStigg::start().await;
    let (stripe, m) = setup_with(50, Some(&stigg)).await;
    let org = "org_mirror";
    let sub = paying(&stripe, &m, org).await;
    let customer = customer_of(&m, org).await;

    let state = mirrored(&stigg, "the sign-up", |s| {
        s.subscriptions
            .get(&sub)
            .is_some_and(|s| s.trial_end_date.is_some())
    })
    .await;
    let c = &state.customers[org];
    assert_eq!(
        (c.billing_id.as_deref(), c.email.as_deref()),
        (Some(customer.as_str()), Some("billing@mirror.test"))
    );
    let s = &state.subscriptions[&sub];
    assert_eq!(
        (
            s.customer_id.as_str(),
            s.billing_id.as_deref(),
            s.plan_id.as_str(),
            s.status.as_str(),
            s.billing_period.as_deref()
        ),
        (
            org,
            Some(sub.as_str()),
            "starter",
            "ACTIVE",
            Some("MONTHLY")
        )
    );

    change_plan(&m, org, "/api/plans/upgrade.now", "growth").await;
    mirrored(&stigg, "the upgrade", |s| {
        s.subscriptions[&sub].plan_id == "growth"
    })
    .await;

    change_plan(&m, org, "/api/plans/downgrade.schedule", "starter").await;
    let state = mirrored(&stigg, "the scheduled downgrade", |s| {
        s.subscriptions[&sub].additional_meta_data["pendingPlanCode"] == "starter"
    })
    .await;
    assert_eq!(
        state.subscriptions[&sub].plan_id, "growth",
        "not before the renewal"
    );

    stripe.advance(&sub).await;
    mirrored(&stigg, "the downgrade at renewal", |s| {
        let s = &s.subscriptions[&sub];
        s.plan_id == "starter" && s.additional_meta_data["pendingPlanCode"].is_null()
    })
    .await;

    cancel_in_stripe(&stripe, &sub).await;
    let state = mirrored(&stigg, "the cancellation", |s| {
        s.subscriptions[&sub].status == "CANCELED"
    })
    .await;
    assert_eq!(state.customers.len(), 1);
    assert_eq!(state.subscriptions.len(), 1);

    drained(&m, LONG).await;
    assert_only_mirror_operations(&stigg);
    assert_eq!(
        applied(&stigg, org),
        delivered(&m, org).await,
        "Stigg got the outbox's operations, each once, in order"
    );
    assert!(
        stigg.received().iter().all(|r| r.outcome == "ok"),
        "{:?}",
        stigg.received()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_lost_after_stigg_applied_them_are_delivered_again_without_a_second_effect() {
    let stigg = FakeStigg::start().await;
    let (_stripe, m) = setup_with(50, Some(&stigg)).await;
    // Every one of the sign-up's operations is applied by Stigg but its answer is lost, so each is delivered again.
    stigg.lose_answers(3);
    let org = "org_twice";
    let sub = sign_up(&m, org).await;
    let customer = customer_of(&m, org).await;
    mirrored(&stigg, "the sign-up", |s| {
        s.subscriptions.contains_key(&sub)
    })
    .await;
    drained(&m, LONG).await;

    let received = stigg.received();
    let lost = received.iter().filter(|r| r.outcome == "lost").count();
    assert_eq!(lost, 3, "{received:?}");
    assert!(
        received
            .iter()
            .any(|r| r.root_field == "importOneCustomer"
                && r.outcome == "DuplicatedEntityNotAllowed"),
        "the customer import was delivered again and found done: {received:?}"
    );
    let state = stigg.state();
    assert_eq!(state.customers.len(), 1);
    assert_eq!(
        state.customers[org].billing_id.as_deref(),
        Some(customer.as_str())
    );
    assert_eq!(state.subscriptions.len(), 1);
    let s = &state.subscriptions[&sub];
    assert_eq!(
        (s.plan_id.as_str(), s.status.as_str()),
        ("starter", "ACTIVE")
    );
    assert!(s.trial_end_date.is_some());
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM stigg_outbox WHERE status = 'done'")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(done, 3, "each operation is done once in the outbox");

    // Replaying every Stripe event changes nothing, so nothing more is queued for Stigg.
    let before = outbox_statuses(&m).await;
    let events: Vec<String> = sqlx::query_scalar("SELECT event_id FROM stripe_events")
        .fetch_all(&m.app.state.pg)
        .await
        .unwrap();
    assert!(!events.is_empty());
    let r = m
        .app
        .post(
            "/api/admin/webhooks.replay",
            Auth::Operator,
            &json!({"eventIds": events}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait::until(LONG, "the replayed events to be applied", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE status NOT IN ('applied', 'ignored')",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (waiting == 0).then_some(())
    })
    .await;
    assert_eq!(outbox_statuses(&m).await, before);
    assert_eq!(stigg.state(), state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_deliver_each_operation_once_and_in_order() {
    let stigg = FakeStigg::start().await;
    // Slow answers, so two replicas' workers would overlap on one org if they could.
    stigg.set_latency(Duration::from_millis(40));
    let (stripe, m) = setup_with(50, Some(&stigg)).await;
    let other = m.replica().stripe(&stripe).stigg(&stigg).start().await;
    let orgs = ["org_rep_a", "org_rep_b", "org_rep_c", "org_rep_d"];
    let subs = join_all(orgs.iter().map(|org| paying(&stripe, &m, org))).await;
    join_all(
        orgs.iter()
            .map(|org| change_plan(&m, org, "/api/plans/upgrade.now", "growth")),
    )
    .await;
    mirrored(&stigg, "every upgrade", |s| {
        subs.iter().all(|sub| {
            s.subscriptions
                .get(sub)
                .is_some_and(|s| s.plan_id == "growth")
        })
    })
    .await;
    drained(&m, LONG).await;

    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM stigg_outbox WHERE status = 'done'")
        .fetch_one(&m.app.state.pg)
        .await
        .unwrap();
    assert_eq!(
        stigg.applied().len() as i64,
        done,
        "each operation delivered once"
    );
    assert_eq!(
        stigg.received().len() as i64,
        done,
        "and nothing else was sent"
    );
    for org in orgs {
        assert_eq!(
            applied(&stigg, org),
            delivered(&m, org).await,
            "{org}: in order"
        );
    }
    assert_eq!(
        stigg.max_in_flight_per_customer(),
        1,
        "one delivery in flight per org"
    );
    // Both replicas delivered (each counts its own deliveries).
    for app in [&m.app, &other] {
        let metrics = app.get("/metrics", Auth::None).await.text;
        let ok: u64 = [
            "import_customer",
            "import_subscription",
            "update_subscription",
        ]
        .iter()
        .map(|op| {
            metric_value(
                &metrics,
                &format!(r#"tollgate_cp_stigg_deliveries_total{{operation="{op}",outcome="ok"}}"#),
            )
        })
        .sum();
        assert!(ok > 0, "a replica delivered nothing:\n{metrics}");
    }
}

/// `n` `quota/check` calls for `org`; returns their p99.
async fn quota_check_p99(m: &Metering, org: &str, n: usize) -> Duration {
    let token = owner(m, org);
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = m
            .app
            .post(
                "/api/quota/check",
                Auth::Bearer(&token),
                &json!({"metric": "api_call"}),
            )
            .await;
        took.push(started.elapsed());
        assert_eq!(r.status, 200, "{}", r.text);
    }
    took.sort();
    took[(n * 99 / 100).min(n - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stigg_down_everything_else_answers_and_the_outbox_drains_in_order_when_it_returns() {
    let stigg = FakeStigg::start().await;
    stigg.set_mode(Mode::Down);
    let (stripe, m) = setup_with(50, Some(&stigg)).await;
    let proxy = m.proxy(&[]).await;
    let org = "org_outage";

    // The whole sign-up, trial to paid, and a plan change, with Stigg down.
    let sub = paying(&stripe, &m, org).await;
    change_plan(&m, org, "/api/plans/upgrade.now", "growth").await;
    let (_, key) = m.app.create_key(org).await;
    let r = reqwest::Client::new()
        .get(format!("{}/v1/x", proxy.url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the proxy answers as before");
    let r = m
        .app
        .get("/api/me/entitlements.read", Auth::Bearer(&owner(&m, org)))
        .await;
    assert_eq!(r.json["planCode"], "growth", "{}", r.text);
    let down_p99 = quota_check_p99(&m, org, 200).await;

    // Nothing reached Stigg; the operator sees what waits and why.
    assert!(stigg.applied().is_empty());
    let stuck = wait::until(LONG, "failed attempts to be recorded", || async {
        let r = m.app.get("/api/admin/stigg.outbox", Auth::Operator).await;
        let items = r.json.as_array()?.clone();
        items
            .iter()
            .any(|i| i["attempts"].as_i64() >= Some(1))
            .then_some(items)
    })
    .await;
    assert!(stuck.iter().all(|i| i["orgId"] == org), "{stuck:?}");
    assert!(
        stuck.iter().any(|i| i["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("unavailable"))),
        "{stuck:?}"
    );
    let superseded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stigg_outbox WHERE status = 'superseded'")
            .fetch_one(&m.app.state.pg)
            .await
            .unwrap();
    assert!(
        superseded >= 1,
        "waiting updates of one subscription are coalesced"
    );
    let metrics = wait::until(LONG, "the outbox gauges", || async {
        let metrics = m.app.get("/metrics", Auth::None).await.text;
        (metric_value(&metrics, "tollgate_cp_queue_depth{kind=\"stigg_op\"}") > 0)
            .then_some(metrics)
    })
    .await;
    assert!(
        metric_value(
            &metrics,
            r#"tollgate_cp_stigg_deliveries_total{operation="import_customer",outcome="unavailable"}"#
        ) >= 1,
        "{metrics}"
    );

    // Stigg returns: the outbox drains by itself, in order, to the state Stigg would hold had it been up.
    stigg.set_mode(Mode::Up);
    drained(&m, Duration::from_secs(60)).await;
    let state = stigg.state();
    let customer = customer_of(&m, org).await;
    assert_eq!(
        state.customers[org].billing_id.as_deref(),
        Some(customer.as_str())
    );
    let s = &state.subscriptions[&sub];
    assert_eq!(
        (
            s.billing_id.as_deref(),
            s.plan_id.as_str(),
            s.status.as_str()
        ),
        (Some(sub.as_str()), "growth", "ACTIVE")
    );
    assert!(s.additional_meta_data["pendingPlanCode"].is_null());
    assert_eq!(applied(&stigg, org), delivered(&m, org).await);
    assert_only_mirror_operations(&stigg);
    let metrics = wait::until(LONG, "the depth gauge to fall", || async {
        let metrics = m.app.get("/metrics", Auth::None).await.text;
        (metric_value(&metrics, "tollgate_cp_queue_depth{kind=\"stigg_op\"}") == 0)
            .then_some(metrics)
    })
    .await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_cp_queue_oldest_seconds{kind=\"stigg_op\"}"
        ),
        0
    );

    let up_p99 = quota_check_p99(&m, org, 200).await;
    // Measured, not asserted (timings here are noisy); bench/stigg.sh measures it under load.
    eprintln!("quota/check p99: {down_p99:?} with Stigg down, {up_p99:?} with Stigg up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphql_error_for_one_org_holds_back_only_that_org() {
    let stigg = FakeStigg::start().await;
    stigg.refuse("org_refused", "FailedToImportCustomer");
    let (_stripe, m) = setup_with(50, Some(&stigg)).await;
    let refused = sign_up(&m, "org_refused").await;
    let free = sign_up(&m, "org_free").await;
    mirrored(&stigg, "the other org's subscription", |s| {
        s.subscriptions.contains_key(&free)
    })
    .await;
    // The other org's later operations (its subscription's update) drain too, while the refused org's queue
    // stays put behind its head.
    let stuck = wait::until(
        LONG,
        "the refusal to be recorded and the other org's outbox to drain",
        || async {
            let r = m
                .app
                .get("/api/admin/stigg.outbox?limit=10", Auth::Operator)
                .await;
            let items = r.json.as_array()?.clone();
            let refused = items.iter().any(|i| {
                i["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("refused by the test"))
            });
            let others_drained = items.iter().all(|i| i["orgId"] == "org_refused");
            (refused && others_drained).then_some(items)
        },
    )
    .await;
    assert_eq!(
        stuck[0]["operation"], "import_customer",
        "its head: {stuck:?}"
    );
    assert!(
        !stigg.state().customers.contains_key("org_refused"),
        "nothing of the refused org was applied"
    );
    assert!(
        stigg
            .received()
            .iter()
            .filter(|r| r.customer.as_deref() == Some("org_refused"))
            .all(|r| r.root_field == "importOneCustomer"),
        "the org's later operations wait behind its head"
    );

    // Fixed on Stigg's side; the operator re-queues and the org catches up at once, in order.
    stigg.accept("org_refused");
    let ids: Vec<i64> = stuck.iter().filter_map(|i| i["id"].as_i64()).collect();
    let r = m
        .app
        .post(
            "/api/admin/stigg.requeue",
            Auth::Operator,
            &json!({"ids": ids.iter().copied().chain([987_654_321]).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["requeued"], ids.len());
    assert_eq!(r.json["unknown"], json!([987_654_321]));
    mirrored(&stigg, "the refused org to catch up", |s| {
        s.subscriptions.contains_key(&refused)
    })
    .await;
    drained(&m, LONG).await;
    assert_eq!(
        applied(&stigg, "org_refused"),
        delivered(&m, "org_refused").await
    );

    // The operator endpoints are the operator's, and say what is wrong with bad input.
    let token = owner(&m, "org_free");
    let r = m
        .app
        .get("/api/admin/stigg.outbox", Auth::Bearer(&token))
        .await;
    r.problem(403);
    let r = m
        .app
        .get("/api/admin/stigg.outbox?limit=0", Auth::Operator)
        .await;
    assert_eq!(r.problem(422)["field"], "limit");
    let r = m
        .app
        .post(
            "/api/admin/stigg.requeue",
            Auth::Operator,
            &json!({"ids": []}),
        )
        .await;
    assert_eq!(r.problem(422)["field"], "ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_checks_the_ids_and_answers_as_stigg_does() {
    let stigg = FakeStigg::start().await;
    let (_stripe, m) = setup_with(50, Some(&stigg)).await;
    let org = "org_prov";
    let sub = sign_up(&m, org).await;
    let other_sub = sign_up(&m, "org_prov_other").await;
    let customer = customer_of(&m, org).await;
    let other_customer = customer_of(&m, "org_prov_other").await;
    let token = owner(&m, org);
    let provision = |customer: &str, subscription: &str, plan: &str| json!({"stripeCustomerId": customer, "stripeSubscriptionId": subscription, "planCode": plan});

    let r = m
        .app
        .post(
            "/api/stigg/provision",
            Auth::Bearer(&token),
            &provision(&customer, &sub, "starter"),
        )
        .await;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"provisioned": true})),
        "{}",
        r.text
    );
    let state = stigg.state();
    assert_eq!(
        state.customers[org].billing_id.as_deref(),
        Some(customer.as_str())
    );
    assert_eq!(state.subscriptions[&sub].plan_id, "starter");

    for (body, field) in [
        (
            provision(&other_customer, &sub, "starter"),
            "stripeCustomerId",
        ),
        (
            provision(&customer, &other_sub, "starter"),
            "stripeSubscriptionId",
        ),
        (
            provision(&customer, "sub_nope", "starter"),
            "stripeSubscriptionId",
        ),
        (provision(&customer, &sub, "growth"), "planCode"),
        (provision(&customer, &sub, "platinum"), "planCode"),
        (
            json!({"stripeCustomerId": customer, "planCode": "starter"}),
            "stripeSubscriptionId",
        ),
    ] {
        let r = m
            .app
            .post("/api/stigg/provision", Auth::Bearer(&token), &body)
            .await;
        assert_eq!(r.problem(422)["field"], field, "{body}");
    }
    let r = m
        .app
        .post(
            "/api/stigg/provision",
            Auth::Operator,
            &json!({"orgId": "org_nobody", "stripeCustomerId": customer,
                    "stripeSubscriptionId": sub, "planCode": "starter"}),
        )
        .await;
    assert_eq!(r.problem(404)["field"], "orgId");

    // Stigg unreachable: queued, 202, and the worker finishes it.
    stigg.set_mode(Mode::Down);
    let r = m
        .app
        .post(
            "/api/stigg/provision",
            Auth::Operator,
            &json!({"orgId": "org_prov_other", "stripeCustomerId": other_customer,
                    "stripeSubscriptionId": other_sub, "planCode": "starter"}),
        )
        .await;
    assert_eq!(
        (r.status, &r.json),
        (202, &json!({"provisioned": false, "queued": true})),
        "{}",
        r.text
    );
    stigg.set_mode(Mode::Up);
    drained(&m, Duration::from_secs(60)).await;
    assert_eq!(
        stigg.state().subscriptions[&other_sub]
            .billing_id
            .as_deref(),
        Some(other_sub.as_str())
    );
    assert_only_mirror_operations(&stigg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stigg_operations_are_recorded_as_skipped_and_nothing_fails() {
    let (_stripe, m) = setup_with(50, None).await;
    let org = "org_nostigg";
    let sub = sign_up(&m, org).await;
    let customer = customer_of(&m, org).await;
    let r = m
        .app
        .post(
            "/api/stigg/provision",
            Auth::Bearer(&owner(&m, org)),
            &json!({"stripeCustomerId": customer, "stripeSubscriptionId": sub, "planCode": "starter"}),
        )
        .await;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"provisioned": false, "skipped": true})),
        "{}",
        r.text
    );
    await_stored(&m, &sub, "the trial", |row| row["status"] == "trialing").await;
    let statuses = outbox_statuses(&m).await;
    assert!(
        statuses.len() == 1 && statuses[0].0 == "skipped" && statuses[0].1 >= 4,
        "{statuses:?}"
    );
    let metrics = m.app.get("/metrics", Auth::None).await.text;
    assert!(
        metric_value(
            &metrics,
            r#"tollgate_cp_stigg_deliveries_total{operation="import_customer",outcome="skipped"}"#
        ) >= 2,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "tollgate_cp_queue_depth{kind=\"stigg_op\"}"),
        0
    );
}

/// Issue 22's one queue: a job that keeps failing ends `dead` after `TOLLGATE_QUEUE_MAX_ATTEMPTS` (never tried
/// again; the org's later jobs go on), is counted and listed by the queue's own operator view, and a replay runs it
/// once more, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_dies_is_listed_and_replays_in_order() {
    let stigg = FakeStigg::start().await;
    stigg.refuse("org_dead", "FailedToImportCustomer");
    let (_stripe, m) =
        crate::billing::setup_with_env(50, Some(&stigg), &[("TOLLGATE_QUEUE_MAX_ATTEMPTS", "2")])
            .await;
    let subscription = sign_up(&m, "org_dead").await;
    // Every operation of the org is refused: each dies after two attempts, and the next one goes on.
    let dead = wait::until(LONG, "the org's operations to die", || async {
        let r = m
            .app
            .get(
                "/api/admin/jobs.list?kind=stigg_op&status=dead",
                Auth::Operator,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let jobs = r.json.as_array()?.clone();
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stigg_outbox WHERE status IN ('pending', 'failed')",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (jobs.len() >= 2 && waiting == 0).then_some(jobs)
    })
    .await;
    for job in &dead {
        assert_eq!(job["kind"], "stigg_op");
        assert_eq!(job["attempts"], 2, "{job}");
        assert!(
            job["lastError"]
                .as_str()
                .is_some_and(|e| e.starts_with("stigg refused")),
            "{job}"
        );
    }
    // Each dead job was tried exactly twice: one retry and one last failure each, and nothing more (read until the
    // counters, the gauge and the table agree: more of the org's operations may still be arriving and dying).
    wait::until(LONG, "every failure to be counted", || async {
        let metrics = m.app.get("/metrics", Auth::None).await.text;
        let attempts = |outcome: &str| {
            metric_value(
                &metrics,
                &format!(
                    "tollgate_cp_queue_attempts_total{{kind=\"stigg_op\",outcome=\"{outcome}\"}}"
                ),
            )
        };
        let (dead_rows, waiting): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'dead'),
                    count(*) FILTER (WHERE status IN ('pending', 'failed'))
               FROM stigg_outbox",
        )
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        let n = u64::try_from(dead_rows).ok()?;
        (waiting == 0
            && attempts("retry") == n
            && attempts("dead") == n
            && metric_value(&metrics, "tollgate_cp_queue_dead{kind=\"stigg_op\"}") == n)
            .then_some(())
    })
    .await;
    let dead = m
        .app
        .get(
            "/api/admin/jobs.list?kind=stigg_op&status=dead",
            Auth::Operator,
        )
        .await
        .json
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Fixed on Stigg's side: the operator replays them, oldest first, and the org's mirror catches up in order.
    stigg.accept("org_dead");
    let mut ids: Vec<String> = dead
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort_by_key(|id| id.parse::<i64>().unwrap_or(i64::MAX));
    let r = m
        .app
        .post(
            "/api/admin/jobs.replay",
            Auth::Operator,
            &json!({"kind": "stigg_op", "ids": ids.iter().cloned().chain(["999999".to_owned()]).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["replayed"].as_array().map(Vec::len), Some(ids.len()));
    assert_eq!(r.json["skipped"], json!(["999999"]));
    mirrored(&stigg, "the org's subscription after the replay", |s| {
        s.subscriptions.contains_key(&subscription)
    })
    .await;
    drained(&m, LONG).await;
    assert_eq!(applied(&stigg, "org_dead"), delivered(&m, "org_dead").await);

    // The queue's operator view checks its input.
    let r = m
        .app
        .get("/api/admin/jobs.list?kind=nope", Auth::Operator)
        .await;
    r.problem(422);
    let r = m
        .app
        .post(
            "/api/admin/jobs.replay",
            Auth::Operator,
            &json!({"kind": "stripe_event", "ids": []}),
        )
        .await;
    assert_eq!(r.problem(422)["field"], "ids");
    let r = m
        .app
        .get(
            "/api/admin/jobs.list?kind=stigg_op",
            Auth::Bearer(&owner(&m, "org_dead")),
        )
        .await;
    r.problem(403);
}
