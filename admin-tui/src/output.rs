//! What the commands print: text for people, JSON for scripts. The ramp
//! key never appears in either (it decides members' sides and is not the
//! operator's business).

use crate::failure::Failure;
use crate::phase::{Moved, Outcome};
use idbase_proto::v1::{CheckPhaseResponse, PhaseChange, PhaseCheck, PhaseState};
use serde::Serialize;
use std::fmt::Write;

/// The name of a phase number.
pub fn phase_name(phase: u32) -> &'static str {
    match phase {
        0 => "legacy",
        1 => "double-write",
        2 => "internal-reads",
        3 => "all-reads",
        4 => "writes",
        5 => "complete",
        _ => "unknown",
    }
}

/// Unix milliseconds as RFC 3339 (UTC), or `-` for none.
pub fn timestamp(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".to_owned();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_ms.to_string())
}

fn named(phase: u32) -> String {
    format!("{phase} {}", phase_name(phase))
}

// ---------------------------------------------------------------- text

/// The text of a command's result.
pub fn human(outcome: &Outcome) -> String {
    match outcome {
        Outcome::State(state) => state_text(state),
        Outcome::History(changes) => history(changes),
        Outcome::Check(check) => checks(check),
        Outcome::Moved(moved) => moved_text(moved),
    }
}

fn state_text(state: &PhaseState) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "phase        {}", named(state.phase));
    if state.weight < 100 && state.phase > 0 {
        let _ = writeln!(
            text,
            "weight       {}% (the other members follow {})",
            state.weight,
            named(state.phase - 1)
        );
    } else {
        let _ = writeln!(text, "weight       {}%", state.weight);
    }
    let _ = writeln!(text, "generation   {}", state.generation);
    let fence = if state.write_fence {
        "UP: writes get 503 until every live gateway acknowledges this generation"
    } else {
        "down"
    };
    let _ = writeln!(text, "write fence  {fence}");
    let by = if state.changed_by.is_empty() {
        "-"
    } else {
        &state.changed_by
    };
    let _ = writeln!(text, "changed      {} by {by}", timestamp(state.changed_at));
    text
}

/// `2→3` or, for a ramp step, `2 10%→50%`; weights shown only where not 100.
fn movement(change: &PhaseChange) -> String {
    let weight = |w: u32| {
        if w == 100 {
            String::new()
        } else {
            format!(" {w}%")
        }
    };
    format!(
        "{}{}→{}{}",
        change.from_phase,
        weight(change.from_weight),
        change.to_phase,
        weight(change.to_weight)
    )
}

fn history(changes: &[PhaseChange]) -> String {
    if changes.is_empty() {
        return "no phase changes yet\n".to_owned();
    }
    let mut rows = vec![["GEN", "MOVE", "AT", "WHO", "HOW", "FENCE", "REASON"].map(str::to_owned)];
    for change in changes {
        let how = match (change.forced, change.automatic) {
            (true, _) => "forced",
            (_, true) => "automatic",
            _ => "checked",
        };
        rows.push([
            change.generation.to_string(),
            movement(change),
            timestamp(change.at),
            change.who.clone(),
            how.to_owned(),
            change
                .fence_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            change.reason.clone(),
        ]);
    }
    table(&rows)
}

/// Columns padded to their widest cell (in characters); the last unpadded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn check_lines(checks: &[PhaseCheck]) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for check in checks {
        let mark = if check.pass { '✓' } else { '✗' };
        let line = format!("  {mark} {:<width$}  {}", check.name, check.figure);
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// The checks of a move, with the verdict first.
pub fn checks(check: &CheckPhaseResponse) -> String {
    let verdict = if check.ready {
        "ready".to_owned()
    } else {
        let failing: Vec<&str> = check
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        format!("NOT ready ({} failing)", failing.join(", "))
    };
    format!(
        "move {} → {}: {verdict}\n{}",
        named(check.from_phase),
        named(check.target),
        check_lines(&check.checks)
    )
}

