//! The `idbase.v1.Admin` service on the admin port: who am I, member
//! support (lookup, reveal, session revocation, each with a reason) and the
//! event tail. Every call passes the admin gate and is audited; the calls
//! about a member are audited with its id and the reason.

use super::admin_gate::{Admin as Caller, AdminGate, AdminRpc, outcome};
use crate::domain::audit::{EventFilter, Level, level_of};
use crate::domain::phase::{LATENCY_BOUNDS_MS, PhaseService, Series, Tally, check_reason};
use crate::domain::{IdentityService, MemberKey, MemberRecord, SecurityEvent, UserId};
use crate::log_tail::{self, LogLine};
use futures::Stream;
use idbase_proto::v1::{self as pb, admin_server};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How often a following tail reads the audit trail for new events.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// The most events in one stream message.
const MAX_BATCH: usize = 256;
const DEFAULT_BACKLOG: u32 = 100;
const MAX_BACKLOG: u32 = 1000;
const MAX_FILTER_TEXT_CHARS: usize = 200;
const MAX_KINDS: usize = 32;

pub struct AdminGrpc {
    identity: Arc<IdentityService>,
    phases: Arc<PhaseService>,
    gate: Arc<AdminGate>,
    /// Ends the event tails, so a draining server does not wait on them.
    shutdown: CancellationToken,
}

impl AdminGrpc {
    pub fn new(
        identity: Arc<IdentityService>,
        phases: Arc<PhaseService>,
        gate: Arc<AdminGate>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            identity,
            phases,
            gate,
            shutdown,
        }
    }

    /// Audits a call about a member (with its reason) and passes it on.
    async fn audited_about<T>(
        &self,
        caller: &Caller,
        rpc: AdminRpc,
        about: (UserId, &str),
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        self.gate
            .record(&caller.name, rpc, &outcome(&result), Some(about))
            .await;
        result.map(Response::new)
    }
}

/// The reason a member call needs, or INVALID_ARGUMENT (audited as such).
fn reason(text: &str) -> Result<&str, Status> {
    check_reason(text).map_err(Status::invalid_argument)
}

fn member_id(id: i64) -> Result<UserId, Status> {
    if id <= 0 {
        return Err(Status::invalid_argument("member_id must be a positive id"));
    }
    Ok(id)
}

fn event(e: SecurityEvent) -> pb::AdminEvent {
    pb::AdminEvent {
        cursor: u64::try_from(e.id).unwrap_or(0),
        at: e.at,
        level: level_of(&e.kind, &e.detail).name().to_owned(),
        kind: e.kind,
        member_id: e.user_id,
        detail: e.detail,
        pod: String::new(),
    }
}

fn log_event(line: &LogLine) -> pb::AdminEvent {
    pb::AdminEvent {
        cursor: 0,
        at: line.at,
        kind: "log".to_owned(),
        level: line.level.name().to_owned(),
        member_id: None,
        detail: line.text.clone(),
        pod: log_tail::pod_name().to_owned(),
    }
}

fn record(r: MemberRecord) -> pb::MemberRecord {
    let current = r.current;
    pb::MemberRecord {
        member_id: r.id,
        email_masked: current
            .as_ref()
            .map(|c| c.email.clone())
            .unwrap_or_default(),
        phone_masked: current
            .as_ref()
            .and_then(|c| c.phone.clone())
            .unwrap_or_default(),
        created_at: current.as_ref().map_or(0, |c| c.created_at),
        updated_at: current.as_ref().map_or(0, |c| c.updated_at),
        version: current.as_ref().map_or_else(
            || r.tombstone.as_ref().map_or(0, |t| t.version),
            |c| c.version,
        ),
        tombstone: r.tombstone.map(|t| pb::Tombstone {
            deleted_at: t.deleted_at,
            version: t.version,
        }),
        sessions: r
            .sessions
            .into_iter()
            .map(|s| pb::MemberSession {
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                client: s.client.unwrap_or_default(),
            })
            .collect(),
        events: r.events.into_iter().map(event).collect(),
        others_with_phone: Vec::new(),
    }
}

/// What a tail asked for, checked.
struct Tail {
    after: Option<u64>,
    backlog: usize,
    follow: bool,
    logs: bool,
    filter: EventFilter,
}

fn tail(r: pb::TailEventsRequest) -> Result<Tail, Status> {
    let backlog = match r.backlog {
        0 => DEFAULT_BACKLOG,
        n if n > MAX_BACKLOG => {
            return Err(Status::invalid_argument(format!(
                "backlog must be at most {MAX_BACKLOG}"
            )));
        }
        n => n,
    };
    let min_level = match r.min_level.trim() {
        "" => None,
        text => Some(Level::parse(text).ok_or_else(|| {
            Status::invalid_argument("min_level must be debug, info, warn or error")
        })?),
    };
    let text = r.text.trim().to_lowercase();
    if text.chars().count() > MAX_FILTER_TEXT_CHARS {
        return Err(Status::invalid_argument(format!(
            "text must be at most {MAX_FILTER_TEXT_CHARS} characters"
        )));
    }
    if r.kinds.len() > MAX_KINDS || r.kinds.iter().any(|k| k.len() > 64) {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_KINDS} kinds of at most 64 characters"
        )));
    }
    let kinds: Vec<String> = r
        .kinds
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    // Log lines are asked for by `logs`, or by naming the kind.
    let logs = r.logs || kinds.iter().any(|k| k == "log");
    Ok(Tail {
        after: r.after,
        backlog: backlog as usize,
        follow: r.follow,
        logs: logs && r.follow,
        filter: EventFilter {
            kinds,
            min_level,
            text: (!text.is_empty()).then_some(text),
        },
    })
}

