//! The Phases admin service over a real gRPC connection on loopback: admin
//! tokens and roles, compare-and-set, checks and force, the history, the
//! watch stream (this replica's changes at once, another replica's within a
//! poll, keepalives), the write fence and its lift, and the audit trail.

use crate::harness::{Backend, Harness};
use axum::http::{HeaderMap, StatusCode};
use idbase_proto::v1 as pb;
use idbase_proto::v1::phases_client::PhasesClient;
use idsvc::AdminConfig;
use idsvc::domain::Store;
use idsvc::domain::phase::PhaseSettings;
use idsvc::grpc::credentials::{AdminCredentials, token_sha256_hex};
use idsvc::legacy::HttpLegacy;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub(crate) const ALICE: &str = "alice-operator-token";
pub(crate) const EVE: &str = "eve-viewer-token";
pub(crate) const GATEWAY_TOKEN: &str = GATEWAY;
pub(crate) const SAM: &str = "sam-support-token";
const GATEWAY: &str = "gateway-token";
const EXPIRED: &str = "old-operator-token";
const LEGACY_TOKEN: &str = "legacy-secret";

on_both_backends!(
    tokens_and_roles_gate_every_call_and_every_call_is_audited,
    moves_compare_the_generation_and_pass_their_checks_or_are_forced,
    watchers_see_changes_at_once_from_any_replica_and_keepalives_between,
    the_write_fence_lifts_once_every_live_gateway_follows,
    the_move_to_5_waits_until_legacy_is_quiet,
    moves_into_2_to_4_need_every_proxied_write_double_written,
    moves_into_2_to_4_need_shadow_reads_to_agree_when_they_ran,
    a_replica_keeps_the_heartbeats_it_received_in_bounded_memory,
    a_replica_that_cannot_read_the_phase_stops_vouching_for_it,
);

fn credentials() -> AdminCredentials {
    let entry = |name: &str, role: &str, token: &str, expires: &str| {
        format!(
            "[[admin]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n{expires}\n",
            token_sha256_hex(token)
        )
    };
    let text = [
        entry("alice", "operator", ALICE, ""),
        entry("eve", "viewer", EVE, ""),
        entry("sam", "support", SAM, ""),
        entry("gw", "gateway", GATEWAY, ""),
        entry(
            "old",
            "operator",
            EXPIRED,
            "expires = \"2020-01-01T00:00:00Z\"",
        ),
    ]
    .concat();
    AdminCredentials::parse(&text).unwrap()
}

