//! Browsers calling the control plane: CORS for the exact origins of `TOLLGATE_CP_CORS_ORIGINS`, and for nobody
//! else.
//!
//! The headers are tower-http's [`CorsLayer`]; [`BrowserCorsLayer`] decides who gets them. A request goes through
//! the CORS layer only when its `Origin` is one of the configured origins and its path is not an operator route
//! (`/api/admin/*`, `/api/jobs/*`); any other request is served as if CORS did not exist — no `Access-Control-*`
//! header at all (tower-http alone answers every `OPTIONS` and exposes headers to any origin). A preflight is
//! answered 204. Never a wildcard: the API takes bearer tokens, and credentials (cookies) are not allowed either.
//!
//! Unset, nothing changes: the control plane is server-to-server only.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tollgate_common::config::Reader;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};
use url::Url;

/// `TOLLGATE_CP_CORS_ORIGINS`.
pub const ENV_CORS_ORIGINS: &str = "TOLLGATE_CP_CORS_ORIGINS";

/// How long a browser may cache a preflight's answer.
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Path prefixes of the operator's routes, never exposed to browsers.
const OPERATOR_PATHS: [&str; 2] = ["/api/admin/", "/api/jobs/"];

/// The request headers the API reads.
const ALLOWED_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("idempotency-key"),
];

/// The response headers a browser client needs to read.
const EXPOSED_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
    header::RETRY_AFTER,
    HeaderName::from_static("x-request-id"),
];

/// The exact origins browsers may call from, each as `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOrigins(Vec<HeaderValue>);

impl CorsOrigins {
    /// The origins, as sent in `Origin`.
    pub fn as_slice(&self) -> &[HeaderValue] {
        &self.0
    }

    /// Parses a comma-separated list; each origin must be exact (see [`parse_origin`]).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut origins = Vec::new();
        for item in list.split(',') {
            let origin = parse_origin(item.trim())?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(Self(origins))
    }

    /// `TOLLGATE_CP_CORS_ORIGINS`: unset (or blank) is `None`, no CORS; a bad origin is reported naming the key.
    pub fn read(r: &mut Reader<'_>) -> Option<Self> {
        let list = r.optional(ENV_CORS_ORIGINS)?;
        match Self::parse(&list) {
            Ok(origins) => Some(origins),
            Err(problem) => {
                r.error(ENV_CORS_ORIGINS, problem);
                None
            }
        }
    }
}

