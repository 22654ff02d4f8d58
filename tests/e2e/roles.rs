//! Roles inside an org: every member reads; only the roles of `TOLLGATE_ADMIN_ROLES` change billing, payment
//! methods and keys; the operator is unaffected. Tokens of both Clerk versions, minted with each role.

use serde_json::{Value, json};
use tollgate_e2e::app::{Auth, Resp, TestApp};
use tollgate_e2e::clerk::{self, TestKey};
use tollgate_e2e::stripe::StripeEmulator;

const ORG: &str = "org_roles";

/// How a token names the org role.
#[derive(Debug, Clone, Copy)]
enum Version {
    V1,
    V2,
}

/// A session token of `user` in [`ORG`] with `role` written as its version writes it: `admin` is `org:admin` in
/// v1 and `admin` in v2; `None` leaves the role out.
fn token(version: Version, user: &str, role: Option<&str>) -> String {
    let claims = match version {
        Version::V1 => {
            let role = role.map(|r| format!("org:{r}"));
            clerk::claims_with_role(user, ORG, role.as_deref())
        }
        Version::V2 => clerk::claims_v2_with_role(user, ORG, role),
    };
    clerk::sign(TestKey::A, &claims)
}

async fn key_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
        .fetch_one(&app.state.pg)
        .await
        .expect("count keys")
}

/// Asserts the role refusal: 403 problem+json naming the roles required, in `detail` and `requiredRoles`.
#[track_caller]
fn assert_role_refused(r: &Resp, required: &[&str]) {
    let p = r.problem(403);
    assert_eq!(p["type"], "/problems/forbidden", "{}", r.text);
    assert_eq!(p["requiredRoles"], json!(required), "{}", r.text);
    let detail = p["detail"].as_str().unwrap_or_default();
    for role in required {
        assert!(detail.contains(role), "detail names {role}: {detail}");
    }
}

