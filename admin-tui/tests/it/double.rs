//! A test double of idsvc's `idbase.v1.Phases` (a network peer, not a
//! database): the rules of design.md in miniature — roles by bearer token,
//! compare-and-set on the generation, allowed moves, checks that can be made
//! to fail, and a write fence that idsvc lifts after a delay (or never).

use idbase_proto::ProblemType;
use idbase_proto::problem::PROBLEM_METADATA_KEY;
use idbase_proto::v1::phases_server::{Phases, PhasesServer};
use idbase_proto::v1::{
    CheckPhaseRequest, CheckPhaseResponse, Empty, GetPhaseRequest, PhaseChange, PhaseCheck,
    PhaseHistoryRequest, PhaseHistoryResponse, PhaseReport, PhaseState, SetPhaseRequest,
    SetPhaseResponse, WatchPhaseRequest,
};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status};

pub const OPERATOR_TOKEN: &str = "operator-token";
pub const VIEWER_TOKEN: &str = "viewer-token";
pub const GATEWAY_TOKEN: &str = "gateway-token";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Viewer,
    Operator,
    Gateway,
}

struct State {
    current: PhaseState,
    history: Vec<PhaseChange>,
    failing: BTreeSet<String>,
}

/// How the double behaves; shared with the test, which may change it.
#[derive(Clone)]
pub struct Double {
    state: Arc<Mutex<State>>,
    changes: watch::Sender<PhaseState>,
    /// The fence of a 3→4 or 4→3 move is lifted this long after it; never when None.
    pub lift_fence_after: Option<Duration>,
}

impl Double {
    pub fn new() -> Self {
        let current = PhaseState {
            phase: 0,
            weight: 100,
            generation: 1,
            write_fence: false,
            ramp_key: vec![7; 32],
            changed_at: 1_796_455_800_000,
            changed_by: "idsvc".into(),
            keepalive_ms: 1000,
        };
        Self {
            changes: watch::channel(current.clone()).0,
            state: Arc::new(Mutex::new(State {
                current,
                history: Vec::new(),
                failing: BTreeSet::new(),
            })),
            lift_fence_after: Some(Duration::from_millis(150)),
        }
    }

    /// Makes the named check fail (for every move) from now on.
    pub fn fail_check(&self, name: &str) {
        self.state.lock().unwrap().failing.insert(name.into());
    }

    /// Puts the stored state at `phase` (no history), as if moved before.
    pub fn start_at(&self, phase: u32) {
        let mut state = self.state.lock().unwrap();
        state.current.phase = phase;
        self.changes.send_replace(state.current.clone());
    }

    pub fn current(&self) -> PhaseState {
        self.state.lock().unwrap().current.clone()
    }

    pub fn history(&self) -> Vec<PhaseChange> {
        self.state.lock().unwrap().history.clone()
    }

    /// Serves on a fresh loopback port; returns `http://127.0.0.1:PORT`.
    pub async fn serve(self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PhasesServer::new(self))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        url
    }

    pub fn service(self) -> PhasesServer<Self> {
        PhasesServer::new(self)
    }

    fn checks(state: &State, target: u32, weight: u32) -> Vec<PhaseCheck> {
        let allowed = allowed(state.current.phase, target, weight);
        let mut checks = vec![PhaseCheck {
            name: "transition-allowed".into(),
            pass: allowed,
            figure: format!("{}→{target}", state.current.phase),
        }];
        for name in ["gateways-reporting", "legacy-reachable"] {
            let pass = !state.failing.contains(name);
            checks.push(PhaseCheck {
                name: name.into(),
                pass,
                figure: if pass { "1 live" } else { "0 live" }.into(),
            });
        }
        checks
    }

    fn lift_fence_later(&self, generation: u64) {
        let Some(after) = self.lift_fence_after else {
            return;
        };
        let double = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut state = double.state.lock().unwrap();
            if state.current.generation != generation {
                return;
            }
            state.current.generation += 1;
            state.current.write_fence = false;
            let lifted = state.current.clone();
            if let Some(change) = state
                .history
                .iter_mut()
                .find(|c| c.generation == generation)
            {
                change.fence_ms = Some(after.as_millis() as u64);
            }
            double.changes.send_replace(lifted);
        });
    }
}

/// design.md's moves: one step either way (never out of 5), or a ramp
/// step in 2 or 3.
fn allowed(from: u32, to: u32, weight: u32) -> bool {
    let ramped = weight < 100;
    if from == to {
        return matches!(to, 2 | 3);
    }
    if ramped && !(matches!((from, to), (1, 2) | (2, 3))) {
        return false;
    }
    to <= 5 && from != 5 && from.abs_diff(to) == 1
}

fn problem(code: Code, problem: ProblemType, message: String) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(PROBLEM_METADATA_KEY, problem.slug().parse().unwrap());
    status
}

