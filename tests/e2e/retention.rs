//! Nothing grows without bound: 1.4 repeated queues nothing (also concurrently and while Stigg is down), the purge
//! deletes only old finished rows, in batches, on every replica; usage of a period past its retention is refused;
//! every Redis key a record writes expires.

use crate::billing::{LONG, owner, setup_with_env, sign_up};
use crate::stigg::drained;
use chrono::{Duration as ChronoDuration, Utc};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::watch;
use tollgate_common::clock::{Clock, SystemClock};
use tollgate_common::domain::{Metric, Period};
use tollgate_common::store::counters::{self, CounterKey};
use tollgate_control_plane::services::retention::{Table, USAGE_MARGIN};
use tollgate_control_plane::services::stigg::ops::Queued;
use tollgate_control_plane::stigg::StiggOp;
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::metering::Metering;
use tollgate_e2e::stigg::{FakeStigg, Mode};
use tollgate_e2e::{metric_value, wait};

// === stigg/provision ===

/// The org's outbox rows.
async fn outbox_rows(m: &Metering, org: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM stigg_outbox o JOIN orgs g ON g.id = o.org_id WHERE g.clerk_org_id = $1",
    )
    .bind(org)
    .fetch_one(&m.app.state.pg)
    .await
    .expect("read the outbox")
}

/// Rows of `org` that repeat the content of the standing row of their operation and subject before them: what
/// idempotent queueing never adds.
async fn repeated_rows(m: &Metering, org: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT operation, subject FROM (
            SELECT o.operation, o.subject, o.payload,
                   lag(o.payload) OVER (PARTITION BY o.operation, o.subject ORDER BY o.id) AS before
              FROM stigg_outbox o JOIN orgs g ON g.id = o.org_id
             WHERE g.clerk_org_id = $1 AND o.status <> 'superseded') r
          WHERE payload = before",
    )
    .bind(org)
    .fetch_all(&m.app.state.pg)
    .await
    .expect("read the outbox")
}

/// Waits until the sign-up's webhook events about `subscription` were processed and none is waiting, so the
/// billing path queues nothing more for it.
async fn sign_up_settled(m: &Metering, subscription: &str) {
    wait::until(LONG, "the sign-up's webhook events", || async {
        let (about, waiting): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE object_id = $1),
                    count(*) FILTER (WHERE status NOT IN ('applied', 'ignored'))
               FROM stripe_events",
        )
        .bind(subscription)
        .fetch_one(&m.app.state.pg)
        .await
        .ok()?;
        (about > 0 && waiting == 0).then_some(())
    })
    .await;
}

async fn customer_of(m: &Metering, org: &str) -> String {
    sqlx::query_scalar("SELECT stripe_customer_id FROM orgs WHERE clerk_org_id = $1")
        .bind(org)
        .fetch_one(&m.app.state.pg)
        .await
        .expect("read the org")
}

