//! The OpenAPI document says exactly what the server enforces.
//!
//! The handlers' `utoipa` annotations give the shape of every request and response. The rules the server checks on
//! top of the types — identifier patterns, lengths, ranges, the metrics and plan codes PLANS_CONFIG defines, and
//! the responses every body-taking or authenticated route can give — are added here, once, from the same constants
//! the validators use, so the document cannot be looser than the server (schemathesis holds us to it). The
//! configured `TOLLGATE_ADMIN_ROLES` go in here too, as the roles of the `clerk` requirement of every route that
//! changes an org.

use crate::auth::AdminRoles;
use crate::routes::admin::jobs::MAX_JOB_IDS;
use crate::routes::admin::stigg_outbox::MAX_ITEMS as MAX_REQUEUE;
use crate::routes::admin::webhooks_replay::MAX_EVENT_IDS;
use crate::routes::billing::budget::{CURRENCY_PATTERN, MAX_BUDGET};
use crate::routes::billing::customer_ensure::EMAIL_PATTERN;
use crate::routes::billing::default_method::PAYMENT_METHOD_PATTERN;
use crate::routes::billing::invoices::CURSOR_PATTERN;
use crate::routes::stigg::provision::{STRIPE_CUSTOMER_PATTERN, STRIPE_SUBSCRIPTION_PATTERN};
use crate::services::outbound::MAX_URL;
use crate::services::usage::{MAX_HISTORY_PERIODS, MAX_RECORD_VALUE};
use crate::validate;
use serde_json::{Value, json};
use tollgate_common::domain::{Metric, OrgId, PeriodKey, PlanCatalog, PlanCode, PriceRef};
use tollgate_common::store::alerts::EVENT_TYPES;

/// What `is_event_id` accepts.
const EVENT_ID_PATTERN: &str = "^evt_[A-Za-z0-9_]{1,250}$";

/// What one named property or parameter must satisfy.
fn constraint(schema: &str, property: &str, catalog: &PlanCatalog) -> Option<Value> {
    Some(match (schema, property) {
        (_, "orgId") => json!({"pattern": OrgId::PATTERN}),
        (_, "periodKey") => json!({"pattern": PeriodKey::PATTERN}),
        (_, "metric") => {
            let metrics: Vec<&str> = catalog.metrics().map(Metric::as_str).collect();
            json!({"enum": metrics, "pattern": Metric::PATTERN})
        }
        (_, "planCode" | "pendingPlanCode") => {
            let codes: Vec<&str> = catalog.plans().map(|p| p.code.as_str()).collect();
            json!({"enum": codes, "pattern": PlanCode::PATTERN})
        }
        // A plan change goes to a paid plan; `trial` only applies while trialing.
        (_, "newPlanCode") => {
            let codes: Vec<&str> = catalog
                .plans()
                .filter(|p| p.price.is_some())
                .map(|p| p.code.as_str())
                .collect();
            json!({"enum": codes})
        }
        (_, "priceLookup") => {
            let prices: Vec<&str> = catalog
                .plans()
                .filter_map(|p| p.price.as_ref().map(PriceRef::as_str))
                .collect();
            json!({"enum": prices})
        }
        ("EnsureCustomerRequest", "email") => json!({"pattern": EMAIL_PATTERN}),
        (_, "paymentMethodId") => json!({"pattern": PAYMENT_METHOD_PATTERN}),
        ("ReplayJobsRequest", "ids") => {
            json!({"minItems": 1, "maxItems": MAX_JOB_IDS, "items": {"type": "string", "minLength": 1, "maxLength": 255}})
        }
        ("EndpointRequest", "url") => json!({"minLength": 1, "maxLength": MAX_URL}),
        ("EndpointRequest", "events") => json!({
            "minItems": 1, "maxItems": 2, "items": {"enum": EVENT_TYPES}
        }),
        ("BudgetRequest", "amount") => json!({"minimum": 0, "maximum": MAX_BUDGET}),
        ("BudgetRequest", "currency") => json!({"pattern": CURRENCY_PATTERN}),
        ("ProcessRequest", "eventId") => json!({"pattern": EVENT_ID_PATTERN}),
        ("ProvisionRequest", "stripeCustomerId") => json!({"pattern": STRIPE_CUSTOMER_PATTERN}),
        ("ProvisionRequest", "stripeSubscriptionId") => {
            json!({"pattern": STRIPE_SUBSCRIPTION_PATTERN})
        }
        ("RequeueRequest", "ids") => json!({
            "minItems": 1, "maxItems": MAX_REQUEUE
        }),
        ("ReplayRequest", "eventIds") => json!({
            "minItems": 1, "maxItems": MAX_EVENT_IDS, "items": {"type": "string", "pattern": EVENT_ID_PATTERN}
        }),
        (_, "cursor") => json!({"pattern": CURSOR_PATTERN}),
        (_, "after") => json!({"pattern": EVENT_ID_PATTERN}),
        // The denial envelope's `limit` is a quota, not a page size.
        ("QuotaExceeded", "limit") => return None,
        (_, "limit") => json!({"minimum": 1, "maximum": validate::MAX_PAGE}),
        ("CreateOrgRequest", "name") => {
            json!({"minLength": 1, "maxLength": 200, "pattern": validate::LABEL_PATTERN})
        }
        ("CreateKeyRequest", "name") => {
            json!({"minLength": 1, "maxLength": 100, "pattern": validate::LABEL_PATTERN})
        }
        (_, "ownerUserId") => json!({"pattern": validate::USER_ID_PATTERN}),
        (_, "request_id") => json!({"pattern": validate::REQUEST_ID_PATTERN}),
        ("RecordRequest", "value") => json!({"minimum": 1, "maximum": MAX_RECORD_VALUE}),
        (_, "periods") => json!({"minimum": 1, "maximum": MAX_HISTORY_PERIODS}),
        _ => return None,
    })
}

