//! The one mapping from domain errors to gRPC statuses.
//!
//! Every status carries [`PROBLEM_METADATA_KEY`] metadata with a stable
//! [`ProblemType`], which the gateway turns into the RFC 9457 `type` and HTTP
//! status, and [`RETRY_AFTER_METADATA_KEY`] (seconds) where waiting helps.

use crate::domain::Error;
use idbase_proto::ProblemType;
use idbase_proto::problem::{PROBLEM_METADATA_KEY, RETRY_AFTER_METADATA_KEY};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tracing::error;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let (problem, retry_after) = match &err {
            Error::Invalid { .. } => (ProblemType::InvalidRequest, None),
            Error::Conflict(_) => (ProblemType::Conflict, None),
            Error::KeyReused => (ProblemType::IdempotencyKeyReused, None),
            Error::InvalidCredentials => (ProblemType::InvalidCredentials, None),
            Error::InvalidToken => (ProblemType::InvalidToken, None),
            Error::WrongCurrentPassword => (ProblemType::WrongCurrentPassword, None),
            Error::NotFound => (ProblemType::NotFound, None),
            Error::Throttled { retry_after_secs } => {
                (ProblemType::Throttled, Some(*retry_after_secs))
            }
            Error::Overloaded { retry_after_secs } => {
                (ProblemType::Overloaded, Some(*retry_after_secs))
            }
            Error::PhaseConflict(_) => (ProblemType::PhaseConflict, None),
            Error::PhaseRefused(_) => (ProblemType::PhaseRefused, None),
            Error::Gone(_) => (ProblemType::Gone, None),
            Error::Internal(cause) => {
                error!(cause = format!("{cause:#}"), "internal error");
                (ProblemType::Internal, None)
            }
        };
        let mut metadata = MetadataMap::new();
        metadata.insert(
            PROBLEM_METADATA_KEY,
            MetadataValue::from_static(problem.slug()),
        );
        if let Some(secs) = retry_after {
            metadata.insert(RETRY_AFTER_METADATA_KEY, MetadataValue::from(secs));
        }
        Status::with_metadata(code_of(problem), err.to_string(), metadata)
    }
}

/// The gRPC code for clients that read codes, not problem types.
fn code_of(problem: ProblemType) -> Code {
    match problem {
        ProblemType::InvalidRequest | ProblemType::TooLarge | ProblemType::UnsupportedMediaType => {
            Code::InvalidArgument
        }
        ProblemType::Conflict => Code::AlreadyExists,
        ProblemType::IdempotencyKeyReused | ProblemType::PhaseRefused => Code::FailedPrecondition,
        ProblemType::PhaseConflict => Code::Aborted,
        ProblemType::InvalidClient
        | ProblemType::InvalidCredentials
        | ProblemType::InvalidToken
        | ProblemType::TokenUpgradeRequired => Code::Unauthenticated,
        ProblemType::WrongCurrentPassword | ProblemType::Forbidden | ProblemType::Blocked => {
            Code::PermissionDenied
        }
        ProblemType::NotFound | ProblemType::Gone => Code::NotFound,
        ProblemType::MethodNotAllowed => Code::Unimplemented,
        ProblemType::Throttled | ProblemType::RateLimited | ProblemType::Overloaded => {
            Code::ResourceExhausted
        }
        ProblemType::Internal => Code::Internal,
        ProblemType::Unavailable | ProblemType::WritesPaused => Code::Unavailable,
    }
}
