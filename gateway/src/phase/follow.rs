//! Following idsvc's phase: a `Phases.WatchPhase` stream kept open on
//! idsvc's admin port, and a `ReportPhase` heartbeat back.
//!
//! idsvc pushes every change at once and repeats the state every
//! `keepalive_ms`, so silence means a dead stream: a stream quiet for
//! `--phase-stale-after-ms` is dropped and dialled again with backoff. The
//! gateway fails static: it keeps routing by the last phase it heard, but
//! once that phase is stale it pauses writes (a fenced move may be under way
//! that it cannot see). The heartbeat (every 500 ms, and at once after a
//! change is applied) tells idsvc the generation this gateway routes by and
//! its writes in flight, which is what lifts a write fence.

use super::traffic::TrafficCounter;
use super::{PhaseState, Ramp};
use crate::legacy::Legacy;
use crate::upstream::Upstream;
use crate::upstream::tls::{ClientTls, TlsConnector, UpstreamTlsFiles, is_loopback};
use anyhow::Context;
use arc_swap::ArcSwapOption;
use idbase_proto::v1::{self as pb, phases_client::PhasesClient};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{info, warn};

/// Three missed keepalives (idsvc repeats the state every second): long
/// enough for a replica restart, short enough that writes pause well
/// before an operator's next move.
pub const DEFAULT_STALE_AFTER_MS: u64 = 3_000;
/// How often the gateway reports: a fence waits for it, so it is short.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Redial backoff: from a blip to an idsvc that is down for a while.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often legacy's health is checked for the reports.
const LEGACY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// `idbase gateway` flags for following the migration phase.
#[derive(Clone, Debug, clap::Args)]
pub struct FollowArgs {
    /// idsvc's admin gRPC URL; the gateway follows the migration phase from
    /// it. Unset: no phase following, every request goes to idsvc.
    #[arg(long, env = "IDBASE_IDSVC_ADMIN")]
    pub idsvc_admin: Option<String>,
    /// File holding the gateway's admin token (role `gateway`), for a
    /// plain-text admin URL; over https the client certificate
    /// (`--idsvc-client-cert`) is the credential.
    #[arg(long, env = "IDBASE_IDSVC_ADMIN_TOKEN_FILE", requires = "idsvc_admin")]
    pub idsvc_admin_token_file: Option<PathBuf>,
    /// This gateway's name in idsvc's fleet view, unique per process (two
    /// gateways with one name would hide each other's writes in flight from
    /// the write fence); `<host name>-<pid>` when unset.
    #[arg(long, env = "IDBASE_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Writes pause once no phase message arrived for this long.
    #[arg(long, env = "IDBASE_PHASE_STALE_AFTER_MS", default_value_t = DEFAULT_STALE_AFTER_MS)]
    pub phase_stale_after_ms: u64,
}

impl FollowArgs {
    /// The configuration, or `None` without `--idsvc-admin`. `tls` is the
    /// gateway's client certificate for idsvc, used for an https admin URL.
    pub fn config(&self, tls: Option<UpstreamTlsFiles>) -> anyhow::Result<Option<FollowConfig>> {
        let Some(url) = self.idsvc_admin.clone() else {
            return Ok(None);
        };
        let token = self
            .idsvc_admin_token_file
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .with_context(|| format!("reading {}", path.display()))
            })
            .transpose()?;
        let gateway_id = self
            .gateway_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
        Ok(Some(FollowConfig {
            url,
            token,
            gateway_id,
            stale_after: Duration::from_millis(self.phase_stale_after_ms),
            tls,
        }))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

/// How the gateway follows the phase.
#[derive(Clone)]
pub struct FollowConfig {
    /// idsvc's admin gRPC URL.
    pub url: String,
    /// The admin token (role `gateway`) in plain-text mode.
    pub token: Option<String>,
    pub gateway_id: String,
    pub stale_after: Duration,
    pub tls: Option<UpstreamTlsFiles>,
}

/// The phase as this gateway last heard it; shared by the request path
/// (reads only) and the follower task (writes).
pub struct Follower {
    current: ArcSwapOption<PhaseState>,
    /// Milliseconds after `epoch` when a message last arrived; 0 = never.
    heard_ms: AtomicU64,
    epoch: Instant,
    stale_after: Duration,
    changed: Notify,
}