/// Merges `extra` into a schema object. `pattern` and the bounds apply only to values of their type, so a
/// nullable property (`"type": ["string", "null"]`) still accepts null; an `enum` would not, so it lists null too.
fn apply(schema: &mut Value, extra: Value) {
    let nullable = schema["type"]
        .as_array()
        .is_some_and(|types| types.iter().any(|t| t == "null"));
    let (Some(target), Value::Object(extra)) = (schema.as_object_mut(), extra) else {
        return;
    };
    for (key, mut value) in extra {
        if key == "enum"
            && nullable
            && let Value::Array(values) = &mut value
        {
            values.push(Value::Null);
        }
        target.insert(key, value);
    }
}

/// A problem+json response entry.
fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// The scope a handler's annotation gives its `clerk` security requirement when the route takes
/// [`crate::auth::OrgAdmin`]: `security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ...)`. The document lists the
/// configured roles in its place — OpenAPI 3.1 lets a non-OAuth requirement name "role names which are required
/// for the execution".
pub const ADMIN_ROLES_SCOPE: &str = crate::config::ENV_ADMIN_ROLES;

/// The document with every constraint and common response added, and the admin roles in place of
/// [`ADMIN_ROLES_SCOPE`].
pub fn document(
    doc: &utoipa::openapi::OpenApi,
    catalog: &PlanCatalog,
    admin_roles: &AdminRoles,
) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in schemas.iter_mut() {
            let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (property, value) in properties.iter_mut() {
                if let Some(extra) = constraint(name, property, catalog) {
                    apply(value, extra);
                }
            }
        }
    }
    let schemas = doc
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, methods) in paths.iter_mut() {
            let limited = crate::limits::ROUTES.iter().any(|(p, _)| p == path);
            if path != "/api/webhooks/stripe.receive"
                && let Some(post) = methods.get_mut("post")
            {
                idempotency_key(post);
            }
            for operation in methods
                .as_object_mut()
                .into_iter()
                .flat_map(|methods| methods.values_mut())
            {
                constrain_operation(operation, &schemas, catalog);
                name_admin_roles(operation, admin_roles);
                if limited
                    && let Some(responses) = operation
                        .get_mut("responses")
                        .and_then(Value::as_object_mut)
                {
                    responses.entry("429").or_insert_with(|| {
                        problem(
                            "Too many calls of this org to this group of endpoints: the rate-limit envelope, \
                             with Retry-After",
                        )
                    });
                }
            }
        }
    }
    doc
}

/// The `Idempotency-Key` header every POST takes (`crate::idempotency`), and the answers it adds.
fn idempotency_key(operation: &mut Value) {
    let Some(object) = operation.as_object_mut() else {
        return;
    };
    let parameters = object.entry("parameters").or_insert_with(|| json!([]));
    if let Some(parameters) = parameters.as_array_mut() {
        parameters.push(json!({
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "Makes the call one intent, Stripe's way: the same key with the same request replays \
                the stored answer (status and body, with `Idempotent-Replayed: true`) for 24 h; with another \
                request it is 409; while the first request runs, 409. Only final answers (2xx, deterministic \
                4xx) are stored; a 5xx frees the key. Keys are scoped to the caller. Without it, each call is a \
                new intent.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7E]+$"},
        }));
    }
    if let Some(responses) = object.get_mut("responses").and_then(Value::as_object_mut) {
        responses.entry("400").or_insert_with(|| {
            problem("A malformed header or body (`field` names it, e.g. `Idempotency-Key`)")
        });
        responses.entry("409").or_insert_with(|| {
            problem(
                "The Idempotency-Key was used with another request, or its first request is still running",
            )
        });
    }
}

