//! The one error type of the domain. gRPC status mapping lives in `grpc::status`.

/// What went wrong, in terms a client can act on. Internal causes are logged
/// where they happen and never carried to the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field failed validation (400).
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A unique value is taken, or the account changed meanwhile (409).
    #[error("{0}")]
    Conflict(&'static str),
    /// An idempotency key came back with a different request (422).
    #[error("the idempotency key was used with a different request")]
    KeyReused,
    /// Wrong email or password; deliberately says nothing more (401).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The refresh token or session is unknown, expired or revoked (401).
    #[error("invalid or expired token")]
    InvalidToken,
    /// The current password given to confirm a change is wrong (403).
    #[error("current password is wrong")]
    WrongCurrentPassword,
    /// The user behind a valid token no longer exists (404).
    #[error("user not found")]
    NotFound,
    /// Too many failed attempts for this account (429).
    #[error("too many attempts, retry in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    /// The password hashing pool is full (503).
    #[error("overloaded, retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    /// The phase moved since the caller read its generation (409, ABORTED).
    #[error("{0}")]
    PhaseConflict(String),
    /// A phase move that is not allowed, or whose checks fail (409,
    /// FAILED_PRECONDITION); the message names the failing checks.
    #[error("{0}")]
    PhaseRefused(String),
    /// The route is retired: double writes once migration is complete (410).
    #[error("{0}")]
    Gone(&'static str),
    /// Anything else: storage or crypto failure. Logged, never shown (500).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }
}

impl From<super::store::StoreError> for Error {
    fn from(err: super::store::StoreError) -> Self {
        match err {
            super::store::StoreError::EmailTaken => Self::Conflict("email is already in use"),
            super::store::StoreError::RegistrationKeyTaken => Self::KeyReused,
            super::store::StoreError::Database(e) => Self::Internal(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
