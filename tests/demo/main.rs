//! `tollgate-demo`: the stack's frontend stand-in (`./scripts/stack`), on an origin of its own. It plays Clerk for
//! the demo org — a JWKS (`/.well-known/jwks.json`) and a session token of its owner (`/token`, minted on each
//! call, valid ten minutes: the page asks again, as Clerk's `getToken()` does) signed with a test-only key — and
//! serves a page (`/`) embedding the three widgets from the control plane, with the curl line that burns quota.
//!
//! Settings: `DEMO_LISTEN` (127.0.0.1:3000), `DEMO_CP_URL`, `DEMO_PROXY_URL`, `DEMO_KEY_FILE` (the demo org's API
//! key, read on each page view), `DEMO_ORG` (org_demo), `DEMO_USER` (user_demo).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;
use tollgate_e2e::clerk::{self, TestKey};

struct Demo {
    cp: String,
    proxy: String,
    key_file: String,
    org: String,
    user: String,
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn jwks() -> impl IntoResponse {
    Json(json!({ "keys": [TestKey::A.jwk()] }))
}

async fn token(State(demo): State<Arc<Demo>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        clerk::sign(TestKey::A, &clerk::claims(&demo.user, Some(&demo.org))),
    )
}

async fn page(State(demo): State<Arc<Demo>>) -> impl IntoResponse {
    let key = std::fs::read_to_string(&demo.key_file).unwrap_or_default();
    let (cp, proxy, key) = (&demo.cp, &demo.proxy, key.trim());
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tollgate demo</title>
<script>
  window.TollgateWidgets = {{
    baseUrl: "{cp}",
    getToken: () => fetch("/token").then((r) => r.text()),
  }};
</script>
<script src="{cp}/widgets/v1/tollgate.js"></script>
<style>
  body {{ font-family: ui-sans-serif, system-ui, sans-serif; background: #fafafa; color: #09090b; margin: 0; }}
  main {{ max-width: 680px; margin: 0 auto; padding: 32px 20px; display: grid; gap: 16px; }}
  h1 {{ font-size: 20px; margin: 0; }}
  pre {{ margin: 0; background: #18181b; color: #fafafa; padding: 12px 14px; border-radius: 8px; overflow-x: auto; font-size: 12px; }}
  p {{ margin: 0; color: #52525b; font-size: 14px; }}
</style>
</head>
<body>
<main>
  <h1>Demo Inc. — billing</h1>
  <p>Signed in as the demo org's owner, with a session token this page's server mints (the stack's JWKS). The widgets
  below come from the control plane ({cp}/widgets/v1/tollgate.js) and call it from this origin.</p>
  <tollgate-usage metric="api_call" refresh="1"></tollgate-usage>
  <p>Burn quota and watch the meter move:</p>
  <pre>for i in $(seq 25); do curl -s -o /dev/null -H 'X-Api-Key: {key}' {proxy}/v1/hello; done</pre>
  <tollgate-plan-picker plans="starter,growth,pro"></tollgate-plan-picker>
  <tollgate-invoices limit="10" portal-target="_blank"></tollgate-invoices>
</main>
</body>
</html>
"#
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let listen = setting("DEMO_LISTEN", "127.0.0.1:3000");
    let demo = Arc::new(Demo {
        cp: setting("DEMO_CP_URL", "http://127.0.0.1:8080"),
        proxy: setting("DEMO_PROXY_URL", "http://127.0.0.1:8000"),
        key_file: setting("DEMO_KEY_FILE", ".stack/demo-key"),
        org: setting("DEMO_ORG", "org_demo"),
        user: setting("DEMO_USER", "user_demo"),
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/token", get(token))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(demo);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, router).await?;
    Ok(())
}
