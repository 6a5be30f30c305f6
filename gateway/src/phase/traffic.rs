//! The member traffic this gateway answered, by side and route kind, as
//! outcome counts and latency buckets: reported to idsvc with each
//! heartbeat, where the fleet's tallies add up (the phase screen's traffic,
//! the guardrails' figures). Atomics in a fixed table: two increments per
//! request, no lock, no allocation.

use super::route::Route;
use axum::http::StatusCode;
use idbase_proto::v1 as pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (ms) of the latency buckets (phases.proto's TrafficTally).
const BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
const BUCKETS: usize = BOUNDS_MS.len() + 1;
const OUTCOMES: usize = 6;
const SIDES: [&str; 2] = ["legacy", "idbase"];
const KINDS: [&str; 4] = ["read", "write", "token", "double-write"];

#[derive(Default)]
struct Cell {
    outcomes: [AtomicU64; OUTCOMES],
    buckets: [AtomicU64; BUCKETS],
}

#[derive(Default)]
pub struct TrafficCounter {
    cells: [[Cell; KINDS.len()]; SIDES.len()],
}

fn kind_of(route: Route) -> usize {
    match route {
        Route::Login | Route::MeGet => 0,
        Route::Register | Route::MePatch | Route::MeDelete => 1,
        Route::Refresh | Route::Revoke => 2,
        Route::InternalPut | Route::InternalDelete => 3,
    }
}

fn outcome_of(status: StatusCode) -> usize {
    match status.as_u16() {
        401 => 1,
        404 => 2,
        429 => 3,
        400..=499 => 4,
        500..=599 => 5,
        _ => 0,
    }
}

fn bucket_of(elapsed: Duration) -> usize {
    let ms = elapsed.as_secs_f64() * 1000.0;
    BOUNDS_MS
        .iter()
        .position(|bound| ms <= *bound as f64)
        .unwrap_or(BOUNDS_MS.len())
}

impl TrafficCounter {
    /// Counts one answered request; `side` is who served it (`legacy` or
    /// `idbase`; the gateway's own answers are not traffic of either).
    pub fn record(&self, side: &str, route: Route, status: StatusCode, elapsed: Duration) {
        let Some(side) = SIDES.iter().position(|s| *s == side) else {
            return;
        };
        let cell = &self.cells[side][kind_of(route)];
        cell.outcomes[outcome_of(status)].fetch_add(1, Ordering::Relaxed);
        cell.buckets[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Everything counted since the last take, as report tallies.
    pub fn take(&self) -> Vec<pb::TrafficTally> {
        let mut tallies = Vec::new();
        for (side, row) in self.cells.iter().enumerate() {
            for (kind, cell) in row.iter().enumerate() {
                let o: Vec<u64> = cell
                    .outcomes
                    .iter()
                    .map(|n| n.swap(0, Ordering::AcqRel))
                    .collect();
                let buckets: Vec<u64> = cell
                    .buckets
                    .iter()
                    .map(|n| n.swap(0, Ordering::AcqRel))
                    .collect();
                if o.iter().chain(&buckets).all(|n| *n == 0) {
                    continue;
                }
                tallies.push(pb::TrafficTally {
                    side: SIDES[side].to_owned(),
                    kind: KINDS[kind].to_owned(),
                    ok: o[0],
                    unauthorized: o[1],
                    not_found: o[2],
                    throttled: o[3],
                    client_error: o[4],
                    server_error: o[5],
                    latency_buckets: buckets,
                });
            }
        }
        tallies
    }

    /// Puts back tallies a report could not deliver.
    pub fn restore(&self, tallies: &[pb::TrafficTally]) {
        for t in tallies {
            let side = SIDES.iter().position(|s| *s == t.side);
            let kind = KINDS.iter().position(|k| *k == t.kind);
            let (Some(side), Some(kind)) = (side, kind) else {
                continue;
            };
            let cell = &self.cells[side][kind];
            let outcomes = [
                t.ok,
                t.unauthorized,
                t.not_found,
                t.throttled,
                t.client_error,
                t.server_error,
            ];
            for (n, add) in cell.outcomes.iter().zip(outcomes) {
                n.fetch_add(add, Ordering::AcqRel);
            }
            for (n, add) in cell.buckets.iter().zip(&t.latency_buckets) {
                n.fetch_add(*add, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_side_kind_outcome_and_bucket() {
        let counter = TrafficCounter::default();
        let ms = Duration::from_millis;
        counter.record("idbase", Route::Login, StatusCode::OK, ms(3));
        counter.record("idbase", Route::MeGet, StatusCode::UNAUTHORIZED, ms(7));
        counter.record("legacy", Route::MePatch, StatusCode::BAD_GATEWAY, ms(6000));
        counter.record(
            "gateway",
            Route::Login,
            StatusCode::SERVICE_UNAVAILABLE,
            ms(1),
        );
        let tallies = counter.take();
        assert_eq!(tallies.len(), 2, "{tallies:?}");
        let legacy = tallies.iter().find(|t| t.side == "legacy").unwrap();
        assert_eq!((legacy.kind.as_str(), legacy.server_error), ("write", 1));
        assert_eq!(legacy.latency_buckets[12], 1);
        let idbase = tallies.iter().find(|t| t.side == "idbase").unwrap();
        assert_eq!(
            (idbase.kind.as_str(), idbase.ok, idbase.unauthorized),
            ("read", 1, 1)
        );
        assert_eq!(
            (idbase.latency_buckets[2], idbase.latency_buckets[3]),
            (1, 1)
        );
        assert!(counter.take().is_empty(), "taken once");
        counter.restore(&tallies);
        assert_eq!(counter.take(), tallies);
    }
}