fn name_admin_roles(operation: &mut Value, admin_roles: &AdminRoles) {
    let Some(requirements) = operation.get_mut("security").and_then(Value::as_array_mut) else {
        return;
    };
    for scopes in requirements
        .iter_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|requirement| requirement.values_mut())
        .filter_map(Value::as_array_mut)
    {
        if scopes.iter().any(|s| s == ADMIN_ROLES_SCOPE) {
            *scopes = admin_roles.names().iter().map(|r| json!(r)).collect();
        }
    }
}

fn constrain_operation(operation: &mut Value, schemas: &Value, catalog: &PlanCatalog) {
    let mut takes_org = false;
    let mut has_query = false;
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters.iter_mut() {
            has_query |= parameter["in"] == "query";
            let name = parameter["name"].as_str().unwrap_or_default().to_owned();
            takes_org |= name == "orgId";
            if let Some(extra) = constraint("", &name, catalog)
                && let Some(schema) = parameter.get_mut("schema")
            {
                apply(schema, extra);
            }
        }
    }
    let body_schema = operation
        .pointer("/requestBody/content/application~1json/schema/$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .map(|name| &schemas[name]);
    let has_body = body_schema.is_some();
    if let Some(body) = body_schema {
        takes_org |= body["properties"].get("orgId").is_some();
    }
    let authenticated = operation["security"].as_array().is_some_and(|s| {
        s.iter()
            .any(|req| req.as_object().is_some_and(|r| !r.is_empty()))
    });
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description));
    };
    if has_body {
        add("400", "The body is not a JSON object");
        add("408", "The body did not arrive in time");
        add("413", "The body is larger than the limit");
        add("415", "The body is not application/json");
        add("422", "A field is missing or invalid");
    }
    if has_query {
        add("422", "A query parameter is invalid");
    }
    if takes_org {
        add(
            "404",
            "No such organization (the operator names one that does not exist)",
        );
    }
    if authenticated {
        add("401", "No or bad credentials");
        add(
            "403",
            "A credential this route does not admit, or another org",
        );
        add("503", "A dependency is unavailable; retry later");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse;
    use crate::routes::admin::jobs::JobsQuery;
    use crate::routes::admin::stigg_outbox::{OutboxQuery, RequeueRequest};
    use crate::routes::admin::webhooks_list::EventsQuery;
    use crate::routes::billing::budget::BudgetRequest;
    use crate::routes::billing::invoices::InvoicesQuery;
    use crate::routes::usage::history::HistoryQuery;
    use crate::routes::usage::record::RecordRequest;

    fn the_document() -> Value {
        let catalog =
            PlanCatalog::from_toml_str(include_str!("../../../config/plans.toml")).expect("plans");
        let (_, doc) = crate::routes::api();
        document(&doc, &catalog, &AdminRoles::default())
    }

    fn is_integer(schema: &Value) -> bool {
        schema["type"] == "integer"
            || schema["type"]
                .as_array()
                .is_some_and(|types| types.iter().any(|t| t == "integer"))
    }

    /// Every request field (body properties, array items included, and query parameters) the document types as
    /// `integer`, as `"METHOD path field"`.
    fn integer_request_fields(doc: &Value) -> Vec<String> {
        let mut found = Vec::new();
        for (path, methods) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in methods.as_object().into_iter().flatten() {
                let name = format!("{} {path}", method.to_uppercase());
                for parameter in op["parameters"].as_array().into_iter().flatten() {
                    if is_integer(&parameter["schema"]) {
                        found.push(format!(
                            "{name} {}",
                            parameter["name"].as_str().unwrap_or("")
                        ));
                    }
                }
                let Some(body) = op
                    .pointer("/requestBody/content/application~1json/schema/$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                else {
                    continue;
                };
                let properties = &doc["components"]["schemas"][body]["properties"];
                for (field, schema) in properties.as_object().into_iter().flatten() {
                    assert!(
                        schema.get("$ref").is_none(),
                        "{name} {field}: a nested schema; look inside it for integers too"
                    );
                    if is_integer(schema) || is_integer(&schema["items"]) {
                        found.push(format!("{name} {field}"));
                    }
                }
            }
        }
        found.sort();
        found
    }

    /// Parses a request with `n` in place of the integer field; `Ok(the field's value)` or `Err(the field named)`.
    fn with_integer(field: &str, n: &str) -> Result<i64, String> {
        let body = |json: String| parse::<Value>(json.as_bytes()).map(|_| json);
        let named = |e: crate::error::ApiError| match e {
            crate::error::ApiError::InvalidField { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        };
        let query = |e: serde_urlencoded::de::Error| format!("query: {e}");
        match field {
            "POST /api/usage/record value" => {
                let json = body(format!(
                    r#"{{"metric":"api_call","value":{n},"occurredAt":"2026-12-01T00:00:00Z","request_id":"r1"}}"#
                ))
                .map_err(named)?;
                parse::<RecordRequest>(json.as_bytes())
                    .map(|r| i64::try_from(r.value).unwrap_or(i64::MAX))
                    .map_err(named)
            }
            "POST /api/billing/budget.set amount" => {
                parse::<BudgetRequest>(format!(r#"{{"amount":{n},"currency":"usd"}}"#).as_bytes())
                    .map(|r| i64::try_from(r.amount).unwrap_or(i64::MAX))
                    .map_err(named)
            }
            "POST /api/admin/stigg.requeue ids" => {
                parse::<RequeueRequest>(format!(r#"{{"ids":[1,{n}]}}"#).as_bytes())
                    .map(|r| r.ids[1])
                    .map_err(named)
            }
            "GET /api/admin/jobs.list limit" => {
                serde_urlencoded::from_str::<JobsQuery>(&format!("kind=stigg_op&limit={n}"))
                    .map(|q| q.limit.map_or(-1, i64::from))
                    .map_err(query)
            }
            "GET /api/admin/stigg.outbox limit" => {
                serde_urlencoded::from_str::<OutboxQuery>(&format!("limit={n}"))
                    .map(|q| q.limit.map_or(-1, i64::from))
                    .map_err(query)
            }
            "GET /api/admin/webhooks.list limit" => {
                serde_urlencoded::from_str::<EventsQuery>(&format!("limit={n}"))
                    .map(|q| q.limit.map_or(-1, i64::from))
                    .map_err(query)
            }
            "GET /api/invoices.list limit" => {
                serde_urlencoded::from_str::<InvoicesQuery>(&format!("limit={n}"))
                    .map(|q| q.limit.map_or(-1, i64::from))
                    .map_err(query)
            }
            "GET /api/usage/history periods" => {
                serde_urlencoded::from_str::<HistoryQuery>(&format!("periods={n}"))
                    .map(|q| q.periods.map_or(-1, i64::from))
                    .map_err(query)
            }
            other => panic!(
                "{other}: a new integer request field; give it `#[serde(deserialize_with = \
                 \"crate::extract::integer\")]` and add it here"
            ),
        }
    }

    /// JSON Schema's `integer` admits `5.0` and `1e1`: wherever the document says `integer`, the server takes
    /// them, and refuses `5.5` naming the field.
    #[test]
    fn every_integer_request_field_takes_integral_numbers() {
        let fields = integer_request_fields(&the_document());
        assert_eq!(
            fields,
            [
                "GET /api/admin/jobs.list limit",
                "GET /api/admin/stigg.outbox limit",
                "GET /api/admin/webhooks.list limit",
                "GET /api/invoices.list limit",
                "GET /api/usage/history periods",
                "POST /api/admin/stigg.requeue ids",
                "POST /api/billing/budget.set amount",
                "POST /api/usage/record value",
            ]
        );
        for field in &fields {
            assert_eq!(with_integer(field, "5"), Ok(5), "{field}");
            assert_eq!(with_integer(field, "5.0"), Ok(5), "{field}");
            assert_eq!(with_integer(field, "1e1"), Ok(10), "{field}");
            let refused = with_integer(field, "5.5").expect_err(field);
            let name = field.rsplit(' ').next().unwrap_or_default();
            assert!(
                refused.starts_with(name) || refused.starts_with("query:"),
                "{field}: {refused}"
            );
        }
    }

    #[test]
    fn the_admin_roles_replace_the_scope_placeholder() {
        let catalog =
            PlanCatalog::from_toml_str(include_str!("../../../config/plans.toml")).expect("plans");
        let (_, doc) = crate::routes::api();
        let roles = AdminRoles::parse("org:admin,billing_manager").expect("roles");
        let doc = document(&doc, &catalog, &roles);
        let security = &doc["paths"]["/api/keys.create"]["post"]["security"];
        assert_eq!(
            security,
            &json!([{"clerk": ["org:admin", "org:billing_manager"]}, {"operator": []}])
        );
        let scopes: Vec<&Value> = doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|paths| paths.values())
            .filter_map(Value::as_object)
            .flat_map(|methods| methods.values())
            .filter_map(|op| op["security"].as_array())
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|requirement| requirement.values())
            .filter_map(Value::as_array)
            .flatten()
            .collect();
        assert!(!scopes.is_empty());
        assert!(scopes.iter().all(|s| *s != ADMIN_ROLES_SCOPE), "{scopes:?}");
        let reads = &doc["paths"]["/api/keys.list"]["get"]["security"];
        assert_eq!(reads, &json!([{"clerk": []}, {"operator": []}]));
    }
}
