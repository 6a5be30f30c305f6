//! The middleware that routes member requests by phase: it reads the phase
//! (lock-free), tells the token's origin from its form, decides
//! ([`super::route::decide`]) and then runs the idsvc handler, forwards to
//! legacy, exchanges a legacy refresh token, or answers itself. It also
//! counts writes in flight for the phase report and labels the response
//! with the side and phase for the access log and metrics.
//!
//! Without `--legacy-url` (or without phase following) every request goes
//! to idsvc as it always did.

use super::follow::Follower;
use super::route::{self, Answer, Decision, Route, Side, TokenOrigin};
use super::shadow::Shadows;
use super::traffic::TrafficCounter;
use crate::api::{Json, TokenBody};
use crate::clients::Client;
use crate::legacy::Legacy;
use crate::problem::Problem;
use crate::routes::AppState;
use crate::telemetry::RequestId;
use crate::upstream::Retry;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idbase_proto::ProblemType;
use idbase_proto::v1 as pb;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;
use zeroize::Zeroizing;

/// The cutover's part of the gateway's state.
#[derive(Clone, Default)]
pub struct Cutover {
    pub legacy: Option<Legacy>,
    pub follower: Option<Arc<Follower>>,
    /// Member writes in flight, to either side.
    pub writes: Arc<AtomicU32>,
    /// Member writes proxied to legacy in phases 1–3 that legacy
    /// acknowledged, not yet reported (double-write parity).
    pub legacy_writes: Arc<AtomicU64>,
    /// The member traffic answered, by side and route kind, not yet reported.
    pub traffic: Arc<TrafficCounter>,
    /// Shadow reads of what legacy serves in phases 1–3; `None` when off.
    pub shadows: Option<Arc<Shadows>>,
    /// Stops the follower's tasks once the last copy of the state is gone.
    pub stop: Option<Arc<DropGuard>>,
}

impl Cutover {
    /// A token whose cancellation the state's last drop triggers.
    pub fn stop_on_drop(&mut self) -> CancellationToken {
        let token = CancellationToken::new();
        self.stop = Some(Arc::new(token.clone().drop_guard()));
        token
    }
}

/// Who served a request and by which phase, for the access log and
/// `idbase_gateway_requests_total`. Responses without it were the
/// gateway's own (probes, keys, refusals before routing).
#[derive(Clone, Copy, Debug)]
pub struct Routed {
    pub side: &'static str,
    pub phase: Option<u32>,
}

/// Counts one write while it is in flight.
struct WriteGuard(Arc<AtomicU32>);

impl WriteGuard {
    fn enter(writes: &Arc<AtomicU32>) -> Self {
        writes.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(writes))
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The member route of a request, from the route it matched.
fn route_of(request: &Request) -> Option<Route> {
    let path = request.extensions().get::<MatchedPath>()?.as_str();
    let method = request.method();
    Some(match (path, method) {
        ("/v1/sessions", &Method::POST) => Route::Login,
        ("/v1/users", &Method::POST) => Route::Register,
        ("/v1/users/me", &Method::GET | &Method::HEAD) => Route::MeGet,
        ("/v1/users/me", &Method::PATCH) => Route::MePatch,
        ("/v1/users/me", &Method::DELETE) => Route::MeDelete,
        ("/v1/tokens/refresh", &Method::POST) => Route::Refresh,
        ("/v1/tokens/revoke", &Method::POST) => Route::Revoke,
        ("/internal/v1/users/{id}", &Method::PUT) => Route::InternalPut,
        ("/internal/v1/users/{id}", &Method::DELETE) => Route::InternalDelete,
        _ => return None,
    })
}

/// Layer on each member route, inside `require_client` (the client is known).
pub async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(route) = route_of(&request) else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let traffic = Arc::clone(&state.cutover.traffic);
    let answered = |response: Response| {
        if let Some(routed) = response.extensions().get::<Routed>() {
            traffic.record(routed.side, route, response.status(), started.elapsed());
        }
        response
    };
    if !route.is_fenced_write() {
        return answered(gate(state, route, request, next).await);
    }
    // A write stays in flight until its upstream call ends, even when the
    // client goes away first (dropping this future): the write fence must not
    // lift while legacy or idsvc may still commit it.
    let write = WriteGuard::enter(&state.cutover.writes);
    let task = tokio::spawn(
        async move {
            let _write = write;
            gate(state, route, request, next).await
        }
        .in_current_span(),
    );
    answered(
        task.await
            .unwrap_or_else(|_| Problem::internal().into_response()),
    )
}

