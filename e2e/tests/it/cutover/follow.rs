//! Phase propagation: two gateways follow a move within 50 ms; a SetPhase at
//! a stale generation is refused; with idsvc gone the gateways keep the last
//! phase for reads and pause writes once the phase is stale, and resume when
//! idsvc is back.

use super::{Api, Class, Session, Side, start};
use e2e::cutover::{pb, readyz, tonic, wait_generation};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

/// The slowest acceptable propagation of a move to every gateway.
const FOLLOW_WITHIN: Duration = Duration::from_millis(50);

/// Writes pause this long after the last word from idsvc.
const STALE_AFTER_MS: &str = "600";

#[tokio::test]
async fn two_gateways_follow_a_move_within_50_ms() {
    let cutover = start(2, &[]).await;
    let urls = cutover.gateway_urls();
    let mut admin = cutover.admin().await.unwrap();
    let mut lags = Vec::new();
    for (target, weight) in [(1, 100), (2, 10), (2, 50), (2, 100), (3, 100)] {
        cutover.wait_checks(target, weight).await.unwrap();
        let current = admin
            .get_phase(pb::GetPhaseRequest {})
            .await
            .unwrap()
            .into_inner();
        let moved = admin
            .set_phase(pb::SetPhaseRequest {
                target,
                weight,
                expected_generation: current.generation,
                force: false,
                reason: format!("e2e: follow to {target} at {weight}%"),
            })
            .await
            .unwrap()
            .into_inner();
        let generation = moved.state.unwrap().generation;
        assert!(generation > current.generation);
        let lag = wait_generation(&urls, generation, Duration::from_secs(5))
            .await
            .unwrap();
        lags.push((target, weight, lag));
        if target == 1 {
            // The moves into 2 and 3 need a passing validation.
            cutover.migrate_members().unwrap();
        }
        for url in &urls {
            let ready = readyz(&reqwest::Client::new(), url).await.unwrap();
            assert_eq!(
                (ready.phase, ready.weight),
                (Some(target), Some(weight)),
                "{url}: {ready:?}"
            );
        }
    }
    eprintln!("propagation to both gateways: {lags:?}");
    for (target, weight, lag) in &lags {
        assert!(
            *lag <= FOLLOW_WITHIN,
            "the move to {target} at {weight}% reached both gateways after {lag:?}: {lags:?}"
        );
    }
}

#[tokio::test]
async fn a_move_at_a_stale_generation_is_refused() {
    let cutover = start(1, &[]).await;
    cutover.wait_checks(1, 100).await.unwrap();
    let state = cutover.phase().await.unwrap();
    let request = |target: u32| pb::SetPhaseRequest {
        target,
        weight: 100,
        expected_generation: state.generation,
        force: false,
        reason: "e2e: racing operators".into(),
    };
    // Two operators move at once from the generation both read: one wins.
    let (mut first, mut second) = (
        cutover.admin().await.unwrap(),
        cutover.admin().await.unwrap(),
    );
    let (a, b) = tokio::join!(first.set_phase(request(1)), second.set_phase(request(1)));
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won.into_inner(), lost),
        other => panic!("exactly one of two moves at one generation succeeds: {other:?}"),
    };
    assert_eq!(won.state.unwrap().phase, 1);
    assert_eq!(lost.code(), tonic::Code::Aborted, "{lost:?}");
    assert_eq!(
        lost.metadata().get("idbase-problem").unwrap(),
        "phase-conflict"
    );
    // And later, a stale generation still changes nothing.
    let stale = cutover
        .admin()
        .await
        .unwrap()
        .set_phase(request(2))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
    let now = cutover.phase().await.unwrap();
    assert_eq!((now.phase, now.generation), (1, state.generation + 1));
}

#[tokio::test]
async fn without_idsvc_reads_go_on_and_writes_pause_until_it_is_back() {
    let mut cutover = start(2, &["--phase-stale-after-ms", STALE_AFTER_MS]).await;
    cutover.move_to(1, 100).await.unwrap();
    cutover.migrate_members().unwrap();
    cutover.move_to(2, 100).await.unwrap();
    let api = Api::new(&cutover.gateways[1].url, &cutover.tokens);
    let login = api
        .login(
            Class::Web,
            &e2e::cutover::seeded_email(3),
            &e2e::cutover::seeded_password(3),
        )
        .await;
    assert_eq!(
        (login.status, login.side),
        (StatusCode::OK, Side::Legacy),
        "{login:?}"
    );
    let session = Session::from(&login);
    let patch = |phone: &'static str| json!({"phone": phone, "current_password": e2e::cutover::seeded_password(3)});

    cutover.kill_idsvc().unwrap();
    let killed = Instant::now();
    // Reads in phase 2 are legacy's: they go on, before and after the phase
    // goes stale; writes pause once it is stale.
    let paused = loop {
        let me = api.me(Class::Web, Some(&session.access)).await;
        assert_eq!(
            (me.status, me.side),
            (StatusCode::OK, Side::Legacy),
            "{me:?}"
        );
        let write = api
            .patch_me(Class::Web, Some(&session.access), patch("090-1111-0000"))
            .await;
        if write.status == StatusCode::SERVICE_UNAVAILABLE && write.side == Side::Idbase {
            break write;
        }
        // Until then legacy takes the write and fails it: its double write
        // through the gateway finds no idsvc.
        assert_eq!(
            (write.status, write.side),
            (StatusCode::SERVICE_UNAVAILABLE, Side::Legacy),
            "before the phase is stale: {write:?}"
        );
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "writes were not paused 10 s after idsvc died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(paused.problem(), Some("writes-paused"), "{paused:?}");
    assert!(paused.retry_after.is_some(), "{paused:?}");
    let ready = readyz(&api.http, &api.url).await.unwrap();
    assert_eq!(ready.phase, Some(2), "{ready:?}");
    // Stale counts from idsvc's last message (a keepalive a second), not
    // from the kill.
    let stale_after: u64 = STALE_AFTER_MS.parse().unwrap();
    assert!(
        ready.stale_ms.is_some_and(|ms| ms >= stale_after),
        "{ready:?}"
    );
    let me = api.me(Class::Web, Some(&session.access)).await;
    assert_eq!(
        (me.status, me.side),
        (StatusCode::OK, Side::Legacy),
        "{me:?}"
    );
    let login = api
        .login(
            Class::Mobile,
            &e2e::cutover::seeded_email(4),
            &e2e::cutover::seeded_password(4),
        )
        .await;
    assert_eq!(
        (login.status, login.side),
        (StatusCode::OK, Side::Legacy),
        "{login:?}"
    );
    // Both gateways pause writes.
    let other = Api::new(&cutover.gateways[0].url, &cutover.tokens);
    let write = other
        .patch_me(Class::Web, Some(&session.access), patch("090-1111-2222"))
        .await;
    assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE, "{write:?}");
    assert_eq!(write.problem(), Some("writes-paused"));

    cutover.restart_idsvc().await.unwrap();
    let restarted = Instant::now();
    loop {
        let write = api
            .patch_me(Class::Web, Some(&session.access), patch("090-1111-3333"))
            .await;
        if write.status == StatusCode::OK {
            assert_eq!(write.side, Side::Legacy);
            break;
        }
        assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE, "{write:?}");
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "writes still paused 15 s after idsvc came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let me = api.me(Class::Web, Some(&session.access)).await;
    assert!(
        me.body["phone"]
            .as_str()
            .is_some_and(|p| p.ends_with("11113333")),
        "{me:?}"
    );
}
