//! A metering set-up: a control plane, an upstream, and any number of `tollgate-proxy` processes sharing one
//! database, one Redis and one plans file whose `trial` plan (the `unsubscribed` one) has a chosen limit.

use crate::app::TestApp;
use crate::proxy::{ProxyProcess, proxy_binary};
use crate::upstream::Upstream;
use futures_util::future::join_all;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Sends `attempts` GET requests to `path` with API key `key` from `clients` concurrent clients spread over
/// `proxies` (round robin); returns the statuses seen.
pub async fn hammer(
    proxies: &[&ProxyProcess],
    key: &str,
    path: &str,
    clients: usize,
    attempts: usize,
) -> Vec<u16> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| format!("{}{path}", p.url()))
        .collect();
    let tasks = (0..clients).map(|_| {
        let (http, next, urls, key) = (
            http.clone(),
            Arc::clone(&next),
            urls.clone(),
            key.to_owned(),
        );
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= attempts {
                    return statuses;
                }
                let r = http
                    .get(&urls[i % urls.len()])
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .expect("request");
                statuses.push(r.status().as_u16());
            }
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.expect("client task"))
        .collect()
}

/// How many of `statuses` are `status`.
pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Metric `tokens` is limited to this in every test plan.
pub const TOKENS_LIMIT: u64 = 100;

/// Options for [`Metering::start`].
pub struct Options<'a> {
    /// The `api_call` limit of an org without a subscription.
    pub limit: u64,
    /// Redis for the control plane and the proxies (default: the shared local one).
    pub redis_url: Option<String>,
    /// Settings added to every proxy.
    pub proxy_env: Vec<(String, String)>,
    /// A clock for the control plane (the proxies run on real time).
    pub clock: Option<tollgate_common::clock::OffsetClock>,
    /// A Stripe emulator for the control plane's billing (its webhooks are registered to the control plane).
    pub stripe: Option<&'a crate::stripe::StripeEmulator>,
    /// A fake Stigg for the control plane's mirror.
    pub stigg: Option<&'a crate::stigg::FakeStigg>,
    /// Settings added to the control plane's.
    pub control_plane_env: Vec<(String, String)>,
    /// PLANS_CONFIG in place of the default plans (whose `trial` has `limit`).
    pub plans: Option<String>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            limit: 1000,
            redis_url: None,
            proxy_env: Vec::new(),
            clock: None,
            stripe: None,
            stigg: None,
            control_plane_env: Vec::new(),
            plans: None,
        }
    }
}

/// The running set-up.
pub struct Metering {
    pub app: TestApp,
    pub upstream: Upstream,
    pub redis_url: String,
    pub dir: PathBuf,
    base_env: Vec<(String, String)>,
}

