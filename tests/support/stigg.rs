//! A fake Stigg GraphQL API: the four operations Stigg's SDKs send to mirror customers and subscriptions, answered
//! in the real API's shapes, keeping the state they produce and recording every request.
//!
//! What it holds the client to, as the real API would:
//!
//! * `POST /graphql` with `X-API-KEY` ([`API_KEY`]); anything else is 401 with the `Unauthenticated` envelope.
//! * The document must be one of the four (`mutation <OperationName>($input: <InputType>!)` with its root field,
//!   the SDK's alias included) and `operationName` must name it; the input may carry only its type's fields, with
//!   its required ones, and enum values of the schema. Otherwise a validation error, as a GraphQL server gives.
//!   `provisionCustomer`, `provisionSubscription` and the other operations that could make Stigg create a Stripe
//!   subscription are recorded (so tests can assert they never came) and refused.
//! * Errors are the GraphQL envelope `{"data": null, "errors": [{"message", "path", "extensions": {"code"}}]}` with
//!   HTTP 200, codes in Stigg's spelling (`DuplicatedEntityNotAllowed`, `SubscriptionNotFound`, …).
//! * `importOneCustomer` refuses an existing customer (`DuplicatedEntityNotAllowed`); `importSubscriptionsBulk`
//!   creates or updates by `subscriptionId` and needs the customer; `updateOneSubscription` patches (`null`
//!   clears) by `refId`; `cancelSubscription` refuses a cancelled one (`SubscriptionAlreadyCanceledOrExpired`).
//!
//! Tests make it fail: [`Mode::Down`] (503), [`Mode::RateLimited`] (429 with `RateLimitExceeded`), refusing one
//! customer's operations ([`FakeStigg::refuse`]), answering slowly ([`FakeStigg::set_latency`]), or applying an
//! operation and losing the answer ([`FakeStigg::lose_answers`]), after which the client delivers it again.

use axum::Json;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The server key the fake accepts.
pub const API_KEY: &str = "stigg-server-test-key";

/// A customer as Stigg holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub customer_id: String,
    /// The Stripe customer.
    pub billing_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A subscription as Stigg holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub subscription_id: String,
    pub customer_id: String,
    /// The Stripe subscription.
    pub billing_id: Option<String>,
    pub plan_id: String,
    /// `ACTIVE` or `CANCELED`.
    pub status: String,
    pub billing_period: Option<String>,
    pub start_date: Option<String>,
    pub trial_end_date: Option<String>,
    pub cancellation_date: Option<String>,
    pub additional_meta_data: Value,
}

/// Everything the fake holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StiggState {
    pub customers: BTreeMap<String, Customer>,
    pub subscriptions: BTreeMap<String, Subscription>,
}

/// One request, as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub operation_name: String,
    /// The root field the document selects (`importOneCustomer`, …), or what it named instead.
    pub root_field: String,
    pub input: Value,
    /// The Stigg customer the operation is about, when known.
    pub customer: Option<String>,
    /// `ok`, `unavailable`, `rate_limited`, `lost` (applied, answer withheld) or the error code.
    pub outcome: String,
}

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normally.
    Up,
    /// 503 for everything (nothing applied).
    Down,
    /// 429 with `RateLimitExceeded` (nothing applied).
    RateLimited,
}

struct Inner {
    state: Mutex<StiggState>,
    received: Mutex<Vec<Received>>,
    mode: Mutex<Mode>,
    refused: Mutex<HashMap<String, String>>,
    latency: Mutex<Duration>,
    lose: AtomicUsize,
    in_flight: Mutex<HashMap<String, usize>>,
    max_in_flight: AtomicUsize,
}

