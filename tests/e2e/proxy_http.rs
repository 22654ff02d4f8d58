//! What the proxy does to requests and responses: the envelope, the RateLimit headers, pass-through, identity.

use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tollgate_common::clock::{Clock, SystemClock};
use tollgate_common::domain::{DenyEnvelope, Metric, Period};
use tollgate_e2e::app::Auth;
use tollgate_e2e::clerk::{self, TestKey};
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::metric_value;

#[tokio::test]
async fn allowed_responses_carry_ratelimit_headers_and_denials_the_standard_envelope() {
    let m = Metering::start(Options {
        limit: 3,
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_env").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/search?q=1", proxy.url());

    for expected_remaining in [2, 1, 0] {
        let r = http
            .get(&url)
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        assert_eq!(
            r.headers()["ratelimit-remaining"],
            expected_remaining.to_string().as_str()
        );
        let reset: u64 = r.headers()["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(reset > 0 && reset <= 31 * 24 * 3600, "{reset}");
    }

    let r = http
        .get(&url)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    let now = SystemClock.now();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let period = Period::calendar_month(now);
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected_retry = (period.end - now).num_seconds();
    assert!(
        (retry - expected_retry).abs() <= 2,
        "Retry-After {retry} vs {expected_retry}"
    );
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let body = r.text().await.unwrap();
    let expected =
        DenyEnvelope::new(Metric::parse("api_call").unwrap(), 3, 3, &period, now).to_json();
    assert_eq!(
        body, expected,
        "byte-exact envelope, fields in contract order"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "/problems/quota-exceeded");
    assert_eq!(v["allow"], false);
    assert_eq!(v["remaining"], 0);
    assert_eq!(v["used"], 3);
    assert_eq!(v["periodKey"], period.key().to_string());
    assert_eq!(m.upstream.count(), 3, "the denied request was not proxied");

    // An unmetered route still passes, and consumes nothing.
    let r = http
        .get(format!("{}/health/live", proxy.url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("ratelimit-limit").is_none());
    m.await_durable("org_env", "api_call", 3, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_through_unchanged_except_the_credential() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let key = m.org_with_key("org_pass").await;
    let http = reqwest::Client::new();

    // A 32 MiB body, streamed in 64 KiB chunks.
    let chunk = vec![7u8; 64 * 1024];
    let chunks = 512;
    let mut hasher = Sha256::new();
    for _ in 0..chunks {
        hasher.update(&chunk);
    }
    let body_sha = hex::encode(hasher.finalize());
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let r = http
        .put(format!(
            "{}/v1/files/a%20b/c?x=1&y=two%20words&x=3",
            proxy.url()
        ))
        .header("authorization", format!("Bearer {key}"))
        .header("x-custom", "kept")
        .header("x-multi", "one")
        .header("x-tollgate-org", "org_spoofed")
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-upstream"],
        "echo",
        "upstream headers come back"
    );
    let seen = m.upstream.requests().pop().unwrap();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.path, "/v1/files/a%20b/c");
    assert_eq!(seen.query.as_deref(), Some("x=1&y=two%20words&x=3"));
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("x-multi"), Some("one"));
    assert_eq!(
        seen.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        seen.header("authorization"),
        None,
        "the credential is not forwarded"
    );
    assert_eq!(
        seen.header_all("x-tollgate-org"),
        vec!["org_pass"],
        "the org header is Tollgate's, not the client's"
    );
    assert_eq!(seen.body_len, 32 * 1024 * 1024);
    assert_eq!(seen.body_sha256, body_sha);

    // The X-Api-Key form is stripped too; other methods pass.
    let r = http
        .delete(format!("{}/v1/things/9", proxy.url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = m.upstream.requests().pop().unwrap();
    assert_eq!(seen.method, "DELETE");
    assert_eq!(seen.header("x-api-key"), None);

    // A large response streams back byte for byte.
    let r = http
        .get(format!("{}/big/20000000?chunked", proxy.url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let expected_sha = r.headers()["x-body-sha256"].to_str().unwrap().to_owned();
    let mut hasher = Sha256::new();
    let mut len = 0usize;
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(len, 20_000_000);
    assert_eq!(hex::encode(hasher.finalize()), expected_sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_credential_nothing_is_proxied() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/x", proxy.url());
    let cases = [
        http.get(&url),
        http.get(&url)
            .header("x-api-key", "tg_notarealkeynotarealkeynotarealkeynotareal1"),
        http.get(&url).header("x-api-key", "garbage"),
        http.get(&url).bearer_auth("not.a.jwt"),
        http.get(&url).header("authorization", "Basic dXNlcjpwYXNz"),
        http.get(format!("{}/health", proxy.url())),
    ];
    for req in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], 401);
        assert!(v["detail"].is_string());
    }
    assert_eq!(m.upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_evicted_from_every_proxy_by_its_announcement() {
    let m = Metering::start(Options::default()).await;
    let a = m.proxy(&[]).await;
    let b = m.proxy(&[]).await;
    m.app.create_org("org_rev").await;
    let (key_id, key) = m.app.create_key("org_rev").await;
    let http = reqwest::Client::new();
    for p in [&a, &b] {
        let r = http
            .get(format!("{}/v1/x", p.url()))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "the key works (and is cached) on both proxies"
        );
    }
    let r = m
        .app
        .post(
            "/api/keys.revoke",
            Auth::Operator,
            &json!({"keyId": key_id}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for p in [&a, &b] {
        let url = format!("{}/v1/x", p.url());
        let (http, key) = (http.clone(), key.clone());
        tollgate_e2e::wait::until(
            Duration::from_secs(5),
            "the revocation to reach the proxy",
            || {
                let (http, key, url) = (http.clone(), key.clone(), url.clone());
                async move {
                    let r = http.get(url).header("x-api-key", key).send().await.ok()?;
                    (r.status() == 401).then_some(())
                }
            },
        )
        .await;
        // Evicted by the announcement (pushed), not by a flush after the epoch poll.
        let metrics = p.metrics().await;
        assert_eq!(
            metric_value(&metrics, "tollgate_proxy_revocation_announcements_total"),
            1
        );
        for reason in ["reconnect", "missed", "unreadable"] {
            let series = format!("tollgate_proxy_key_cache_flushes_total{{reason=\"{reason}\"}}");
            assert_eq!(metric_value(&metrics, &series), 0, "{series}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_meters_its_own_org_only() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    m.app.create_org("org_jwt_a").await;
    m.app.create_org("org_jwt_b").await;
    let token = clerk::sign(TestKey::A, &clerk::claims("user_a", Some("org_jwt_a")));
    let http = reqwest::Client::new();
    for _ in 0..4 {
        let r = http
            .get(format!("{}/v1/x", proxy.url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = m.upstream.requests().pop().unwrap();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-tollgate-org"), Some("org_jwt_a"));
    m.await_durable("org_jwt_a", "api_call", 4, Duration::from_secs(10))
        .await;
    assert_eq!(m.durable_used("org_jwt_b", "api_call").await, 0);

    let unknown = clerk::sign(
        TestKey::A,
        &clerk::claims("user_c", Some("org_unregistered")),
    );
    let r = http
        .get(format!("{}/v1/x", proxy.url()))
        .bearer_auth(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let expired = clerk::sign(
        TestKey::A,
        &json!({"sub": "user_a", "org_id": "org_jwt_a", "iss": clerk::ISSUER, "exp": 1_000_000, "nbf": 0}),
    );
    let r = http
        .get(format!("{}/v1/x", proxy.url()))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
