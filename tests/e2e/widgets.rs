//! Issue 23: the embeddable widgets in a real browser (Debian's headless Chromium, driven by playwright-core from
//! `clients/widgets/test/browser.mjs`), on a page of another origin than the control plane's.

use serde_json::Value;
use std::process::Command;
use tollgate_e2e::metering::{Metering, Options};
use tollgate_e2e::page::PageServer;
use tollgate_e2e::proxy::ProxyProcess;
use tollgate_e2e::stripe::StripeEmulator;
use tollgate_e2e::wait;

const ORG: &str = "org_widgets";

/// The stack a page embeds the widgets against.
struct Stack {
    m: Metering,
    proxy: ProxyProcess,
    /// A page on an origin the control plane allows.
    page: PageServer,
    /// A page on an origin it does not.
    other: PageServer,
    key: String,
    session: String,
    /// The org's subscription, when billing runs.
    sub: Option<String>,
}

impl Stack {
    /// `GET path` as the org's owner.
    async fn as_owner(&self, path: &str) -> tollgate_e2e::app::Resp {
        self.m
            .app
            .get(path, tollgate_e2e::app::Auth::Bearer(&self.session))
            .await
    }
}

/// The HTML of a page embedding the widgets served by the control plane at `cp`, signed in with `token`.
pub fn page_html(cp: &str, token: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Tollgate widgets</title>
<script>window.TollgateWidgets = {{ baseUrl: "{cp}", getToken: () => "{token}", stripePublishableKey: "pk_test_tollgate" }};</script>
<script src="{cp}/widgets/v1/tollgate.js"></script>
<style>body {{ font-family: system-ui, sans-serif; background: #fafafa; margin: 0; padding: 24px; }}
tollgate-usage, tollgate-plan-picker, tollgate-invoices {{ max-width: 640px; margin-bottom: 16px; }}</style>
</head>
<body>
{body}
</body>
</html>
"#
    )
}

async fn stack() -> Stack {
    stack_with(None).await
}

/// The stack; with `stripe`, billing against it and the org paying for `starter` (an active subscription, a card).
async fn stack_with(stripe: Option<&StripeEmulator>) -> Stack {
    let page = PageServer::start().await;
    let other = PageServer::start().await;
    if let Some(stripe) = stripe {
        stripe.seed_prices().await;
    }
    let m = Metering::start(Options {
        limit: 1000,
        stripe,
        control_plane_env: vec![("TOLLGATE_CP_CORS_ORIGINS".to_owned(), page.origin())],
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[]).await;
    let (key, sub) = match stripe {
        Some(stripe) => {
            let sub = crate::billing::paying(stripe, &m, ORG).await;
            (m.app.create_key(ORG).await.1, Some(sub))
        }
        None => (m.org_with_key(ORG).await, None),
    };
    let session = m.app.user_token("user_widgets", ORG);
    let body = if stripe.is_some() {
        r#"<tollgate-usage metric="api_call" refresh="0.5"></tollgate-usage>
<tollgate-plan-picker plans="starter,growth,pro"></tollgate-plan-picker>
<tollgate-invoices limit="10"></tollgate-invoices>"#
    } else {
        r#"<tollgate-usage metric="api_call" refresh="0.5"></tollgate-usage>"#
    };
    let html = page_html(&m.app.url(""), &session, body);
    page.set("/", html.clone());
    other.set("/", html);
    Stack {
        m,
        proxy,
        page,
        other,
        key,
        session,
        sub,
    }
}

/// Runs `scenario` of the browser driver with `env`; its result, or a panic with what it saw.
fn browser(scenario: &str, env: &[(&str, String)]) -> Value {
    let dir = tollgate_e2e::workspace_root().join("clients/widgets");
    assert!(
        dir.join("node_modules").is_dir(),
        "clients/widgets/node_modules is missing: ./scripts/test installs it (npm ci)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} is missing: ./scripts/test installs Debian's chromium"
    );
    let out = Command::new("node")
        .args(["test/browser.mjs", scenario])
        .current_dir(&dir)
        .env("CHROMIUM", &chromium)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let result: Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "the browser driver printed no result:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && result["ok"] == true,
        "{scenario}: {}",
        serde_json::to_string_pretty(&result).unwrap_or_default()
    );
    result["result"].clone()
}

fn screenshots() -> Vec<(&'static str, String)> {
    std::env::var("TOLLGATE_SCREENSHOTS")
        .map(|dir| vec![("SCREENSHOT_DIR", dir)])
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_meter_moves_by_exactly_the_proxied_requests() {
    let s = stack().await;
    let mut env = vec![
        ("PAGE_URL", s.page.url("/")),
        ("PROXY_URL", s.proxy.url()),
        ("API_KEY", s.key.clone()),
    ];
    env.extend(screenshots());
    let seen = browser("usage", &env);
    assert_eq!(
        seen["after"]["now"].as_u64(),
        seen["before"]["now"].as_u64().map(|n| n + 25)
    );
    // What the meter shows is what the endpoint says.
    let e = s.as_owner("/api/me/entitlements.read").await;
    assert_eq!(e.json["used"].as_u64(), seen["after"]["now"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_is_refused_by_the_browser() {
    let s = stack().await;
    let before = smoke_calls(&s.m).await;
    let seen = browser(
        "blocked",
        &[
            ("BLOCKED_URL", s.other.url("/")),
            ("PAGE_URL", s.page.url("/")),
            ("CP_URL", s.m.app.url("")),
            ("SESSION_TOKEN", s.session.clone()),
        ],
    );
    assert!(seen["outcome"]["simple"]["rejected"].is_string());
    // The simple request reached the control plane and was answered; the browser withheld the answer.
    assert!(
        smoke_calls(&s.m).await >= before + 2,
        "the blocked call and the allowed one were both answered"
    );
}

/// How many `GET /api/diag/smoke` the control plane answered 200.
async fn smoke_calls(m: &Metering) -> u64 {
    let metrics = m
        .app
        .get("/metrics", tollgate_e2e::app::Auth::None)
        .await
        .text;
    tollgate_e2e::metric_value(
        &metrics,
        "tollgate_cp_http_requests_total{method=\"GET\",route=\"/api/diag/smoke\",status=\"200\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invoices_widget_lists_what_invoices_list_returns() {
    let stripe = StripeEmulator::start().await;
    let s = stack_with(Some(&stripe)).await;
    let listed = s.as_owner("/api/invoices.list?limit=10").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert!(
        listed.json.as_array().is_some_and(|a| a.len() >= 2),
        "a paying org has invoices: {}",
        listed.text
    );
    let mut env = vec![
        ("PAGE_URL", s.page.url("/")),
        ("EXPECT_INVOICES", listed.json.to_string()),
    ];
    env.extend(screenshots());
    let seen = browser("invoices", &env);
    assert_eq!(
        seen["rows"].as_array().map(Vec::len),
        listed.json.as_array().map(Vec::len)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_pickers_preview_equals_the_invoice_its_upgrade_creates() {
    let stripe = StripeEmulator::start().await;
    let s = stack_with(Some(&stripe)).await;
    // Preview and upgrade prorate to the same minute (README, "Plan changes"): start early in one.
    wait::until(
        std::time::Duration::from_secs(70),
        "the start of a minute",
        || async {
            use tollgate_common::clock::{Clock, SystemClock};
            (SystemClock.now().timestamp().rem_euclid(60) < 30).then_some(())
        },
    )
    .await;
    let mut env = vec![
        ("PAGE_URL", s.page.url("/")),
        ("UPGRADE_TO", "growth".to_owned()),
    ];
    env.extend(screenshots());
    let seen = browser("picker", &env);
    assert_eq!(seen["before"], "starter");
    let sub = s.sub.as_deref().expect("a subscription");
    let invoices = stripe
        .get(&format!("/v1/invoices?subscription={sub}&limit=100"))
        .await;
    let upgrade = invoices["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["billing_reason"] == "subscription_update")
        .max_by_key(|i| i["created"].as_i64())
        .cloned()
        .unwrap_or_else(|| panic!("no upgrade invoice: {invoices}"));
    assert_eq!(
        upgrade["total"].as_i64(),
        seen["amount"].as_i64(),
        "the preview shown is what the upgrade invoiced: {upgrade}"
    );
    assert!(seen["amount"].as_i64() > Some(0));
}

/// The bundle the control plane serves is the build of `clients/widgets` as committed (`npm run build` there
/// rewrites it), and the widgets type-check against the generated client.
#[test]
fn the_served_bundle_is_the_build_of_the_committed_sources() {
    let dir = tollgate_e2e::workspace_root().join("clients/widgets");
    assert!(
        dir.join("node_modules").is_dir(),
        "clients/widgets/node_modules is missing: ./scripts/test installs it (npm ci)"
    );
    let out_dir = std::env::temp_dir().join(format!(
        "tollgate-widgets-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let run = |args: &[&str]| {
        let out = Command::new("npx")
            .arg("--no-install")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run npx");
        assert!(
            out.status.success(),
            "npx {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["tsc", "--noEmit", "-p", "."]);
    run(&[
        "vite",
        "build",
        "--outDir",
        out_dir.to_str().expect("utf-8"),
        "--logLevel",
        "error",
    ]);
    let fresh = std::fs::read(out_dir.join("tollgate.js")).expect("the fresh build");
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        fresh == tollgate_control_plane::routes::widgets::SCRIPT,
        "control-plane/assets/widgets/v1/tollgate.js is not the build of clients/widgets: run `npm run build` there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_picker_completes_an_upgrade_that_needs_3d_secure_with_stripe_js() {
    let stripe = StripeEmulator::start().await;
    let s = stack_with(Some(&stripe)).await;
    // The org's card now needs 3-D Secure for every charge (Stripe's test card 4000 0027 6000 3184).
    let card = stripe.card("4000002760003184").await;
    let r =
        s.m.app
            .post(
                "/api/payments/default-method.set",
                tollgate_e2e::app::Auth::Bearer(&s.session),
                &serde_json::json!({"paymentMethodId": card}),
            )
            .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = browser(
        "picker3ds",
        &[
            ("PAGE_URL", s.page.url("/")),
            ("UPGRADE_TO", "growth".to_owned()),
            ("STRIPE_URL", stripe.url.clone()),
            ("STRIPE_KEY", tollgate_e2e::stripe::SECRET_KEY.to_owned()),
        ],
    );
    assert_eq!(seen["confirmed"], 1);
    let e = s.as_owner("/api/me/entitlements.read").await;
    assert_eq!(e.json["planCode"], "growth", "{}", e.text);
}
