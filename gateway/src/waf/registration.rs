//! The built-in rate rule on registration (`POST /v1/users`): at most
//! `limit` per source address (IPv6 by its network) per minute. idsvc answers
//! 409 for a taken email, as Cognito and Keycloak do; this rule bounds how
//! fast anyone can use that answer to learn which emails are members, and
//! how fast a script can create accounts. It applies whether or not a WAF
//! file is loaded (WAF rules match addresses and user agents, not routes).

use super::rules::RateState;
use crate::clock::Clock;
use crate::problem::Problem;
use crate::waf::source_ip::SourceIp;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idbase_proto::ProblemType;
use std::sync::Arc;

/// Registrations per source address per minute: a household or an office
/// behind one NAT signing up together stays well under it; enumerating
/// emails or creating accounts in bulk does not.
pub const DEFAULT_REGISTRATIONS_PER_MINUTE: u64 = 10;
const WINDOW_SECS: u64 = 60;

pub struct RegistrationLimit {
    limit: u64,
    ipv6_prefix: u8,
    clock: Clock,
    counts: RateState,
}

impl RegistrationLimit {
    /// `None` when `per_minute` is 0 (the rule is off).
    pub fn new(per_minute: u64, ipv6_prefix: u8, clock: Clock) -> Option<Arc<Self>> {
        (per_minute > 0).then(|| {
            Arc::new(Self {
                limit: per_minute,
                ipv6_prefix,
                clock,
                counts: RateState::new(WINDOW_SECS, super::DEFAULT_RATE_CAPACITY),
            })
        })
    }

    /// Counts a registration from `request`'s source; over the limit, the
    /// seconds until it may retry.
    fn hit(&self, request: &Request) -> Option<u64> {
        let SourceIp(ip) = request.extensions().get::<SourceIp>().copied()?;
        let key = crate::iptable::source_key(ip, self.ipv6_prefix);
        self.counts.hit(key, self.clock.now_ms(), self.limit)
    }
}

/// Middleware on `POST /v1/users`: 429 with Retry-After over the limit.
pub async fn limit(
    State(rule): State<Arc<RegistrationLimit>>,
    request: Request,
    next: Next,
) -> Response {
    match rule.hit(&request) {
        Some(retry_after_secs) => {
            metrics::counter!("idbase_waf_decisions_total", "rule" => "registrations", "action" => "rate")
                .increment(1);
            Problem::new(
                ProblemType::RateLimited,
                "too many registrations from this address".to_owned(),
            )
            .retry_after(retry_after_secs)
            .into_response()
        }
        None => next.run(request).await,
    }
}
