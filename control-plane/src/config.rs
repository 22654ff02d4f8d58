//! The control plane's settings: the shared ones plus its own, read once at start.

use crate::auth::AdminRoles;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::time::Duration;
use tollgate_common::config::{CommonSettings, ConfigErrors, Env, Reader};
use tollgate_common::domain::RateLimit;
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
pub const ENV_STRIPE_PORTAL_CONFIGURATION: &str = "TOLLGATE_STRIPE_PORTAL_CONFIGURATION";
pub const ENV_STIGG_API_KEY: &str = "STIGG_API_KEY";
pub const ENV_STIGG_API_URL: &str = "STIGG_API_URL";
pub const ENV_STIGG_BUDGET_MS: &str = "TOLLGATE_STIGG_BUDGET_MS";
pub const ENV_STIGG_RETRY_MAX_MS: &str = "TOLLGATE_STIGG_RETRY_MAX_MS";
pub const ENV_RETENTION_STRIPE_EVENTS_DAYS: &str = "TOLLGATE_RETENTION_STRIPE_EVENTS_DAYS";
pub const ENV_RETENTION_STIGG_OUTBOX_DAYS: &str = "TOLLGATE_RETENTION_STIGG_OUTBOX_DAYS";
pub const ENV_RETENTION_USAGE_RECORDS_DAYS: &str = "TOLLGATE_RETENTION_USAGE_RECORDS_DAYS";
pub const ENV_RETENTION_PURGE_INTERVAL_MS: &str = "TOLLGATE_RETENTION_PURGE_INTERVAL_MS";
pub const ENV_RETENTION_PURGE_BATCH: &str = "TOLLGATE_RETENTION_PURGE_BATCH";
pub const ENV_BILLING_CHANGE_TIMEOUT_MS: &str = "TOLLGATE_BILLING_CHANGE_TIMEOUT_MS";
pub const ENV_TRIAL_END_WITHOUT_CARD: &str = "TOLLGATE_TRIAL_END_WITHOUT_CARD";
pub const ENV_BILLING_RATE_LIMIT: &str = "TOLLGATE_CP_BILLING_RATE_LIMIT";
pub const ENV_KEYS_RATE_LIMIT: &str = "TOLLGATE_CP_KEYS_RATE_LIMIT";
pub const ENV_STIGG_RATE_LIMIT: &str = "TOLLGATE_CP_STIGG_RATE_LIMIT";
pub const ENV_QUEUE_MAX_ATTEMPTS: &str = "TOLLGATE_QUEUE_MAX_ATTEMPTS";
pub const ENV_WEBHOOK_SECRETS_KEY: &str = "TOLLGATE_WEBHOOK_SECRETS_KEY";
pub const ENV_METER_REPORT_INTERVAL_MS: &str = "TOLLGATE_METER_REPORT_INTERVAL_MS";
pub const ENV_STRIPE_METER_RATE: &str = "TOLLGATE_STRIPE_METER_RATE";
pub const ENV_WEBHOOK_ALLOW_PRIVATE: &str = "TOLLGATE_WEBHOOK_ALLOW_PRIVATE";
pub const ENV_WEBHOOK_TIMEOUT_MS: &str = "TOLLGATE_WEBHOOK_TIMEOUT_MS";

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
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 10_000;
/// Five minutes: Stripe's meter takes 1,000 calls a second, so one report per org, metric and five minutes stays
/// within the default rate (500/s) up to 150,000 orgs in overage; the closing period's last report is made at once
/// when Stripe drafts the renewal invoice.
pub const DEFAULT_METER_REPORT_INTERVAL_MS: u64 = 300_000;
/// Stripe's meter event endpoint takes 1,000 calls a second in live mode (docs.stripe.com/rate-limits): half of
/// that, for every replica together, leaves room for the rest of the account's traffic.
pub const DEFAULT_STRIPE_METER_RATE: &str = "500/1s";
/// With the backoff capped at 5 min, 30 attempts keep a job retrying for about two hours.
pub const DEFAULT_QUEUE_MAX_ATTEMPTS: i32 = 30;
/// Stripe redelivers an event for up to 3 days and lets it be fetched for 30: past that a stored event can neither
/// come again nor be replayed from Stripe, so the row has done its work.
pub const DEFAULT_RETENTION_STRIPE_EVENTS_DAYS: u32 = 30;
/// Delivered outbox rows only serve an operator looking back at what Stigg was sent; a week covers an incident.
pub const DEFAULT_RETENTION_STIGG_OUTBOX_DAYS: u32 = 7;
/// How long after its period ends a period still takes usage records (and their request ids are remembered):
/// Stripe's Billing Meters take events up to 35 days old, so late usage can still reach the invoice's meter.
pub const DEFAULT_RETENTION_USAGE_RECORDS_DAYS: u32 = 35;
pub const DEFAULT_RETENTION_PURGE_INTERVAL_MS: u64 = 600_000;
pub const DEFAULT_RETENTION_PURGE_BATCH: u32 = 1_000;
/// The longest one billing change (its Stripe calls and its mirror) may take; its claim on the org lasts a little
/// longer, so a second change can never overlap a live one.
pub const DEFAULT_BILLING_CHANGE_TIMEOUT_MS: u64 = 60_000;
/// Per org: setup-intent, portal, preview, plan changes, subscription.create, customer.ensure (all call Stripe).
pub const DEFAULT_BILLING_RATE_LIMIT: &str = "30/60s";
/// Per org: keys.create and keys.revoke.
pub const DEFAULT_KEYS_RATE_LIMIT: &str = "20/60s";
/// Per org: stigg/provision.
pub const DEFAULT_STIGG_RATE_LIMIT: &str = "10/60s";

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
    /// The longest one billing change may take (`TOLLGATE_BILLING_CHANGE_TIMEOUT_MS`, at least the Stripe budget).
    pub change_timeout: Duration,
    /// The customer portal's configuration (`TOLLGATE_STRIPE_PORTAL_CONFIGURATION`, a `bpc_…` id), passed on every
    /// portal session. Stripe's default configuration may let customers switch plans past Tollgate's rules, and
    /// live mode needs a saved one; unset, Stripe's default applies.
    pub portal_configuration: Option<String>,
    /// What Stripe does with a trial that ends without a payment method (`TOLLGATE_TRIAL_END_WITHOUT_CARD`), sent as
    /// `trial_settings.end_behavior.missing_payment_method` on every trial.
    pub trial_end_without_card: TrialEndWithoutCard,
}

