//! `/internal/v1/users/{id}`: the legacy system's double writes. Internal
//! clients only.

use super::AppState;
use crate::api::{Json, LegacyUserBody, UpsertBody, UpsertOutcome, VersionQuery};
use crate::problem::Problem;
use crate::telemetry::RequestId;
use crate::upstream::Retry;
use axum::Extension;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use idbase_proto::v1 as pb;

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct Query<T>(pub T);

/// Upsert by legacy id: newest version wins, the same version is idempotent,
/// and nothing older than a deletion brings the member back.
#[utoipa::path(put, path = "/internal/v1/users/{id}", tag = "double-write", request_body = LegacyUserBody,
    params(("id" = i64, Path, minimum = 1, description = "The legacy member id (positive)")),
    security(("client_token" = [])),
    responses(
        (status = 201, body = UpsertBody, description = "Created"),
        (status = 200, body = UpsertBody, description = "Updated, unchanged, or stale and ignored"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed or invalid"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not an internal client"),
        (status = 410, body = Problem, content_type = "application/problem+json", description = "The migration is complete: double writes have ended"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Email held by another id"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body too large"),
        (status = 415, body = Problem, content_type = "application/problem+json", description = "Not JSON"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "ID service unavailable"),
    ))]
pub async fn upsert(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Path(id): Path<i64>,
    Json(body): Json<LegacyUserBody>,
) -> Result<(StatusCode, Json<UpsertBody>), Problem> {
    let request = pb::UpsertLegacyUserRequest {
        id,
        email: body.email,
        phone: body.phone,
        password_hash: body.password_hash,
        version: body.version,
    };
    let answer: UpsertBody = state
        .upstream
        .call(Retry::Idempotent, &rid, request, |mut c, r| async move {
            c.upsert_legacy_user(r).await
        })
        .await?
        .into();
    let status = match answer.outcome {
        UpsertOutcome::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(answer)))
}

/// Delete by legacy id and leave a tombstone. Idempotent.
#[utoipa::path(delete, path = "/internal/v1/users/{id}", tag = "double-write",
    params(("id" = i64, Path, minimum = 1, description = "The legacy member id (positive)"), VersionQuery),
    security(("client_token" = [])),
    responses(
        (status = 204, description = "Deleted, or already gone, or stale and ignored"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not an internal client"),
        (status = 410, body = Problem, content_type = "application/problem+json", description = "The migration is complete: double writes have ended"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "ID service unavailable"),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Path(id): Path<i64>,
    Query(query): Query<VersionQuery>,
) -> Result<StatusCode, Problem> {
    let request = pb::DeleteLegacyUserRequest {
        id,
        version: query.version,
    };
    state
        .upstream
        .call(Retry::Idempotent, &rid, request, |mut c, r| async move {
            c.delete_legacy_user(r).await
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
