//! A webhook load generator for `bench/webhooks.sh`: sends unique, correctly signed Stripe events to the control
//! plane's intake as fast as `--concurrency` connections allow for `--seconds`, and prints one JSON line with the
//! count, the rate and latency percentiles.
//!
//! ```text
//! webhook-load --url http://127.0.0.1:8080/api/webhooks/stripe.receive --secret whsec_… \
//!              --subscriptions sub_a,sub_b --seconds 8 --concurrency 32 [--prefix run1] [--rate 500]
//! ```
//!
//! Without `--rate` every connection sends its next event as soon as the last is answered (a flood); with it the
//! connections together send at most that many events per second, evenly spaced.
//!
//! Events are `customer.subscription.updated` for the given subscriptions in turn, so processing them reads real
//! objects back from Stripe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tollgate_common::clock::{Clock, SystemClock};
use tollgate_control_plane::stripe::signature;

struct Args {
    url: String,
    secret: String,
    subscriptions: Vec<String>,
    seconds: u64,
    concurrency: usize,
    prefix: String,
    /// Events per second across all connections; 0: as fast as answered.
    rate: f64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        secret: String::new(),
        subscriptions: Vec::new(),
        seconds: 8,
        concurrency: 32,
        prefix: format!("{:x}", SystemClock.now().timestamp()),
        rate: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag}: needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = value,
            "--secret" => a.secret = value,
            "--subscriptions" => a.subscriptions = value.split(',').map(str::to_owned).collect(),
            "--seconds" => a.seconds = value.parse().map_err(|_| "--seconds: a number")?,
            "--concurrency" => {
                a.concurrency = value.parse().map_err(|_| "--concurrency: a number")?
            }
            "--prefix" => a.prefix = value,
            "--rate" => {
                a.rate = value
                    .parse()
                    .map_err(|_| "--rate: a number of events per second")?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.url.is_empty() || a.secret.is_empty() || a.subscriptions.is_empty() {
        return Err("--url, --secret and --subscriptions are required".to_owned());
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), String> {
    let a = Arc::new(args()?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (a, http, next, errors) = (Arc::clone(&a), http.clone(), Arc::clone(&next), Arc::clone(&errors));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut pace = (a.rate > 0.0).then(|| {
                    let mut every = tokio::time::interval(Duration::from_secs_f64(a.concurrency as f64 / a.rate));
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    every
                });
                while Instant::now() < deadline {
                    if let Some(pace) = pace.as_mut() {
                        pace.tick().await;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let sub = &a.subscriptions[(n as usize) % a.subscriptions.len()];
                    let now = SystemClock.now().timestamp();
                    let body = format!(
                        r#"{{"id":"evt_bench_{}_{n}","object":"event","api_version":"2026-09-30","created":{now},"livemode":false,"pending_webhooks":1,"request":{{"id":null,"idempotency_key":null}},"type":"customer.subscription.updated","data":{{"object":{{"id":"{sub}","object":"subscription"}}}}}}"#,
                        a.prefix
                    );
                    let header = signature::sign(body.as_bytes(), &a.secret, now);
                    let t = Instant::now();
                    let ok = http
                        .post(&a.url)
                        .header("content-type", "application/json")
                        .header("stripe-signature", header)
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().as_u16() == 202);
                    latencies.push(t.elapsed());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    // This process's own CPU (user + system, in clock ticks of 10 ms), so a bench on a shared box can tell it apart.
    let cpu_ms = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<u64> = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect();
            Some(fields.iter().sum::<u64>() * 10)
        })
        .unwrap_or(0);
    println!(
        r#"{{"sent":{},"errors":{},"seconds":{elapsed:.2},"per_second":{:.0},"p50_ms":{:.2},"p99_ms":{:.2},"cpu_ms":{cpu_ms}}}"#,
        all.len(),
        errors.load(Ordering::Relaxed),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
