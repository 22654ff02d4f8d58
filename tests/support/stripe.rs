//! The Stripe emulator: `localstripe` (PyPI) extended by `tests/stripe/tollgate_stripe.py`, run by
//! `tests/stripe/run.py` on a free loopback port with its state in a file of its own, so a test can stop it (a
//! Stripe outage) and start it again where it was.
//!
//! The emulator runs in the virtualenv `target/py` that `./scripts/test` creates from `tests/stripe/requirements.txt`
//! (`TOLLGATE_STRIPE_PYTHON` may name another interpreter).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The secret key tests use (any `sk_test_…` works with the emulator).
pub const SECRET_KEY: &str = "sk_test_tollgate_0123456789";
/// The webhook signing secret tests configure.
pub const WEBHOOK_SECRET: &str = "whsec_tollgate_test_secret_0123456789";

/// Monthly prices of the test plans, in cents: starter < growth < pro.
pub const PRICES: [(&str, i64); 3] = [
    ("plan_starter_m", 900),
    ("plan_growth_m", 4900),
    ("plan_pro_m", 19900),
];

/// The Python that runs the emulator.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_STRIPE_PYTHON") {
        return PathBuf::from(p);
    }
    let root = crate::workspace_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let python = target.join("py/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: ./scripts/test creates the emulator's virtualenv (or run \
         `python3 -m venv target/py && target/py/bin/pip install -r tests/stripe/requirements.txt`)",
        python.display()
    );
    python
}

/// A running emulator; stopped when dropped.
pub struct StripeEmulator {
    child: Option<Child>,
    port: u16,
    state_file: PathBuf,
    log_file: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    http: reqwest::Client,
}

impl StripeEmulator {
    /// Starts an emulator with empty state.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut emulator = Self {
            child: None,
            port: 0,
            state_file: dir.join(format!("tollgate-stripe-{id}.state")),
            log_file: dir.join(format!("tollgate-stripe-{id}.log")),
            url: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        };
        emulator.spawn().await;
        emulator
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .expect("emulator log");
        let mut child = Command::new(python())
            .arg(crate::workspace_root().join("tests/stripe/run.py"))
            .args(["--port", &self.port.to_string()])
            .arg("--state-file")
            .arg(&self.state_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the Stripe emulator");
        let stdout = child.stdout.take().expect("emulator stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        })
        .await
        .expect("read the emulator's first line");
        let addr = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("emulator did not start: {line:?}\n{}", self.log()));
        self.port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("emulator port");
        self.url = format!("http://{addr}");
        self.child = Some(child);
    }

    /// Stops it (SIGTERM: the emulator saves its state first). Stripe is "down" until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the state it had.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// What the emulator logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// A form POST to the emulator's API as the test's secret key.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(SECRET_KEY)
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    /// A GET of the emulator's API.
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(SECRET_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: {status} {v}");
        v
    }

    /// The prices of [`PRICES`], each with its product; returns the price ids by lookup key.
    pub async fn seed_prices(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (lookup_key, amount) in PRICES {
            let product = self.post("/v1/products", &[("name", lookup_key)]).await;
            let amount = amount.to_string();
            let price = self
                .post(
                    "/v1/prices",
                    &[
                        ("currency", "usd"),
                        ("unit_amount", &amount),
                        ("recurring[interval]", "month"),
                        ("product", product["id"].as_str().expect("product id")),
                        ("lookup_key", lookup_key),
                    ],
                )
                .await;
            out.push((
                lookup_key.to_owned(),
                price["id"].as_str().expect("price id").to_owned(),
            ));
        }
        out
    }

    /// A Billing Meter summing `event_name` and a metered price on it at `unit_amount_decimal` cents per unit,
    /// with `lookup_key`; returns the price id and the meter id.
    pub async fn seed_overage_price(
        &self,
        lookup_key: &str,
        unit_amount_decimal: &str,
        event_name: &str,
    ) -> (String, String) {
        let meter = self
            .post(
                "/v1/billing/meters",
                &[
                    ("display_name", lookup_key),
                    ("event_name", event_name),
                    ("default_aggregation[formula]", "sum"),
                ],
            )
            .await;
        let meter = meter["id"].as_str().expect("meter id").to_owned();
        let price = self
            .post(
                "/v1/prices",
                &[
                    ("currency", "usd"),
                    ("unit_amount_decimal", unit_amount_decimal),
                    ("recurring[interval]", "month"),
                    ("recurring[usage_type]", "metered"),
                    ("recurring[meter]", &meter),
                    ("product_data[name]", lookup_key),
                    ("lookup_key", lookup_key),
                ],
            )
            .await;
        (price["id"].as_str().expect("price id").to_owned(), meter)
    }

    /// Sends every event to `url`, signed with [`WEBHOOK_SECRET`].
    pub async fn register_webhook(&self, url: &str) {
        let id = format!("wh_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        self.post(
            &format!("/_config/webhooks/{id}"),
            &[("url", url), ("secret", WEBHOOK_SECRET)],
        )
        .await;
    }

    /// A card payment method (`4242…` succeeds, `4000000000000002` is declined when charged).
    pub async fn card(&self, number: &str) -> String {
        let pm = self
            .post(
                "/v1/payment_methods",
                &[
                    ("type", "card"),
                    ("card[number]", number),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2034"),
                    ("card[cvc]", "123"),
                ],
            )
            .await;
        pm["id"].as_str().expect("payment method id").to_owned()
    }

    /// Ends the subscription's trial or renews its period, as Stripe would when the time comes.
    pub async fn advance(&self, subscription: &str) -> Value {
        self.post(&format!("/_test/subscriptions/{subscription}/advance"), &[])
            .await
    }
}