/// Calls 1.4 for `org` once, then `sequential` times one after another and `concurrent` times at once; returns
/// the answers of the repeats.
async fn provision_repeatedly(
    m: &Metering,
    org: &str,
    subscription: &str,
    sequential: usize,
    concurrent: usize,
) -> (tollgate_e2e::app::Resp, Vec<(u16, Value)>) {
    let token = owner(m, org);
    let body = json!({"stripeCustomerId": customer_of(m, org).await, "stripeSubscriptionId": subscription,
                      "planCode": "starter"});
    let provision = || {
        m.app
            .post("/api/stigg/provision", Auth::Bearer(&token), &body)
    };
    let first = provision().await;
    let mut repeats = Vec::new();
    for _ in 0..sequential {
        let r = provision().await;
        repeats.push((r.status, r.json));
    }
    for r in join_all((0..concurrent).map(|_| provision())).await {
        repeats.push((r.status, r.json));
    }
    (first, repeats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_again_queues_nothing_also_at_once_and_while_stigg_is_down() {
    let stigg = FakeStigg::start().await;
    // The per-org limit of stigg/provision would refuse most repeats; idempotency must hold without it.
    let (_stripe, m) =
        setup_with_env(50, Some(&stigg), &[("TOLLGATE_CP_STIGG_RATE_LIMIT", "off")]).await;

    // Stigg up: the first call delivers; the repeats find it all delivered with the same content.
    let org = "org_again";
    let sub = sign_up(&m, org).await;
    sign_up_settled(&m, &sub).await;
    drained(&m, LONG).await;
    let (first, repeats) = provision_repeatedly(&m, org, &sub, 3, 8).await;
    assert_eq!(
        (first.status, &first.json),
        (200, &json!({"provisioned": true})),
        "{}",
        first.text
    );
    let after_first = outbox_rows(&m, org).await;
    for r in &repeats {
        assert_eq!(*r, (200, json!({"provisioned": true})));
    }
    assert_eq!(
        outbox_rows(&m, org).await,
        after_first,
        "eleven more calls, three of them sequential and eight at once, added no row"
    );
    assert_eq!(repeated_rows(&m, org).await, []);

    // Stigg down: the first call's rows are failing; repeats find them waiting and add nothing, and say queued.
    stigg.set_mode(Mode::Down);
    let org = "org_again_down";
    let sub = sign_up(&m, org).await;
    sign_up_settled(&m, &sub).await;
    let (first, repeats) = provision_repeatedly(&m, org, &sub, 3, 8).await;
    assert_eq!(
        (first.status, &first.json),
        (202, &json!({"provisioned": false, "queued": true})),
        "{}",
        first.text
    );
    let after_first = outbox_rows(&m, org).await;
    for r in &repeats {
        assert_eq!(*r, (202, json!({"provisioned": false, "queued": true})));
    }
    assert_eq!(outbox_rows(&m, org).await, after_first);

    // Back up: the worker delivers what waited, and provisioning again still adds nothing.
    stigg.set_mode(Mode::Up);
    drained(&m, LONG).await;
    let (again, _) = provision_repeatedly(&m, org, &sub, 0, 0).await;
    assert_eq!(
        (again.status, &again.json),
        (200, &json!({"provisioned": true}))
    );
    assert_eq!(outbox_rows(&m, org).await, after_first);
    assert_eq!(repeated_rows(&m, org).await, []);
    assert_eq!(
        stigg.state().subscriptions[&sub].billing_id.as_deref(),
        Some(sub.as_str())
    );
}

/// A subscription update with this trial end, as the outbox stores it.
fn update(trial_end: &str) -> Queued {
    Queued {
        op: StiggOp::UpdateSubscription,
        subject: "sub_back".to_owned(),
        input: json!({"refId": "sub_back", "trialEndDate": trial_end}),
    }
}

async fn org_id(app: &TestApp, org: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM orgs WHERE clerk_org_id = $1")
        .bind(org)
        .fetch_one(&app.state.pg)
        .await
        .expect("the org")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_back_is_queued_again_and_racing_writers_queue_once() {
    // Without Stigg the rows are recorded as skipped, so nothing drains them while the test reads.
    let app = TestApp::start().await;
    app.create_org("org_back").await;
    let id = org_id(&app, "org_back").await;
    let shared = &app;
    let queue = |item: Queued| async move {
        let mut tx = shared.state.pg.begin().await.expect("begin");
        shared
            .state
            .stigg
            .queue(&mut tx, id, &[item])
            .await
            .expect("queue");
        tx.commit().await.expect("commit");
    };
    for trial_end in ["A", "A", "B", "B", "A", "A"] {
        queue(update(trial_end)).await;
    }
    let trial_ends = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT payload->>'trialEndDate' FROM stigg_outbox WHERE org_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&app.state.pg)
        .await
        .expect("read the outbox")
    };
    assert_eq!(trial_ends().await, ["A", "B", "A"], "A → B → A, each once");

    // Two writers queue C, neither seeing the other's row: the second waits on the first's dedup key and adds
    // nothing once the first commits.
    let mut first = app.state.pg.begin().await.expect("begin");
    app.state
        .stigg
        .queue(&mut first, id, &[update("C")])
        .await
        .expect("queue");
    let second = {
        let state = Arc::clone(&app.state);
        tokio::spawn(async move {
            let mut tx = state.pg.begin().await.expect("begin");
            state
                .stigg
                .queue(&mut tx, id, &[update("C")])
                .await
                .expect("queue");
            tx.commit().await.expect("commit");
        })
    };
    wait::until(LONG, "the second writer to wait on the first", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE 'INSERT INTO stigg_outbox%'",
        )
        .fetch_one(&app.state.pg)
        .await
        .ok()?;
        (waiting > 0).then_some(())
    })
    .await;
    first.commit().await.expect("commit");
    second.await.expect("the second writer");
    assert_eq!(trial_ends().await, ["A", "B", "A", "C"]);
}

