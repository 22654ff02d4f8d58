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
        let insensitive = RouteTable::from_toml_str(&format!("case_sensitive = false\n{routes}"), &catalog)
            .expect("routes");
        [sensitive, insensitive]
    })
}

/// How nginx resolves a path (decode everything, merge slashes, remove dot segments); `None` where it refuses.
fn served(target: &[u8]) -> Option<Vec<u8>> {
    let path = target.split(|&b| b == b'?').next()?;
    let mut decoded = Vec::new();
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(path.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.first() != Some(&b'/') {
        return None;
    }
    let segments: Vec<&[u8]> = decoded.split(|&b| b == b'/').skip(1).collect();
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for (n, segment) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        match *segment {
            b"" => trailing = last,
            b"." => trailing = true,
            b".." => {
                stack.pop()?;
                trailing = true;
            }
            other => {
                stack.push(other);
                trailing = false;
            }
        }
    }
    let mut out = b"/".to_vec();
    out.extend(stack.join(&b'/'));
    if trailing && out.len() > 1 {
        out.push(b'/');
    }
    Some(out)
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
    let forwarded = canonical.rewritten().map_or_else(|| raw.to_vec(), |t| t.as_bytes().to_vec());
    match target::canonicalize(options, &forwarded) {
        Ok(Canonical::AsReceived(again)) => assert_eq!(again, path),
        other => panic!("not a fixed point: {other:?}"),
    }
    if path == "*" {
        return;
    }
    for table in tables() {
        let priced = table.classify(path).route();
        let served_forwarded = served(&forwarded).expect("a canonical target is served");
        assert_eq!(priced, table.classify_decoded(&served_forwarded).route());
        if raw.first() == Some(&b'/') {
            if let Some(spelled) = served(raw) {
                assert_eq!(priced, table.classify_decoded(&spelled).route());
            }
        }
    }
});
