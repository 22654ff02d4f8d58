//! Bad input on every POST and query: 4xx problem+json whose detail names the field, and nothing written.

use serde_json::{Value, json};
use tollgate_e2e::app::{Auth, TestApp};

async fn counts(app: &TestApp) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM orgs), (SELECT count(*) FROM api_keys),
                (SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL)",
    )
    .fetch_one(&app.state.pg)
    .await
    .unwrap()
}

#[track_caller]
fn assert_names(r: &tollgate_e2e::app::Resp, status: u16, field: &str) {
    let p = r.problem(status);
    assert_eq!(p["field"], field, "{}", r.text);
    assert!(
        p["detail"].as_str().unwrap().contains(field),
        "detail names {field}: {}",
        r.text
    );
}

#[tokio::test]
async fn every_post_rejects_bad_input_naming_the_field_and_writes_nothing() {
    let app = TestApp::start().await;
    app.create_org("org_alpha").await;
    let (key_id, _) = app.create_key("org_alpha").await;
    let before = counts(&app).await;
    let huge = "x".repeat(70 * 1024);

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        // orgs.create
        (
            "/api/orgs.create",
            json!({"orgId": 5, "name": "A", "ownerUserId": "user_1"}),
            422,
            "orgId",
        ),
        (
            "/api/orgs.create",
            json!({"orgId": "acme", "name": "A", "ownerUserId": "user_1"}),
            422,
            "orgId",
        ),
        (
            "/api/orgs.create",
            json!({"orgId": "org_a", "ownerUserId": "user_1"}),
            422,
            "name",
        ),
        (
            "/api/orgs.create",
            json!({"orgId": "org_a", "name": ["A"], "ownerUserId": "user_1"}),
            422,
            "name",
        ),
        (
            "/api/orgs.create",
            json!({"orgId": "org_a", "name": "  ", "ownerUserId": "user_1"}),
            422,
            "name",
        ),
        (
            "/api/orgs.create",
            json!({"orgId": "org_a", "name": "A"}),
            422,
            "ownerUserId",
        ),
        (
            "/api/orgs.create",
            json!({"orgId": "org_a", "name": "A", "ownerUserId": "user 1"}),
            422,
            "ownerUserId",
        ),
        (
            "/api/orgs.create",
            json!({"orgId": "org_a", "name": "A", "ownerUserId": "user_1", "plan": "pro"}),
            422,
            "plan",
        ),
        (
            "/api/orgs.create",
            json!(["org_a", "A", "user_1"]),
            400,
            "body",
        ),
        // keys.create
        (
            "/api/keys.create",
            json!({"orgId": "org_alpha"}),
            422,
            "name",
        ),
        (
            "/api/keys.create",
            json!({"orgId": "org_alpha", "name": 7}),
            422,
            "name",
        ),
        (
            "/api/keys.create",
            json!({"orgId": "org_alpha", "name": ""}),
            422,
            "name",
        ),
        (
            "/api/keys.create",
            json!({"orgId": "org_alpha", "name": "n".repeat(101)}),
            422,
            "name",
        ),
        (
            "/api/keys.create",
            json!({"orgId": "org_alpha", "name": "k", "scopes": []}),
            422,
            "scopes",
        ),
        (
            "/api/keys.create",
            json!({"orgId": true, "name": "k"}),
            422,
            "orgId",
        ),
        // keys.revoke
        ("/api/keys.revoke", json!({}), 422, "keyId"),
        (
            "/api/keys.revoke",
            json!({"keyId": "not-a-uuid"}),
            422,
            "keyId",
        ),
        ("/api/keys.revoke", json!({"keyId": 12}), 422, "keyId"),
        (
            "/api/keys.revoke",
            json!({"keyId": key_id, "force": true}),
            422,
            "force",
        ),
    ];
    for (path, body, status, field) in cases {
        let r = app.post(path, Auth::Operator, &body).await;
        assert_names(&r, status, field);
    }
    for path in ["/api/orgs.create", "/api/keys.create", "/api/keys.revoke"] {
        for raw in ["{\"orgId\":", "", "nope", "[1,"] {
            let r = app.post_raw(path, Auth::Operator, raw.to_owned()).await;
            assert_names(&r, 400, "body");
        }
        let r = app
            .post_raw(path, Auth::Operator, format!("{{\"name\":\"{huge}\"}}"))
            .await;
        assert_names(&r, 413, "body");
        let req = app
            .http
            .post(app.url(path))
            .header("content-type", "text/plain")
            .body("{}");
        let r = app.send(req, Auth::Operator).await;
        assert_names(&r, 415, "Content-Type");
    }
    assert_eq!(counts(&app).await, before, "nothing was written");
}

#[tokio::test]
async fn bad_query_parameters_name_the_parameter() {
    let app = TestApp::start().await;
    let r = app.get("/api/keys.list?orgId=acme", Auth::Operator).await;
    assert_names(&r, 422, "orgId");
    let r = app
        .get("/api/keys.list?orgId=org_a&limit=5", Auth::Operator)
        .await;
    assert_names(&r, 422, "limit");
}
