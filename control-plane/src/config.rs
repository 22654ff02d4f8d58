//! The control plane's settings: the shared ones plus its own, read once at start.

use crate::auth::AdminRoles;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::time::Duration;
use tollgate_common::config::{CommonSettings, ConfigErrors, Env, Reader};
use url::Url;

pub const ENV_CP_LISTEN: &str = "TOLLGATE_CP_LISTEN";
pub const ENV_ADMIN_TOKEN: &str = "TOLLGATE_ADMIN_TOKEN";
pub const ENV_ADMIN_ROLES: &str = "TOLLGATE_ADMIN_ROLES";
pub const ENV_BODY_LIMIT: &str = "TOLLGATE_CP_BODY_LIMIT";
pub const ENV_HEADER_TIMEOUT_MS: &str = "TOLLGATE_CP_HEADER_TIMEOUT_MS";
pub const ENV_BODY_TIMEOUT_MS: &str = "TOLLGATE_CP_BODY_TIMEOUT_MS";
pub const ENV_REFRESH_INTERVAL_MS: &str = "TOLLGATE_REFRESH_INTERVAL_MS";
pub const ENV_STRIPE_SECRET_KEY: &str = "STRIPE_SECRET_KEY";
pub const ENV_STRIPE_API_BASE: &str = "STRIPE_API_BASE";
pub const ENV_STRIPE_WEBHOOK_SECRET: &str = "STRIPE_WEBHOOK_SECRET";
pub const ENV_STRIPE_WEBHOOK_SECRET_PREVIOUS: &str = "STRIPE_WEBHOOK_SECRET_PREVIOUS";
pub const ENV_STRIPE_TIMEOUT_MS: &str = "TOLLGATE_STRIPE_TIMEOUT_MS";
pub const ENV_STRIPE_BUDGET_MS: &str = "TOLLGATE_STRIPE_BUDGET_MS";
pub const ENV_STRIPE_WORKERS: &str = "TOLLGATE_STRIPE_WORKERS";
pub const ENV_WEBHOOK_BODY_LIMIT: &str = "TOLLGATE_WEBHOOK_BODY_LIMIT";
pub const ENV_BILLING_RETURN_URL: &str = "TOLLGATE_BILLING_RETURN_URL";
pub const ENV_STIGG_API_KEY: &str = "STIGG_API_KEY";
pub const ENV_STIGG_API_URL: &str = "STIGG_API_URL";
pub const ENV_STIGG_BUDGET_MS: &str = "TOLLGATE_STIGG_BUDGET_MS";
pub const ENV_STIGG_RETRY_MAX_MS: &str = "TOLLGATE_STIGG_RETRY_MAX_MS";

pub const DEFAULT_CP_LISTEN: &str = "0.0.0.0:8080";
/// Clerk's own administrator role.
pub const DEFAULT_ADMIN_ROLES: &str = "org:admin";
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_REFRESH_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";
pub const DEFAULT_STRIPE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_STRIPE_BUDGET_MS: u64 = 15_000;
pub const DEFAULT_STRIPE_WORKERS: usize = 4;
/// Stripe's events can be far larger than the API's requests (a subscription with its items and invoice).
pub const DEFAULT_WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;
pub const DEFAULT_STIGG_API_URL: &str = "https://api.stigg.io/graphql";
pub const DEFAULT_STIGG_BUDGET_MS: u64 = 3_000;
pub const DEFAULT_STIGG_RETRY_MAX_MS: u64 = 300_000;

/// Stripe access. Without `STRIPE_SECRET_KEY` the billing endpoints answer 503 naming it; everything else works.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// How the API is called.
    pub api: crate::stripe::StripeSettings,
    /// Webhook signing secrets: `STRIPE_WEBHOOK_SECRET`, then `STRIPE_WEBHOOK_SECRET_PREVIOUS` while rolling it.
    /// Empty: webhook intake answers 503 naming `STRIPE_WEBHOOK_SECRET`.
    pub webhook_secrets: Vec<SecretString>,
    /// Where the customer portal returns to (`TOLLGATE_BILLING_RETURN_URL`, required with Stripe).
    pub return_url: Url,
    /// Concurrent webhook workers per process.
    pub workers: usize,
    /// Largest webhook body in bytes.
    pub webhook_body_limit: usize,
}

