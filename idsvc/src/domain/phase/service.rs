//! The phase service: reads and moves the phase (compare-and-set, checks,
//! force and reason, history), publishes it to followers on this replica
//! (changes made here at once, other replicas' within a poll interval),
//! keeps the gateways' heartbeats, and lifts the write fence once every
//! live gateway follows the fenced generation with no write in flight.

use super::rules::{self, MoveKind, Phase};
use super::{
    AUTOMATIC, FleetTraffic, GatewayReport, LEGACY_TRAFFIC_RETENTION_MS, LegacyTraffic,
    LegacyTrafficCounter, PhaseChange, PhaseState, PhaseSwap, RouteKind, Tally, TrafficSide,
};
use crate::domain::audit::AuditTrail;
use crate::domain::{Clock, Error, Millis, Result, Store};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a follower's stream repeats the state when nothing changes:
/// a gateway calls the phase stale after 3 s without a message.
pub const DEFAULT_PHASE_KEEPALIVE_MS: u64 = 1000;
/// How often a replica reads the phase row for changes other replicas made:
/// a move reaches every follower within tens of milliseconds.
pub const DEFAULT_PHASE_POLL_MS: u64 = 25;
/// A gateway whose last heartbeat (every 500 ms) is older than this is not
/// live: it neither holds the fence up nor counts as reporting.
pub const DEFAULT_GATEWAY_REPORT_TTL_MS: u64 = 5000;
/// The first id of members registered at idbase (from phase 4): far above
/// any legacy id, so the two ranges never meet.
pub const DEFAULT_NATIVE_ID_START: i64 = 1_000_000_000_000;
/// Legacy ids must stay this far below the native range for 3→4: room for
/// the registrations legacy takes until writes move.
pub const DEFAULT_NATIVE_ID_MARGIN: i64 = 1_000_000;

/// A forward move into phases 2–4 needs a passing `migrate validate` that
/// finished at most this long ago: a day-old validation still describes
/// the data double writes have kept in step since.
pub const DEFAULT_VALIDATION_MAX_AGE_MS: u64 = 24 * 3600 * 1000;

/// The move to phase 5 needs no double write received and no legacy refresh
/// token exchanged for this long: an hour of silence at the traffic of a
/// live shop means no one still writes to legacy or holds its tokens.
pub const DEFAULT_LEGACY_QUIET_MS: u64 = 3600 * 1000;

/// Double-write parity compares the double writes received with the member
/// writes the gateways proxied to legacy over this window.
pub const DEFAULT_PARITY_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Legacy double-writes before it answers, so a proxied write's double write
/// arrives first, at most a request's time earlier: parity counts double
/// writes from this much before the window.
const PARITY_LEAD_SECS: i64 = 10;

/// Shadow agreement looks at the shadow reads compared over this window.
pub const DEFAULT_SHADOW_WINDOW_MS: u64 = 3600 * 1000;
/// Shadows that must have run in the window (when any ran) for their
/// mismatch rate to say something.
pub const DEFAULT_SHADOW_MIN_SAMPLES: u64 = 1000;
/// Of those, the fewest of each kind (login, `me`).
pub const DEFAULT_SHADOW_MIN_PER_KIND: u64 = 100;
/// Mismatches allowed per million shadows, overall and per kind (0.1%).
const SHADOW_MAX_MISMATCHES_PER_MILLION: i64 = 1000;

/// Heartbeats older than this are deleted.
const REPORT_RETENTION: Duration = Duration::from_secs(3600);
/// Gateways whose heartbeats a replica keeps in memory: far more than a
/// fleet, and a bound on what callers can make it hold.
const MAX_GATEWAYS_IN_MEMORY: usize = 1024;

#[derive(Clone, Debug)]
pub struct PhaseSettings {
    pub keepalive: Duration,
    pub poll: Duration,
    pub report_ttl: Duration,
    pub native_id_start: i64,
    pub native_id_margin: i64,
    pub validation_max_age: Duration,
    pub legacy_quiet: Duration,
    pub parity_window: Duration,
    pub shadow_window: Duration,
    pub shadow_min_samples: u64,
    pub shadow_min_per_kind: u64,
}

