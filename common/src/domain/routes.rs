//! The routes file: which request paths cost what.
//!
//! `[[routes]]` entries are tried in file order and the first whose prefix matches wins; `default`
//! prices everything else. Paths are matched in their canonical form ([`super::target`]) with escapes decoded,
//! case-sensitively unless the file says `case_sensitive = false` (for upstreams that route that way: ASP.NET,
//! Express's default).

use super::DomainError;
use super::ids::Metric;
use super::plan::PlanCatalog;
use super::target;
use super::toml_table::{self, Fields};

const ROOT_KEYS: &[&str] = &["default", "routes", "case_sensitive"];
const DEFAULT_KEYS: &[&str] = &["metric", "cost", "metered"];
const ROUTE_KEYS: &[&str] = &["prefix", "metric", "cost", "metered"];
const COST: std::ops::RangeInclusive<i64> = 1..=1_000_000;
/// The `route` of requests that no `[[routes]]` entry matches.
const DEFAULT_ROUTE: &str = "default";

/// How a request is priced: what [`RouteTable::classify`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass<'a> {
    /// The request consumes `cost` units of `metric`.
    Metered {
        /// The metric consumed.
        metric: &'a Metric,
        /// Units consumed, 1..=1_000_000.
        cost: u64,
        /// The matching prefix, or `"default"`.
        route: &'a str,
    },
    /// The request is proxied without touching any quota.
    Unmetered {
        /// The matching prefix, or `"default"`.
        route: &'a str,
    },
}

// === impl RouteClass ===

impl<'a> RouteClass<'a> {
    /// The matching prefix, or `"default"`: a bounded label for logs and metrics.
    pub fn route(&self) -> &'a str {
        match *self {
            Self::Metered { route, .. } | Self::Unmetered { route } => route,
        }
    }
}

/// What a matched request costs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pricing {
    Metered { metric: Metric, cost: u64 },
    Unmetered,
}

impl Pricing {
    fn class<'a>(&'a self, route: &'a str) -> RouteClass<'a> {
        match self {
            Self::Metered { metric, cost } => RouteClass::Metered {
                metric,
                cost: *cost,
                route,
            },
            Self::Unmetered => RouteClass::Unmetered { route },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    /// As written in the file: the route's label.
    prefix: String,
    /// What paths are matched against: the prefix with its escapes decoded.
    decoded: Vec<u8>,
    pricing: Pricing,
}

/// The validated routes file.
///
/// Invariants: every prefix is a canonical path ([`super::target`]) without whitespace, `?` or `#`;
/// every metric is known to the [`PlanCatalog`] it was checked against; no route is shadowed by an
/// earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
    default: Pricing,
    case_sensitive: bool,
}

// === impl RouteTable ===

impl RouteTable {
    /// Parses and validates the routes file against `catalog`; the error names the offending key
    /// path, e.g. `routes[2].metric: …`.
    ///
    /// Without a `default`, unmatched requests cost 1 `api_call`, which `catalog` must then know.
    pub fn from_toml_str(text: &str, catalog: &PlanCatalog) -> Result<Self, DomainError> {
        let doc = toml_table::parse(text)?;
        let root = Fields::new(String::new(), &doc, ROOT_KEYS)?;

        let case_sensitive = root.boolean("case_sensitive")?.unwrap_or(true);
        let default = match doc.get(DEFAULT_ROUTE) {
            Some(value) => {
                let fields = Fields::of_value(root.key(DEFAULT_ROUTE), value, DEFAULT_KEYS)?;
                parse_pricing(&fields, catalog)?
            }
            None => {
                let metric = Metric::parse(Metric::API_CALL)?;
                if !catalog.is_known_metric(&metric) {
                    let reason = format!(
                        "required: no plan names `{}`, the metric of the built-in default",
                        Metric::API_CALL
                    );
                    return Err(toml_table::error(root.key(DEFAULT_ROUTE), reason));
                }
                Pricing::Metered { metric, cost: 1 }
            }
        };

        let mut routes: Vec<Route> = Vec::new();
        for (index, value) in root.array("routes")?.unwrap_or_default().iter().enumerate() {
            let path = format!("{}[{index}]", root.key("routes"));
            let fields = Fields::of_value(path, value, ROUTE_KEYS)?;
            let prefix_key = fields.key("prefix");
            let prefix = fields
                .string("prefix")?
                .ok_or_else(|| toml_table::error(prefix_key.clone(), "required"))?;
            let decoded = check_prefix(prefix)
                .map_err(|reason| toml_table::error(prefix_key.clone(), reason))?;
            // A prefix that an earlier prefix matches can never be reached: first match wins.
            let shadowing = routes
                .iter()
                .enumerate()
                .find(|(_, earlier)| prefix_matches(&earlier.decoded, &decoded, case_sensitive));
            if let Some((index, earlier)) = shadowing {
                let reason = format!(
                    "unreachable: routes[{index}] (`{}`) comes first and matches every path under `{prefix}`",
                    earlier.prefix
                );
                return Err(toml_table::error(prefix_key, reason));
            }
            let pricing = parse_pricing(&fields, catalog)?;
            routes.push(Route {
                prefix: prefix.to_owned(),
                decoded,
                pricing,
            });
        }
        Ok(Self {
            routes,
            default,
            case_sensitive,
        })
    }

