//! The shipped `config/plans.toml` and `config/routes.toml` parse, and every fixture in
//! `tests/fixtures/config/` is rejected with an error naming the key at fault.
//!
//! Each fixture holds exactly one failure. A fixture file without a case below (or the reverse)
//! fails the suite, so the two cannot drift apart.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use tollgate_common::domain::{
    DomainError, Metric, PlanCatalog, PlanCode, PriceRef, RouteClass, RouteTable,
};

/// What a fixture's error must name.
enum Expect {
    /// `DomainError::key()` is exactly this, and the message starts with it.
    Key(&'static str),
    /// A TOML syntax error on this line.
    SyntaxAtLine(usize),
}

use Expect::{Key, SyntaxAtLine};

const PLANS_CASES: &[(&str, Expect)] = &[
    ("plans_syntax_error.toml", SyntaxAtLine(4)),
    ("plans_unknown_root_key.toml", Key("trial_length")),
    ("plans_unknown_key.toml", Key("plans.starter.prices")),
    ("plans_missing_trial_days.toml", Key("trial_days")),
    ("plans_trial_days_zero.toml", Key("trial_days")),
    ("plans_trial_days_not_integer.toml", Key("trial_days")),
    ("plans_unknown_unsubscribed.toml", Key("unsubscribed")),
    ("plans_missing_trial.toml", Key("plans.trial")),
    ("plans_missing_plans.toml", Key("plans")),
    ("plans_paid_without_price.toml", Key("plans.starter.price")),
    ("plans_empty_price.toml", Key("plans.starter.price")),
    ("plans_duplicate_price.toml", Key("plans.starter.price")),
    ("plans_bad_plan_code.toml", Key("plans.Starter")),
    (
        "plans_bad_metric.toml",
        Key("plans.trial.included.api-call"),
    ),
    (
        "plans_negative_included.toml",
        Key("plans.trial.included.api_call"),
    ),
    ("plans_included_not_table.toml", Key("plans.trial.included")),
];

const ROUTES_CASES: &[(&str, Expect)] = &[
    ("routes_syntax_error.toml", SyntaxAtLine(2)),
    ("routes_unknown_root_key.toml", Key("route")),
    ("routes_unknown_key.toml", Key("routes[1].metrics")),
    ("routes_default_unknown_key.toml", Key("default.prefix")),
    ("routes_unknown_metric.toml", Key("routes[2].metric")),
    ("routes_default_unknown_metric.toml", Key("default.metric")),
    ("routes_bad_metric.toml", Key("routes[0].metric")),
    ("routes_zero_cost.toml", Key("routes[0].cost")),
    ("routes_cost_too_large.toml", Key("default.cost")),
    ("routes_missing_cost.toml", Key("routes[0].cost")),
    ("routes_missing_metric.toml", Key("routes[0].metric")),
    ("routes_missing_prefix.toml", Key("routes[0].prefix")),
    ("routes_bad_prefix.toml", Key("routes[0].prefix")),
    ("routes_prefix_with_query.toml", Key("routes[0].prefix")),
    ("routes_prefix_not_canonical.toml", Key("routes[0].prefix")),
    ("routes_case_not_boolean.toml", Key("case_sensitive")),
    (
        "routes_prefix_with_whitespace.toml",
        Key("routes[0].prefix"),
    ),
    ("routes_shadowed_prefix.toml", Key("routes[1].prefix")),
    ("routes_unmetered_with_cost.toml", Key("routes[0].cost")),
    ("routes_unmetered_with_metric.toml", Key("default.metric")),
    ("routes_metered_not_boolean.toml", Key("routes[0].metered")),
    ("routes_not_array.toml", Key("routes")),
    ("routes_entry_not_table.toml", Key("routes[0]")),
];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/config")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn shipped_catalog() -> PlanCatalog {
    let text = read(&manifest_dir().join("../config/plans.toml"));
    PlanCatalog::from_toml_str(&text).unwrap_or_else(|e| panic!("config/plans.toml: {e}"))
}

