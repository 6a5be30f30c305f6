//! The rules file and its evaluation, after AWS WAF web ACLs: rules in order,
//! the first that matches decides, and no match means allow.
//!
//! ```toml
//! [[rule]]
//! name = "monitors"          # unique; names the rule in metrics and logs
//! action = "allow"           # allow | block | rate
//! user_agent = ["^kube-probe/"]
//!
//! [[rule]]
//! name = "denylist"
//! action = "block"
//! ip = ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]
//!
//! [[rule]]
//! name = "per-ip"
//! action = "rate"
//! limit = 2000               # requests per source IP per window, at least 10
//! window_secs = 300          # 60, 120, 300 (default) or 600
//! ```
//! A rule's conditions (`ip`, `user_agent`) must all match; a rate rule with
//! none counts every request.

use crate::iptable::{Expiring, IpTable, SlidingCount};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use regex::RegexSet;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

/// Windows AWS WAF offers for rate-based rules.
const WINDOWS: [u64; 4] = [60, 120, 300, 600];
const DEFAULT_WINDOW_SECS: u64 = 300;
const MIN_LIMIT: u64 = 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "rule")]
    rules: Vec<Spec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    action: Action,
    #[serde(default)]
    ip: Vec<String>,
    #[serde(default)]
    user_agent: Vec<String>,
    limit: Option<u64>,
    window_secs: Option<u64>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Action {
    Allow,
    Block,
    Rate,
}

/// What the WAF decided for one request.
#[derive(Clone, Debug)]
pub enum Decision {
    Allow(Arc<str>),
    Block(Arc<str>),
    RateLimited {
        rule: Arc<str>,
        retry_after_secs: u64,
    },
}

impl Decision {
    /// `allow:<rule>`, `block:<rule>`, `rate:<rule>` or `allow:default`: the
    /// access log's `waf` field.
    pub fn label(&self) -> String {
        match self {
            Self::Allow(rule) => format!("allow:{rule}"),
            Self::Block(rule) => format!("block:{rule}"),
            Self::RateLimited { rule, .. } => format!("rate:{rule}"),
        }
    }
}

