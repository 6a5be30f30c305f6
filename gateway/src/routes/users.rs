//! `/v1/users`: registration and the member's own account.

use super::AppState;
use crate::access::Bearer;
use crate::api::{Json, RegisterBody, UpdateMeBody, UserBody, WithdrawBody};
use crate::clients::Client;
use crate::problem::Problem;
use crate::telemetry::RequestId;
use crate::upstream::Retry;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use idbase_proto::v1 as pb;

/// Register a member. With an `Idempotency-Key` header (unique per client,
/// remembered for 24 h), a retried request answers with the member the first
/// attempt registered instead of registering twice.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = RegisterBody,
    security(("client_token" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
            description = "Makes the request safe to retry: 1 to 255 printable ASCII characters, e.g. a UUID"),
    ),
    responses(
        (status = 201, body = UserBody, description = "Registered (or, for a repeated Idempotency-Key, registered before)"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed or invalid"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Email in use"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body too large"),
        (status = 415, body = Problem, content_type = "application/problem+json", description = "Not JSON"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Idempotency-Key already used with a different request"),
        (status = 429, body = Problem, content_type = "application/problem+json", description = "Too many registrations from this address; see Retry-After"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Overloaded, or writes paused while a migration phase move is fenced (`writes-paused`); see Retry-After"),
    ))]
pub async fn register(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Json(body): Json<RegisterBody>,
) -> Result<(StatusCode, Json<UserBody>), Problem> {
    let idempotency_key = idempotency_key(&headers)?;
    // With a key idsvc answers a replay with the first result, so the call
    // may be retried on another cluster even after it may have arrived.
    let retry = match idempotency_key {
        Some(_) => Retry::Idempotent,
        None => Retry::Unsafe,
    };
    let request = pb::RegisterRequest {
        email: body.email,
        password: body.password,
        phone: body.phone,
        idempotency_key,
        client_id: client.id,
    };
    let user = state
        .upstream
        .call(retry, &rid, request, |mut c, r| async move {
            c.register(r).await
        })
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// The `Idempotency-Key` header, if sent. idsvc checks its form (one place
/// for the rule); a value that is not even text is refused here.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    headers
        .get("idempotency-key")
        .map(|value| {
            value.to_str().map(str::to_owned).map_err(|_| {
                Problem::bad_request("Idempotency-Key must be printable ASCII characters")
            })
        })
        .transpose()
}

/// The member the access token belongs to.
#[utoipa::path(get, path = "/v1/users/me", tag = "users",
    security(("client_token" = [], "bearer" = [])),
    responses(
        (status = 200, body = UserBody),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client, or invalid, expired or revoked token"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "ID service unavailable"),
    ))]
pub async fn me(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Bearer(principal): Bearer,
) -> Result<Json<UserBody>, Problem> {
    let request = pb::MeRequest {
        principal: Some(principal),
    };
    let user = state
        .upstream
        .call(Retry::Idempotent, &rid, request, |mut c, r| async move {
            c.get_me(r).await
        })
        .await?;
    Ok(Json(user.into()))
}

/// Change email, phone or password. A password change logs out every other session.
#[utoipa::path(patch, path = "/v1/users/me", tag = "users", request_body = UpdateMeBody,
    security(("client_token" = [], "bearer" = [])),
    responses(
        (status = 200, body = UserBody),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed or invalid"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client or invalid token; `token-upgrade-required` for a legacy access token once idbase takes writes (refresh, then retry)"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Wrong current password"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Email in use"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body too large"),
        (status = 415, body = Problem, content_type = "application/problem+json", description = "Not JSON"),
        (status = 429, body = Problem, content_type = "application/problem+json", description = "Too many wrong passwords; see Retry-After"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Overloaded, or writes paused while a migration phase move is fenced (`writes-paused`); see Retry-After"),
    ))]
pub async fn update_me(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Bearer(principal): Bearer,
    Json(body): Json<UpdateMeBody>,
) -> Result<Json<UserBody>, Problem> {
    let request = pb::UpdateMeRequest {
        principal: Some(principal),
        email: body.email,
        phone: body.phone,
        password: body.password,
        current_password: body.current_password,
    };
    let user = state
        .upstream
        .call(Retry::Unsafe, &rid, request, |mut c, r| async move {
            c.update_me(r).await
        })
        .await?;
    Ok(Json(user.into()))
}

/// Withdraw: the member is deleted and every session revoked.
#[utoipa::path(delete, path = "/v1/users/me", tag = "users", request_body = WithdrawBody,
    security(("client_token" = [], "bearer" = [])),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client or invalid token; `token-upgrade-required` for a legacy access token once idbase takes writes (refresh, then retry)"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Wrong current password"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body too large"),
        (status = 415, body = Problem, content_type = "application/problem+json", description = "Not JSON"),
        (status = 429, body = Problem, content_type = "application/problem+json", description = "Too many wrong passwords; see Retry-After"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Overloaded, or writes paused while a migration phase move is fenced (`writes-paused`); see Retry-After"),
    ))]
pub async fn withdraw(
    State(state): State<AppState>,
    Extension(RequestId(rid)): Extension<RequestId>,
    Bearer(principal): Bearer,
    Json(body): Json<WithdrawBody>,
) -> Result<StatusCode, Problem> {
    let request = pb::WithdrawRequest {
        principal: Some(principal),
        current_password: body.current_password,
    };
    state
        .upstream
        .call(Retry::Unsafe, &rid, request, |mut c, r| async move {
            c.withdraw(r).await
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