fn role<T>(request: &Request<T>) -> Result<(Role, &'static str), Status> {
    let header = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    match header {
        Some(h) if h == format!("Bearer {OPERATOR_TOKEN}") => Ok((Role::Operator, "alice")),
        Some(h) if h == format!("Bearer {VIEWER_TOKEN}") => Ok((Role::Viewer, "vera")),
        Some(h) if h == format!("Bearer {GATEWAY_TOKEN}") => Ok((Role::Gateway, "gw")),
        Some(_) => Err(Status::unauthenticated("unknown admin token")),
        None => Err(Status::unauthenticated("no admin token")),
    }
}

fn require<T>(request: &Request<T>, roles: &[Role]) -> Result<&'static str, Status> {
    let (role, name) = role(request)?;
    if roles.contains(&role) {
        Ok(name)
    } else {
        Err(Status::permission_denied("this role may not do that"))
    }
}

const READERS: &[Role] = &[Role::Viewer, Role::Operator];

#[tonic::async_trait]
impl Phases for Double {
    async fn get_phase(
        &self,
        request: Request<GetPhaseRequest>,
    ) -> Result<Response<PhaseState>, Status> {
        require(&request, READERS)?;
        Ok(Response::new(self.current()))
    }

    async fn set_phase(
        &self,
        request: Request<SetPhaseRequest>,
    ) -> Result<Response<SetPhaseResponse>, Status> {
        let who = require(&request, &[Role::Operator])?;
        let set = request.into_inner();
        if set.reason.trim().is_empty() {
            return Err(Status::invalid_argument("a reason is required"));
        }
        let weight = if set.weight == 0 { 100 } else { set.weight };
        let mut state = self.state.lock().unwrap();
        if set.expected_generation != state.current.generation {
            return Err(problem(
                Code::Aborted,
                ProblemType::PhaseConflict,
                format!(
                    "generation is {}, not {}",
                    state.current.generation, set.expected_generation
                ),
            ));
        }
        let checks = Self::checks(&state, set.target, weight);
        let failing: Vec<&str> = checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        let transition = checks[0].pass;
        if !transition || (!failing.is_empty() && !set.force) {
            return Err(problem(
                Code::FailedPrecondition,
                ProblemType::PhaseRefused,
                format!("checks failed: {}", failing.join(", ")),
            ));
        }
        let from = state.current.clone();
        let fenced = matches!((from.phase, set.target), (3, 4) | (4, 3));
        state.current = PhaseState {
            phase: set.target,
            weight,
            generation: from.generation + 1,
            write_fence: fenced,
            changed_at: from.changed_at + 60_000,
            changed_by: who.into(),
            ..from.clone()
        };
        let change = PhaseChange {
            generation: state.current.generation,
            from_phase: from.phase,
            to_phase: set.target,
            from_weight: from.weight,
            to_weight: weight,
            who: who.into(),
            at: state.current.changed_at,
            reason: set.reason,
            forced: !failing.is_empty(),
            automatic: false,
            fence_ms: None,
        };
        state.history.push(change);
        let now = state.current.clone();
        drop(state);
        self.changes.send_replace(now.clone());
        if fenced {
            self.lift_fence_later(now.generation);
        }
        Ok(Response::new(SetPhaseResponse {
            state: Some(now),
            checks,
        }))
    }

    type WatchPhaseStream = ReceiverStream<Result<PhaseState, Status>>;

    async fn watch_phase(
        &self,
        request: Request<WatchPhaseRequest>,
    ) -> Result<Response<Self::WatchPhaseStream>, Status> {
        require(&request, &[Role::Viewer, Role::Operator, Role::Gateway])?;
        let mut changes = self.changes.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let state = changes.borrow_and_update().clone();
                if tx.send(Ok(state)).await.is_err() {
                    return;
                }
                // The keepalive repeat, shortened for tests.
                let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn phase_history(
        &self,
        request: Request<PhaseHistoryRequest>,
    ) -> Result<Response<PhaseHistoryResponse>, Status> {
        require(&request, READERS)?;
        let limit = match request.get_ref().limit {
            0 => 100,
            n => n as usize,
        };
        let changes = self.history().into_iter().rev().take(limit).collect();
        Ok(Response::new(PhaseHistoryResponse { changes }))
    }

    async fn check_phase(
        &self,
        request: Request<CheckPhaseRequest>,
    ) -> Result<Response<CheckPhaseResponse>, Status> {
        require(&request, READERS)?;
        let check = request.into_inner();
        let weight = if check.weight == 0 { 100 } else { check.weight };
        let state = self.state.lock().unwrap();
        let checks = Self::checks(&state, check.target, weight);
        Ok(Response::new(CheckPhaseResponse {
            from_phase: state.current.phase,
            target: check.target,
            ready: checks.iter().all(|c| c.pass),
            checks,
        }))
    }

    async fn report_phase(&self, request: Request<PhaseReport>) -> Result<Response<Empty>, Status> {
        require(&request, &[Role::Gateway])?;
        Ok(Response::new(Empty {}))
    }
}