fn check(file: &str, expect: &Expect, result: Result<(), DomainError>) {
    let err = match result {
        Ok(()) => panic!("{file}: accepted, expected a rejection"),
        Err(err) => err,
    };
    let message = err.to_string();
    assert!(
        !message.contains('\n'),
        "{file}: multi-line error {message:?}"
    );
    match expect {
        Key(key) => {
            assert_eq!(err.key(), Some(*key), "{file}: {message}");
            assert!(
                message.starts_with(&format!("{key}: ")),
                "{file}: {message}"
            );
        }
        SyntaxAtLine(line) => {
            assert!(
                matches!(err, DomainError::Syntax { line: l, .. } if l == *line),
                "{file}: expected a syntax error on line {line}, got {message}"
            );
            assert!(
                message.starts_with(&format!("line {line}, column ")),
                "{file}: {message}"
            );
        }
    }
}

#[test]
fn shipped_plans_toml_is_valid() {
    let catalog = shipped_catalog();
    assert_eq!(catalog.trial_days(), 14);
    assert_eq!(
        catalog.unsubscribed().map(|p| p.code.as_str()),
        Some(PlanCode::TRIAL)
    );
    let codes: BTreeSet<_> = catalog.plans().map(|p| p.code.as_str()).collect();
    assert_eq!(codes, BTreeSet::from(["trial", "starter", "growth", "pro"]));

    let api_call = catalog.metric(Metric::API_CALL).expect("api_call is known");
    let tokens = catalog.metric("tokens").expect("tokens is known");
    assert_eq!(catalog.trial().limit(&api_call), 1000);
    let growth = catalog
        .plan_for_price("plan_growth_m")
        .expect("growth by lookup key");
    assert_eq!(growth.code.as_str(), "growth");
    assert_eq!(
        growth.price,
        Some(PriceRef::LookupKey("plan_growth_m".into()))
    );
    assert_eq!(growth.limit(&api_call), 1_000_000);
    assert_eq!(growth.limit(&tokens), 0);
    let pro = catalog
        .plan(&catalog.plan_code("pro").expect("pro"))
        .expect("pro plan");
    assert_eq!(pro.limit(&tokens), 50_000_000);
}

#[test]
fn shipped_routes_toml_is_valid() {
    let catalog = shipped_catalog();
    let text = read(&manifest_dir().join("../config/routes.toml"));
    let routes = RouteTable::from_toml_str(&text, &catalog)
        .unwrap_or_else(|e| panic!("config/routes.toml: {e}"));
    let priced = |path| match routes.classify(path) {
        RouteClass::Metered {
            metric,
            cost,
            route,
        } => Some((metric.as_str(), cost, route)),
        RouteClass::Unmetered { .. } => None,
    };
    assert_eq!(
        priced("/v1/embeddings"),
        Some(("api_call", 10, "/v1/embeddings"))
    );
    assert_eq!(
        priced("/v1/embeddings/abc"),
        Some(("api_call", 10, "/v1/embeddings"))
    );
    assert_eq!(priced("/v1/embeddingsx"), Some(("api_call", 1, "default")));
    assert_eq!(priced("/v1/anything"), Some(("api_call", 1, "default")));
    assert_eq!(
        routes.classify("/health"),
        RouteClass::Unmetered { route: "/health" }
    );
}

#[test]
fn rejected_plans_fixtures_name_the_key() {
    for (file, expect) in PLANS_CASES {
        let text = read(&fixtures_dir().join(file));
        check(file, expect, PlanCatalog::from_toml_str(&text).map(drop));
    }
}

#[test]
fn rejected_routes_fixtures_name_the_key() {
    let catalog = shipped_catalog();
    for (file, expect) in ROUTES_CASES {
        let text = read(&fixtures_dir().join(file));
        check(
            file,
            expect,
            RouteTable::from_toml_str(&text, &catalog).map(drop),
        );
    }
}

#[test]
fn every_fixture_has_a_case() {
    let on_disk: BTreeSet<String> = fs::read_dir(fixtures_dir())
        .expect("fixtures directory")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let cases: BTreeSet<String> = PLANS_CASES
        .iter()
        .chain(ROUTES_CASES)
        .map(|(file, _)| (*file).to_owned())
        .collect();
    assert_eq!(
        cases.len(),
        PLANS_CASES.len() + ROUTES_CASES.len(),
        "a fixture is listed twice"
    );
    assert_eq!(on_disk, cases);
}
