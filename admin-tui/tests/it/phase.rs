//! `idbase admin phase …` against the double: output, and the exit code for
//! every outcome a script must tell apart.

use crate::double::{Double, GATEWAY_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN};
use admin_tui::{AdminArgs, Exit};
use clap::Parser;
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "idbase")]
enum Top {
    Admin(AdminArgs),
}

pub struct Run {
    pub exit: Exit,
    pub out: String,
    pub err: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

/// `idbase admin --admin-url URL ARGS…` with the token as if from IDBASE_ADMIN_TOKEN.
pub async fn admin(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut argv = vec![
        "idbase",
        "admin",
        "--admin-url",
        url,
        "--connect-timeout",
        "2",
    ];
    argv.extend(args);
    let Top::Admin(parsed) = Top::try_parse_from(argv).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = admin_tui::run_with(parsed, token.map(String::from), &mut out, &mut err).await;
    Run {
        exit,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

async fn operator(url: &str, args: &[&str]) -> Run {
    admin(url, Some(OPERATOR_TOKEN), args).await
}

#[tokio::test]
async fn get_shows_the_phase_for_people_and_for_scripts() {
    let url = Double::new().serve().await;
    let text = admin(&url, Some(VIEWER_TOKEN), &["phase", "get"]).await;
    assert_eq!(text.exit, Exit::Ok, "{}", text.err);
    assert!(
        text.out.starts_with("phase        0 legacy\n"),
        "{}",
        text.out
    );
    assert!(text.out.contains("generation   1\n"), "{}", text.out);
    assert!(text.err.is_empty());

    let json = admin(&url, Some(VIEWER_TOKEN), &["phase", "get", "--json"]).await;
    assert_eq!(json.exit, Exit::Ok);
    let state = json.json();
    assert_eq!(state["phase"], 0);
    assert_eq!(state["name"], "legacy");
    assert_eq!(state["generation"], 1);
    assert_eq!(state["write_fence"], false);
    assert!(state.get("ramp_key").is_none(), "{state}");
}

#[tokio::test]
async fn set_reads_the_generation_first_and_the_history_records_the_move() {
    let double = Double::new();
    let url = double.clone().serve().await;
    let moved = operator(&url, &["phase", "set", "1", "--reason", "double writes on"]).await;
    assert_eq!(moved.exit, Exit::Ok, "{}", moved.err);
    assert!(
        moved
            .out
            .starts_with("moved 0 legacy → 1 double-write (weight 100%), generation 1 → 2\n"),
        "{}",
        moved.out
    );
    assert!(
        moved.out.contains("  ✓ transition-allowed"),
        "{}",
        moved.out
    );

    // A ramped read move with the generation given, as JSON.
    let ramp = operator(
        &url,
        &[
            "phase", "set", "2", "--weight", "10", "--expect", "2", "--reason", "canary", "--json",
        ],
    )
    .await;
    assert_eq!(ramp.exit, Exit::Ok, "{}", ramp.err);
    let ramp = ramp.json();
    assert_eq!(ramp["from"]["generation"], 2);
    assert_eq!(ramp["state"]["phase"], 2);
    assert_eq!(ramp["state"]["weight"], 10);
    assert_eq!(ramp["state"]["generation"], 3);
    assert_eq!(ramp["forced"], false);

    let history = admin(&url, Some(VIEWER_TOKEN), &["phase", "history"]).await;
    assert_eq!(history.exit, Exit::Ok, "{}", history.err);
    let lines: Vec<&str> = history.out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", history.out);
    assert!(lines[0].starts_with("GEN  MOVE"), "{}", history.out);
    assert!(lines[1].starts_with("3    1→2 10%"), "{}", history.out);
    assert!(
        lines[1].ends_with("alice  checked  -      canary"),
        "{}",
        history.out
    );
    assert!(lines[2].ends_with("double writes on"), "{}", history.out);

    let limited = admin(
        &url,
        Some(VIEWER_TOKEN),
        &["phase", "history", "--limit", "1", "--json"],
    )
    .await;
    let changes = limited.json()["changes"].as_array().unwrap().clone();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["generation"], 3);
    assert_eq!(changes[0]["reason"], "canary");
    assert_eq!(double.current().generation, 3);
}

#[tokio::test]
async fn a_stale_generation_is_a_conflict() {
    let double = Double::new();
    let url = double.clone().serve().await;
    let stale = operator(
        &url,
        &["phase", "set", "1", "--expect", "0", "--reason", "r"],
    )
    .await;
    assert_eq!(stale.exit, Exit::Conflict);
    assert_eq!(
        stale.err,
        "idbase admin: conflict: generation is 1, not 0\n"
    );
    assert!(stale.out.is_empty(), "{}", stale.out);
    let json = operator(
        &url,
        &[
            "phase", "set", "1", "--expect", "9", "--reason", "r", "--json",
        ],
    )
    .await;
    assert_eq!(json.exit, Exit::Conflict);
    assert_eq!(json.json()["error"]["kind"], "conflict");
    assert_eq!(json.json()["error"]["exit_code"], 4);
    assert_eq!(json.json()["error"]["problem"], "phase-conflict");
    assert_eq!(double.current().generation, 1, "nothing moved");
}

#[tokio::test]
async fn a_failing_check_refuses_the_move_and_names_it_unless_forced() {
    let double = Double::new();
    double.fail_check("legacy-reachable");
    let url = double.clone().serve().await;

    let refused = operator(&url, &["phase", "set", "1", "--reason", "go"]).await;
    assert_eq!(refused.exit, Exit::Refused);
    assert!(
        refused
            .err
            .contains("refused: checks failed: legacy-reachable"),
        "{}",
        refused.err
    );
    // The checks as they stand, with every figure.
    assert!(
        refused.out.contains("NOT ready (legacy-reachable failing)"),
        "{}",
        refused.out
    );
    assert!(
        refused.out.contains("  ✗ legacy-reachable    0 live"),
        "{}",
        refused.out
    );
    assert!(
        refused.out.contains("  ✓ gateways-reporting  1 live"),
        "{}",
        refused.out
    );

    let json = operator(&url, &["phase", "set", "1", "--reason", "go", "--json"]).await;
    assert_eq!(json.exit, Exit::Refused);
    let error = &json.json()["error"];
    assert_eq!(error["problem"], "phase-refused");
    assert_eq!(error["checks"]["ready"], false);
    assert_eq!(double.current().phase, 0, "nothing moved");

    let forced = operator(
        &url,
        &[
            "phase",
            "set",
            "1",
            "--reason",
            "legacy probe is down",
            "--force",
        ],
    )
    .await;
    assert_eq!(forced.exit, Exit::Ok, "{}", forced.err);
    assert!(forced.out.contains(", FORCED\n"), "{}", forced.out);
    assert!(
        forced.out.contains("  ✗ legacy-reachable"),
        "{}",
        forced.out
    );
    assert!(double.history()[0].forced);
    let history = admin(&url, Some(VIEWER_TOKEN), &["phase", "history"]).await;
    assert!(history.out.contains("forced"), "{}", history.out);
}

#[tokio::test]
async fn a_move_that_is_not_allowed_is_refused_even_forced() {
    let url = Double::new().serve().await;
    let jump = operator(
        &url,
        &["phase", "set", "3", "--reason", "skip ahead", "--force"],
    )
    .await;
    assert_eq!(jump.exit, Exit::Refused);
    assert!(
        jump.out.contains("  ✗ transition-allowed  0→3"),
        "{}",
        jump.out
    );
}

#[tokio::test]
async fn check_exits_refused_when_a_check_fails() {
    let double = Double::new();
    let url = double.clone().serve().await;
    let ready = admin(&url, Some(VIEWER_TOKEN), &["phase", "check", "1"]).await;
    assert_eq!(ready.exit, Exit::Ok, "{}", ready.err);
    assert!(
        ready
            .out
            .starts_with("move 0 legacy → 1 double-write: ready\n"),
        "{}",
        ready.out
    );
    assert_eq!(ready.out.matches('✓').count(), 3, "{}", ready.out);

    double.fail_check("gateways-reporting");
    let not_ready = admin(&url, Some(VIEWER_TOKEN), &["phase", "check", "1", "--json"]).await;
    assert_eq!(not_ready.exit, Exit::Refused);
    let checks = not_ready.json();
    assert_eq!(checks["ready"], false);
    assert_eq!(checks["from_phase"], 0);
    assert_eq!(checks["target"], 1);
    let failing: Vec<&Value> = checks["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] == false)
        .collect();
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0]["name"], "gateways-reporting");
}

#[tokio::test]
async fn missing_wrong_and_underprivileged_credentials_are_unauthorised() {
    let url = Double::new().serve().await;
    let none = admin(&url, None, &["phase", "get"]).await;
    assert_eq!(none.exit, Exit::Unauthorised);
    assert_eq!(none.err, "idbase admin: unauthorised: no admin token\n");
    let wrong = admin(&url, Some("guess"), &["phase", "get"]).await;
    assert_eq!(wrong.exit, Exit::Unauthorised);
    let viewer = admin(
        &url,
        Some(VIEWER_TOKEN),
        &["phase", "set", "1", "--reason", "r"],
    )
    .await;
    assert_eq!(viewer.exit, Exit::Unauthorised);
    assert!(viewer.err.contains("may not"), "{}", viewer.err);
    let gateway = admin(&url, Some(GATEWAY_TOKEN), &["phase", "get", "--json"]).await;
    assert_eq!(gateway.exit, Exit::Unauthorised);
    assert_eq!(gateway.json()["error"]["grpc_code"], "PermissionDenied");
}

#[tokio::test]
async fn the_token_file_beats_the_environment() {
    let url = Double::new().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{OPERATOR_TOKEN}\n")).unwrap();
    let path = file.to_str().unwrap();
    let run = admin(
        &url,
        Some("wrong"),
        &["--admin-token-file", path, "phase", "get"],
    )
    .await;
    assert_eq!(run.exit, Exit::Ok, "{}", run.err);

    std::fs::write(&file, "  \n").unwrap();
    let empty = admin(&url, None, &["--admin-token-file", path, "phase", "get"]).await;
    assert_eq!(empty.exit, Exit::Usage);
    assert_eq!(empty.err, "idbase admin: the admin token is empty\n");
    let missing = dir.path().join("absent");
    let absent = admin(
        &url,
        None,
        &[
            "phase",
            "get",
            "--admin-token-file",
            missing.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(absent.exit, Exit::Usage);
}

#[tokio::test]
async fn a_closed_port_is_unreachable_in_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let run = admin(&url, Some(OPERATOR_TOKEN), &["phase", "get"]).await;
    assert_eq!(run.exit, Exit::Unreachable);
    assert!(
        run.err.starts_with(&format!(
            "idbase admin: cannot reach idsvc's admin port at {url}"
        )),
        "{}",
        run.err
    );
    assert_eq!(run.err.lines().count(), 1, "{}", run.err);
    assert!(started.elapsed() < Duration::from_secs(5));
    let json = admin(&url, Some(OPERATOR_TOKEN), &["phase", "get", "--json"]).await;
    assert_eq!(json.json()["error"]["kind"], "unreachable");
    assert_eq!(json.json()["error"]["exit_code"], 6);
}

#[tokio::test]
async fn plain_text_off_loopback_is_refused_before_connecting() {
    let run = admin(
        "http://192.0.2.1:50052",
        Some(OPERATOR_TOKEN),
        &["phase", "get"],
    )
    .await;
    assert_eq!(run.exit, Exit::Usage);
    assert!(run.err.contains("loopback only"), "{}", run.err);
    let https = admin(
        "https://127.0.0.1:1",
        Some(OPERATOR_TOKEN),
        &["phase", "get"],
    )
    .await;
    assert_eq!(https.exit, Exit::Usage);
    assert!(https.err.contains("--admin-ca"), "{}", https.err);
}

#[tokio::test]
async fn wait_follows_the_phase_until_the_write_fence_is_lifted() {
    let double = Double::new();
    double.start_at(3);
    let url = double.clone().serve().await;
    let waited = operator(
        &url,
        &[
            "phase", "set", "4", "--reason", "writes", "--wait", "--json",
        ],
    )
    .await;
    assert_eq!(waited.exit, Exit::Ok, "{}", waited.err);
    let moved = waited.json();
    assert_eq!(moved["state"]["write_fence"], true);
    assert_eq!(moved["state"]["generation"], 2);
    assert_eq!(moved["settled"]["write_fence"], false);
    assert_eq!(moved["settled"]["generation"], 3);
    assert!(!double.current().write_fence);

    // --wait after a move without a fence returns at once.
    let double_ramp = Double::new();
    double_ramp.start_at(1);
    let ramp_url = double_ramp.serve().await;
    let ramp = operator(
        &ramp_url,
        &[
            "phase", "set", "2", "--weight", "5", "--reason", "r", "--wait", "--json",
        ],
    )
    .await;
    assert_eq!(ramp.exit, Exit::Ok, "{}", ramp.err);
    assert_eq!(ramp.json()["settled"], Value::Null);

    // Back to 3 without --wait: the answer comes with the fence still up.
    let unwaited = operator(&url, &["phase", "set", "3", "--reason", "roll back"]).await;
    assert_eq!(unwaited.exit, Exit::Ok, "{}", unwaited.err);
    assert!(
        unwaited.out.contains("write fence up: writes pause"),
        "{}",
        unwaited.out
    );
    assert!(unwaited.out.contains("write fence  UP"), "{}", unwaited.out);
}

#[tokio::test]
async fn wait_gives_up_after_its_timeout_when_the_fence_stays_up() {
    let mut double = Double::new();
    double.lift_fence_after = None;
    double.start_at(3);
    let url = double.serve().await;
    let started = Instant::now();
    let stuck = operator(
        &url,
        &[
            "phase",
            "set",
            "4",
            "--reason",
            "writes",
            "--wait",
            "--wait-timeout",
            "1",
        ],
    )
    .await;
    assert_eq!(stuck.exit, Exit::Error);
    assert!(
        stuck
            .err
            .contains("the write fence of generation 2 is still up after 1 s"),
        "{}",
        stuck.err
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn bad_arguments_are_usage_errors() {
    for argv in [
        &["idbase", "admin", "phase", "set", "6", "--reason", "r"][..],
        &[
            "idbase", "admin", "phase", "set", "2", "--weight", "0", "--reason", "r",
        ],
        &[
            "idbase", "admin", "phase", "set", "2", "--weight", "101", "--reason", "r",
        ],
        &["idbase", "admin", "phase", "set", "2"],
        &["idbase", "admin", "phase", "set", "2", "--reason", ""],
        &["idbase", "admin", "phase", "history", "--limit", "0"],
        &["idbase", "admin", "--admin-cert", "c.pem", "phase", "get"],
    ] {
        let error = Top::try_parse_from(argv)
            .err()
            .unwrap_or_else(|| panic!("{argv:?} parsed"));
        assert_eq!(error.exit_code(), 2, "{argv:?}");
    }
}
