//! JSON Schema's `integer` admits integer-valued numbers (`-65.0`, `1e3`): wherever the document says `integer`,
//! the server takes them as integers, and refuses fractions naming the field.

use tollgate_common::clock::{Clock, SystemClock};
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::metering::{Metering, Options};

#[tokio::test]
async fn stigg_requeue_takes_integer_valued_floats() {
    let app = TestApp::start().await;
    let r = app
        .post_raw(
            "/api/admin/stigg.requeue",
            Auth::Operator,
            r#"{"ids":[-65.0]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["requeued"], 0);
    // Taken as the integer -65 (no such operation), not refused as a float.
    assert_eq!(r.text, r#"{"requeued":0,"unknown":[-65]}"#);

    let r = app
        .post_raw(
            "/api/admin/stigg.requeue",
            Auth::Operator,
            r#"{"ids":[7,-65.5]}"#,
        )
        .await;
    assert_eq!(r.problem(422)["field"], "ids[1]", "{}", r.text);

    let r = app
        .get("/api/admin/stigg.outbox?limit=5.0", Auth::Operator)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .get("/api/admin/stigg.outbox?limit=2.5", Auth::Operator)
        .await;
    assert_eq!(r.problem(422)["field"], "limit", "{}", r.text);
}

#[tokio::test]
async fn usage_record_counts_an_integer_valued_float_as_that_integer() {
    let m = Metering::start(Options::default()).await;
    let key = m.org_with_key("org_integers").await;
    let at = SystemClock.now().to_rfc3339();
    let body = |id: &str, value: &str| {
        format!(
            r#"{{"metric":"api_call","value":{value},"occurredAt":"{at}","request_id":"{id}"}}"#
        )
    };
    let r = m
        .app
        .post_raw(
            "/api/usage/record",
            Auth::ApiKey(&key),
            body("float", "5.0"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["used"], 5);
    let r = m
        .app
        .post_raw(
            "/api/usage/record",
            Auth::ApiKey(&key),
            body("exponent", "1e1"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["used"], 15);

    // The same request_id spelled `5` is the same record: counted once.
    let r = m
        .app
        .post_raw("/api/usage/record", Auth::ApiKey(&key), body("float", "5"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["used"], 5, "the stored body of the first call");

    let r = m
        .app
        .post_raw(
            "/api/usage/record",
            Auth::ApiKey(&key),
            body("fraction", "1.5"),
        )
        .await;
    assert_eq!(r.problem(422)["field"], "value", "{}", r.text);
    let r = m
        .app
        .get("/api/me/entitlements.read", Auth::ApiKey(&key))
        .await;
    assert_eq!(r.json["used"], 15, "{}", r.text);

    let r = m
        .app
        .get("/api/usage/history?periods=2.0", Auth::ApiKey(&key))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json.as_array().map(Vec::len), Some(2), "{}", r.text);
}
