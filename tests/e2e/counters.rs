//! The counter store against real Redis and PostgreSQL: seeding, and resets that no flush can undo.

use futures_util::future::join_all;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tollgate_common::clock::{Clock, SystemClock};
use tollgate_common::domain::{Metric, Period};
use tollgate_common::store::counters::{self, Counter, CounterKey};
use tollgate_e2e::app::TestApp;

async fn setup() -> (TestApp, CounterKey) {
    let app = TestApp::start().await;
    app.create_org("org_counter").await;
    let org_id: i64 = sqlx::query_scalar("SELECT id FROM orgs WHERE clerk_org_id = 'org_counter'")
        .fetch_one(&app.state.pg)
        .await
        .unwrap();
    let key = CounterKey {
        org_id,
        metric: Metric::parse("api_call").unwrap(),
        period: Period::calendar_month(SystemClock.now()),
    };
    (app, key)
}

async fn durable(app: &TestApp, key: &CounterKey) -> (u64, u64) {
    let d = counters::load(&app.state.pg, key).await.unwrap();
    (d.used, d.epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_never_undone_by_a_stale_or_concurrent_flush() {
    let (app, key) = setup().await;
    let ns = app.namespace().to_owned();
    let counter = Counter::new(&ns, key.clone());
    let mut conn = app.state.redis.clone();
    for _ in 0..100 {
        let c = counters::consume(&mut conn, &app.state.pg, &counter, 1, 1000)
            .await
            .unwrap();
        assert!(c.allowed);
    }
    counters::flush(&mut conn, &app.state.pg, &ns, std::slice::from_ref(&key))
        .await
        .unwrap();
    assert_eq!(durable(&app, &key).await, (100, 0));

    // Flushers racing the reset, as proxy replicas would.
    let stop = Arc::new(AtomicBool::new(false));
    let flushers = (0..4).map(|_| {
        let (mut conn, pg, ns, key, stop) = (
            app.state.redis.clone(),
            app.state.pg.clone(),
            ns.clone(),
            key.clone(),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                counters::flush(&mut conn, &pg, &ns, std::slice::from_ref(&key))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    });
    let flushers = tokio::spawn(join_all(flushers));
    // A snapshot taken before the reset and written after it: the stale flush.
    let stale = counters::snapshot(&mut conn, &ns, std::slice::from_ref(&key))
        .await
        .unwrap();
    assert_eq!(stale[0].used, 100);
    let epoch = counters::reset(&mut conn, &app.state.pg, &ns, &key)
        .await
        .unwrap();
    assert_eq!(epoch, 1);
    counters::write(&app.state.pg, &stale).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds: Vec<_> = flushers.await.unwrap();
    assert!(
        rounds.iter().all(|r| *r.as_ref().unwrap() > 0),
        "every flusher ran"
    );

    assert_eq!(durable(&app, &key).await, (0, 1), "the reset stands");
    assert_eq!(
        counters::current(&mut conn, &app.state.pg, &ns, &key)
            .await
            .unwrap(),
        0
    );

    // Usage after the reset counts in the new epoch and flushes normally.
    for _ in 0..5 {
        counters::consume(&mut conn, &app.state.pg, &counter, 1, 1000)
            .await
            .unwrap();
    }
    counters::write(&app.state.pg, &stale).await.unwrap();
    counters::flush(&mut conn, &app.state.pg, &ns, std::slice::from_ref(&key))
        .await
        .unwrap();
    assert_eq!(durable(&app, &key).await, (5, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_counter_is_rebuilt_from_postgres_once_under_concurrency() {
    let (app, key) = setup().await;
    let ns = app.namespace().to_owned();
    let counter = Counter::new(&ns, key.clone());
    let mut conn = app.state.redis.clone();
    for _ in 0..40 {
        counters::consume(&mut conn, &app.state.pg, &counter, 1, 100)
            .await
            .unwrap();
    }
    counters::flush(&mut conn, &app.state.pg, &ns, std::slice::from_ref(&key))
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg(counter.redis_key())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    // 100 concurrent consumers all find the counter missing; it is seeded once from 40 and admits exactly 60.
    let calls = (0..100).map(|_| {
        let (mut conn, pg, counter) = (
            app.state.redis.clone(),
            app.state.pg.clone(),
            counter.clone(),
        );
        async move {
            counters::consume(&mut conn, &pg, &counter, 1, 100)
                .await
                .unwrap()
        }
    });
    let results = join_all(calls).await;
    let allowed = results.iter().filter(|c| c.allowed).count();
    assert_eq!(allowed, 60);
    assert_eq!(
        counters::current(&mut conn, &app.state.pg, &ns, &key)
            .await
            .unwrap(),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reports_are_idempotent_and_survive_a_rebuild() {
    use counters::Report;
    let (app, key) = setup().await;
    let ns = app.namespace().to_owned();
    let counter = Counter::new(&ns, key.clone());
    let mut conn = app.state.redis.clone();
    let pg = &app.state.pg;
    let fresh = Report {
        epoch: -1,
        consumed: 0,
        held: 0,
        acknowledged: 0,
        ..Report::default()
    };
    let first = counters::lease(&mut conn, pg, &counter, "r1", fresh, 1, 10, 100)
        .await
        .unwrap();
    assert!(first.admitted);
    assert_eq!(
        (first.granted, first.used, first.leased, first.epoch),
        (10, 0, 10, 0)
    );

    // The replica used 7 units; it reports (absolute numbers) and the reply is lost: it reports again.
    let report = Report {
        epoch: 0,
        consumed: 7,
        held: 3,
        acknowledged: 0,
        ..Report::default()
    };
    for _ in 0..2 {
        let s = counters::settle(&mut conn, pg, "r1", &[(&counter, report)])
            .await
            .unwrap();
        assert_eq!(s, vec![(true, 0)]);
    }
    assert_eq!(
        counters::live(&mut conn, pg, &ns, &key).await.unwrap(),
        (7, 3),
        "counted once"
    );

    // A lease call whose reply is lost holds units the replica never learns about; its next report (holding 0)
    // takes them back.
    let lost = Report {
        epoch: 0,
        consumed: 7,
        held: 0,
        acknowledged: 7,
        ..Report::default()
    };
    let granted = counters::lease(&mut conn, pg, &counter, "r1", lost, 1, 10, 100)
        .await
        .unwrap();
    assert_eq!(granted.leased, 10);
    let s = counters::settle(&mut conn, pg, "r1", &[(&counter, lost)])
        .await
        .unwrap();
    assert_eq!(s, vec![(true, 0)]);
    assert_eq!(
        counters::live(&mut conn, pg, &ns, &key).await.unwrap(),
        (7, 0),
        "no leaked lease"
    );

    // Redis loses the counter; PostgreSQL has the 7. The replica consumed 2 more meanwhile: 9 in all, not 16.
    counters::flush(&mut conn, pg, &ns, std::slice::from_ref(&key))
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg(counter.redis_key())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let after = Report {
        epoch: 0,
        consumed: 9,
        held: 0,
        acknowledged: 7,
        ..Report::default()
    };
    let s = counters::settle(&mut conn, pg, "r1", &[(&counter, after)])
        .await
        .unwrap();
    assert_eq!(s, vec![(true, 0)]);
    assert_eq!(
        counters::live(&mut conn, pg, &ns, &key).await.unwrap(),
        (9, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_reports_give_units_back_once_and_never_below_zero() {
    use counters::Report;
    let (app, key) = setup().await;
    let ns = app.namespace().to_owned();
    let counter = Counter::new(&ns, key.clone());
    let mut conn = app.state.redis.clone();
    let pg = &app.state.pg;
    let first = counters::lease(
        &mut conn,
        pg,
        &counter,
        "r1",
        Report {
            epoch: -1,
            ..Report::default()
        },
        1,
        10,
        100,
    )
    .await
    .unwrap();
    assert_eq!((first.granted, first.epoch), (10, 0));
    // 5 used and reported.
    let used = Report {
        epoch: 0,
        consumed: 5,
        held: 5,
        ..Report::default()
    };
    counters::settle(&mut conn, pg, "r1", &[(&counter, used)])
        .await
        .unwrap();
    assert_eq!(
        counters::live(&mut conn, pg, &ns, &key).await.unwrap(),
        (5, 5)
    );
    // Two of them were never answered upstream: given back, the units return to the replica's lease. The reply is
    // lost and the report repeated: counted once.
    let refunded = Report {
        epoch: 0,
        consumed: 5,
        held: 7,
        acknowledged: 5,
        refunded: 2,
        refunds_acknowledged: 0,
    };
    for _ in 0..2 {
        let s = counters::settle(&mut conn, pg, "r1", &[(&counter, refunded)])
            .await
            .unwrap();
        assert_eq!(s, vec![(true, 0)]);
    }
    assert_eq!(
        counters::live(&mut conn, pg, &ns, &key).await.unwrap(),
        (3, 7),
        "used - 2, leased + 2, once"
    );
    // A stale report (older totals) arriving late moves nothing backwards.
    let stale = Report {
        epoch: 0,
        consumed: 4,
        held: 7,
        acknowledged: 0,
        refunded: 1,
        refunds_acknowledged: 0,
    };
    counters::settle(&mut conn, pg, "r1", &[(&counter, stale)])
        .await
        .unwrap();
    assert_eq!(
        counters::live(&mut conn, pg, &ns, &key).await.unwrap(),
        (3, 7)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_leasing_concurrently_never_over_admit() {
    use counters::Report;
    let (app, key) = setup().await;
    let ns = app.namespace().to_owned();
    let counter = Counter::new(&ns, key.clone());
    // Eight replicas, each asking for blocks of up to 7 units until refused, against a limit of 100.
    let replicas = (0..8).map(|r| {
        let (mut conn, pg, counter) = (
            app.state.redis.clone(),
            app.state.pg.clone(),
            counter.clone(),
        );
        async move {
            let rid = format!("r{r}");
            let mut report = Report {
                epoch: -1,
                consumed: 0,
                held: 0,
                acknowledged: 0,
                ..Report::default()
            };
            let mut admitted = 0;
            loop {
                let reply = counters::lease(&mut conn, &pg, &counter, &rid, report, 1, 7, 100)
                    .await
                    .unwrap();
                if !reply.admitted {
                    return admitted;
                }
                // Use the whole block, then report it on the next call.
                admitted += reply.granted;
                let consumed = if report.epoch == reply.epoch {
                    report.consumed
                } else {
                    0
                } + reply.granted;
                report = Report {
                    epoch: reply.epoch,
                    consumed,
                    held: 0,
                    acknowledged: report.consumed,
                    ..Report::default()
                };
            }
        }
    });
    let total: u64 = join_all(replicas).await.into_iter().sum();
    assert_eq!(total, 100, "exactly the limit, across replicas");
}