/// Sorted, non-overlapping networks: membership by binary search, so a
/// denylist of thousands of CIDRs costs a few comparisons per request.
#[derive(Default)]
struct IpSet {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl IpSet {
    fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{entry}` is not an IP address or CIDR"))?;
            nets.push(net.trunc());
        }
        let mut set = Self::default();
        for net in IpNet::aggregate(&nets) {
            match net {
                IpNet::V4(net) => set.v4.push(net),
                IpNet::V6(net) => set.v6.push(net),
            }
        }
        set.v4.sort_unstable_by_key(|n| n.network());
        set.v6.sort_unstable_by_key(|n| n.network());
        Ok(set)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => {
                let at = self.v4.partition_point(|n| n.network() <= ip);
                at > 0 && self.v4[at - 1].contains(&ip)
            }
            IpAddr::V6(ip) => {
                let at = self.v6.partition_point(|n| n.network() <= ip);
                at > 0 && self.v6[at - 1].contains(&ip)
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[derive(Default)]
struct RateEntry {
    count: SlidingCount,
    window_ms: u64,
}

impl Expiring for RateEntry {
    fn expired(&self, now_ms: u64) -> bool {
        self.count.idle(now_ms, self.window_ms.max(1))
    }

    /// Requests in the window: the busiest addresses are the last evicted.
    fn activity(&self, now_ms: u64) -> u64 {
        let mut count = self.count;
        count.estimate(now_ms, self.window_ms.max(1))
    }
}

/// Per-IP request counts of one rate rule; kept across reloads while the
/// rule keeps its name and window.
pub struct RateState {
    window_ms: u64,
    table: IpTable<RateEntry>,
}

impl RateState {
    pub fn new(window_secs: u64, capacity: usize) -> Self {
        Self {
            window_ms: window_secs * 1000,
            table: IpTable::new(capacity),
        }
    }

    /// Counts a request from the source `key` (see
    /// [`crate::iptable::source_key`]); over `limit`, the seconds until it may
    /// retry.
    pub(crate) fn hit(&self, key: IpAddr, now_ms: u64, limit: u64) -> Option<u64> {
        let window_ms = self.window_ms;
        self.table.update(key, now_ms, |entry| {
            entry.window_ms = window_ms;
            entry.count.add(now_ms, window_ms, 1);
            (entry.count.estimate(now_ms, window_ms) > limit)
                .then(|| SlidingCount::until_next_window(now_ms, window_ms).div_ceil(1000))
        })
    }

    /// Addresses tracked (for tests and the memory bound).
    pub fn tracked(&self) -> usize {
        self.table.len()
    }
}

struct Rule {
    name: Arc<str>,
    action: Action,
    ips: IpSet,
    agents: Option<RegexSet>,
    limit: u64,
    window_secs: u64,
    rate: Option<Arc<RateState>>,
    counter: metrics::Counter,
}

impl Rule {
    fn matches(&self, ip: IpAddr, user_agent: &str) -> bool {
        (self.ips.is_empty() || self.ips.contains(ip))
            && self.agents.as_ref().is_none_or(|a| a.is_match(user_agent))
    }
}

/// A parsed, validated rules file.
pub struct RuleSet {
    rules: Vec<Rule>,
    default: Arc<str>,
    default_counter: metrics::Counter,
}

impl RuleSet {
    /// Parses `text`; `rate_state` supplies (and may reuse) each rate rule's
    /// counters by name and window.
    pub fn parse(
        text: &str,
        mut rate_state: impl FnMut(&str, u64) -> Arc<RateState>,
    ) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for spec in file.rules {
            let name = spec.name.trim().to_owned();
            let fail = |why: String| format!("rule `{name}`: {why}");
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(format!("rule name `{name}` is empty or used twice"));
            }
            let ips = IpSet::parse(&spec.ip).map_err(fail)?;
            let agents = if spec.user_agent.is_empty() {
                None
            } else {
                Some(RegexSet::new(&spec.user_agent).map_err(|e| fail(e.to_string()))?)
            };
            let (mut limit, mut window_secs, mut rate) = (0, 0, None);
            match spec.action {
                Action::Allow | Action::Block => {
                    if spec.limit.is_some() || spec.window_secs.is_some() {
                        return Err(fail("limit and window_secs belong to rate rules".into()));
                    }
                    if ips.is_empty() && agents.is_none() {
                        return Err(fail("needs an `ip` or `user_agent` condition".into()));
                    }
                }
                Action::Rate => {
                    limit = spec
                        .limit
                        .ok_or_else(|| fail("rate rules need `limit`".into()))?;
                    if limit < MIN_LIMIT {
                        return Err(fail(format!("limit must be at least {MIN_LIMIT}")));
                    }
                    window_secs = spec.window_secs.unwrap_or(DEFAULT_WINDOW_SECS);
                    if !WINDOWS.contains(&window_secs) {
                        return Err(fail(format!("window_secs must be one of {WINDOWS:?}")));
                    }
                    rate = Some(rate_state(&name, window_secs));
                }
            }
            let action = match spec.action {
                Action::Allow => "allow",
                Action::Block => "block",
                Action::Rate => "rate",
            };
            let counter = metrics::counter!("idbase_waf_decisions_total", "rule" => name.clone(), "action" => action);
            rules.push(Rule {
                name: name.into(),
                action: spec.action,
                ips,
                agents,
                limit,
                window_secs,
                rate,
                counter,
            });
        }
        Ok(Self {
            rules,
            default: "default".into(),
            default_counter: metrics::counter!("idbase_waf_decisions_total", "rule" => "default", "action" => "allow"),
        })
    }

    /// The first matching rule's decision, or allow. Conditions match `ip`;
    /// rate rules count per `key`, the network `ip` is counted under.
    pub fn evaluate(&self, ip: IpAddr, key: IpAddr, user_agent: &str, now_ms: u64) -> Decision {
        for rule in &self.rules {
            if !rule.matches(ip, user_agent) {
                continue;
            }
            let decision = match (rule.action, &rule.rate) {
                (Action::Allow, _) => Decision::Allow(rule.name.clone()),
                (Action::Block, _) => Decision::Block(rule.name.clone()),
                (Action::Rate, Some(state)) => match state.hit(key, now_ms, rule.limit) {
                    Some(retry_after_secs) => Decision::RateLimited {
                        rule: rule.name.clone(),
                        retry_after_secs,
                    },
                    // Under the limit a rate rule does not match.
                    None => continue,
                },
                (Action::Rate, None) => continue,
            };
            rule.counter.increment(1);
            return decision;
        }
        self.default_counter.increment(1);
        Decision::Allow(self.default.clone())
    }

    /// `(name, window_secs)` of each rate rule, to carry state over a reload.
    pub fn rate_rules(&self) -> impl Iterator<Item = (&str, u64, &Arc<RateState>)> {
        self.rules
            .iter()
            .filter_map(|r| r.rate.as_ref().map(|s| (&*r.name, r.window_secs, s)))
    }
}
