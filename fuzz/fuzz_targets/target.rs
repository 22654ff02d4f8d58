//! Request-target canonicalisation and route pricing: never panics; canonical output is ASCII, origin-form and a
//! fixed point; the price of the canonical path is the price of the path a decoding, slash-merging, dot-removing
//! server (nginx) serves for the forwarded target, and for the client's own spelling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate_common::domain::target::{self, Canonical};
use tollgate_common::domain::{PlanCatalog, RouteTable};

const PLANS: &str = "trial_days = 14\n[plans.trial]\nincluded = { api_call = 1000 }\n";

fn tables() -> &'static [RouteTable; 2] {
    static TABLES: OnceLock<[RouteTable; 2]> = OnceLock::new();
    TABLES.get_or_init(|| {
        let routes = r#"
default = { metric = "api_call", cost = 1 }
[[routes]]
prefix = "/v1/embeddings"
metric = "api_call"
cost = 10
[[routes]]
prefix = "/v1/a:b"
metric = "api_call"
cost = 5
[[routes]]
prefix = "/v1/caf%C3%A9"
metric = "api_call"
cost = 7
[[routes]]
prefix = "/health"
metered = false
"#;
        let catalog = PlanCatalog::from_toml_str(PLANS).expect("plans");
        let sensitive = RouteTable::from_toml_str(routes, &catalog).expect("routes");
        let insensitive =
            RouteTable::from_toml_str(&format!("case_sensitive = false\n{routes}"), &catalog)
                .expect("routes");
        [sensitive, insensitive]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let options = flags & 1 == 1;
    let Ok(canonical) = target::canonicalize(options, raw) else {
        return;
    };
    let path = canonical.path();
    assert!(path.is_ascii());
    assert!(path.starts_with('/') || (options && path == "*"));
    let forwarded = canonical
        .rewritten()
        .map_or_else(|| raw.to_vec(), |t| t.as_bytes().to_vec());
    match target::canonicalize(options, &forwarded) {
        Ok(Canonical::AsReceived(again)) => assert_eq!(again, path),
        other => panic!("not a fixed point: {other:?}"),
    }
    if path == "*" {
        return;
    }
    for table in tables() {
        let priced = table.classify(path).route();
        let served_forwarded =
            target::resolved_by_decoding_server(&forwarded).expect("a canonical target is served");
        assert_eq!(priced, table.classify_decoded(&served_forwarded).route());
        if raw.first() == Some(&b'/') {
            if let Some(spelled) = target::resolved_by_decoding_server(raw) {
                assert_eq!(priced, table.classify_decoded(&spelled).route());
            }
        }
    }
});
