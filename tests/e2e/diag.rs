//! 9.1 `GET /api/diag/smoke`, `/readyz` and `/healthz` while a dependency comes and goes.

use std::time::Duration;
use tollgate_e2e::app::{ADMIN_TOKEN, Auth, TestApp};
use tollgate_e2e::redis_server::RedisServer;

#[tokio::test]
async fn smoke_reports_each_check_with_its_latency_and_no_secret() {
    let app = TestApp::start().await;
    let r = app.get("/api/diag/smoke", Auth::None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["ok"], true);
    for check in ["postgres", "redis", "settings"] {
        assert_eq!(r.json["checks"][check]["ok"], true, "{check}: {}", r.text);
        assert!(
            r.json["checks"][check]["latencyMs"].is_number(),
            "{check}: {}",
            r.text
        );
    }
    assert!(!r.text.contains(ADMIN_TOKEN));
    assert!(
        !r.text.contains(&app.db.name),
        "no connection details: {}",
        r.text
    );
}

#[tokio::test]
async fn smoke_names_redis_while_it_is_down_and_recovers_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::builder().redis_url(&redis.url()).start().await;
    let r = app.get("/api/diag/smoke", Auth::None).await;
    assert_eq!(r.status, 200, "{}", r.text);

    redis.stop();
    let r = app.get("/api/diag/smoke", Auth::None).await;
    let p = r.problem(503);
    assert_eq!(p["ok"], false);
    assert_eq!(p["failing"], serde_json::json!(["redis"]));
    assert!(
        p["detail"].as_str().unwrap().starts_with("redis:"),
        "{}",
        r.text
    );
    assert_eq!(p["checks"]["postgres"]["ok"], true);
    assert!(
        !r.text.contains(&redis.port.to_string()),
        "no addresses in the output: {}",
        r.text
    );
    app.get("/readyz", Auth::None).await.problem(503);
    let live = app.get("/healthz", Auth::None).await;
    assert_eq!(live.status, 200, "the process stays up");

    redis.restart().await;
    tollgate_e2e::wait::until(Duration::from_secs(10), "smoke to pass again", || async {
        (app.get("/api/diag/smoke", Auth::None).await.status == 200).then_some(())
    })
    .await;
    assert_eq!(app.get("/readyz", Auth::None).await.status, 200);
}
