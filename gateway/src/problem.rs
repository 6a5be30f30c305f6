//! RFC 9457 problem details: the one error type of the HTTP edge and the one
//! place where errors become status codes. The types, their titles and
//! statuses are spelled once, in [`idbase_proto::ProblemType`].

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use idbase_proto::ProblemType;
use idbase_proto::problem::{PROBLEM_METADATA_KEY, RETRY_AFTER_METADATA_KEY};
use serde::Serialize;
use tracing::error;
use utoipa::ToSchema;

/// `application/problem+json` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable problem type, e.g. `urn:idbase:problem:throttled`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The same for every occurrence of the type.
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(problem: ProblemType, detail: impl Into<Option<String>>) -> Self {
        Self {
            kind: problem.uri(),
            title: problem.title(),
            status: problem.http_status(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::InvalidRequest, detail.into())
    }

    pub fn unauthenticated(problem: ProblemType, detail: &str) -> Self {
        Self::new(problem, detail.to_owned())
    }

    pub fn unavailable() -> Self {
        Self::new(
            ProblemType::Unavailable,
            "the ID service is unavailable".to_owned(),
        )
        .retry_after(1)
    }

    pub fn internal() -> Self {
        Self::new(ProblemType::Internal, None)
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

/// The problem type idsvc put on a failed call, if it did.
pub fn problem_of(status: &tonic::Status) -> Option<ProblemType> {
    status
        .metadata()
        .get(PROBLEM_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ProblemType::from_slug)
}

/// idsvc's statuses carry a stable problem type in their metadata.
impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Self {
        let retry_after = status
            .metadata()
            .get(RETRY_AFTER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let detail = || Some(status.message().to_owned());
        let Some(problem) = problem_of(&status) else {
            return match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled => Self::unavailable(),
                tonic::Code::InvalidArgument => Self::bad_request(status.message()),
                code => {
                    error!(?code, message = status.message(), "ID service failed");
                    Self::internal()
                }
            };
        };
        match problem {
            ProblemType::InvalidRequest
            | ProblemType::Conflict
            | ProblemType::IdempotencyKeyReused
            | ProblemType::WrongCurrentPassword
            | ProblemType::NotFound
            | ProblemType::Forbidden
            | ProblemType::Blocked
            | ProblemType::MethodNotAllowed
            | ProblemType::TooLarge
            | ProblemType::UnsupportedMediaType
            | ProblemType::InvalidClient
            | ProblemType::PhaseConflict
            | ProblemType::PhaseRefused
            | ProblemType::Gone => Self::new(problem, detail()),
            // One answer for every credential failure: which part was wrong is
            // not told.
            ProblemType::InvalidCredentials => {
                Self::unauthenticated(problem, "invalid email or password")
            }
            ProblemType::InvalidToken => Self::unauthenticated(problem, "invalid or expired token"),
            ProblemType::TokenUpgradeRequired => {
                Self::unauthenticated(problem, "refresh the session, then retry")
            }
            ProblemType::Throttled
            | ProblemType::RateLimited
            | ProblemType::Overloaded
            | ProblemType::Unavailable
            | ProblemType::WritesPaused => Self::new(problem, detail()).retry_after(retry_after),
            // idsvc's internal details stay in idsvc's log.
            ProblemType::Internal => {
                error!(message = status.message(), "ID service failed");
                Self::internal()
            }
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        // Well-formed JSON of the wrong shape is a 400 like any other bad input.
        let problem = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ProblemType::TooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemType::UnsupportedMediaType,
            _ => ProblemType::InvalidRequest,
        };
        // The body text names the failing field and position, never a value.
        Self::new(problem, rejection.body_text())
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
