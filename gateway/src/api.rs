//! The JSON shapes of the REST API, and their conversion from protobuf.
//! Unknown fields are rejected: a typo must not be silently ignored.

use crate::problem::Problem;
use axum::extract::FromRequest;
use idbase_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

/// `Json` whose rejections are problem+json.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct Json<T>(pub T);

impl<T: Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    #[schema(example = "hanako@example.com")]
    pub email: String,
    /// 8–128 characters, any Unicode; common passwords and the email are refused.
    pub password: String,
    /// Any format; numbers without a country code are read as Japanese.
    #[schema(example = "090-1234-5678")]
    pub phone: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub email: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenBody {
    pub refresh_token: String,
}

/// Changes to the member. `email`, `phone` and `password` need `current_password`;
/// `phone: ""` removes the phone number.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeBody {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub password: Option<String>,
    pub current_password: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawBody {
    pub current_password: String,
}

/// A double write from the legacy system.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyUserBody {
    pub email: String,
    pub phone: Option<String>,
    /// The legacy system's stored hash, in a scheme idsvc can verify.
    pub password_hash: String,
    /// The legacy system's monotonic update stamp: newer wins.
    pub version: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// The legacy system's version stamp of the deletion.
    pub version: i64,
}

#[derive(Serialize, ToSchema)]
pub struct UserBody {
    /// Decimal string: ids exceed JavaScript's safe integers.
    #[schema(example = "1001")]
    pub id: String,
    pub email: String,
    pub phone: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

impl From<pb::User> for UserBody {
    fn from(user: pb::User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email,
            phone: user.phone,
            created_at: rfc3339(user.created_at),
            updated_at: rfc3339(user.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenBody {
    pub access_token: String,
    pub refresh_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

impl From<pb::TokenPair> for TokenBody {
    fn from(pair: pb::TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer",
            expires_in: pair.expires_in,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpsertOutcome {
    Created,
    Updated,
    /// The same version was applied before.
    Unchanged,
    /// A newer version or deletion is stored; this write was ignored.
    Stale,
}

#[derive(Serialize, ToSchema)]
pub struct UpsertBody {
    pub id: String,
    pub outcome: UpsertOutcome,
    /// The version now stored for the id.
    pub version: i64,
}

impl From<pb::UpsertLegacyUserResponse> for UpsertBody {
    fn from(r: pb::UpsertLegacyUserResponse) -> Self {
        let outcome = match r.outcome() {
            pb::UpsertOutcome::Created => UpsertOutcome::Created,
            pb::UpsertOutcome::Updated => UpsertOutcome::Updated,
            pb::UpsertOutcome::Unchanged => UpsertOutcome::Unchanged,
            pb::UpsertOutcome::Stale | pb::UpsertOutcome::Unspecified => UpsertOutcome::Stale,
        };
        Self {
            id: r.id.to_string(),
            outcome,
            version: r.version,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub kid: String,
    pub x: String,
}

#[derive(Serialize, ToSchema)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl From<pb::Jwks> for JwkSet {
    fn from(jwks: pb::Jwks) -> Self {
        let keys = jwks
            .keys
            .into_iter()
            .map(|k| Jwk {
                kty: "OKP",
                crv: "Ed25519",
                alg: "EdDSA",
                use_: "sig",
                kid: k.kid,
                x: k.x,
            })
            .collect();
        Self { keys }
    }
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}