/// A running fake; it stops serving when dropped.
pub struct FakeStigg {
    /// `http://127.0.0.1:<port>/graphql`, for `STIGG_API_URL`.
    pub url: String,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeStigg {
    /// Serves on a free loopback port.
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::default(),
            received: Mutex::default(),
            mode: Mutex::new(Mode::Up),
            refused: Mutex::default(),
            latency: Mutex::new(Duration::ZERO),
            lose: AtomicUsize::new(0),
            in_flight: Mutex::default(),
            max_in_flight: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/graphql", axum::routing::post(graphql))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake stigg");
        let addr = listener.local_addr().expect("fake stigg address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url: format!("http://{addr}/graphql"),
            inner,
            server,
        }
    }

    /// Sets how it answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.inner.mode) = mode;
    }

    /// Answers every operation about `customer` with a GraphQL error of `code` (until [`FakeStigg::accept`]).
    pub fn refuse(&self, customer: &str, code: &str) {
        lock(&self.inner.refused).insert(customer.to_owned(), code.to_owned());
    }

    /// Stops refusing `customer`.
    pub fn accept(&self, customer: &str) {
        lock(&self.inner.refused).remove(customer);
    }

    /// Holds each answer for `latency` (the request is in flight meanwhile).
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.inner.latency) = latency;
    }

    /// Applies the next `n` operations but answers 503, as if the answer were lost: the client delivers again.
    pub fn lose_answers(&self, n: usize) {
        self.inner.lose.store(n, Ordering::SeqCst);
    }

    /// The state now.
    pub fn state(&self) -> StiggState {
        lock(&self.inner.state).clone()
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.inner.received).clone()
    }

    /// The requests that changed the state (`ok`, or `lost`: applied with the answer withheld), oldest first.
    pub fn applied(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.outcome == "ok" || r.outcome == "lost")
            .collect()
    }

    /// The most requests about one customer that were in flight at once.
    pub fn max_in_flight_per_customer(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FakeStigg {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The four operations: SDK operation name, root field, alias in the answer, input type, input fields, required.
struct Operation {
    name: &'static str,
    root: &'static str,
    alias: &'static str,
    input_type: &'static str,
    fields: &'static [&'static str],
    required: &'static [&'static str],
}

const OPERATIONS: [Operation; 4] = [
    Operation {
        name: "ImportCustomer",
        root: "importOneCustomer",
        alias: "importCustomer",
        input_type: "ImportCustomerInput",
        fields: &[
            "additionalMetaData",
            "billingId",
            "customerId",
            "email",
            "environmentId",
            "name",
            "paymentMethodId",
            "refId",
            "salesforceId",
            "updatedAt",
        ],
        required: &[],
    },
    Operation {
        name: "ImportSubscriptionsBulk",
        root: "importSubscriptionsBulk",
        alias: "importSubscriptionsBulk",
        input_type: "ImportSubscriptionsBulkInput",
        fields: &["environmentId", "integrationId", "subscriptions"],
        required: &["subscriptions"],
    },
    Operation {
        name: "UpdateSubscription",
        root: "updateOneSubscription",
        alias: "updateSubscription",
        input_type: "UpdateSubscriptionInput",
        fields: &[
            "additionalMetaData",
            "addons",
            "appliedCoupon",
            "awaitPaymentConfirmation",
            "billableFeatures",
            "billingCycleAnchor",
            "billingInformation",
            "billingPeriod",
            "budget",
            "cancellationDate",
            "charges",
            "entitlements",
            "environmentId",
            "minimumSpend",
            "priceOverrides",
            "promotionCode",
            "refId",
            "salesforceId",
            "scheduleStrategy",
            "subscriptionEntitlements",
            "subscriptionId",
            "trialEndDate",
            "unitQuantity",
        ],
        required: &[],
    },
    Operation {
        name: "CancelSubscription",
        root: "cancelSubscription",
        alias: "cancelSubscription",
        input_type: "SubscriptionCancellationInput",
        fields: &[
            "awaitSubscriptionCancellation",
            "endDate",
            "environmentId",
            "prorate",
            "subscriptionCancellationAction",
            "subscriptionCancellationTime",
            "subscriptionRefId",
        ],
        required: &["subscriptionRefId"],
    },
];

/// `ImportSubscriptionInput`'s fields.
const IMPORT_SUBSCRIPTION_FIELDS: &[&str] = &[
    "additionalMetaData",
    "addons",
    "billableFeatures",
    "billingId",
    "billingPeriod",
    "charges",
    "customerId",
    "endDate",
    "entitlements",
    "planId",
    "resourceId",
    "salesforceId",
    "startDate",
    "subscriptionEntitlements",
    "subscriptionId",
    "unitQuantity",
    "updatedAt",
];

