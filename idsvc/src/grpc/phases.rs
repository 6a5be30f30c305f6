//! The `idbase.v1.Phases` admin service: who may call what (admin bearer
//! tokens by role, or a gateway's client certificate for Watch and Report),
//! the audit of every call, and conversions between protobuf and the
//! domain's phase service.

use super::authz::{Caller, Peer, Role};
use super::credentials::{AdminCredentials, AdminRole, AuthFailure};
use crate::domain::phase::{
    Check, GatewayReport, MoveRequest, PhaseChange, PhaseService, PhaseState,
};
use futures::Stream;
use idbase_proto::v1::{self as pb, phases_server::Phases};
use std::pin::Pin;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// The longest gateway id kept (it names a row in `gateway_reports`).
const MAX_GATEWAY_ID_CHARS: usize = 128;
/// More than a gateway proxies between two reports (500 ms apart, or a few
/// minutes' worth held back while idsvc was away); a bound on what one call
/// can add to the parity counts.
const MAX_PROXIED_WRITES_PER_REPORT: u64 = 10_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    GetPhase,
    SetPhase,
    WatchPhase,
    PhaseHistory,
    CheckPhase,
    ReportPhase,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::GetPhase => "GetPhase",
            Rpc::SetPhase => "SetPhase",
            Rpc::WatchPhase => "WatchPhase",
            Rpc::PhaseHistory => "PhaseHistory",
            Rpc::CheckPhase => "CheckPhase",
            Rpc::ReportPhase => "ReportPhase",
        }
    }

    /// What each admin role may call.
    fn allows(self, role: AdminRole) -> bool {
        match role {
            // Heartbeats hold and lift the write fence: gateways' alone.
            AdminRole::Operator => !matches!(self, Rpc::ReportPhase),
            AdminRole::Viewer => !matches!(self, Rpc::SetPhase | Rpc::ReportPhase),
            AdminRole::Gateway => matches!(self, Rpc::WatchPhase | Rpc::ReportPhase),
        }
    }
}

pub struct PhasesGrpc {
    phases: Arc<PhaseService>,
    credentials: Arc<AdminCredentials>,
    /// Ends the watch streams, so a draining server does not wait on them.
    shutdown: CancellationToken,
}

impl PhasesGrpc {
    pub fn new(
        phases: Arc<PhaseService>,
        credentials: Arc<AdminCredentials>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            phases,
            credentials,
            shutdown,
        }
    }

    /// Who is calling, if they may make this call; audited when refused.
    async fn authorize<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<String, Status> {
        let decided = self.decide(request, rpc);
        if let Err((who, status)) = &decided {
            let outcome = format!("{:?}", status.code());
            warn!(who, rpc = rpc.name(), outcome, "admin call refused");
            self.phases.audit(who, rpc.name(), &outcome).await;
        }
        decided.map_err(|(_, status)| status)
    }

    fn decide<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<String, (String, Status)> {
        if let Some(Caller {
            peer:
                Peer::Certified {
                    id,
                    role: Some(Role::Gateway),
                },
            ..
        }) = request.extensions().get::<Caller>()
            && matches!(rpc, Rpc::WatchPhase | Rpc::ReportPhase)
        {
            return Ok(format!(
                "gateway-certificate {}",
                id.as_deref().unwrap_or("-")
            ));
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                let status =
                    Status::unauthenticated("an admin token is required (authorization: Bearer …)");
                ("-".to_owned(), status)
            })?;
        let credential = self
            .credentials
            .authenticate(token, OffsetDateTime::now_utc())
            .map_err(|failure| match failure {
                AuthFailure::Unknown => (
                    "-".to_owned(),
                    Status::unauthenticated("unknown admin token"),
                ),
                AuthFailure::Expired { name } => {
                    (name, Status::unauthenticated("the admin token has expired"))
                }
            })?;
        if !rpc.allows(credential.role) {
            let status = Status::permission_denied(format!(
                "role {} may not call {}",
                credential.role.name(),
                rpc.name()
            ));
            return Err((credential.name.clone(), status));
        }
        Ok(credential.name.clone())
    }

    /// Audits the outcome of an authorised call and passes it on.
    async fn audited<T>(
        &self,
        who: &str,
        rpc: Rpc,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.phases.audit(who, rpc.name(), &outcome).await;
        result.map(Response::new)
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

/// The heartbeat, and the member writes proxied to legacy since the last.
fn report(report: pb::PhaseReport) -> Result<(GatewayReport, u64), Status> {
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
    Ok((heartbeat, report.legacy_writes))
}

type PhaseStream = Pin<Box<dyn Stream<Item = Result<pb::PhaseState, Status>> + Send>>;

#[tonic::async_trait]
impl Phases for PhasesGrpc {
    async fn get_phase(
        &self,
        request: Request<pb::GetPhaseRequest>,
    ) -> Result<Response<pb::PhaseState>, Status> {
        let who = self.authorize(&request, Rpc::GetPhase).await?;
        let keepalive = self.keepalive_ms();
        let result = self
            .phases
            .refresh()
            .await
            .map(|s| state(s, keepalive))
            .map_err(Status::from);
        self.audited(&who, Rpc::GetPhase, result).await
    }

    async fn set_phase(
        &self,
        request: Request<pb::SetPhaseRequest>,
    ) -> Result<Response<pb::SetPhaseResponse>, Status> {
        let who = self.authorize(&request, Rpc::SetPhase).await?;
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
        self.audited(&who, Rpc::SetPhase, result).await
    }

    type WatchPhaseStream = PhaseStream;

    async fn watch_phase(
        &self,
        request: Request<pb::WatchPhaseRequest>,
    ) -> Result<Response<Self::WatchPhaseStream>, Status> {
        let who = self.authorize(&request, Rpc::WatchPhase).await?;
        let watcher: String = request.into_inner().watcher.chars().take(128).collect();
        info!(who, watcher, "phase watch opened");
        self.phases.audit(&who, Rpc::WatchPhase.name(), "ok").await;
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
        let who = self.authorize(&request, Rpc::PhaseHistory).await?;
        let result = self
            .phases
            .history(request.into_inner().limit)
            .await
            .map(|changes| pb::PhaseHistoryResponse {
                changes: changes.into_iter().map(change).collect(),
            })
            .map_err(Status::from);
        self.audited(&who, Rpc::PhaseHistory, result).await
    }

    async fn check_phase(
        &self,
        request: Request<pb::CheckPhaseRequest>,
    ) -> Result<Response<pb::CheckPhaseResponse>, Status> {
        let who = self.authorize(&request, Rpc::CheckPhase).await?;
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
        self.audited(&who, Rpc::CheckPhase, result).await
    }

    async fn report_phase(
        &self,
        request: Request<pb::PhaseReport>,
    ) -> Result<Response<pb::Empty>, Status> {
        let who = self.authorize(&request, Rpc::ReportPhase).await?;
        let result = match report(request.into_inner()) {
            Ok((report, proxied)) => self
                .phases
                .report(report, proxied)
                .await
                .map_err(Status::from),
            Err(status) => Err(status),
        };
        match result {
            // A heartbeat every 500 ms per gateway: only failures are audited.
            Ok(()) => Ok(Response::new(pb::Empty {})),
            Err(status) => self.audited(&who, Rpc::ReportPhase, Err(status)).await,
        }
    }
}

impl PhasesGrpc {
    fn keepalive_ms(&self) -> u32 {
        u32::try_from(self.phases.settings().keepalive.as_millis()).unwrap_or(u32::MAX)
    }
}
