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
    /// An address (RFC 5321 limits: at most 254 octets, local part at most
    /// 64); matched case-insensitively, surrounding spaces ignored.
    #[schema(example = "hanako@example.com", format = Email, max_length = 254)]
    pub email: String,
    /// 8–128 characters (counted after Unicode NFKC normalisation), any
    /// Unicode, no composition rules. Refused beyond what a schema can say:
    /// one of the 20,000 most common passwords, or the email or its local part.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// A phone number valid in its numbering plan, in any notation; numbers
    /// without a country code are read as Japanese. Stored as E.164.
    #[schema(example = "090-1234-5678", max_length = 64)]
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

/// Changes to the member. `email`, `phone` and `password` need `current_password`
/// (stated as `dependentRequired`); `phone: ""` removes the phone number.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeBody {
    /// As at registration.
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// As at registration; `""` removes it.
    #[schema(max_length = 64)]
    pub phone: Option<String>,
    /// As at registration: 8–128 characters, not common, not the email.
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
    /// Required with `email` or `password`; a string when sent.
    #[schema(nullable = false)]
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
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// As at registration.
    #[schema(max_length = 64)]
    pub phone: Option<String>,
    /// The legacy system's stored hash, in a scheme idsvc can verify: PHC
    /// strings (argon2, scrypt, pbkdf2), bcrypt (`$2a$`, `$2b$`, `$2y$`),
    /// ASP.NET Identity v2/v3 (`$aspnet-identity-v2$…`, `$aspnet-identity-v3$…`)
    /// and salted digests (`$salted-…`). Anything else is refused with 400.
    #[schema(min_length = 1, max_length = 1024)]
    pub password_hash: String,
    /// The legacy system's monotonic update stamp: newer wins.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "json_integer")]
    pub version: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// The legacy system's version stamp of the deletion.
    #[param(minimum = 0)]
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

/// A JSON integer as JSON Schema defines it: `2780.0` is the integer 2780
/// (RFC 8259 numbers have no integer type), so a schema-valid body is read.
fn json_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(int) = number.as_i64() {
        return Ok(int);
    }
    // The range check is on the float: i64::MAX as f64 rounds up to 2^63.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    match number.as_f64() {
        Some(float) if float.fract() == 0.0 && (-LIMIT..LIMIT).contains(&float) =>
        {
            #[allow(clippy::cast_possible_truncation, reason = "integral and in range")]
            Ok(float as i64)
        }
        _ => Err(serde::de::Error::custom(format!(
            "expected an integer, got {number}"
        ))),
    }
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_of(json: &str) -> Result<i64, serde_json::Error> {
        let body = format!(r#"{{"email":"a@example.com","password_hash":"x","version":{json}}}"#);
        serde_json::from_str::<LegacyUserBody>(&body).map(|b| b.version)
    }

    #[test]
    fn version_reads_json_integers_in_any_notation() {
        assert_eq!(version_of("2780").unwrap(), 2780);
        assert_eq!(version_of("2780.0").unwrap(), 2780);
        assert_eq!(version_of("2.78e3").unwrap(), 2780);
        assert_eq!(version_of("-1").unwrap(), -1);
        assert!(version_of("2780.5").is_err());
        assert!(version_of("1e300").is_err());
        assert!(version_of("\"1\"").is_err());
    }
}
