//! Who may call what on the admin port, and the audit of every call: one
//! gate for the Phases and Admin services, so a role means the same on both.

use super::authz::{Caller, Peer, Role};
use super::credentials::{AdminCredentials, AdminRole, AuthFailure};
use crate::domain::audit::AuditTrail;
use time::OffsetDateTime;
use tonic::{Request, Status};
use tracing::warn;

/// Every admin RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRpc {
    GetPhase,
    SetPhase,
    WatchPhase,
    PhaseHistory,
    CheckPhase,
    ReportPhase,
    WhoAmI,
    LookupUser,
    RevealUser,
    RevokeSessions,
    TailEvents,
    FleetTraffic,
}

impl AdminRpc {
    pub const ALL: [AdminRpc; 12] = [
        AdminRpc::GetPhase,
        AdminRpc::SetPhase,
        AdminRpc::WatchPhase,
        AdminRpc::PhaseHistory,
        AdminRpc::CheckPhase,
        AdminRpc::ReportPhase,
        AdminRpc::WhoAmI,
        AdminRpc::LookupUser,
        AdminRpc::RevealUser,
        AdminRpc::RevokeSessions,
        AdminRpc::TailEvents,
        AdminRpc::FleetTraffic,
    ];

    /// The method's name, as the audit trail records it.
    pub fn name(self) -> &'static str {
        match self {
            AdminRpc::GetPhase => "GetPhase",
            AdminRpc::SetPhase => "SetPhase",
            AdminRpc::WatchPhase => "WatchPhase",
            AdminRpc::PhaseHistory => "PhaseHistory",
            AdminRpc::CheckPhase => "CheckPhase",
            AdminRpc::ReportPhase => "ReportPhase",
            AdminRpc::WhoAmI => "WhoAmI",
            AdminRpc::LookupUser => "LookupUser",
            AdminRpc::RevealUser => "RevealUser",
            AdminRpc::RevokeSessions => "RevokeSessions",
            AdminRpc::TailEvents => "TailEvents",
            AdminRpc::FleetTraffic => "FleetTraffic",
        }
    }

    /// `Service.Method`, as WhoAmI lists it.
    pub fn full_name(self) -> String {
        let service = match self {
            AdminRpc::GetPhase
            | AdminRpc::SetPhase
            | AdminRpc::WatchPhase
            | AdminRpc::PhaseHistory
            | AdminRpc::CheckPhase
            | AdminRpc::ReportPhase => "Phases",
            _ => "Admin",
        };
        format!("{service}.{}", self.name())
    }

    /// What each admin role may call.
    pub fn allows(self, role: AdminRole) -> bool {
        use AdminRpc::*;
        let viewer = matches!(
            self,
            GetPhase | WatchPhase | PhaseHistory | CheckPhase | WhoAmI | TailEvents | FleetTraffic
        );
        let support = viewer || matches!(self, LookupUser | RevealUser | RevokeSessions);
        match role {
            AdminRole::Viewer => viewer,
            AdminRole::Support => support,
            // Heartbeats hold and lift the write fence: gateways' alone.
            AdminRole::Operator => support || self == SetPhase,
            AdminRole::Gateway => matches!(self, WatchPhase | ReportPhase),
        }
    }
}

/// An admin caller the gate let through.
#[derive(Clone, Debug)]
pub struct Admin {
    pub name: String,
    /// `None` for a gateway known by its client certificate.
    pub role: Option<AdminRole>,
    pub expires: Option<OffsetDateTime>,
}

pub struct AdminGate {
    credentials: AdminCredentials,
    audit: AuditTrail,
}

impl AdminGate {
    pub fn new(credentials: AdminCredentials, audit: AuditTrail) -> Self {
        Self { credentials, audit }
    }

    pub fn trail(&self) -> &AuditTrail {
        &self.audit
    }

    /// Who is calling, if they may make this call; audited when refused.
    pub async fn authorize<T>(&self, request: &Request<T>, rpc: AdminRpc) -> Result<Admin, Status> {
        let decided = self.decide(request, rpc);
        if let Err((who, status)) = &decided {
            let outcome = format!("{:?}", status.code());
            warn!(who, rpc = rpc.name(), outcome, "admin call refused");
            self.record(who, rpc, &outcome, None).await;
        }
        decided.map_err(|(_, status)| status)
    }

    fn decide<T>(&self, request: &Request<T>, rpc: AdminRpc) -> Result<Admin, (String, Status)> {
        if let Some(Caller {
            peer:
                Peer::Certified {
                    id,
                    role: Some(Role::Gateway),
                },
            ..
        }) = request.extensions().get::<Caller>()
            && matches!(rpc, AdminRpc::WatchPhase | AdminRpc::ReportPhase)
        {
            return Ok(Admin {
                name: format!("gateway-certificate {}", id.as_deref().unwrap_or("-")),
                role: None,
                expires: None,
            });
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
        Ok(Admin {
            name: credential.name.clone(),
            role: Some(credential.role),
            expires: credential.expires,
        })
    }

    /// Records an admin call: who, which RPC, the outcome, and for calls
    /// about a member its id and the reason given.
    pub async fn record(
        &self,
        who: &str,
        rpc: AdminRpc,
        outcome: &str,
        about: Option<(i64, &str)>,
    ) {
        // 0: the call named no member, or none was found.
        let member = about.map(|(member, _)| member).filter(|&id| id > 0);
        // The reason last, so the fields before it cannot be forged by it.
        let reason = about.map_or_else(String::new, |(_, reason)| format!(" reason={reason}"));
        let detail = format!("who={who} rpc={} outcome={outcome}{reason}", rpc.name());
        if let Err(err) = self.audit.record("admin_call", member, &detail).await {
            warn!(cause = %err, rpc = rpc.name(), "auditing an admin call failed");
        }
    }

    /// Audits the outcome of an authorised call and passes it on.
    pub async fn audited<T>(
        &self,
        who: &str,
        rpc: AdminRpc,
        result: Result<T, Status>,
    ) -> Result<tonic::Response<T>, Status> {
        self.record(who, rpc, &outcome(&result), None).await;
        result.map(tonic::Response::new)
    }
}

/// `ok`, or the gRPC code of a failure.
pub fn outcome<T>(result: &Result<T, Status>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(status) => format!("{:?}", status.code()),
    }
}
