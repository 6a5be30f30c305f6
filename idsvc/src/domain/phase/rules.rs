//! The phases and the moves between them: which transitions are allowed,
//! which may be ramped, which raise the write fence, and what a reason must
//! look like. Pure functions; the service in `super` applies them.

use std::fmt;

/// The longest reason recorded with a move.
pub const MAX_REASON_CHARS: usize = 500;

/// A migration phase. Members' requests are routed by it (the gateway);
/// idsvc stores it and guards its moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Legacy serves everything.
    Legacy = 0,
    /// Legacy serves; every legacy write is double-written to idbase.
    DoubleWrite = 1,
    /// Internal clients read (log in) at idbase.
    InternalReads = 2,
    /// Every client reads at idbase; writes stay at legacy.
    AllReads = 3,
    /// idbase takes writes too; legacy is kept current for a rollback.
    Writes = 4,
    /// Legacy is retired. Terminal.
    Complete = 5,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Legacy,
        Phase::DoubleWrite,
        Phase::InternalReads,
        Phase::AllReads,
        Phase::Writes,
        Phase::Complete,
    ];

    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL.get(usize::try_from(number).ok()?).copied()
    }

    pub fn number(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Legacy => "legacy",
            Phase::DoubleWrite => "double-write",
            Phase::InternalReads => "internal-reads",
            Phase::AllReads => "all-reads",
            Phase::Writes => "writes",
            Phase::Complete => "complete",
        }
    }

    /// Phases whose arrival may be ramped (a share of members first).
    pub fn rampable(self) -> bool {
        matches!(self, Phase::InternalReads | Phase::AllReads)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number(), self.name())
    }
}

/// What kind of move a transition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    Forward,
    Backward,
    /// The same phase with another weight.
    RampStep,
}

/// A weight as requested: 0 means 100; otherwise 1..=100.
pub fn requested_weight(weight: u32) -> Result<u32, String> {
    match weight {
        0 => Ok(100),
        1..=100 => Ok(weight),
        _ => Err(format!("weight {weight} is not a percentage (1..=100)")),
    }
}

/// Whether moving from `from` at `from_weight` to `to` at `weight` is
/// allowed, and what kind of move it is; the refusal says why not.
pub fn transition(
    from: Phase,
    from_weight: u32,
    to: Phase,
    weight: u32,
) -> Result<MoveKind, String> {
    if from == Phase::Complete {
        return Err("phase 5 complete is terminal".to_owned());
    }
    if !(1..=100).contains(&weight) {
        return Err(format!("weight {weight} is not a percentage (1..=100)"));
    }
    let kind = match to.number().cmp(&from.number()) {
        std::cmp::Ordering::Equal => {
            if !to.rampable() {
                return Err(format!("already in phase {from}; only phases 2 and 3 ramp"));
            }
            if weight == from_weight {
                return Err(format!("already in phase {from} at weight {weight}"));
            }
            MoveKind::RampStep
        }
        std::cmp::Ordering::Greater if to.number() == from.number() + 1 => {
            if from_weight < 100 {
                return Err(format!(
                    "finish the ramp of phase {from} (weight {from_weight}) before moving on"
                ));
            }
            MoveKind::Forward
        }
        std::cmp::Ordering::Less if to.number() + 1 == from.number() => MoveKind::Backward,
        _ => {
            return Err(format!(
                "phase {from} → {to} skips a phase; move one step at a time"
            ));
        }
    };
    if weight < 100 && (kind == MoveKind::Backward || !to.rampable()) {
        return Err(format!(
            "a move to phase {to} is never ramped (weight must be 100)"
        ));
    }
    Ok(kind)
}

/// Whether the move changes the write side, so writes pause until every
/// gateway follows (3→4 and 4→3).
pub fn fences_writes(from: Phase, to: Phase) -> bool {
    matches!(
        (from, to),
        (Phase::AllReads, Phase::Writes) | (Phase::Writes, Phase::AllReads)
    )
}

