//! `/v1/sessions` and `/v1/tokens`: login, refresh, logout.

use super::AppState;
use crate::api::{Json, LoginBody, RefreshTokenBody, TokenBody};
use crate::clients::Client;
use crate::problem::{Problem, problem_of};
use crate::telemetry::RequestId;
use crate::upstream::Retry;
use crate::waf::source_ip::SourceIp;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use idbase_proto::ProblemType;
use idbase_proto::v1 as pb;
use ipnet::IpNet;
use std::net::IpAddr;

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
    Extension(client): Extension<Client>,
    source: Option<Extension<SourceIp>>,
    Json(body): Json<LoginBody>,
) -> Result<Json<TokenBody>, Problem> {
    let request = pb::LoginRequest {
        email: body.email,
        password: body.password,
        source_network: source
            .map_or_else(String::new, |Extension(SourceIp(ip))| source_network(ip)),
        client_id: client.id,
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
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Unknown client, or invalid, expired or reused token (a legacy refresh token is exchanged for an idbase session during the migration, once)"),
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

/// The network idsvc's login throttle counts a source address under: IPv4
/// by /24, IPv6 by /64 (an IPv4-mapped address as IPv4). A member's own
/// network is then locked apart from an attacker's.
fn source_network(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix).map_or_else(|_| ip.to_string(), |net| net.trunc().to_string())
}

#[cfg(test)]
mod tests {
    use super::source_network;

    #[test]
    fn source_networks_are_ipv4_24_and_ipv6_64() {
        assert_eq!(
            source_network("203.0.113.77".parse().unwrap()),
            "203.0.113.0/24"
        );
        assert_eq!(
            source_network("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            source_network("::ffff:198.51.100.9".parse().unwrap()),
            "198.51.100.0/24"
        );
    }
}
