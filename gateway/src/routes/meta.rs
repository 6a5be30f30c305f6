//! Routes without a client: keys, the API description, probes, metrics.

use super::AppState;
use crate::api::{Json, JwkSet};
use crate::problem::Problem;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::OpenApi;
use utoipa::ToSchema;

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

/// Readiness: idsvc answers its health check and, when this gateway follows
/// the migration phase, the phase is known (and, without legacy, is one
/// this gateway can serve alone: 0 or 5).
#[utoipa::path(get, path = "/readyz", tag = "meta", responses(
    (status = 200, body = Readiness, description = "Ready"),
    (status = 503, body = Readiness, description = "Not ready; `reasons` says why"),
))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let cutover = &state.cutover;
    // Read before the health checks, which take milliseconds: the generation
    // reported is the one routed by when the probe arrived.
    let phase = cutover.follower.as_ref().and_then(|f| f.current());
    let (idsvc, legacy) = match &cutover.legacy {
        Some(legacy) => {
            let (idsvc, legacy) = tokio::join!(state.upstream.ready(), legacy.reachable());
            (idsvc, Some(legacy))
        }
        None => (state.upstream.ready().await, None),
    };
    let mut reasons = Vec::new();
    if !idsvc {
        reasons.push("idsvc unreachable".to_owned());
    }
    if cutover.follower.is_some() {
        match &phase {
            None => reasons.push("the migration phase is not known yet".to_owned()),
            Some(known) if cutover.legacy.is_none() && (1..=4).contains(&known.phase) => {
                reasons.push(format!(
                    "phase {} needs legacy, and this gateway runs without --legacy-url",
                    known.phase
                ));
            }
            Some(_) => {}
        }
    }
    let stale_ms = cutover
        .follower
        .as_ref()
        .and_then(|f| f.silent_for())
        .map(|quiet| quiet.as_millis() as u64);
    let ready = reasons.is_empty();
    let body = Readiness {
        status: if ready { "ready" } else { "not-ready" },
        idsvc,
        legacy,
        phase: phase.as_ref().map(|p| p.phase),
        weight: phase.as_ref().map(|p| p.weight),
        generation: phase.as_ref().map(|p| p.generation),
        write_fence: phase.as_ref().is_some_and(|p| p.write_fence),
        stale_ms,
        reasons,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// What `/readyz` reports.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not-ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// idsvc answers its health check.
    pub idsvc: bool,
    /// Legacy answers its health check; null without `--legacy-url`.
    pub legacy: Option<bool>,
    /// The phase this gateway routes by; null when not following or not yet learned.
    pub phase: Option<u32>,
    pub weight: Option<u32>,
    pub generation: Option<u64>,
    /// Writes are paused by a phase move's fence.
    pub write_fence: bool,
    /// Milliseconds since idsvc last sent the phase; null before the first message.
    pub stale_ms: Option<u64>,
    /// Why it is not ready; empty when ready.
    pub reasons: Vec<String>,
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
}
