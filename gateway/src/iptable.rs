//! Per-source-IP state with a hard memory bound, shared by the WAF's rate
//! rules and login-anomaly detection (and, keyed by token hash, the cache
//! of verified access tokens).
//!
//! Client input chooses the keys, so the table is sharded (little lock
//! contention), capped per shard, and entries expire: a full shard first drops
//! expired entries, and if an attack with millions of distinct addresses still
//! fills it, half of the shard is dropped. Forgetting a counter lets an
//! address start afresh — the price of never growing without limit (AWS WAF
//! likewise tracks a bounded number of addresses per rate rule).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

const SHARDS: usize = 64;

/// Entries know when they are no longer worth keeping.
pub trait Expiring {
    fn expired(&self, now_ms: u64) -> bool;
}

/// Keyed by source address; other keys chosen by clients (e.g. the access
/// tokens the gateway has verified) use the same bounded table.
pub type IpTable<E> = BoundedTable<IpAddr, E>;

pub struct BoundedTable<K, E> {
    shards: Box<[Mutex<HashMap<K, E>>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl<K: Hash + Eq, E: Expiring + Default> BoundedTable<K, E> {
    /// A table holding at most about `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, HashMap<K, E>> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // A panic while holding a shard leaves plain values: still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the entry of `key`, creating it (within the bound) if new.
    pub fn update<R>(&self, key: K, now_ms: u64, f: impl FnOnce(&mut E) -> R) -> R {
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, entry| !entry.expired(now_ms));
            if shard.len() >= self.per_shard {
                let mut keep = false;
                shard.retain(|_, _| {
                    keep = !keep;
                    keep
                });
                metrics::counter!("idbase_iptable_evictions_total").increment(1);
            }
        }
        f(shard.entry(key).or_default())
    }

    /// Runs `f` on the entry of `key` if there is one; never inserts.
    pub fn peek<R>(&self, key: K, f: impl FnOnce(&mut E) -> R) -> Option<R> {
        self.shard(&key).get_mut(&key).map(f)
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A count over a sliding window, estimated from the current and previous
/// fixed windows (the previous one weighted by how much of it still overlaps
/// the sliding window): two integers instead of a timestamp per event.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlidingCount {
    window: u64,
    current: u64,
    previous: u64,
}

impl SlidingCount {
    fn roll(&mut self, now_ms: u64, window_ms: u64) {
        let window = now_ms / window_ms;
        if window == self.window {
            return;
        }
        self.previous = if window == self.window + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.window = window;
    }

    pub fn add(&mut self, now_ms: u64, window_ms: u64, n: u64) {
        self.roll(now_ms, window_ms);
        self.current = self.current.saturating_add(n);
    }

    /// Events in the last `window_ms`.
    pub fn estimate(&mut self, now_ms: u64, window_ms: u64) -> u64 {
        self.roll(now_ms, window_ms);
        let into = now_ms % window_ms;
        let overlap =
            (self.previous as u128 * u128::from(window_ms - into)) / u128::from(window_ms);
        self.current.saturating_add(overlap as u64)
    }

    /// Nothing counted within the last window.
    pub fn idle(&self, now_ms: u64, window_ms: u64) -> bool {
        now_ms / window_ms > self.window + 1 || (self.current == 0 && self.previous == 0)
    }

    /// Milliseconds until the current fixed window ends.
    pub fn until_next_window(now_ms: u64, window_ms: u64) -> u64 {
        window_ms - now_ms % window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Hit(u64);
    impl Expiring for Hit {
        fn expired(&self, now_ms: u64) -> bool {
            self.0 + 1000 < now_ms
        }
    }

    #[test]
    fn a_flood_of_distinct_addresses_stays_within_the_bound() {
        let table = IpTable::<Hit>::new(10_000);
        for i in 0..1_000_000u32 {
            table.update(IpAddr::from(i.to_be_bytes()), 0, |hit| hit.0 = 0);
        }
        let bound = 10_000usize.div_ceil(SHARDS) * SHARDS;
        assert!(table.len() <= bound, "{} > {bound}", table.len());
        assert!(table.len() > bound / 4);
    }

    #[test]
    fn expired_entries_go_first() {
        let table = IpTable::<Hit>::new(SHARDS);
        let old: IpAddr = "192.0.2.1".parse().unwrap();
        table.update(old, 0, |hit| hit.0 = 0);
        for i in 0..10_000u32 {
            table.update(IpAddr::from(i.to_be_bytes()), 5000, |hit| hit.0 = 5000);
        }
        assert!(table.peek(old, |_| ()).is_none());
    }

    #[test]
    fn sliding_count_weights_the_previous_window() {
        let mut count = SlidingCount::default();
        count.add(0, 1000, 100);
        assert_eq!(count.estimate(999, 1000), 100);
        // Half of the previous window still overlaps.
        assert_eq!(count.estimate(1500, 1000), 50);
        assert_eq!(count.estimate(2000, 1000), 0);
        count.add(5000, 1000, 3);
        assert_eq!(count.estimate(5000, 1000), 3);
    }
}