/// A move's reason: required, non-empty, at most [`MAX_REASON_CHARS`].
pub fn check_reason(reason: &str) -> Result<&str, String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err("a reason is required".to_owned());
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "the reason is longer than {MAX_REASON_CHARS} characters"
        ));
    }
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    #[test]
    fn phases_number_and_name() {
        for (n, phase) in Phase::ALL.iter().enumerate() {
            assert_eq!(Phase::from_number(n as u32), Some(*phase));
            assert_eq!(phase.number(), n as u32);
        }
        assert_eq!(Phase::from_number(6), None);
        assert_eq!(AllReads.to_string(), "3 all-reads");
    }

    /// Every (from, to) pair at full weight: forward and backward by one
    /// are allowed (nothing out of 5), every other pair is refused.
    #[test]
    fn every_settled_transition() {
        for from in Phase::ALL {
            for to in Phase::ALL {
                let got = transition(from, 100, to, 100);
                let (f, t) = (from.number(), to.number());
                let expected = if from == Complete {
                    None
                } else if t == f + 1 {
                    Some(MoveKind::Forward)
                } else if t + 1 == f {
                    Some(MoveKind::Backward)
                } else {
                    None
                };
                assert_eq!(got.clone().ok(), expected, "{from} → {to}: {got:?}");
            }
        }
    }

    #[test]
    fn only_moves_into_2_and_3_ramp() {
        assert_eq!(
            transition(DoubleWrite, 100, InternalReads, 10),
            Ok(MoveKind::Forward)
        );
        assert_eq!(
            transition(InternalReads, 100, AllReads, 1),
            Ok(MoveKind::Forward)
        );
        for (from, to) in [
            (Legacy, DoubleWrite),
            (AllReads, Writes),
            (Writes, Complete),
            (AllReads, InternalReads),
            (InternalReads, DoubleWrite),
            (Writes, AllReads),
            (DoubleWrite, Legacy),
        ] {
            assert!(
                transition(from, 100, to, 50).is_err(),
                "{from} → {to} ramped"
            );
        }
    }

    #[test]
    fn ramp_steps_only_in_2_and_3_and_must_change_the_weight() {
        assert_eq!(
            transition(InternalReads, 10, InternalReads, 50),
            Ok(MoveKind::RampStep)
        );
        assert_eq!(
            transition(AllReads, 50, AllReads, 100),
            Ok(MoveKind::RampStep)
        );
        assert_eq!(
            transition(AllReads, 50, AllReads, 20),
            Ok(MoveKind::RampStep)
        );
        assert!(transition(AllReads, 50, AllReads, 50).is_err());
        for phase in [Legacy, DoubleWrite, Writes, Complete] {
            assert!(transition(phase, 100, phase, 50).is_err(), "{phase}");
            assert!(transition(phase, 100, phase, 100).is_err(), "{phase}");
        }
    }

    #[test]
    fn a_ramp_finishes_before_the_next_phase_but_rolls_back_any_time() {
        assert!(transition(InternalReads, 40, AllReads, 100).is_err());
        assert_eq!(
            transition(InternalReads, 40, DoubleWrite, 100),
            Ok(MoveKind::Backward)
        );
        assert_eq!(
            transition(AllReads, 40, InternalReads, 100),
            Ok(MoveKind::Backward)
        );
    }

    #[test]
    fn weights_are_percentages() {
        assert_eq!(requested_weight(0), Ok(100));
        assert_eq!(requested_weight(37), Ok(37));
        assert!(requested_weight(101).is_err());
        assert!(transition(DoubleWrite, 100, InternalReads, 0).is_err());
    }

    #[test]
    fn only_the_write_side_moves_are_fenced() {
        for from in Phase::ALL {
            for to in Phase::ALL {
                let fenced = matches!((from, to), (AllReads, Writes) | (Writes, AllReads));
                assert_eq!(fences_writes(from, to), fenced, "{from} → {to}");
            }
        }
    }

    #[test]
    fn reasons_are_required_and_bounded() {
        assert!(check_reason("").is_err());
        assert!(check_reason("   ").is_err());
        assert_eq!(check_reason(" ramp to 10% "), Ok("ramp to 10%"));
        assert!(check_reason(&"x".repeat(MAX_REASON_CHARS)).is_ok());
        assert!(check_reason(&"é".repeat(MAX_REASON_CHARS + 1)).is_err());
    }
}
