//! Why a command failed, and the exit code that tells a script so. Every
//! gRPC status is mapped to an [`Exit`] here and nowhere else.

use idbase_proto::ProblemType;
use idbase_proto::problem::PROBLEM_METADATA_KEY;
use idbase_proto::v1::CheckPhaseResponse;
use tonic::{Code, Status};

/// The process exit code of `idbase admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Anything not covered below (a server error, a wait that timed out).
    Error = 1,
    /// Bad command line (clap uses 2 for its own usage errors too).
    Usage = 2,
    /// The move was refused: not allowed, or a check failed (`check`: not ready).
    Refused = 3,
    /// The generation moved since it was read: read again and decide again.
    Conflict = 4,
    /// No, an invalid or an expired token, or a role that may not do this.
    Unauthorised = 5,
    /// idsvc's admin port did not answer.
    Unreachable = 6,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// A stable word for JSON output and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Usage => "usage",
            Self::Refused => "refused",
            Self::Conflict => "conflict",
            Self::Unauthorised => "unauthorised",
            Self::Unreachable => "unreachable",
        }
    }
}

/// A failed command.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    /// The gRPC status code, when idsvc answered with one.
    pub grpc_code: Option<Code>,
    /// The problem type slug idsvc attached (`phase-refused`, …).
    pub problem: Option<String>,
    /// For a refused move: the checks as idsvc sees them now.
    pub checks: Option<CheckPhaseResponse>,
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            grpc_code: None,
            problem: None,
            checks: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(Exit::Unreachable, message)
    }

    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Exit::Error, message)
    }

    /// The one line printed on stderr.
    pub fn line(&self) -> String {
        match self.exit {
            Exit::Unreachable | Exit::Usage | Exit::Error => self.message.clone(),
            exit => format!("{}: {}", exit.kind(), self.message),
        }
    }
}

/// The exit code for a status idsvc (or the transport) answered with. The
/// problem type is precise where idsvc set one; the code covers the rest.
pub fn exit_for_status(status: &Status) -> Exit {
    match problem_of(status) {
        Some(ProblemType::PhaseConflict) => return Exit::Conflict,
        Some(ProblemType::PhaseRefused) => return Exit::Refused,
        _ => {}
    }
    if is_transport(status) {
        return Exit::Unreachable;
    }
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Exit::Unauthorised,
        Code::Aborted => Exit::Conflict,
        Code::FailedPrecondition => Exit::Refused,
        // Nobody answered in time or at all: a script retries or alerts.
        Code::Unavailable | Code::DeadlineExceeded => Exit::Unreachable,
        _ => Exit::Error,
    }
}

/// A status this side made from a broken connection (a TLS handshake the
/// server refused after it finished here, a reset): idsvc sent nothing, and
/// the status carries the cause as its source.
fn is_transport(status: &Status) -> bool {
    status.code() == Code::Unknown && std::error::Error::source(status).is_some()
}

/// An error and its causes on one line ("transport error: tcp connect error: Connection refused").
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

fn problem_of(status: &Status) -> Option<ProblemType> {
    let slug = status.metadata().get(PROBLEM_METADATA_KEY)?.to_str().ok()?;
    ProblemType::from_slug(slug)
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        let exit = exit_for_status(&status);
        let message = match (exit, status.message()) {
            _ if is_transport(&status) => {
                format!("the connection to idsvc failed: {}", chain(&status))
            }
            (Exit::Unreachable, "") => format!("idsvc did not answer ({})", status.code()),
            (Exit::Unreachable, detail) => format!("idsvc did not answer: {detail}"),
            (_, "") => status.code().description().to_owned(),
            (_, detail) => detail.to_owned(),
        };
        Self {
            exit,
            message,
            grpc_code: Some(status.code()),
            problem: problem_of(&status).map(|p| p.slug().to_owned()),
            checks: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_problem(code: Code, problem: ProblemType) -> Status {
        let mut status = Status::new(code, "nope");
        status
            .metadata_mut()
            .insert(PROBLEM_METADATA_KEY, problem.slug().parse().unwrap());
        status
    }

    #[test]
    fn codes_map_to_exits() {
        let cases = [
            (Code::Ok, Exit::Error),
            (Code::Unauthenticated, Exit::Unauthorised),
            (Code::PermissionDenied, Exit::Unauthorised),
            (Code::Aborted, Exit::Conflict),
            (Code::FailedPrecondition, Exit::Refused),
            (Code::Unavailable, Exit::Unreachable),
            (Code::DeadlineExceeded, Exit::Unreachable),
            (Code::InvalidArgument, Exit::Error),
            (Code::Internal, Exit::Error),
            (Code::NotFound, Exit::Error),
        ];
        for (code, exit) in cases {
            assert_eq!(exit_for_status(&Status::new(code, "x")), exit, "{code:?}");
        }
    }

    #[test]
    fn the_problem_type_wins_over_the_code() {
        let refused = with_problem(Code::Aborted, ProblemType::PhaseRefused);
        assert_eq!(exit_for_status(&refused), Exit::Refused);
        let conflict = with_problem(Code::FailedPrecondition, ProblemType::PhaseConflict);
        assert_eq!(exit_for_status(&conflict), Exit::Conflict);
        // Other problem types leave the code to decide.
        let unavailable = with_problem(Code::Unavailable, ProblemType::Unavailable);
        assert_eq!(exit_for_status(&unavailable), Exit::Unreachable);
    }

    #[test]
    fn a_broken_connection_is_unreachable_but_an_unknown_answer_is_not() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let broken = Status::from_error(Box::new(reset));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(exit_for_status(&broken), Exit::Unreachable);
        let failure = Failure::from(broken);
        assert!(
            failure.message.contains("reset by peer"),
            "{}",
            failure.message
        );
        // Sent by the server: no source.
        assert_eq!(exit_for_status(&Status::unknown("odd")), Exit::Error);
    }

    #[test]
    fn exit_codes_are_the_documented_numbers() {
        let codes: Vec<i32> = [
            Exit::Ok,
            Exit::Error,
            Exit::Usage,
            Exit::Refused,
            Exit::Conflict,
            Exit::Unauthorised,
            Exit::Unreachable,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn failures_keep_the_problem_and_say_what_kind() {
        let failure = Failure::from(with_problem(
            Code::FailedPrecondition,
            ProblemType::PhaseRefused,
        ));
        assert_eq!(failure.problem.as_deref(), Some("phase-refused"));
        assert_eq!(failure.line(), "refused: nope");
        let silent = Failure::from(Status::new(Code::Unavailable, ""));
        assert_eq!(silent.exit, Exit::Unreachable);
        assert!(
            silent.line().starts_with("idsvc did not answer"),
            "{}",
            silent.line()
        );
    }
}
