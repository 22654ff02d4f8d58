//! 1.1 `POST /api/orgs.create`.

use serde_json::json;
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::clerk::{self, TestKey};

async fn org_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orgs")
        .fetch_one(&app.state.pg)
        .await
        .unwrap()
}

#[tokio::test]
async fn creating_the_same_org_twice_returns_the_same_org() {
    let app = TestApp::start().await;
    let body = json!({"orgId": "org_2aBc", "name": "Acme", "ownerUserId": "user_1"});
    let first = app.post("/api/orgs.create", Auth::Operator, &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json, json!({"orgId": "org_2aBc"}));
    let again = app.post("/api/orgs.create", Auth::Operator, &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.text, first.text);
    assert_eq!(org_count(&app).await, 1);
}

#[tokio::test]
async fn the_same_org_id_with_another_owner_or_name_is_a_conflict() {
    let app = TestApp::start().await;
    let body = json!({"orgId": "org_2aBc", "name": "Acme", "ownerUserId": "user_1"});
    assert_eq!(
        app.post("/api/orgs.create", Auth::Operator, &body)
            .await
            .status,
        200
    );

    let r = app
        .post(
            "/api/orgs.create",
            Auth::Operator,
            &json!({"orgId": "org_2aBc", "name": "Acme", "ownerUserId": "user_2"}),
        )
        .await;
    assert_eq!(r.problem(409)["field"], "ownerUserId");
    let r = app
        .post(
            "/api/orgs.create",
            Auth::Operator,
            &json!({"orgId": "org_2aBc", "name": "Other", "ownerUserId": "user_1"}),
        )
        .await;
    assert_eq!(r.problem(409)["field"], "name");

    let (name, owner): (String, String) =
        sqlx::query_as("SELECT name, owner_user_id FROM orgs WHERE clerk_org_id = 'org_2aBc'")
            .fetch_one(&app.state.pg)
            .await
            .unwrap();
    assert_eq!((name.as_str(), owner.as_str()), ("Acme", "user_1"));
}

#[tokio::test]
async fn twenty_concurrent_identical_creates_make_one_org() {
    let app = TestApp::start().await;
    let body = json!({"orgId": "org_race", "name": "Race", "ownerUserId": "user_race"});
    let calls = (0..20).map(|_| app.post("/api/orgs.create", Auth::Operator, &body));
    let responses = futures_util::future::join_all(calls).await;
    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json, json!({"orgId": "org_race"}));
    }
    assert_eq!(org_count(&app).await, 1);
}

#[tokio::test]
async fn a_user_may_create_only_their_own_active_org_as_its_owner() {
    let app = TestApp::start().await;
    let token = clerk::sign(TestKey::A, &clerk::claims("user_1", Some("org_mine")));

    let other = json!({"orgId": "org_theirs", "name": "Theirs", "ownerUserId": "user_1"});
    let r = app
        .post("/api/orgs.create", Auth::Bearer(&token), &other)
        .await;
    assert!(r.problem(403)["detail"].as_str().unwrap().contains("orgId"));

    let someone_else = json!({"orgId": "org_mine", "name": "Mine", "ownerUserId": "user_2"});
    let r = app
        .post("/api/orgs.create", Auth::Bearer(&token), &someone_else)
        .await;
    assert!(
        r.problem(403)["detail"]
            .as_str()
            .unwrap()
            .contains("ownerUserId")
    );
    assert_eq!(org_count(&app).await, 0, "refused calls write nothing");

    let mine = json!({"orgId": "org_mine", "name": "Mine", "ownerUserId": "user_1"});
    let r = app
        .post("/api/orgs.create", Auth::Bearer(&token), &mine)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v2 = clerk::sign(TestKey::A, &clerk::claims_v2("user_1", "org_mine"));
    let r = app.post("/api/orgs.create", Auth::Bearer(&v2), &mine).await;
    assert_eq!(
        r.status, 200,
        "a v2 token (o.id) names the same org: {}",
        r.text
    );
    assert_eq!(org_count(&app).await, 1);
}