impl Default for PhaseSettings {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_millis(DEFAULT_PHASE_KEEPALIVE_MS),
            poll: Duration::from_millis(DEFAULT_PHASE_POLL_MS),
            report_ttl: Duration::from_millis(DEFAULT_GATEWAY_REPORT_TTL_MS),
            native_id_start: DEFAULT_NATIVE_ID_START,
            native_id_margin: DEFAULT_NATIVE_ID_MARGIN,
            validation_max_age: Duration::from_millis(DEFAULT_VALIDATION_MAX_AGE_MS),
            legacy_quiet: Duration::from_millis(DEFAULT_LEGACY_QUIET_MS),
            parity_window: Duration::from_millis(DEFAULT_PARITY_WINDOW_MS),
            shadow_window: Duration::from_millis(DEFAULT_SHADOW_WINDOW_MS),
            shadow_min_samples: DEFAULT_SHADOW_MIN_SAMPLES,
            shadow_min_per_kind: DEFAULT_SHADOW_MIN_PER_KIND,
        }
    }
}

/// What idsvc asks legacy for a move's checks; `Err` carries the figure
/// ("connection refused", "HTTP 503").
#[async_trait::async_trait]
pub trait LegacyProbe: Send + Sync {
    async fn healthy(&self) -> std::result::Result<(), String>;
    async fn max_id(&self) -> std::result::Result<i64, String>;
}

/// One precondition of a move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub pass: bool,
    pub figure: String,
}

impl Check {
    fn new(name: &'static str, pass: bool, figure: impl Into<String>) -> Self {
        Self {
            name,
            pass,
            figure: figure.into(),
        }
    }
}

pub struct CheckOutcome {
    pub from: PhaseState,
    pub target: u32,
    pub checks: Vec<Check>,
}

impl CheckOutcome {
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
}

/// A move as an operator asks for it.
pub struct MoveRequest<'a> {
    pub target: u32,
    /// 0 means 100.
    pub weight: u32,
    pub expected_generation: u64,
    pub force: bool,
    pub reason: &'a str,
}

pub struct PhaseService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: PhaseSettings,
    legacy: Option<Arc<dyn LegacyProbe>>,
    current: watch::Sender<PhaseState>,
    /// The heartbeats this replica received, newest per gateway: its own
    /// view at once, whatever the database's replicas lag. The table holds
    /// every replica's.
    reports: Mutex<HashMap<String, GatewayReport>>,
    /// When this replica last read the phase from the database (clock ms).
    read_at: AtomicI64,
    /// The gateways' proxied writes, counted as they report them.
    traffic: LegacyTrafficCounter,
    /// The member traffic the gateways report, for the fleet view.
    fleet: FleetTraffic,
}