/// `TOLLGATE_TRIAL_END_WITHOUT_CARD`: Stripe's `missing_payment_method` trial end behaviours that end the trial
/// cleanly (Stripe's third, `create_invoice`, would keep a subscription without a card `past_due` through dunning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrialEndWithoutCard {
    /// The subscription is `paused`: unsubscribed limits; a card and `subscription.create` resume it (the default:
    /// the customer keeps the subscription, no second trial, nothing to clean up).
    #[default]
    Pause,
    /// The subscription is `canceled`: unsubscribed limits; `subscription.create` starts a new one (without a
    /// trial).
    Cancel,
}

impl std::str::FromStr for TrialEndWithoutCard {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "pause" => Ok(Self::Pause),
            "cancel" => Ok(Self::Cancel),
            _ => Err(()),
        }
    }
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

/// How long finished rows are kept before `jobs::purge` deletes them, and how it deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Applied and ignored Stripe events, after they were processed (`TOLLGATE_RETENTION_STRIPE_EVENTS_DAYS`).
    /// Pending and failed ones are never purged.
    pub stripe_events: Duration,
    /// Delivered, skipped and superseded Stigg operations, after they finished
    /// (`TOLLGATE_RETENTION_STIGG_OUTBOX_DAYS`). Waiting and failing ones are never purged.
    pub stigg_outbox: Duration,
    /// How long after its period ends a period takes usage records, and `usage/record`'s idempotency rows of it are
    /// kept (`TOLLGATE_RETENTION_USAGE_RECORDS_DAYS`).
    pub usage_records: Duration,
    /// How often each replica runs a purge pass (`TOLLGATE_RETENTION_PURGE_INTERVAL_MS`).
    pub purge_interval: Duration,
    /// Most rows one purge statement deletes (`TOLLGATE_RETENTION_PURGE_BATCH`).
    pub purge_batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
        Self {
            stripe_events: days(DEFAULT_RETENTION_STRIPE_EVENTS_DAYS),
            stigg_outbox: days(DEFAULT_RETENTION_STIGG_OUTBOX_DAYS),
            usage_records: days(DEFAULT_RETENTION_USAGE_RECORDS_DAYS),
            purge_interval: Duration::from_millis(DEFAULT_RETENTION_PURGE_INTERVAL_MS),
            purge_batch: DEFAULT_RETENTION_PURGE_BATCH,
        }
    }
}