const DEFAULT_WINDOW_S: u32 = 600;
const MAX_WINDOW_S: u32 = 86_400;
const DEFAULT_STEP_S: u32 = 10;
const MIN_STEP_S: u32 = 5;

fn point(at: i64, t: &Tally) -> pb::TrafficPoint {
    pb::TrafficPoint {
        at,
        requests: t.requests(),
        unauthorized: t.unauthorized,
        not_found: t.not_found,
        throttled: t.throttled,
        client_error: t.client_error,
        server_error: t.server_error,
        p99_ms: t.p99_ms(),
        latency_buckets: t.buckets.to_vec(),
    }
}

fn series(s: Series) -> pb::TrafficSeries {
    pb::TrafficSeries {
        side: s.side.as_str().to_owned(),
        kind: s.kind.as_str().to_owned(),
        points: s.points.iter().map(|(at, t)| point(*at, t)).collect(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TailEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl admin_server::Admin for AdminGrpc {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.gate.authorize(&request, AdminRpc::WhoAmI).await?;
        let Some(role) = caller.role else {
            return Err(Status::permission_denied("WhoAmI needs an admin token"));
        };
        let response = pb::WhoAmIResponse {
            name: caller.name.clone(),
            role: role.name().to_owned(),
            expires_at: caller
                .expires
                .map(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)),
            may_call: AdminRpc::ALL
                .into_iter()
                .filter(|rpc| rpc.allows(role))
                .map(AdminRpc::full_name)
                .collect(),
            pod: log_tail::pod_name().to_owned(),
        };
        self.gate
            .audited(&caller.name, AdminRpc::WhoAmI, Ok(response))
            .await
    }

    async fn lookup_user(
        &self,
        request: Request<pb::LookupUserRequest>,
    ) -> Result<Response<pb::MemberRecord>, Status> {
        use pb::lookup_user_request::Key;
        let caller = self.gate.authorize(&request, AdminRpc::LookupUser).await?;
        let r = request.into_inner();
        let key = match r.key {
            Some(Key::MemberId(id)) => member_id(id).map(MemberKey::Id),
            Some(Key::Email(email)) => Ok(MemberKey::Email(email)),
            Some(Key::Phone(phone)) => Ok(MemberKey::Phone(phone)),
            None => Err(Status::invalid_argument(
                "name the member by member_id, email or phone",
            )),
        };
        let result = async {
            reason(&r.reason)?;
            let mut found = self.identity.lookup_members(&key?).await?.into_iter();
            let first = found
                .next()
                .ok_or_else(|| Status::not_found("no member matches"))?;
            let mut first = record(first);
            first.others_with_phone = found.map(|other| other.id).collect();
            Ok(first)
        }
        .await;
        // Audited with the member found (0 when none was), and the reason.
        let member = result.as_ref().map_or(0, |m| m.member_id);
        let about = (member, r.reason.trim());
        self.audited_about(&caller, AdminRpc::LookupUser, about, result)
            .await
    }

    async fn reveal_user(
        &self,
        request: Request<pb::RevealUserRequest>,
    ) -> Result<Response<pb::RevealedMember>, Status> {
        let caller = self.gate.authorize(&request, AdminRpc::RevealUser).await?;
        let r = request.into_inner();
        let result = async {
            let id = member_id(r.member_id)?;
            reason(&r.reason)?;
            let member = self.identity.reveal_member(id).await?;
            Ok(pb::RevealedMember {
                member_id: member.id,
                email: member.email.as_str().to_owned(),
                phone: member
                    .phone
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
            })
        }
        .await;
        let about = (r.member_id.max(0), r.reason.trim());
        self.audited_about(&caller, AdminRpc::RevealUser, about, result)
            .await
    }

    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let caller = self
            .gate
            .authorize(&request, AdminRpc::RevokeSessions)
            .await?;
        let r = request.into_inner();
        let result = async {
            let id = member_id(r.member_id)?;
            reason(&r.reason)?;
            let session = r.session_id.trim();
            if session.len() > 64 {
                return Err(Status::invalid_argument(
                    "session_id is at most 64 characters",
                ));
            }
            let revoked = self
                .identity
                .revoke_member_sessions(id, (!session.is_empty()).then_some(session))
                .await?;
            Ok(pb::RevokeSessionsResponse {
                revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
            })
        }
        .await;
        let about = (r.member_id.max(0), r.reason.trim());
        self.audited_about(&caller, AdminRpc::RevokeSessions, about, result)
            .await
    }

    async fn fleet_traffic(
        &self,
        request: Request<pb::FleetTrafficRequest>,
    ) -> Result<Response<pb::FleetTrafficResponse>, Status> {
        let caller = self
            .gate
            .authorize(&request, AdminRpc::FleetTraffic)
            .await?;
        let r = request.into_inner();
        let result = async {
            let window = match r.window_s {
                0 => DEFAULT_WINDOW_S,
                w if w > MAX_WINDOW_S => {
                    return Err(Status::invalid_argument(format!(
                        "window_s must be at most {MAX_WINDOW_S}"
                    )));
                }
                w => w,
            };
            let step = match r.step_s {
                0 => DEFAULT_STEP_S,
                s if s < MIN_STEP_S || s > window => {
                    return Err(Status::invalid_argument(format!(
                        "step_s must be from {MIN_STEP_S} to window_s"
                    )));
                }
                s => s,
            };
            let found = self
                .phases
                .fleet()
                .series(i64::from(window), i64::from(step))
                .await?;
            Ok(pb::FleetTrafficResponse {
                latency_bounds_ms: LATENCY_BOUNDS_MS.to_vec(),
                step_s: step,
                series: found.into_iter().map(series).collect(),
            })
        }
        .await;
        self.gate
            .audited(&caller.name, AdminRpc::FleetTraffic, result)
            .await
    }

    type TailEventsStream = EventStream;

    async fn tail_events(
        &self,
        request: Request<pb::TailEventsRequest>,
    ) -> Result<Response<Self::TailEventsStream>, Status> {
        let caller = self.gate.authorize(&request, AdminRpc::TailEvents).await?;
        let tail = tail(request.into_inner());
        let tail = match tail {
            Ok(tail) => tail,
            Err(status) => {
                return self
                    .gate
                    .audited(&caller.name, AdminRpc::TailEvents, Err(status))
                    .await;
            }
        };
        self.gate
            .record(&caller.name, AdminRpc::TailEvents, "ok", None)
            .await;
        let (tx, rx) = mpsc::channel(16);
        let gate = Arc::clone(&self.gate);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Subscribed before the first read, so no line between is missed.
            let logs = tail.logs.then(log_tail::subscribe);
            if let Err(status) = run_tail(&gate, tail, logs, &tx, shutdown).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type Sink = mpsc::Sender<Result<pb::TailEventsResponse, Status>>;

/// Sends events in messages of at most [`MAX_BATCH`]; false once the
/// client has gone.
async fn send(tx: &Sink, events: Vec<pb::AdminEvent>, skipped_logs: u64) -> bool {
    if events.is_empty() && skipped_logs == 0 {
        return true;
    }
    let mut events = events.into_iter().peekable();
    let mut skipped = skipped_logs;
    while events.peek().is_some() || skipped > 0 {
        let batch: Vec<_> = events.by_ref().take(MAX_BATCH).collect();
        let message = pb::TailEventsResponse {
            events: batch,
            skipped_logs: std::mem::take(&mut skipped),
        };
        if tx.send(Ok(message)).await.is_err() {
            return false;
        }
    }
    true
}

async fn run_tail(
    gate: &AdminGate,
    tail: Tail,
    mut logs: Option<broadcast::Receiver<Arc<LogLine>>>,
    tx: &Sink,
    shutdown: CancellationToken,
) -> Result<(), Status> {
    let trail = gate.trail();
    let mut cursor = match tail.after {
        Some(after) => after,
        None => {
            let (events, cursor) = trail.recent(&tail.filter, tail.backlog).await?;
            if !send(tx, events.into_iter().map(event).collect(), 0).await {
                return Ok(());
            }
            cursor
        }
    };
    if !tail.follow {
        if tail.after.is_some() {
            let (events, _) = trail.after(cursor, &tail.filter).await?;
            send(tx, events.into_iter().map(event).collect(), 0).await;
        }
        return Ok(());
    }
    let mut poll = tokio::time::interval(POLL_EVERY);
    let mut lines = Vec::new();
    let mut skipped = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tx.closed() => return Ok(()),
            _ = poll.tick() => {
                let (events, next) = trail.after(cursor, &tail.filter).await?;
                cursor = next;
                let mut batch: Vec<_> = events.into_iter().map(event).collect();
                batch.append(&mut lines);
                if !send(tx, batch, std::mem::take(&mut skipped)).await {
                    return Ok(());
                }
            }
            line = next_line(&mut logs) => match line {
                Ok(line) => {
                    if tail.filter.matches("log", line.level, &line.text) {
                        lines.push(log_event(&line));
                    }
                    if lines.len() >= MAX_BATCH && !send(tx, std::mem::take(&mut lines), 0).await {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => skipped += missed,
                Err(broadcast::error::RecvError::Closed) => logs = None,
            },
        }
    }
}

/// The next log line, or never when the tail did not ask for them.
async fn next_line(
    logs: &mut Option<broadcast::Receiver<Arc<LogLine>>>,
) -> Result<Arc<LogLine>, broadcast::error::RecvError> {
    match logs {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