/// Root fields the mirror must never send.
const FORBIDDEN: [&str; 4] = [
    "provisionCustomer",
    "provisionSubscription",
    "applySubscription",
    "createSubscription",
];

fn error(code: &str, message: &str, path: &str) -> Value {
    json!({"data": null, "errors": [{
        "message": message,
        "locations": [{"line": 2, "column": 3}],
        "path": [path],
        "extensions": {"code": code, "isValidationError": true},
    }]})
}

async fn graphql(
    AxState(inner): AxState<Arc<Inner>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(error("Unauthenticated", "Unauthenticated", "")),
        )
            .into_response();
    }
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let query = request["query"].as_str().unwrap_or_default();
    let operation_name = request["operationName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let input = request["variables"]["input"].clone();
    let record = |root: &str, customer: Option<String>, outcome: &str| {
        lock(&inner.received).push(Received {
            operation_name: operation_name.clone(),
            root_field: root.to_owned(),
            input: input.clone(),
            customer,
            outcome: outcome.to_owned(),
        });
    };
    if let Some(forbidden) = FORBIDDEN.iter().find(|f| query.contains(*f)) {
        record(forbidden, None, "forbidden");
        return (
            StatusCode::OK,
            Json(error(
                "IdentityForbidden",
                "the mirror may not provision",
                forbidden,
            )),
        )
            .into_response();
    }
    let Some(op) = OPERATIONS.iter().find(|op| {
        op.name == operation_name
            && query.contains(&format!("mutation {}($input: {}!)", op.name, op.input_type))
            && query.contains(&if op.alias == op.root {
                format!("{}(input: $input)", op.root)
            } else {
                format!("{}: {}(input: $input)", op.alias, op.root)
            })
    }) else {
        record("", None, "GRAPHQL_VALIDATION_FAILED");
        return (
            StatusCode::BAD_REQUEST,
            Json(error(
                "GRAPHQL_VALIDATION_FAILED",
                "not one of the mirror's operations, or operationName does not name it",
                "",
            )),
        )
            .into_response();
    };
    if let Err(message) = validate(op, &input) {
        record(op.root, None, "BAD_USER_INPUT");
        return (
            StatusCode::BAD_REQUEST,
            Json(error("BAD_USER_INPUT", &message, op.alias)),
        )
            .into_response();
    }
    let customer = customer_of(&inner, op, &input);
    let key = customer.clone().unwrap_or_default();
    {
        let mut in_flight = lock(&inner.in_flight);
        let n = in_flight.entry(key.clone()).or_default();
        *n += 1;
        inner.max_in_flight.fetch_max(*n, Ordering::SeqCst);
    }
    let latency = *lock(&inner.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = answer(&inner, op, &input, customer.as_deref());
    if let Some(n) = lock(&inner.in_flight).get_mut(&key) {
        *n -= 1;
    }
    let (status, outcome, body) = answer;
    record(op.root, customer, &outcome);
    (status, Json(body)).into_response()
}

/// The state change and the answer: `(status, outcome, body)`.
fn answer(
    inner: &Inner,
    op: &Operation,
    input: &Value,
    customer: Option<&str>,
) -> (StatusCode, String, Value) {
    match *lock(&inner.mode) {
        Mode::Up => {}
        Mode::Down => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable".into(),
                json!({"message": "Service Unavailable"}),
            );
        }
        Mode::RateLimited => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited".into(),
                error("RateLimitExceeded", "Rate limit exceeded", op.alias),
            );
        }
    }
    if let Some(code) = customer.and_then(|c| lock(&inner.refused).get(c).cloned()) {
        let body = error(&code, "refused by the test", op.alias);
        return (StatusCode::OK, code, body);
    }
    let applied = {
        let mut state = lock(&inner.state);
        apply(&mut state, op, input)
    };
    match applied {
        Err((code, message)) => (
            StatusCode::OK,
            code.clone(),
            error(&code, &message, op.alias),
        ),
        Ok(data) => {
            let lost = inner
                .lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lost {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "lost".into(),
                    json!({"message": "Service Unavailable"}),
                )
            } else {
                (
                    StatusCode::OK,
                    "ok".into(),
                    json!({"data": {op.alias: data}}),
                )
            }
        }
    }
}

