//! `idbase admin phase …` as an SRE runs it: the built binary against a
//! running `idbase dev` (its idsvc's admin port, its operator token from
//! dev-credentials.json), checking output and exit codes.
//!
//! dev gets a `--legacy-url` nobody listens on, so the `legacy-reachable`
//! check fails for the targets 1–4 for certain: a move there is refused
//! (exit 3) unless forced.

use e2e::{Process, free_addr};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_idbase"))
}

/// A running `idbase dev` on free loopback ports under its own data dir.
struct Dev {
    admin_url: String,
    gateway_url: String,
    operator_token: String,
    data_dir: tempfile::TempDir,
    _legacy_token: tempfile::NamedTempFile,
    _process: Process,
}

/// What `idbase admin …` did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl From<Output> for Ran {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

/// `idbase admin --admin-url URL ARGS…` with `token` in IDBASE_ADMIN_TOKEN.
fn admin(url: &str, token: Option<&str>, args: &[&str]) -> Ran {
    let mut command = Command::new(binary());
    command
        .args(["admin", "--admin-url", url])
        .args(args)
        .env_remove("IDBASE_ADMIN_TOKEN")
        .env_remove("IDBASE_ADMIN_TOKEN_FILE");
    if let Some(token) = token {
        command.env("IDBASE_ADMIN_TOKEN", token);
    }
    command.output().unwrap().into()
}

impl Dev {
    /// dev in front of a legacy API nobody listens on.
    async fn start() -> Self {
        Self::start_with(true).await
    }