/// Routes one member request by the phase this gateway follows.
async fn gate(state: AppState, route: Route, request: Request, next: Next) -> Response {
    let cutover = &state.cutover;
    let (Some(legacy), Some(follower)) = (&cutover.legacy, &cutover.follower) else {
        return routed(next.run(request).await, Side::Idbase.label(), None);
    };
    let Some(phase) = follower.current() else {
        let problem = Problem::new(
            ProblemType::Unavailable,
            "this gateway has not learned the migration phase yet".to_owned(),
        )
        .retry_after(1);
        return routed(problem.into_response(), "gateway", None);
    };
    let Some(client) = request.extensions().get::<Client>().cloned() else {
        // `require_client` runs first; without a client nothing is routed.
        return next.run(request).await;
    };
    let ramping = phase.weight < 100 && matches!(phase.phase, 2 | 3);
    // Shadows repeat reads legacy serves before idbase takes the writes.
    let shadows = cutover
        .shadows
        .as_ref()
        .filter(|_| (1..=3).contains(&phase.phase));
    let needs_body = match route {
        Route::Login => ramping || shadows.is_some(),
        Route::Refresh | Route::Revoke => true,
        _ => false,
    };
    let (request, body) = if needs_body {
        match buffer(request, state.max_body_bytes).await {
            Ok(buffered) => buffered,
            Err(problem) => return routed(problem.into_response(), "gateway", Some(phase.phase)),
        }
    } else {
        (request, Bytes::new())
    };
    let fields = needs_body
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten();
    let field = |name: &str| fields.as_ref().and_then(|f| f.get(name)?.as_str());
    let origin = match route {
        Route::MeGet | Route::MePatch | Route::MeDelete => match bearer(&request) {
            None => TokenOrigin::None,
            Some(token) => access_token_origin(&state, token).await,
        },
        Route::Refresh | Route::Revoke => {
            field("refresh_token").map_or(TokenOrigin::None, route::refresh_token_origin)
        }
        _ => TokenOrigin::None,
    };
    let writes_paused = phase.write_fence || follower.is_stale();
    let decision = route::decide(
        &phase,
        writes_paused,
        &route::Request {
            class: client.class,
            route,
            origin,
            email: field("email"),
        },
    );
    let number = Some(phase.phase);
    match decision {
        Decision::To(Side::Idbase) => routed(next.run(request).await, "idbase", number),
        Decision::To(Side::Legacy) => {
            let shadowed = shadows.and_then(|shadows| {
                let slot = match route {
                    Route::Login => {
                        let email = field("email")?.trim().to_lowercase();
                        shadows.sample_login(&phase.ramp, &email)?
                    }
                    Route::MeGet if request.method() == Method::GET => {
                        shadows.sample_me(bearer(&request)?)?
                    }
                    _ => return None,
                };
                Some((shadows, slot))
            });
            let Some((shadows, slot)) = shadowed else {
                let answer = legacy.forward(request, &client, phase.phase).await;
                // From phase 1 legacy double-writes every member write it takes.
                if route.is_fenced_write() && phase.phase >= 1 && answer.status().is_success() {
                    cutover.legacy_writes.fetch_add(1, Ordering::Relaxed);
                }
                return routed(answer, "legacy", number);
            };
            let answer = legacy.forward(request, &client, phase.phase).await;
            let answer = if route == Route::Login {
                let credentials = (
                    field("email").unwrap_or_default().to_owned(),
                    Zeroizing::new(field("password").unwrap_or_default().to_owned()),
                );
                shadows.login(slot, &state.upstream, credentials, answer.status());
                answer
            } else {
                shadows.me(slot, &state.upstream, answer)
            };
            routed(answer, "legacy", number)
        }
        Decision::Exchange => {
            let token = field("refresh_token").unwrap_or_default();
            let rid = request_id(&request);
            let answer = exchange(&state, legacy, &client, token, &rid).await;
            routed(answer, "idbase", number)
        }
        Decision::Answer(answer) => {
            let stale = !phase.write_fence && writes_paused;
            routed(answer_of(answer, stale), "gateway", number)
        }
    }
}

