//! What an outside probe found: credentials leaking upstream, hung upstreams, slow clients, unbounded metric labels,
//! odd dates and malformed HTTP. Each test here failed before the fix it names.

use futures_util::future::join_all;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::clerk::{self, TestKey};
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::metric_value;
use tollgate_e2e::proxy::ProxyProcess;
use tollgate_e2e::raw::{self, RawResponse};

/// Waits until the live `used` of `key`'s org is `expected` (proxied usage settles into the counter within ~20 ms).
async fn await_used(app: &TestApp, key: &str, expected: u64) {
    tollgate_e2e::wait::until(Duration::from_secs(10), "usage to settle", || async {
        (used(app, key).await == expected).then_some(())
    })
    .await;
}

async fn used(app: &TestApp, key: &str) -> u64 {
    let r = app
        .get("/api/me/entitlements.read", Auth::ApiKey(key))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["used"].as_u64().expect("used")
}

/// Every credential header value the upstream has seen.
fn credentials_seen(m: &Metering) -> Vec<String> {
    m.upstream
        .requests()
        .iter()
        .flat_map(|r| {
            r.header_all("authorization")
                .into_iter()
                .chain(r.header_all("x-api-key"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

// === the proxy ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tollgate_credential_never_reaches_the_upstream() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let a = m.org_with_key("org_two_a").await;
    let b = m.org_with_key("org_two_b").await;
    let session_a = clerk::sign(TestKey::A, &clerk::claims("user_a", Some("org_two_a")));
    let http = reqwest::Client::new();
    let url = format!("{}/v1/x", proxy.url());

    // Two different Tollgate credentials: refused, nothing proxied, nothing metered.
    for (authorization, api_key) in [
        (format!("Bearer {a}"), b.clone()),
        (format!("Bearer {session_a}"), b.clone()),
    ] {
        let r = http
            .get(&url)
            .header("authorization", &authorization)
            .header("x-api-key", &api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    // A second X-Api-Key line cannot slip past the strip either.
    let req = format!(
        "GET /v1/x HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: {a}\r\nX-Api-Key: {b}\r\nConnection: close\r\n\r\n"
    );
    let r = raw::exchange(
        raw::addr_of(&proxy.url()),
        req.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(m.upstream.count(), 0);

    // The same key in both headers is one credential, removed from both.
    let r = http
        .get(&url)
        .header("authorization", format!("Bearer {a}"))
        .header("x-api-key", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(m.upstream.count(), 1);
    let seen = credentials_seen(&m);
    assert!(
        seen.iter().all(|v| !v.contains("tg_")),
        "no Tollgate credential reached the upstream: {seen:?}"
    );
    assert!(seen.is_empty(), "{seen:?}");
    await_used(&m.app, &a, 1).await;
    assert_eq!(used(&m.app, &b).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customers_own_authorization_passes_through_beside_a_key() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_own_auth").await;
    let mut foreign_claims = clerk::claims("user_x", Some("org_own_auth"));
    foreign_claims["iss"] = json!("https://auth.customer.example");
    let foreign_jwt = clerk::sign(TestKey::A, &foreign_claims);
    let http = reqwest::Client::new();
    let own = [
        "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
        "Bearer customer-opaque-token".to_owned(),
        format!("Bearer {foreign_jwt}"),
    ];
    for authorization in &own {
        let r = http
            .get(format!("{}/v1/x", proxy.url()))
            .header("x-api-key", &key)
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{authorization}");
        let seen = m.upstream.requests().pop().unwrap();
        assert_eq!(
            seen.header_all("authorization"),
            vec![authorization.as_str()],
            "passed through unchanged"
        );
        assert_eq!(seen.header("x-api-key"), None, "the key is stripped");
        assert_eq!(seen.header("x-tollgate-org"), Some("org_own_auth"));
    }
    await_used(&m.app, &key, 3).await;
}

/// A TCP server that accepts connections and never answers.
async fn hanging_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_unreachable_upstream_is_504_or_502_and_gives_the_units_back() {
    let m = Metering::start(Options::default()).await;
    let key = m.org_with_key("org_hang").await;
    let hung = hanging_upstream().await;
    let closed = format!("http://127.0.0.1:{}", tollgate_e2e::free_port());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    for (upstream, status) in [(&hung, 504), (&closed, 502)] {
        let proxy = m
            .proxy(&[
                ("TOLLGATE_UPSTREAM", upstream.as_str()),
                ("TOLLGATE_UPSTREAM_READ_TIMEOUT_MS", "700"),
            ])
            .await;
        let started = Instant::now();
        let r = http
            .get(format!("{}/v1/x", proxy.url()))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered after the read timeout, not held forever"
        );
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["status"], status);
        // Nothing was served: the unit goes back to the lease, and from there to the counter.
        await_used(&m.app, &key, 0).await;
        assert_eq!(
            metric_value(&proxy.metrics().await, "tollgate_proxy_refunds_total"),
            1
        );
    }

    // A normal upstream is still charged.
    let proxy = m.proxy(&[]).await;
    let r = http
        .get(format!("{}/v1/x", proxy.url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    await_used(&m.app, &key, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_host_is_400_and_an_absolute_form_target_is_accepted() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_host").await;
    let addr = raw::addr_of(&proxy.url());
    let send = |req: String| async move {
        raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await
    };

    let r = send(format!(
        "GET /v1/x HTTP/1.1\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let problem: Value = serde_json::from_str(&r.body).unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("Host"));
    assert_eq!(m.upstream.count(), 0);

    // HTTP/1.0 may omit it.
    let r = send(format!("GET /v1/x HTTP/1.0\r\nX-Api-Key: {key}\r\n\r\n")).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Absolute form (RFC 9112 §3.2.2): accepted, and proxied in origin form with the target's authority as Host.
    let r = send(format!(
        "GET http://api.customer.test/v1/abs?q=1 HTTP/1.1\r\nHost: api.customer.test\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = m.upstream.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/abs");
    assert_eq!(seen.query.as_deref(), Some("q=1"));
    assert_eq!(seen.header_all("host"), vec!["api.customer.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_count_under_their_route_class() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = http
            .get(format!("{}/v1/metered", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // Pingora records a request (`logging`) after its response is sent: wait for the count, do not race it.
    let proxy = &proxy;
    let metrics = tollgate_e2e::wait::until(
        Duration::from_secs(10),
        "the refusals to be counted",
        || async {
            let metrics = proxy.metrics().await;
            (metric_value(
                &metrics,
                "tollgate_proxy_requests_total{class=\"metered\",status=\"4xx\"}",
            ) == 3)
                .then_some(metrics)
        },
    )
    .await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_proxy_requests_total{class=\"unmetered\",status=\"4xx\"}"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_logged_as_errors() {
    let m = Metering::start(Options::default()).await;
    let proxy: ProxyProcess = m.proxy(&[]).await;
    let addr = raw::addr_of(&proxy.url());
    // A reset in the middle of the request header, and a malformed request.
    for req in [
        &b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Par"[..],
        &b"GET /v1/x HTTP/1.1\r\nHost : a\r\n\r\n"[..],
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        drop(s);
    }
    // The proxy serves one more request, so everything before it has been handled (and logged).
    let key = m.org_with_key("org_logs").await;
    let r = reqwest::Client::new()
        .get(format!("{}/v1/x", proxy.url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = proxy.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();
    assert!(
        errors.is_empty(),
        "client faults logged as errors: {errors:?}"
    );
}

// === the control plane ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_header_is_cut_off_at_the_header_timeout() {
    let app = TestApp::builder()
        .env("TOLLGATE_CP_HEADER_TIMEOUT_MS", "500")
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let header = b"POST /api/usage/record HTTP/1.1\r\nHost: cp\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_off = None;
    for byte in header.iter() {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = Some(started.elapsed());
            break;
        }
        // A slow client's pace, not synchronisation: the server is expected to give up first.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_off = match cut_off {
        Some(at) => at,
        None => {
            // Every byte was accepted by the kernel; the server must have closed the connection meanwhile.
            let rest = raw::read_until_closed(&mut stream, Duration::from_secs(1)).await;
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "still open after {:?}: {rest:?}",
                started.elapsed()
            );
            started.elapsed()
        }
    };
    assert!(
        cut_off < Duration::from_secs(5),
        "the connection was held for {cut_off:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_408() {
    let app = TestApp::builder()
        .env("TOLLGATE_CP_BODY_TIMEOUT_MS", "500")
        .start()
        .await;
    let req = format!(
        "POST /api/orgs.create HTTP/1.1\r\nHost: cp\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"orgId\":",
        tollgate_e2e::app::ADMIN_TOKEN
    );
    let r = raw::exchange(app.addr, req.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("connection"), Some("close"));
    let problem: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(problem["field"], "body");
    let orgs: i64 = sqlx::query_scalar("SELECT count(*) FROM orgs")
        .fetch_one(&app.state.pg)
        .await
        .unwrap();
    assert_eq!(orgs, 0, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_read_not_a_reset() {
    let app = TestApp::start().await;
    let body = vec![b'x'; 3 * 1024 * 1024];
    let attempts = (0..6).map(|_| {
        let body = body.clone();
        let addr = app.addr;
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/orgs.create HTTP/1.1\r\nHost: cp\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                tollgate_e2e::app::ADMIN_TOKEN,
                body.len()
            );
            // A plain client on a slow link (curl, say): it sends the whole request, in two bursts, then reads,
            // and gives up when a write fails. A server that answers and closes while data is still arriving
            // makes the kernel reset the connection: the client's write fails and it never reads the 413.
            let (first, rest) = body.split_at(1024 * 1024);
            let sent = async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(first).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                stream.write_all(rest).await
            };
            if sent.await.is_err() {
                return 0;
            }
            let received = raw::read_until_closed(&mut stream, Duration::from_secs(10)).await;
            RawResponse::parse(&received).status
        }
    });
    let statuses = join_all(attempts).await;
    assert!(statuses.iter().all(|s| *s == 413), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_mint_metric_series() {
    let app = TestApp::start().await;
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("tollgate_cp_http_requests_total{"))
            .count()
    };
    let before = series(&app.get("/metrics", Auth::None).await.text);
    for i in 0..100 {
        let method = reqwest::Method::from_bytes(format!("XMETHOD{i}").as_bytes()).unwrap();
        let r = app
            .send(
                app.http.request(method, app.url("/api/orgs.create")),
                Auth::None,
            )
            .await;
        assert!(r.status >= 400);
    }
    let after = app.get("/metrics", Auth::None).await.text;
    assert!(
        series(&after) <= before + 3,
        "{} series after 100 made-up methods (from {before})",
        series(&after)
    );
    assert!(!after.contains("XMETHOD"));
}

#[tokio::test]
async fn dependency_error_series_exist_before_the_first_error() {
    let app = TestApp::start().await;
    let metrics = app.get("/metrics", Auth::None).await.text;
    for dependency in ["postgres", "redis"] {
        assert!(
            metrics.contains(&format!(
                "tollgate_cp_dependency_errors_total{{dependency=\"{dependency}\"}} 0"
            )),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn usage_from_before_2000_is_refused_and_an_old_period_key_is_a_conflict() {
    let app = TestApp::start().await;
    app.create_org("org_dates").await;
    let r = app
        .post(
            "/api/usage/record",
            Auth::Operator,
            &json!({"orgId": "org_dates", "metric": "api_call", "value": 1,
                    "occurredAt": "1970-01-01T00:00:00Z", "request_id": "r-1970"}),
        )
        .await;
    assert_eq!(r.problem(422)["field"], "occurredAt", "{}", r.text);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&app.state.pg)
        .await
        .unwrap();
    assert_eq!(events, 0, "nothing written, nothing re-dated");

    let r = app
        .post(
            "/api/usage/seed",
            Auth::Operator,
            &json!({"orgId": "org_dates", "periodKey": "1999-01"}),
        )
        .await;
    assert_eq!(r.problem(409)["field"], "periodKey", "{}", r.text);
}

#[tokio::test]
async fn details_name_the_field_once() {
    let app = TestApp::start().await;
    app.create_org("org_detail").await;
    let r = app
        .post(
            "/api/usage/seed",
            Auth::Operator,
            &json!({"orgId": "org_detail", "periodKey": "2026-13"}),
        )
        .await;
    let detail = r.problem(422)["detail"].as_str().unwrap().to_owned();
    assert!(detail.starts_with("periodKey: "), "{detail}");
    assert_eq!(detail.matches("periodKey").count(), 1, "{detail}");
}

/// Pingora parses the request header before any hook of ours runs, so it answers these itself with a bare 400
/// (listed in the README); what matters here is that none of them reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_is_refused_before_anything_is_proxied() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_malformed").await;
    let addr = raw::addr_of(&proxy.url());
    let long = "a".repeat(64 * 1024);
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        format!("GET /v1/{long} HTTP/1.1\r\nHost: a\r\nX-Api-Key: {key}\r\n\r\n"),
        format!("GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Api-Key: {key}\r\n{many}\r\n"),
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Api-Key: {key}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
        ),
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Api-Key: {key}\r\nTransfer-Encoding: gzip\r\n\r\nabcd"
        ),
        format!("GET /v1/x HTTP/1.1\r\nHost : a\r\nX-Api-Key: {key}\r\n\r\n"),
        format!("GET /v1/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Api-Key: {key}\r\n\r\n"),
        format!("GET http://x.test/v1/x HTTP/1.1\r\nHost: y.test\r\nX-Api-Key: {key}\r\n\r\n"),
        format!("GET http://x.test/v1/x HTTP/1.1\r\nX-Api-Key: {key}\r\n\r\n"),
    ];
    for req in &cases {
        let r = raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(r.status, 400, "{}: {r:?}", &req[..req.len().min(80)]);
    }
    assert_eq!(m.upstream.count(), 0);
}
