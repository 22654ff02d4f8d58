//! Settings from the environment, read once at start and validated as a whole.
//!
//! Every variable is a named constant. A [`Reader`] collects *every* problem before failing, so one start-up
//! reports all bad keys on one line instead of one per restart. The environment is behind the [`Env`] trait so
//! tests pass a map instead of mutating the process environment.

use crate::domain::{PlanCatalog, RouteTable};
use secrecy::SecretString;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

pub const ENV_DATABASE_URL: &str = "DATABASE_URL";
pub const ENV_REDIS_URL: &str = "REDIS_URL";
pub const ENV_REDIS_NAMESPACE: &str = "TOLLGATE_REDIS_NAMESPACE";
pub const ENV_PLANS: &str = "TOLLGATE_PLANS";
pub const ENV_ROUTES: &str = "TOLLGATE_ROUTES";
pub const ENV_CLERK_JWKS_URL: &str = "CLERK_JWKS_URL";
pub const ENV_CLERK_ISSUER: &str = "CLERK_ISSUER";
pub const ENV_SENTRY_DSN: &str = "SENTRY_DSN";
pub const ENV_LOG_FORMAT: &str = "TOLLGATE_LOG_FORMAT";
pub const ENV_DATABASE_MAX_CONNECTIONS: &str = "TOLLGATE_DATABASE_MAX_CONNECTIONS";
pub const ENV_PAST_DUE_GRACE: &str = "TOLLGATE_PAST_DUE_GRACE";
pub const ENV_ORG_CACHE_CAPACITY: &str = "TOLLGATE_ORG_CACHE_CAPACITY";
pub const ENV_KEY_CACHE_CAPACITY: &str = "TOLLGATE_KEY_CACHE_CAPACITY";
pub const ENV_BILLING_RECHECK_MS: &str = "TOLLGATE_BILLING_RECHECK_MS";

pub const DEFAULT_PLANS: &str = "config/plans.toml";
pub const DEFAULT_ROUTES: &str = "config/routes.toml";
pub const DEFAULT_REDIS_NAMESPACE: &str = "tg";
pub const DEFAULT_DATABASE_MAX_CONNECTIONS: u32 = 16;
pub const DEFAULT_ORG_CACHE_CAPACITY: usize = 200_000;
pub const DEFAULT_KEY_CACHE_CAPACITY: usize = 1_000_000;
pub const DEFAULT_BILLING_RECHECK_MS: u64 = 300_000;

// === Env ===

/// Where settings come from.
pub trait Env {
    /// The value of `key` as set, blank or not.
    fn raw(&self, key: &str) -> Option<String>;