/// Stigg access, for the mirror.
#[derive(Debug, Clone)]
pub struct StiggSettings {
    pub api_key: SecretString,
    pub api_url: Url,
    /// One delivery's time, retries of 429 and 5xx included (`TOLLGATE_STIGG_BUDGET_MS`).
    pub budget: Duration,
    /// The longest wait between an operation's failed deliveries (`TOLLGATE_STIGG_RETRY_MAX_MS`).
    pub retry_max: Duration,
}

/// Everything the control plane is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonSettings,
    pub listen: SocketAddr,
    pub admin_token: SecretString,
    /// The Clerk organization roles whose users may change billing, payment methods and keys
    /// (`TOLLGATE_ADMIN_ROLES`).
    pub admin_roles: AdminRoles,
    pub body_limit: usize,
    /// How long a client may take to send a request's header (and how long an idle connection is kept).
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// The longest an org's cached billing state is used (changes announced by PostgreSQL apply at once), and
    /// how often the revocation epoch is read.
    pub refresh_interval: Duration,
    pub stripe: Option<StripeSettings>,
    pub stigg: Option<StiggSettings>,
}

impl Config {
    /// Reads and validates every key; the error names each bad one.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let common = CommonSettings::read(&mut r);
        let listen = r.listen(ENV_CP_LISTEN, DEFAULT_CP_LISTEN);
        let admin_token = r.secret(ENV_ADMIN_TOKEN);
        let admin_roles = read_admin_roles(&mut r);
        let body_limit = r.parse_or(ENV_BODY_LIMIT, DEFAULT_BODY_LIMIT, "a size in bytes");
        if !(1024..=16 * 1024 * 1024).contains(&body_limit) {
            r.error(ENV_BODY_LIMIT, "must be between 1024 and 16777216 bytes");
        }
        let header_timeout = r.millis(
            ENV_HEADER_TIMEOUT_MS,
            DEFAULT_HEADER_TIMEOUT_MS,
            100..=600_000,
        );
        let body_timeout = r.millis(ENV_BODY_TIMEOUT_MS, DEFAULT_BODY_TIMEOUT_MS, 100..=600_000);
        let refresh_interval = r.millis(
            ENV_REFRESH_INTERVAL_MS,
            DEFAULT_REFRESH_INTERVAL_MS,
            10..=60_000,
        );
        let stripe = read_stripe(&mut r);
        let stigg = read_stigg(&mut r);
        r.finish()?;
        match (common, admin_token) {
            (Some(common), Some(admin_token)) => Ok(Self {
                common,
                listen,
                admin_token,
                admin_roles,
                body_limit,
                header_timeout,
                body_timeout,
                refresh_interval,
                stripe,
                stigg,
            }),
            // `finish` reported every missing part already; this arm is unreachable in practice.
            _ => Err(ConfigErrors(vec!["configuration incomplete".to_owned()])),
        }
    }
}

/// `TOLLGATE_ADMIN_ROLES`: a comma-separated list of role names. Set but blank is an error rather than the
/// default: an operator who clears the list means "nobody", which is not what the default grants.
fn read_admin_roles(r: &mut Reader<'_>) -> AdminRoles {
    if r.is_blank(ENV_ADMIN_ROLES) {
        r.error(
            ENV_ADMIN_ROLES,
            "must name at least one organization role, e.g. org:admin",
        );
        return AdminRoles::default();
    }
    let raw = r
        .optional(ENV_ADMIN_ROLES)
        .unwrap_or_else(|| DEFAULT_ADMIN_ROLES.to_owned());
    AdminRoles::parse(&raw).unwrap_or_else(|problem| {
        r.error(ENV_ADMIN_ROLES, problem);
        AdminRoles::default()
    })
}

