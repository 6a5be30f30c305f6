//! The one mapping from domain errors to gRPC statuses.
//!
//! Every status carries `idbase-problem` metadata with a stable problem type,
//! which the gateway turns into the RFC 9457 `type` and HTTP status, and
//! `retry-after` (seconds) where waiting helps.

use crate::domain::Error;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tracing::error;

pub const PROBLEM_KEY: &str = "idbase-problem";
pub const RETRY_AFTER_KEY: &str = "retry-after";

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let (code, problem, retry_after) = match &err {
            Error::Invalid { .. } => (Code::InvalidArgument, "invalid-request", None),
            Error::Conflict(_) => (Code::AlreadyExists, "conflict", None),
            Error::KeyReused => (Code::FailedPrecondition, "idempotency-key-reused", None),
            Error::InvalidCredentials => (Code::Unauthenticated, "invalid-credentials", None),
            Error::InvalidToken => (Code::Unauthenticated, "invalid-token", None),
            Error::WrongCurrentPassword => (Code::PermissionDenied, "wrong-current-password", None),
            Error::NotFound => (Code::NotFound, "not-found", None),
            Error::Throttled { retry_after_secs } => (
                Code::ResourceExhausted,
                "throttled",
                Some(*retry_after_secs),
            ),
            Error::Overloaded { retry_after_secs } => (
                Code::ResourceExhausted,
                "overloaded",
                Some(*retry_after_secs),
            ),
            Error::Internal(cause) => {
                error!(cause = format!("{cause:#}"), "internal error");
                (Code::Internal, "internal", None)
            }
        };
        let mut metadata = MetadataMap::new();
        metadata.insert(PROBLEM_KEY, MetadataValue::from_static(problem));
        if let Some(secs) = retry_after {
            metadata.insert(RETRY_AFTER_KEY, MetadataValue::from(secs));
        }
        Status::with_metadata(code, err.to_string(), metadata)
    }
}
