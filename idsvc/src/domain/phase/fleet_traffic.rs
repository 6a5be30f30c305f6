//! The fleet's member traffic: what every gateway reports it answered, by
//! side (legacy or idbase) and route kind, as outcome counts and latency
//! buckets that add up across gateways and time. Each replica adds the
//! reports it receives in memory and writes them each second into 5-second
//! slots shared by the fleet; the phase screen reads them back as series.

use crate::domain::{Clock, Millis, Result, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Upper bounds (ms) of the latency buckets; one more bucket holds the rest.
pub const LATENCY_BOUNDS_MS: [u32; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
/// The stored resolution.
pub const SLOT_SECS: i64 = 5;
/// How long slots are kept: a day of phase screens and analyses.
pub const RETENTION_SECS: i64 = 24 * 60 * 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficSide {
    Legacy,
    Idbase,
}

impl TrafficSide {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Idbase => "idbase",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Legacy, Self::Idbase]
            .into_iter()
            .find(|side| side.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    Read,
    Write,
    Token,
    DoubleWrite,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Token => "token",
            Self::DoubleWrite => "double-write",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Read, Self::Write, Self::Token, Self::DoubleWrite]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// Requests by outcome and latency bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: u64,
    pub unauthorized: u64,
    pub not_found: u64,
    pub throttled: u64,
    pub client_error: u64,
    pub server_error: u64,
    pub buckets: [u64; BUCKETS],
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.ok = self.ok.saturating_add(other.ok);
        self.unauthorized = self.unauthorized.saturating_add(other.unauthorized);
        self.not_found = self.not_found.saturating_add(other.not_found);
        self.throttled = self.throttled.saturating_add(other.throttled);
        self.client_error = self.client_error.saturating_add(other.client_error);
        self.server_error = self.server_error.saturating_add(other.server_error);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.saturating_add(theirs);
        }
    }

    pub fn requests(&self) -> u64 {
        [
            self.ok,
            self.unauthorized,
            self.not_found,
            self.throttled,
            self.client_error,
            self.server_error,
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }

    /// The upper bound of the bucket holding the 99th percentile: `None`
    /// without samples, `Some(0)` past the last bound.
    pub fn p99_ms(&self) -> Option<u32> {
        let total: u64 = self.buckets.iter().fold(0, |a, b| a.saturating_add(*b));
        if total == 0 {
            return None;
        }
        // The smallest bucket with at least 99% of samples at or below it.
        let needed = total - total / 100;
        let mut seen = 0u64;
        for (i, count) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(*count);
            if seen >= needed {
                return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(0));
            }
        }
        Some(0)
    }
}

/// Where a tally belongs: a slot's start (Unix seconds), side and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrafficKey {
    pub slot: i64,
    pub side: TrafficSide,
    pub kind: RouteKind,
}

/// One series of the fleet view: a side and kind, a tally per step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub side: TrafficSide,
    pub kind: RouteKind,
    /// (step start in Unix ms, tally), oldest first, every step of the window.
    pub points: Vec<(Millis, Tally)>,
}

pub struct FleetTraffic {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Reports received and not yet written; keyed by enums and the slot of
    /// this replica's clock, so a flush each second keeps it a few entries.
    pending: Mutex<HashMap<TrafficKey, Tally>>,
}

impl FleetTraffic {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn slot_of(ms: Millis) -> i64 {
        ms.div_euclid(1000).div_euclid(SLOT_SECS) * SLOT_SECS
    }

    /// Adds a gateway's tally to the current slot.
    pub fn add(&self, side: TrafficSide, kind: RouteKind, tally: &Tally) {
        let key = TrafficKey {
            slot: Self::slot_of(self.clock.now_ms()),
            side,
            kind,
        };
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.entry(key).or_default().add(tally);
    }

    /// Writes what was added since the last flush; what could not be
    /// written is kept for the next.
    pub async fn flush(&self) -> Result<()> {
        let taken: Vec<(TrafficKey, Tally)> = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.drain().collect()
        };
        let mut failed = None;
        for (i, (key, tally)) in taken.iter().enumerate() {
            if let Err(err) = self.store.add_fleet_traffic(key, tally).await {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                for (key, tally) in &taken[i..] {
                    pending.entry(*key).or_default().add(tally);
                }
                failed = Some(err);
                break;
            }
        }
        match failed {
            Some(err) => Err(err.into()),
            None => Ok(()),
        }
    }

    /// Deletes slots past the retention.
    pub async fn purge(&self) -> Result<u64> {
        let before = Self::slot_of(self.clock.now_ms()) - RETENTION_SECS;
        Ok(self.store.purge_fleet_traffic(before).await?)
    }

    /// The fleet's traffic over the last `window_s` in steps of `step_s`
    /// (a multiple of the slot), one series per side and kind seen.
    pub async fn series(&self, window_s: i64, step_s: i64) -> Result<Vec<Series>> {
        let step = (step_s / SLOT_SECS).max(1) * SLOT_SECS;
        let now = self.clock.now_ms().div_euclid(1000);
        let end = now.div_euclid(step) * step + step;
        let steps = (window_s / step).max(1);
        let start = end - steps * step;
        let rows = self.store.fleet_traffic_since(start).await?;
        let mut series: Vec<Series> = Vec::new();
        for (key, tally) in rows {
            let Ok(index) = usize::try_from((key.slot - start).div_euclid(step)) else {
                continue;
            };
            let position = series
                .iter()
                .position(|s| s.side == key.side && s.kind == key.kind);
            let position = position.unwrap_or_else(|| {
                series.push(Series {
                    side: key.side,
                    kind: key.kind,
                    points: (0..steps)
                        .map(|i| ((start + i * step) * 1000, Tally::default()))
                        .collect(),
                });
                series.len() - 1
            });
            if let Some((_, point)) = series[position].points.get_mut(index) {
                point.add(&tally);
            }
        }
        series.sort_by_key(|s| (s.side, s.kind));
        Ok(series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_is_the_bound_of_the_bucket_that_holds_it() {
        let mut tally = Tally::default();
        assert_eq!(tally.p99_ms(), None);
        tally.buckets[3] = 990; // ≤ 10 ms
        tally.buckets[6] = 10; // ≤ 100 ms
        assert_eq!(tally.p99_ms(), Some(10));
        tally.buckets[6] = 11;
        assert_eq!(tally.p99_ms(), Some(100));
        tally.buckets[12] = 100;
        assert_eq!(tally.p99_ms(), Some(0), "past the last bound");
        let mut merged = Tally::default();
        merged.add(&tally);
        merged.add(&tally);
        assert_eq!(merged.buckets[3], 1980);
        assert_eq!(merged.p99_ms(), tally.p99_ms());
    }
}