    /// Prices a canonical request path (no query string; see [`super::target::canonicalize`]): the
    /// first route in file order whose prefix matches, else the default.
    ///
    /// Matching is segment-aware: `/v1/embeddings` matches `/v1/embeddings`, `/v1/embeddings/x` and
    /// `/v1/embeddings;x` (a path parameter) but not `/v1/embeddingsx`; a prefix ending in `/`
    /// matches every path under it, so `/` matches everything. Escapes are decoded first, so
    /// `/v1/a%3Ab` matches the prefix `/v1/a:b`.
    pub fn classify(&self, path: &str) -> RouteClass<'_> {
        // Hot path: one linear scan over a handful of prefixes, no allocation unless the path holds
        // an escape.
        match target::decoded_path(path) {
            None => self.classify_decoded(path.as_bytes()),
            Some(decoded) => self.classify_decoded(&decoded),
        }
    }

    /// Prices a path whose escapes are already decoded.
    pub fn classify_decoded(&self, path: &[u8]) -> RouteClass<'_> {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.decoded, path, self.case_sensitive))
            .map_or_else(
                || self.default.class(DEFAULT_ROUTE),
                |route| route.pricing.class(&route.prefix),
            )
    }
}

fn prefix_matches(prefix: &[u8], path: &[u8], case_sensitive: bool) -> bool {
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let equal = match case_sensitive {
        true => head == prefix,
        false => head.eq_ignore_ascii_case(prefix),
    };
    equal && (prefix.ends_with(b"/") || matches!(path.get(prefix.len()), None | Some(b'/' | b';')))
}

/// Checks that a prefix is a canonical path and returns it decoded, as paths are matched.
fn check_prefix(prefix: &str) -> Result<Vec<u8>, &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with /");
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace");
    }
    if prefix.contains(['?', '#']) {
        return Err("must be a path only, without ? or #");
    }
    match target::canonicalize(false, prefix.as_bytes()) {
        Ok(canonical) if canonical.path() == prefix => {}
        Ok(_) => {
            return Err(
                "must be a canonical path: no //, no . or .. segments, no escapes of unreserved characters, escapes upper-case",
            );
        }
        Err(e) => return Err(e.detail()),
    }
    Ok(target::decoded_path(prefix).unwrap_or_else(|| prefix.as_bytes().to_vec()))
}