fn moved_text(moved: &Moved) -> String {
    let (from, to) = (&moved.from, &moved.to);
    let mut text = format!(
        "moved {} → {} (weight {}%), generation {} → {}{}\n",
        named(from.phase),
        named(to.phase),
        to.weight,
        from.generation,
        to.generation,
        if moved.forced { ", FORCED" } else { "" }
    );
    text.push_str(&check_lines(&moved.checks));
    if let Some(settled) = &moved.settled {
        let _ = writeln!(
            text,
            "write fence lifted: generation {} at {}",
            settled.generation,
            timestamp(settled.changed_at)
        );
    } else if to.write_fence {
        text.push_str(
            "write fence up: writes pause until every live gateway acknowledges (`--wait` waits for it)\n",
        );
    }
    text.push('\n');
    text.push_str(&state_text(moved.settled.as_ref().unwrap_or(to)));
    text
}

// ---------------------------------------------------------------- JSON

#[derive(Serialize)]
struct StateJson<'a> {
    phase: u32,
    name: &'static str,
    weight: u32,
    generation: u64,
    write_fence: bool,
    changed_at: String,
    changed_at_ms: i64,
    changed_by: &'a str,
}

impl<'a> From<&'a PhaseState> for StateJson<'a> {
    fn from(state: &'a PhaseState) -> Self {
        Self {
            phase: state.phase,
            name: phase_name(state.phase),
            weight: state.weight,
            generation: state.generation,
            write_fence: state.write_fence,
            changed_at: timestamp(state.changed_at),
            changed_at_ms: state.changed_at,
            changed_by: &state.changed_by,
        }
    }
}

#[derive(Serialize)]
struct ChangeJson<'a> {
    generation: u64,
    from_phase: u32,
    to_phase: u32,
    from_weight: u32,
    to_weight: u32,
    who: &'a str,
    at: String,
    at_ms: i64,
    reason: &'a str,
    forced: bool,
    automatic: bool,
    fence_ms: Option<u64>,
}

impl<'a> From<&'a PhaseChange> for ChangeJson<'a> {
    fn from(change: &'a PhaseChange) -> Self {
        Self {
            generation: change.generation,
            from_phase: change.from_phase,
            to_phase: change.to_phase,
            from_weight: change.from_weight,
            to_weight: change.to_weight,
            who: &change.who,
            at: timestamp(change.at),
            at_ms: change.at,
            reason: &change.reason,
            forced: change.forced,
            automatic: change.automatic,
            fence_ms: change.fence_ms,
        }
    }
}

#[derive(Serialize)]
struct CheckJson<'a> {
    name: &'a str,
    pass: bool,
    figure: &'a str,
}

fn check_json(checks: &[PhaseCheck]) -> Vec<CheckJson<'_>> {
    checks
        .iter()
        .map(|c| CheckJson {
            name: &c.name,
            pass: c.pass,
            figure: &c.figure,
        })
        .collect()
}

#[derive(Serialize)]
struct ChecksJson<'a> {
    from_phase: u32,
    target: u32,
    ready: bool,
    checks: Vec<CheckJson<'a>>,
}

impl<'a> From<&'a CheckPhaseResponse> for ChecksJson<'a> {
    fn from(check: &'a CheckPhaseResponse) -> Self {
        Self {
            from_phase: check.from_phase,
            target: check.target,
            ready: check.ready,
            checks: check_json(&check.checks),
        }
    }
}

#[derive(Serialize)]
struct HistoryJson<'a> {
    changes: Vec<ChangeJson<'a>>,
}

#[derive(Serialize)]
struct MovedJson<'a> {
    from: StateJson<'a>,
    state: StateJson<'a>,
    forced: bool,
    checks: Vec<CheckJson<'a>>,
    /// The state once the write fence was lifted (`--wait`).
    settled: Option<StateJson<'a>>,
}

#[derive(Serialize)]
struct FailureJson<'a> {
    error: FailureBody<'a>,
}

#[derive(Serialize)]
struct FailureBody<'a> {
    kind: &'static str,
    exit_code: i32,
    message: &'a str,
    grpc_code: Option<String>,
    problem: Option<&'a str>,
    checks: Option<ChecksJson<'a>>,
}