impl PhaseService {
    /// Loads the phase, creating it (phase 0, a fresh ramp key) on first start.
    pub async fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: PhaseSettings,
        legacy: Option<Arc<dyn LegacyProbe>>,
    ) -> Result<Arc<Self>> {
        let state = match store.phase_state().await? {
            Some(state) => state,
            None => {
                let mut ramp_key = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut ramp_key);
                let initial = PhaseState {
                    phase: Phase::Legacy,
                    weight: 100,
                    generation: 1,
                    write_fence: false,
                    ramp_key,
                    changed_at: clock.now_ms(),
                    changed_by: AUTOMATIC.to_owned(),
                };
                store.create_phase_state(&initial).await?
            }
        };
        let (current, _) = watch::channel(state);
        let read_at = AtomicI64::new(clock.now_ms());
        Ok(Arc::new(Self {
            traffic: LegacyTrafficCounter::new(Arc::clone(&store), Arc::clone(&clock)),
            fleet: FleetTraffic::new(Arc::clone(&store), Arc::clone(&clock)),
            store,
            read_at,
            clock,
            settings,
            legacy,
            current,
            reports: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether this replica's phase is confirmed by a recent read of the
    /// database. A replica that cannot read it must not vouch for the phase
    /// (its watch streams then send no keepalives, so gateways turn stale
    /// and pause writes instead of trusting a phase the fleet may have left).
    pub fn is_confirmed(&self) -> bool {
        let limit = millis(self.settings.keepalive).saturating_mul(2);
        self.clock.now_ms() - self.read_at.load(Ordering::Acquire) <= limit
    }

    pub fn settings(&self) -> &PhaseSettings {
        &self.settings
    }

    /// The phase as this replica last saw it.
    pub fn current(&self) -> PhaseState {
        self.current.borrow().clone()
    }

    /// Every change this replica sees, newest state first.
    pub fn subscribe(&self) -> watch::Receiver<PhaseState> {
        self.current.subscribe()
    }

    /// Publishes `state` if it is newer than what followers have.
    fn publish(&self, state: PhaseState) {
        self.current.send_if_modified(|current| {
            if state.generation > current.generation {
                *current = state;
                true
            } else {
                false
            }
        });
    }

    /// Reads the stored phase (another replica may have moved it), publishes
    /// it, and lifts the fence if it may go.
    pub async fn refresh(&self) -> Result<PhaseState> {
        let stored = self.stored().await?;
        self.read_at.store(self.clock.now_ms(), Ordering::Release);
        self.publish(stored.clone());
        if stored.write_fence {
            return self.lift_fence_if_clear(stored).await;
        }
        Ok(stored)
    }

    async fn stored(&self) -> Result<PhaseState> {
        self.store
            .phase_state()
            .await?
            .ok_or_else(|| Error::internal(anyhow::anyhow!("the phase row is missing")))
    }

    /// Follows other replicas' changes and lifts fences until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut poll = tokio::time::interval(self.settings.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut purge = tokio::time::interval(Duration::from_secs(60));
        let mut flush = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    if let Err(err) = self.fleet.flush().await {
                        warn!(cause = %err, "storing the fleet's traffic failed");
                    }
                    return;
                }
                _ = flush.tick() => {
                    if let Err(err) = self.fleet.flush().await {
                        warn!(cause = %err, "storing the fleet's traffic failed");
                    }
                }
                _ = poll.tick() => {
                    if let Err(err) = self.refresh().await {
                        warn!(cause = %err, "reading the phase failed");
                    }
                }
                _ = purge.tick() => {
                    let now = self.clock.now_ms();
                    let before = now - millis(REPORT_RETENTION);
                    if let Err(err) = self.store.purge_gateway_reports(before).await {
                        warn!(cause = %err, "purging old gateway reports failed");
                    }
                    let before = (now - LEGACY_TRAFFIC_RETENTION_MS).div_euclid(1000);
                    if let Err(err) = self.store.purge_legacy_traffic(before).await {
                        warn!(cause = %err, "purging old legacy traffic counts failed");
                    }
                    if let Err(err) = self.fleet.purge().await {
                        warn!(cause = %err, "purging old fleet traffic failed");
                    }
                }
            }
        }
    }

    /// The fleet's member traffic, as the gateways report it.
    pub fn fleet(&self) -> &FleetTraffic {
        &self.fleet
    }

    pub async fn history(&self, limit: u32) -> Result<Vec<PhaseChange>> {
        let limit = if limit == 0 { 100 } else { limit.min(1000) };
        Ok(self.store.phase_history(limit).await?)
    }

    /// The live gateways' heartbeats: the fleet's from the table, with the
    /// newer of the two where this replica holds one too.
    pub async fn live_gateways(&self) -> Result<Vec<GatewayReport>> {
        let since = self.clock.now_ms() - millis(self.settings.report_ttl);
        let mut live: HashMap<String, GatewayReport> = self
            .store
            .gateway_reports(since)
            .await?
            .into_iter()
            .map(|report| (report.gateway_id.clone(), report))
            .collect();
        for report in self.lock_reports().values() {
            if report.reported_at < since {
                continue;
            }
            let newer = live
                .get(&report.gateway_id)
                .is_none_or(|known| known.reported_at < report.reported_at);
            if newer {
                live.insert(report.gateway_id.clone(), report.clone());
            }
        }
        let mut live: Vec<GatewayReport> = live.into_values().collect();
        live.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
        Ok(live)
    }

    fn lock_reports(&self) -> std::sync::MutexGuard<'_, HashMap<String, GatewayReport>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.reports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps a gateway's heartbeat and counts the member writes it proxied
    /// to legacy since its last report; may lift the write fence.
    pub async fn report(
        &self,
        mut report: GatewayReport,
        proxied_writes: u64,
        traffic: &[(TrafficSide, RouteKind, Tally)],
    ) -> Result<()> {
        report.reported_at = self.clock.now_ms();
        for (side, kind, tally) in traffic {
            self.fleet.add(*side, *kind, tally);
        }
        self.traffic
            .count(LegacyTraffic::ProxiedWrite, proxied_writes)
            .await?;
        self.store.record_gateway_report(&report).await?;
        {
            let mut reports = self.lock_reports();
            if reports.len() >= MAX_GATEWAYS_IN_MEMORY && !reports.contains_key(&report.gateway_id)
            {
                let since = report.reported_at - millis(self.settings.report_ttl);
                reports.retain(|_, kept| kept.reported_at >= since);
            }
            // Still full of live gateways: the table alone holds this one.
            if reports.len() < MAX_GATEWAYS_IN_MEMORY || reports.contains_key(&report.gateway_id) {
                reports.insert(report.gateway_id.clone(), report);
            }
        }
        if self.current.borrow().write_fence {
            let stored = self.stored().await?;
            if stored.write_fence {
                self.lift_fence_if_clear(stored).await?;
            }
        }
        Ok(())
    }

    /// The checks of a move from the stored phase to `target` at `weight`.
    pub async fn check(&self, target: u32, weight: u32) -> Result<CheckOutcome> {
        let from = self.stored().await?;
        let (checks, _) = self.checks(&from, target, weight).await?;
        Ok(CheckOutcome {
            from,
            target,
            checks,
        })
    }

    /// Runs the checks; the move's kind when the transition is allowed.
    async fn checks(
        &self,
        from: &PhaseState,
        target: u32,
        weight: u32,
    ) -> Result<(Vec<Check>, Option<(Phase, u32, MoveKind)>)> {
        const ALLOWED: &str = "transition-allowed";
        let allowed = rules::requested_weight(weight).and_then(|weight| {
            let to =
                Phase::from_number(target).ok_or_else(|| format!("there is no phase {target}"))?;
            rules::transition(from.phase, from.weight, to, weight).map(|kind| (to, weight, kind))
        });
        let (to, weight, kind) = match allowed {
            Ok(allowed) => allowed,
            Err(why) => return Ok((vec![Check::new(ALLOWED, false, why)], None)),
        };
        let figure = match kind {
            MoveKind::RampStep => format!("phase {to}: weight {} → {weight}", from.weight),
            _ => format!("phase {} → {to} at weight {weight}", from.phase),
        };
        let mut checks = vec![Check::new(ALLOWED, true, figure)];
        // Rolling back is always allowed: it is what an operator does when
        // something is wrong, and the checks may be what is wrong.
        if kind == MoveKind::Backward {
            return Ok((checks, Some((to, weight, kind))));
        }
        let gateways = self.live_gateways().await?;
        let (total, serving) = gateways.iter().fold((0, 0), |(t, s), g| {
            (t + g.endpoints_total, s + g.endpoints_serving)
        });
        checks.push(Check::new(
            "idsvc-endpoints-serving",
            total > 0 && serving == total,
            format!(
                "{serving}/{total} endpoints SERVING as {} live gateway(s) see them",
                gateways.len()
            ),
        ));
        if to >= Phase::DoubleWrite {
            checks.push(Check::new(
                "gateways-reporting",
                !gateways.is_empty(),
                format!("{} live gateway(s)", gateways.len()),
            ));
        }
        if (Phase::DoubleWrite..=Phase::Writes).contains(&to) {
            checks.push(match &self.legacy {
                None => Check::new("legacy-reachable", false, "legacy not configured"),
                Some(legacy) => match legacy.healthy().await {
                    Ok(()) => Check::new("legacy-reachable", true, "legacy health 200"),
                    Err(why) => Check::new("legacy-reachable", false, why),
                },
            });
        }
        if (Phase::InternalReads..=Phase::Writes).contains(&to) {
            checks.push(self.validation_check().await?);
            checks.push(self.parity_check().await?);
            checks.push(self.shadow_check().await?);
        }
        if to == Phase::Writes && kind == MoveKind::Forward {
            checks.push(self.id_range_check().await);
        }
        if to == Phase::Complete {
            checks.push(self.legacy_quiet_check().await?);
        }
        Ok((checks, Some((to, weight, kind))))
    }

    /// The newest `migrate validate` passed and is recent enough.
    async fn validation_check(&self) -> Result<Check> {
        const NAME: &str = "validation-passed";
        let Some(last) = self.store.latest_validation().await? else {
            return Ok(Check::new(
                NAME,
                false,
                "no `idbase migrate validate` recorded",
            ));
        };
        let age_ms = u64::try_from(self.clock.now_ms() - last.finished_at_ms).unwrap_or(0);
        let max_age = self.settings.validation_max_age;
        let fresh = u128::from(age_ms) <= max_age.as_millis();
        let verdict = if last.passed { "passed" } else { "failed" };
        let staleness = if fresh { "" } else { ", too old" };
        Ok(Check::new(
            NAME,
            last.passed && fresh,
            format!(
                "{verdict}, finished {} ago (at most {}{staleness}): {} legacy rows, \
                 {} missing, {} extra, {} different",
                human_age(Duration::from_millis(age_ms)),
                human_age(max_age),
                last.source_rows,
                last.missing,
                last.extra,
                last.different,
            ),
        ))
    }

    /// Every member write legacy acknowledged through a gateway within the
    /// window came back as a double write: received ≥ proxied.
    async fn parity_check(&self) -> Result<Check> {
        let now = self.clock.now_ms().div_euclid(1000);
        let window = i64::try_from(self.settings.parity_window.as_secs()).unwrap_or(i64::MAX);
        let since = now.saturating_sub(window);
        let proxied = self
            .store
            .legacy_traffic_since(LegacyTraffic::ProxiedWrite, since)
            .await?;
        let received = self
            .store
            .legacy_traffic_since(LegacyTraffic::DoubleWrite, since - PARITY_LEAD_SECS)
            .await?;
        let pass = received >= proxied;
        let relation = if pass { "≥" } else { "<" };
        Ok(Check::new(
            "double-write-parity",
            pass,
            format!(
                "{received} double writes received {relation} {proxied} member writes proxied \
                 to legacy in the last {}",
                human_age(self.settings.parity_window)
            ),
        ))
    }

    /// When shadow reads ran in the window: enough of them, of each kind,
    /// and mismatches (differences that persisted on the re-check) below
    /// 0.1%, overall and per kind. No shadows is no evidence either way.
    /// The window starts no earlier than the latest `migrate validate`:
    /// shadows before the migration jobs had copied legacy's members
    /// rightly differed, and say nothing of idbase now.
    async fn shadow_check(&self) -> Result<Check> {
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let window = i64::try_from(self.settings.shadow_window.as_secs()).unwrap_or(i64::MAX);
        let mut since = now.saturating_sub(window);
        let mut scope = format!("in the last {}", human_age(self.settings.shadow_window));
        if let Some(validation) = self.store.latest_validation().await? {
            // The second it started in may hold shadows from before it.
            let after = validation.started_at_ms.div_euclid(1000) + 1;
            if after > since {
                since = after;
                let age = u64::try_from(now_ms - validation.started_at_ms).unwrap_or(0);
                scope = format!(
                    "since the latest validation started {} ago",
                    human_age(Duration::from_millis(age))
                );
            }
        }
        let mut figures = Vec::new();
        let (mut total, mut total_mismatches, mut pass) = (0, 0, true);
        let min_per_kind = i64::try_from(self.settings.shadow_min_per_kind).unwrap_or(i64::MAX);
        for (shadows, mismatches, name) in [
            (
                LegacyTraffic::ShadowLogin,
                LegacyTraffic::ShadowLoginMismatch,
                "login",
            ),
            (
                LegacyTraffic::ShadowMe,
                LegacyTraffic::ShadowMeMismatch,
                "me",
            ),
        ] {
            let ran = self.store.legacy_traffic_since(shadows, since).await?;
            let mismatched = self.store.legacy_traffic_since(mismatches, since).await?;
            pass &= ran >= min_per_kind && within_mismatch_rate(mismatched, ran);
            figures.push(format!("{name} {mismatched}/{ran}"));
            total += ran;
            total_mismatches += mismatched;
        }
        if total == 0 && total_mismatches == 0 {
            return Ok(Check::new(
                "shadow-agreement",
                true,
                format!("no shadow reads {scope}"),
            ));
        }
        let min_samples = i64::try_from(self.settings.shadow_min_samples).unwrap_or(i64::MAX);
        pass &= total >= min_samples && within_mismatch_rate(total_mismatches, total);
        Ok(Check::new(
            "shadow-agreement",
            pass,
            format!(
                "{total_mismatches} mismatches in {total} shadow reads {scope} ({}; \
                 under 0.1% of at least {min_samples}, {min_per_kind} of each kind)",
                figures.join(", ")
            ),
        ))
    }

    /// Nothing has come from legacy for `legacy_quiet`: no double write,
    /// no legacy refresh token presented for exchange.
    async fn legacy_quiet_check(&self) -> Result<Check> {
        let now = self.clock.now_ms();
        let quiet = millis(self.settings.legacy_quiet);
        let mut figures = Vec::new();
        let mut pass = true;
        for (kind, name) in [
            (LegacyTraffic::DoubleWrite, "double write"),
            (LegacyTraffic::TokenExchange, "legacy token exchange"),
        ] {
            let age = match self.store.last_legacy_traffic(kind).await? {
                None => "never".to_owned(),
                Some(second) => {
                    // Counted by the second: the age may be up to a second long.
                    let age = now.saturating_sub(second * 1000).max(0);
                    pass &= age >= quiet;
                    format!(
                        "{} ago",
                        human_age(Duration::from_millis(age.unsigned_abs()))
                    )
                }
            };
            figures.push(format!("last {name} {age}"));
        }
        Ok(Check::new(
            "legacy-quiet",
            pass,
            format!(
                "{} (both at least {} ago)",
                figures.join(", "),
                human_age(self.settings.legacy_quiet)
            ),
        ))
    }

    async fn id_range_check(&self) -> Check {
        const NAME: &str = "id-range-margin";
        let Some(legacy) = &self.legacy else {
            return Check::new(NAME, false, "legacy not configured");
        };
        let (start, margin) = (
            self.settings.native_id_start,
            self.settings.native_id_margin,
        );
        match legacy.max_id().await {
            Ok(max_id) => {
                let pass = max_id.saturating_add(margin) < start;
                let relation = if pass { "<" } else { "≥" };
                Check::new(
                    NAME,
                    pass,
                    format!(
                        "legacy max id {max_id} + margin {margin} {relation} native id start {start}"
                    ),
                )
            }
            Err(why) => Check::new(NAME, false, why),
        }
    }

    /// Moves the phase (see design: compare-and-set, checks, force, reason).
    pub async fn set(
        &self,
        who: &str,
        request: MoveRequest<'_>,
    ) -> Result<(PhaseState, Vec<Check>)> {
        let reason =
            rules::check_reason(request.reason).map_err(|why| Error::invalid("reason", why))?;
        let from = self.stored().await?;
        if from.generation != request.expected_generation {
            return Err(Error::PhaseConflict(format!(
                "the phase is at generation {}, not {}",
                from.generation, request.expected_generation
            )));
        }
        let (checks, allowed) = self.checks(&from, request.target, request.weight).await?;
        let Some((to, weight, _)) = allowed else {
            return Err(Error::PhaseRefused(refusal(&checks)));
        };
        let failing = checks.iter().any(|c| !c.pass);
        if failing && !request.force {
            let refused = refusal(&checks);
            let detail = format!("who={who} {} → {to} weight {weight}: {refused}", from.phase);
            self.event("phase_refused", &detail).await;
            return Err(Error::PhaseRefused(refused));
        }
        let now = self.clock.now_ms();
        let next = PhaseState {
            phase: to,
            weight,
            generation: from.generation + 1,
            // A fence not yet lifted stays up through further moves.
            write_fence: rules::fences_writes(from.phase, to) || from.write_fence,
            ramp_key: from.ramp_key.clone(),
            changed_at: now,
            changed_by: who.to_owned(),
        };
        let change = PhaseChange {
            generation: next.generation,
            from_phase: from.phase,
            to_phase: to,
            from_weight: from.weight,
            to_weight: weight,
            who: who.to_owned(),
            at: now,
            reason: reason.to_owned(),
            forced: failing,
            automatic: false,
            fence_ms: None,
        };
        let swap = PhaseSwap {
            expected_generation: from.generation,
            next: &next,
            change: &change,
            lifted: None,
        };
        if !self.store.swap_phase(swap).await? {
            return Err(Error::PhaseConflict(
                "the phase moved meanwhile; read it again".to_owned(),
            ));
        }
        info!(
            who,
            from = %from.phase, to = %to, weight, generation = next.generation,
            forced = failing, fence = next.write_fence, "phase moved"
        );
        let detail = format!(
            "who={who} {} → {to} weight {weight} generation {} forced={failing} fence={} reason={reason}",
            from.phase, next.generation, next.write_fence
        );
        self.event("phase_change", &detail).await;
        self.publish(next.clone());
        if next.write_fence {
            // With no live gateway the fence goes at once.
            self.lift_fence_if_clear(next.clone()).await?;
        }
        Ok((next, checks))
    }

    /// Lifts the fence of `fenced` (the stored state) when every live
    /// gateway routes by its generation or later with no write in flight.
    async fn lift_fence_if_clear(&self, fenced: PhaseState) -> Result<PhaseState> {
        let gateways = self.live_gateways().await?;
        let clear = gateways
            .iter()
            .all(|g| g.generation >= fenced.generation && g.writes_in_flight == 0);
        if !clear {
            return Ok(fenced);
        }
        let now = self.clock.now_ms();
        // The change that raised the fence: the newest fencing move.
        let raised = self
            .store
            .phase_history(20)
            .await?
            .into_iter()
            .find(|c| !c.automatic && rules::fences_writes(c.from_phase, c.to_phase));
        let fence_ms = raised
            .as_ref()
            .map_or(0, |c| u64::try_from(now - c.at).unwrap_or(0));
        let next = PhaseState {
            generation: fenced.generation + 1,
            write_fence: false,
            changed_at: now,
            changed_by: AUTOMATIC.to_owned(),
            ..fenced.clone()
        };
        let change = PhaseChange {
            generation: next.generation,
            from_phase: fenced.phase,
            to_phase: fenced.phase,
            from_weight: fenced.weight,
            to_weight: fenced.weight,
            who: AUTOMATIC.to_owned(),
            at: now,
            reason: format!(
                "write fence lifted: {} live gateway(s) follow generation {} with no write in flight",
                gateways.len(),
                fenced.generation
            ),
            forced: false,
            automatic: true,
            fence_ms: None,
        };
        let swap = PhaseSwap {
            expected_generation: fenced.generation,
            next: &next,
            change: &change,
            lifted: raised.map(|c| (c.generation, fence_ms)),
        };
        if !self.store.swap_phase(swap).await? {
            // Another replica lifted it, or an operator moved on.
            return self.stored().await;
        }
        metrics::histogram!("idbase_phase_fence_seconds").record(fence_ms as f64 / 1000.0);
        info!(generation = next.generation, fence_ms, "write fence lifted");
        let detail = format!("generation {} after {fence_ms} ms", next.generation);
        self.event("phase_fence_lifted", &detail).await;
        self.publish(next.clone());
        Ok(next)
    }
}

