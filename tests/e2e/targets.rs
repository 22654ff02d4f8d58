//! The price is the path the upstream serves: every spelling of a request target is either priced as the path a
//! real nginx serves for it, or refused with 400 and nothing charged or forwarded; no header spelling poses as
//! Tollgate's own.

use std::net::SocketAddr;
use std::time::Duration;
use tollgate_common::domain::{PlanCatalog, RouteClass, RouteTable};
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::nginx::{self, Nginx};
use tollgate_e2e::raw::{self, RawResponse};
use tollgate_e2e::upstream::Recorded;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Every spelling of the table and more, with the target the proxy must forward (`None`: refused).
const CASES: &[(&str, Option<&str>)] = &[
    ("/v1/embeddings", Some("/v1/embeddings")),
    ("/health/../v1/embeddings", Some("/v1/embeddings")),
    ("/health/%2e%2e/v1/embeddings", Some("/v1/embeddings")),
    ("/health/%2E./v1/embeddings", Some("/v1/embeddings")),
    ("/health/..%2fv1/embeddings", None),
    ("/v1/%65mbeddings", Some("/v1/embeddings")),
    ("//v1/embeddings", Some("/v1/embeddings")),
    ("/v1//embeddings", Some("/v1/embeddings")),
    ("/v1/./embeddings", Some("/v1/embeddings")),
    ("/v1/embeddings/.", Some("/v1/embeddings/")),
    ("/health%2f..%2fv1/embeddings", None),
    ("/v1%2Fembeddings", None),
    ("/v1%5cembeddings", None),
    ("/v1\\embeddings", None),
    ("/health\\..\\v1/embeddings", None),
    ("/%68ealth/../v1/embeddings", Some("/v1/embeddings")),
    ("/health/..;/v1/embeddings", None),
    ("/../v1/embeddings", None),
    ("/health/../../v1/embeddings", None),
    ("/v1/embeddings%00", None),
    ("/v1/embeddings%0a", None),
    (
        "/v1/embeddings?q=/../health&r=%2f",
        Some("/v1/embeddings?q=/../health&r=%2f"),
    ),
    (
        "/health?q=/../v1/embeddings",
        Some("/health?q=/../v1/embeddings"),
    ),
    ("/health", Some("/health")),
    ("/health/./", Some("/health/")),
    ("/v1/embeddings;x=1", Some("/v1/embeddings;x=1")),
    ("/v1/EMBEDDINGS", Some("/v1/EMBEDDINGS")),
    ("/v1/caf%c3%a9", Some("/v1/caf%C3%A9")),
    ("x:/v1/embeddings", None),
    ("v1/embeddings", None),
    (
        "http://127.0.0.1/health/../v1/./embeddings",
        Some("/v1/embeddings"),
    ),
    ("HTTP://127.0.0.1", Some("/")),
];

/// One request over its own connection; `headers` are sent as written (`Name: value\r\n` each).
async fn send(addr: SocketAddr, method: &str, target: &str, headers: &str) -> RawResponse {
    let host = if target.starts_with("http") || target.starts_with("HTTP") {
        "127.0.0.1"
    } else {
        "api.example"
    };
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    raw::exchange(addr, request.as_bytes(), TIMEOUT).await
}

/// The org's remaining `api_call` units, as a metered probe (cost 1) reports them: exact with one proxy.
async fn remaining(proxy: SocketAddr, key: &str) -> u64 {
    let r = send(proxy, "GET", "/probe", &format!("X-Api-Key: {key}\r\n")).await;
    assert_eq!(r.status, 200, "probe: {}", r.body);
    r.header("ratelimit-remaining")
        .and_then(|v| v.parse().ok())
        .expect("RateLimit-Remaining on a metered response")
}

/// Sends `target` with the org's key and returns the response and the units it cost.
async fn charged(proxy: SocketAddr, key: &str, target: &str) -> (RawResponse, u64) {
    let before = remaining(proxy, key).await;
    let response = send(proxy, "GET", target, &format!("X-Api-Key: {key}\r\n")).await;
    let after = remaining(proxy, key).await;
    // The second probe cost 1.
    (response, before - after - 1)
}

fn routes(m: &Metering) -> RouteTable {
    let plans = std::fs::read_to_string(m.dir.join("plans.toml")).expect("plans");
    let routes = std::fs::read_to_string(m.dir.join("routes.toml")).expect("routes");
    let catalog = PlanCatalog::from_toml_str(&plans).expect("valid plans");
    RouteTable::from_toml_str(&routes, &catalog).expect("valid routes")
}

fn price(routes: &RouteTable, served: &[u8]) -> u64 {
    match routes.classify_decoded(served) {
        RouteClass::Metered { cost, .. } => cost,
        RouteClass::Unmetered { .. } => 0,
    }
}

fn assert_refused(case: &str, response: &RawResponse, charge: u64) {
    assert_eq!(response.status, 400, "{case}: {}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{case}: the proxy's own refusal"
    );
    let body: serde_json::Value = serde_json::from_str(&response.body).expect("problem+json");
    assert_eq!(body["field"], "target", "{case}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("request target: ")),
        "{case}: {body}"
    );
    assert_eq!(charge, 0, "{case}: a refused request costs nothing");
}