/// A legacy API answering health and its highest member id, to callers
/// that present its token.
async fn legacy(max_id: Arc<AtomicI64>) -> String {
    use axum::routing::get;
    let authorised = |headers: &HeaderMap| {
        headers
            .get("Idbase-Gateway-Token")
            .is_some_and(|v| v == LEGACY_TOKEN)
    };
    let app = axum::Router::new()
        .route(
            "/legacy/v1/health",
            get(move |headers: HeaderMap| async move {
                if authorised(&headers) {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .route(
            "/legacy/v1/members/max-id",
            get(move |headers: HeaderMap| async move {
                if !authorised(&headers) {
                    return Err(StatusCode::UNAUTHORIZED);
                }
                Ok(axum::Json(
                    serde_json::json!({"max_id": max_id.load(Ordering::SeqCst)}),
                ))
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn settings() -> PhaseSettings {
    PhaseSettings {
        keepalive: Duration::from_millis(1500),
        poll: Duration::from_millis(25),
        report_ttl: Duration::from_millis(1500),
        native_id_start: 1_000_000,
        native_id_margin: 1_000,
        validation_max_age: Duration::from_secs(3600),
        legacy_quiet: Duration::from_secs(3600),
        parity_window: Duration::from_secs(600),
        ..PhaseSettings::default()
    }
}

/// Records a `migrate validate` run that finished `ago`, as the job does
/// (by the wall clock, which the phase service reads too).
async fn validated(h: &Harness, passed: bool, ago: Duration) {
    use idsvc::domain::{Clock, SystemClock};
    use idsvc::migration::MigrationStore;
    use idsvc::migration::validation::ValidationReport;
    let finished_at_ms = SystemClock.now_ms() - i64::try_from(ago.as_millis()).unwrap();
    let report = ValidationReport {
        started_at_ms: finished_at_ms - 5_000,
        finished_at_ms,
        source_rows: 1_000,
        matched: if passed { 1_000 } else { 997 },
        different: if passed { 0 } else { 3 },
        failures: if passed { 0 } else { 3 },
        passed,
        ..ValidationReport::default()
    };
    h.store.save_validation(&report).await.unwrap();
}

/// idsvc on loopback over the harness's store; the admin port's URL.
pub(crate) async fn serve(
    h: &Harness,
    legacy_url: Option<&str>,
    shutdown: &CancellationToken,
) -> String {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let legacy = legacy_url.map(|url| {
        let dir = h.store_dir().join("legacy-token");
        std::fs::write(&dir, format!("{LEGACY_TOKEN}\n")).unwrap();
        Arc::new(HttpLegacy::new(url, Some(&dir), None).unwrap())
            as Arc<dyn idsvc::domain::phase::LegacyProbe>
    });
    let config = AdminConfig {
        credentials: credentials(),
        phase: settings(),
        legacy,
    };
    tokio::spawn(idsvc::serve(
        h.shared_service(),
        grpc,
        admin,
        idsvc::grpc::Transport::Plaintext,
        None,
        config,
        shutdown.clone(),
    ));
    admin_url
}

async fn client(url: &str) -> PhasesClient<Channel> {
    for _ in 0..50 {
        if let Ok(channel) = Channel::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
        {
            return PhasesClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} never answered");
}

pub(crate) fn as_<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn problem(status: &Status) -> &str {
    status
        .metadata()
        .get("idbase-problem")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

fn set(target: u32, weight: u32, expected: u64, reason: &str) -> pb::SetPhaseRequest {
    pb::SetPhaseRequest {
        target,
        weight,
        expected_generation: expected,
        force: false,
        reason: reason.to_owned(),
    }
}

/// One check of the move to `target` at `weight`: passing, and its figure.
async fn check_of(
    c: &mut PhasesClient<Channel>,
    target: u32,
    weight: u32,
    name: &str,
) -> (bool, String) {
    let checked = c
        .check_phase(as_(EVE, pb::CheckPhaseRequest { target, weight }))
        .await
        .unwrap()
        .into_inner();
    let check = checked.checks.into_iter().find(|c| c.name == name).unwrap();
    (check.pass, check.figure)
}

/// idsvc with a legacy behind it and one gateway reporting, moved to
/// phase 1 (double writes): where the guardrails of moves into 2–4 start.
async fn in_double_write(h: &Harness, shutdown: &CancellationToken) -> PhasesClient<Channel> {
    let legacy_url = legacy(Arc::new(AtomicI64::new(5_000))).await;
    let mut c = client(&serve(h, Some(&legacy_url), shutdown).await).await;
    c.report_phase(as_(GATEWAY, report("gw-1", 1, 0)))
        .await
        .unwrap();
    c.set_phase(as_(ALICE, set(1, 0, 1, "double writes on")))
        .await
        .unwrap();
    c
}

/// A move refused by its checks, naming `failing` (a check and its figure).
fn assert_refused_by(refused: &Status, failing: &str) {
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(failing), "{}", refused.message());
}

pub(crate) fn report(id: &str, generation: u64, writes_in_flight: u32) -> pb::PhaseReport {
    pb::PhaseReport {
        gateway_id: id.to_owned(),
        generation,
        writes_in_flight,
        idsvc: vec![pb::EndpointHealth {
            url: "http://idsvc-0:50051".to_owned(),
            serving: true,
        }],
        legacy_reachable: Some(true),
        legacy_writes: 0,
        traffic: vec![],
    }
}

async fn get(c: &mut PhasesClient<Channel>) -> pb::PhaseState {
    c.get_phase(as_(EVE, pb::GetPhaseRequest {}))
        .await
        .unwrap()
        .into_inner()
}

async fn tokens_and_roles_gate_every_call_and_every_call_is_audited(backend: Backend) {
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let mut c = client(&serve(&h, None, &shutdown).await).await;

    let refused = c.get_phase(pb::GetPhaseRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    for token in ["nope", EXPIRED] {
        let refused = c
            .get_phase(as_(token, pb::GetPhaseRequest {}))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{token}: {refused:?}"
        );
    }
    let first = get(&mut c).await;
    assert_eq!((first.phase, first.weight, first.generation), (0, 100, 1));
    assert!(!first.write_fence);
    assert_eq!(first.ramp_key.len(), 32);
    assert_eq!(first.keepalive_ms, 1500);

    // A viewer reads but does not move; a gateway watches and reports only.
    let denied = c
        .set_phase(as_(EVE, set(1, 0, 1, "try")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = c
        .get_phase(as_(GATEWAY, pb::GetPhaseRequest {}))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    for person in [EVE, ALICE] {
        let denied = c
            .report_phase(as_(person, report("gw-1", 1, 0)))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    }
    c.report_phase(as_(GATEWAY, report("gw-1", 1, 0)))
        .await
        .unwrap();
    let bad = c
        .report_phase(as_(GATEWAY, report("", 1, 0)))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    c.phase_history(as_(EVE, pb::PhaseHistoryRequest { limit: 0 }))
        .await
        .unwrap();

    // Without legacy configured, its check fails: refused, unless forced.
    let refused = c
        .set_phase(as_(ALICE, set(1, 0, 1, "start")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(problem(&refused), "phase-refused");
    assert!(
        refused
            .message()
            .contains("legacy-reachable (legacy not configured)"),
        "{}",
        refused.message()
    );
    let forced = c
        .set_phase(as_(
            ALICE,
            pb::SetPhaseRequest {
                force: true,
                ..set(1, 0, 1, "legacy checked by hand")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forced.state.unwrap().generation, 2);
    let history = c
        .phase_history(as_(EVE, pb::PhaseHistoryRequest { limit: 5 }))
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(history.len(), 1);
    assert!(history[0].forced && !history[0].automatic);
    assert_eq!(history[0].who, "alice");
    assert_eq!(history[0].reason, "legacy checked by hand");

    let audit = h.store.security_events(100).await.unwrap();
    let audited = |detail: &str| {
        audit
            .iter()
            .any(|e| e.kind == "admin_call" && e.detail == detail)
    };
    assert!(
        audit.iter().any(|e| e.kind == "phase_change"
            && e.detail
                .starts_with("who=alice 0 legacy → 1 double-write weight 100 ")
            && e.detail.contains(" forced=true ")
            && e.detail.ends_with(" reason=legacy checked by hand")),
        "{audit:#?}"
    );
    for detail in [
        "who=- rpc=GetPhase outcome=Unauthenticated",
        "who=old rpc=GetPhase outcome=Unauthenticated",
        "who=eve rpc=SetPhase outcome=PermissionDenied",
        "who=gw rpc=GetPhase outcome=PermissionDenied",
        "who=eve rpc=GetPhase outcome=ok",
        "who=gw rpc=ReportPhase outcome=InvalidArgument",
        "who=alice rpc=SetPhase outcome=FailedPrecondition",
        "who=alice rpc=SetPhase outcome=ok",
        "who=eve rpc=PhaseHistory outcome=ok",
    ] {
        assert!(audited(detail), "{detail} not in {audit:#?}");
    }
    // No token or secret reaches the trail.
    assert!(audit.iter().all(|e| !e.detail.contains("token")));
    shutdown.cancel();
}

async fn moves_compare_the_generation_and_pass_their_checks_or_are_forced(backend: Backend) {
    let h = Harness::new(backend).await;
    let max_id = Arc::new(AtomicI64::new(999_500));
    let legacy_url = legacy(Arc::clone(&max_id)).await;
    let shutdown = CancellationToken::new();
    let mut c = client(&serve(&h, Some(&legacy_url), &shutdown).await).await;

    // No live gateway: 0→1 is refused, naming the check.
    let refused = c
        .set_phase(as_(ALICE, set(1, 0, 1, "go")))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("gateways-reporting"),
        "{}",
        refused.message()
    );
    c.report_phase(as_(GATEWAY, report("gw-1", 1, 0)))
        .await
        .unwrap();
    let checked = c
        .check_phase(as_(
            EVE,
            pb::CheckPhaseRequest {
                target: 1,
                weight: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(checked.ready, "{checked:?}");
    let names: Vec<&str> = checked.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "transition-allowed",
            "idsvc-endpoints-serving",
            "gateways-reporting",
            "legacy-reachable"
        ]
    );
    assert_eq!(
        checked.checks[1].figure,
        "1/1 endpoints SERVING as 1 live gateway(s) see them"
    );

    let moved = c
        .set_phase(as_(ALICE, set(1, 0, 1, "double writes on")))
        .await
        .unwrap();
    let moved = moved.into_inner();
    assert_eq!(moved.state.as_ref().unwrap().generation, 2);
    assert_eq!(moved.checks.len(), 4);
    // A stale generation changes nothing.
    let stale = c
        .set_phase(as_(ALICE, set(0, 0, 1, "back")))
        .await
        .unwrap_err();
    assert_eq!(
        (stale.code(), problem(&stale)),
        (Code::Aborted, "phase-conflict")
    );
    // Skipping a phase is refused, forced or not; force needs a reason.
    let skip = pb::SetPhaseRequest {
        force: true,
        ..set(3, 0, 2, "skip")
    };
    let skipped = c.set_phase(as_(ALICE, skip)).await.unwrap_err();
    assert_eq!(skipped.code(), Code::FailedPrecondition);
    assert!(
        skipped.message().contains("transition-allowed"),
        "{}",
        skipped.message()
    );
    let unexplained = c
        .set_phase(as_(ALICE, set(2, 10, 2, "  ")))
        .await
        .unwrap_err();
    assert_eq!(unexplained.code(), Code::InvalidArgument);
    let long = c
        .set_phase(as_(ALICE, set(2, 10, 2, &"x".repeat(501))))
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument);

    // Into 2 only after a recent passing validation: none, a failed one,
    // a passing one too old; the figure says which.
    let validation =
        async |c: &mut PhasesClient<Channel>| check_of(c, 2, 10, "validation-passed").await;
    assert_eq!(
        validation(&mut c).await,
        (false, "no `idbase migrate validate` recorded".to_owned())
    );
    let refused = c
        .set_phase(as_(ALICE, set(2, 10, 2, "internal reads for 10%")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("validation-passed"),
        "{}",
        refused.message()
    );
    validated(&h, false, Duration::from_secs(600)).await;
    assert_eq!(
        validation(&mut c).await,
        (
            false,
            "failed, finished 10 min ago (at most 60 min): 1000 legacy rows, 0 missing, 0 extra, \
             3 different"
                .to_owned()
        )
    );
    validated(&h, true, Duration::from_secs(2 * 3600)).await;
    assert_eq!(
        validation(&mut c).await,
        (
            false,
            "passed, finished 2 h ago (at most 60 min, too old): 1000 legacy rows, \
             0 missing, 0 extra, 0 different"
                .to_owned()
        )
    );
    validated(&h, true, Duration::from_secs(60)).await;
    assert!(validation(&mut c).await.0);

    // Ramped: 2 at 10 %, then 100 %, then 3.
    c.set_phase(as_(ALICE, set(2, 10, 2, "internal reads for 10%")))
        .await
        .unwrap();
    let ramp = get(&mut c).await;
    assert_eq!((ramp.phase, ramp.weight, ramp.generation), (2, 10, 3));
    let early = c
        .set_phase(as_(ALICE, set(3, 0, 3, "too early")))
        .await
        .unwrap_err();
    assert!(
        early.message().contains("finish the ramp"),
        "{}",
        early.message()
    );
    c.set_phase(as_(ALICE, set(2, 100, 3, "all internal")))
        .await
        .unwrap();
    c.report_phase(as_(GATEWAY, report("gw-1", 4, 0)))
        .await
        .unwrap();
    c.set_phase(as_(ALICE, set(3, 0, 4, "all reads")))
        .await
        .unwrap();

    // 3→4: legacy's ids come too close to the native range.
    let checked = c
        .check_phase(as_(
            EVE,
            pb::CheckPhaseRequest {
                target: 4,
                weight: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!checked.ready);
    let margin = checked
        .checks
        .iter()
        .find(|c| c.name == "id-range-margin")
        .unwrap();
    assert!(!margin.pass);
    assert_eq!(
        margin.figure,
        "legacy max id 999500 + margin 1000 ≥ native id start 1000000"
    );
    max_id.store(5_000, Ordering::SeqCst);
    let checked = c
        .check_phase(as_(
            EVE,
            pb::CheckPhaseRequest {
                target: 4,
                weight: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(checked.ready, "{checked:?}");

    // Rolling back runs no checks but the transition's.
    let checked = c
        .check_phase(as_(
            EVE,
            pb::CheckPhaseRequest {
                target: 2,
                weight: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.checks.len(), 1);
    assert!(checked.ready);
    assert_eq!(checked.from_phase, 3);
    shutdown.cancel();
}

async fn the_move_to_5_waits_until_legacy_is_quiet(backend: Backend) {
    use idsvc::domain::phase::LegacyTraffic::{DoubleWrite, TokenExchange};
    use idsvc::domain::{Clock, SystemClock};
    let h = Harness::new(backend).await;
    let legacy_url = legacy(Arc::new(AtomicI64::new(5_000))).await;
    let shutdown = CancellationToken::new();
    let mut c = client(&serve(&h, Some(&legacy_url), &shutdown).await).await;
    validated(&h, true, Duration::ZERO).await;
    for (target, generation) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
        c.report_phase(as_(GATEWAY, report("gw-1", generation, 0)))
            .await
            .unwrap();
        c.set_phase(as_(ALICE, set(target, 0, generation, "on")))
            .await
            .unwrap();
    }
    // The gateway follows 4's fenced generation: lifted as generation 6.
    c.report_phase(as_(GATEWAY, report("gw-1", 5, 0)))
        .await
        .unwrap();
    c.report_phase(as_(GATEWAY, report("gw-1", 6, 0)))
        .await
        .unwrap();
    let quiet = async |c: &mut PhasesClient<Channel>| check_of(c, 5, 0, "legacy-quiet").await;
    assert_eq!(
        quiet(&mut c).await,
        (
            true,
            "last double write never, last legacy token exchange never \
             (both at least 60 min ago)"
                .to_owned()
        )
    );
    // Counted by the wall clock's second, as idsvc counts double writes and exchanges.
    let ago = |minutes: i64| (SystemClock.now_ms() - minutes * 60_000).div_euclid(1000);
    let count = async |kind, second| {
        h.store.count_legacy_traffic(kind, second, 1).await.unwrap();
    };
    count(TokenExchange, ago(180)).await;
    count(DoubleWrite, ago(120)).await;
    assert_eq!(
        quiet(&mut c).await,
        (
            true,
            "last double write 2 h ago, last legacy token exchange 3 h ago \
             (both at least 60 min ago)"
                .to_owned()
        )
    );
    count(DoubleWrite, ago(10)).await;
    assert_eq!(
        quiet(&mut c).await,
        (
            false,
            "last double write 10 min ago, last legacy token exchange 3 h ago \
             (both at least 60 min ago)"
                .to_owned()
        )
    );
    let refused = c
        .set_phase(as_(ALICE, set(5, 0, 6, "legacy retired")))
        .await
        .unwrap_err();
    assert_refused_by(&refused, "legacy-quiet (last double write 10 min ago");
    // An operator who knows why (a batch job still writing to legacy,
    // switched off now) forces it, and the history says so.
    let forced = pb::SetPhaseRequest {
        force: true,
        ..set(5, 0, 6, "legacy's nightly batch was the writer; it is off")
    };
    c.set_phase(as_(ALICE, forced)).await.unwrap();
    let history = c
        .phase_history(as_(EVE, pb::PhaseHistoryRequest { limit: 1 }))
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!((history[0].to_phase, history[0].forced), (5, true));
    shutdown.cancel();
}

async fn moves_into_2_to_4_need_every_proxied_write_double_written(backend: Backend) {
    use idsvc::domain::phase::LegacyTraffic::DoubleWrite;
    use idsvc::domain::{Clock, SystemClock};
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let mut c = in_double_write(&h, &shutdown).await;
    validated(&h, true, Duration::ZERO).await;
    assert_eq!(
        check_of(&mut c, 2, 100, "double-write-parity").await,
        (
            true,
            "0 double writes received ≥ 0 member writes proxied to legacy in the last 10 min"
                .to_owned()
        )
    );
    // The gateways proxied 5 writes legacy acknowledged; 4 came back.
    for (gateway, writes) in [("gw-1", 3), ("gw-2", 2)] {
        let heartbeat = pb::PhaseReport {
            legacy_writes: writes,
            ..report(gateway, 2, 0)
        };
        c.report_phase(as_(GATEWAY, heartbeat)).await.unwrap();
    }
    let now = SystemClock.now_ms().div_euclid(1000);
    h.store
        .count_legacy_traffic(DoubleWrite, now, 4)
        .await
        .unwrap();
    // Outside the window (and its lead): not counted.
    h.store
        .count_legacy_traffic(DoubleWrite, now - 700, 50)
        .await
        .unwrap();
    assert_eq!(
        check_of(&mut c, 2, 100, "double-write-parity").await,
        (
            false,
            "4 double writes received < 5 member writes proxied to legacy in the last 10 min"
                .to_owned()
        )
    );
    let refused = c
        .set_phase(as_(ALICE, set(2, 100, 2, "internal reads")))
        .await
        .unwrap_err();
    assert_refused_by(&refused, "double-write-parity (4 double writes");
    // The lost one arrives (legacy's retry): parity, and the move.
    h.store
        .count_legacy_traffic(DoubleWrite, now, 1)
        .await
        .unwrap();
    assert!(check_of(&mut c, 2, 100, "double-write-parity").await.0);
    c.set_phase(as_(ALICE, set(2, 100, 2, "internal reads")))
        .await
        .unwrap();
    // A report cannot add without bound to the counts.
    let absurd = pb::PhaseReport {
        legacy_writes: 10_000_001,
        ..report("gw-1", 3, 0)
    };
    let refused = c.report_phase(as_(GATEWAY, absurd)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    shutdown.cancel();
}

async fn moves_into_2_to_4_need_shadow_reads_to_agree_when_they_ran(backend: Backend) {
    use idsvc::domain::phase::LegacyTraffic::{
        ShadowLogin, ShadowLoginMismatch, ShadowMe, ShadowMeMismatch,
    };
    use idsvc::domain::{Clock, SystemClock};
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let mut c = in_double_write(&h, &shutdown).await;
    let shadow_check =
        async |c: &mut PhasesClient<Channel>| check_of(c, 2, 100, "shadow-agreement").await;
    assert_eq!(
        shadow_check(&mut c).await,
        (true, "no shadow reads in the last 60 min".to_owned())
    );
    let minute_ago = SystemClock.now_ms().div_euclid(1000) - 60;
    let count = async |kind, n| {
        h.store
            .count_legacy_traffic(kind, minute_ago, n)
            .await
            .unwrap()
    };
    // Too few to say anything: 999 shadows, none of them `me`.
    count(ShadowLogin, 999).await;
    let (pass, figure) = shadow_check(&mut c).await;
    assert!(!pass, "{figure}");
    assert!(figure.contains("login 0/999, me 0/0"), "{figure}");
    // Enough of each kind, one mismatch in 2,000 logins: under 0.1%.
    count(ShadowLogin, 1001).await;
    count(ShadowMe, 100).await;
    count(ShadowLoginMismatch, 1).await;
    assert_eq!(
        shadow_check(&mut c).await,
        (
            true,
            "1 mismatches in 2100 shadow reads in the last 60 min (login 1/2000, me 0/100; \
             under 0.1% of at least 1000, 100 of each kind)"
                .to_owned()
        )
    );
    // One `me` mismatch in 100 `me` shadows is 1% of that kind.
    count(ShadowMeMismatch, 1).await;
    assert!(!shadow_check(&mut c).await.0);
    // Shadows from before the latest validation (the migration jobs had not
    // yet copied every member) do not count.
    validated(&h, true, Duration::ZERO).await;
    assert_eq!(
        shadow_check(&mut c).await,
        (
            true,
            "no shadow reads since the latest validation started 5 s ago".to_owned()
        )
    );
    shutdown.cancel();
}

async fn next_state(
    stream: &mut tonic::Streaming<pb::PhaseState>,
    within: Duration,
) -> pb::PhaseState {
    tokio::time::timeout(within, stream.message())
        .await
        .expect("a message in time")
        .unwrap()
        .unwrap()
}

async fn watchers_see_changes_at_once_from_any_replica_and_keepalives_between(backend: Backend) {
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let mut a = client(&serve(&h, None, &shutdown).await).await;
    let mut b = client(&serve(&h, None, &shutdown).await).await;
    let watch = pb::WatchPhaseRequest {
        watcher: "gw-1".to_owned(),
    };
    let mut stream = a
        .watch_phase(as_(GATEWAY, watch))
        .await
        .unwrap()
        .into_inner();
    let first = next_state(&mut stream, Duration::from_millis(500)).await;
    assert_eq!(first.generation, 1);
    a.report_phase(as_(GATEWAY, report("gw-1", 1, 0)))
        .await
        .unwrap();

    // Moved on this replica: pushed at once (long before a keepalive).
    let force = |target, generation| pb::SetPhaseRequest {
        force: true,
        ..set(target, 0, generation, "test")
    };
    a.set_phase(as_(ALICE, force(1, 1))).await.unwrap();
    let pushed = next_state(&mut stream, Duration::from_millis(1000)).await;
    assert_eq!((pushed.phase, pushed.generation), (1, 2));
    // Moved on the other replica: seen within its poll.
    b.set_phase(as_(ALICE, force(2, 2))).await.unwrap();
    let polled = next_state(&mut stream, Duration::from_millis(1000)).await;
    assert_eq!((polled.phase, polled.generation), (2, 3));
    // Quiet: the state again after the keepalive.
    let started = tokio::time::Instant::now();
    let repeated = next_state(&mut stream, Duration::from_millis(2500)).await;
    assert_eq!(repeated.generation, 3);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    shutdown.cancel();
}

async fn a_replica_that_cannot_read_the_phase_stops_vouching_for_it(backend: Backend) {
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let mut c = client(&serve(&h, None, &shutdown).await).await;
    let watch = pb::WatchPhaseRequest {
        watcher: "gw-1".to_owned(),
    };
    let mut stream = c
        .watch_phase(as_(GATEWAY, watch))
        .await
        .unwrap()
        .into_inner();
    next_state(&mut stream, Duration::from_millis(500)).await;
    let rename = async |from: &str, to: &str| {
        sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}"))
            .execute(h.store.pool())
            .await
            .unwrap();
    };
    // The database is out of reach for the phase: past two keepalives the
    // stream falls silent, so its gateways turn stale and pause writes.
    rename("phase_state", "phase_state_away").await;
    // A keepalive due right at two keepalives may still vouch (the last read
    // can land just after the rename): drain until half a keepalive later.
    let unread = tokio::time::Instant::now() + settings().keepalive * 5 / 2;
    while let Ok(Ok(Some(_))) = tokio::time::timeout_at(unread, stream.message()).await {}
    let silent = tokio::time::timeout(Duration::from_millis(2500), stream.message()).await;
    assert!(
        silent.is_err(),
        "a keepalive vouched for an unread phase: {silent:?}"
    );
    // Readable again: the keepalives come back.
    rename("phase_state_away", "phase_state").await;
    next_state(&mut stream, Duration::from_millis(2500)).await;
    shutdown.cancel();
}

async fn the_write_fence_lifts_once_every_live_gateway_follows(backend: Backend) {
    let h = Harness::new(backend).await;
    let legacy_url = legacy(Arc::new(AtomicI64::new(5_000))).await;
    let shutdown = CancellationToken::new();
    let mut c = client(&serve(&h, Some(&legacy_url), &shutdown).await).await;
    let report_all = async |c: &mut PhasesClient<Channel>, generation, writes| {
        for id in ["gw-1", "gw-2"] {
            c.report_phase(as_(GATEWAY, report(id, generation, writes)))
                .await
                .unwrap();
        }
    };
    report_all(&mut c, 1, 0).await;
    validated(&h, true, Duration::ZERO).await;
    for (target, generation) in [(1, 1), (2, 2), (3, 3)] {
        c.set_phase(as_(ALICE, set(target, 0, generation, "on")))
            .await
            .unwrap();
    }
    let moved = c
        .set_phase(as_(ALICE, set(4, 0, 4, "writes to idbase")))
        .await
        .unwrap();
    let fenced = moved.into_inner().state.unwrap();
    assert_eq!(
        (fenced.phase, fenced.generation, fenced.write_fence),
        (4, 5, true)
    );

    // One gateway still routes by the old generation, then one has a write
    // in flight: the fence stays.
    report_all(&mut c, 4, 0).await;
    c.report_phase(as_(GATEWAY, report("gw-1", 5, 0)))
        .await
        .unwrap();
    c.report_phase(as_(GATEWAY, report("gw-2", 5, 1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state = get(&mut c).await;
    assert!(state.write_fence && state.generation == 5, "{state:?}");
    // Both follow with nothing in flight: lifted, as a new generation.
    c.report_phase(as_(GATEWAY, report("gw-2", 5, 0)))
        .await
        .unwrap();
    let lifted = get(&mut c).await;
    assert_eq!(
        (lifted.phase, lifted.generation, lifted.write_fence),
        (4, 6, false)
    );
    assert_eq!(lifted.changed_by, "idsvc");
    let history = c
        .phase_history(as_(EVE, pb::PhaseHistoryRequest { limit: 2 }))
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert!(history[0].automatic && history[0].who == "idsvc" && history[0].generation == 6);
    assert!(history[0].fence_ms.is_none());
    assert_eq!((history[1].from_phase, history[1].to_phase), (3, 4));
    assert!(
        history[1].fence_ms.is_some_and(|ms| ms >= 100),
        "{:?}",
        history[1]
    );

    // Rolled back (fenced again); the gateways go quiet, so once their
    // reports age out the lifter lifts it with nobody to wait for.
    let last_report = tokio::time::Instant::now();
    report_all(&mut c, 6, 0).await;
    c.set_phase(as_(ALICE, set(3, 0, 6, "roll back writes")))
        .await
        .unwrap();
    assert!(get(&mut c).await.write_fence);
    let lifted = loop {
        let state = get(&mut c).await;
        if !state.write_fence {
            break state;
        }
        assert!(
            last_report.elapsed() < Duration::from_secs(8),
            "the fence never lifted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((lifted.phase, lifted.generation), (3, 8));
    // Not before the last report aged past the TTL (1.5 s).
    let after = last_report.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "lifted after {after:?}"
    );
    shutdown.cancel();
}

async fn a_replica_keeps_the_heartbeats_it_received_in_bounded_memory(backend: Backend) {
    use idsvc::domain::phase::{GatewayReport, PhaseService};
    let h = Harness::new(backend).await;
    let phases = PhaseService::start(h.store.clone(), h.clock.clone(), settings(), None)
        .await
        .unwrap();
    let heartbeat = |id: String| GatewayReport {
        gateway_id: id,
        generation: 1,
        writes_in_flight: 0,
        endpoints_total: 1,
        endpoints_serving: 1,
        legacy_reachable: None,
        reported_at: 0,
    };
    let clear_table = async || {
        sqlx::query("DELETE FROM gateway_reports")
            .execute(h.store.pool())
            .await
            .unwrap();
    };
    phases
        .report(heartbeat("gw-1".into()), 0, &[])
        .await
        .unwrap();
    // The table lost it (another replica's view, a lagging reader): this
    // replica still knows the gateway it heard from.
    clear_table().await;
    let live = phases.live_gateways().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].gateway_id, "gw-1");
    assert_eq!(live[0].reported_at, idsvc::domain::Clock::now_ms(&*h.clock));
    // A heartbeat past the TTL is not live.
    h.clock.advance(Duration::from_millis(1600));
    assert!(phases.live_gateways().await.unwrap().is_empty());

    // Far more gateways than a fleet: memory holds a bounded number.
    for i in 0..1100 {
        phases
            .report(heartbeat(format!("gw-{i}")), 0, &[])
            .await
            .unwrap();
    }
    assert_eq!(
        phases.live_gateways().await.unwrap().len(),
        1100,
        "the table has all"
    );
    clear_table().await;
    assert_eq!(phases.live_gateways().await.unwrap().len(), 1024);
    // Once those age out, new gateways take their place.
    h.clock.advance(Duration::from_millis(1600));
    phases
        .report(heartbeat("gw-new".into()), 0, &[])
        .await
        .unwrap();
    clear_table().await;
    let live = phases.live_gateways().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].gateway_id, "gw-new");
}
