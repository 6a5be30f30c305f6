//! Admission of new connections: a cap per source address (per network for
//! IPv6) and a global cap below the descriptor limit. When the global cap is
//! reached, the connection closest to its idle or header deadline — one that
//! serves no request — is shed to make room; only when every connection is
//! busy is the new one refused.

use super::tracked::ConnState;
use crate::iptable::source_key;
use crate::waf::source_ip::TrustedProxies;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was not admitted (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    PerAddress,
    Full,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::PerAddress => "per_address",
            Self::Full => "full",
        }
    }
}

/// The open connections of every listener of the process (they share the
/// descriptor table).
pub struct Registry {
    max_connections: usize,
    max_per_address: usize,
    ipv6_prefix: u8,
    /// Proxies (the ALB) carry many clients on their connections: no
    /// per-address cap for them, only the global one.
    trusted: TrustedProxies,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Arc<ConnState>>,
    per_address: HashMap<IpAddr, usize>,
}

impl Registry {
    pub fn new(
        max_connections: usize,
        max_per_address: usize,
        ipv6_prefix: u8,
        trusted: TrustedProxies,
    ) -> Self {
        Self {
            max_connections: max_connections.max(1),
            max_per_address: max_per_address.max(1),
            ipv6_prefix,
            trusted,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `peer`, shedding an idle one if the process
    /// is at its cap. The returned guard keeps the slot until dropped.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        state: Arc<ConnState>,
    ) -> Result<Admitted, Refusal> {
        let peer = source_key(peer, 128);
        let capped = !self.trusted.trusts(peer);
        let key = source_key(peer, self.ipv6_prefix);
        let mut inner = self.lock();
        if capped && inner.per_address.get(&key).copied().unwrap_or(0) >= self.max_per_address {
            return Err(Refusal::PerAddress);
        }
        if inner.open.len() >= self.max_connections {
            let victim = inner
                .open
                .values()
                .filter_map(|conn| conn.deadline().map(|deadline| (deadline, conn)))
                .filter(|(_, conn)| !conn.shed.is_cancelled())
                .min_by_key(|(deadline, _)| *deadline)
                .map(|(_, conn)| conn.clone());
            match victim {
                Some(victim) if victim.claim_for_shedding() => {
                    victim.shed.cancel();
                    metrics::counter!("idbase_http_connections_shed_total").increment(1);
                }
                _ => return Err(Refusal::Full),
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, state);
        if capped {
            *inner.per_address.entry(key).or_default() += 1;
        }
        metrics::gauge!("idbase_http_connections").set(inner.open.len() as f64);
        Ok(Admitted {
            registry: self.clone(),
            id,
            key: capped.then_some(key),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// A connection's slot; dropping it frees the slot.
pub struct Admitted {
    registry: Arc<Registry>,
    id: u64,
    key: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.open.remove(&self.id);
        if let Some(key) = self.key
            && let Some(count) = inner.per_address.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                inner.per_address.remove(&key);
            }
        }
        metrics::gauge!("idbase_http_connections").set(inner.open.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn conn() -> Arc<ConnState> {
        Arc::new(ConnState::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
        ))
    }

    #[tokio::test]
    async fn one_ipv6_64_shares_a_cap_and_proxies_are_not_capped() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let registry = Arc::new(Registry::new(100, 2, 64, trusted));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let _one = registry.admit(a, conn()).unwrap();
        let two = registry.admit(b, conn()).unwrap();
        assert_eq!(registry.admit(a, conn()).err(), Some(Refusal::PerAddress));
        drop(two);
        let _three = registry.admit(b, conn()).unwrap();
        let alb: IpAddr = "10.1.2.3".parse().unwrap();
        let proxied: Vec<_> = (0..5)
            .map(|_| registry.admit(alb, conn()).unwrap())
            .collect();
        assert_eq!(registry.open(), 7);
        drop(proxied);
        assert_eq!(registry.open(), 2);
    }

    #[tokio::test]
    async fn a_full_registry_sheds_an_idle_connection_and_refuses_when_all_are_busy() {
        let registry = Arc::new(Registry::new(2, 10, 64, TrustedProxies::default()));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (idle, busy) = (conn(), conn());
        let _idle = registry.admit(ip, idle.clone()).unwrap();
        let _busy = registry.admit(ip, busy.clone()).unwrap();
        let _request = busy.begin();
        let third = conn();
        let _third = registry.admit(ip, third.clone()).unwrap();
        assert!(idle.shed.is_cancelled());
        assert!(!busy.shed.is_cancelled());
        let _also_busy = third.begin();
        assert_eq!(registry.admit(ip, conn()).err(), Some(Refusal::Full));
    }
}