impl PhaseService {
    /// Records a phase event in the audit trail; a failure to record is
    /// logged, never the move's failure (the history holds the move).
    async fn event(&self, kind: &str, detail: &str) {
        let trail = AuditTrail::new(Arc::clone(&self.store), Arc::clone(&self.clock));
        if let Err(err) = trail.record(kind, None, detail).await {
            warn!(cause = %err, kind, "recording a phase event failed");
        }
    }
}

/// "failing checks: name (figure), …" for a refused move.
fn refusal(checks: &[Check]) -> String {
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{} ({})", c.name, c.figure))
        .collect();
    format!("move refused; failing checks: {}", failing.join(", "))
}

/// "42 s", "17 min", "26 h": what an operator reads in a check's figure.
fn human_age(age: Duration) -> String {
    match age.as_secs() {
        s if s < 120 => format!("{s} s"),
        s if s < 120 * 60 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

fn millis(duration: Duration) -> Millis {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `mismatches` of `shadows` is under the allowed rate (0.1%); none is,
/// even of no shadows.
fn within_mismatch_rate(mismatches: i64, shadows: i64) -> bool {
    mismatches == 0
        || mismatches.saturating_mul(1_000_000)
            < SHADOW_MAX_MISMATCHES_PER_MILLION.saturating_mul(shadows)
}
