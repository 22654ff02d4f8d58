//! Issue 23: the TypeScript client (`clients/typescript`) is generated from the document the control plane serves,
//! and its own tests (vitest) pass against a running stack.
//!
//! `clients/typescript/generate.sh` regenerates it: this test, with `TOLLGATE_REGENERATE_CLIENT=1`, writes the
//! served document to `clients/typescript/openapi.json` and the types to `src/schema.d.ts`; without it, the test
//! fails when either differs from what is committed.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tollgate_e2e::app::{Auth, TestApp};
use tollgate_e2e::metering::{Metering, Options};

fn client_dir() -> PathBuf {
    tollgate_e2e::workspace_root().join("clients/typescript")
}

/// Runs `npx <args>` in the client's directory; panics with its output when it fails.
fn npx(dir: &Path, args: &[&str], env: &[(&str, String)]) -> String {
    assert!(
        dir.join("node_modules").is_dir(),
        "{}/node_modules is missing: run `npm ci --prefix clients/typescript` (./scripts/test does)",
        dir.display()
    );
    let out = Command::new("npx")
        .args(["--no-install"])
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run npx (Node.js and npm are installed by ./scripts/test)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "npx {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_client_is_generated_from_the_served_document() {
    let app = TestApp::start().await;
    let served = app.get("/api/openapi.json", Auth::None).await;
    assert_eq!(served.status, 200);
    let dir = client_dir();
    let doc_path = dir.join("openapi.json");
    let types_path = dir.join("src/schema.d.ts");
    if std::env::var_os("TOLLGATE_REGENERATE_CLIENT").is_some() {
        let pretty = serde_json::to_string_pretty(&served.json).expect("json") + "\n";
        std::fs::write(&doc_path, pretty).expect("write openapi.json");
        npx(
            &dir,
            &[
                "openapi-typescript",
                "openapi.json",
                "--output",
                "src/schema.d.ts",
            ],
            &[],
        );
        return;
    }
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(&doc_path).expect("clients/typescript/openapi.json"),
    )
    .expect("committed document");
    assert!(
        committed == served.json,
        "clients/typescript/openapi.json differs from the served document: run clients/typescript/generate.sh"
    );
    let fresh = std::env::temp_dir().join(format!(
        "tollgate-schema-{}.d.ts",
        uuid::Uuid::new_v4().simple()
    ));
    npx(
        &dir,
        &[
            "openapi-typescript",
            "openapi.json",
            "--output",
            fresh.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let generated = std::fs::read_to_string(&fresh).expect("generated types");
    let _ = std::fs::remove_file(&fresh);
    assert!(
        generated == std::fs::read_to_string(&types_path).expect("src/schema.d.ts"),
        "clients/typescript/src/schema.d.ts is not what openapi-typescript makes of openapi.json: run \
         clients/typescript/generate.sh"
    );
    // The hand-written part and the tests compile against the generated types.
    npx(&dir, &["tsc", "--noEmit", "-p", "."], &[]);
}

/// The client's vitest suite against a control plane and a proxy: an org with an API key and its owner's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_own_tests_pass_against_the_stack() {
    let m = Metering::start(Options {
        limit: 30,
        ..Options::default()
    })
    .await;
    let proxy = m.proxy(&[]).await;
    let org = "org_typescript";
    let key = m.org_with_key(org).await;
    let session = m.app.user_token("user_typescript", org);
    let out = npx(
        &client_dir(),
        &["vitest", "run"],
        &[
            ("TOLLGATE_CP_URL", m.app.url("")),
            ("TOLLGATE_PROXY_URL", proxy.url()),
            ("TOLLGATE_ORG_ID", org.to_owned()),
            ("TOLLGATE_SESSION_TOKEN", session),
            ("TOLLGATE_API_KEY", key),
            ("NO_COLOR", "1".to_owned()),
        ],
    );
    assert!(out.contains("passed"), "{out}");
    assert!(!out.contains("skipped"), "every test ran:\n{out}");
}
