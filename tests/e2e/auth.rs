//! The auth matrix: every route of the foundation against every kind of credential, with the exact status.

use serde_json::{Value, json};
use std::time::Duration;
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::clerk::{self, TestKey};

#[derive(Clone, Copy, Debug)]
enum Route {
    OrgsCreate,
    KeysCreate,
    KeysList,
    KeysRevoke,
    Smoke,
}

const ROUTES: [Route; 5] = [
    Route::OrgsCreate,
    Route::KeysCreate,
    Route::KeysList,
    Route::KeysRevoke,
    Route::Smoke,
];

async fn call(
    app: &TestApp,
    route: Route,
    auth: Auth<'_>,
    victim_key: &str,
) -> tollgate_e2e::app::Resp {
    match route {
        Route::OrgsCreate => {
            let body = json!({"orgId": "org_alpha", "name": "org_alpha Inc.", "ownerUserId": "user_alpha"});
            app.post("/api/orgs.create", auth, &body).await
        }
        Route::KeysCreate => {
            app.post(
                "/api/keys.create",
                auth,
                &json!({"orgId": "org_alpha", "name": "k"}),
            )
            .await
        }
        Route::KeysList => app.get("/api/keys.list?orgId=org_alpha", auth).await,
        Route::KeysRevoke => {
            app.post(
                "/api/keys.revoke",
                auth,
                &json!({"orgId": "org_alpha", "keyId": victim_key}),
            )
            .await
        }
        Route::Smoke => app.get("/api/diag/smoke", auth).await,
    }
}

fn with(mut claims: Value, edit: impl FnOnce(&mut Value)) -> Value {
    edit(&mut claims);
    claims
}