// === the purge ===

/// Inserts, for `org_id`, rows the purge must delete and rows it must keep. Returns how many of each table it must
/// delete.
async fn old_and_new_rows(pg: &sqlx::PgPool, org_id: i64, scale: i64) -> [(Table, i64); 3] {
    let statements = [
        // Stripe events: applied and ignored 40 days ago go; applied yesterday, failed, pending and processing stay.
        "INSERT INTO stripe_events (event_id, event_type, payload, stripe_created, status, received_at, processed_at)
         SELECT 'evt_old_' || g, 'customer.updated', '{}', now() - interval '41 days',
                CASE WHEN g % 50 = 0 THEN 'ignored' ELSE 'applied' END,
                now() - interval '41 days', now() - interval '40 days'
           FROM generate_series(1, 250 * $2) g",
        "INSERT INTO stripe_events (event_id, event_type, payload, stripe_created, status, received_at, processed_at)
         SELECT 'evt_new_' || g, 'customer.updated', '{}', now(), 'applied', now() - interval '1 day',
                now() - interval '1 day' FROM generate_series(1, 3) g",
        "INSERT INTO stripe_events (event_id, event_type, payload, stripe_created, status, received_at, attempts)
         SELECT 'evt_waiting_' || g, 'customer.updated', '{}', now() - interval '100 days',
                (ARRAY['failed', 'pending', 'processing'])[g % 3 + 1], now() - interval '100 days', 7
           FROM generate_series(1, 6) g",
        // Stigg outbox: done, skipped and superseded 10 days ago go; done yesterday, failed and pending stay.
        "INSERT INTO stigg_outbox (org_id, operation, subject, payload, dedup_key, status, created_at, done_at)
         SELECT $1, 'update_subscription', 'sub_old', '{}', 'old-' || g,
                (ARRAY['done', 'skipped', 'superseded'])[g % 3 + 1],
                now() - interval '11 days', now() - interval '10 days'
           FROM generate_series(1, 130 * $2) g",
        "INSERT INTO stigg_outbox (org_id, operation, subject, payload, dedup_key, status, created_at, done_at)
         SELECT $1, 'update_subscription', 'sub_new', '{}', 'new-' || g, 'done', now() - interval '1 day',
                now() - interval '1 day' FROM generate_series(1, 3) g",
        "INSERT INTO stigg_outbox (org_id, operation, subject, payload, dedup_key, status, created_at, attempts)
         SELECT $1, 'import_customer', 'cus_stuck', '{}', 'stuck-' || g,
                CASE WHEN g % 2 = 0 THEN 'failed' ELSE 'pending' END, now() - interval '100 days', 40
           FROM generate_series(1, 4) g",
        // Usage events: of a period that ended 100 days ago go; of one that ended 10 days ago, or 35.5 days ago
        // (past the 35 days of records, inside the purge's day of margin), stay.
        "INSERT INTO usage_events (org_id, request_id, metric, value, period_key, occurred_at, period_end, response,
                                   created_at)
         SELECT $1, 'old-' || g, 'api_call', 1, '2026-01', now() - interval '120 days', now() - interval '100 days',
                '{}', now() - interval '120 days'
           FROM generate_series(1, 230 * $2) g",
        "INSERT INTO usage_events (org_id, request_id, metric, value, period_key, occurred_at, period_end, response)
         SELECT $1, 'kept-' || g, 'api_call', 1, '2026-01', now() - interval '40 days',
                now() - CASE WHEN g % 2 = 0 THEN interval '10 days' ELSE interval '35 days 12 hours' END, '{}'
           FROM generate_series(1, 7) g",
    ];
    for statement in statements {
        // Every statement takes the org and the scale; those that need neither still declare them.
        sqlx::query(&format!(
            "WITH params AS (SELECT $1::bigint AS org, $2::bigint AS scale) {statement}"
        ))
        .bind(org_id)
        .bind(scale)
        .execute(pg)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    [
        (Table::StripeEvents, 250 * scale),
        (Table::StiggOutbox, 130 * scale),
        (Table::UsageEvents, 230 * scale),
    ]
}