fn validate(op: &Operation, input: &Value) -> Result<(), String> {
    let fields = input.as_object().ok_or_else(|| {
        format!(
            "Variable \"$input\" of type \"{}!\" must be an object",
            op.input_type
        )
    })?;
    check_fields(op.input_type, fields, op.fields, op.required)?;
    if let Some(period) = fields.get("billingPeriod").filter(|v| !v.is_null())
        && !matches!(period.as_str(), Some("MONTHLY" | "ANNUALLY"))
    {
        return Err(format!("billingPeriod: {period} is not a BillingPeriod"));
    }
    if let Some(time) = fields
        .get("subscriptionCancellationTime")
        .filter(|v| !v.is_null())
        && !matches!(
            time.as_str(),
            Some("IMMEDIATE" | "END_OF_BILLING_PERIOD" | "SPECIFIC_DATE")
        )
    {
        return Err(format!(
            "subscriptionCancellationTime: {time} is not a SubscriptionCancellationTime"
        ));
    }
    if op.root == "importSubscriptionsBulk" {
        let subscriptions = fields["subscriptions"]
            .as_array()
            .ok_or("subscriptions: must be a list")?;
        for s in subscriptions {
            let s = s.as_object().ok_or("subscriptions: must hold objects")?;
            check_fields(
                "ImportSubscriptionInput",
                s,
                IMPORT_SUBSCRIPTION_FIELDS,
                &["customerId", "planId"],
            )?;
        }
    }
    Ok(())
}

fn check_fields(
    type_name: &str,
    fields: &Map<String, Value>,
    known: &[&str],
    required: &[&str],
) -> Result<(), String> {
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "Field \"{unknown}\" is not defined by type \"{type_name}\""
        ));
    }
    if let Some(missing) = required
        .iter()
        .find(|r| fields.get(**r).is_none_or(Value::is_null))
    {
        return Err(format!(
            "Field \"{type_name}.{missing}\" of required type was not provided"
        ));
    }
    Ok(())
}

fn subscription_ref(input: &Value) -> Option<&str> {
    input["refId"]
        .as_str()
        .or_else(|| input["subscriptionId"].as_str())
        .or_else(|| input["subscriptionRefId"].as_str())
}

fn customer_of(inner: &Inner, op: &Operation, input: &Value) -> Option<String> {
    match op.root {
        "importOneCustomer" => input["customerId"]
            .as_str()
            .or_else(|| input["refId"].as_str())
            .map(str::to_owned),
        "importSubscriptionsBulk" => input["subscriptions"][0]["customerId"]
            .as_str()
            .map(str::to_owned),
        _ => {
            let id = subscription_ref(input)?;
            lock(&inner.state)
                .subscriptions
                .get(id)
                .map(|s| s.customer_id.clone())
        }
    }
}