#[tokio::test]
async fn every_route_answers_every_credential_with_its_exact_status() {
    let app = TestApp::start().await;
    app.create_org("org_alpha").await;
    app.create_org("org_beta").await;
    let (_, key) = app.create_key("org_alpha").await;
    let (revoked_id, revoked) = app.create_key("org_alpha").await;
    let (victim, _) = app.create_key("org_alpha").await;
    let r = app
        .post(
            "/api/keys.revoke",
            Auth::Operator,
            &json!({"keyId": revoked_id}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let now = tollgate_common::clock::Clock::now(&tollgate_common::clock::SystemClock).timestamp();
    let alice = clerk::claims("user_alpha", Some("org_alpha"));
    let tokens: Vec<(&str, String)> = vec![
        (
            "expired",
            clerk::sign(
                TestKey::A,
                &with(alice.clone(), |c| c["exp"] = json!(now - 120)),
            ),
        ),
        (
            "not yet valid",
            clerk::sign(
                TestKey::A,
                &with(alice.clone(), |c| c["nbf"] = json!(now + 120)),
            ),
        ),
        (
            "wrong issuer",
            clerk::sign(
                TestKey::A,
                &with(alice.clone(), |c| c["iss"] = json!("https://evil.test")),
            ),
        ),
        ("alg none", clerk::forge_alg_none(TestKey::A, &alice)),
        (
            "hs256 with the public key",
            clerk::forge_hs256_with_public_key(TestKey::A, &alice),
        ),
        ("unknown kid", clerk::sign(TestKey::B, &alice)),
        ("garbage", "not-a-jwt".to_owned()),
        (
            "signature of another key",
            clerk::sign_with_kid(TestKey::B, TestKey::A.kid(), &alice),
        ),
    ];
    let other_org = clerk::sign(TestKey::A, &clerk::claims("user_beta", Some("org_beta")));
    let own = clerk::sign(TestKey::A, &alice);
    let own_v2 = clerk::sign(TestKey::A, &clerk::claims_v2("user_alpha", "org_alpha"));

    for route in ROUTES {
        let public = matches!(route, Route::Smoke);
        let expect = |status: u16| if public { 200 } else { status };

        let r = call(&app, route, Auth::None, &victim).await;
        assert_eq!(
            r.status,
            expect(401),
            "{route:?} without credentials: {}",
            r.text
        );
        if !public {
            r.problem(401);
            assert_eq!(r.headers["www-authenticate"], "Bearer");
        }
        for (what, token) in &tokens {
            let r = call(&app, route, Auth::Bearer(token), &victim).await;
            assert_eq!(r.status, expect(401), "{route:?} with {what}: {}", r.text);
        }
        let r = call(&app, route, Auth::Bearer(&other_org), &victim).await;
        assert_eq!(
            r.status,
            expect(403),
            "{route:?} with another org's token: {}",
            r.text
        );
        for (what, token) in [("v1", &own), ("v2", &own_v2)] {
            let r = call(&app, route, Auth::Bearer(token), &victim).await;
            assert_eq!(
                r.status, 200,
                "{route:?} with the org's own {what} token: {}",
                r.text
            );
        }
        let r = call(&app, route, Auth::ApiKey(&key), &victim).await;
        assert_eq!(
            r.status,
            expect(403),
            "{route:?} with an API key: {}",
            r.text
        );
        let r = call(&app, route, Auth::Bearer(&key), &victim).await;
        assert_eq!(
            r.status,
            expect(403),
            "{route:?} with an API key as bearer: {}",
            r.text
        );
        let r = call(&app, route, Auth::ApiKey(&revoked), &victim).await;
        assert_eq!(
            r.status,
            expect(401),
            "{route:?} with a revoked key: {}",
            r.text
        );
        let r = call(&app, route, Auth::Operator, &victim).await;
        assert_eq!(r.status, 200, "{route:?} as the operator: {}", r.text);
    }
}

#[tokio::test]
async fn a_malformed_authorization_header_is_401() {
    let app = TestApp::start().await;
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "tg_abc"] {
        let req = app
            .http
            .get(app.url("/api/keys.list"))
            .header("authorization", value);
        let r = app.send(req, Auth::None).await;
        r.problem(401);
    }
}

#[tokio::test]
async fn credentials_are_checked_before_the_body_is_read() {
    let app = TestApp::start().await;
    let r = app
        .post_raw("/api/orgs.create", Auth::None, "{not json")
        .await;
    r.problem(401);
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_and_finds_a_rotated_key() {
    let app = TestApp::start().await;
    app.create_org("org_alpha").await;
    let alice = clerk::claims("user_alpha", Some("org_alpha"));
    let signed_by_b = clerk::sign(TestKey::B, &alice);

    let r = app.get("/api/keys.list", Auth::Bearer(&signed_by_b)).await;
    r.problem(401);
    let before = app.jwks.fetches();
    assert!(before >= 1, "the unknown kid caused a fetch");

    app.jwks.publish(&[TestKey::A, TestKey::B]);
    let r = app.get("/api/keys.list", Auth::Bearer(&signed_by_b)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        app.jwks.fetches(),
        before + 1,
        "exactly one refetch found the rotated key"
    );

    // Cached now: no further fetches.
    let r = app.get("/api/keys.list", Auth::Bearer(&signed_by_b)).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.jwks.fetches(), before + 1);
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_verifier_hammer_clerk() {
    let app = TestApp::builder()
        .start_with_config(|c| c.common.clerk.min_refresh_interval = Duration::from_secs(600))
        .await;
    app.create_org("org_alpha").await;
    let alice = clerk::claims("user_alpha", Some("org_alpha"));
    let r = app
        .get(
            "/api/keys.list",
            Auth::Bearer(&clerk::sign(TestKey::A, &alice)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(app.jwks.fetches(), 1);

    let forged = clerk::sign_with_kid(TestKey::A, "made-up-kid", &alice);
    let calls = (0..20).map(|_| app.get("/api/keys.list", Auth::Bearer(&forged)));
    for r in futures_util::future::join_all(calls).await {
        r.problem(401);
    }
    assert_eq!(
        app.jwks.fetches(),
        1,
        "refetches are floored by min_refresh_interval"
    );
}

#[tokio::test]
async fn a_session_without_an_active_org_may_not_act_on_orgs() {
    let app = TestApp::start().await;
    app.create_org("org_alpha").await;
    let token = clerk::sign(TestKey::A, &clerk::claims("user_alpha", None));
    let r = app.get("/api/keys.list", Auth::Bearer(&token)).await;
    r.problem(403);
    let r = app
        .post(
            "/api/keys.create",
            Auth::Bearer(&token),
            &json!({"name": "k"}),
        )
        .await;
    r.problem(403);
}

#[tokio::test]
async fn the_jwks_being_unreachable_is_503_not_401() {
    let app = TestApp::builder()
        .env(
            "CLERK_JWKS_URL",
            &format!("http://127.0.0.1:{}/jwks.json", tollgate_e2e::free_port()),
        )
        .start()
        .await;
    let token = clerk::sign(TestKey::A, &clerk::claims("user_alpha", Some("org_alpha")));
    let r = app.get("/api/keys.list", Auth::Bearer(&token)).await;
    r.problem(503);
}