fn request_id(request: &Request) -> String {
    request
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone())
}

fn routed(mut response: Response, side: &'static str, phase: Option<u32>) -> Response {
    response.extensions_mut().insert(Routed { side, phase });
    response
}

/// Reads the whole body (member bodies are small JSON, capped by the
/// gateway's body limit) and puts it back for whoever serves the request.
async fn buffer(request: Request, limit: usize) -> Result<(Request, Bytes), Problem> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Problem::new(
            ProblemType::TooLarge,
            format!("the body is over {limit} bytes"),
        )
    })?;
    Ok((Request::from_parts(parts, Body::from(bytes.clone())), bytes))
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

/// An idbase access token is a JWT signed by one of idsvc's keys (only its
/// `kid` is looked at here; idsvc's side verifies it); anything else is legacy's.
async fn access_token_origin(state: &AppState, token: &str) -> TokenOrigin {
    match route::jwt_kid(token) {
        Some(kid) if state.verifier.knows_kid(&kid).await => TokenOrigin::Idbase,
        _ => TokenOrigin::Legacy,
    }
}

/// A legacy refresh token from phase 3 on: legacy redeems it (single use)
/// and names the member; idsvc opens an idbase session for them.
async fn exchange(
    state: &AppState,
    legacy: &Legacy,
    client: &Client,
    token: &str,
    request_id: &str,
) -> Response {
    let invalid = || {
        Problem::unauthenticated(
            ProblemType::InvalidToken,
            "invalid or expired refresh token",
        )
        .into_response()
    };
    let member = match legacy.redeem(token, client).await {
        Ok(Some(member)) => member,
        Ok(None) => return invalid(),
        Err(problem) => return problem.into_response(),
    };
    let request = pb::ExchangeLegacySessionRequest {
        user_id: member,
        legacy_token_sha256: Sha256::digest(token.as_bytes()).to_vec(),
        client_id: client.id.clone(),
    };
    // idsvc answers a repeat of the same token inside its grace window with
    // a rotation of the same session, so a retry is safe.
    let result = state
        .upstream
        .call(
            Retry::Idempotent,
            request_id,
            request,
            |mut c, r| async move { c.exchange_legacy_session(r).await },
        )
        .await;
    metrics::counter!(
        "idbase_legacy_exchanges_total",
        "outcome" => if result.is_ok() { "ok" } else { "refused" }
    )
    .increment(1);
    match result {
        Ok(pair) => Json(TokenBody::from(pair)).into_response(),
        Err(status) => Problem::from(status).into_response(),
    }
}

fn answer_of(answer: Answer, stale: bool) -> Response {
    let problem = match answer {
        Answer::NothingToRevoke => return StatusCode::NO_CONTENT.into_response(),
        Answer::TokenUpgradeRequired => Problem::new(
            ProblemType::TokenUpgradeRequired,
            "writes need an idbase token now: refresh the session, then retry".to_owned(),
        ),
        Answer::InvalidToken => Problem::new(
            ProblemType::InvalidToken,
            "legacy tokens are no longer accepted; log in again".to_owned(),
        ),
        Answer::Gone => Problem::new(
            ProblemType::Gone,
            "double writes ended with the migration".to_owned(),
        ),
        Answer::WritesPaused if stale => Problem::new(
            ProblemType::WritesPaused,
            "this gateway cannot confirm the migration phase; writes pause meanwhile".to_owned(),
        )
        .retry_after(1),
        Answer::WritesPaused => Problem::new(
            ProblemType::WritesPaused,
            "writes pause while the migration's write side changes".to_owned(),
        )
        .retry_after(1),
    };
    problem.into_response()
}