    /// The value of `key`, if set and not blank (a blank setting means "the default").
    fn get(&self, key: &str) -> Option<String> {
        self.raw(key).filter(|v| !v.trim().is_empty())
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn raw(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for HashMap<String, String, S> {
    fn raw(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

// === ConfigErrors ===

/// Every problem found in the settings, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

// === Reader ===

/// Reads keys from an [`Env`], remembering every problem until [`Reader::finish`].
pub struct Reader<'a> {
    env: &'a dyn Env,
    errors: Vec<String>,
}

impl<'a> Reader<'a> {
    /// A reader over `env`.
    pub fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            errors: Vec::new(),
        }
    }

    /// Records a problem with `key`.
    pub fn error(&mut self, key: &str, problem: impl fmt::Display) {
        self.errors.push(format!("{key}: {problem}"));
    }

    /// An optional string.
    pub fn optional(&mut self, key: &str) -> Option<String> {
        self.env.get(key)
    }

    /// Whether `key` is set to a blank value (which every other reader takes as unset), for a setting where
    /// "nothing" must not silently mean the default.
    pub fn is_blank(&self, key: &str) -> bool {
        self.env.raw(key).is_some_and(|v| v.trim().is_empty())
    }

    /// A required string; a missing one is recorded.
    pub fn required(&mut self, key: &str) -> Option<String> {
        let value = self.env.get(key);
        if value.is_none() {
            self.error(key, "is required but not set");
        }
        value
    }

    /// A required secret; the value never appears in errors.
    pub fn secret(&mut self, key: &str) -> Option<SecretString> {
        self.required(key).map(SecretString::from)
    }

    /// An optional secret.
    pub fn optional_secret(&mut self, key: &str) -> Option<SecretString> {
        self.optional(key).map(SecretString::from)
    }

    /// A value parsed with `FromStr`, or `default` when unset. The bad value itself is not echoed, so secrets
    /// mistyped into the wrong variable stay out of logs.
    pub fn parse_or<T: FromStr>(&mut self, key: &str, default: T, expected: &str) -> T {
        match self.env.get(key) {
            None => default,
            Some(raw) => match raw.trim().parse() {
                Ok(v) => v,
                Err(_) => {
                    self.error(key, format_args!("expected {expected}"));
                    default
                }
            },
        }
    }

    /// A duration given in milliseconds, within `range`, or `default_ms` when unset.
    pub fn millis(
        &mut self,
        key: &str,
        default_ms: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Duration {
        let ms = self.parse_or(key, default_ms, "milliseconds");
        if !range.contains(&ms) {
            self.error(
                key,
                format_args!("must be between {} and {}", range.start(), range.end()),
            );
        }
        Duration::from_millis(ms)
    }

    /// A socket address such as `0.0.0.0:8080`.
    pub fn listen(&mut self, key: &str, default: &str) -> std::net::SocketAddr {
        let fallback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let raw = self.env.get(key).unwrap_or_else(|| default.to_owned());
        raw.trim().parse().unwrap_or_else(|_| {
            self.error(key, "expected host:port, e.g. 0.0.0.0:8080");
            fallback
        })
    }

    /// An http(s) URL, required when `default` is `None`.
    pub fn url(&mut self, key: &str, default: Option<&str>) -> Option<Url> {
        let raw = match (self.env.get(key), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_owned(),
            (None, None) => {
                self.error(key, "is required but not set");
                return None;
            }
        };
        match Url::parse(raw.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                self.error(key, "expected an http(s) URL");
                None
            }
        }
    }

    /// A path to a readable file, read to a string.
    pub fn file(&mut self, key: &str, default: &str) -> Option<(PathBuf, String)> {
        let path = PathBuf::from(self.env.get(key).unwrap_or_else(|| default.to_owned()));
        match std::fs::read_to_string(&path) {
            Ok(text) => Some((path, text)),
            Err(e) => {
                self.error(key, format_args!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    /// Ends reading: every recorded problem, or nothing.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

// === Shared settings ===

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production default).
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err(()),
        }
    }
}

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisSettings {
    /// One URL for a single node; several for Redis Cluster. May hold a password, hence secret.
    pub nodes: Vec<SecretString>,
    /// Prefix of every key and channel Tollgate uses, so several deployments (or tests) can share one Redis.
    pub namespace: String,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("nodes", &self.nodes.len())
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// How to verify Clerk session tokens.
#[derive(Debug, Clone)]
pub struct ClerkSettings {
    /// Where the signing keys are published.
    pub jwks_url: Url,
    /// Expected `iss`, when set.
    pub issuer: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`.
    pub leeway: Duration,
    /// The least time between two JWKS fetches triggered by unknown `kid`s.
    pub min_refresh_interval: Duration,
    /// Keys older than this are refetched on next use.
    pub max_key_age: Duration,
}

/// Settings both binaries read.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    /// PostgreSQL URL (may hold a password).
    pub database_url: SecretString,
    /// Pool size.
    pub database_max_connections: u32,
    /// Redis.
    pub redis: RedisSettings,
    /// PLANS_CONFIG, validated.
    pub plans: Arc<PlanCatalog>,
    /// Where PLANS_CONFIG was read from.
    pub plans_path: PathBuf,
    /// Clerk.
    pub clerk: ClerkSettings,
    /// Sentry DSN, if errors should go to Sentry.
    pub sentry_dsn: Option<SecretString>,
    /// Log format.
    pub log_format: LogFormat,
    /// Bounds of the per-process caches and the billing safety net.
    pub caches: CacheSettings,
}

/// Bounds of the per-process caches (`TOLLGATE_ORG_CACHE_CAPACITY`, `TOLLGATE_KEY_CACHE_CAPACITY`) and the period of
/// the billing cache's safety net (`TOLLGATE_BILLING_RECHECK_MS`).
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Orgs whose billing state is cached at most (and as many Clerk ids).
    pub org_capacity: usize,
    /// Valid API keys cached at most.
    pub key_capacity: usize,
    /// How long the safety net takes to re-read every cached org once.
    pub billing_recheck: Duration,
}

impl CacheSettings {
    fn read(r: &mut Reader<'_>) -> Self {
        let org_capacity = r.parse_or(
            ENV_ORG_CACHE_CAPACITY,
            DEFAULT_ORG_CACHE_CAPACITY,
            "a number of orgs",
        );
        if org_capacity == 0 {
            r.error(ENV_ORG_CACHE_CAPACITY, "must be at least 1");
        }
        let key_capacity = r.parse_or(
            ENV_KEY_CACHE_CAPACITY,
            DEFAULT_KEY_CACHE_CAPACITY,
            "a number of keys",
        );
        if key_capacity == 0 {
            r.error(ENV_KEY_CACHE_CAPACITY, "must be at least 1");
        }
        let billing_recheck = r.millis(
            ENV_BILLING_RECHECK_MS,
            DEFAULT_BILLING_RECHECK_MS,
            10_000..=86_400_000,
        );
        Self {
            org_capacity,
            key_capacity,
            billing_recheck,
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            org_capacity: DEFAULT_ORG_CACHE_CAPACITY,
            key_capacity: DEFAULT_KEY_CACHE_CAPACITY,
            billing_recheck: Duration::from_millis(DEFAULT_BILLING_RECHECK_MS),
        }
    }
}

impl CommonSettings {
    /// Reads the shared keys; problems are recorded in `r`. Returns `None` when a required part is missing.
    pub fn read(r: &mut Reader<'_>) -> Option<Self> {
        let database_url = r.secret(ENV_DATABASE_URL);
        if let Some(url) = &database_url {
            use secrecy::ExposeSecret;
            let ok = Url::parse(url.expose_secret())
                .map(|u| matches!(u.scheme(), "postgres" | "postgresql"))
                .unwrap_or(false);
            if !ok {
                r.error(ENV_DATABASE_URL, "expected a postgres:// URL");
            }
        }
        let database_max_connections = r.parse_or(
            ENV_DATABASE_MAX_CONNECTIONS,
            DEFAULT_DATABASE_MAX_CONNECTIONS,
            "a positive integer",
        );
        if database_max_connections == 0 {
            r.error(ENV_DATABASE_MAX_CONNECTIONS, "must be at least 1");
        }
        let redis = read_redis(r);
        let plans = r.file(ENV_PLANS, DEFAULT_PLANS).and_then(|(path, text)| {
            match PlanCatalog::from_toml_str(&text) {
                Ok(c) => Some((path, Arc::new(c))),
                Err(e) => {
                    r.error(ENV_PLANS, format_args!("{}: {e}", path.display()));
                    None
                }
            }
        });
        let jwks_url = r.url(ENV_CLERK_JWKS_URL, None);
        let issuer = r.optional(ENV_CLERK_ISSUER);
        let sentry_dsn = r.optional_secret(ENV_SENTRY_DSN);
        let log_format = r.parse_or(ENV_LOG_FORMAT, LogFormat::Json, "json or pretty");
        let grace = read_past_due_grace(r);
        let caches = CacheSettings::read(r);
        let (plans_path, plans) = plans?;
        let plans = Arc::new((*plans).clone().with_past_due_grace(grace));
        Some(Self {
            database_url: database_url?,
            database_max_connections,
            redis: redis?,
            plans,
            plans_path,
            clerk: ClerkSettings {
                jwks_url: jwks_url?,
                issuer,
                leeway: Duration::from_secs(5),
                min_refresh_interval: Duration::from_secs(10),
                max_key_age: Duration::from_secs(3600),
            },
            sentry_dsn,
            log_format,
            caches,
        })
    }

    /// Reads the routes file against the plan catalogue (the proxy's `TOLLGATE_ROUTES`).
    pub fn read_routes(&self, r: &mut Reader<'_>) -> Option<(PathBuf, Arc<RouteTable>)> {
        let (path, text) = r.file(ENV_ROUTES, DEFAULT_ROUTES)?;
        match RouteTable::from_toml_str(&text, &self.plans) {
            Ok(t) => Some((path, Arc::new(t))),
            Err(e) => {
                r.error(ENV_ROUTES, format_args!("{}: {e}", path.display()));
                None
            }
        }
    }
}

fn read_redis(r: &mut Reader<'_>) -> Option<RedisSettings> {
    let raw = r.required(ENV_REDIS_URL)?;
    let mut nodes = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match Url::parse(part) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host().is_some() => {
                nodes.push(SecretString::from(part.to_owned()));
            }
            _ => {
                r.error(
                    ENV_REDIS_URL,
                    "expected redis://host:port, or several separated by commas",
                );
                return None;
            }
        }
    }
    let namespace = r
        .optional(ENV_REDIS_NAMESPACE)
        .unwrap_or_else(|| DEFAULT_REDIS_NAMESPACE.to_owned());
    if namespace.is_empty()
        || namespace.len() > 64
        || !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        r.error(
            ENV_REDIS_NAMESPACE,
            "expected 1 to 64 letters, digits, '-' or '_'",
        );
    }
    Some(RedisSettings { nodes, namespace })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reports_every_bad_key_at_once() {
        let e = env(&[("REDIS_URL", "http://nope"), ("TOLLGATE_LOG_FORMAT", "xml")]);
        let mut r = Reader::new(&e);
        let s = CommonSettings::read(&mut r);
        assert!(s.is_none());
        let errors = r.finish().unwrap_err();
        let line = errors.to_string();
        assert!(!line.contains('\n'));
        for key in [
            "DATABASE_URL",
            "REDIS_URL",
            "CLERK_JWKS_URL",
            "TOLLGATE_LOG_FORMAT",
        ] {
            assert!(line.contains(key), "{key} missing from {line}");
        }
    }

    #[test]
    fn bad_values_are_not_echoed() {
        let e = env(&[("TOLLGATE_DATABASE_MAX_CONNECTIONS", "sk_live_secret")]);
        let mut r = Reader::new(&e);
        let _ = r.parse_or(ENV_DATABASE_MAX_CONNECTIONS, 1u32, "a positive integer");
        let line = r.finish().unwrap_err().to_string();
        assert!(line.contains("TOLLGATE_DATABASE_MAX_CONNECTIONS"));
        assert!(!line.contains("sk_live_secret"));
    }

    #[test]
    fn several_redis_nodes_mean_cluster() {
        let e = env(&[(
            "REDIS_URL",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
        )]);
        let mut r = Reader::new(&e);
        let s = read_redis(&mut r).unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.namespace, "tg");
        r.finish().unwrap();
    }
}

/// `TOLLGATE_PAST_DUE_GRACE`: how long a `past_due` subscription keeps its paid plan after its period began. Unset
/// or `retrying`: as long as Stripe keeps retrying (until Stripe moves it on). Otherwise `<n>m`, `<n>h` or `<n>d`,
/// from 1 minute to 60 days.
fn read_past_due_grace(r: &mut Reader<'_>) -> Option<chrono::Duration> {
    let raw = r.optional(ENV_PAST_DUE_GRACE)?;
    match parse_grace(raw.trim()) {
        Ok(grace) => grace,
        Err(()) => {
            r.error(
                ENV_PAST_DUE_GRACE,
                "expected `retrying` or a duration `<n>m`, `<n>h` or `<n>d` between 1m and 60d",
            );
            None
        }
    }
}

fn parse_grace(raw: &str) -> Result<Option<chrono::Duration>, ()> {
    if raw == "retrying" {
        return Ok(None);
    }
    let split = raw.len().checked_sub(1).ok_or(())?;
    let (n, unit) = raw.split_at(split);
    let n: i64 = n.parse().map_err(|_| ())?;
    let grace = match unit {
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    }
    .ok_or(())?;
    let range = chrono::Duration::minutes(1)..=chrono::Duration::days(60);
    if range.contains(&grace) {
        Ok(Some(grace))
    } else {
        Err(())
    }
}

#[cfg(test)]
mod past_due_grace_tests {
    use super::parse_grace;

    #[test]
    fn the_grace_is_retrying_or_a_bounded_duration() {
        assert_eq!(parse_grace("retrying"), Ok(None));
        assert_eq!(parse_grace("7d"), Ok(Some(chrono::Duration::days(7))));
        assert_eq!(parse_grace("36h"), Ok(Some(chrono::Duration::hours(36))));
        assert_eq!(parse_grace("1m"), Ok(Some(chrono::Duration::minutes(1))));
        for bad in ["", "0m", "61d", "7", "d", "-1d", "7w", "1.5d"] {
            assert_eq!(parse_grace(bad), Err(()), "{bad}");
        }
    }
}

#[cfg(test)]
mod cache_settings_tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> (CacheSettings, Result<(), ConfigErrors>) {
        let e: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut r = Reader::new(&e);
        let s = CacheSettings::read(&mut r);
        (s, r.finish())
    }

    #[test]
    fn cache_bounds_default_and_are_validated() {
        let (s, ok) = read(&[]);
        assert!(ok.is_ok());
        assert_eq!(s.org_capacity, 200_000);
        assert_eq!(s.key_capacity, 1_000_000);
        assert_eq!(s.billing_recheck, Duration::from_secs(300));
        let (_, errors) = read(&[
            (ENV_ORG_CACHE_CAPACITY, "0"),
            (ENV_KEY_CACHE_CAPACITY, "many"),
            (ENV_BILLING_RECHECK_MS, "9999"),
        ]);
        let line = errors.expect_err("invalid").to_string();
        for key in [
            ENV_ORG_CACHE_CAPACITY,
            ENV_KEY_CACHE_CAPACITY,
            ENV_BILLING_RECHECK_MS,
        ] {
            assert!(line.contains(key), "{key} missing from {line}");
        }
        let (s, ok) = read(&[
            (ENV_ORG_CACHE_CAPACITY, "2"),
            (ENV_BILLING_RECHECK_MS, "10000"),
        ]);
        assert!(ok.is_ok());
        assert_eq!(s.org_capacity, 2);
    }
}
