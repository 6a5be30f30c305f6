//! REST handlers: each translates one route to one idsvc call.

pub mod internal;
pub mod meta;
pub mod sessions;
pub mod users;

use crate::access::AccessVerifier;
use crate::clients::Clients;
use crate::phase::gate::Cutover;
use crate::upstream::Upstream;
use axum::extract::FromRef;
use std::sync::Arc;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub upstream: Upstream,
    pub verifier: Arc<AccessVerifier>,
    pub clients: Clients,
    /// Legacy and the phase, during a cutover.
    pub cutover: Cutover,
    /// The body limit, for the bodies routing reads.
    pub max_body_bytes: usize,
}