/// Settings written as `&str` pairs, owned (for [`Options::control_plane_env`] and the like).
pub fn owned_env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Metering {
    /// A builder for a second control plane on the same database, Redis namespace and plans: another replica.
    pub fn replica(&self) -> crate::app::TestAppBuilder {
        TestApp::builder()
            .database(std::sync::Arc::clone(&self.app.db))
            .env("TOLLGATE_REDIS_NAMESPACE", self.app.namespace())
            .env(
                "TOLLGATE_PLANS",
                &self.dir.join("plans.toml").display().to_string(),
            )
    }

    /// Writes the config files and starts the control plane and the upstream (no proxy yet).
    pub async fn start(options: Options<'_>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tg-metering-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let limit = options.limit;
        let plans = options.plans.clone().unwrap_or_else(|| {
            format!(
                r#"trial_days = 14
unsubscribed = "trial"

[plans.trial]
included = {{ api_call = {limit}, tokens = {TOKENS_LIMIT} }}

[plans.starter]
price = "plan_starter_m"
included = {{ api_call = 100000 }}

[plans.growth]
price = "plan_growth_m"
included = {{ api_call = 1000000 }}

[plans.pro]
price = "plan_pro_m"
included = {{ api_call = 10000000, tokens = 50000000 }}
"#
            )
        });
        std::fs::write(dir.join("plans.toml"), plans).expect("write plans");
        std::fs::write(
            dir.join("routes.toml"),
            r#"default = { metric = "api_call", cost = 1 }

[[routes]]
prefix = "/v1/embeddings"
metric = "api_call"
cost = 10

[[routes]]
prefix = "/v1/tokens"
metric = "tokens"
cost = 7

[[routes]]
prefix = "/health"
metered = false
"#,
        )
        .expect("write routes");
        let redis_url = options
            .redis_url
            .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
        let plans = dir.join("plans.toml").display().to_string();
        let mut builder = TestApp::builder()
            .redis_url(&redis_url)
            .env("TOLLGATE_PLANS", &plans);
        if let Some(clock) = options.clock {
            builder = builder.clock(clock);
        }
        if let Some(stripe) = options.stripe {
            builder = builder.stripe(stripe);
        }
        if let Some(stigg) = options.stigg {
            builder = builder.stigg(stigg);
        }
        for (key, value) in &options.control_plane_env {
            builder = builder.env(key, value);
        }
        let app = builder.start().await;
        if let Some(stripe) = options.stripe {
            app.receive_stripe_webhooks(stripe).await;
        }
        let upstream = Upstream::start().await;
        let mut base_env: Vec<(String, String)> = [
            ("DATABASE_URL", app.db.url.clone()),
            ("REDIS_URL", redis_url.clone()),
            ("TOLLGATE_REDIS_NAMESPACE", app.namespace().to_owned()),
            ("TOLLGATE_PLANS", plans),
            (
                "TOLLGATE_ROUTES",
                dir.join("routes.toml").display().to_string(),
            ),
            ("TOLLGATE_UPSTREAM", upstream.url()),
            ("CLERK_JWKS_URL", app.jwks.url.clone()),
            ("CLERK_ISSUER", crate::clerk::ISSUER.to_owned()),
            ("TOLLGATE_WRITEBACK_INTERVAL_MS", "100".to_owned()),
            ("TOLLGATE_REFRESH_INTERVAL_MS", "200".to_owned()),
            ("TOLLGATE_PROXY_THREADS", "1".to_owned()),
            ("TOLLGATE_SHUTDOWN_GRACE_SECS", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        base_env.extend(options.proxy_env);
        Self {
            app,
            upstream,
            redis_url,
            dir,
            base_env,
        }
    }

    /// Starts a proxy with the shared settings plus `extra` (which wins) and waits until it accepts requests.
    pub async fn proxy(&self, extra: &[(&str, &str)]) -> ProxyProcess {
        let mut env = self.base_env.clone();
        env.extend(owned_env(extra));
        let proxy = ProxyProcess::start(&proxy_binary(), &env).await;
        let addr = proxy.url().trim_start_matches("http://").to_owned();
        crate::wait::until(Duration::from_secs(30), "the proxy listener", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) }
        })
        .await;
        proxy
    }

    /// Gives `org` a live subscription on `plan` by plain SQL (the mirror's row; the trigger announces it), billed
    /// to `customer` (default `cus_x<internal id>`), its period started a day ago.
    pub async fn subscribe(&self, org: &str, plan: &str, customer: Option<&str>) {
        sqlx::query(
            "UPDATE orgs SET stripe_customer_id = COALESCE($2, 'cus_x' || id) WHERE clerk_org_id = $1",
        )
        .bind(org)
        .bind(customer)
        .execute(&self.app.state.pg)
        .await
        .expect("link a customer");
        sqlx::query(
            "INSERT INTO subscriptions (org_id, stripe_customer_id, stripe_subscription_id, status, plan_code,
                                        stripe_price_id, current_period_start, current_period_end, billing_cycle_anchor)
             SELECT id, stripe_customer_id, 'sub_x' || id, 'active', $2, 'price_x',
                    now() - interval '1 day', now() + interval '29 days', now() - interval '1 day'
               FROM orgs WHERE clerk_org_id = $1",
        )
        .bind(org)
        .bind(plan)
        .execute(&self.app.state.pg)
        .await
        .expect("insert subscription");
    }

    /// An org with an API key; returns the key.
    pub async fn org_with_key(&self, org: &str) -> String {
        self.app.create_org(org).await;
        self.app.create_key(org).await.1
    }

    /// The durable `used` of an org's counters of `metric`, summed over periods (0 when none was written).
    pub async fn durable_used(&self, org: &str, metric: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT COALESCE(sum(c.used), 0)::bigint FROM usage_counters c JOIN orgs o ON o.id = c.org_id
              WHERE o.clerk_org_id = $1 AND c.metric = $2",
        )
        .bind(org)
        .bind(metric)
        .fetch_one(&self.app.state.pg)
        .await
        .expect("read usage_counters")
    }

    /// Waits until the durable `used` equals `expected` (write-back is asynchronous), panicking after `timeout`.
    pub async fn await_durable(&self, org: &str, metric: &str, expected: i64, timeout: Duration) {
        let mut last = 0;
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                last = self.durable_used(org, metric).await;
                if last == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            outcome.is_ok(),
            "durable {metric} of {org} stayed at {last}, expected {expected}"
        );
    }
}

impl Drop for Metering {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
