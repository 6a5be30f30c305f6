//! The emulator's one error type: RFC 9457 problem+json with idbase's problem
//! types, so a client cannot tell legacy's errors from idbase's by shape.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use idbase_proto::ProblemType;
use serde::Serialize;
use tracing::error;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl Problem {
    pub fn new(problem: ProblemType, detail: impl Into<Option<String>>) -> Self {
        Self {
            kind: problem.uri(),
            title: problem.title(),
            status: problem.http_status(),
            detail: detail.into(),
            retry_after: problem.retries_after().then_some(1),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::InvalidRequest, detail.into())
    }

    pub fn invalid_token() -> Self {
        Self::new(
            ProblemType::InvalidToken,
            "missing, invalid, expired or revoked token".to_owned(),
        )
    }

    /// The double write to idbase failed: nothing was stored, try again.
    pub fn unavailable(detail: &str) -> Self {
        Self::new(ProblemType::Unavailable, detail.to_owned())
    }

    /// Logs the cause; the answer says nothing about it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        error!(cause = %cause, "legacy emulator failed");
        Self::new(ProblemType::Internal, None)
    }
}

impl From<sqlx::Error> for Problem {
    fn from(err: sqlx::Error) -> Self {
        Self::internal(&err)
    }
}

/// The domain rules are idsvc's own (email, phone, password): their
/// complaints are 400s with idsvc's wording.
impl From<idsvc::domain::Error> for Problem {
    fn from(err: idsvc::domain::Error) -> Self {
        match err {
            idsvc::domain::Error::Invalid { .. } => Self::bad_request(err.to_string()),
            other => Self::internal(&other),
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let kind = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ProblemType::TooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemType::UnsupportedMediaType,
            _ => ProblemType::InvalidRequest,
        };
        Self::new(kind, rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
