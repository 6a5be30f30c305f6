//! What stands in front of the routes: the request's source address, the
//! WAF, and login-anomaly detection, configured once at start.

use crate::anomaly::{AnomalyArgs, LoginAnomaly};
use crate::clock::Clock;
use crate::iptable::DEFAULT_IPV6_PREFIX_LEN;
use crate::problem::Problem;
use crate::waf::Waf;
use crate::waf::registration::RegistrationLimit;
use crate::waf::rules::Decision;
use crate::waf::source_ip::{SourceIp, TrustedProxies};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::USER_AGENT;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idbase_proto::ProblemType;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

/// `idbase gateway` flags for the edge's defences.
#[derive(Clone, Debug, clap::Args)]
pub struct EdgeArgs {
    /// WAF rules file (TOML, see README); re-read when it changes.
    #[arg(long, env = "IDBASE_WAF")]
    pub waf: Option<PathBuf>,
    /// CIDRs of proxies whose X-Forwarded-For is believed (the ALB), comma-separated.
    #[arg(long, env = "IDBASE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// IPv6 prefix length per-address state (WAF rate rules, login anomalies,
    /// auto-block, connection caps) is keyed by; 128 keys every address apart.
    #[arg(long, env = "IDBASE_IPV6_PREFIX_LEN", default_value_t = DEFAULT_IPV6_PREFIX_LEN,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    pub ipv6_prefix_len: u8,
    /// Registrations (`POST /v1/users`) per source address per minute; over
    /// it, 429 with Retry-After. 0 turns the rule off.
    #[arg(long, env = "IDBASE_REGISTRATIONS_PER_MINUTE",
          default_value_t = crate::waf::registration::DEFAULT_REGISTRATIONS_PER_MINUTE)]
    pub registrations_per_minute: u64,
    #[command(flatten)]
    pub anomaly: AnomalyArgs,
}

/// The edge's defences as the router uses them.
#[derive(Clone, Default)]
pub struct Edge {
    pub trusted: TrustedProxies,
    pub waf: Option<Arc<Waf>>,
    pub anomaly: Option<Arc<LoginAnomaly>>,
    /// The built-in rate rule on registration; `None` when turned off.
    pub registrations: Option<Arc<RegistrationLimit>>,
}

impl Edge {
    /// Loads the WAF rules and sets up anomaly detection; idsvc's audit sink
    /// is attached by the router.
    pub fn from_args(args: EdgeArgs, clock: Clock) -> anyhow::Result<Self> {
        let prefix = args.ipv6_prefix_len;
        let waf = args
            .waf
            .map(|path| Waf::load(&path, clock.clone(), crate::waf::DEFAULT_RATE_CAPACITY))
            .transpose()?
            .map(|waf| Arc::new(waf.with_ipv6_prefix(prefix)));
        let registrations =
            RegistrationLimit::new(args.registrations_per_minute, prefix, clock.clone());
        let anomaly = LoginAnomaly::new(args.anomaly, clock)?.with_ipv6_prefix(prefix);
        Ok(Self {
            trusted: TrustedProxies::new(args.trusted_proxies),
            waf,
            anomaly: Some(Arc::new(anomaly)),
            registrations,
        })
    }
}

/// The WAF's decision as the access log shows it.
#[derive(Clone, Debug)]
pub struct WafLabel(pub String);

/// Middleware: decides the source address, then lets the WAF decide.
pub async fn guard(State(edge): State<Edge>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let ip = edge.trusted.source_ip(peer, request.headers());
    request.extensions_mut().insert(SourceIp(ip));
    let decision = edge.waf.as_ref().map(|waf| {
        let agent = request
            .headers()
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        waf.evaluate(ip, agent)
    });
    let mut response = match &decision {
        Some(Decision::Block(_)) => Problem::new(
            ProblemType::Blocked,
            "request blocked by the web application firewall".to_owned(),
        )
        .into_response(),
        Some(Decision::RateLimited {
            retry_after_secs, ..
        }) => Problem::new(
            ProblemType::RateLimited,
            "too many requests from this address".to_owned(),
        )
        .retry_after(*retry_after_secs)
        .into_response(),
        _ => next.run(request).await,
    };
    response.extensions_mut().insert(SourceIp(ip));
    if let Some(decision) = decision
        && response.extensions().get::<WafLabel>().is_none()
    {
        response.extensions_mut().insert(WafLabel(decision.label()));
    }
    response
}
