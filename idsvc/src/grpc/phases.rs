//! The `idbase.v1.Phases` admin service: who may call what (admin bearer
//! tokens by role, or a gateway's client certificate for Watch and Report),
//! the audit of every call, and conversions between protobuf and the
//! domain's phase service.

use super::admin_gate::{AdminGate, AdminRpc};
use crate::domain::phase::{
    BUCKETS, Check, GatewayReport, MoveRequest, PhaseChange, PhaseService, PhaseState, RouteKind,
    Tally, TrafficSide,
};
use futures::Stream;
use idbase_proto::v1::{self as pb, phases_server::Phases};
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::info;

/// The longest gateway id kept (it names a row in `gateway_reports`).
const MAX_GATEWAY_ID_CHARS: usize = 128;
/// More than a gateway answers (or proxies) between two reports (500 ms
/// apart, or a few minutes' worth held back while idsvc was away); a bound
/// on what one call can add to the parity counts and the fleet's traffic.
const MAX_PROXIED_WRITES_PER_REPORT: u64 = 10_000_000;

pub struct PhasesGrpc {
    phases: Arc<PhaseService>,
    gate: Arc<AdminGate>,
    /// Ends the watch streams, so a draining server does not wait on them.
    shutdown: CancellationToken,
}

impl PhasesGrpc {
    pub fn new(
        phases: Arc<PhaseService>,
        gate: Arc<AdminGate>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            phases,
            gate,
            shutdown,
        }
    }

    async fn authorize<T>(&self, request: &Request<T>, rpc: AdminRpc) -> Result<String, Status> {
        Ok(self.gate.authorize(request, rpc).await?.name)
    }
}

fn state(state: PhaseState, keepalive_ms: u32) -> pb::PhaseState {
    pb::PhaseState {
        phase: state.phase.number(),
        weight: state.weight,
        generation: state.generation,
        write_fence: state.write_fence,
        ramp_key: state.ramp_key,
        changed_at: state.changed_at,
        changed_by: state.changed_by,
        keepalive_ms,
    }
}

fn check(check: Check) -> pb::PhaseCheck {
    pb::PhaseCheck {
        name: check.name.to_owned(),
        pass: check.pass,
        figure: check.figure,
    }
}

fn change(change: PhaseChange) -> pb::PhaseChange {
    pb::PhaseChange {
        generation: change.generation,
        from_phase: change.from_phase.number(),
        to_phase: change.to_phase.number(),
        from_weight: change.from_weight,
        to_weight: change.to_weight,
        who: change.who,
        at: change.at,
        reason: change.reason,
        forced: change.forced,
        automatic: change.automatic,
        fence_ms: change.fence_ms,
    }
}

/// A gateway's tally of the member requests it answered.
type ReportedTraffic = (TrafficSide, RouteKind, Tally);

/// The heartbeat, the member writes proxied to legacy and the traffic
/// answered since the last.
fn report(report: pb::PhaseReport) -> Result<(GatewayReport, u64, Vec<ReportedTraffic>), Status> {
    let gateway_id = report.gateway_id.trim();
    if gateway_id.is_empty() || gateway_id.chars().count() > MAX_GATEWAY_ID_CHARS {
        return Err(Status::invalid_argument(format!(
            "gateway_id must be 1 to {MAX_GATEWAY_ID_CHARS} characters"
        )));
    }
    if report.legacy_writes > MAX_PROXIED_WRITES_PER_REPORT {
        return Err(Status::invalid_argument(format!(
            "legacy_writes must be at most {MAX_PROXIED_WRITES_PER_REPORT}"
        )));
    }
    let traffic = traffic(&report.traffic)?;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let heartbeat = GatewayReport {
        gateway_id: gateway_id.to_owned(),
        generation: report.generation,
        writes_in_flight: report.writes_in_flight,
        endpoints_total: count(report.idsvc.len()),
        endpoints_serving: count(report.idsvc.iter().filter(|e| e.serving).count()),
        legacy_reachable: report.legacy_reachable,
        reported_at: 0,
    };
    Ok((heartbeat, report.legacy_writes, traffic))
}

/// A report's traffic tallies: known sides and kinds, once each, with
/// counts no gateway reaches between two reports.
fn traffic(tallies: &[pb::TrafficTally]) -> Result<Vec<ReportedTraffic>, Status> {
    let mut parsed: Vec<ReportedTraffic> = Vec::with_capacity(tallies.len());
    for t in tallies {
        let (Some(side), Some(kind)) = (TrafficSide::parse(&t.side), RouteKind::parse(&t.kind))
        else {
            return Err(Status::invalid_argument(format!(
                "traffic: unknown side {:?} or kind {:?}",
                t.side, t.kind
            )));
        };
        if parsed.iter().any(|(s, k, _)| (*s, *k) == (side, kind)) {
            return Err(Status::invalid_argument(
                "traffic: one tally per side and kind",
            ));
        }
        if t.latency_buckets.len() > BUCKETS {
            return Err(Status::invalid_argument(format!(
                "traffic: at most {BUCKETS} latency buckets"
            )));
        }
        let mut tally = Tally {
            ok: t.ok,
            unauthorized: t.unauthorized,
            not_found: t.not_found,
            throttled: t.throttled,
            client_error: t.client_error,
            server_error: t.server_error,
            ..Tally::default()
        };
        for (bucket, count) in tally.buckets.iter_mut().zip(&t.latency_buckets) {
            *bucket = *count;
        }
        let total = tally
            .requests()
            .max(tally.buckets.iter().fold(0, |a, b| a.saturating_add(*b)));
        if total > MAX_PROXIED_WRITES_PER_REPORT {
            return Err(Status::invalid_argument(format!(
                "traffic: at most {MAX_PROXIED_WRITES_PER_REPORT} requests per tally"
            )));
        }
        parsed.push((side, kind, tally));
    }
    Ok(parsed)
}