fn read_stripe(r: &mut Reader<'_>) -> Option<StripeSettings> {
    use secrecy::ExposeSecret;
    let secret_key = r.optional_secret(ENV_STRIPE_SECRET_KEY);
    let api_base = r.url(ENV_STRIPE_API_BASE, Some(DEFAULT_STRIPE_API_BASE));
    let webhook_secrets: Vec<SecretString> = [
        ENV_STRIPE_WEBHOOK_SECRET,
        ENV_STRIPE_WEBHOOK_SECRET_PREVIOUS,
    ]
    .into_iter()
    .filter_map(|key| {
        let secret = r.optional_secret(key)?;
        if secret.expose_secret().starts_with("whsec_") {
            Some(secret)
        } else {
            r.error(key, "expected a webhook signing secret (whsec_…)");
            None
        }
    })
    .collect();
    let attempt_timeout = r.millis(
        ENV_STRIPE_TIMEOUT_MS,
        DEFAULT_STRIPE_TIMEOUT_MS,
        100..=120_000,
    );
    let budget = r.millis(
        ENV_STRIPE_BUDGET_MS,
        DEFAULT_STRIPE_BUDGET_MS,
        100..=600_000,
    );
    let workers = r.parse_or(
        ENV_STRIPE_WORKERS,
        DEFAULT_STRIPE_WORKERS,
        "a number of workers",
    );
    if !(1..=64).contains(&workers) {
        r.error(ENV_STRIPE_WORKERS, "must be between 1 and 64");
    }
    let webhook_body_limit = r.parse_or(
        ENV_WEBHOOK_BODY_LIMIT,
        DEFAULT_WEBHOOK_BODY_LIMIT,
        "a size in bytes",
    );
    if !(1024..=64 * 1024 * 1024).contains(&webhook_body_limit) {
        r.error(
            ENV_WEBHOOK_BODY_LIMIT,
            "must be between 1024 and 67108864 bytes",
        );
    }
    let secret_key = secret_key?;
    if !(secret_key.expose_secret().starts_with("sk_")
        || secret_key.expose_secret().starts_with("rk_"))
    {
        r.error(
            ENV_STRIPE_SECRET_KEY,
            "expected a secret key (sk_…) or restricted key (rk_…)",
        );
    }
    let Some(return_url) = r.url(ENV_BILLING_RETURN_URL, None) else {
        // `url` has recorded it: required when Stripe is configured.
        return None;
    };
    Some(StripeSettings {
        api: crate::stripe::StripeSettings {
            secret_key,
            api_base: api_base?.as_str().trim_end_matches('/').to_owned(),
            attempt_timeout,
            budget,
        },
        webhook_secrets,
        return_url,
        workers,
        webhook_body_limit,
    })
}

fn read_stigg(r: &mut Reader<'_>) -> Option<StiggSettings> {
    let api_key = r.optional_secret(ENV_STIGG_API_KEY);
    let api_url = r.url(ENV_STIGG_API_URL, Some(DEFAULT_STIGG_API_URL));
    let budget = r.millis(ENV_STIGG_BUDGET_MS, DEFAULT_STIGG_BUDGET_MS, 100..=60_000);
    let retry_max = r.millis(
        ENV_STIGG_RETRY_MAX_MS,
        DEFAULT_STIGG_RETRY_MAX_MS,
        1_000..=3_600_000,
    );
    Some(StiggSettings {
        api_key: api_key?,
        api_url: api_url?,
        budget,
        retry_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(extra: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let plans = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/plans.toml");
        let mut env: HashMap<String, String> = [
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/tollgate",
            ),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("CLERK_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
            ("TOLLGATE_PLANS", plans),
            (ENV_ADMIN_TOKEN, "tgop_config_test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Config::from_env(&env)
    }

    fn roles(value: &str) -> Result<Vec<String>, String> {
        config(&[(ENV_ADMIN_ROLES, value)])
            .map(|c| c.admin_roles.names().to_vec())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn admin_roles_default_to_clerks_admin() {
        let c = config(&[]).expect("valid config");
        assert_eq!(c.admin_roles.names(), ["org:admin"]);
    }

    #[test]
    fn admin_roles_are_a_list_in_the_org_form() {
        assert_eq!(
            roles("org:admin, org:billing_manager").unwrap(),
            ["org:admin", "org:billing_manager"]
        );
        // Written without the prefix, as v2 tokens spell them: the same roles.
        assert_eq!(
            roles("admin,billing_manager,admin").unwrap(),
            ["org:admin", "org:billing_manager"]
        );
    }

    #[test]
    fn an_empty_admin_role_list_stops_the_start() {
        for bad in [
            "",
            " ",
            ",",
            "org:admin,",
            "org:admin,,org:x",
            "org:",
            "org:bad role",
        ] {
            let e = roles(bad).unwrap_err();
            assert!(e.contains(ENV_ADMIN_ROLES), "{bad:?}: {e}");
        }
    }
}