impl RetentionSettings {
    /// Reads the retention keys; bad ones are recorded in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let mut days =
            |key: &str, default: u32, range: std::ops::RangeInclusive<u32>, why: &str| {
                let d = r.parse_or(key, default, "a number of days");
                if !range.contains(&d) {
                    r.error(
                        key,
                        format_args!(
                            "must be between {} and {} days{why}",
                            range.start(),
                            range.end()
                        ),
                    );
                }
                Duration::from_secs(u64::from(d) * 86_400)
            };
        let stripe_events = days(
            ENV_RETENTION_STRIPE_EVENTS_DAYS,
            DEFAULT_RETENTION_STRIPE_EVENTS_DAYS,
            3..=3650,
            " (Stripe redelivers events for 3 days)",
        );
        let stigg_outbox = days(
            ENV_RETENTION_STIGG_OUTBOX_DAYS,
            DEFAULT_RETENTION_STIGG_OUTBOX_DAYS,
            1..=3650,
            "",
        );
        let usage_records = days(
            ENV_RETENTION_USAGE_RECORDS_DAYS,
            DEFAULT_RETENTION_USAGE_RECORDS_DAYS,
            1..=3650,
            "",
        );
        let purge_interval = r.millis(
            ENV_RETENTION_PURGE_INTERVAL_MS,
            DEFAULT_RETENTION_PURGE_INTERVAL_MS,
            100..=86_400_000,
        );
        let purge_batch = r.parse_or(
            ENV_RETENTION_PURGE_BATCH,
            DEFAULT_RETENTION_PURGE_BATCH,
            "a number of rows",
        );
        if !(1..=100_000).contains(&purge_batch) {
            r.error(ENV_RETENTION_PURGE_BATCH, "must be between 1 and 100000");
        }
        Self {
            stripe_events,
            stigg_outbox,
            usage_records,
            purge_interval,
            purge_batch,
        }
    }
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
    /// What is purged when.
    pub retention: RetentionSettings,
    /// Per-org limits of the endpoints that call Stripe or change keys.
    pub rate_limits: RateLimits,
    /// Failed attempts after which a queued job is dead (`TOLLGATE_QUEUE_MAX_ATTEMPTS`).
    pub queue_max_attempts: i32,
    /// Outgoing webhooks.
    pub webhooks: WebhookSettings,
    /// Reporting overage to Stripe's meters.
    pub meters: MeterSettings,
    /// The exact origins browsers may call from (`TOLLGATE_CP_CORS_ORIGINS`); `None`: no CORS at all.
    pub cors: Option<crate::cors::CorsOrigins>,
}

/// Reporting overage to Stripe's Billing Meters.
#[derive(Debug, Clone, Copy)]
pub struct MeterSettings {
    /// `TOLLGATE_METER_REPORT_INTERVAL_MS`: the least time between two reports of one period's overage (usage
    /// meanwhile is coalesced into the next report).
    pub interval: Duration,
    /// `TOLLGATE_STRIPE_METER_RATE`: meter event calls of all replicas together (`off`: unlimited).
    pub rate: Option<RateLimit>,
}

/// Outgoing webhooks (usage alerts to the orgs' endpoints).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `TOLLGATE_WEBHOOK_SECRETS_KEY`: the AES-256 key that seals endpoints' signing secrets at rest (32 bytes,
    /// base64). Unset: `endpoints.set` answers 503 naming it.
    pub secrets_key: Option<SecretString>,
    /// `TOLLGATE_WEBHOOK_ALLOW_PRIVATE`: endpoints may be on private, loopback and link-local addresses (tests,
    /// a private network). Default false.
    pub allow_private: bool,
    /// `TOLLGATE_WEBHOOK_TIMEOUT_MS`: one delivery's whole exchange.
    pub timeout: Duration,
}

