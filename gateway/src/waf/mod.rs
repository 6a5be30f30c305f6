//! The web application firewall: ordered rules from a TOML file (see
//! [`rules`]), re-read when the file changes. A file that does not parse or
//! validate is rejected with one error log line and the rules in force stay.

pub mod registration;
pub mod rules;
pub mod source_ip;

use crate::clock::Clock;
use anyhow::Context;
use rules::{Decision, RateState, RuleSet};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How often the rules file is checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Source addresses tracked per rate rule: bounds memory under a flood of
/// distinct addresses (about 100 bytes each).
pub const DEFAULT_RATE_CAPACITY: usize = 200_000;

pub struct Waf {
    path: PathBuf,
    clock: Clock,
    rate_capacity: usize,
    ipv6_prefix: u8,
    rules: RwLock<Arc<RuleSet>>,
    /// Digest of the file content last seen, loaded or rejected.
    seen: Mutex<[u8; 32]>,
}

impl Waf {
    /// Loads `path`; unlike a reload, a broken file here is a startup error.
    pub fn load(path: &Path, clock: Clock, rate_capacity: usize) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading WAF rules {}", path.display()))?;
        let rules = RuleSet::parse(&text, |_, window| {
            Arc::new(RateState::new(window, rate_capacity))
        })
        .map_err(|e| anyhow::anyhow!("WAF rules {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            clock,
            rate_capacity,
            ipv6_prefix: crate::iptable::DEFAULT_IPV6_PREFIX_LEN,
            rules: RwLock::new(Arc::new(rules)),
            seen: Mutex::new(Sha256::digest(text.as_bytes()).into()),
        })
    }

    /// Counts IPv6 sources per network of `len` bits in rate rules.
    pub fn with_ipv6_prefix(mut self, len: u8) -> Self {
        self.ipv6_prefix = len;
        self
    }

    pub fn evaluate(&self, ip: IpAddr, user_agent: &str) -> Decision {
        let rules = self
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let key = crate::iptable::source_key(ip, self.ipv6_prefix);
        rules.evaluate(ip, key, user_agent, self.clock.now_ms())
    }

    /// Re-reads the file if its content changed. `Ok(true)`: new rules are in
    /// force; `Err`: the file was rejected and the previous rules stay.
    pub fn check_for_change(&self) -> anyhow::Result<bool> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading WAF rules {}", self.path.display()))?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == digest {
                return Ok(false);
            }
            // Remembered even if rejected: one log line per bad edit.
            *seen = digest;
        }
        let current = self
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let kept: HashMap<(String, u64), Arc<RateState>> = current
            .rate_rules()
            .map(|(name, window, state)| ((name.to_owned(), window), state.clone()))
            .collect();
        let capacity = self.rate_capacity;
        let rules = RuleSet::parse(&text, |name, window| {
            kept.get(&(name.to_owned(), window))
                .cloned()
                .unwrap_or_else(|| Arc::new(RateState::new(window, capacity)))
        })
        .map_err(|e| anyhow::anyhow!("WAF rules {}: {e}", self.path.display()))?;
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        Ok(true)
    }

    /// Polls the file until `shutdown`, logging each reload or rejection.
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let waf = self.clone();
                match tokio::task::spawn_blocking(move || waf.check_for_change()).await {
                    Ok(Ok(true)) => {
                        metrics::counter!("idbase_waf_reloads_total", "result" => "ok")
                            .increment(1);
                        info!(file = %self.path.display(), "WAF rules reloaded");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        metrics::counter!("idbase_waf_reloads_total", "result" => "rejected")
                            .increment(1);
                        error!(
                            error = format!("{e:#}"),
                            "WAF rules rejected; previous rules stay in force"
                        );
                    }
                    Err(e) => error!(error = %e, "WAF reload task failed"),
                }
            }
        });
    }
}
