//! The phase's storage, the same on every backend: created once,
//! compare-and-set on the generation (one winner of a race), history, and
//! the gateways' heartbeats.

use crate::harness::{Backend, Harness};
use idsvc::domain::Store;
use idsvc::domain::phase::{GatewayReport, Phase, PhaseChange, PhaseState, PhaseSwap};

on_both_backends!(
    the_phase_row_is_created_once,
    swaps_compare_the_generation_and_keep_history,
    of_concurrent_swaps_from_one_generation_exactly_one_wins,
    gateway_reports_are_replaced_and_read_by_age,
);

fn state(phase: Phase, generation: u64, key: u8) -> PhaseState {
    PhaseState {
        phase,
        weight: 100,
        generation,
        write_fence: false,
        ramp_key: vec![key; 32],
        changed_at: 1_000,
        changed_by: "idsvc".to_owned(),
    }
}

fn change(generation: u64, from: Phase, to: Phase, who: &str) -> PhaseChange {
    PhaseChange {
        generation,
        from_phase: from,
        to_phase: to,
        from_weight: 100,
        to_weight: 100,
        who: who.to_owned(),
        at: 2_000 + generation as i64,
        reason: format!("move {generation}"),
        forced: false,
        automatic: false,
        fence_ms: None,
    }
}

async fn the_phase_row_is_created_once(backend: Backend) {
    let h = Harness::new(backend).await;
    assert_eq!(h.store.phase_state().await.unwrap(), None);
    let first = h
        .store
        .create_phase_state(&state(Phase::Legacy, 1, 7))
        .await
        .unwrap();
    assert_eq!(first, state(Phase::Legacy, 1, 7));
    // A second replica starting later keeps the first one's ramp key.
    let second = h
        .store
        .create_phase_state(&state(Phase::Legacy, 1, 9))
        .await
        .unwrap();
    assert_eq!(second.ramp_key, vec![7; 32]);
    assert_eq!(h.store.phase_state().await.unwrap(), Some(first));
}

async fn swaps_compare_the_generation_and_keep_history(backend: Backend) {
    let h = Harness::new(backend).await;
    h.store
        .create_phase_state(&state(Phase::Legacy, 1, 7))
        .await
        .unwrap();
    let mut next = state(Phase::DoubleWrite, 2, 7);
    next.changed_by = "alice".to_owned();
    let moved = change(2, Phase::Legacy, Phase::DoubleWrite, "alice");
    let swap = |expected, next, change| PhaseSwap {
        expected_generation: expected,
        next,
        change,
        lifted: None,
    };
    assert!(h.store.swap_phase(swap(1, &next, &moved)).await.unwrap());
    // The same generation again: stale, nothing written.
    let mut other = state(Phase::Legacy, 2, 7);
    other.changed_by = "bob".to_owned();
    let stale = change(2, Phase::Legacy, Phase::Legacy, "bob");
    assert!(!h.store.swap_phase(swap(1, &other, &stale)).await.unwrap());
    assert_eq!(h.store.phase_state().await.unwrap(), Some(next.clone()));

    // A fenced move, then its lift fills in the fence's duration.
    let mut fenced = state(Phase::InternalReads, 3, 7);
    fenced.write_fence = true;
    fenced.weight = 40;
    let mut raise = change(3, Phase::DoubleWrite, Phase::InternalReads, "alice");
    raise.to_weight = 40;
    raise.forced = true;
    assert!(h.store.swap_phase(swap(2, &fenced, &raise)).await.unwrap());
    let lifted = PhaseState {
        generation: 4,
        write_fence: false,
        ..fenced.clone()
    };
    let mut lift = change(4, Phase::InternalReads, Phase::InternalReads, "idsvc");
    lift.automatic = true;
    let lifting = PhaseSwap {
        lifted: Some((3, 1234)),
        ..swap(3, &lifted, &lift)
    };
    assert!(h.store.swap_phase(lifting).await.unwrap());

    let history = h.store.phase_history(10).await.unwrap();
    let generations: Vec<u64> = history.iter().map(|c| c.generation).collect();
    assert_eq!(generations, [4, 3, 2]);
    assert_eq!(history[0], lift);
    assert_eq!(
        history[1],
        PhaseChange {
            fence_ms: Some(1234),
            ..raise
        }
    );
    assert_eq!(history[2], moved);
    assert_eq!(h.store.phase_history(1).await.unwrap().len(), 1);
    assert_eq!(h.store.phase_state().await.unwrap(), Some(lifted));
}

async fn of_concurrent_swaps_from_one_generation_exactly_one_wins(backend: Backend) {
    let h = Harness::new(backend).await;
    h.store
        .create_phase_state(&state(Phase::Legacy, 1, 7))
        .await
        .unwrap();
    let racers = (0..8).map(|i| {
        let store = h.store.clone();
        tokio::spawn(async move {
            let who = format!("operator-{i}");
            let mut next = state(Phase::DoubleWrite, 2, 7);
            next.changed_by = who.clone();
            let change = change(2, Phase::Legacy, Phase::DoubleWrite, &who);
            let swap = PhaseSwap {
                expected_generation: 1,
                next: &next,
                change: &change,
                lifted: None,
            };
            (who.clone(), store.swap_phase(swap).await.unwrap())
        })
    });
    let results = futures::future::join_all(racers).await;
    let winners: Vec<String> = results
        .into_iter()
        .map(Result::unwrap)
        .filter(|(_, won)| *won)
        .map(|(who, _)| who)
        .collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = h.store.phase_state().await.unwrap().unwrap();
    assert_eq!(stored.changed_by, winners[0]);
    let history = h.store.phase_history(10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].who, winners[0]);
}

async fn gateway_reports_are_replaced_and_read_by_age(backend: Backend) {
    let h = Harness::new(backend).await;
    let report = |id: &str, generation, at| GatewayReport {
        gateway_id: id.to_owned(),
        generation,
        writes_in_flight: 2,
        endpoints_total: 3,
        endpoints_serving: 2,
        legacy_reachable: Some(true),
        reported_at: at,
    };
    h.store
        .record_gateway_report(&report("gw-a", 1, 1_000))
        .await
        .unwrap();
    h.store
        .record_gateway_report(&report("gw-b", 1, 1_000))
        .await
        .unwrap();
    let mut newer = report("gw-a", 5, 9_000);
    newer.legacy_reachable = None;
    newer.writes_in_flight = 0;
    h.store.record_gateway_report(&newer).await.unwrap();
    assert_eq!(
        h.store.gateway_reports(5_000).await.unwrap(),
        [newer.clone()]
    );
    assert_eq!(h.store.gateway_reports(0).await.unwrap().len(), 2);
    assert_eq!(h.store.purge_gateway_reports(5_000).await.unwrap(), 1);
    assert_eq!(h.store.gateway_reports(0).await.unwrap(), [newer]);
}
