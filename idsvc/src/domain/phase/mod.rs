//! The migration phase: its rules ([`rules`]), its state as stored, and the
//! service that moves it, follows it and lifts the write fence
//! ([`PhaseService`]).

mod fleet_traffic;
mod legacy_traffic;
mod rules;
mod service;

pub use fleet_traffic::{
    BUCKETS, FleetTraffic, LATENCY_BOUNDS_MS, RouteKind, Series, Tally, TrafficKey, TrafficSide,
};
pub use legacy_traffic::{LEGACY_TRAFFIC_RETENTION_MS, LegacyTraffic, LegacyTrafficCounter};
pub use rules::{
    MAX_REASON_CHARS, MoveKind, Phase, check_reason, fences_writes, requested_weight, transition,
};
pub use service::{
    Check, CheckOutcome, DEFAULT_GATEWAY_REPORT_TTL_MS, DEFAULT_LEGACY_QUIET_MS,
    DEFAULT_NATIVE_ID_MARGIN, DEFAULT_NATIVE_ID_START, DEFAULT_PARITY_WINDOW_MS,
    DEFAULT_PHASE_KEEPALIVE_MS, DEFAULT_PHASE_POLL_MS, DEFAULT_SHADOW_MIN_PER_KIND,
    DEFAULT_SHADOW_MIN_SAMPLES, DEFAULT_SHADOW_WINDOW_MS, DEFAULT_VALIDATION_MAX_AGE_MS,
    LegacyProbe, MoveRequest, PhaseService, PhaseSettings,
};

use super::Millis;

/// Who made automatic changes (the fence's lift) in the history.
pub const AUTOMATIC: &str = "idsvc";

/// The phase as stored (one row) and as every gateway follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseState {
    pub phase: Phase,
    /// 1..=100: the share of members `phase` applies to while a move into
    /// 2 or 3 is ramped; the others follow the phase before. 100 otherwise.
    pub weight: u32,
    /// +1 on every change, the fence's lift included.
    pub generation: u64,
    /// Writes pause until every live gateway routes by this generation.
    pub write_fence: bool,
    /// 32 random bytes keying the ramp's member hash; never changes.
    pub ramp_key: Vec<u8>,
    pub changed_at: Millis,
    pub changed_by: String,
}

/// One row of the phase's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseChange {
    pub generation: u64,
    pub from_phase: Phase,
    pub to_phase: Phase,
    pub from_weight: u32,
    pub to_weight: u32,
    /// The admin credential's name, or [`AUTOMATIC`].
    pub who: String,
    pub at: Millis,
    pub reason: String,
    pub forced: bool,
    pub automatic: bool,
    /// For a fenced change, once lifted: how long writes were fenced.
    pub fence_ms: Option<u64>,
}

/// A gateway's latest heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayReport {
    pub gateway_id: String,
    pub generation: u64,
    pub writes_in_flight: u32,
    pub endpoints_total: u32,
    pub endpoints_serving: u32,
    /// `None` for a gateway without legacy.
    pub legacy_reachable: Option<bool>,
    pub reported_at: Millis,
}

/// The newest `idbase migrate validate` run's headline: what `migrate
/// status` shows and the forward moves' `validation-passed` check reads.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct LastValidation {
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub source_rows: i64,
    pub matched: i64,
    pub missing: i64,
    pub extra: i64,
    pub different: i64,
    /// No difference outside the run's `--allow` list.
    pub passed: bool,
}

/// A compare-and-set of the phase: `next` replaces the stored state if its
/// generation is still `expected_generation`, and `change` joins the history
/// in the same transaction; `lifted` fills in `fence_ms` of the change that
/// raised the fence (its generation) when this swap lifts it.
pub struct PhaseSwap<'a> {
    pub expected_generation: u64,
    pub next: &'a PhaseState,
    pub change: &'a PhaseChange,
    pub lifted: Option<(u64, u64)>,
}
