//! The binary refuses to start on bad settings, with one line naming every bad key.

use std::process::Command;

#[test]
fn missing_and_bad_settings_stop_the_process_with_one_line_naming_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-control-plane"))
        .env_clear()
        .env("REDIS_URL", "http://not-redis")
        .env("STRIPE_SECRET_KEY", "pk_live_oops")
        .env("TOLLGATE_PLANS", "/nonexistent/plans.toml")
        .env("TOLLGATE_CP_BILLING_RATE_LIMIT", "20 per minute")
        .env("TOLLGATE_CP_KEYS_RATE_LIMIT", "0/60s")
        .env("TOLLGATE_CP_STIGG_RATE_LIMIT", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for key in [
        "DATABASE_URL",
        "REDIS_URL",
        "TOLLGATE_PLANS",
        "CLERK_JWKS_URL",
        "TOLLGATE_ADMIN_TOKEN",
        "STRIPE_SECRET_KEY",
        "TOLLGATE_CP_BILLING_RATE_LIMIT",
        "TOLLGATE_CP_KEYS_RATE_LIMIT",
    ] {
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    assert!(
        !stderr.contains("TOLLGATE_CP_STIGG_RATE_LIMIT"),
        "off is a valid limit: {stderr}"
    );
    assert!(
        !stderr.contains("pk_live_oops") && !stderr.contains("per minute"),
        "values are not echoed: {stderr}"
    );
}
