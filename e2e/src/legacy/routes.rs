//! The member REST API as legacy serves it: idbase's paths and JSON shapes
//! (the gateway forwards members' requests here unchanged), plus the
//! `/legacy/v1/…` endpoints idbase itself calls.

use super::AppState;
use super::problem::Problem;
use super::store::{ACCESS_TTL_SECS, Member, Store, next_version, now_ms};
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post, put};
use idbase_proto::ProblemType;
use idsvc::domain::{DEFAULT_MIN_PASSWORD_CHARS, Email, MAX_PASSWORD_CHARS, Password, Phone};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// `Json` whose rejections are problem+json.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct Json<T>(pub T);

impl<T: Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users", post(register))
        .route("/v1/users/me", get(me).patch(update_me).delete(withdraw))
        .route("/v1/sessions", post(login))
        .route("/v1/tokens/refresh", post(refresh))
        .route("/v1/tokens/revoke", post(revoke))
        .route("/legacy/v1/refresh-tokens/redeem", post(redeem))
        .route("/legacy/v1/health", get(health))
        .route("/legacy/v1/members/max-id", get(max_id))
        .route("/legacy/v1/sync/members/{id}", put(sync_member))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    email: String,
    password: String,
    phone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenBody {
    refresh_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeBody {
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    current_password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawBody {
    current_password: String,
}

/// A member as idbase holds it, synced back in phase 4.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncMemberBody {
    email: String,
    phone: Option<String>,
    password_hash: String,
    #[serde(deserialize_with = "integral")]
    version: i64,
    #[serde(default)]
    deleted: bool,
}

/// JSON Schema's `integer` admits `1346.0`: a number with no fraction is an
/// integer however it is written, so the contract's clients may send either.
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f))
                .map(|f| f as i64)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("version: {number} is not an int64")))
}

#[derive(Serialize)]
pub struct UserBody {
    id: String,
    email: String,
    phone: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<&Member> for UserBody {
    fn from(member: &Member) -> Self {
        Self {
            id: member.id.to_string(),
            email: member.email.clone(),
            phone: member.phone.clone(),
            created_at: member.created_at(),
            updated_at: member.updated_at(),
        }
    }
}

#[derive(Serialize)]
pub struct TokenBody {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: i64,
}

/// Who a bearer token names: the member, and the legacy session when the
/// token is one of legacy's own (idbase tokens carry no legacy session).
struct Bearer {
    member: i64,
    session: Option<i64>,
}

fn request_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok())
}

async fn bearer(state: &AppState, headers: &HeaderMap) -> Result<Bearer, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(Problem::invalid_token)?;
    if token.starts_with("la_") {
        let (member, session) = state
            .store
            .access(token)
            .await?
            .ok_or_else(Problem::invalid_token)?;
        return Ok(Bearer {
            member,
            session: Some(session),
        });
    }
    let Some(idbase) = state.idbase_tokens.as_ref() else {
        return Err(Problem::invalid_token());
    };
    if !super::jwks::IdbaseTokens::is_jwt(token) {
        return Err(Problem::invalid_token());
    }
    let member = idbase
        .verify(token)
        .await
        .ok_or_else(Problem::invalid_token)?;
    Ok(Bearer {
        member,
        session: None,
    })
}

async fn tokens(store: &Store, member: i64, session: Option<i64>) -> Result<TokenBody, Problem> {
    let issued = store.issue(member, session).await?;
    Ok(TokenBody {
        access_token: issued.access,
        refresh_token: issued.refresh,
        token_type: "Bearer",
        expires_in: ACCESS_TTL_SECS,
    })
}

/// The double write, when configured: `Err` means idbase did not take it and
/// the caller's transaction must roll back.
async fn double_write_upsert(
    state: &AppState,
    member: &Member,
    headers: &HeaderMap,
) -> Result<(), Problem> {
    match &state.double_write {
        Some(dw) => dw
            .upsert(member, request_id(headers))
            .await
            .map_err(|e| Problem::unavailable(&e.to_string())),
        None => Ok(()),
    }
}

