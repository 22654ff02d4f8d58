//! API keys: issue, list, revoke, and revocation reaching the shared resolution code and the announce channel.

use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tollgate_common::keys;
use tollgate_e2e::app::{Auth, TestApp};

#[tokio::test]
async fn a_key_is_shown_once_and_stored_only_as_a_hash() {
    let app = TestApp::start().await;
    app.create_org("org_alpha").await;
    let token = app.user_token("user_alpha", "org_alpha");
    let r = app
        .post(
            "/api/keys.create",
            Auth::Bearer(&token),
            &json!({"name": "backend"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let key = r.json["key"].as_str().unwrap().to_owned();
    let prefix = r.json["prefix"].as_str().unwrap();
    assert!(keys::looks_like_key(&key));
    assert!(key.starts_with(prefix));

    let stored: (Vec<u8>, String) = sqlx::query_as("SELECT key_hash, prefix FROM api_keys")
        .fetch_one(&app.state.pg)
        .await
        .unwrap();
    assert_eq!(stored.0, Sha256::digest(key.as_bytes()).to_vec());
    assert_eq!(stored.1, prefix);
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM api_keys t")
        .fetch_one(&app.state.pg)
        .await
        .unwrap();
    assert!(!dump.contains(&key[3..]), "the key itself is not stored");

    let list = app.get("/api/keys.list", Auth::Bearer(&token)).await;
    assert_eq!(list.status, 200);
    assert!(!list.text.contains(&key), "the list never shows the key");
    let items = list.json.as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["keyId"], r.json["keyId"]);
    assert_eq!(items[0]["name"], "backend");
    assert_eq!(items[0]["prefix"], prefix);
    assert!(items[0]["createdAt"].is_string());
    assert!(items[0]["lastUsedAt"].is_null());

    let resolved = keys::resolve(&app.state.pg, &key)
        .await
        .unwrap()
        .expect("a fresh key resolves");
    assert_eq!(resolved.org.as_str(), "org_alpha");
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_the_shared_resolution_and_announced() {
    let app = TestApp::start().await;
    app.create_org("org_alpha").await;
    let (key_id, key) = app.create_key("org_alpha").await;
    assert!(keys::resolve(&app.state.pg, &key).await.unwrap().is_some());

    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(keys::revocations_channel(app.namespace()))
        .await
        .unwrap();

    let token = app.user_token("user_alpha", "org_alpha");
    let r = app
        .post(
            "/api/keys.revoke",
            Auth::Bearer(&token),
            &json!({"keyId": key_id}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"revoked": true}));

    assert_eq!(keys::resolve(&app.state.pg, &key).await.unwrap(), None);
    let message = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("the revocation is announced")
        .unwrap();
    let payload: String = message.get_payload().unwrap();
    let revocation = keys::Revocation::new(&key[..keys::DISPLAY_PREFIX_LEN], keys::hash(&key))
        .expect("a key's prefix");
    assert_eq!(
        keys::Announcement::parse(&payload),
        Some(keys::Announcement {
            revocation,
            epoch: 1
        })
    );
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let epoch: i64 = redis::cmd("GET")
        .arg(keys::revocations_epoch_key(app.namespace()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(epoch, 1);

    let again = app
        .post(
            "/api/keys.revoke",
            Auth::Bearer(&token),
            &json!({"keyId": key_id}),
        )
        .await;
    assert_eq!(again.status, 200, "revoking twice is fine: {}", again.text);
    assert_eq!(again.json, json!({"revoked": true}));
    let epoch: i64 = redis::cmd("GET")
        .arg(keys::revocations_epoch_key(app.namespace()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(epoch, 1, "and announces nothing");
    let list = app.get("/api/keys.list", Auth::Bearer(&token)).await;
    assert_eq!(list.json, json!([]));
}

#[tokio::test]
async fn another_orgs_key_cannot_be_revoked_or_seen() {
    let app = TestApp::start().await;
    app.create_org("org_alpha").await;
    app.create_org("org_beta").await;
    let (beta_key_id, beta_key) = app.create_key("org_beta").await;
    let alpha = app.user_token("user_alpha", "org_alpha");

    let r = app
        .post(
            "/api/keys.revoke",
            Auth::Bearer(&alpha),
            &json!({"keyId": beta_key_id}),
        )
        .await;
    assert_eq!(r.problem(404)["field"], "keyId");
    assert!(
        keys::resolve(&app.state.pg, &beta_key)
            .await
            .unwrap()
            .is_some(),
        "the key still works"
    );

    let r = app.get("/api/keys.list", Auth::Bearer(&alpha)).await;
    assert_eq!(r.json, json!([]));
    let r = app
        .get("/api/keys.list?orgId=org_beta", Auth::Bearer(&alpha))
        .await;
    r.problem(403);
}

#[tokio::test]
async fn the_operator_must_name_the_org() {
    let app = TestApp::start().await;
    let r = app.get("/api/keys.list", Auth::Operator).await;
    assert_eq!(r.problem(404)["field"], "orgId");
    let r = app
        .post("/api/keys.create", Auth::Operator, &json!({"name": "k"}))
        .await;
    assert_eq!(r.problem(404)["field"], "orgId");
    let r = app
        .post(
            "/api/keys.create",
            Auth::Operator,
            &json!({"orgId": "org_missing", "name": "k"}),
        )
        .await;
    assert_eq!(r.problem(404)["field"], "orgId");
}

/// A new key is shown once and stored only hashed: with an `Idempotency-Key`, its answer is not stored either (a
/// retry issues another key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_never_stored_in_the_clear_even_as_an_idempotent_answer() {
    let app = TestApp::start().await;
    app.create_org("org_shown_once").await;
    let send = || {
        app.send(
            app.http
                .post(app.url("/api/keys.create"))
                .header("Idempotency-Key", "create-the-key")
                .json(&json!({"orgId": "org_shown_once", "name": "ci"})),
            Auth::Operator,
        )
    };
    let first = send().await;
    assert_eq!(first.status, 200, "{}", first.text);
    let key = first.json["key"].as_str().expect("key").to_owned();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys WHERE position($1::bytea IN coalesce(body, ''::bytea)) > 0",
    )
    .bind(key.as_bytes())
    .fetch_one(&app.state.pg)
    .await
    .expect("search");
    assert_eq!(stored, 0, "the key is not kept as a replayable answer");
    let again = send().await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_ne!(
        again.json["key"], first.json["key"],
        "a retry issues a new key"
    );
}
