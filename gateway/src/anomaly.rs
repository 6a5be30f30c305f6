//! Login-anomaly detection: a sliding window of login attempts and failures,
//! overall and per source IP. A failure ratio over the threshold with enough
//! attempts raises an alert (log event, idsvc security event, Prometheus
//! gauges); optionally an address over a failure limit is blocked for a while.

use crate::clock::Clock;
use crate::edge::WafLabel;
use crate::iptable::{DEFAULT_IPV6_PREFIX_LEN, Expiring, IpTable, SlidingCount, source_key};
use crate::problem::Problem;
use crate::waf::source_ip::SourceIp;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idbase_proto::ProblemType;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tracing::{info, warn};

/// Long enough to see a credential-stuffing wave, short enough to forget it after.
pub const DEFAULT_LOGIN_WINDOW_SECS: u64 = 300;
/// Half the logins failing is far above members mistyping passwords.
pub const DEFAULT_LOGIN_ALERT_RATIO: f64 = 0.5;
/// Below this many attempts a ratio is noise (a quiet night, one member).
pub const DEFAULT_LOGIN_ALERT_MIN_ATTEMPTS: u64 = 50;
/// One address needs a few attempts before its own ratio means anything.
pub const DEFAULT_LOGIN_ALERT_MIN_IP_ATTEMPTS: u64 = 10;
/// Long enough to stop a script, short enough for a shared NAT to recover.
pub const DEFAULT_LOGIN_AUTOBLOCK_SECS: u64 = 900;

/// `idbase gateway` flags for login-anomaly detection.
#[derive(Clone, Debug, clap::Args)]
pub struct AnomalyArgs {
    /// Sliding window of login attempts in seconds.
    #[arg(long, env = "IDBASE_LOGIN_WINDOW_SECS", default_value_t = DEFAULT_LOGIN_WINDOW_SECS)]
    pub login_window_secs: u64,
    /// Failure ratio (0..1) that raises an alert.
    #[arg(long, env = "IDBASE_LOGIN_ALERT_RATIO", default_value_t = DEFAULT_LOGIN_ALERT_RATIO)]
    pub login_alert_ratio: f64,
    /// Attempts within the window (overall) before the ratio means anything.
    #[arg(
        long,
        env = "IDBASE_LOGIN_ALERT_MIN_ATTEMPTS",
        default_value_t = DEFAULT_LOGIN_ALERT_MIN_ATTEMPTS
    )]
    pub login_alert_min_attempts: u64,
    /// Attempts within the window from one source IP before its ratio counts.
    #[arg(
        long,
        env = "IDBASE_LOGIN_ALERT_MIN_IP_ATTEMPTS",
        default_value_t = DEFAULT_LOGIN_ALERT_MIN_IP_ATTEMPTS
    )]
    pub login_alert_min_ip_attempts: u64,
    /// Failed logins within the window after which a source IP is blocked;
    /// unset disables auto-blocking.
    #[arg(long, env = "IDBASE_LOGIN_AUTOBLOCK_FAILURES")]
    pub login_autoblock_failures: Option<u64>,
    /// How long an auto-blocked source IP stays blocked, in seconds.
    #[arg(
        long,
        env = "IDBASE_LOGIN_AUTOBLOCK_SECS",
        default_value_t = DEFAULT_LOGIN_AUTOBLOCK_SECS
    )]
    pub login_autoblock_secs: u64,
}

impl Default for AnomalyArgs {
    /// The flags' defaults (`DEFAULT_*`).
    fn default() -> Self {
        Self {
            login_window_secs: DEFAULT_LOGIN_WINDOW_SECS,
            login_alert_ratio: DEFAULT_LOGIN_ALERT_RATIO,
            login_alert_min_attempts: DEFAULT_LOGIN_ALERT_MIN_ATTEMPTS,
            login_alert_min_ip_attempts: DEFAULT_LOGIN_ALERT_MIN_IP_ATTEMPTS,
            login_autoblock_failures: None,
            login_autoblock_secs: DEFAULT_LOGIN_AUTOBLOCK_SECS,
        }
    }
}

/// Addresses tracked for login anomalies; bounds memory like the WAF's.
const IP_CAPACITY: usize = 200_000;

