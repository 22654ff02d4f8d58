//! Issue 22: usage alerts — each threshold announced once per (org, metric, period, threshold), by whichever proxy
//! sees the crossing first, delivered to the org's endpoint signed per Standard Webhooks (verified with the
//! `standardwebhooks` library from PyPI), re-armed by a reset; and the endpoint URL is checked as hostile input.

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::metering::{Metering, Options, count, hammer};
use tollgate_e2e::proxy::ProxyProcess;
use tollgate_e2e::{metric_value, wait};

const LONG: Duration = Duration::from_secs(30);

/// The deliveries a receiver got: headers and body.
type Got = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A customer's endpoint: records every delivery (headers and body) and answers 200.
struct Receiver {
    url: String,
    got: Got,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let got: Got = Arc::default();
        let router = axum::Router::new()
            .route(
                "/hooks",
                axum::routing::post(
                    |State(got): State<Got>, headers: HeaderMap, body: String| async move {
                        got.lock().expect("lock").push((headers, body));
                        "ok"
                    },
                ),
            )
            .with_state(Arc::clone(&got));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url: format!("http://{addr}/hooks"),
            got,
            server,
        }
    }

    fn deliveries(&self) -> Vec<(HeaderMap, String)> {
        self.got.lock().expect("lock").clone()
    }

    async fn await_count(&self, n: usize) -> Vec<(HeaderMap, String)> {
        wait::until(LONG, &format!("{n} deliveries"), || async {
            let got = self.deliveries();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn set_endpoint(app: &TestApp, org: &str, url: &str) -> String {
    let r = app
        .post(
            "/api/webhooks/endpoints.set",
            Auth::Operator,
            &json!({"orgId": org, "url": url, "events": ["usage.threshold.crossed", "usage.bound.reached"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json["endpointId"]
            .as_str()
            .is_some_and(|id| id.starts_with("we_"))
    );
    let secret = r.json["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    secret
}

/// Verifies `deliveries` with the Standard Webhooks reference library (Python, from PyPI).
fn verify_with_standardwebhooks(secret: &str, deliveries: &[(HeaderMap, String)]) {
    let json: Vec<Value> = deliveries
        .iter()
        .map(|(headers, body)| {
            let headers: serde_json::Map<String, Value> = headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), json!(v.to_str().ok()?))))
                .collect();
            json!({"headers": headers, "body": body})
        })
        .collect();
    let file = std::env::temp_dir().join(format!("tg-deliveries-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec(&json).expect("json")).expect("write");
    let root = tollgate_e2e::workspace_root();
    let python = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from)
        .join("py/bin/python");
    let out = std::process::Command::new(python)
        .arg(root.join("tests/webhooks/verify.py"))
        .arg(secret)
        .arg(&file)
        .output()
        .expect("run the verifier");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "standardwebhooks refused a delivery: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        deliveries.len().to_string()
    );
}

/// The payloads, by `(type, threshold)`, each once.
fn by_threshold(deliveries: &[(HeaderMap, String)]) -> Vec<(String, u64)> {
    let mut seen: Vec<(String, u64)> = deliveries
        .iter()
        .map(|(_, body)| {
            let v: Value = serde_json::from_str(body).expect("json body");
            (
                v["type"].as_str().unwrap_or("").to_owned(),
                v["threshold"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    seen.sort();
    seen
}

async fn alert_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM usage_alerts")
        .fetch_one(&app.state.pg)
        .await
        .expect("count")
}

async fn flushed_once(proxy: &ProxyProcess) {
    wait::until(LONG, "a write-back of the new proxy", || async {
        (metric_value(
            &proxy.metrics().await,
            "tollgate_proxy_writeback_batch_size_count",
        ) > 0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_is_delivered_once_signed_across_two_proxies_and_restarts() {
    let mut m = Metering::start(Options {
        limit: 100,
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_alerts").await;
    let receiver = Receiver::start().await;
    let secret = set_endpoint(&m.app, "org_alerts", &receiver.url).await;
    let (a, b) = (m.proxy(&[]).await, m.proxy(&[]).await);

    // Two proxies, 64 clients: both see the crossings, each alert is recorded once.
    let statuses = hammer(&[&a, &b], &key, "/v1/items", 64, 150).await;
    assert_eq!(count(&statuses, 200), 100);
    let got = receiver.await_count(4).await;
    let expected = vec![
        ("usage.bound.reached".to_owned(), 100),
        ("usage.threshold.crossed".to_owned(), 50),
        ("usage.threshold.crossed".to_owned(), 80),
        ("usage.threshold.crossed".to_owned(), 100),
    ];
    assert_eq!(by_threshold(&got), expected);
    for (headers, body) in &got {
        let v: Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["orgId"], "org_alerts");
        assert_eq!(v["metric"], "api_call");
        assert_eq!(
            (v["included"].as_u64(), v["bound"].as_u64()),
            (Some(100), Some(100))
        );
        assert!(v["periodKey"].as_str().is_some_and(|k| k.len() == 7), "{v}");
        let at = if v["type"] == "usage.bound.reached" {
            100
        } else {
            v["threshold"].as_u64().unwrap_or(0)
        };
        assert!(v["used"].as_u64().is_some_and(|u| u >= at), "{v}");
        assert!(headers.get("webhook-id").is_some() && headers.get("webhook-timestamp").is_some());
    }
    verify_with_standardwebhooks(&secret, &got);
    let proxy_alerts = |metrics: &str, event: &str| {
        metric_value(
            metrics,
            &format!("tollgate_proxy_usage_alerts_total{{event=\"{event}\"}}"),
        )
    };
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(
        proxy_alerts(&ma, "usage.threshold.crossed") + proxy_alerts(&mb, "usage.threshold.crossed"),
        3,
        "each crossing recorded by exactly one proxy"
    );

    // Restarts: new proxies, a new control plane (its delivery workers), more traffic. Nothing is announced again.
    drop((a, b));
    m.app.stop();
    let replica = m.replica().start().await;
    let (c, d) = (m.proxy(&[]).await, m.proxy(&[]).await);
    let statuses = hammer(&[&c, &d], &key, "/v1/items", 16, 40).await;
    assert_eq!(count(&statuses, 429), 40);
    flushed_once(&c).await;
    flushed_once(&d).await;
    let deliveries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'done'")
            .fetch_one(&replica.state.pg)
            .await
            .expect("count");
    assert_eq!(deliveries, 4, "nothing queued again after the restarts");
    assert_eq!(alert_rows(&replica).await, 4, "one row per threshold");
    assert_eq!(receiver.deliveries().len(), 4);

    // A reset re-arms every threshold: crossed again, announced again, under new message ids.
    let r = replica
        .post(
            "/api/admin/quotas.reset",
            Auth::Operator,
            &json!({"orgId": "org_alerts", "periodKey": got_period(&got)}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait::until(LONG, "the proxies to admit after the reset", || async {
        let statuses = hammer(&[&c], &key, "/v1/items", 1, 1).await;
        (statuses == [200]).then_some(())
    })
    .await;
    hammer(&[&c, &d], &key, "/v1/items", 16, 150).await;
    let again = receiver.await_count(8).await;
    assert_eq!(
        by_threshold(&again[4..]),
        expected,
        "each threshold once more"
    );
    let mut ids: Vec<&str> = again
        .iter()
        .filter_map(|(h, _)| h.get("webhook-id")?.to_str().ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "a new message id per alert");
    verify_with_standardwebhooks(&secret, &again);
    drop(replica);
}

fn got_period(got: &[(HeaderMap, String)]) -> String {
    let v: Value = serde_json::from_str(&got[0].1).expect("json");
    v["periodKey"].as_str().expect("periodKey").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_on_a_private_address_is_refused_unless_allowed() {
    let app = TestApp::builder()
        .env("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", "false")
        .start()
        .await;
    app.create_org("org_ssrf").await;
    let refused = [
        "http://127.0.0.1:8080/hooks",
        "http://localhost/hooks",
        "http://10.0.0.5/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://100.64.0.1/hooks",
        "ftp://example.com/hooks",
        "http://user:pw@example.com/hooks",
        "not a url",
    ];
    for url in refused {
        let r = app
            .post(
                "/api/webhooks/endpoints.set",
                Auth::Operator,
                &json!({"orgId": "org_ssrf", "url": url, "events": ["usage.bound.reached"]}),
            )
            .await;
        assert_eq!(r.status, 422, "{url}: {}", r.text);
        assert_eq!(r.json["field"], "url", "{url}: {}", r.text);
    }
    let r = app
        .post(
            "/api/webhooks/endpoints.set",
            Auth::Operator,
            &json!({"orgId": "org_ssrf", "url": "https://example.com/hooks", "events": ["usage.nope"]}),
        )
        .await;
    assert_eq!(r.json["field"], "events", "{}", r.text);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(&app.state.pg)
        .await
        .expect("count");
    assert_eq!(stored, 0, "nothing was stored");

    // Allowed by the setting (as the other tests run): the same loopback endpoint is taken.
    let allowed = TestApp::builder()
        .database(std::sync::Arc::clone(&app.db))
        .start()
        .await;
    let body = json!({"orgId": "org_ssrf", "url": "http://127.0.0.1:8080/hooks", "events": ["usage.bound.reached"]});
    let r = allowed
        .send(
            allowed
                .http
                .post(allowed.url("/api/webhooks/endpoints.set"))
                .header("Idempotency-Key", "set-the-endpoint")
                .json(&body),
            Auth::Operator,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The secret is shown once: never stored in the clear, not even as an Idempotency-Key answer.
    let secret = r.json["secret"].as_str().expect("secret").to_owned();
    let leaked: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM webhook_endpoints WHERE position($1::bytea IN secret_sealed) > 0)
              + (SELECT count(*) FROM idempotency_keys WHERE position($1::bytea IN coalesce(body, ''::bytea)) > 0)",
    )
    .bind(secret.as_bytes())
    .fetch_one(&allowed.state.pg)
    .await
    .expect("search");
    assert_eq!(leaked, 0);
}

/// Usage recorded through `usage/record` crosses thresholds too, in the batch's transaction: each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_usage_crosses_thresholds_once() {
    let m = Metering::start(Options {
        limit: 100,
        ..Options::default()
    })
    .await;
    let key = m.org_with_key("org_recorded").await;
    let receiver = Receiver::start().await;
    let secret = set_endpoint(&m.app, "org_recorded", &receiver.url).await;
    for (id, value) in [("r1", 60), ("r1", 60), ("r2", 25), ("r3", 40)] {
        let r = m
            .app
            .post(
                "/api/usage/record",
                Auth::ApiKey(&key),
                &crate::usage::record(id, value),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let got = receiver.await_count(4).await;
    assert_eq!(
        by_threshold(&got),
        [
            ("usage.bound.reached".to_owned(), 100),
            ("usage.threshold.crossed".to_owned(), 50),
            ("usage.threshold.crossed".to_owned(), 80),
            ("usage.threshold.crossed".to_owned(), 100),
        ]
    );
    verify_with_standardwebhooks(&secret, &got);
    assert_eq!(alert_rows(&m.app).await, 4);
}
