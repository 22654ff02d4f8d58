//! Issue 23: browsers on the origins of `TOLLGATE_CP_CORS_ORIGINS` may call the control plane; nobody else gets a
//! CORS header, the operator routes never do, and without the setting nothing changes.

use reqwest::Method;
use tollgate_e2e::app::{Auth, TestApp};

const APP: &str = "https://app.example.com";

async fn preflight(app: &TestApp, path: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .expect("preflight")
}

fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_an_allowed_origin_reads_entitlements_and_others_get_no_cors_headers() {
    let app = TestApp::builder()
        .env(
            "TOLLGATE_CP_CORS_ORIGINS",
            &format!("{APP},http://localhost:5173"),
        )
        .start()
        .await;
    app.create_org("org_cors").await;
    let token = app.user_token("user_cors", "org_cors");

    let r = preflight(&app, "/api/me/entitlements.read", APP).await;
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    let allowed = h["access-control-allow-headers"].to_str().expect("ascii");
    assert!(allowed.contains("authorization") && allowed.contains("idempotency-key"));
    assert_eq!(h["access-control-max-age"], "600");
    assert!(
        h.get("x-request-id").is_some(),
        "a preflight is a request like any other"
    );

    let r = reqwest::Client::new()
        .get(app.url("/api/me/entitlements.read"))
        .header("origin", APP)
        .bearer_auth(&token)
        .send()
        .await
        .expect("entitlements");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .expect("ascii")
            .contains("x-request-id")
    );
    assert!(
        r.headers()
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("origin")))
    );

    // Another origin, the operator's routes, and a call without an origin: no CORS header at all.
    for (path, origin) in [
        ("/api/me/entitlements.read", "https://evil.example.com"),
        ("/api/admin/jobs.list", APP),
        ("/api/jobs/stripe.process", APP),
    ] {
        let r = preflight(&app, path, origin).await;
        assert_eq!(
            cors_headers(&r),
            Vec::<String>::new(),
            "{path} from {origin}"
        );
        assert_ne!(r.status(), 204, "{path} from {origin}");
    }
    let r = app
        .get("/api/me/entitlements.read", Auth::Bearer(&token))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_the_control_plane_stays_server_to_server() {
    let app = TestApp::start().await;
    let r = preflight(&app, "/api/me/entitlements.read", APP).await;
    assert_eq!(r.status(), 405, "no preflight answer");
    assert_eq!(cors_headers(&r), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_origin_stops_the_control_plane_at_start_naming_the_key() {
    let Err(err) = TestApp::builder()
        .env("TOLLGATE_CP_CORS_ORIGINS", "*")
        .try_config()
        .await
    else {
        panic!("a wildcard origin was accepted");
    };
    assert!(err.contains("TOLLGATE_CP_CORS_ORIGINS"), "{err}");
}
