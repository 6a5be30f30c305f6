//! The `idbase.v1.Identity` gRPC service: conversions between protobuf and
//! the domain, nothing else.

use crate::domain::{
    self, IdempotencyKey, IdentityService, LegacyUser, Principal, ShadowCheck, ShadowRead,
    SourceNetwork, UpsertOutcome, UserChanges,
};
use idbase_proto::v1::{self as pb, identity_server::Identity};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub struct IdentityGrpc {
    service: Arc<IdentityService>,
}

impl IdentityGrpc {
    pub fn new(service: Arc<IdentityService>) -> Self {
        Self { service }
    }
}

/// A span carrying the request id the gateway propagated (or none).
fn span<T>(request: &Request<T>, method: &'static str) -> tracing::Span {
    let request_id = request
        .metadata()
        .get(idbase_proto::problem::REQUEST_ID_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    tracing::info_span!("grpc", method, request_id)
}

fn user(user: domain::User) -> pb::User {
    pb::User {
        id: user.id,
        email: user.email.as_str().to_owned(),
        phone: user.phone.map(|p| p.as_str().to_owned()),
        created_at: user.created_at,
        updated_at: user.updated_at,
    }
}

fn token_pair(pair: domain::TokenPair) -> pb::TokenPair {
    pb::TokenPair {
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        expires_in: i64::try_from(pair.expires_in.as_secs()).unwrap_or(i64::MAX),
    }
}

fn principal(principal: Option<pb::Principal>) -> Result<Principal, Status> {
    let principal = principal.ok_or_else(|| Status::invalid_argument("principal is required"))?;
    Ok(Principal {
        user_id: principal.user_id,
        session_id: principal.session_id,
    })
}

#[tonic::async_trait]
impl Identity for IdentityGrpc {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let span = span(&request, "register");
        let r = request.into_inner();
        let key = r.idempotency_key.as_deref().map(|key| IdempotencyKey {
            client: &r.client_id,
            key,
        });
        let registered = self
            .service
            .register_once(key, &r.email, &r.password, r.phone.as_deref())
            .instrument(span)
            .await?;
        Ok(Response::new(user(registered)))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let span = span(&request, "login");
        let r = request.into_inner();
        let source = match r.source_network.as_str() {
            "" => None,
            text => Some(SourceNetwork::parse(text)?),
        };
        let pair = self
            .service
            .login_from(&r.email, &r.password, source, &r.client_id)
            .instrument(span)
            .await?;
        Ok(Response::new(token_pair(pair)))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let span = span(&request, "refresh");
        let pair = self
            .service
            .refresh(&request.into_inner().refresh_token)
            .instrument(span)
            .await?;
        Ok(Response::new(token_pair(pair)))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let span = span(&request, "revoke");
        self.service
            .revoke(&request.into_inner().refresh_token)
            .instrument(span)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_me(&self, request: Request<pb::MeRequest>) -> Result<Response<pb::User>, Status> {
        let span = span(&request, "get_me");
        let principal = principal(request.into_inner().principal)?;
        let me = self.service.me(&principal).instrument(span).await?;
        Ok(Response::new(user(me)))
    }

    async fn update_me(
        &self,
        request: Request<pb::UpdateMeRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let span = span(&request, "update_me");
        let r = request.into_inner();
        let principal = principal(r.principal)?;
        let changes = UserChanges {
            email: r.email,
            phone: r.phone,
            password: r.password,
            current_password: r.current_password,
        };
        let updated = self
            .service
            .update_me(&principal, changes)
            .instrument(span)
            .await?;
        Ok(Response::new(user(updated)))
    }

    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let span = span(&request, "withdraw");
        let r = request.into_inner();
        let principal = principal(r.principal)?;
        self.service
            .withdraw(&principal, &r.current_password)
            .instrument(span)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn record_security_event(
        &self,
        request: Request<pb::SecurityEventRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let span = span(&request, "record_security_event");
        let r = request.into_inner();
        self.service
            .record_edge_event(&r.kind, &r.detail)
            .instrument(span)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn exchange_legacy_session(
        &self,
        request: Request<pb::ExchangeLegacySessionRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let span = span(&request, "exchange_legacy_session");
        let r = request.into_inner();
        let pair = self
            .service
            .exchange_legacy_session(r.user_id, &r.legacy_token_sha256, &r.client_id)
            .instrument(span)
            .await?;
        Ok(Response::new(token_pair(pair)))
    }

    async fn shadow_reads(
        &self,
        request: Request<pb::ShadowReadsRequest>,
    ) -> Result<Response<pb::ShadowReadsResponse>, Status> {
        /// A batch the gateway sends is at most this long.
        const MAX_BATCH: usize = 256;
        let span = span(&request, "shadow_reads");
        let reads = request.into_inner().reads;
        if reads.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} shadow reads per call"
            )));
        }
        let checks = reads
            .into_iter()
            .map(|r| {
                let read = match r.read {
                    Some(pb::shadow_read::Read::Login(login)) => ShadowRead::Login {
                        email: login.email,
                        password: zeroize::Zeroizing::new(login.password),
                        legacy_accepted: login.legacy_accepted,
                    },
                    Some(pb::shadow_read::Read::Me(me)) => ShadowRead::Me {
                        member_id: me.member_id,
                        email: me.email,
                        phone: me.phone,
                    },
                    None => {
                        return Err(Status::invalid_argument(
                            "a shadow read names a login or a me read",
                        ));
                    }
                };
                Ok(ShadowCheck {
                    read,
                    recheck: r.recheck,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let results = self
            .service
            .shadow_reads(checks)
            .instrument(span)
            .await?
            .into_iter()
            .map(|result| match result {
                Ok(differences) => pb::ShadowReadResult {
                    differences: differences.into_iter().map(str::to_owned).collect(),
                    dropped: false,
                },
                Err(_) => pb::ShadowReadResult {
                    differences: vec![],
                    dropped: true,
                },
            })
            .collect();
        Ok(Response::new(pb::ShadowReadsResponse { results }))
    }

    async fn get_jwks(&self, _request: Request<pb::Empty>) -> Result<Response<pb::Jwks>, Status> {
        let keys = self
            .service
            .public_keys()
            .iter()
            .map(|key| pb::Jwk {
                kid: key.kid.clone(),
                x: key.x.clone(),
            })
            .collect();
        Ok(Response::new(pb::Jwks { keys }))
    }

    async fn upsert_legacy_user(
        &self,
        request: Request<pb::UpsertLegacyUserRequest>,
    ) -> Result<Response<pb::UpsertLegacyUserResponse>, Status> {
        let span = span(&request, "upsert_legacy_user");
        let r = request.into_inner();
        let legacy = LegacyUser {
            id: r.id,
            email: r.email,
            phone: r.phone,
            password_hash: r.password_hash,
            version: r.version,
        };
        let (outcome, version) = self.service.upsert_legacy(legacy).instrument(span).await?;
        let outcome = match outcome {
            UpsertOutcome::Created => pb::UpsertOutcome::Created,
            UpsertOutcome::Updated => pb::UpsertOutcome::Updated,
            UpsertOutcome::Unchanged => pb::UpsertOutcome::Unchanged,
            UpsertOutcome::Stale => pb::UpsertOutcome::Stale,
        };
        Ok(Response::new(pb::UpsertLegacyUserResponse {
            outcome: outcome.into(),
            id: r.id,
            version,
        }))
    }

    async fn delete_legacy_user(
        &self,
        request: Request<pb::DeleteLegacyUserRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let span = span(&request, "delete_legacy_user");
        let r = request.into_inner();
        self.service
            .delete_legacy(r.id, r.version)
            .instrument(span)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }
}