impl Follower {
    pub fn new(stale_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::empty(),
            heard_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stale_after,
            changed: Notify::new(),
        })
    }

    /// The phase routed by, once learned. Lock-free.
    pub fn current(&self) -> Option<Arc<PhaseState>> {
        self.current.load_full()
    }

    /// How long since the last message from idsvc; `None` before the first.
    pub fn silent_for(&self) -> Option<Duration> {
        match self.heard_ms.load(Ordering::Acquire) {
            0 => None,
            heard => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(heard)),
            ),
        }
    }

    /// True when the phase cannot be confirmed: never heard, or silent for
    /// longer than the staleness limit.
    pub fn is_stale(&self) -> bool {
        self.silent_for()
            .is_none_or(|quiet| quiet > self.stale_after)
    }

    /// Applies one message of the stream (a change or a keepalive).
    pub fn apply(&self, message: &pb::PhaseState) {
        // 0 means "never": a message in the first millisecond counts as 1.
        let now = (self.epoch.elapsed().as_millis() as u64).max(1);
        // Generations only grow. An older one comes from an idsvc replica
        // that lags behind (or lost its database): following it could send
        // writes back to the side the fleet has left. Its keepalives do not
        // count as news either, so a gateway fed only by it turns stale.
        if self
            .current
            .load()
            .as_ref()
            .is_some_and(|state| message.generation < state.generation)
        {
            return;
        }
        let changed = self.current.load().as_ref().is_none_or(|state| {
            state.generation != message.generation
                || state.phase != message.phase
                || state.write_fence != message.write_fence
        });
        if changed {
            let state = PhaseState {
                phase: message.phase,
                weight: message.weight.clamp(1, 100),
                generation: message.generation,
                write_fence: message.write_fence,
                ramp: Ramp::new(&message.ramp_key),
            };
            info!(
                phase = state.phase,
                weight = state.weight,
                generation = state.generation,
                write_fence = state.write_fence,
                "following phase"
            );
            for phase in 0..=5u32 {
                metrics::gauge!("idbase_phase", "phase" => phase.to_string())
                    .set(if phase == state.phase { 1.0 } else { 0.0 });
            }
            metrics::gauge!("idbase_phase_generation").set(state.generation as f64);
            self.current.store(Some(Arc::new(state)));
        }
        self.heard_ms.store(now, Ordering::Release);
        if changed {
            // The report that acknowledges it goes out now, not at the next tick.
            self.changed.notify_one();
        }
    }
}

/// What the heartbeat reports besides the phase.
#[derive(Clone)]
pub struct Reported {
    /// Writes in flight, kept by the request path.
    pub writes: Arc<AtomicU32>,
    /// Member writes legacy acknowledged, not yet reported.
    pub legacy_writes: Arc<AtomicU64>,
    /// Member traffic answered, not yet reported.
    pub traffic: Arc<TrafficCounter>,
    pub upstream: Upstream,
    pub legacy: Option<Legacy>,
}

/// Dials idsvc's admin port (lazily: an unreachable idsvc is retried by the tasks).
fn channel(config: &FollowConfig) -> anyhow::Result<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(config.url.clone())
        .with_context(|| format!("--idsvc-admin {}", config.url))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10));
    match endpoint.uri().scheme_str() {
        Some("https") => {
            let files = config.tls.clone().with_context(|| {
                format!(
                    "{}: https needs --idsvc-ca, --idsvc-client-cert and --idsvc-client-key",
                    config.url
                )
            })?;
            let tls = ClientTls::load(files)?;
            tokio::spawn(ClientTls::watch(
                Arc::downgrade(&tls),
                crate::upstream::tls::RELOAD_INTERVAL,
            ));
            Ok(endpoint.connect_with_connector_lazy(TlsConnector::new(tls)))
        }
        Some("http") => {
            anyhow::ensure!(
                is_loopback(endpoint.uri()),
                "{}: a plain-text admin URL is allowed to loopback only (the token would cross \
                 the network in clear); use https://",
                config.url
            );
            Ok(endpoint.connect_lazy())
        }
        _ => anyhow::bail!(
            "{}: the admin URL is https:// (or http:// on loopback)",
            config.url
        ),
    }
}

/// Starts following: the watch stream, the heartbeat and legacy's health
/// check, until `stop` is cancelled. Needs a Tokio runtime.
pub fn spawn(
    follower: Arc<Follower>,
    config: FollowConfig,
    reported: Reported,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client = PhasesClient::new(channel(&config)?);
    let auth = config
        .token
        .as_deref()
        .map(|token| {
            format!("Bearer {token}").parse().map(
                |mut value: tonic::metadata::AsciiMetadataValue| {
                    value.set_sensitive(true);
                    value
                },
            )
        })
        .transpose()
        .context("the admin token is not a valid header value")?;
    let legacy_up = Arc::new(AtomicU8::new(UNKNOWN));
    let dial = Dial {
        client,
        auth,
        gateway_id: config.gateway_id,
    };
    tokio::spawn(watch(
        Arc::clone(&follower),
        dial.clone(),
        config.stale_after,
        stop.clone(),
    ));
    if let Some(legacy) = reported.legacy.clone() {
        tokio::spawn(check_legacy(legacy, Arc::clone(&legacy_up), stop.clone()));
    }
    tokio::spawn(report(follower, dial, reported, legacy_up, stop));
    Ok(())
}

/// The admin client and what every call carries.
#[derive(Clone)]
struct Dial {
    client: PhasesClient<Channel>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    gateway_id: String,
}

impl Dial {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request
    }
}