fn to_line<T: Serialize>(value: &T) -> String {
    // Serialising plain structs of strings and numbers cannot fail.
    let mut line = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned());
    line.push('\n');
    line
}

/// The JSON of a command's result: one line.
pub fn json(outcome: &Outcome) -> String {
    match outcome {
        Outcome::State(state) => to_line(&StateJson::from(state)),
        Outcome::History(changes) => to_line(&HistoryJson {
            changes: changes.iter().map(Into::into).collect(),
        }),
        Outcome::Check(check) => to_line(&ChecksJson::from(check)),
        Outcome::Moved(moved) => to_line(&MovedJson {
            from: (&moved.from).into(),
            state: (&moved.to).into(),
            forced: moved.forced,
            checks: check_json(&moved.checks),
            settled: moved.settled.as_ref().map(Into::into),
        }),
    }
}

/// The JSON of a failure: `{"error": {kind, exit_code, message, …}}`.
pub fn failure_json(failure: &Failure) -> String {
    to_line(&FailureJson {
        error: FailureBody {
            kind: failure.exit.kind(),
            exit_code: failure.exit.code(),
            message: &failure.message,
            grpc_code: failure.grpc_code.map(|code| format!("{code:?}")),
            problem: failure.problem.as_deref(),
            checks: failure.checks.as_ref().map(Into::into),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Exit;

    fn state(phase: u32, weight: u32, generation: u64, write_fence: bool) -> PhaseState {
        PhaseState {
            phase,
            weight,
            generation,
            write_fence,
            ramp_key: vec![0xAB; 32],
            // 2026-12-05T07:30:00Z
            changed_at: 1_796_455_800_000,
            changed_by: "alice".into(),
            keepalive_ms: 1000,
        }
    }

    fn check(name: &str, pass: bool, figure: &str) -> PhaseCheck {
        PhaseCheck {
            name: name.into(),
            pass,
            figure: figure.into(),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(1_796_455_800_000), "2026-12-05T07:30:00Z");
        assert_eq!(timestamp(1_796_455_800_250), "2026-12-05T07:30:00.25Z");
        assert_eq!(timestamp(0), "-");
    }

    #[test]
    fn a_state_for_people() {
        let text = human(&Outcome::State(state(3, 100, 7, false)));
        assert_eq!(
            text,
            "phase        3 all-reads\n\
             weight       100%\n\
             generation   7\n\
             write fence  down\n\
             changed      2026-12-05T07:30:00Z by alice\n"
        );
        let ramped = human(&Outcome::State(state(2, 10, 4, false)));
        assert!(
            ramped.contains("weight       10% (the other members follow 1 double-write)"),
            "{ramped}"
        );
        let fenced = human(&Outcome::State(state(4, 100, 9, true)));
        assert!(fenced.contains("write fence  UP"), "{fenced}");
    }

    #[test]
    fn a_state_for_scripts_without_the_ramp_key() {
        let text = json(&Outcome::State(state(2, 10, 4, true)));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "phase": 2, "name": "internal-reads", "weight": 10, "generation": 4,
                "write_fence": true, "changed_at": "2026-12-05T07:30:00Z",
                "changed_at_ms": 1_796_455_800_000_i64, "changed_by": "alice"
            })
        );
        assert!(!text.contains("ramp"), "{text}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn history_is_a_table_with_aligned_columns() {
        let changes = vec![
            PhaseChange {
                generation: 9,
                from_phase: 3,
                to_phase: 4,
                from_weight: 100,
                to_weight: 100,
                who: "bob".into(),
                at: 1_796_455_800_000,
                reason: "writes to idbase".into(),
                forced: false,
                automatic: false,
                fence_ms: Some(420),
            },
            PhaseChange {
                generation: 8,
                from_phase: 2,
                to_phase: 2,
                from_weight: 10,
                to_weight: 50,
                who: "alice".into(),
                at: 1_796_455_700_000,
                reason: "ramp".into(),
                forced: true,
                automatic: false,
                fence_ms: None,
            },
        ];
        let text = human(&Outcome::History(changes));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "GEN  MOVE         AT                    WHO    HOW      FENCE   REASON",
                "9    3→4          2026-12-05T07:30:00Z  bob    checked  420 ms  writes to idbase",
                "8    2 10%→2 50%  2026-12-05T07:28:20Z  alice  forced   -       ramp",
            ]
        );
        assert_eq!(
            human(&Outcome::History(Vec::new())),
            "no phase changes yet\n"
        );
    }

    #[test]
    fn checks_show_marks_figures_and_the_failing_names() {
        let response = CheckPhaseResponse {
            from_phase: 3,
            target: 4,
            ready: false,
            checks: vec![
                check("transition-allowed", true, "3→4 forward by one"),
                check(
                    "id-range-margin",
                    false,
                    "legacy max id 999999500000 + 1000000 ≥ 1000000000000",
                ),
            ],
        };
        assert_eq!(
            human(&Outcome::Check(response)),
            "move 3 all-reads → 4 writes: NOT ready (id-range-margin failing)\n\
             \x20 ✓ transition-allowed  3→4 forward by one\n\
             \x20 ✗ id-range-margin     legacy max id 999999500000 + 1000000 ≥ 1000000000000\n"
        );
    }

    #[test]
    fn a_move_names_both_ends_and_the_fence() {
        let moved = Moved {
            from: state(3, 100, 8, false),
            to: state(4, 100, 9, true),
            checks: vec![check("gateways-reporting", true, "2 live")],
            forced: false,
            settled: None,
        };
        let text = human(&Outcome::Moved(moved));
        assert!(
            text.starts_with("moved 3 all-reads → 4 writes (weight 100%), generation 8 → 9\n  ✓ gateways-reporting  2 live\nwrite fence up"),
            "{text}"
        );
        let settled = Moved {
            from: state(3, 100, 8, false),
            to: state(4, 100, 9, true),
            checks: Vec::new(),
            forced: true,
            settled: Some(state(4, 100, 10, false)),
        };
        let text = human(&Outcome::Moved(settled));
        assert!(text.contains(", FORCED\n"), "{text}");
        assert!(text.contains("write fence lifted: generation 10"), "{text}");
        assert!(
            text.contains("generation   10\nwrite fence  down"),
            "{text}"
        );
    }

    #[test]
    fn a_move_for_scripts() {
        let moved = Moved {
            from: state(1, 100, 2, false),
            to: state(2, 10, 3, false),
            checks: vec![check("legacy-reachable", true, "200 in 3 ms")],
            forced: false,
            settled: None,
        };
        let value: serde_json::Value = serde_json::from_str(&json(&Outcome::Moved(moved))).unwrap();
        assert_eq!(value["from"]["generation"], 2);
        assert_eq!(value["state"]["phase"], 2);
        assert_eq!(value["state"]["weight"], 10);
        assert_eq!(value["checks"][0]["name"], "legacy-reachable");
        assert_eq!(value["settled"], serde_json::Value::Null);
    }

    #[test]
    fn failures_for_scripts_carry_kind_code_and_checks() {
        let mut status = tonic::Status::failed_precondition("checks failed: legacy-reachable");
        status.metadata_mut().insert(
            idbase_proto::problem::PROBLEM_METADATA_KEY,
            "phase-refused".parse().unwrap(),
        );
        let mut failure = Failure::from(status);
        failure.checks = Some(CheckPhaseResponse {
            from_phase: 0,
            target: 1,
            ready: false,
            checks: vec![check("legacy-reachable", false, "connection refused")],
        });
        assert_eq!(failure.exit, Exit::Refused);
        let value: serde_json::Value = serde_json::from_str(&failure_json(&failure)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error": {
                "kind": "refused", "exit_code": 3,
                "message": "checks failed: legacy-reachable",
                "grpc_code": "FailedPrecondition", "problem": "phase-refused",
                "checks": {"from_phase": 0, "target": 1, "ready": false, "checks": [
                    {"name": "legacy-reachable", "pass": false, "figure": "connection refused"}
                ]}
            }})
        );
    }
}