/// What the purge must leave: per table, the rows that are not old and finished.
async fn kept(pg: &sqlx::PgPool) -> (Vec<String>, Vec<String>, Vec<String>) {
    let events =
        sqlx::query_scalar("SELECT event_id || ':' || status FROM stripe_events ORDER BY event_id")
            .fetch_all(pg)
            .await
            .expect("read events");
    let outbox = sqlx::query_scalar(
        "SELECT subject || ':' || status FROM stigg_outbox ORDER BY subject, status, id",
    )
    .fetch_all(pg)
    .await
    .expect("read outbox");
    let usage = sqlx::query_scalar("SELECT request_id FROM usage_events ORDER BY request_id")
        .fetch_all(pg)
        .await
        .expect("read usage");
    (events, outbox, usage)
}

fn expected_kept() -> (Vec<String>, Vec<String>, Vec<String>) {
    let events = [
        "evt_new_1:applied",
        "evt_new_2:applied",
        "evt_new_3:applied",
        "evt_waiting_1:pending",
        "evt_waiting_2:processing",
        "evt_waiting_3:failed",
        "evt_waiting_4:pending",
        "evt_waiting_5:processing",
        "evt_waiting_6:failed",
    ];
    let outbox = [
        "cus_stuck:failed",
        "cus_stuck:failed",
        "cus_stuck:pending",
        "cus_stuck:pending",
        "sub_new:done",
        "sub_new:done",
        "sub_new:done",
    ];
    let usage = (1..=7).map(|g| format!("kept-{g}"));
    (
        events.map(str::to_owned).to_vec(),
        outbox.map(str::to_owned).to_vec(),
        usage.collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_deletes_only_old_finished_rows_in_batches() {
    // The default interval (10 min) keeps the job out of the way: the test drives the passes.
    let app = TestApp::builder()
        .env("TOLLGATE_RETENTION_PURGE_BATCH", "100")
        .start()
        .await;
    app.create_org("org_purge").await;
    let id = org_id(&app, "org_purge").await;
    let purge = old_and_new_rows(&app.state.pg, id, 1).await;

    let (_stop, mut stop) = watch::channel(false);
    let mut batches = Vec::new();
    for (table, _) in purge {
        batches.push(
            app.state
                .purger
                .purge_table(table, &mut stop)
                .await
                .expect("purge"),
        );
    }
    assert_eq!(
        batches,
        [vec![100, 100, 50], vec![100, 30], vec![100, 100, 30]],
        "at most 100 rows a statement, until a short batch"
    );
    assert_eq!(kept(&app.state.pg).await, expected_kept());
    let metrics = app.get("/metrics", Auth::None).await.text;
    for (table, deleted) in purge {
        assert_eq!(
            metric_value(
                &metrics,
                &format!(
                    r#"tollgate_cp_purged_rows_total{{table="{}"}}"#,
                    table.as_str()
                )
            ),
            u64::try_from(deleted).expect("count"),
            "{metrics}"
        );
    }

    // A second pass finds nothing more: the purge is idempotent.
    assert_eq!(app.state.purger.pass(&mut stop).await.expect("purge"), 0);
    assert_eq!(kept(&app.state.pg).await, expected_kept());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_purges_by_itself_and_each_row_is_deleted_once() {
    let a = TestApp::builder()
        .env("TOLLGATE_RETENTION_PURGE_BATCH", "50")
        .env("TOLLGATE_RETENTION_PURGE_INTERVAL_MS", "100")
        .start()
        .await;
    let b = TestApp::builder()
        .database(Arc::clone(&a.db))
        .env("TOLLGATE_REDIS_NAMESPACE", a.namespace())
        .env("TOLLGATE_RETENTION_PURGE_BATCH", "50")
        .env("TOLLGATE_RETENTION_PURGE_INTERVAL_MS", "100")
        .start()
        .await;
    a.create_org("org_replicas").await;
    let id = org_id(&a, "org_replicas").await;
    let purge = old_and_new_rows(&a.state.pg, id, 4).await;

    wait::until(LONG, "the replicas to purge the old rows", || async {
        (kept(&a.state.pg).await == expected_kept()).then_some(())
    })
    .await;
    // Each replica counts a batch once its statement returned: wait for the last one to be counted.
    let replicas = [&a, &b];
    let counted = |series: String| async move {
        let mut total = 0;
        for app in replicas {
            total += metric_value(&app.get("/metrics", Auth::None).await.text, &series);
        }
        total
    };
    for (table, deleted) in purge {
        let series = format!(
            r#"tollgate_cp_purged_rows_total{{table="{}"}}"#,
            table.as_str()
        );
        let deleted = u64::try_from(deleted).expect("count");
        let total = wait::until(LONG, "the replicas' counts", || async {
            let total = counted(series.clone()).await;
            (total >= deleted).then_some(total)
        })
        .await;
        assert_eq!(
            total, deleted,
            "{series}: the replicas' counts add up to the rows deleted"
        );
    }
}

// === usage records and Redis expiry ===

fn now() -> chrono::DateTime<Utc> {
    SystemClock.now()
}

fn record_at(at: chrono::DateTime<Utc>, request_id: &str, value: u64) -> Value {
    json!({"metric": "api_call", "value": value, "occurredAt": at.to_rfc3339(), "request_id": request_id})
}

async fn redis_ttl(app: &TestApp, key: &str) -> i64 {
    let mut redis = app.state.redis.clone();
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut redis)
        .await
        .expect("TTL")
}

/// Every Redis key of the org, with its TTL.
async fn ttls(app: &TestApp, org_id: i64) -> Vec<(String, i64)> {
    let mut redis = app.state.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{o{org_id}}}:*", app.namespace()))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    let mut out = Vec::new();
    for key in keys {
        let ttl = redis_ttl(app, &key).await;
        out.push((key, ttl));
    }
    out
}

fn api_call() -> Metric {
    Metric::parse("api_call").expect("metric")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_of_a_period_past_its_retention_is_refused_and_writes_nothing() {
    let app = TestApp::start().await;
    app.create_org("org_late").await;
    let (_, key) = app.create_key("org_late").await;
    let id = org_id(&app, "org_late").await;

    // Last month ended at most 31 days ago: still within the 35 days.
    let last_month = Period::calendar_month(now()).start - ChronoDuration::seconds(1);
    let r = app
        .post(
            "/api/usage/record",
            Auth::ApiKey(&key),
            &record_at(last_month, "last-month", 3),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A period that ended at least 69 days ago: refused, whatever its request id.
    let old = now() - ChronoDuration::days(100);
    let old_period = Period::calendar_month(old);
    for request_id in ["too-late", "last-month"] {
        let r = app
            .post(
                "/api/usage/record",
                Auth::ApiKey(&key),
                &record_at(old, request_id, 3),
            )
            .await;
        let problem = r.problem(422);
        assert_eq!(problem["field"], "occurredAt", "{}", r.text);
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&old_period.key().to_string())),
            "{}",
            r.text
        );
    }
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT request_id FROM usage_events WHERE org_id = $1")
            .bind(id)
            .fetch_all(&app.state.pg)
            .await
            .expect("read events");
    assert_eq!(stored, ["last-month"]);
    let old_counter = counters::redis_key(app.namespace(), id, &api_call(), &old_period);
    assert_eq!(redis_ttl(&app, &old_counter).await, -2, "no counter made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_a_record_into_an_old_period_writes_expires() {
    let app = TestApp::builder()
        .env("TOLLGATE_RETENTION_USAGE_RECORDS_DAYS", "400")
        .start()
        .await;
    app.create_org("org_old").await;
    let (_, key) = app.create_key("org_old").await;
    let id = org_id(&app, "org_old").await;
    let day = 86_400;

    // A period that ended at least 89 days ago: its counter's usual expiry (40 days after the period) has passed.
    let old = now() - ChronoDuration::days(120);
    let period = Period::calendar_month(old);
    let counter = counters::redis_key(app.namespace(), id, &api_call(), &period);
    for (request_id, used) in [("old-1", 5), ("old-2", 10)] {
        let r = app
            .post(
                "/api/usage/record",
                Auth::ApiKey(&key),
                &record_at(old, request_id, 5),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["used"], used, "{}", r.text);
        let ttl = redis_ttl(&app, &counter).await;
        assert!(ttl > day - 60 && ttl <= day, "counter TTL {ttl}");
    }

    // A counter left without an expiry (by an older version) gets one from the next record.
    let older = now() - ChronoDuration::days(200);
    let older_period = Period::calendar_month(older);
    let legacy = counters::redis_key(app.namespace(), id, &api_call(), &older_period);
    let mut redis = app.state.redis.clone();
    redis::cmd("HSET")
        .arg(&legacy)
        .arg("u")
        .arg(7)
        .arg("e")
        .arg(0)
        .query_async::<()>(&mut redis)
        .await
        .expect("HSET");
    assert_eq!(redis_ttl(&app, &legacy).await, -1);
    let r = app
        .post(
            "/api/usage/record",
            Auth::ApiKey(&key),
            &record_at(older, "older", 2),
        )
        .await;
    assert_eq!((r.status, &r.json["used"]), (200, &json!(9)), "{}", r.text);
    assert!(redis_ttl(&app, &legacy).await > 0);

    // History reads rebuild old periods' counters: they expire too.
    let r = app
        .get("/api/usage/history?periods=12", Auth::ApiKey(&key))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Committed events' markers are deleted (PostgreSQL counts their ids once from then on); nothing is left
    // without an expiry.
    let marker_of = |request_id: &str, period: Period| {
        counters::record_marker(
            app.namespace(),
            &CounterKey {
                org_id: id,
                metric: api_call(),
                period,
            },
            request_id,
        )
    };
    for (request_id, p) in [
        ("old-1", period),
        ("old-2", period),
        ("older", older_period),
    ] {
        let marker = marker_of(request_id, p);
        wait::until(LONG, "a committed event's marker to go", || async {
            (redis_ttl(&app, &marker).await == -2).then_some(())
        })
        .await;
    }
    let all = ttls(&app, id).await;
    assert!(all.len() >= 12, "{all:?}");
    for (key, ttl) in &all {
        assert!(*ttl > 0, "{key} has TTL {ttl}");
    }

    // A batch that counted in Redis and then failed to commit leaves its marker: it lasts until the period's
    // records are refused (400 days after its end, plus the purge's margin), so a retry then counts once.
    let remember = app.state.config.retention.usage_records + USAGE_MARGIN;
    let old_key = CounterKey {
        org_id: id,
        metric: api_call(),
        period,
    };
    let before = now();
    let mut redis = app.state.redis.clone();
    let recorded = counters::record(
        &mut redis,
        &app.state.pg,
        app.namespace(),
        &old_key,
        "lost-commit",
        1,
        remember,
    )
    .await
    .expect("record");
    assert!(recorded.fresh);
    let ttl = redis_ttl(&app, &marker_of("lost-commit", period)).await;
    let after = now();
    let until = period.end.timestamp() + i64::try_from(remember.as_secs()).expect("secs");
    assert!(
        (until - after.timestamp() - 1..=until - before.timestamp()).contains(&ttl),
        "marker TTL {ttl}, expected it to end at {until}"
    );
    let again = counters::record(
        &mut redis,
        &app.state.pg,
        app.namespace(),
        &old_key,
        "lost-commit",
        1,
        remember,
    )
    .await
    .expect("record");
    assert_eq!((again.fresh, again.used), (false, recorded.used));
}
