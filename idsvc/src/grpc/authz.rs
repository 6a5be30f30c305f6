//! Who may call what: callers are named by the SPIFFE id in their client
//! certificate (`spiffe://<trust domain>/<role>`), and one table per RPC
//! says which roles may call it. One tower layer enforces the table on both
//! listeners, before any service sees the request.
//!
//! Refusals: no certificate → UNAUTHENTICATED; a certificate without a known
//! role, or a role the RPC does not allow → PERMISSION_DENIED. Each is logged
//! with the caller's address, id and the method, and counted in
//! `idbase_grpc_refused_total{reason}`.

use futures::future::{Either, Ready, ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use tonic::Status;
use tower::{Layer, Service};
use tracing::warn;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// What a caller's certificate entitles it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The gateway: every identity RPC, double writes included.
    Gateway,
    /// SRE tooling (the admin console, grpcurl): the admin port, reflection
    /// and the public signing keys; no member data on the identity port.
    Admin,
    /// Health checkers outside the kubelet (blackbox probes, other
    /// clusters' gateways' checkers): `grpc.health.v1` only.
    Monitor,
}

impl Role {
    const ALL: [Role; 3] = [Role::Gateway, Role::Admin, Role::Monitor];

    /// The last segment of the SPIFFE id.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Admin => "admin",
            Role::Monitor => "monitor",
        }
    }
}

use Role::{Admin, Gateway, Monitor};

/// The authorisation table: method path (`/package.Service/Method`) or a
/// service prefix (`/package.Service/`) → the roles allowed. The first
/// matching row decides; a method in no row is refused to everyone, so a
/// service added later is closed until it gets a row.
pub const TABLE: &[(&str, &[Role])] = &[
    ("/grpc.health.v1.Health/", &[Gateway, Admin, Monitor]),
    ("/grpc.reflection.v1.ServerReflection/", &[Admin]),
    // The same service in the version many stock clients still speak.
    ("/grpc.reflection.v1alpha.ServerReflection/", &[Admin]),
    // Public keys: also what an SRE fetches to check a token by hand.
    ("/idbase.v1.Identity/GetJwks", &[Gateway, Admin]),
    ("/idbase.v1.Identity/", &[Gateway]),
    // The admin service checks admin tokens itself (roles viewer, operator,
    // gateway); a gateway's certificate may only watch and report.
    ("/idbase.v1.Phases/", &[Gateway, Admin]),
];

/// The roles allowed to call `path`.
pub fn allowed(path: &str) -> &'static [Role] {
    TABLE
        .iter()
        .find(|(pattern, _)| {
            if pattern.ends_with('/') {
                path.starts_with(pattern)
            } else {
                path == *pattern
            }
        })
        .map_or(&[], |(_, roles)| roles)
}

/// Who is at the other end of a connection; attached to every request by
/// the listener (tonic's connect info).
#[derive(Clone, Debug)]
pub struct Caller {
    pub remote: Option<SocketAddr>,
    pub peer: Peer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Plain-text mode (`idbase dev`, loopback tests): nobody is checked.
    Plaintext,
    /// TLS without a client certificate.
    Anonymous,
    /// A certificate from the client CA. `id` is its SPIFFE id if it has one
    /// (for logs); `role` is set when that id names a role in our trust domain.
    Certified {
        id: Option<String>,
        role: Option<Role>,
    },
}

impl Peer {
    /// The peer of a verified leaf certificate (DER).
    pub fn certified(leaf: &[u8], trust_domain: &str) -> Self {
        let id = spiffe_id(leaf);
        let role = id.as_deref().and_then(|id| role_of(id, trust_domain));
        Peer::Certified { id, role }
    }
}

/// The first `spiffe://` URI SAN of a certificate.
fn spiffe_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
        _ => None,
    })
}

/// `spiffe://<trust_domain>/<role>` → the role; anything else → none.
pub fn role_of(spiffe_id: &str, trust_domain: &str) -> Option<Role> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    if !domain.eq_ignore_ascii_case(trust_domain) {
        return None;
    }
    Role::ALL.into_iter().find(|role| role.name() == path)
}

/// Why a call was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NoCertificate,
    UnknownIdentity,
    NotAllowed(Role),
}