async fn watch(
    follower: Arc<Follower>,
    mut dial: Dial,
    stale_after: Duration,
    stop: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let heard_before = follower.heard_ms.load(Ordering::Acquire);
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = follow_stream(&follower, &mut dial, stale_after) => outcome,
        };
        if let Err(status) = outcome {
            warn!(code = ?status.code(), message = status.message(), "phase stream lost; redialling");
        }
        if follower.heard_ms.load(Ordering::Acquire) != heard_before {
            // The stream worked for a while: a fresh failure starts small.
            backoff = MIN_BACKOFF;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One WatchPhase stream, until it ends, fails or falls silent.
async fn follow_stream(
    follower: &Follower,
    dial: &mut Dial,
    stale_after: Duration,
) -> Result<(), tonic::Status> {
    let request = dial.request(pb::WatchPhaseRequest {
        watcher: dial.gateway_id.clone(),
    });
    let mut stream = dial.client.watch_phase(request).await?.into_inner();
    loop {
        match tokio::time::timeout(stale_after, stream.message()).await {
            Ok(Ok(Some(message))) => follower.apply(&message),
            Ok(Ok(None)) => return Err(tonic::Status::unavailable("idsvc ended the stream")),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(tonic::Status::deadline_exceeded(
                    "no phase message within the staleness limit",
                ));
            }
        }
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

async fn check_legacy(legacy: Legacy, up: Arc<AtomicU8>, stop: CancellationToken) {
    loop {
        let reachable = tokio::select! {
            () = stop.cancelled() => return,
            reachable = legacy.reachable() => reachable,
        };
        up.store(if reachable { UP } else { DOWN }, Ordering::Release);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(LEGACY_CHECK_INTERVAL) => {}
        }
    }
}

/// What idsvc accepts in one report; more waits for the next.
const MAX_LEGACY_WRITES_PER_REPORT: u64 = 10_000_000;

async fn report(
    follower: Arc<Follower>,
    mut dial: Dial,
    reported: Reported,
    legacy_up: Arc<AtomicU8>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REPORT_INTERVAL) => {}
            () = follower.changed.notified() => {}
        }
        if let Some(quiet) = follower.silent_for() {
            metrics::gauge!("idbase_phase_stale_seconds").set(quiet.as_secs_f64());
        }
        // Nothing to acknowledge before the first phase.
        let Some(state) = follower.current() else {
            continue;
        };
        let idsvc = reported
            .upstream
            .endpoint_health()
            .into_iter()
            .map(|(url, serving)| pb::EndpointHealth {
                url: url.to_string(),
                serving,
            })
            .collect();
        let legacy_reachable = match (reported.legacy.is_some(), legacy_up.load(Ordering::Acquire))
        {
            (false, _) | (true, UNKNOWN) => None,
            (true, seen) => Some(seen == UP),
        };
        // Taken now, given back unless idsvc took the report: a report lost
        // after idsvc counted it counts twice, which shows as a parity gap
        // (the safe side), never hides one.
        let pending = reported.legacy_writes.swap(0, Ordering::AcqRel);
        let legacy_writes = pending.min(MAX_LEGACY_WRITES_PER_REPORT);
        let traffic = reported.traffic.take();
        let request = dial.request(pb::PhaseReport {
            gateway_id: dial.gateway_id.clone(),
            generation: state.generation,
            writes_in_flight: reported.writes.load(Ordering::Acquire),
            idsvc,
            legacy_reachable,
            legacy_writes,
            traffic: traffic.clone(),
        });
        let sent = tokio::time::timeout(REPORT_INTERVAL * 2, dial.client.report_phase(request));
        let taken = match sent.await {
            Ok(Ok(_)) => true,
            Ok(Err(status)) => {
                tracing::debug!(code = ?status.code(), "phase report refused or lost");
                // Traffic idsvc refused as such would be refused again.
                if status.code() != tonic::Code::InvalidArgument {
                    reported.traffic.restore(&traffic);
                }
                false
            }
            Err(_) => {
                tracing::debug!("phase report timed out");
                reported.traffic.restore(&traffic);
                false
            }
        };
        let unreported = if taken {
            pending - legacy_writes
        } else {
            pending
        };
        if unreported > 0 {
            reported
                .legacy_writes
                .fetch_add(unreported, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(phase: u32, generation: u64) -> pb::PhaseState {
        pb::PhaseState {
            phase,
            weight: 100,
            generation,
            ramp_key: vec![7; 32],
            ..Default::default()
        }
    }

    #[test]
    fn an_older_generation_is_neither_followed_nor_news() {
        let follower = Follower::new(Duration::from_millis(20));
        follower.apply(&state(4, 9));
        std::thread::sleep(Duration::from_millis(30));
        assert!(follower.is_stale());
        // A lagging replica still says phase 3.
        follower.apply(&state(3, 8));
        let current = follower.current().unwrap();
        assert_eq!((current.phase, current.generation), (4, 9));
        assert!(
            follower.is_stale(),
            "a lagging replica kept the phase fresh"
        );
        follower.apply(&state(4, 9));
        assert!(!follower.is_stale());
        follower.apply(&state(3, 10));
        assert_eq!(follower.current().unwrap().phase, 3);
    }
}