/// Where alerts go besides logs and metrics: idsvc's audit trail.
pub type EventSink = Arc<dyn Fn(&'static str, String) + Send + Sync>;

#[derive(Clone, Copy, Default)]
struct Counts {
    attempts: SlidingCount,
    failures: SlidingCount,
}

impl Counts {
    fn record(&mut self, now: u64, window: u64, failed: bool) -> (u64, u64) {
        self.attempts.add(now, window, 1);
        self.failures.add(now, window, u64::from(failed));
        (
            self.attempts.estimate(now, window),
            self.failures.estimate(now, window),
        )
    }
}

#[derive(Default)]
struct PerIp {
    counts: Counts,
    window_ms: u64,
    blocked_until: u64,
    alerting: bool,
}

impl Expiring for PerIp {
    fn expired(&self, now_ms: u64) -> bool {
        self.blocked_until <= now_ms && self.counts.attempts.idle(now_ms, self.window_ms.max(1))
    }

    /// A blocked address outranks every counter: a flood of fresh addresses
    /// must not lift a block. Otherwise failures, then attempts, in the window.
    fn activity(&self, now_ms: u64) -> u64 {
        if self.blocked_until > now_ms {
            return u64::MAX;
        }
        let window = self.window_ms.max(1);
        let (mut attempts, mut failures) = (self.counts.attempts, self.counts.failures);
        failures
            .estimate(now_ms, window)
            .saturating_mul(1 << 20)
            .saturating_add(attempts.estimate(now_ms, window))
    }
}

pub struct LoginAnomaly {
    args: AnomalyArgs,
    window_ms: u64,
    clock: Clock,
    overall: Mutex<(Counts, bool)>,
    per_ip: IpTable<PerIp>,
    ipv6_prefix: u8,
    sink: OnceLock<EventSink>,
}

impl LoginAnomaly {
    pub fn new(args: AnomalyArgs, clock: Clock) -> anyhow::Result<Self> {
        let ratio = args.login_alert_ratio;
        if ratio.is_nan() || ratio <= 0.0 || ratio > 1.0 {
            anyhow::bail!("--login-alert-ratio must be in (0, 1]");
        }
        if args.login_window_secs == 0 {
            anyhow::bail!("--login-window-secs must be positive");
        }
        metrics::gauge!("idbase_login_failure_ratio").set(0.0);
        metrics::gauge!("idbase_login_anomaly_alert", "scope" => "overall").set(0.0);
        Ok(Self {
            window_ms: args.login_window_secs * 1000,
            args,
            clock,
            overall: Mutex::default(),
            per_ip: IpTable::new(IP_CAPACITY),
            ipv6_prefix: DEFAULT_IPV6_PREFIX_LEN,
            sink: OnceLock::new(),
        })
    }

    /// Counts and blocks IPv6 sources per network of `len` bits.
    pub fn with_ipv6_prefix(mut self, len: u8) -> Self {
        self.ipv6_prefix = len;
        self
    }

    /// Seconds left on an auto-block of `ip`, if it is blocked.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let now = self.clock.now_ms();
        self.per_ip
            .peek(source_key(ip, self.ipv6_prefix), |e| {
                e.blocked_until.checked_sub(now)
            })
            .flatten()
            .filter(|left| *left > 0)
            .map(|left| left.div_ceil(1000))
    }

    /// Sends alerts to `sink` from now on (the first sink set stays).
    pub fn set_sink(&self, sink: EventSink) {
        let _ = self.sink.set(sink);
    }

    fn report(&self, kind: &'static str, detail: String) {
        if let Some(sink) = self.sink.get() {
            sink(kind, detail);
        }
    }

    /// Records one login outcome from `ip`.
    pub fn record(&self, ip: IpAddr, failed: bool) {
        let (now, window) = (self.clock.now_ms(), self.window_ms);
        let ratio_of = |(attempts, failures): (u64, u64)| {
            if attempts == 0 {
                0.0
            } else {
                failures as f64 / attempts as f64
            }
        };
        let raised = {
            let mut overall = self.overall.lock().unwrap_or_else(PoisonError::into_inner);
            let (attempts, failures) = overall.0.record(now, window, failed);
            let ratio = ratio_of((attempts, failures));
            metrics::gauge!("idbase_login_failure_ratio").set(ratio);
            let alert = attempts >= self.args.login_alert_min_attempts
                && ratio >= self.args.login_alert_ratio;
            let changed = alert != overall.1;
            overall.1 = alert;
            changed.then_some((alert, attempts, ratio))
        };
        if let Some((alert, attempts, ratio)) = raised {
            metrics::gauge!("idbase_login_anomaly_alert", "scope" => "overall").set(if alert {
                1.0
            } else {
                0.0
            });
            if alert {
                warn!(
                    event = "login_anomaly",
                    scope = "overall",
                    ratio,
                    attempts,
                    "login failure ratio over threshold"
                );
                self.report(
                    "login_anomaly",
                    format!("overall login failure ratio {ratio:.2} over {attempts} attempts"),
                );
            } else {
                info!(
                    event = "login_anomaly_cleared",
                    scope = "overall",
                    ratio,
                    attempts,
                    "login failure ratio back under threshold"
                );
            }
        }
        let key = source_key(ip, self.ipv6_prefix);
        let (alert, block) = self.per_ip.update(key, now, |entry| {
            entry.window_ms = window;
            let (attempts, failures) = entry.counts.record(now, window, failed);
            let ratio = ratio_of((attempts, failures));
            let alerting = attempts >= self.args.login_alert_min_ip_attempts
                && ratio >= self.args.login_alert_ratio;
            let alert = (alerting && !entry.alerting).then_some((attempts, ratio));
            entry.alerting = alerting;
            let block = match self.args.login_autoblock_failures {
                Some(limit) if failures >= limit && entry.blocked_until <= now => {
                    entry.blocked_until = now + self.args.login_autoblock_secs * 1000;
                    Some(failures)
                }
                _ => None,
            };
            (alert, block)
        });
        if let Some((attempts, ratio)) = alert {
            metrics::counter!("idbase_login_anomaly_alerts_total", "scope" => "ip").increment(1);
            warn!(event = "login_anomaly", scope = "ip", source_ip = %ip, ratio, attempts, "login failure ratio of one address over threshold");
            self.report(
                "login_anomaly",
                format!("source {ip}: login failure ratio {ratio:.2} over {attempts} attempts"),
            );
        }
        if let Some(failures) = block {
            metrics::counter!("idbase_login_autoblocks_total").increment(1);
            let secs = self.args.login_autoblock_secs;
            warn!(event = "login_autoblock", source_ip = %ip, failures, block_secs = secs, "source address blocked after failed logins");
            self.report(
                "login_autoblock",
                format!("source {ip} blocked for {secs} s after {failures} failed logins"),
            );
        }
    }
}

