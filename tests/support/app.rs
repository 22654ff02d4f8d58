//! A control plane running in the test process on a loopback port, against a database of its own.

use crate::clerk::{self, Jwks, TestKey};
use crate::db::TestDb;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tollgate_common::clock::OffsetClock;
use tollgate_control_plane::{App, AppState, Config};

/// The operator token every test app is configured with.
pub const ADMIN_TOKEN: &str = "tgop_test_operator_token_0123456789";
/// The key that seals webhook signing secrets in tests (32 bytes, base64).
pub const WEBHOOK_SECRETS_KEY: &str = "dGVzdC13ZWJob29rLXNlY3JldHMta2V5LTMyYnl0ZXM=";

/// How a request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// No credential.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// `X-Api-Key: <key>`.
    ApiKey(&'a str),
    /// The operator token.
    Operator,
}

/// A response, with the body parsed when it is JSON.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    /// The `Content-Type` header.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts an RFC 9457 body with this status and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "body: {}",
            self.text
        );
        for member in ["type", "title", "detail"] {
            assert!(
                self.json[member].is_string(),
                "problem lacks {member}: {}",
                self.text
            );
        }
        assert_eq!(self.json["status"], status, "body: {}", self.text);
        &self.json
    }
}

/// Builds a [`TestApp`].
pub struct TestAppBuilder {
    env: HashMap<String, String>,
    db: Option<Arc<TestDb>>,
    jwks: Option<Jwks>,
    clock: Option<OffsetClock>,
}

impl TestAppBuilder {
    /// Overrides or adds an environment setting.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Uses another Redis (e.g. a [`crate::redis_server::RedisServer`]).
    pub fn redis_url(self, url: &str) -> Self {
        self.env("REDIS_URL", url)
    }

    /// Shares a database with another app (replicas).
    pub fn database(mut self, db: Arc<TestDb>) -> Self {
        self.db = Some(db);
        self
    }