/// The decision for one call.
pub fn decide(caller: Option<&Caller>, path: &str) -> Result<(), Refusal> {
    let Some(caller) = caller else {
        // A connection we did not accept ourselves has no caller: refuse.
        return Err(Refusal::NoCertificate);
    };
    match &caller.peer {
        Peer::Plaintext => Ok(()),
        Peer::Anonymous => Err(Refusal::NoCertificate),
        Peer::Certified { role: None, .. } => Err(Refusal::UnknownIdentity),
        Peer::Certified {
            role: Some(role), ..
        } => {
            if allowed(path).contains(role) {
                Ok(())
            } else {
                Err(Refusal::NotAllowed(*role))
            }
        }
    }
}

fn refusal_status(refusal: &Refusal, path: &str) -> Status {
    match refusal {
        Refusal::NoCertificate => {
            Status::unauthenticated("idsvc requires a client certificate from its client CA")
        }
        Refusal::UnknownIdentity => Status::permission_denied(
            "the client certificate names no idsvc role (spiffe://<trust domain>/<role>)",
        ),
        Refusal::NotAllowed(role) => {
            Status::permission_denied(format!("role {} may not call {path}", role.name()))
        }
    }
}

fn log_refusal(refusal: &Refusal, caller: Option<&Caller>, path: &str) {
    let reason = match refusal {
        Refusal::NoCertificate => "no-certificate",
        Refusal::UnknownIdentity => "unknown-identity",
        Refusal::NotAllowed(_) => "not-allowed",
    };
    metrics::counter!("idbase_grpc_refused_total", "reason" => reason).increment(1);
    let remote = caller.and_then(|c| c.remote);
    let id = caller.and_then(|c| match &c.peer {
        Peer::Certified { id, .. } => id.clone(),
        _ => None,
    });
    // The path comes from the client: bound what reaches the log.
    let method: String = path.chars().take(128).collect();
    warn!(
        reason,
        ?remote,
        caller = id.as_deref().unwrap_or("-"),
        method,
        "gRPC call refused"
    );
}

/// Enforces [`TABLE`] on every request.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthorizeLayer;

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authorize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let caller = request.extensions().get::<Caller>();
        let path = request.uri().path();
        match decide(caller, path) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(refusal) => {
                log_refusal(&refusal, caller, path);
                Either::Left(ready(Ok(refusal_status(&refusal, path).into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_only_from_our_trust_domain() {
        assert_eq!(role_of("spiffe://idbase/gateway", "idbase"), Some(Gateway));
        assert_eq!(role_of("spiffe://IDBASE/admin", "idbase"), Some(Admin));
        assert_eq!(role_of("spiffe://other/gateway", "idbase"), None);
        assert_eq!(role_of("spiffe://idbase/gateway/x", "idbase"), None);
        assert_eq!(role_of("spiffe://idbase/", "idbase"), None);
        assert_eq!(role_of("https://idbase/gateway", "idbase"), None);
    }

    #[test]
    fn the_table_closes_what_it_does_not_name() {
        assert_eq!(allowed("/idbase.v1.Identity/UpsertLegacyUser"), &[Gateway]);
        assert_eq!(allowed("/idbase.v1.Identity/GetJwks"), &[Gateway, Admin]);
        assert_eq!(allowed("/idbase.v1.Identity/GetJwksX"), &[Gateway]);
        assert!(allowed("/idbase.v1.Admin/SetPhase").is_empty());
        assert_eq!(allowed("/idbase.v1.Phases/SetPhase"), &[Gateway, Admin]);
        assert!(allowed("/grpc.health.v1.Health").is_empty());
        assert!(allowed("").is_empty());
    }

    #[test]
    fn decisions() {
        let caller = |peer| Caller { remote: None, peer };
        let certified = |role| Peer::Certified { id: None, role };
        let upsert = "/idbase.v1.Identity/UpsertLegacyUser";
        assert_eq!(decide(Some(&caller(Peer::Plaintext)), upsert), Ok(()));
        assert_eq!(decide(None, upsert), Err(Refusal::NoCertificate));
        assert_eq!(
            decide(Some(&caller(Peer::Anonymous)), upsert),
            Err(Refusal::NoCertificate)
        );
        assert_eq!(
            decide(Some(&caller(certified(None))), upsert),
            Err(Refusal::UnknownIdentity)
        );
        assert_eq!(
            decide(Some(&caller(certified(Some(Gateway)))), upsert),
            Ok(())
        );
        assert_eq!(
            decide(Some(&caller(certified(Some(Admin)))), upsert),
            Err(Refusal::NotAllowed(Admin))
        );
    }
}