/// Middleware on the login route: refuses auto-blocked addresses, and feeds
/// every credential check's outcome to the detector.
pub async fn watch(
    State(anomaly): State<Arc<LoginAnomaly>>,
    request: Request,
    next: Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<SourceIp>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |s| s.0);
    if let Some(secs) = anomaly.blocked(ip) {
        let mut response = Problem::new(
            ProblemType::Blocked,
            "too many failed logins from this address".to_owned(),
        )
        .retry_after(secs)
        .into_response();
        response
            .extensions_mut()
            .insert(WafLabel("block:login-autoblock".to_owned()));
        return response;
    }
    let response = next.run(request).await;
    match response.status() {
        StatusCode::OK => anomaly.record(ip, false),
        // Wrong credentials, or an account already locked by idsvc.
        StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS => anomaly.record(ip, true),
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> LoginAnomaly {
        let args = AnomalyArgs {
            login_autoblock_failures: Some(3),
            ..AnomalyArgs::default()
        };
        LoginAnomaly::new(args, Clock::manual()).unwrap()
    }

    #[test]
    fn failures_from_one_ipv6_64_block_the_whole_network() {
        let anomaly = detector();
        for host in ["2001:db8:7:7::1", "2001:db8:7:7::2", "2001:db8:7:7:abcd::3"] {
            anomaly.record(host.parse().unwrap(), true);
        }
        assert!(
            anomaly
                .blocked("2001:db8:7:7::ffff".parse().unwrap())
                .is_some()
        );
        assert!(
            anomaly
                .blocked("2001:db8:7:8::1".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn a_flood_of_fresh_addresses_does_not_lift_a_block() {
        let anomaly = detector();
        let attacker: IpAddr = "198.51.100.9".parse().unwrap();
        for _ in 0..3 {
            anomaly.record(attacker, true);
        }
        for i in 0..(IP_CAPACITY as u32 * 3) {
            anomaly.record(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), false);
        }
        assert!(
            anomaly.blocked(attacker).is_some(),
            "the flood lifted the block"
        );
    }
}