#[tokio::test]
async fn every_spelling_is_charged_the_price_of_the_path_nginx_serves_or_refused() {
    let m = Metering::start(Options {
        limit: 100_000,
        ..Options::default()
    })
    .await;
    let nginx = Nginx::start().await;
    let proxy = m.proxy(&[("TOLLGATE_UPSTREAM", &nginx.url())]).await;
    let addr = raw::addr_of(&proxy.url());
    let key = m.org_with_key("org_targets_nginx").await;
    let routes = routes(&m);

    for (case, forwarded) in CASES {
        let (response, charge) = charged(addr, &key, case).await;
        if forwarded.is_none() {
            assert_refused(case, &response, charge);
            continue;
        }
        assert_eq!(response.status, 200, "{case}: {}", response.body);
        let served = response
            .header(nginx::SERVED)
            .unwrap_or_else(|| panic!("{case}: nginx answered"))
            .to_owned();
        assert_eq!(
            charge,
            price(&routes, served.as_bytes()),
            "{case}: nginx served {served}"
        );
        // The canonical target is served as nginx serves the client's own spelling.
        let direct = send(nginx.addr(), "GET", case, "").await;
        if direct.status == 200 {
            assert_eq!(
                direct.header(nginx::SERVED),
                Some(served.as_str()),
                "{case}"
            );
        }
    }
}

#[tokio::test]
async fn the_canonical_target_is_what_reaches_the_upstream() {
    let m = Metering::start(Options {
        limit: 100_000,
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[]).await;
    let addr = raw::addr_of(&proxy.url());
    let key = m.org_with_key("org_targets_echo").await;
    let routes = routes(&m);

    for (case, forwarded) in CASES {
        let count = m.upstream.count();
        let (response, charge) = charged(addr, &key, case).await;
        // The two probes reached the upstream too.
        let requests: Vec<Recorded> = m
            .upstream
            .requests()
            .into_iter()
            .skip(count)
            .filter(|r| r.path != "/probe")
            .collect();
        let Some(expected) = forwarded else {
            assert_refused(case, &response, charge);
            assert!(requests.is_empty(), "{case}: forwarded {requests:?}");
            continue;
        };
        assert_eq!(response.status, 200, "{case}: {}", response.body);
        let [request] = requests.as_slice() else {
            panic!("{case}: expected one request upstream, got {requests:?}");
        };
        let target = match &request.query {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.clone(),
        };
        assert_eq!(&target, expected, "{case}");
        let path = expected.split('?').next().unwrap_or_default();
        let decoded = tollgate_common::domain::target::decoded_path(path)
            .unwrap_or_else(|| path.as_bytes().to_vec());
        assert_eq!(charge, price(&routes, &decoded), "{case}");
    }

    // `*` is for OPTIONS alone.
    let r = send(addr, "OPTIONS", "*", &format!("X-Api-Key: {key}\r\n")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(addr, "GET", "*", &format!("X-Api-Key: {key}\r\n")).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn no_header_spelling_poses_as_tollgates_own() {
    let m = Metering::start(Options::default()).await;
    let proxy = m.proxy(&[]).await;
    let addr = raw::addr_of(&proxy.url());
    let key = m.org_with_key("org_spelling").await;
    let other = m.org_with_key("org_victim").await;

    // Underscore spellings of our names never reach the upstream; the proxy's own X-Tollgate-Org does.
    let count = m.upstream.count();
    let headers = format!(
        "X-Api-Key: {key}\r\nX_Tollgate_Org: org_victim\r\nx-tollgate_org: org_victim\r\nX_API_KEY: {other}\r\nx-api_key: {other}\r\nX-Tollgate-Org: org_victim\r\n"
    );
    let r = send(addr, "GET", "/v1/x", &headers).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let requests = m.upstream.requests();
    let [request] = &requests[count..] else {
        panic!("one request upstream: {requests:?}");
    };
    let folded = |name: &str| name.to_ascii_lowercase().replace('_', "-");
    let ours: Vec<_> = request
        .headers
        .iter()
        .filter(|(n, _)| matches!(folded(n).as_str(), "x-tollgate-org" | "x-api-key"))
        .collect();
    assert_eq!(
        ours,
        [&("x-tollgate-org".to_owned(), "org_spelling".to_owned())],
        "only the proxy's own identity reaches the upstream: {:?}",
        request.headers
    );

    // `Authorization` per RFC 9110: the scheme in any case, then spaces or tabs. Another org's key that way beside
    // ours is a second credential (401), never the customer's own header.
    for authorization in [
        format!("Bearer\t{other}"),
        format!("Bearer \t {other}"),
        format!("Bearer  {other}"),
        format!("bearer {other}"),
        format!("BEARER\t{other}"),
    ] {
        let count = m.upstream.count();
        let headers = format!("Authorization: {authorization}\r\nX-Api-Key: {key}\r\n");
        let r = send(addr, "GET", "/v1/x", &headers).await;
        assert_eq!(r.status, 401, "{authorization:?}: {}", r.body);
        assert_eq!(
            m.upstream.count(),
            count,
            "{authorization:?}: nothing forwarded"
        );
    }

    // The same key after a tab is one credential, and neither header reaches the upstream.
    for headers in [
        format!("Authorization: Bearer\t{key}\r\nX-Api-Key: {key}\r\n"),
        format!("Authorization: Bearer\t{key}\r\n"),
    ] {
        let count = m.upstream.count();
        let r = send(addr, "GET", "/v1/x", &headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.body);
        let requests = m.upstream.requests();
        let [request] = &requests[count..] else {
            panic!("one request upstream: {requests:?}");
        };
        assert_eq!(request.header("authorization"), None, "{headers:?}");
        assert_eq!(request.header("x-api-key"), None, "{headers:?}");
        assert_eq!(request.header("x-tollgate-org"), Some("org_spelling"));
    }
}
