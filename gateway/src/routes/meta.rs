//! Routes without a client: keys, the API description, probes, metrics.

use super::AppState;
use crate::api::{Json, JwkSet};
use crate::problem::Problem;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use utoipa::OpenApi;

/// The public keys that verify access tokens (RFC 7517, Ed25519 per RFC 8037).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta",
    responses(
        (status = 200, body = JwkSet),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "ID service unavailable"),
    ))]
pub async fn jwks(State(state): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let keys: JwkSet = state.upstream.jwks().await?.into();
    Ok(([(header::CACHE_CONTROL, "public, max-age=300")], Json(keys)))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    axum::Json(crate::openapi::ApiDoc::openapi())
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "Alive", content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: idsvc answers its health check.
#[utoipa::path(get, path = "/readyz", tag = "meta", responses(
    (status = 200, description = "Ready", content_type = "text/plain"),
    (status = 503, description = "ID service unreachable", content_type = "text/plain"),
))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.upstream.ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "idsvc unreachable")
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
}
