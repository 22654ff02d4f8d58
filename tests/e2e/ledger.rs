//! Issue 22: the invoice equals the ledger. Over three renewals on the emulator's clock, with overage in each
//! period and load from two proxies running across each renewal, every invoice's metered quantity equals
//! Tollgate's overage for its period, to the unit — also with webhooks delivered ten times and shuffled, with the
//! control plane killed (SIGKILL) in the middle of the flush at each renewal, with Stripe answering 500 and 429 for
//! a while, and with a cancellation at the period's end (the final invoice bills the last period).

use crate::billing::{paying, stored};
use serde_json::Value;
use std::time::Duration;
use tollgate_e2e::app::{ADMIN_TOKEN, ControlPlaneProcess};
use tollgate_e2e::metering::{Metering, Options, count, hammer};
use tollgate_e2e::proxy::ProxyProcess;
use tollgate_e2e::stripe::StripeEmulator;
use tollgate_e2e::wait;

const ORG: &str = "org_ledger";
/// The paid plan's included calls.
const INCLUDED: i64 = 40;
/// Long enough for a control plane killed while holding jobs to see them leased again.
const SETTLE: Duration = Duration::from_secs(90);

const PLANS: &str = r#"
trial_days = 14
unsubscribed = "trial"

[plans.trial]
included = { api_call = 1000, tokens = 100 }

[plans.metered]
price = "plan_starter_m"
included = { api_call = 40 }

[plans.metered.overage.api_call]
price = "api_call_overage"
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Plain,
    /// Every webhook of a renewal delivered 10 times, shuffled.
    DuplicatedWebhooks,
    /// The reporting control plane is killed while its report of the closed period is in flight.
    KilledMidFlush,
    /// Stripe answers 500 and 429 to meter events for a while at each renewal.
    StripeFailing,
    /// Canceled at the end of the third period, in Stripe (as from the Dashboard or the portal).
    CanceledAtPeriodEnd,
}

/// Where the control plane that reports runs: in the test process, or as a child process a test can kill.
enum ControlPlane<'a> {
    InProcess(&'a Metering),
    Process(ControlPlaneProcess),
}

impl ControlPlane<'_> {
    fn url(&self, path: &str) -> String {
        match self {
            Self::InProcess(m) => m.app.url(path),
            Self::Process(p) => p.url(path),
        }
    }
}

/// Waits until the stored subscription satisfies `done` (whichever control plane mirrored it).
async fn await_row(m: &Metering, sub: &str, what: &str, done: impl Fn(&Value) -> bool) {
    wait::until(SETTLE, what, || async {
        done(&stored(m, sub).await).then_some(())
    })
    .await;
}