/// Issue 20: the emulator's injected faults, webhook hold/release and one-off objects (tests/stripe/README.md).
impl StripeEmulator {
    /// A call to the emulator that may fail: `(status, body)`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(SECRET_KEY)
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A DELETE of the emulator's API (e.g. a draft invoice).
    pub async fn delete(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::DELETE, path, &[]).await;
        assert!((200..300).contains(&status), "DELETE {path}: {status} {v}");
        v
    }

    /// Makes the next `count` requests `method` (or `*`) to a path matching the regular expression `path` fail
    /// as Stripe does: `kind` is `api_error` (500), `rate_limit` (429), `lock_timeout` (429) or `slow` (answered
    /// after `delay_ms`). Returns the fault's index for [`Self::fault_hits`].
    pub async fn fault(
        &self,
        method: &str,
        path: &str,
        kind: &str,
        count: u32,
        delay_ms: u64,
    ) -> usize {
        let before = self.faults().await.len();
        self.post(
            "/_test/faults",
            &[
                ("method", method),
                ("path", path),
                ("kind", kind),
                ("count", &count.to_string()),
                ("delay_ms", &delay_ms.to_string()),
            ],
        )
        .await;
        before
    }

    /// The faults, with their hits (`"METHOD path"` of each request they answered).
    pub async fn faults(&self) -> Vec<Value> {
        self.get("/_test/faults").await["faults"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// How many requests fault `index` answered.
    pub async fn fault_hits(&self, index: usize) -> usize {
        self.faults().await[index]["hits"]
            .as_array()
            .map_or(0, Vec::len)
    }

    /// Holds webhook deliveries (events keep queueing) until [`Self::release_webhooks`].
    pub async fn hold_webhooks(&self) {
        self.post("/_test/webhooks/hold", &[]).await;
    }

    /// Delivers what was held in `order` (`fifo`, `reverse`, `shuffle`), after `delay_ms`. Returns the held ids.
    pub async fn release_webhooks(&self, order: &str, delay_ms: u64) -> Vec<String> {
        self.release_webhook_copies(order, delay_ms, 1).await
    }

    /// [`Self::release_webhooks`], each held event delivered `copies` times (Stripe may deliver one event more than
    /// once), the copies ordered with the rest.
    pub async fn release_webhook_copies(
        &self,
        order: &str,
        delay_ms: u64,
        copies: u32,
    ) -> Vec<String> {
        let v = self
            .post(
                "/_test/webhooks/release",
                &[
                    ("order", order),
                    ("delay_ms", &delay_ms.to_string()),
                    ("copies", &copies.to_string()),
                ],
            )
            .await;
        v["released"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for StripeEmulator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- stripe emulator log ---\n{}--- end ---", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.state_file);
        let _ = std::fs::remove_file(&self.log_file);
    }
}

impl StripeEmulator {
    /// The customers whose `metadata.orgId` is `org` (Tollgate's link), as Stripe lists them.
    pub async fn customers_of_org(&self, org: &str) -> Vec<Value> {
        self.get("/v1/customers?limit=100").await["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["metadata"]["orgId"] == org)
            .cloned()
            .collect()
    }

    /// A one-off draft invoice for `customer` of one item of `amount` cents, as the Dashboard makes one: its id.
    pub async fn one_off_invoice(&self, customer: &str, amount: u32) -> String {
        self.post(
            "/v1/invoiceitems",
            &[
                ("customer", customer),
                ("amount", &amount.to_string()),
                ("currency", "usd"),
            ],
        )
        .await;
        self.post(
            "/v1/invoices",
            &[
                ("customer", customer),
                ("pending_invoice_items_behavior", "include"),
            ],
        )
        .await["id"]
            .as_str()
            .expect("an invoice id")
            .to_owned()
    }
}
