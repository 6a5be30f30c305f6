//! `idbase admin phase …`: read, check and move the migration phase.

use crate::client::Client;
use crate::failure::{Exit, Failure};
use idbase_proto::v1::{
    CheckPhaseRequest, CheckPhaseResponse, GetPhaseRequest, PhaseChange, PhaseHistoryRequest,
    PhaseState, SetPhaseRequest, WatchPhaseRequest,
};
use std::time::Duration;

/// The last phase: `complete`, terminal.
pub const LAST_PHASE: u32 = 5;
/// idsvc refuses longer reasons.
pub const MAX_REASON_CHARS: usize = 500;
/// How this tool names itself to WatchPhase (idsvc's fleet view).
const WATCHER: &str = "idbase-admin";

#[derive(Clone, Debug, clap::Subcommand)]
pub enum PhaseCommand {
    /// The current phase, ramp weight, generation and write fence.
    Get,
    /// Past changes, newest first: who moved what, when and why.
    History {
        /// How many changes to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// The preconditions of a move, each ✓ or ✗ with its figure. Exits 3
    /// when one fails (the move would be refused).
    Check {
        /// The phase to move to (0 legacy … 5 complete).
        #[arg(value_parser = clap::value_parser!(u32).range(0..=5))]
        target: u32,
        /// Ramp weight in percent for the read moves (into 2 and 3); default 100.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        weight: Option<u32>,
    },
    /// Move the phase: compare-and-set on the generation, refused when a
    /// check fails unless `--force`.
    ///
    /// Without `--expect` the current generation is read first. Exit codes:
    /// 3 refused (the failing checks are named), 4 the generation moved
    /// meanwhile (read again, decide again), 5 unauthorised, 6 unreachable.
    Set {
        /// The phase to move to: one step forward or back, or the current
        /// read phase again with another `--weight` (a ramp step).
        #[arg(value_parser = clap::value_parser!(u32).range(0..=5))]
        target: u32,
        /// Ramp weight in percent for the read moves (into 2 and 3); default 100.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        weight: Option<u32>,
        /// The generation the move starts from (as printed by `get`); the
        /// move is refused with exit code 4 if it has changed.
        #[arg(long, value_name = "GEN")]
        expect: Option<u64>,
        /// After a fenced move (3→4, 4→3) wait until the write fence is lifted.
        #[arg(long)]
        wait: bool,
        /// Seconds `--wait` waits before giving up (exit code 1).
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        wait_timeout: u64,
        /// Why: recorded in the history and the audit trail (1–500 characters).
        #[arg(long, value_parser = reason)]
        reason: String,
        /// Move although a check fails (recorded as forced).
        #[arg(long)]
        force: bool,
    },
}

/// A reason idsvc will accept: not blank, at most 500 characters.
pub fn reason(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the reason must not be empty".into());
    }
    if text.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "the reason is longer than {MAX_REASON_CHARS} characters"
        ));
    }
    Ok(text.to_owned())
}

/// What a command found or did, for [`crate::output`].
#[derive(Debug)]
pub enum Outcome {
    State(PhaseState),
    History(Vec<PhaseChange>),
    Check(CheckPhaseResponse),
    Moved(Moved),
}

/// A move that idsvc made.
#[derive(Debug)]
pub struct Moved {
    pub from: PhaseState,
    /// The state the move made.
    pub to: PhaseState,
    pub checks: Vec<idbase_proto::v1::PhaseCheck>,
    pub forced: bool,
    /// With `--wait` after a fenced move: the state once the fence was lifted.
    pub settled: Option<PhaseState>,
}

impl Outcome {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Check(check) if !check.ready => Exit::Refused,
            _ => Exit::Ok,
        }
    }
}