    /// dev, with or without that legacy API (without, the gateway serves
    /// every member from idsvc).
    async fn start_with(legacy: bool) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let admin_addr = free_addr().unwrap();
        let http_addr = free_addr().unwrap();
        // Reserved and released: nothing listens there.
        let no_legacy = free_addr().unwrap();
        let legacy_token = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(legacy_token.path(), "gateway-credential-at-legacy").unwrap();
        let mut command = Command::new(binary());
        command
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--http", &http_addr])
            .args(["--grpc", &free_addr().unwrap()])
            .args(["--admin-grpc", &admin_addr])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null());
        if legacy {
            command
                .args(["--legacy-url", &format!("http://{no_legacy}")])
                .arg("--legacy-token-file")
                .arg(legacy_token.path());
        }
        let process = Process(command.spawn().unwrap());
        let credentials = data_dir.path().join("dev-credentials.json");
        let admin_url = format!("http://{admin_addr}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&credentials) {
                let value: Value = serde_json::from_str(&text).unwrap();
                let operator_token = value["admin_token"].as_str().unwrap().to_owned();
                // 6 while the admin port is not up yet.
                if admin(&admin_url, Some(&operator_token), &["phase", "get"]).code != 6 {
                    return Self {
                        admin_url,
                        gateway_url: format!("http://{http_addr}"),
                        operator_token,
                        data_dir,
                        _legacy_token: legacy_token,
                        _process: process,
                    };
                }
            }
            assert!(Instant::now() < deadline, "idbase dev did not come up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn operator(&self, args: &[&str]) -> Ran {
        admin(&self.admin_url, Some(&self.operator_token), args)
    }

    /// Waits until dev's gateway routes by `generation` (its /readyz says so).
    async fn gateway_follows(&self, generation: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready: Value = reqwest::get(format!("{}/readyz", self.gateway_url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if ready["generation"].as_u64() == Some(generation) {
                return ready;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway does not follow generation {generation}: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn an_operator_walks_the_phases_with_checks_forces_and_history() {
    let dev = Dev::start().await;

    let start = dev.operator(&["phase", "get", "--json"]);
    assert_eq!(start.code, 0, "{}", start.stderr);
    let start = start.json();
    assert_eq!(start["phase"], 0);
    assert_eq!(start["name"], "legacy");
    assert_eq!(start["write_fence"], false);
    let mut generation = start["generation"].as_u64().unwrap();
    // dev's gateway follows the phase from dev's own admin port.
    let ready = dev.gateway_follows(generation).await;
    assert_eq!(ready["phase"], 0, "{ready}");
    assert_eq!(
        ready["legacy"], false,
        "nothing listens at --legacy-url: {ready}"
    );
    let text = dev.operator(&["phase", "get"]);
    assert!(
        text.stdout.starts_with("phase        0 legacy\n"),
        "{}",
        text.stdout
    );

    // Legacy does not answer: the check says so with ✗, a move is refused.
    let check = dev.operator(&["phase", "check", "1"]);
    assert_eq!(check.code, 3, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("✗ legacy-reachable"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("✓ transition-allowed"),
        "{}",
        check.stdout
    );
    let refused = dev.operator(&["phase", "set", "1", "--reason", "double writes on"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("legacy-reachable"),
        "{}",
        refused.stderr
    );
    assert_eq!(dev.operator(&["phase", "get", "--json"]).json()["phase"], 0);

    // Forced with a reason, one step at a time, a ramp on the way.
    for (target, weight) in [("1", None), ("2", Some("25")), ("2", None), ("3", None)] {
        let mut args = vec![
            "phase",
            "set",
            target,
            "--reason",
            "dev walk, legacy absent",
            "--force",
            "--json",
        ];
        if let Some(weight) = weight {
            args.extend(["--weight", weight]);
        }
        let moved = dev.operator(&args);
        assert_eq!(moved.code, 0, "{args:?}: {}", moved.stderr);
        let state = &moved.json()["state"];
        assert_eq!(state["phase"].to_string(), target);
        assert_eq!(
            state["weight"],
            weight.map_or(100, |w| w.parse::<u64>().unwrap())
        );
        assert!(state["generation"].as_u64().unwrap() > generation);
        generation = state["generation"].as_u64().unwrap();
        let ready = dev.gateway_follows(generation).await;
        assert_eq!(ready["weight"], state["weight"], "{ready}");
    }

    // A jump is not a move, forced or not.
    let jump = dev.operator(&["phase", "set", "5", "--reason", "skip", "--force"]);
    assert_eq!(jump.code, 3, "{}", jump.stderr);

    // The write switch is fenced; --wait returns once dev's own gateway
    // has acknowledged it and idsvc lifted the fence.
    let fenced = dev.operator(&[
        "phase",
        "set",
        "4",
        "--reason",
        "writes to idbase",
        "--force",
        "--wait",
        "--json",
    ]);
    assert_eq!(fenced.code, 0, "{}", fenced.stderr);
    let fenced = fenced.json();
    assert_eq!(fenced["state"]["phase"], 4);
    assert_eq!(fenced["state"]["write_fence"], true);
    assert_eq!(fenced["settled"]["write_fence"], false);
    assert!(fenced["settled"]["generation"].as_u64() > fenced["state"]["generation"].as_u64());
    generation = fenced["settled"]["generation"].as_u64().unwrap();
    assert_eq!(dev.gateway_follows(generation).await["write_fence"], false);

    // Legacy is not needed for the last move.
    let complete = dev.operator(&[
        "phase",
        "set",
        "5",
        "--reason",
        "legacy retired",
        "--expect",
        &generation.to_string(),
    ]);
    assert_eq!(complete.code, 0, "{}\n{}", complete.stdout, complete.stderr);
    assert!(
        complete.stdout.contains("→ 5 complete"),
        "{}",
        complete.stdout
    );

    let history = dev.operator(&["phase", "history", "--json"]).json();
    let changes = history["changes"].as_array().unwrap();
    // Newest first: 4→5, the fence's end, 3→4, 2→3, ramp to 100, 1→2 at 25, 0→1.
    assert_eq!(changes[0]["from_phase"], 4);
    assert_eq!(changes[0]["to_phase"], 5);
    assert_eq!(changes[0]["who"], "dev");
    assert_eq!(changes[0]["reason"], "legacy retired");
    assert_eq!(changes[0]["forced"], false);
    let first = changes.last().unwrap();
    assert_eq!(
        (first["from_phase"].as_u64(), first["to_phase"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(first["forced"], true);
    let fenced_change = changes
        .iter()
        .find(|c| c["from_phase"] == 3 && c["to_phase"] == 4)
        .unwrap();
    assert!(fenced_change["fence_ms"].is_u64(), "{fenced_change}");
    let table = dev.operator(&["phase", "history", "--limit", "2"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.starts_with("GEN  MOVE"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 3, "{}", table.stdout);

    // Phase 5 is terminal.
    let back = dev.operator(&["phase", "set", "4", "--reason", "undo", "--force"]);
    assert_eq!(back.code, 3, "{}", back.stderr);
}

#[tokio::test]
async fn a_stale_generation_is_a_conflict_and_nothing_moves() {
    let dev = Dev::start().await;
    let generation = dev.operator(&["phase", "get", "--json"]).json()["generation"]
        .as_u64()
        .unwrap();
    let stale = (generation - 1).to_string();
    let conflict = dev.operator(&[
        "phase", "set", "1", "--expect", &stale, "--reason", "r", "--force", "--json",
    ]);
    assert_eq!(conflict.code, 4, "{}", conflict.stderr);
    assert_eq!(conflict.json()["error"]["problem"], "phase-conflict");
    let now = dev.operator(&["phase", "get", "--json"]).json();
    assert_eq!(now["phase"], 0);
    assert_eq!(now["generation"].as_u64(), Some(generation));
}

#[tokio::test]
async fn tokens_that_are_missing_wrong_or_of_the_gateway_are_unauthorised() {
    let dev = Dev::start().await;
    let url = &dev.admin_url;
    let none = admin(url, None, &["phase", "get"]);
    assert_eq!(none.code, 5, "{}", none.stderr);
    assert!(
        none.stderr.starts_with("idbase admin: unauthorised"),
        "{}",
        none.stderr
    );
    assert_eq!(admin(url, Some("not-a-token"), &["phase", "get"]).code, 5);
    // dev's gateway credential may watch and report, nothing else.
    let gateway_token =
        std::fs::read_to_string(dev.data_dir.path().join("gateway-admin-token")).unwrap();
    let gateway = admin(
        url,
        Some(gateway_token.trim()),
        &["phase", "set", "1", "--reason", "r", "--force"],
    );
    assert_eq!(gateway.code, 5, "{}", gateway.stderr);
    // The token from a file works as well as from the environment.
    let file = dev.data_dir.path().join("operator-token");
    std::fs::write(&file, &dev.operator_token).unwrap();
    let from_file = admin(
        url,
        None,
        &["--admin-token-file", file.to_str().unwrap(), "phase", "get"],
    );
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);
}

#[test]
fn an_admin_port_nobody_listens_on_is_unreachable() {
    let url = format!("http://{}", free_addr().unwrap());
    let ran = admin(&url, Some("token"), &["phase", "get", "--json"]);
    assert_eq!(ran.code, 6, "{}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("cannot reach idsvc's admin port"),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.json()["error"]["kind"], "unreachable");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["phase", "set", "1"][..],
        &["phase", "set", "9", "--reason", "r"],
        &["phase", "check", "2", "--weight", "0"],
    ] {
        let ran = admin("http://127.0.0.1:1", Some("token"), args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.stderr);
    }
}

#[tokio::test]
async fn support_looks_a_member_up_reveals_revokes_and_every_call_is_in_the_events() {
    let dev = Dev::start_with(false).await;
    let credentials: Value = serde_json::from_str(
        &std::fs::read_to_string(dev.data_dir.path().join("dev-credentials.json")).unwrap(),
    )
    .unwrap();
    let web = credentials["clients"]["web"].as_str().unwrap();
    let http = reqwest::Client::new();
    let password = "correct horse battery";
    let registered: Value = http
        .post(format!("{}/v1/users", dev.gateway_url))
        .header("Client-Token", web)
        .json(&serde_json::json!({
            "email": "hanako@example.com", "password": password, "phone": "090-1234-5678"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The API carries ids as strings (JavaScript clients lose precision past 2^53).
    let id = registered["id"].as_str().unwrap().to_owned();
    let login = http
        .post(format!("{}/v1/sessions", dev.gateway_url))
        .header("Client-Token", web)
        .json(&serde_json::json!({"email": "hanako@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert!(login.status().is_success());
    let tokens: Value = login.json().await.unwrap();

    // Masked, with the session the web client opened.
    let found = dev.operator(&[
        "user",
        "lookup",
        "--phone",
        "+81 90-1234-5678",
        "--reason",
        "ticket 4711",
        "--json",
    ]);
    assert_eq!(found.code, 0, "{}", found.stderr);
    let found = found.json();
    assert_eq!(found["member_id"].to_string(), id, "{found}");
    assert_eq!(found["email_masked"], "h****@example.com");
    assert_eq!(found["phone_masked"], "+81 ** **** **78");
    assert_eq!(found["sessions"][0]["client"], "web", "{found}");
    let text = dev.operator(&[
        "user",
        "lookup",
        "--email",
        "HANAKO@example.com",
        "--reason",
        "r",
    ]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("email      h****@example.com"),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains("hanako@"), "{}", text.stdout);

    // A reveal needs a reason: refused by the command line before idsvc.
    let no_reason = dev.operator(&["user", "reveal", &id]);
    assert_eq!(no_reason.code, 2, "{}", no_reason.stderr);
    let blank = dev.operator(&["user", "reveal", &id, "--reason", "  "]);
    assert_eq!(blank.code, 2, "{}", blank.stderr);
    let revealed = dev.operator(&["user", "reveal", &id, "--reason", "member asked", "--json"]);
    assert_eq!(revealed.code, 0, "{}", revealed.stderr);
    assert_eq!(revealed.json()["email"], "hanako@example.com");
    let unknown = dev.operator(&["user", "lookup", "--id", "999999", "--reason", "r"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no member matches"),
        "{}",
        unknown.stderr
    );

    // Revoked: the member's refresh token stops working at once.
    let revoked = dev.operator(&["user", "revoke", &id, "--all", "--reason", "lost phone"]);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert!(
        revoked.stdout.starts_with("revoked 1 live session"),
        "{}",
        revoked.stdout
    );
    let refresh = http
        .post(format!("{}/v1/tokens/refresh", dev.gateway_url))
        .header("Client-Token", web)
        .json(&serde_json::json!({"refresh_token": tokens["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh.status(), 401);

    // dev's gateway reported that traffic: the fleet view has it by side and kind.
    let fleet = fleet_traffic(&dev).await;
    let idbase = |kind: &str| -> u64 {
        fleet
            .series
            .iter()
            .filter(|s| s.side == "idbase" && s.kind == kind)
            .flat_map(|s| &s.points)
            .map(|p| p.requests)
            .sum()
    };
    assert!(idbase("write") >= 1 && idbase("read") >= 1, "{fleet:?}");
    assert!(idbase("token") >= 1, "the refused refresh: {fleet:?}");

    // Every call is in the events with who made it and why; a cursor resumes.
    let events = dev.operator(&[
        "events",
        "--kind",
        "admin_call",
        "--level",
        "info",
        "--json",
    ]);
    assert_eq!(events.code, 0, "{}", events.stderr);
    let lines: Vec<Value> = events
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let detail = |d: &str| lines.iter().any(|e| e["detail"] == d);
    assert!(
        detail("who=dev rpc=LookupUser outcome=ok reason=ticket 4711"),
        "{lines:#?}"
    );
    assert!(
        detail("who=dev rpc=RevealUser outcome=ok reason=member asked"),
        "{lines:#?}"
    );
    assert!(
        detail("who=dev rpc=RevokeSessions outcome=ok reason=lost phone"),
        "{lines:#?}"
    );
    let last = lines.last().unwrap()["cursor"]
        .as_u64()
        .unwrap()
        .to_string();
    let after = dev.operator(&["events", "--since", &last, "--kind", "admin_call", "--json"]);
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert!(
        after.stdout.lines().all(|l| !l.contains("RevokeSessions")),
        "{}",
        after.stdout
    );
}

/// dev's fleet traffic once its gateway reported the requests made so far
/// (reports go every 500 ms; idsvc writes them each second).
async fn fleet_traffic(dev: &Dev) -> idbase_proto::v1::FleetTrafficResponse {
    use idbase_proto::v1::FleetTrafficRequest;
    use idbase_proto::v1::admin_client::AdminClient;
    let channel = tonic::transport::Channel::from_shared(dev.admin_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AdminClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut request = tonic::Request::new(FleetTrafficRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", dev.operator_token).parse().unwrap(),
        );
        let fleet = client.fleet_traffic(request).await.unwrap().into_inner();
        let kinds = fleet.series.iter().filter(|s| s.side == "idbase").count();
        if kinds >= 3 || Instant::now() > deadline {
            return fleet;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn events_follow_prints_what_happens_as_it_happens() {
    use std::io::{BufRead, BufReader};
    let dev = Dev::start().await;
    let mut follow = Process(
        Command::new(binary())
            .args([
                "admin",
                "--admin-url",
                &dev.admin_url,
                "events",
                "--follow",
                "--json",
            ])
            .args(["--kind", "phase_refused", "--backlog", "1"])
            .env("IDBASE_ADMIN_TOKEN", &dev.operator_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = follow.0.stdout.take().unwrap();
    // Legacy does not answer in this dev: the move is refused, and says so.
    let refused = dev.operator(&["phase", "set", "1", "--reason", "double writes on"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(10), line)
        .await
        .expect("no event within 10 s")
        .unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["kind"], "phase_refused", "{event}");
    assert_eq!(event["level"], "warn");
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("who=dev 0 legacy → 1 double-write")
            && detail.contains("legacy-reachable"),
        "{detail}"
    );
}