/// `GET /api/usage/reconcile` for the org's `api_call` in `period`.
async fn reconcile(cp: &ControlPlane<'_>, period: &str) -> Value {
    let r = reqwest::Client::new()
        .get(cp.url(&format!(
            "/api/usage/reconcile?orgId={ORG}&periodKey={period}&metric=api_call"
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reconcile");
    assert_eq!(r.status(), 200);
    r.json().await.expect("reconcile body")
}

/// The ledger's count of the period starting at `start`, and its key.
async fn ledger(m: &Metering, start: &str) -> (i64, String) {
    sqlx::query_as(
        "SELECT c.used, c.period_key FROM usage_counters c JOIN orgs o ON o.id = c.org_id
          WHERE o.clerk_org_id = $1 AND c.metric = 'api_call' AND c.period_start = $2::timestamptz",
    )
    .bind(ORG)
    .bind(start)
    .fetch_optional(&m.app.state.pg)
    .await
    .expect("read usage_counters")
    .unwrap_or((0, String::new()))
}

/// The subscription's renewal invoice closing the period that ended at `end` (Unix seconds).
async fn invoice_closing(stripe: &StripeEmulator, sub: &str, end: i64) -> Value {
    let list = stripe
        .get(&format!("/v1/invoices?subscription={sub}&limit=100"))
        .await;
    list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["billing_reason"] == "subscription_cycle" && i["period_end"] == end)
        .cloned()
        .unwrap_or_else(|| panic!("no invoice closes the period ending at {end}: {list}"))
}

/// The metered quantity an invoice bills at `price`.
fn metered_quantity(invoice: &Value, price: &str) -> i64 {
    invoice["lines"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["pricing"]["price_details"]["price"] == price)
        .map(|l| l["quantity"].as_i64().unwrap_or(0))
        .sum()
}

fn unix(at: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(at.as_str().expect("a timestamp"))
        .expect("RFC 3339")
        .timestamp()
}

/// The admitted requests of a burst of `n` through both proxies with `clients` clients.
async fn burst(proxies: &[&ProxyProcess], key: &str, clients: usize, n: usize) -> i64 {
    let statuses = hammer(proxies, key, "/v1/items", clients, n).await;
    assert_eq!(
        count(&statuses, 200),
        n,
        "every request admitted (no bound)"
    );
    n as i64
}

/// The emulator with the plans' prices and the overage price (half a cent a call), the test plans billing against it
/// with `env` added to the control plane's settings, and the org paying for `metered`: the emulator, the set-up,
/// the overage price's id and the subscription's.
async fn paying_org(env: &[(&str, &str)]) -> (StripeEmulator, Metering, String, String) {
    let stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let (overage_price, _) = stripe
        .seed_overage_price("api_call_overage", "0.5", "api_call_overage")
        .await;
    let m = Metering::start(Options {
        plans: Some(PLANS.to_owned()),
        stripe: Some(&stripe),
        control_plane_env: tollgate_e2e::metering::owned_env(env),
        ..Options::default()
    })
    .await;
    let sub = paying(&stripe, &m, ORG).await;
    (stripe, m, overage_price, sub)
}

async fn run(variant: Variant) {
    // The plain run keeps the production coalescing interval (5 minutes): each period's remainder reaches Stripe
    // only because the renewal makes it due at once. The others report every 200 ms.
    let interval = (
        "TOLLGATE_METER_REPORT_INTERVAL_MS",
        if variant == Variant::Plain {
            "300000"
        } else {
            "200"
        },
    );
    let (stripe, mut m, overage_price, sub) = paying_org(&[interval]).await;
    let items = stripe.get(&format!("/v1/subscriptions/{sub}")).await["items"]["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        items
            .iter()
            .filter(|i| i["price"]["recurring"]["usage_type"] == "metered")
            .map(|i| i["price"]["id"].as_str())
            .collect::<Vec<_>>(),
        vec![Some(overage_price.as_str())],
        "the subscription bills the plan's overage price beside the plan's: {items:?}"
    );
    let (_, key) = m.app.create_key(ORG).await;

    // The killed variant reports from a child process, killed at each renewal and replaced on the same address
    // (so Stripe's webhooks keep reaching it).
    let mut cp = if variant == Variant::KilledMidFlush {
        m.app.stop();
        let process = m
            .replica()
            .stripe(&stripe)
            .env(interval.0, interval.1)
            .spawn(None)
            .await;
        stripe
            .register_webhook(&process.url("/api/webhooks/stripe.receive"))
            .await;
        ControlPlane::Process(process)
    } else {
        ControlPlane::InProcess(&m)
    };
    let (a, b) = (m.proxy(&[]).await, m.proxy(&[]).await);
    let mut admitted = 0_i64;
    let mut checked = 0;

    for renewal in 0..3 {
        let row = stored(&m, &sub).await;
        let (start, end) = (
            row["current_period_start"].clone(),
            row["current_period_end"].clone(),
        );
        // Overage in every period, a different amount each time.
        admitted += burst(&[&a, &b], &key, 16, 90 + 17 * renewal).await;

        let last = variant == Variant::CanceledAtPeriodEnd && renewal == 2;
        if last {
            stripe
                .post(
                    &format!("/v1/subscriptions/{sub}"),
                    &[("cancel_at_period_end", "true")],
                )
                .await;
            await_row(&m, &sub, "the cancellation to be mirrored", |row| {
                row["cancel_at_period_end"] == true
            })
            .await;
        }
        match variant {
            Variant::DuplicatedWebhooks => stripe.hold_webhooks().await,
            Variant::StripeFailing => {
                stripe
                    .fault("POST", "/v1/billing/meter_events", "api_error", 3, 0)
                    .await;
                stripe
                    .fault("POST", "/v1/billing/meter_events", "rate_limit", 3, 0)
                    .await;
            }
            // The event is recorded at once and answered 1.5 s later: a kill then cuts the report between
            // Stripe's acceptance and the commit that records it.
            Variant::KilledMidFlush => {
                stripe
                    .post("/_test/meter_delay", &[("answer_delay_ms", "1500")])
                    .await;
            }
            _ => {}
        }

        // The renewal, with load running across it from both proxies.
        // (Not after a cancellation: the org's usage then leaves the subscription's periods.)
        let during = {
            let (a, b, key) = (&a, &b, key.clone());
            async move {
                if last {
                    0
                } else {
                    burst(&[a, b], &key, 8, 40).await
                }
            }
        };
        let (during, _) = tokio::join!(during, stripe.advance(&sub));
        admitted += during;
        if variant == Variant::DuplicatedWebhooks {
            stripe.release_webhook_copies("shuffle", 0, 10).await;
        }
        if last {
            await_row(&m, &sub, "the cancellation at the period's end", |row| {
                row["status"] == "canceled"
            })
            .await;
        } else {
            await_row(&m, &sub, "the renewal to be mirrored", |row| {
                row["current_period_start"] == end
            })
            .await;
        }
        if let (Variant::KilledMidFlush, ControlPlane::Process(process)) = (variant, &mut cp) {
            // Killed while its report of the closed period is in flight; another takes its place.
            wait::until(
                SETTLE,
                "a report of the closed period in flight",
                || async {
                    let in_flight: Option<bool> = sqlx::query_scalar(
                        "SELECT pending_identifier IS NOT NULL FROM overage_reports
                      WHERE period_start = $1::timestamptz AND lease_until > now()",
                    )
                    .bind(start.as_str())
                    .fetch_optional(&m.app.state.pg)
                    .await
                    .expect("read overage_reports");
                    in_flight.filter(|f| *f).map(|_| ())
                },
            )
            .await;
            let addr = process.addr();
            process.kill();
            let replacement = m
                .replica()
                .stripe(&stripe)
                .env(interval.0, interval.1)
                .spawn(Some(addr))
                .await;
            cp = ControlPlane::Process(replacement);
        }

        // Every admitted request is in the ledger (the proxies' write-back has landed).
        wait::until(SETTLE, "the proxies' write-back", || async {
            (m.durable_used(ORG, "api_call").await == admitted).then_some(())
        })
        .await;
        let (used, period_key) = ledger(&m, start.as_str().expect("start")).await;
        let overage = (used - INCLUDED).max(0);
        assert!(overage > 0, "renewal {renewal}: overage in every period");
        wait::until(
            SETTLE,
            &format!("period {period_key}'s overage {overage} reported to Stripe"),
            || async {
                let r = reconcile(&cp, &period_key).await;
                (r["overage"] == overage
                    && r["reported"] == overage
                    && r["stripe"] == overage as f64)
                    .then_some(())
            },
        )
        .await;

        // The grace runs out: Stripe finalizes the draft with what its meter holds.
        let end = unix(&end);
        stripe
            .post(
                &format!("/_test/subscriptions/{sub}/advance_clock"),
                &[("to", &(end + 3600).to_string())],
            )
            .await;
        let invoice = invoice_closing(&stripe, &sub, end).await;
        assert_eq!(invoice["status"], "paid", "renewal {renewal}: {invoice}");
        assert_eq!(
            metered_quantity(&invoice, &overage_price),
            overage,
            "renewal {renewal} ({variant:?}): the invoice bills the ledger's overage for {period_key}, to the unit"
        );
        assert_eq!(
            invoice["lines"]["data"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["pricing"]["price_details"]["price"] == overage_price.as_str())
                .map(|l| l["amount"].as_i64()),
            Some(Some((overage + 1) / 2)),
            "at half a cent a call, rounded half up"
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "three renewals checked");
    drop(cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invoice_bills_the_ledgers_overage_over_three_renewals() {
    run(Variant::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invoice_equals_the_ledger_with_webhooks_duplicated_tenfold_and_shuffled() {
    run(Variant::DuplicatedWebhooks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invoice_equals_the_ledger_with_the_control_plane_killed_mid_flush() {
    run(Variant::KilledMidFlush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invoice_equals_the_ledger_while_stripe_answers_500_and_429() {
    run(Variant::StripeFailing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invoice_equals_the_ledger_through_a_cancellation_at_period_end() {
    run(Variant::CanceledAtPeriodEnd).await;
}

/// A change made in Stripe converges: an overage item removed (as from the Dashboard) is put back beside the plan's
/// price once its webhook is mirrored, so the overage the proxies admit is still invoiced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overage_item_removed_in_stripe_is_put_back() {
    let (stripe, _m, overage_price, sub) = paying_org(&[]).await; // the control plane runs while it converges
    let metered = |s: &Value| {
        s["items"]["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["price"]["id"] == overage_price.as_str())
            .filter_map(|i| i["id"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let before = metered(&stripe.get(&format!("/v1/subscriptions/{sub}")).await);
    assert_eq!(before.len(), 1, "one overage item");
    stripe
        .delete(&format!("/v1/subscription_items/{}", before[0]))
        .await;
    let after = wait::until(SETTLE, "the overage item to be put back", || async {
        let now = metered(&stripe.get(&format!("/v1/subscriptions/{sub}")).await);
        (now.len() == 1 && now != before).then_some(now)
    })
    .await;
    assert_ne!(after, before, "a new item, on the overage price");
}

/// A bench, not a test (`bash bench/overage-lateness.sh`): how late the last overage of a period reaches Stripe's
/// meter after the period ends, with the production coalescing interval (5 minutes), so that only the renewal's
/// `invoice.created` makes the closing period's remainder due. Each of `TOLLGATE_BENCH_RENEWALS` (default 10)
/// renewals runs load across the renewal; the lateness is from just before Stripe renews to the arrival of the
/// meter event that completes the closed period's overage. Prints one line per renewal and a summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a bench: bash bench/overage-lateness.sh"]
async fn bench_lateness_of_a_periods_last_overage() {
    let renewals: usize = std::env::var("TOLLGATE_BENCH_RENEWALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (stripe, m, _, sub) = paying_org(&[]).await;
    let customer: String =
        sqlx::query_scalar("SELECT stripe_customer_id FROM orgs WHERE clerk_org_id = $1")
            .bind(ORG)
            .fetch_one(&m.app.state.pg)
            .await
            .expect("customer");
    let (_, key) = m.app.create_key(ORG).await;
    let (a, b) = (m.proxy(&[]).await, m.proxy(&[]).await);
    let cp = ControlPlane::InProcess(&m);
    let now = || {
        use tollgate_common::clock::{Clock, SystemClock};
        SystemClock.now().timestamp_micros() as f64 / 1e6
    };
    let mut admitted = 0_i64;
    let mut lateness = Vec::new();
    for renewal in 0..renewals {
        let row = stored(&m, &sub).await;
        let (start, end) = (
            row["current_period_start"].clone(),
            row["current_period_end"].clone(),
        );
        admitted += burst(&[&a, &b], &key, 16, 80).await;
        let t0 = now();
        let during = {
            let (a, b, key) = (&a, &b, key.clone());
            async move { burst(&[a, b], &key, 8, 40).await }
        };
        let (during, _) = tokio::join!(during, stripe.advance(&sub));
        admitted += during;
        await_row(&m, &sub, "the renewal to be mirrored", |row| {
            row["current_period_start"] == end
        })
        .await;
        wait::until(SETTLE, "the proxies' write-back", || async {
            (m.durable_used(ORG, "api_call").await == admitted).then_some(())
        })
        .await;
        let (used, period_key) = ledger(&m, start.as_str().expect("start")).await;
        let overage = (used - INCLUDED).max(0);
        let (from, to) = (unix(&start), unix(&end));
        let last = wait::until(SETTLE, "the closed period's overage in Stripe", || async {
            let events = stripe.get("/_test/meter_events").await["events"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mine: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    e["customer"] == customer.as_str()
                        && e["timestamp"].as_i64().is_some_and(|t| from <= t && t < to)
                })
                .collect();
            let total: f64 = mine
                .iter()
                .filter_map(|e| e["value"].as_str()?.parse::<f64>().ok())
                .sum();
            (total == overage as f64).then(|| {
                mine.iter()
                    .filter_map(|e| e["arrived"].as_f64())
                    .fold(f64::MIN, f64::max)
            })
        })
        .await;
        let late = (last - t0).max(0.0);
        println!(
            "renewal {renewal}: period {period_key}, overage {overage}, last report {late:.3} s after the renewal"
        );
        lateness.push(late);
        let _ = reconcile(&cp, &period_key).await;
        stripe
            .post(
                &format!("/_test/subscriptions/{sub}/advance_clock"),
                &[("to", &(to + 3600).to_string())],
            )
            .await;
    }
    lateness.sort_by(f64::total_cmp);
    let median = lateness[lateness.len() / 2];
    println!(
        "lateness of a period's last overage over {renewals} renewals: min {:.3} s, median {median:.3} s, max {:.3} s \
         (grace before Stripe finalizes: 3600 s)",
        lateness[0],
        lateness[lateness.len() - 1]
    );
}
