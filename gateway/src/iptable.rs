//! Per-source-IP state with a hard memory bound, shared by the WAF's rate
//! rules and login-anomaly detection (and, keyed by token hash, the cache
//! of verified access tokens).
//!
//! Client input chooses the keys, so the table is sharded (little lock
//! contention), capped per shard, and entries expire. A full shard first drops
//! expired entries; if an attack with millions of distinct addresses still
//! fills it, the least active half of the shard goes: lowest
//! [`Expiring::activity`] (e.g. requests in the current window), then fewest
//! updates (counted per entry and halved at every eviction so that old
//! activity fades, as in TinyLFU's reset). A flood of fresh addresses therefore evicts itself, and
//! the busiest (most suspicious) counters survive it. Forgetting a counter
//! lets an address start afresh — the price of never growing without limit
//! (AWS WAF likewise tracks a bounded number of addresses per rate rule).
//!
//! IPv6 sources are keyed by their network ([`source_key`]): one subscriber
//! usually holds a whole /64, so a /128 key would give an attacker 2^64 fresh
//! counters.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

const SHARDS: usize = 64;

/// IPv6 prefix length that per-address state is keyed by: the /64 an ISP
/// hands one subscriber (RFC 6177), as AWS WAF and Cloudflare aggregate.
pub const DEFAULT_IPV6_PREFIX_LEN: u8 = 64;

/// The key per-address state uses for `ip`: IPv4 as is (an IPv4-mapped IPv6
/// address as its IPv4 address), IPv6 truncated to its first `ipv6_prefix`
/// bits (128 keys each address on its own).
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

type Shard<K, E> = HashMap<K, Slot<E>>;

/// An entry and how often it was touched since the shard's last eviction.
struct Slot<E> {
    hits: u32,
    entry: E,
}

/// Entries know when they are no longer worth keeping.
pub trait Expiring {
    fn expired(&self, now_ms: u64) -> bool;

    /// How much this entry matters now (e.g. its requests in the current
    /// window); a full shard evicts the lowest first. Entries that do not say
    /// are ranked by how often they were touched.
    fn activity(&self, _now_ms: u64) -> u64 {
        0
    }
}

/// Keyed by source address; other keys chosen by clients (e.g. the access
/// tokens the gateway has verified) use the same bounded table.
pub type IpTable<E> = BoundedTable<IpAddr, E>;

pub struct BoundedTable<K, E> {
    shards: Box<[Mutex<Shard<K, E>>]>,
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

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, Shard<K, E>> {
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
            shard.retain(|_, slot| !slot.entry.expired(now_ms));
            if shard.len() >= self.per_shard {
                evict_least_active(&mut shard, now_ms);
                metrics::counter!("idbase_iptable_evictions_total").increment(1);
            }
        }
        let slot = shard.entry(key).or_insert_with(|| Slot {
            hits: 0,
            entry: E::default(),
        });
        slot.hits = slot.hits.saturating_add(1);
        f(&mut slot.entry)
    }

    /// Runs `f` on the entry of `key` if there is one; never inserts.
    pub fn peek<R>(&self, key: K, f: impl FnOnce(&mut E) -> R) -> Option<R> {
        self.shard(&key)
            .get_mut(&key)
            .map(|slot| f(&mut slot.entry))
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

/// Drops the less active half of a full shard and halves the survivors'
/// counts, so that an entry busy long ago does not stay forever.
fn evict_least_active<K: Hash + Eq, E: Expiring>(shard: &mut Shard<K, E>, now_ms: u64) {
    let rank = |slot: &Slot<E>| (slot.entry.activity(now_ms), slot.hits);
    let mut ranks: Vec<(u64, u32)> = shard.values().map(rank).collect();
    let half = ranks.len() / 2;
    let (_, &mut median, _) = ranks.select_nth_unstable(half);
    // Entries below the median go; ties at the median go only as far as
    // needed to free half, so a flood of equal newcomers still makes room.
    let mut gone = ranks.iter().filter(|&&r| r < median).count();
    shard.retain(|_, slot| {
        let r = rank(slot);
        if r < median {
            return false;
        }
        if r == median && gone < half {
            gone += 1;
            return false;
        }
        slot.hits = (slot.hits / 2).max(1);
        true
    });
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

    /// Requests in a 60 s window, like a WAF rate rule's entry.
    #[derive(Default)]
    struct Rate(SlidingCount);
    impl Expiring for Rate {
        fn expired(&self, now_ms: u64) -> bool {
            self.0.idle(now_ms, 60_000)
        }
        fn activity(&self, now_ms: u64) -> u64 {
            let mut count = self.0;
            count.estimate(now_ms, 60_000)
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
    fn a_flood_of_fresh_addresses_does_not_evict_a_busy_one() {
        let table = IpTable::<Rate>::new(SHARDS * 16);
        let busy: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..1000 {
            table.update(busy, 0, |rate| rate.0.add(0, 60_000, 1));
        }
        for i in 0..100_000u32 {
            let fresh = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            table.update(fresh, 1000, |rate| rate.0.add(1000, 60_000, 1));
        }
        let count = table.peek(busy, |rate| rate.0.estimate(2000, 60_000));
        assert_eq!(count, Some(1000), "busy counter reset");
    }

    #[test]
    fn ipv6_is_keyed_by_its_network() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a, 64), source_key(b, 64));
        assert_ne!(source_key(a, 64), source_key(other, 64));
        assert_eq!(source_key(a, 56), source_key(other, 56));
        assert_ne!(source_key(a, 128), source_key(b, 128));
        assert_eq!(source_key(a, 0), IpAddr::from(Ipv6Addr::UNSPECIFIED));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            source_key(mapped, 64),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
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
