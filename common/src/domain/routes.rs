//! The routes file: which request paths cost what.
//!
//! `[[routes]]` entries are tried in file order and the first whose prefix matches wins; `default`
//! prices everything else.

use super::DomainError;
use super::ids::Metric;
use super::plan::PlanCatalog;
use super::toml_table::{self, Fields};

const ROOT_KEYS: &[&str] = &["default", "routes"];
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
    prefix: String,
    pricing: Pricing,
}

/// The validated routes file.
///
/// Invariants: every prefix starts with `/` and holds no whitespace, `?` or `#`; every metric is
/// known to the [`PlanCatalog`] it was checked against; no route is shadowed by an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
    default: Pricing,
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
            check_prefix(prefix).map_err(|reason| toml_table::error(prefix_key.clone(), reason))?;
            // A prefix that an earlier prefix matches can never be reached: first match wins.
            let shadowing = routes
                .iter()
                .enumerate()
                .find(|(_, earlier)| prefix_matches(&earlier.prefix, prefix));
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
                pricing,
            });
        }
        Ok(Self { routes, default })
    }

    /// Prices a request path (no query string): the first route in file order whose prefix matches,
    /// else the default.
    ///
    /// Matching is segment-aware: `/v1/embeddings` matches `/v1/embeddings` and `/v1/embeddings/x`
    /// but not `/v1/embeddingsx`; a prefix ending in `/` matches every path under it, so `/`
    /// matches everything.
    pub fn classify(&self, path: &str) -> RouteClass<'_> {
        // Hot path: one linear scan over a handful of prefixes, no allocation.
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
            .map_or_else(
                || self.default.class(DEFAULT_ROUTE),
                |route| route.pricing.class(&route.prefix),
            )
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || match path.as_bytes().get(prefix.len()) {
                None | Some(b'/') => true,
                Some(_) => false,
            })
}

fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') {
        Err("must start with /")
    } else if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must not contain whitespace")
    } else if prefix.contains(['?', '#']) {
        Err("must be a path only, without ? or #")
    } else {
        Ok(())
    }
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
