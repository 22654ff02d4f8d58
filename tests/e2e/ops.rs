//! Operations: request ids, metrics, OpenAPI, problem+json for unknown routes, migrations under concurrency.

use serde_json::json;
use std::sync::Arc;
use tollgate_control_plane::App;
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::db::TestDb;

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_a_given_one() {
    let app = TestApp::start().await;
    let r = app.get("/healthz", Auth::None).await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let r = app.get("/api/nope", Auth::None).await;
    assert!(r.headers.contains_key("x-request-id"));
    let req = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "req-from-client-1");
    let r = app.send(req, Auth::None).await;
    assert_eq!(r.headers["x-request-id"], "req-from-client-1");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = TestApp::start().await;
    app.get("/api/nope", Auth::Operator).await.problem(404);
    app.get("/api/orgs.create", Auth::Operator)
        .await
        .problem(405);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = TestApp::start().await;
    app.post("/api/orgs.create", Auth::None, &json!({})).await;
    let r = app.get("/metrics", Auth::None).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type().starts_with("text/plain"));
    assert!(
        r.text
            .lines()
            .any(|l| l.starts_with("tollgate_cp_http_requests_total{")
                && l.contains("route=\"/api/orgs.create\"")
                && l.contains("status=\"401\"")
                && l.ends_with(" 1")),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("tollgate_cp_http_request_duration_seconds_bucket")
    );
    assert!(
        r.text
            .contains("tollgate_cp_auth_failures_total{reason=\"unauthenticated\"} 1")
    );
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_with_its_security() {
    let app = TestApp::start().await;
    let r = app.get("/api/openapi.json", Auth::None).await;
    assert_eq!(r.status, 200);
    let paths = r.json["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/orgs.create", "post"),
        ("/api/keys.create", "post"),
        ("/api/keys.list", "get"),
        ("/api/keys.revoke", "post"),
        ("/api/diag/smoke", "get"),
        ("/api/usage/seed", "post"),
        ("/api/usage/record", "post"),
        ("/api/usage/history", "get"),
        ("/api/me/entitlements.read", "get"),
        ("/api/quota/check", "post"),
        ("/api/quota/deny-envelope.example", "post"),
        ("/api/admin/quotas.reset", "post"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{path} {method} missing");
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses
                .keys()
                .any(|status| status.starts_with('2') || status == "429"),
            "{path}: no success response"
        );
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    response["content"]["application/problem+json"].is_object(),
                    "{path} {status}: problem responses are documented as problem+json"
                );
            }
        }
    }
    for scheme in ["clerk", "apiKey", "operator"] {
        assert!(
            r.json["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    // A changing route names the roles a user needs (TOLLGATE_ADMIN_ROLES); a reading one none.
    assert_eq!(
        paths["/api/orgs.create"]["post"]["security"],
        json!([{"clerk": ["org:admin"]}, {"operator": []}])
    );
    assert_eq!(
        paths["/api/keys.list"]["get"]["security"],
        json!([{"clerk": []}, {"operator": []}])
    );
}

#[tokio::test]
async fn replicas_starting_together_apply_migrations_once() {
    let db = Arc::new(TestDb::create().await);
    let configs = futures_util::future::join_all(
        (0..3).map(|_| TestApp::builder().database(db.clone()).config()),
    )
    .await;
    let starts = configs.into_iter().map(|(config, _, _)| App::start(config));
    for started in futures_util::future::join_all(starts).await {
        started.expect("every replica starts");
    }
    let pool = db.pool().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    let files = std::fs::read_dir(tollgate_e2e::workspace_root().join("migrations"))
        .unwrap()
        .count();
    assert_eq!(applied, i64::try_from(files).unwrap());
}