impl WebhookSettings {
    fn read(r: &mut Reader<'_>) -> Self {
        let secrets_key = r.optional_secret(ENV_WEBHOOK_SECRETS_KEY);
        if let Some(key) = &secrets_key {
            use base64::Engine;
            use secrecy::ExposeSecret;
            let decoded =
                base64::engine::general_purpose::STANDARD.decode(key.expose_secret().trim());
            if decoded.map(|k| k.len()) != Ok(32) {
                r.error(
                    ENV_WEBHOOK_SECRETS_KEY,
                    "must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)",
                );
            }
        }
        let allow_private = r.parse_or(ENV_WEBHOOK_ALLOW_PRIVATE, false, "true or false");
        let timeout = r.millis(
            ENV_WEBHOOK_TIMEOUT_MS,
            DEFAULT_WEBHOOK_TIMEOUT_MS,
            100..=60_000,
        );
        Self {
            secrets_key,
            allow_private,
            timeout,
        }
    }
}

/// Per-org rate limits by endpoint group (`None`: that group is not limited). The operator is never limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `TOLLGATE_CP_BILLING_RATE_LIMIT`.
    pub billing: Option<RateLimit>,
    /// `TOLLGATE_CP_KEYS_RATE_LIMIT`.
    pub keys: Option<RateLimit>,
    /// `TOLLGATE_CP_STIGG_RATE_LIMIT`.
    pub stigg: Option<RateLimit>,
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
        let retention = RetentionSettings::read(&mut r);
        let rate_limits = RateLimits {
            billing: rate_limit(&mut r, ENV_BILLING_RATE_LIMIT, DEFAULT_BILLING_RATE_LIMIT),
            keys: rate_limit(&mut r, ENV_KEYS_RATE_LIMIT, DEFAULT_KEYS_RATE_LIMIT),
            stigg: rate_limit(&mut r, ENV_STIGG_RATE_LIMIT, DEFAULT_STIGG_RATE_LIMIT),
        };
        let queue_max_attempts = r.parse_or(
            ENV_QUEUE_MAX_ATTEMPTS,
            DEFAULT_QUEUE_MAX_ATTEMPTS,
            "a number of attempts",
        );
        if !(1..=1000).contains(&queue_max_attempts) {
            r.error(ENV_QUEUE_MAX_ATTEMPTS, "must be between 1 and 1000");
        }
        let webhooks = WebhookSettings::read(&mut r);
        let meters = MeterSettings {
            interval: r.millis(
                ENV_METER_REPORT_INTERVAL_MS,
                DEFAULT_METER_REPORT_INTERVAL_MS,
                100..=3_600_000,
            ),
            rate: rate_limit(&mut r, ENV_STRIPE_METER_RATE, DEFAULT_STRIPE_METER_RATE),
        };
        let cors = crate::cors::CorsOrigins::read(&mut r);
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
                retention,
                rate_limits,
                queue_max_attempts,
                webhooks,
                meters,
                cors,
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
    let change_timeout = r.millis(
        ENV_BILLING_CHANGE_TIMEOUT_MS,
        DEFAULT_BILLING_CHANGE_TIMEOUT_MS,
        1_000..=600_000,
    );
    if change_timeout < budget {
        r.error(
            ENV_BILLING_CHANGE_TIMEOUT_MS,
            format_args!("must be at least {ENV_STRIPE_BUDGET_MS}"),
        );
    }
    let trial_end_without_card = r.parse_or(
        ENV_TRIAL_END_WITHOUT_CARD,
        TrialEndWithoutCard::default(),
        "`pause` or `cancel`",
    );
    let secret_key = secret_key?;
    if !(secret_key.expose_secret().starts_with("sk_")
        || secret_key.expose_secret().starts_with("rk_"))
    {
        r.error(
            ENV_STRIPE_SECRET_KEY,
            "expected a secret key (sk_…) or restricted key (rk_…)",
        );
    }
    let portal_configuration = r.optional(ENV_STRIPE_PORTAL_CONFIGURATION);
    if let Some(id) = &portal_configuration
        && !is_portal_configuration(id)
    {
        r.error(
            ENV_STRIPE_PORTAL_CONFIGURATION,
            "expected a billing portal configuration id (bpc_…)",
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
        change_timeout,
        trial_end_without_card,
        portal_configuration,
    })
}