pub async fn execute(command: PhaseCommand, mut client: Client) -> Result<Outcome, Failure> {
    match command {
        PhaseCommand::Get => Ok(Outcome::State(get(&mut client).await?)),
        PhaseCommand::History { limit } => {
            let request = client.request(PhaseHistoryRequest { limit });
            let history = client.phases.phase_history(request).await?.into_inner();
            Ok(Outcome::History(history.changes))
        }
        PhaseCommand::Check { target, weight } => {
            Ok(Outcome::Check(check(&mut client, target, weight).await?))
        }
        PhaseCommand::Set {
            target,
            weight,
            expect,
            wait,
            wait_timeout,
            reason,
            force,
        } => {
            let from = get(&mut client).await?;
            let expected_generation = expect.unwrap_or(from.generation);
            let request = client.request(SetPhaseRequest {
                target,
                weight: weight.unwrap_or(0),
                expected_generation,
                force,
                reason,
            });
            let moved = match client.phases.set_phase(request).await {
                Ok(moved) => moved.into_inner(),
                Err(status) => {
                    let mut failure = Failure::from(status);
                    if failure.exit == Exit::Refused {
                        // The checks as they stand, for the operator to see
                        // every figure; the refusal stands without them.
                        failure.checks = check(&mut client, target, weight).await.ok();
                    }
                    return Err(failure);
                }
            };
            let to = moved
                .state
                .ok_or_else(|| Failure::other("idsvc answered the move without the new state"))?;
            let settled = if wait && to.write_fence {
                Some(fence_lifted(&mut client, &to, Duration::from_secs(wait_timeout)).await?)
            } else {
                None
            };
            Ok(Outcome::Moved(Moved {
                from,
                to,
                checks: moved.checks,
                forced: force,
                settled,
            }))
        }
    }
}

async fn get(client: &mut Client) -> Result<PhaseState, Failure> {
    let request = client.request(GetPhaseRequest {});
    Ok(client.phases.get_phase(request).await?.into_inner())
}

async fn check(
    client: &mut Client,
    target: u32,
    weight: Option<u32>,
) -> Result<CheckPhaseResponse, Failure> {
    let request = client.request(CheckPhaseRequest {
        target,
        weight: weight.unwrap_or(0),
    });
    Ok(client.phases.check_phase(request).await?.into_inner())
}

/// Follows WatchPhase until a state at or after `fenced` has the fence down.
async fn fence_lifted(
    client: &mut Client,
    fenced: &PhaseState,
    limit: Duration,
) -> Result<PhaseState, Failure> {
    let watch = async {
        let request = WatchPhaseRequest {
            watcher: WATCHER.to_owned(),
        };
        let mut stream = client.phases.watch_phase(request).await?.into_inner();
        while let Some(state) = stream.message().await? {
            if state.generation >= fenced.generation && !state.write_fence {
                return Ok(state);
            }
        }
        Err(Failure::unreachable(
            "idsvc closed the phase stream before the write fence was lifted",
        ))
    };
    tokio::time::timeout(limit, watch)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::other(format!(
                "the write fence of generation {} is still up after {} s: a live gateway has not \
             acknowledged it with no write in flight (see each gateway's /readyz)",
                fenced.generation,
                limit.as_secs()
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_trimmed_and_bounded() {
        assert_eq!(reason("  canary ok ").unwrap(), "canary ok");
        assert!(reason("   ").is_err());
        assert!(reason(&"x".repeat(MAX_REASON_CHARS)).is_ok());
        assert!(reason(&"x".repeat(MAX_REASON_CHARS + 1)).is_err());
        // Characters, not bytes: 500 kana are fine.
        assert!(reason(&"あ".repeat(MAX_REASON_CHARS)).is_ok());
    }

    #[test]
    fn a_check_that_is_not_ready_exits_refused() {
        let ready = |ready| {
            Outcome::Check(CheckPhaseResponse {
                ready,
                ..Default::default()
            })
            .exit()
        };
        assert_eq!(ready(true), Exit::Ok);
        assert_eq!(ready(false), Exit::Refused);
    }
}
