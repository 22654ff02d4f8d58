//! `GET /widgets/v1/tollgate.js`: the embeddable widgets (`clients/widgets`, built with vite into
//! `control-plane/assets/widgets/v1/` and committed; the test suite fails while the committed build is stale).
//!
//! A stable path for a major version: pages embed it with `<script src="https://<control plane>/widgets/v1/tollgate.js">`.
//! Cached for five minutes and revalidated by its `ETag`, so a release reaches every page within minutes.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The bundle.
pub const SCRIPT: &[u8] = include_bytes!("../../assets/widgets/v1/tollgate.js");

/// Its entity tag: a hash of its bytes.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = hex::encode(Sha256::digest(SCRIPT));
    HeaderValue::from_str(&format!("\"{}\"", &digest[..32]))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
});

/// The script, or 304 when the client's copy is current.
pub async fn script(headers: HeaderMap) -> Response {
    let etag = ETAG.clone();
    let current = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag.to_str().unwrap_or_default() || tag.trim() == "*");
    let common = [
        (header::ETAG, etag),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if current {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        SCRIPT,
    )
        .into_response()
}