type PhaseStream = Pin<Box<dyn Stream<Item = Result<pb::PhaseState, Status>> + Send>>;

#[tonic::async_trait]
impl Phases for PhasesGrpc {
    async fn get_phase(
        &self,
        request: Request<pb::GetPhaseRequest>,
    ) -> Result<Response<pb::PhaseState>, Status> {
        let who = self.authorize(&request, AdminRpc::GetPhase).await?;
        let keepalive = self.keepalive_ms();
        let result = self
            .phases
            .refresh()
            .await
            .map(|s| state(s, keepalive))
            .map_err(Status::from);
        self.gate.audited(&who, AdminRpc::GetPhase, result).await
    }

    async fn set_phase(
        &self,
        request: Request<pb::SetPhaseRequest>,
    ) -> Result<Response<pb::SetPhaseResponse>, Status> {
        let who = self.authorize(&request, AdminRpc::SetPhase).await?;
        let r = request.into_inner();
        let keepalive = self.keepalive_ms();
        let result = self
            .phases
            .set(
                &who,
                MoveRequest {
                    target: r.target,
                    weight: r.weight,
                    expected_generation: r.expected_generation,
                    force: r.force,
                    reason: &r.reason,
                },
            )
            .await
            .map(|(moved, checks)| pb::SetPhaseResponse {
                state: Some(state(moved, keepalive)),
                checks: checks.into_iter().map(check).collect(),
            })
            .map_err(Status::from);
        self.gate.audited(&who, AdminRpc::SetPhase, result).await
    }

    type WatchPhaseStream = PhaseStream;

    async fn watch_phase(
        &self,
        request: Request<pb::WatchPhaseRequest>,
    ) -> Result<Response<Self::WatchPhaseStream>, Status> {
        let who = self.authorize(&request, AdminRpc::WatchPhase).await?;
        let watcher: String = request.into_inner().watcher.chars().take(128).collect();
        info!(who, watcher, "phase watch opened");
        self.gate
            .record(&who, AdminRpc::WatchPhase, "ok", None)
            .await;
        let keepalive = self.phases.settings().keepalive;
        let keepalive_ms = self.keepalive_ms();
        let changes = self.phases.subscribe();
        let phases = Arc::clone(&self.phases);
        let shutdown = self.shutdown.clone();
        let ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        // The current state at once; then each change, or the state again
        // after `keepalive` without one.
        let stream = futures::stream::unfold(
            (changes, ticks, true),
            move |(mut changes, mut ticks, first)| {
                let shutdown = shutdown.clone();
                let phases = Arc::clone(&phases);
                async move {
                    if !first {
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => return None,
                                changed = changes.changed() => {
                                    changed.ok()?;
                                    ticks.reset();
                                    break;
                                }
                                // No keepalive while this replica cannot
                                // read the phase: followers turn stale.
                                _ = ticks.tick() => if phases.is_confirmed() {
                                    break;
                                },
                            }
                        }
                    }
                    let current = changes.borrow_and_update().clone();
                    Some((Ok(state(current, keepalive_ms)), (changes, ticks, false)))
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn phase_history(
        &self,
        request: Request<pb::PhaseHistoryRequest>,
    ) -> Result<Response<pb::PhaseHistoryResponse>, Status> {
        let who = self.authorize(&request, AdminRpc::PhaseHistory).await?;
        let result = self
            .phases
            .history(request.into_inner().limit)
            .await
            .map(|changes| pb::PhaseHistoryResponse {
                changes: changes.into_iter().map(change).collect(),
            })
            .map_err(Status::from);
        self.gate
            .audited(&who, AdminRpc::PhaseHistory, result)
            .await
    }

    async fn check_phase(
        &self,
        request: Request<pb::CheckPhaseRequest>,
    ) -> Result<Response<pb::CheckPhaseResponse>, Status> {
        let who = self.authorize(&request, AdminRpc::CheckPhase).await?;
        let r = request.into_inner();
        let result = self
            .phases
            .check(r.target, r.weight)
            .await
            .map(|outcome| pb::CheckPhaseResponse {
                from_phase: outcome.from.phase.number(),
                target: outcome.target,
                ready: outcome.ready(),
                checks: outcome.checks.into_iter().map(check).collect(),
            })
            .map_err(Status::from);
        self.gate.audited(&who, AdminRpc::CheckPhase, result).await
    }

    async fn report_phase(
        &self,
        request: Request<pb::PhaseReport>,
    ) -> Result<Response<pb::Empty>, Status> {
        let who = self.authorize(&request, AdminRpc::ReportPhase).await?;
        let result = match report(request.into_inner()) {
            Ok((report, proxied, traffic)) => self
                .phases
                .report(report, proxied, &traffic)
                .await
                .map_err(Status::from),
            Err(status) => Err(status),
        };
        match result {
            // A heartbeat every 500 ms per gateway: only failures are audited.
            Ok(()) => Ok(Response::new(pb::Empty {})),
            Err(status) => {
                self.gate
                    .audited(&who, AdminRpc::ReportPhase, Err(status))
                    .await
            }
        }
    }
}

impl PhasesGrpc {
    fn keepalive_ms(&self) -> u32 {
        u32::try_from(self.phases.settings().keepalive.as_millis()).unwrap_or(u32::MAX)
    }
}
