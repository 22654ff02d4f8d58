//! The router with its middleware: request ids, one log line per request, metrics, body limit, panic
//! containment, and problem+json for unknown routes.

use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::BodyRules;
use crate::routes::{self, ops};
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP surface of the control plane.
pub fn router(app: AppState) -> Router {
    let (api, openapi) = routes::api();
    let openapi = Arc::new(routes::openapi::document(
        &openapi,
        &app.config.common.plans,
        &app.config.admin_roles,
    ));
    let body_rules = BodyRules {
        limit: app.config.body_limit,
        timeout: app.config.body_timeout,
    };
    // Every API POST: `Idempotency-Key` (route_layer: only matched routes, after routing).
    let api = api.route_layer(middleware::from_fn_with_state(
        app.clone(),
        crate::idempotency::layer,
    ));
    let router = Router::new()
        .merge(api)
        .route(
            "/api/openapi.json",
            get(move || {
                let openapi = Arc::clone(&openapi);
                async move { axum::Json(openapi) }
            }),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/widgets/v1/tollgate.js", get(routes::widgets::script))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed);
    // Browsers on the configured origins (inside the request id, the log line and the metrics: preflights count).
    let router = match &app.config.cors {
        Some(origins) => router.layer(crate::cors::BrowserCorsLayer::new(origins)),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(app.clone(), record_metrics))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        .on_response(on_response),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
                }))
                .layer(axum::Extension(body_rules)),
        )
        .with_state(app)
}

fn make_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!(
        "http",
        http.method = method_label(req.method()),
        http.route = route,
        request_id
    )
}

fn on_response<B>(
    res: &axum::http::Response<B>,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    tracing::info!(
        http.status = res.status().as_u16(),
        duration_ms = latency.as_secs_f64() * 1000.0,
        "request finished"
    );
}

async fn record_metrics(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    app.metrics
        .http_requests
        .with_label_values(&[route.as_str(), method, status.as_str()])
        .inc();
    app.metrics
        .http_duration
        .with_label_values(&[route.as_str(), method])
        .observe(start.elapsed().as_secs_f64());
    response
}

/// The metric label of a method: the standard ones by name, anything a client makes up as `other`, so clients
/// cannot mint series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}