    /// Runs the app on a clock the test can move forward.
    pub fn clock(mut self, clock: OffsetClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Configures billing against a Stripe emulator (register the app's webhook with
    /// [`TestApp::receive_stripe_webhooks`] once it runs).
    pub fn stripe(self, emulator: &crate::stripe::StripeEmulator) -> Self {
        self.env("STRIPE_SECRET_KEY", crate::stripe::SECRET_KEY)
            .env("STRIPE_API_BASE", &emulator.url)
            .env("STRIPE_WEBHOOK_SECRET", crate::stripe::WEBHOOK_SECRET)
            .env(
                "TOLLGATE_BILLING_RETURN_URL",
                "https://app.tollgate.test/settings/billing",
            )
            .env("TOLLGATE_STRIPE_BUDGET_MS", "2000")
    }

    /// Mirrors into a fake Stigg, retrying failed deliveries at least every 2 s (production: 5 min).
    pub fn stigg(self, stigg: &crate::stigg::FakeStigg) -> Self {
        self.env("STIGG_API_KEY", crate::stigg::API_KEY)
            .env("STIGG_API_URL", &stigg.url)
            .env("TOLLGATE_STIGG_BUDGET_MS", "1000")
            .env("TOLLGATE_STIGG_RETRY_MAX_MS", "2000")
    }

    /// Shares a JWKS server with another app.
    pub fn jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Starts the `tollgate-control-plane` binary with this builder's settings, on `listen` (a free loopback
    /// port when `None`): a control plane that a test can kill outright ([`ControlPlaneProcess::kill`]).
    pub async fn spawn(self, listen: Option<SocketAddr>) -> ControlPlaneProcess {
        let (env, db, jwks) = self.settings().await;
        ControlPlaneProcess::start(env, db, jwks, listen).await
    }

    /// The settings this builder would start with, and what they refer to.
    async fn settings(mut self) -> (HashMap<String, String>, Arc<TestDb>, Jwks) {
        let db = match self.db.take() {
            Some(db) => db,
            None => Arc::new(TestDb::create().await),
        };
        let jwks = match self.jwks.take() {
            Some(j) => j,
            None => Jwks::start(&[TestKey::A]).await,
        };
        let root = crate::workspace_root();
        let mut env = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url.clone()),
            ("REDIS_URL".to_owned(), "redis://127.0.0.1:6379".to_owned()),
            (
                "TOLLGATE_REDIS_NAMESPACE".to_owned(),
                format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            ),
            (
                "TOLLGATE_PLANS".to_owned(),
                root.join("config/plans.toml").display().to_string(),
            ),
            ("TOLLGATE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
            ("CLERK_JWKS_URL".to_owned(), jwks.url.clone()),
            ("CLERK_ISSUER".to_owned(), clerk::ISSUER.to_owned()),
            ("TOLLGATE_CP_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            // Outgoing webhooks: a fixed sealing key, and endpoints on loopback (the tests' receivers).
            (
                "TOLLGATE_WEBHOOK_SECRETS_KEY".to_owned(),
                WEBHOOK_SECRETS_KEY.to_owned(),
            ),
            (
                "TOLLGATE_WEBHOOK_ALLOW_PRIVATE".to_owned(),
                "true".to_owned(),
            ),
        ]);
        env.extend(self.env);
        (env, db, jwks)
    }

    /// The configuration this builder would start with, or what is wrong with it (every bad key).
    pub async fn try_config(self) -> Result<Config, String> {
        let (env, _, _) = self.settings().await;
        Config::from_env(&env).map_err(|e| e.to_string())
    }

    /// The validated configuration this builder would start with.
    pub async fn config(self) -> (Config, Arc<TestDb>, Jwks) {
        let (env, db, jwks) = self.settings().await;
        let config = Config::from_env(&env).unwrap_or_else(|e| panic!("test config: {e}"));
        (config, db, jwks)
    }

    /// Starts the app.
    pub async fn start(mut self) -> TestApp {
        let clock = self.clock.take();
        let (mut config, db, jwks) = self.config().await;
        // Tests rotate keys and must not wait ten seconds for the refresh floor; the floor has its own test.
        config.common.clerk.min_refresh_interval = std::time::Duration::from_millis(0);
        TestApp::start_with(config, db, jwks, clock).await
    }

    /// Starts the app keeping the production refresh floor.
    pub async fn start_with_config(self, edit: impl FnOnce(&mut Config)) -> TestApp {
        let (mut config, db, jwks) = self.config().await;
        edit(&mut config);
        TestApp::start_with(config, db, jwks, None).await
    }
}

pub use crate::control_plane::ControlPlaneProcess;

/// A running control plane.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub db: Arc<TestDb>,
    pub jwks: Jwks,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestApp {
    /// A builder with the defaults: fresh database, shared local Redis with a private namespace, key A published.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: HashMap::new(),
            db: None,
            jwks: None,
            clock: None,
        }
    }

    /// Starts an app with the defaults.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    async fn start_with(
        config: Config,
        db: Arc<TestDb>,
        jwks: Jwks,
        clock: Option<OffsetClock>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind control plane");
        let addr = listener.local_addr().expect("control plane address");
        let state = match clock {
            Some(clock) => App::start_with_clock(config, Arc::new(clock)).await,
            None => App::start(config).await,
        }
        .expect("control plane starts");
        let (tx, rx) = oneshot::channel::<()>();
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = tollgate_control_plane::run(serving, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            addr,
            state,
            db,
            jwks,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
        }
    }

    /// The app's Redis namespace.
    pub fn namespace(&self) -> &str {
        &self.state.config.common.redis.namespace
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn authed(&self, req: reqwest::RequestBuilder, auth: Auth<'_>) -> reqwest::RequestBuilder {
        match auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::ApiKey(k) => req.header("x-api-key", k),
            Auth::Operator => req.bearer_auth(ADMIN_TOKEN),
        }
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, req: reqwest::RequestBuilder, auth: Auth<'_>) -> Resp {
        let res = self
            .authed(req, auth)
            .send()
            .await
            .expect("request reaches the app");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("response body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    /// POSTs a JSON body.
    pub async fn post(&self, path: &str, auth: Auth<'_>, body: &Value) -> Resp {
        self.send(self.http.post(self.url(path)).json(body), auth)
            .await
    }

    /// POSTs raw bytes as `application/json`.
    pub async fn post_raw(
        &self,
        path: &str,
        auth: Auth<'_>,
        body: impl Into<reqwest::Body>,
    ) -> Resp {
        let req = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(req, auth).await
    }

    /// GETs a path.
    pub async fn get(&self, path: &str, auth: Auth<'_>) -> Resp {
        self.send(self.http.get(self.url(path)), auth).await
    }

    /// A valid session token of `user` in `org`, signed with key A.
    pub fn user_token(&self, user: &str, org: &str) -> String {
        clerk::sign(TestKey::A, &clerk::claims(user, Some(org)))
    }

    /// Creates an org as the operator.
    pub async fn create_org(&self, org: &str) {
        let body = serde_json::json!({"orgId": org, "name": format!("{org} Inc."), "ownerUserId": format!("user_{}", &org[4..])});
        let r = self.post("/api/orgs.create", Auth::Operator, &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }

    /// Issues a key for `org` as the operator; returns `(keyId, key)`.
    pub async fn create_key(&self, org: &str) -> (String, String) {
        let body = serde_json::json!({"orgId": org, "name": "test key"});
        let r = self.post("/api/keys.create", Auth::Operator, &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        (
            r.json["keyId"].as_str().expect("keyId").to_owned(),
            r.json["key"].as_str().expect("key").to_owned(),
        )
    }

    /// Has the emulator send its webhooks to this app.
    pub async fn receive_stripe_webhooks(&self, emulator: &crate::stripe::StripeEmulator) {
        emulator
            .register_webhook(&self.url("/api/webhooks/stripe.receive"))
            .await;
    }

    /// Stops serving (in-flight requests finish).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}