/// A billing portal configuration id: `bpc_` and 1–250 letters, digits or underscores.
fn is_portal_configuration(id: &str) -> bool {
    id.strip_prefix("bpc_").is_some_and(|rest| {
        (1..=250).contains(&rest.len())
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// A rate-limit setting (`<calls>/<window>` or `off`), `default` when unset.
fn rate_limit(r: &mut Reader<'_>, key: &str, default: &str) -> Option<RateLimit> {
    let raw = r.optional(key).unwrap_or_else(|| default.to_owned());
    RateLimit::parse_setting(&raw).unwrap_or_else(|problem| {
        r.error(key, problem);
        None
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

    fn retention(env: &[(&str, &str)]) -> Result<RetentionSettings, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut r = Reader::new(&env);
        let settings = RetentionSettings::read(&mut r);
        r.finish().map(|()| settings).map_err(|e| e.to_string())
    }

    #[test]
    fn retention_defaults_and_overrides() {
        assert_eq!(retention(&[]), Ok(RetentionSettings::default()));
        let day = Duration::from_secs(86_400);
        let defaults = RetentionSettings::default();
        assert_eq!(
            (
                defaults.stripe_events,
                defaults.stigg_outbox,
                defaults.usage_records,
                defaults.purge_batch
            ),
            (30 * day, 7 * day, 35 * day, 1000)
        );
        let set = retention(&[
            (ENV_RETENTION_USAGE_RECORDS_DAYS, "400"),
            (ENV_RETENTION_PURGE_INTERVAL_MS, "250"),
            (ENV_RETENTION_PURGE_BATCH, "10"),
        ])
        .expect("valid");
        assert_eq!(set.usage_records, 400 * day);
        assert_eq!(set.purge_interval, Duration::from_millis(250));
        assert_eq!(set.purge_batch, 10);
    }

    #[test]
    fn every_bad_retention_key_is_named() {
        let e = retention(&[
            (ENV_RETENTION_STRIPE_EVENTS_DAYS, "2"),
            (ENV_RETENTION_STIGG_OUTBOX_DAYS, "0"),
            (ENV_RETENTION_USAGE_RECORDS_DAYS, "-1"),
            (ENV_RETENTION_PURGE_INTERVAL_MS, "10"),
            (ENV_RETENTION_PURGE_BATCH, "0"),
        ])
        .expect_err("all bad");
        for key in [
            ENV_RETENTION_STRIPE_EVENTS_DAYS,
            ENV_RETENTION_STIGG_OUTBOX_DAYS,
            ENV_RETENTION_USAGE_RECORDS_DAYS,
            ENV_RETENTION_PURGE_INTERVAL_MS,
            ENV_RETENTION_PURGE_BATCH,
        ] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
    }

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

    #[test]
    fn the_portal_configuration_is_a_bpc_id() {
        let stripe = [
            (ENV_STRIPE_SECRET_KEY, "sk_test_config"),
            (ENV_BILLING_RETURN_URL, "https://app.example.com/billing"),
        ];
        let with = |value: Option<&str>| {
            let mut env = stripe.to_vec();
            if let Some(v) = value {
                env.push((ENV_STRIPE_PORTAL_CONFIGURATION, v));
            }
            config(&env)
        };
        let c = with(None).expect("valid without it");
        assert_eq!(c.stripe.expect("stripe").portal_configuration, None);
        let c = with(Some("bpc_1Q2w3E")).expect("valid");
        assert_eq!(
            c.stripe.expect("stripe").portal_configuration.as_deref(),
            Some("bpc_1Q2w3E")
        );
        for bad in ["bpc_", "pc_1", "bpc_a b", "https://x"] {
            let e = with(Some(bad)).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(ENV_STRIPE_PORTAL_CONFIGURATION), "{bad:?}: {e}");
        }
    }
}
