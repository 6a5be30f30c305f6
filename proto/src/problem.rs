//! The error contract between idsvc and the gateway, spelled once.
//!
//! idsvc answers every failed call with a gRPC status whose metadata carries
//! [`PROBLEM_METADATA_KEY`] (a [`ProblemType`] slug) and, where waiting helps,
//! [`RETRY_AFTER_METADATA_KEY`] (seconds). The gateway turns the type into an
//! RFC 9457 `application/problem+json` body with the type's URI, title and
//! HTTP status. Both sides match on [`ProblemType`] exhaustively, so a new type
//! is added here and the compiler points at every place that must handle it.

/// gRPC metadata key carrying the stable problem type of a failed call.
pub const PROBLEM_METADATA_KEY: &str = "idbase-problem";
/// gRPC metadata key carrying the seconds to wait before trying again.
pub const RETRY_AFTER_METADATA_KEY: &str = "retry-after";
/// gRPC metadata key (and HTTP header) carrying the request id end to end.
pub const REQUEST_ID_METADATA_KEY: &str = "x-request-id";

/// Prefix of every problem type URI.
pub const PROBLEM_URI_PREFIX: &str = "urn:idbase:problem:";

/// Declares [`ProblemType`] with its slug, title and HTTP status in one row
/// per type, so [`ProblemType::ALL`] cannot miss one.
macro_rules! problem_types {
    ($($(#[doc = $doc:literal])* $variant:ident => $slug:literal, $title:literal, $status:literal;)+) => {
        /// Every problem an idbase API can answer with.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ProblemType {
            $($(#[doc = $doc])* $variant,)+
        }

        impl ProblemType {
            /// Every type, for documents that list them.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The slug carried in gRPC metadata and at the end of the URI.
            pub const fn slug(self) -> &'static str {
                match self {
                    $(Self::$variant => $slug,)+
                }
            }

            /// The RFC 9457 `type`, e.g. `urn:idbase:problem:throttled`.
            pub const fn uri(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!("urn:idbase:problem:", $slug),)+
                }
            }

            /// The RFC 9457 `title`: the same for every occurrence of the type.
            pub const fn title(self) -> &'static str {
                match self {
                    $(Self::$variant => $title,)+
                }
            }

            /// The HTTP status the gateway answers with.
            pub const fn http_status(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)+
                }
            }
        }
    };
}

problem_types! {
    /// The request is malformed or a value breaks a rule.
    InvalidRequest => "invalid-request", "Invalid request", 400;
    /// No valid `Client-Token`.
    InvalidClient => "invalid-client", "Unknown client", 401;
    /// A write with an access token legacy issued, once idbase takes writes:
    /// refresh the session (which exchanges it for idbase tokens) and retry.
    TokenUpgradeRequired => "token-upgrade-required", "Token upgrade required", 401;
    /// Wrong email or password.
    InvalidCredentials => "invalid-credentials", "Invalid credentials", 401;
    /// A missing, invalid, expired or revoked access or refresh token.
    InvalidToken => "invalid-token", "Invalid token", 401;
    /// `current_password` does not match.
    WrongCurrentPassword => "wrong-current-password", "Wrong current password", 403;
    /// The client may not use this route.
    Forbidden => "forbidden", "Forbidden", 403;
    /// Blocked by the WAF or by login-anomaly auto-blocking.
    Blocked => "blocked", "Blocked", 403;
    /// No such route or resource.
    NotFound => "not-found", "Not found", 404;
    /// The route exists but not with this method.
    MethodNotAllowed => "method-not-allowed", "Method not allowed", 405;
    /// A unique value (the email) is held by another member.
    Conflict => "conflict", "Conflict", 409;
    /// The body is over the size limit.
    TooLarge => "too-large", "Request too large", 413;
    /// The body is not JSON.
    UnsupportedMediaType => "unsupported-media-type", "Unsupported media type", 415;
    /// The `Idempotency-Key` was used before with a different request.
    IdempotencyKeyReused => "idempotency-key-reused", "Idempotency key reused", 422;
    /// The admin call is refused: the generation moved since the caller read it.
    PhaseConflict => "phase-conflict", "Phase changed meanwhile", 409;
    /// A phase move whose checks fail, or a transition that is not allowed.
    PhaseRefused => "phase-refused", "Phase move refused", 409;
    /// The route is retired (the double-write routes once migration is complete).
    Gone => "gone", "Gone", 410;
    /// Too many failed attempts for this account; see Retry-After.
    Throttled => "throttled", "Too many attempts", 429;
    /// Too many requests from this address; see Retry-After.
    RateLimited => "rate-limited", "Rate limited", 429;
    /// An internal error; the body tells nothing more.
    Internal => "internal", "Internal error", 500;
    /// The ID service cannot be reached; see Retry-After.
    Unavailable => "unavailable", "Service unavailable", 503;
    /// The ID service is at capacity; see Retry-After.
    Overloaded => "overloaded", "Overloaded", 503;
    /// Writes pause while the write side of the migration changes (a write
    /// fence, seconds at most), or while this gateway cannot confirm the
    /// phase; see Retry-After.
    WritesPaused => "writes-paused", "Writes paused", 503;
}

impl ProblemType {
    /// Whether the answer carries `Retry-After` (waiting helps).
    pub const fn retries_after(self) -> bool {
        matches!(
            self,
            Self::Throttled
                | Self::RateLimited
                | Self::Unavailable
                | Self::Overloaded
                | Self::WritesPaused
        )
    }

    /// The type of a slug read from gRPC metadata.
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.slug() == slug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_is_prefix_and_slug() {
        for &problem in ProblemType::ALL {
            assert_eq!(
                problem.uri(),
                format!("{PROBLEM_URI_PREFIX}{}", problem.slug())
            );
        }
    }

    #[test]
    fn slugs_round_trip_and_are_unique() {
        for &problem in ProblemType::ALL {
            assert_eq!(ProblemType::from_slug(problem.slug()), Some(problem));
        }
        assert_eq!(ProblemType::from_slug("no-such-type"), None);
    }

    #[test]
    fn statuses_are_errors() {
        for &problem in ProblemType::ALL {
            let status = problem.http_status();
            assert!((400..600).contains(&status), "{problem:?}: {status}");
            assert_eq!(
                problem.retries_after(),
                status == 429 || status == 503,
                "{problem:?}"
            );
        }
    }
}