/// One exact origin: `http` or `https`, a host, an optional port, nothing else (no path — not even `/` —, query,
/// fragment, credentials or wildcard), written as browsers send it (lower case, no default port).
pub fn parse_origin(text: &str) -> Result<HeaderValue, String> {
    let problem = |why: &str| {
        format!("`{text}` is not an exact origin ({why}); write it as https://app.example.com")
    };
    if text.is_empty() {
        return Err("an origin is empty; list exact origins separated by commas".to_owned());
    }
    if text.contains('*') {
        return Err(problem("no wildcards: the API takes bearer tokens"));
    }
    let url = Url::parse(text).map_err(|e| problem(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(problem("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(problem("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(problem("credentials are not part of an origin"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(problem("a query or fragment is not part of an origin"));
    }
    let serialized = url.origin().ascii_serialization();
    if serialized != text {
        return Err(problem(&format!("browsers send it as `{serialized}`")));
    }
    HeaderValue::from_str(&serialized).map_err(|_| problem("not a header value"))
}

/// Whether `path` is an operator route.
fn is_operator(path: &str) -> bool {
    OPERATOR_PATHS.iter().any(|prefix| path.starts_with(prefix))
}

/// The layer: CORS for `origins` on every route but the operator's.
#[derive(Clone)]
pub struct BrowserCorsLayer {
    origins: Arc<[HeaderValue]>,
    cors: CorsLayer,
}

impl BrowserCorsLayer {
    /// CORS for exactly `origins`: `GET` and `POST`, the API's request headers, the RateLimit headers,
    /// `Retry-After` and `X-Request-Id` exposed, preflights cached for [`PREFLIGHT_MAX_AGE`], no credentials.
    pub fn new(origins: &CorsOrigins) -> Self {
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.as_slice().iter().cloned()))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(PREFLIGHT_MAX_AGE);
        Self {
            origins: origins.as_slice().into(),
            cors,
        }
    }
}

impl<S: Clone> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BrowserCors {
            origins: Arc::clone(&self.origins),
            with_cors: self.cors.layer(inner.clone()),
            inner,
        }
    }
}

/// The service [`BrowserCorsLayer`] makes.
#[derive(Clone)]
pub struct BrowserCors<S> {
    origins: Arc<[HeaderValue]>,
    with_cors: Cors<S>,
    inner: S,
}

impl<S> BrowserCors<S> {
    /// Whether `req` comes from a browser page on an allowed origin, for a route browsers may call.
    fn eligible(&self, req: &Request<Body>) -> bool {
        req.headers()
            .get(header::ORIGIN)
            .is_some_and(|origin| self.origins.contains(origin))
            && !is_operator(req.uri().path())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for BrowserCors<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both wrap the same inner service; either may serve the next request.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.with_cors.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !self.eligible(&req) {
            return Box::pin(self.inner.call(req));
        }
        let preflight = req.method() == Method::OPTIONS;
        let response = self.with_cors.call(req);
        Box::pin(async move {
            let mut response = response.await?;
            // The preflight's answer has no content.
            if preflight && response.status() == StatusCode::OK {
                *response.status_mut() = StatusCode::NO_CONTENT;
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    const APP: &str = "https://app.example.com";

    fn app() -> Router {
        let origins =
            CorsOrigins::parse(&format!("{APP}, http://localhost:5173")).expect("origins");
        Router::new()
            .route(
                "/api/me/entitlements.read",
                get(|| async { "entitlements" }),
            )
            .route("/api/admin/orgs.list", get(|| async { "orgs" }))
            .route("/api/jobs/stripe.process", post(|| async { "processed" }))
            .layer(BrowserCorsLayer::new(&origins))
    }

    async fn send(req: Request<Body>) -> Response<Body> {
        app().oneshot(req).await.expect("infallible")
    }

    fn preflight(path: &str, origin: &str) -> Request<Body> {
        Request::options(path)
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .body(Body::empty())
            .expect("request")
    }

    fn cors_headers(res: &Response<Body>) -> Vec<String> {
        res.headers()
            .keys()
            .map(|k| k.as_str().to_owned())
            .filter(|k| k.starts_with("access-control-"))
            .collect()
    }

    #[test]
    fn origins_are_exact() {
        let ok = CorsOrigins::parse(
            "https://app.example.com,http://localhost:5173, https://a.example:8443",
        )
        .expect("valid");
        assert_eq!(ok.as_slice().len(), 3);
        for bad in [
            "*",
            "https://*.example.com",
            "null",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "https://user:pw@app.example.com",
            "https://APP.example.com",
            "https://app.example.com:443",
            "ftp://app.example.com",
            "https://",
            "",
            "https://app.example.com,,https://b.example.com",
        ] {
            let err = CorsOrigins::parse(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn an_unparseable_origin_is_refused_at_start_naming_the_key() {
        let env = std::collections::HashMap::from([(
            ENV_CORS_ORIGINS.to_owned(),
            "https://*.example.com".to_owned(),
        )]);
        let mut r = Reader::new(&env);
        assert_eq!(CorsOrigins::read(&mut r), None);
        let err = r.finish().expect_err("refused").to_string();
        assert!(err.contains(ENV_CORS_ORIGINS), "{err}");
        // Unset: no CORS, and no error.
        let env = std::collections::HashMap::<String, String>::new();
        let mut r = Reader::new(&env);
        assert_eq!(CorsOrigins::read(&mut r), None);
        assert!(r.finish().is_ok());
    }

    #[tokio::test]
    async fn a_preflight_from_an_allowed_origin_is_204_with_the_apis_headers() {
        let res = send(preflight("/api/me/entitlements.read", APP)).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let h = res.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
        let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .expect("ascii");
        for name in ["authorization", "content-type", "idempotency-key"] {
            assert!(allowed.contains(name), "{allowed}");
        }
        assert!(
            h[header::ACCESS_CONTROL_ALLOW_METHODS]
                .to_str()
                .expect("ascii")
                .contains("POST")
        );
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        assert!(
            h.get_all(header::VARY)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("origin")))
        );
    }

    #[tokio::test]
    async fn a_response_to_an_allowed_origin_names_it_and_exposes_the_headers_clients_read() {
        let res = send(
            Request::get("/api/me/entitlements.read")
                .header(header::ORIGIN, APP)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
        let exposed = h[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .expect("ascii");
        for name in [
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "retry-after",
            "x-request-id",
        ] {
            assert!(exposed.contains(name), "{exposed}");
        }
        assert!(
            h.get_all(header::VARY)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("origin")))
        );
    }

    #[tokio::test]
    async fn another_origin_the_operator_routes_and_server_calls_get_no_cors_headers() {
        for req in [
            preflight("/api/me/entitlements.read", "https://evil.example.com"),
            preflight(
                "/api/me/entitlements.read",
                "https://app.example.com.evil.example",
            ),
            preflight("/api/admin/orgs.list", APP),
            preflight("/api/jobs/stripe.process", APP),
            Request::get("/api/admin/orgs.list")
                .header(header::ORIGIN, APP)
                .body(Body::empty())
                .expect("request"),
            Request::get("/api/me/entitlements.read")
                .header(header::ORIGIN, "https://evil.example.com")
                .body(Body::empty())
                .expect("request"),
            Request::get("/api/me/entitlements.read")
                .body(Body::empty())
                .expect("request"),
        ] {
            let what = format!(
                "{} {} {:?}",
                req.method(),
                req.uri(),
                req.headers().get(header::ORIGIN)
            );
            let res = send(req).await;
            assert_eq!(cors_headers(&res), Vec::<String>::new(), "{what}");
            assert_ne!(
                res.status(),
                StatusCode::NO_CONTENT,
                "{what}: no preflight answer"
            );
        }
    }
}