fn now() -> String {
    use tollgate_common::clock::{Clock, SystemClock};
    SystemClock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn slim_subscription(s: &Subscription) -> Value {
    json!({
        "id": format!("stigg-{}", s.subscription_id),
        "subscriptionId": s.subscription_id,
        "refId": s.subscription_id,
        "status": s.status,
        "additionalMetaData": s.additional_meta_data,
        "billingId": s.billing_id,
        "billingLinkUrl": null,
        "effectiveEndDate": null,
        "cancellationDate": s.cancellation_date,
        "currentBillingPeriodEnd": null,
        "pricingType": "PAID",
        "latestInvoice": null,
        "paymentCollection": "NOT_REQUIRED",
        "billingSyncError": null,
        "resource": null,
        "experimentInfo": null,
        "prices": [],
        "totalPrice": null,
        "plan": {"id": s.plan_id, "refId": s.plan_id},
        "addons": [],
        "customer": {"id": s.customer_id, "refId": s.customer_id},
    })
}

type Applied = Result<Value, (String, String)>;

fn apply(state: &mut StiggState, op: &Operation, input: &Value) -> Applied {
    let refused = |code: &str, message: String| Err((code.to_owned(), message));
    match op.root {
        "importOneCustomer" => {
            let Some(id) = input["customerId"].as_str().or(input["refId"].as_str()) else {
                return refused("MissingEntityIdError", "customerId is required".into());
            };
            if state.customers.contains_key(id) {
                return refused(
                    "DuplicatedEntityNotAllowed",
                    format!("Customer with id {id} already exists"),
                );
            }
            let customer = Customer {
                customer_id: id.to_owned(),
                billing_id: input["billingId"].as_str().map(str::to_owned),
                name: input["name"].as_str().map(str::to_owned),
                email: input["email"].as_str().map(str::to_owned),
            };
            let at = now();
            let data = json!({
                "id": format!("stigg-{id}"),
                "name": customer.name, "email": customer.email, "createdAt": at, "updatedAt": at,
                "refId": id, "customerId": id, "billingId": customer.billing_id,
                "additionalMetaData": input["additionalMetaData"], "awsMarketplaceCustomerId": null,
            });
            state.customers.insert(id.to_owned(), customer);
            Ok(data)
        }
        "importSubscriptionsBulk" => {
            let subscriptions = input["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if let Some(missing) = subscriptions
                .iter()
                .filter_map(|s| s["customerId"].as_str())
                .find(|c| !state.customers.contains_key(*c))
            {
                return refused("CustomerNotFound", format!("Customer not found: {missing}"));
            }
            for s in subscriptions {
                let customer_id = s["customerId"].as_str().unwrap_or_default().to_owned();
                let id = s["subscriptionId"]
                    .as_str()
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
                let entry = state
                    .subscriptions
                    .entry(id.clone())
                    .or_insert_with(|| Subscription {
                        subscription_id: id.clone(),
                        customer_id: customer_id.clone(),
                        billing_id: None,
                        plan_id: String::new(),
                        status: "ACTIVE".into(),
                        billing_period: None,
                        start_date: None,
                        trial_end_date: None,
                        cancellation_date: None,
                        additional_meta_data: Value::Null,
                    });
                entry.customer_id = customer_id;
                entry.plan_id = s["planId"].as_str().unwrap_or_default().to_owned();
                entry.billing_id = s["billingId"].as_str().map(str::to_owned);
                entry.billing_period = s["billingPeriod"].as_str().map(str::to_owned);
                entry.start_date = s["startDate"].as_str().map(str::to_owned);
                if !s["additionalMetaData"].is_null() {
                    entry.additional_meta_data = s["additionalMetaData"].clone();
                }
            }
            Ok(json!(uuid::Uuid::new_v4().to_string()))
        }
        "updateOneSubscription" => {
            let Some(id) = subscription_ref(input) else {
                return refused("MissingEntityIdError", "refId is required".into());
            };
            let Some(s) = state.subscriptions.get_mut(id) else {
                return refused(
                    "SubscriptionNotFound",
                    format!("Subscription not found: {id}"),
                );
            };
            if s.status == "CANCELED" {
                return refused(
                    "InvalidSubscriptionStatus",
                    format!("Subscription {id} is canceled"),
                );
            }
            let fields = input.as_object().cloned().unwrap_or_default();
            let text = |v: &Value| v.as_str().map(str::to_owned);
            // PATCH: an absent field is left alone, null clears it.
            if let Some(v) = fields.get("trialEndDate") {
                s.trial_end_date = text(v);
            }
            if let Some(v) = fields.get("cancellationDate") {
                s.cancellation_date = text(v);
            }
            if let Some(v) = fields.get("billingPeriod") {
                s.billing_period = text(v);
            }
            if let Some(v) = fields.get("additionalMetaData") {
                s.additional_meta_data = v.clone();
            }
            Ok(slim_subscription(s))
        }
        "cancelSubscription" => {
            let Some(id) = subscription_ref(input) else {
                return refused(
                    "MissingEntityIdError",
                    "subscriptionRefId is required".into(),
                );
            };
            let Some(s) = state.subscriptions.get_mut(id) else {
                return refused(
                    "SubscriptionNotFound",
                    format!("Subscription not found: {id}"),
                );
            };
            if s.status == "CANCELED" {
                return refused(
                    "SubscriptionAlreadyCanceledOrExpired",
                    format!("Subscription {id} is already canceled"),
                );
            }
            s.status = "CANCELED".into();
            Ok(slim_subscription(s))
        }
        _ => refused("UnexpectedError", "unknown operation".into()),
    }
}
