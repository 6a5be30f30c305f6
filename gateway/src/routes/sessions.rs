//! `/v1/sessions` and `/v1/tokens`: login, refresh, logout.

use super::AppState;
use crate::api::{Json, LoginBody, RefreshTokenBody, TokenBody};
use crate::problem::{Problem, problem_of};
use crate::telemetry::RequestId;
use crate::upstream::Retry;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use idbase_proto::ProblemType;
use idbase_proto::v1 as pb;

/// Log in. Wrong password and unknown email answer alike.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = LoginBody,
    security(("client_token" = [])),
    responses(
        (status = 200, body = TokenBody),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client, or wrong email or password"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body too large"),
        (status = 415, body = Problem, content_type = "application/problem+json", description = "Not JSON"),
        (status = 429, body = Problem, content_type = "application/problem+json", description = "Too many failures for this email; see Retry-After"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Overloaded; see Retry-After"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Json(body): Json<LoginBody>,
) -> Result<Json<TokenBody>, Problem> {
    let request = pb::LoginRequest {
        email: body.email,
        password: body.password,
    };
    let result = state
        .upstream
        .call(Retry::Unsafe, &rid, request, |mut c, r| async move {
            c.login(r).await
        })
        .await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(status) => match problem_of(status) {
            Some(ProblemType::InvalidCredentials) => "invalid_credentials",
            Some(ProblemType::Throttled) => "throttled",
            Some(ProblemType::Overloaded) => "overloaded",
            _ => "error",
        },
    };
    metrics::counter!("idbase_logins_total", "outcome" => outcome).increment(1);
    Ok(Json(result?.into()))
}

/// Rotate a refresh token. A token presented again after its rotation (past a
/// short grace window) revokes its whole session.
#[utoipa::path(post, path = "/v1/tokens/refresh", tag = "sessions", request_body = RefreshTokenBody,
    security(("client_token" = [])),
    responses(
        (status = 200, body = TokenBody),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client, or invalid, expired or reused token"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body too large"),
        (status = 415, body = Problem, content_type = "application/problem+json", description = "Not JSON"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "ID service unavailable"),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Json(body): Json<RefreshTokenBody>,
) -> Result<Json<TokenBody>, Problem> {
    let request = pb::RefreshRequest {
        refresh_token: body.refresh_token,
    };
    let pair = state
        .upstream
        .call(Retry::Idempotent, &rid, request, |mut c, r| async move {
            c.refresh(r).await
        })
        .await?;
    Ok(Json(pair.into()))
}

/// Log out: revokes the refresh token's whole session. Idempotent.
#[utoipa::path(post, path = "/v1/tokens/revoke", tag = "sessions", request_body = RefreshTokenBody,
    security(("client_token" = [])),
    responses(
        (status = 204, description = "Revoked (or already unknown)"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body too large"),
        (status = 415, body = Problem, content_type = "application/problem+json", description = "Not JSON"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "ID service unavailable"),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Json(body): Json<RefreshTokenBody>,
) -> Result<StatusCode, Problem> {
    let request = pb::RevokeRequest {
        refresh_token: body.refresh_token,
    };
    state
        .upstream
        .call(Retry::Idempotent, &rid, request, |mut c, r| async move {
            c.revoke(r).await
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
