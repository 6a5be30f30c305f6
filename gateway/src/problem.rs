//! RFC 9457 problem details: the one error type of the HTTP edge and the one
//! place where errors become status codes.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::error;
use utoipa::ToSchema;

/// `application/problem+json` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable problem type, e.g. `urn:idbase:problem:throttled`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<Option<String>>) -> Self {
        Self {
            kind: format!("urn:idbase:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", detail.into())
    }

    pub fn unauthenticated(kind: &str, detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, kind, detail.to_owned())
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the ID service is unavailable".to_owned(),
        )
        .retry_after(1)
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
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

/// idsvc's statuses carry a stable problem type in `idbase-problem`.
impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Self {
        let metadata = status.metadata();
        let kind = metadata
            .get("idbase-problem")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let retry_after = metadata
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let detail = || Some(status.message().to_owned());
        match kind {
            "invalid-request" => Self::new(StatusCode::BAD_REQUEST, kind, detail()),
            "conflict" => Self::new(StatusCode::CONFLICT, kind, detail()),
            "idempotency-key-reused" => Self::new(StatusCode::UNPROCESSABLE_ENTITY, kind, detail()),
            "invalid-credentials" => Self::unauthenticated(kind, "invalid email or password"),
            "invalid-token" => Self::unauthenticated(kind, "invalid or expired token"),
            "wrong-current-password" => Self::new(StatusCode::FORBIDDEN, kind, detail()),
            "not-found" => Self::new(StatusCode::NOT_FOUND, kind, detail()),
            "throttled" => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, kind, detail()).retry_after(retry_after)
            }
            "overloaded" => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, detail()).retry_after(retry_after)
            }
            _ => match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled => Self::unavailable(),
                tonic::Code::InvalidArgument => Self::bad_request(status.message()),
                code => {
                    error!(?code, message = status.message(), "ID service failed");
                    Self::internal()
                }
            },
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        // Well-formed JSON of the wrong shape is a 400 like any other bad input.
        let status = match rejection.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            status => status,
        };
        let kind = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "too-large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
            _ => "invalid-request",
        };
        // The body text names the failing field and position, never a value.
        Self::new(status, kind, rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}