#[tokio::test]
async fn members_read_and_only_admins_change_with_either_token_version() {
    let app = TestApp::start().await;
    app.create_org(ORG).await;
    for version in [Version::V1, Version::V2] {
        let admin = token(version, "user_admin", Some("admin"));
        let member = token(version, "user_member", Some("member"));

        // A changing route: the admin issues a key, the member is refused and issues none.
        let before = key_count(&app).await;
        let r = app
            .post(
                "/api/keys.create",
                Auth::Bearer(&member),
                &json!({"name": "member's key"}),
            )
            .await;
        assert_role_refused(&r, &["org:admin"]);
        // v1's `org:member` and v2's `member` are one role.
        assert!(
            r.json["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("the session's role is org:member"),
            "{version:?}: the detail names the session's role: {}",
            r.text
        );
        assert_eq!(
            key_count(&app).await,
            before,
            "{version:?}: nothing written"
        );

        let r = app
            .post(
                "/api/keys.create",
                Auth::Bearer(&admin),
                &json!({"name": "admin's key"}),
            )
            .await;
        assert_eq!(r.status, 200, "{version:?}: {}", r.text);
        assert_eq!(key_count(&app).await, before + 1);
        let key_id = r.json["keyId"].as_str().expect("keyId").to_owned();

        // Revoking is a change too: the member's attempt leaves the key active.
        let r = app
            .post(
                "/api/keys.revoke",
                Auth::Bearer(&member),
                &json!({"keyId": key_id}),
            )
            .await;
        assert_role_refused(&r, &["org:admin"]);
        assert_eq!(
            key_count(&app).await,
            before + 1,
            "{version:?}: not revoked"
        );

        // Reading routes: open to every member.
        for who in [&member, &admin] {
            let r = app
                .get("/api/me/entitlements.read", Auth::Bearer(who))
                .await;
            assert_eq!(r.status, 200, "{version:?}: {}", r.text);
            let r = app.get("/api/keys.list", Auth::Bearer(who)).await;
            assert_eq!(r.status, 200, "{version:?}: {}", r.text);
            assert!(
                r.json
                    .as_array()
                    .is_some_and(|keys| keys.iter().any(|k| k["keyId"] == key_id.as_str())),
                "{version:?}: {}",
                r.text
            );
            let r = app
                .get("/api/usage/history?periods=2", Auth::Bearer(who))
                .await;
            assert_eq!(r.status, 200, "{version:?}: {}", r.text);
        }
    }
}

#[tokio::test]
async fn a_session_without_a_role_only_reads() {
    let app = TestApp::start().await;
    app.create_org(ORG).await;
    for version in [Version::V1, Version::V2] {
        let none = token(version, "user_norole", None);
        let r = app
            .post(
                "/api/keys.create",
                Auth::Bearer(&none),
                &json!({"name": "k"}),
            )
            .await;
        assert_role_refused(&r, &["org:admin"]);
        assert!(
            r.json["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("no organization role"),
            "{}",
            r.text
        );
        let r = app
            .get("/api/me/entitlements.read", Auth::Bearer(&none))
            .await;
        assert_eq!(r.status, 200, "{version:?}: {}", r.text);
    }
    assert_eq!(key_count(&app).await, 0);
}

#[tokio::test]
async fn a_custom_role_of_the_setting_is_admitted() {
    let app = TestApp::builder()
        .env("TOLLGATE_ADMIN_ROLES", "org:admin, billing_manager")
        .start()
        .await;
    app.create_org(ORG).await;
    for version in [Version::V1, Version::V2] {
        let manager = token(version, "user_manager", Some("billing_manager"));
        let r = app
            .post(
                "/api/keys.create",
                Auth::Bearer(&manager),
                &json!({"name": format!("{version:?}")}),
            )
            .await;
        assert_eq!(r.status, 200, "{version:?}: {}", r.text);
        let member = token(version, "user_member", Some("member"));
        let r = app
            .post(
                "/api/keys.create",
                Auth::Bearer(&member),
                &json!({"name": "member"}),
            )
            .await;
        assert_role_refused(&r, &["org:admin", "org:billing_manager"]);
    }
    assert_eq!(key_count(&app).await, 2);

    // Without the setting, the same role is an ordinary member.
    let default_roles = TestApp::start().await;
    default_roles.create_org(ORG).await;
    let manager = token(Version::V2, "user_manager", Some("billing_manager"));
    let r = default_roles
        .post(
            "/api/keys.create",
            Auth::Bearer(&manager),
            &json!({"name": "k"}),
        )
        .await;
    assert_role_refused(&r, &["org:admin"]);
}

#[tokio::test]
async fn the_operator_is_unaffected() {
    // A list naming no role any token has: the operator still changes everything.
    let app = TestApp::builder()
        .env("TOLLGATE_ADMIN_ROLES", "org:owner")
        .start()
        .await;
    app.create_org(ORG).await;
    let (key_id, _) = app.create_key(ORG).await;
    let r = app
        .post(
            "/api/keys.revoke",
            Auth::Operator,
            &json!({"orgId": ORG, "keyId": key_id}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // And an admin of Clerk's default role is now refused, naming the configured role.
    let admin = token(Version::V1, "user_admin", Some("admin"));
    let r = app
        .post(
            "/api/keys.create",
            Auth::Bearer(&admin),
            &json!({"name": "k"}),
        )
        .await;
    assert_role_refused(&r, &["org:owner"]);
}

async fn customers(stripe: &StripeEmulator) -> usize {
    stripe.get("/v1/customers").await["data"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn stored_customer(app: &TestApp) -> Option<String> {
    sqlx::query_scalar("SELECT stripe_customer_id FROM orgs WHERE clerk_org_id = $1")
        .bind(ORG)
        .fetch_one(&app.state.pg)
        .await
        .expect("read org")
}

#[tokio::test]
async fn a_members_billing_change_reaches_neither_stripe_nor_the_database() {
    let stripe = StripeEmulator::start().await;
    stripe.seed_prices().await;
    let app = TestApp::builder().stripe(&stripe).start().await;
    app.create_org(ORG).await;
    let member = token(Version::V2, "user_member", Some("member"));
    let admin = token(Version::V2, "user_admin", Some("admin"));

    let r = app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&member),
            &json!({"email": "member@roles.test"}),
        )
        .await;
    assert_role_refused(&r, &["org:admin"]);
    assert_eq!(customers(&stripe).await, 0, "no Stripe customer");
    assert_eq!(stored_customer(&app).await, None);

    let r = app
        .post(
            "/api/stripe/customer.ensure",
            Auth::Bearer(&admin),
            &json!({"email": "admin@roles.test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(customers(&stripe).await, 1);
    assert!(stored_customer(&app).await.is_some());

    // With a customer, the member is refused the portal (cards and plans) but reads the invoices.
    let r = app
        .post(
            "/api/payments/portal.create",
            Auth::Bearer(&member),
            &json!({}),
        )
        .await;
    assert_role_refused(&r, &["org:admin"]);
    let r = app.get("/api/invoices.list", Auth::Bearer(&member)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// The operations whose `clerk` requirement names roles in the document: those that change the org.
const CHANGING: [&str; 14] = [
    "POST /api/orgs.create",
    "POST /api/keys.create",
    "POST /api/keys.revoke",
    "POST /api/stripe/customer.ensure",
    "POST /api/stripe/subscription.create",
    "POST /api/stigg/provision",
    "POST /api/payments/setup-intent.create",
    "POST /api/payments/default-method.set",
    "POST /api/payments/portal.create",
    "POST /api/plans/upgrade.now",
    "POST /api/plans/downgrade.schedule",
    "POST /api/billing/budget.set",
    "POST /api/billing/budget.clear",
    "POST /api/webhooks/endpoints.set",
];

/// The document and the server agree: every operation whose `clerk` security requirement lists the admin roles
/// refuses a member with `requiredRoles` — before reading the body, so even a malformed one — and no other
/// operation does.
#[tokio::test]
async fn the_document_names_the_roles_of_exactly_the_changing_routes() {
    let app = TestApp::builder()
        .env("TOLLGATE_ADMIN_ROLES", "org:admin,org:billing_manager")
        .start()
        .await;
    app.create_org(ORG).await;
    let member = token(Version::V2, "user_member", Some("member"));
    let doc = app.get("/api/openapi.json", Auth::None).await.json;
    let mut gated = Vec::new();
    for (path, methods) in doc["paths"].as_object().expect("paths") {
        for (method, op) in methods.as_object().expect("methods") {
            let name = format!("{} {path}", method.to_uppercase());
            let clerk: Vec<&Value> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|req| req.get("clerk"))
                .collect();
            if clerk.is_empty() {
                continue;
            }
            let roles = clerk[0].clone();
            let url = app.url(path);
            let req = match method.as_str() {
                "get" => app.http.get(url),
                _ => app
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .body("{not json"),
            };
            let r = app.send(req, Auth::Bearer(&member)).await;
            if roles == json!([]) {
                assert!(
                    r.json.get("requiredRoles").is_none(),
                    "{name} is open to members: {}",
                    r.text
                );
            } else {
                assert_eq!(roles, json!(["org:admin", "org:billing_manager"]), "{name}");
                assert_role_refused(&r, &["org:admin", "org:billing_manager"]);
                let forbidden = &op["responses"]["403"]["description"];
                assert!(
                    forbidden
                        .as_str()
                        .is_some_and(|d| d.contains("requiredRoles")),
                    "{name}: the 403 says why: {forbidden}"
                );
                gated.push(name);
            }
        }
    }
    gated.sort();
    let mut expected = CHANGING.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(gated, expected);
}