/// `{ metric, cost }`, `{ metric, cost, metered = true }` or `{ metered = false }`.
fn parse_pricing(fields: &Fields<'_>, catalog: &PlanCatalog) -> Result<Pricing, DomainError> {
    let metric = fields.string("metric")?;
    let cost = fields.integer("cost")?;
    if fields.boolean("metered")? == Some(false) {
        return match (metric, cost) {
            (Some(_), _) => Err(toml_table::error(
                fields.key("metric"),
                "not allowed with metered = false",
            )),
            (_, Some(_)) => Err(toml_table::error(
                fields.key("cost"),
                "not allowed with metered = false",
            )),
            (None, None) => Ok(Pricing::Unmetered),
        };
    }

    let metric_key = fields.key("metric");
    let metric = metric
        .ok_or_else(|| toml_table::error(metric_key.clone(), "required for a metered route"))?;
    let metric = Metric::parse(metric).map_err(|e| e.at(metric_key.clone()))?;
    if !catalog.is_known_metric(&metric) {
        let reason = format!("`{metric}` is not a metric of any plan in PLANS_CONFIG");
        return Err(toml_table::error(metric_key, reason));
    }

    let cost_key = fields.key("cost");
    let cost = match cost {
        None => return Err(toml_table::error(cost_key, "required for a metered route")),
        Some(cost) if COST.contains(&cost) => u64::try_from(cost).ok(),
        Some(_) => None,
    }
    .ok_or_else(|| {
        let reason = format!("must be between {} and {}", COST.start(), COST.end());
        toml_table::error(cost_key, reason)
    })?;
    Ok(Pricing::Metered { metric, cost })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PLANS: &str = r#"
trial_days = 14
[plans.trial]
included = { api_call = 1000, tokens = 10 }
[plans.starter]
price = "plan_starter_m"
included = { api_call = 100000 }
"#;

    fn catalog() -> PlanCatalog {
        PlanCatalog::from_toml_str(PLANS).expect("valid plans")
    }

    fn table(text: &str) -> RouteTable {
        RouteTable::from_toml_str(text, &catalog()).expect("valid routes")
    }

    fn metered(class: RouteClass<'_>) -> Option<(&str, u64, &str)> {
        match class {
            RouteClass::Metered {
                metric,
                cost,
                route,
            } => Some((metric.as_str(), cost, route)),
            RouteClass::Unmetered { .. } => None,
        }
    }

    #[test]
    fn first_segment_aware_match_wins() {
        let routes = table(
            r#"
default = { metric = "api_call", cost = 1 }

[[routes]]
prefix = "/v1/embeddings"
metric = "api_call"
cost = 10

[[routes]]
prefix = "/v1/chat/"
metric = "tokens"
cost = 3
metered = true

[[routes]]
prefix = "/health"
metered = false
"#,
        );
        assert_eq!(
            metered(routes.classify("/v1/embeddings")),
            Some(("api_call", 10, "/v1/embeddings"))
        );
        assert_eq!(
            metered(routes.classify("/v1/embeddings/batch")),
            Some(("api_call", 10, "/v1/embeddings"))
        );
        assert_eq!(
            metered(routes.classify("/v1/embeddingsx")),
            Some(("api_call", 1, "default"))
        );
        assert_eq!(
            metered(routes.classify("/v1/chat/completions")),
            Some(("tokens", 3, "/v1/chat/"))
        );
        assert_eq!(
            metered(routes.classify("/v1/chat")),
            Some(("api_call", 1, "default"))
        );
        assert_eq!(
            routes.classify("/health"),
            RouteClass::Unmetered { route: "/health" }
        );
        assert_eq!(routes.classify("/health/live").route(), "/health");
        assert_eq!(routes.classify("/healthz").route(), "default");
        assert_eq!(routes.classify("").route(), "default");
    }

    #[test]
    fn default_defaults_to_one_api_call() {
        let routes = table("");
        assert_eq!(
            metered(routes.classify("/x")),
            Some(("api_call", 1, "default"))
        );

        let routes = table("default = { metered = false }\n");
        assert_eq!(
            routes.classify("/x"),
            RouteClass::Unmetered { route: "default" }
        );
    }

    #[test]
    fn missing_default_needs_api_call() {
        let plans = "trial_days = 1\n[plans.trial]\nincluded = { tokens = 5 }\n";
        let catalog = PlanCatalog::from_toml_str(plans).expect("valid plans");
        let err = RouteTable::from_toml_str("", &catalog).expect_err("no api_call");
        assert_eq!(err.key(), Some("default"));
        let ok = RouteTable::from_toml_str("default = { metric = \"tokens\", cost = 2 }", &catalog);
        assert!(ok.is_ok());
    }

    #[test]
    fn slash_matches_everything() {
        let routes = table("[[routes]]\nprefix = \"/\"\nmetered = false\n");
        for path in ["/", "/a", "/a/b?"] {
            assert_eq!(routes.classify(path).route(), "/");
        }
    }

    #[test]
    fn shadowed_routes_are_rejected() {
        let shadowed = [
            ("/v1", "/v1"),
            ("/v1", "/v1/x"),
            ("/v1/", "/v1/x"),
            ("/", "/health"),
        ];
        for (first, second) in shadowed {
            let text = format!(
                "[[routes]]\nprefix = \"{first}\"\nmetered = false\n[[routes]]\nprefix = \"{second}\"\nmetered = false\n"
            );
            let err = RouteTable::from_toml_str(&text, &catalog()).expect_err(&text);
            assert_eq!(err.key(), Some("routes[1].prefix"), "{err}");
        }
        // A trailing-slash prefix does not cover the bare path, and a longer name is another segment.
        for (first, second) in [("/v1/", "/v1"), ("/v1", "/v10"), ("/v1/x", "/v1")] {
            let text = format!(
                "[[routes]]\nprefix = \"{first}\"\nmetered = false\n[[routes]]\nprefix = \"{second}\"\nmetered = false\n"
            );
            assert!(
                RouteTable::from_toml_str(&text, &catalog()).is_ok(),
                "{text}"
            );
        }
    }

    const PRICED: &str = r#"
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

    #[test]
    fn escapes_and_path_parameters_match_as_servers_route_them() {
        let routes = table(PRICED);
        for (path, route) in [
            ("/v1/a%3Ab", "/v1/a:b"),
            ("/v1/a:b/x", "/v1/a:b"),
            ("/v1/caf%C3%A9", "/v1/caf%C3%A9"),
            ("/v1/embeddings;jsessionid=1", "/v1/embeddings"),
            ("/v1/embeddings;x/y", "/v1/embeddings"),
            ("/v1/Embeddings", "default"),
            ("/HEALTH", "default"),
        ] {
            assert_eq!(routes.classify(path).route(), route, "{path}");
        }
    }

    #[test]
    fn case_matching_is_a_choice_of_the_file() {
        let routes = table(&format!("case_sensitive = false\n{PRICED}"));
        for (path, route) in [
            ("/v1/Embeddings", "/v1/embeddings"),
            ("/V1/EMBEDDINGS/x", "/v1/embeddings"),
            ("/HEALTH", "/health"),
            ("/v1/A%3aB", "/v1/a:b"),
        ] {
            assert_eq!(routes.classify(path).route(), route, "{path}");
        }
        // Shadowing is judged the same way.
        let text = "case_sensitive = false\n[[routes]]\nprefix = \"/v1\"\nmetered = false\n[[routes]]\nprefix = \"/V1/x\"\nmetered = false\n";
        let err = RouteTable::from_toml_str(text, &catalog()).expect_err("shadowed");
        assert_eq!(err.key(), Some("routes[1].prefix"), "{err}");
        let err = RouteTable::from_toml_str("case_sensitive = \"no\"\n", &catalog())
            .expect_err("not a boolean");
        assert_eq!(err.key(), Some("case_sensitive"), "{err}");
    }

    #[test]
    fn prefixes_must_be_canonical() {
        for prefix in [
            "/v1//x", "/v1/./x", "/v1/../x", "/v1/%65", "/v1/%3a", "/v1%2Fx", "/v1\\\\x", "/%zz",
        ] {
            let text = format!("[[routes]]\nprefix = \"{prefix}\"\nmetered = false\n");
            let err = RouteTable::from_toml_str(&text, &catalog()).expect_err(prefix);
            assert_eq!(err.key(), Some("routes[0].prefix"), "{prefix}: {err}");
        }
    }

    fn spelled_target() -> impl Strategy<Value = Vec<u8>> {
        let token = prop::sample::select(vec![
            &b"/"[..],
            b"//",
            b".",
            b"..",
            b"%2e",
            b"%2E",
            b"%2f",
            b"%5C",
            b"\\",
            b"v1",
            b"V1",
            b"embeddings",
            b"%65mbeddings",
            b"EMBEDDINGS",
            b"health",
            b"a:b",
            b"a%3Ab",
            b"a%3ab",
            b";x",
            b"%00",
            b"caf%c3%a9",
            b"caf\xc3\xa9",
            b"?",
            b"q=1",
            b"%",
            b"%4",
            b"e",
            b"%41",
            b"%25",
            b"..;",
            b"x",
        ]);
        (
            prop::sample::select(vec![
                &b"/"[..],
                b"//",
                b"http://h/",
                b"http://h",
                b"x:/",
                b"",
            ]),
            prop::collection::vec(token, 0..12),
        )
            .prop_map(|(start, tokens)| {
                let mut target = start.to_vec();
                for token in tokens {
                    target.extend_from_slice(token);
                }
                target
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The price of the canonical target is the price of the path a decoding, slash-merging, dot-removing
        /// server serves for it — and for the target as the client spelled it.
        #[test]
        fn no_spelling_is_priced_below_the_path_served(raw in spelled_target(), insensitive in any::<bool>()) {
            let text = match insensitive {
                true => format!("case_sensitive = false\n{PRICED}"),
                false => PRICED.to_owned(),
            };
            let routes = table(&text);
            if let Ok(canonical) = target::canonicalize(false, &raw) {
                let priced = routes.classify(canonical.path()).route();
                let forwarded = canonical.rewritten().map_or_else(|| raw.clone(), |t| t.as_bytes().to_vec());
                let served = target::resolved_by_decoding_server(&forwarded).expect("a canonical target is served");
                prop_assert_eq!(priced, routes.classify_decoded(&served).route());
                // The client's own spelling, served directly, costs what the canonical one costs.
                if raw.starts_with(b"/")
                    && let Some(spelled) = target::resolved_by_decoding_server(&raw)
                {
                    prop_assert_eq!(priced, routes.classify_decoded(&spelled).route());
                }
            }
        }

        #[test]
        fn canonicalisation_is_idempotent(raw in spelled_target(), options in any::<bool>()) {
            if let Ok(canonical) = target::canonicalize(options, &raw) {
                let forwarded = canonical.rewritten().map_or_else(|| raw.clone(), |t| t.as_bytes().to_vec());
                let again = target::canonicalize(options, &forwarded).expect("canonical targets are accepted");
                prop_assert!(matches!(again, target::Canonical::AsReceived(_)), "{:?} -> {:?}", raw, again);
                prop_assert_eq!(again.path(), canonical.path());
            }
        }

        #[test]
        fn canonicalisation_never_panics(raw in prop::collection::vec(any::<u8>(), 0..64), options in any::<bool>()) {
            if let Ok(canonical) = target::canonicalize(options, &raw) {
                prop_assert!(canonical.path().is_ascii());
            }
        }
    }

    proptest! {
        #[test]
        fn matches_exactly_the_prefix_segments(
            prefix in "/[a-z]{1,3}(/[a-z]{1,3}){0,2}/?",
            path in "/[a-z]{0,3}(/[a-z]{0,3}){0,3}",
        ) {
            let text = format!("[[routes]]\nprefix = \"{prefix}\"\nmetered = false\n");
            let routes = table(&text);
            let matched = routes.classify(&path).route() == prefix;
            let trimmed = prefix.trim_end_matches('/');
            let expected = if prefix.ends_with('/') {
                path.starts_with(&prefix)
            } else {
                path == trimmed || path.starts_with(&format!("{trimmed}/"))
            };
            prop_assert_eq!(matched, expected, "{} vs {}", prefix, path);
        }
    }
}