async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<RegisterBody>,
) -> Result<(StatusCode, Json<UserBody>), Problem> {
    reject_oversized(&body.password)?;
    let email = Email::parse_strict(&body.email)?;
    let phone = body.phone.as_deref().map(Phone::parse).transpose()?;
    let password = Password::new_for(&body.password, &email, DEFAULT_MIN_PASSWORD_CHARS)?;
    let id = state.store.next_id().await?;
    let now = now_ms();
    let member = Member {
        id,
        email: email.as_str().to_owned(),
        phone: phone.map(|p| p.as_str().to_owned()),
        credential: super::password::Credential::new(password.expose()),
        created_ms: now,
        version: now,
    };
    let mut tx = state.store.begin().await?;
    if state
        .store
        .email_taken(&mut tx, &member.email, None)
        .await?
    {
        return Err(Problem::new(
            ProblemType::Conflict,
            "the email is in use".to_owned(),
        ));
    }
    Store::insert(&mut tx, &member).await?;
    double_write_upsert(&state, &member, &headers).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(UserBody::from(&member))))
}

/// idsvc's cheap bound on the raw input, before any normalisation: NFKC
/// can expand, 4 bytes per character at most.
fn reject_oversized(password: &str) -> Result<(), Problem> {
    if password.len() > MAX_PASSWORD_CHARS * 4 * 4 {
        return Err(Problem::bad_request(format!(
            "invalid password: must be at most {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

async fn login(
    State(state): State<AppState>,
    Json(body): Json<LoginBody>,
) -> Result<Json<TokenBody>, Problem> {
    let wrong = || {
        Problem::new(
            ProblemType::InvalidCredentials,
            "wrong email or password".to_owned(),
        )
    };
    let email = Email::parse(&body.email).map_err(|_| wrong())?;
    let password = Password::normalise(&body.password);
    let member = state.store.member_by_email(email.as_str()).await?;
    match member {
        Some(member) if member.credential.verify(password.expose()) => {
            Ok(Json(tokens(&state.store, member.id, None).await?))
        }
        _ => Err(wrong()),
    }
}

async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshTokenBody>,
) -> Result<Json<TokenBody>, Problem> {
    let (member, session) = state
        .store
        .spend_refresh(&body.refresh_token)
        .await?
        .ok_or_else(Problem::invalid_token)?;
    Ok(Json(tokens(&state.store, member, Some(session)).await?))
}

async fn revoke(
    State(state): State<AppState>,
    Json(body): Json<RefreshTokenBody>,
) -> Result<StatusCode, Problem> {
    state.store.revoke(&body.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<UserBody>, Problem> {
    let bearer = bearer(&state, &headers).await?;
    let member = state
        .store
        .member(bearer.member)
        .await?
        .ok_or_else(Problem::invalid_token)?;
    Ok(Json(UserBody::from(&member)))
}

async fn update_me(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<UpdateMeBody>,
) -> Result<Json<UserBody>, Problem> {
    let bearer = bearer(&state, &headers).await?;
    let mut tx = state.store.begin().await?;
    let current = Store::member_for_update(&mut tx, bearer.member)
        .await?
        .ok_or_else(Problem::invalid_token)?;
    let email = body.email.as_deref().map(Email::parse_strict).transpose()?;
    let phone = match body.phone.as_deref() {
        None => current.phone.clone(),
        Some(raw) if raw.trim().is_empty() => None,
        Some(raw) => Some(Phone::parse(raw)?.as_str().to_owned()),
    };
    let final_email = match &email {
        Some(email) => email.clone(),
        None => Email::parse(&current.email)?,
    };
    let password = body
        .password
        .as_deref()
        .map(|raw| {
            reject_oversized(raw)?;
            Password::new_for(raw, &final_email, DEFAULT_MIN_PASSWORD_CHARS).map_err(Problem::from)
        })
        .transpose()?;
    if email.is_some() || password.is_some() || body.phone.is_some() {
        let confirm = body.current_password.as_deref().ok_or_else(|| {
            Problem::bad_request(
                "invalid current_password: is required to change email, phone or password",
            )
        })?;
        confirm_password(&current, confirm)?;
    }
    if email.is_some()
        && state
            .store
            .email_taken(&mut tx, final_email.as_str(), Some(current.id))
            .await?
    {
        return Err(Problem::new(
            ProblemType::Conflict,
            "the email is in use".to_owned(),
        ));
    }
    let mut next = current.clone();
    next.email = final_email.as_str().to_owned();
    next.phone = phone;
    if let Some(password) = &password {
        next.credential = super::password::Credential::new(password.expose());
    }
    next.version = next_version(current.version);
    Store::update(&mut tx, &next).await?;
    if password.is_some() {
        // A new password ends the member's other sessions, as in idbase.
        Store::revoke_other_sessions(&mut tx, next.id, bearer.session.unwrap_or(0)).await?;
    }
    double_write_upsert(&state, &next, &headers).await?;
    tx.commit().await?;
    Ok(Json(UserBody::from(&next)))
}

async fn withdraw(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<WithdrawBody>,
) -> Result<StatusCode, Problem> {
    let bearer = bearer(&state, &headers).await?;
    let mut tx = state.store.begin().await?;
    let current = Store::member_for_update(&mut tx, bearer.member)
        .await?
        .ok_or_else(Problem::invalid_token)?;
    confirm_password(&current, &body.current_password)?;
    let version = next_version(current.version);
    Store::soft_delete(&mut tx, current.id, version).await?;
    if let Some(dw) = &state.double_write {
        dw.delete(current.id, version, request_id(&headers))
            .await
            .map_err(|e| Problem::unavailable(&e.to_string()))?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn confirm_password(member: &Member, raw: &str) -> Result<(), Problem> {
    let password = Password::normalise(raw);
    if reject_oversized(raw).is_ok() && member.credential.verify(password.expose()) {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemType::WrongCurrentPassword,
            "the current password is wrong".to_owned(),
        ))
    }
}

/// Single use: the session of the token ends, and idbase opens its own. A
/// repeat within the grace window names the member again, so the gateway
/// can retry an exchange that failed at idsvc without logging the member out.
async fn redeem(
    State(state): State<AppState>,
    Json(body): Json<RefreshTokenBody>,
) -> Result<Json<serde_json::Value>, Problem> {
    let member = state
        .store
        .redeem(&body.refresh_token)
        .await?
        .ok_or_else(Problem::invalid_token)?;
    Ok(Json(json!({ "member_id": member })))
}

async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    if state.store.ping().await {
        Ok(Json(json!({ "status": "ok" })))
    } else {
        Err(Problem::new(
            ProblemType::Unavailable,
            "the member database is unreachable".to_owned(),
        ))
    }
}

async fn max_id(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    Ok(Json(json!({ "max_id": state.store.max_id().await? })))
}

/// Part 2's reverse sync: idbase's newer version of a member replaces
/// legacy's row (or soft-deletes it); the same or an older version changes
/// nothing. Not double-written back: it comes from idbase.
async fn sync_member(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<SyncMemberBody>,
) -> Result<Json<serde_json::Value>, Problem> {
    if id < 1 || body.version < 0 {
        return Err(Problem::bad_request(
            "id must be positive, version not negative",
        ));
    }
    let email = Email::parse(&body.email)?;
    let phone = body
        .phone
        .as_deref()
        .filter(|p| !p.trim().is_empty())
        .map(Phone::parse)
        .transpose()?;
    let credential = super::password::Credential::from_idbase(&body.password_hash)
        .map_err(|reason| Problem::bad_request(format!("invalid password_hash: {reason}")))?;
    let mut tx = state.store.begin().await?;
    if !body.deleted
        && state
            .store
            .email_taken(&mut tx, email.as_str(), Some(id))
            .await?
    {
        return Err(Problem::new(
            ProblemType::Conflict,
            "the email is held by another member".to_owned(),
        ));
    }
    let stored = Store::any_member_for_update(&mut tx, id).await?;
    let outcome = match &stored {
        Some((current, _)) if body.version < current.version => "stale",
        Some((current, _)) if body.version == current.version => "unchanged",
        Some(_) => "updated",
        None => "created",
    };
    let version = match (&stored, outcome) {
        (Some((current, _)), "stale" | "unchanged") => current.version,
        _ => {
            let member = Member {
                id,
                email: email.as_str().to_owned(),
                phone: phone.map(|p| p.as_str().to_owned()),
                credential,
                created_ms: stored.as_ref().map_or(body.version, |(m, _)| m.created_ms),
                version: body.version,
            };
            Store::put_synced(&mut tx, &member, stored.is_some(), body.deleted).await?;
            body.version
        }
    };
    tx.commit().await?;
    Ok(Json(
        json!({ "id": id.to_string(), "outcome": outcome, "version": version }),
    ))
}

#[cfg(test)]
mod tests {
    use super::SyncMemberBody;

    fn version(json: &str) -> Result<i64, serde_json::Error> {
        let body = format!(r#"{{"email":"a@example.com","password_hash":"h","version":{json}}}"#);
        serde_json::from_str::<SyncMemberBody>(&body).map(|b| b.version)
    }

    #[test]
    fn a_version_written_as_an_integral_float_is_an_integer() {
        assert_eq!(version("1346").unwrap(), 1346);
        assert_eq!(version("1346.0").unwrap(), 1346);
        assert_eq!(version("1.346e3").unwrap(), 1346);
        assert!(version("1346.5").is_err());
        assert!(version("1e300").is_err());
        assert!(version("\"1346\"").is_err());
    }
}
