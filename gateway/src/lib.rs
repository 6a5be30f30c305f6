//! The gateway: idbase's only public edge. It speaks HTTP/JSON to apps and the
//! legacy web tier and gRPC to idsvc; it authenticates client apps, verifies
//! access tokens, and turns every error into problem+json.

pub mod access;
pub mod anomaly;
pub mod api;
pub mod clients;
pub mod clock;
pub mod connections;
pub mod edge;
pub mod iptable;
pub mod legacy;
pub mod metrics_listener;
pub mod openapi;
pub mod phase;
pub mod problem;
pub mod routes;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod waf;

use crate::access::AccessVerifier;
use crate::clients::Clients;
use crate::connections::{ConnectionLimits, Connections};
use crate::phase::follow::{Follower, Reported};
use crate::phase::gate::Cutover;
use crate::problem::Problem;
use crate::routes::{AppState, internal, meta, sessions, users};
use crate::upstream::{Upstream, UpstreamArgs, UpstreamConfig};
use crate::waf::source_ip::TrustedProxies;
use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post, put};
use idbase_proto::ProblemType;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Largest request body: generous for every JSON body we take, and small
/// enough that nothing large is ever read, let alone hashed.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;

/// `idbase gateway`.
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    /// Clients file (TOML: id, class, token_sha256 per client).
    #[arg(long, env = "IDBASE_CLIENTS")]
    pub clients: PathBuf,
    /// HTTP listen address.
    #[arg(long, env = "IDBASE_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Largest accepted request body in bytes; larger gets 413.
    #[arg(long, env = "IDBASE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Prometheus metrics address (plain HTTP, `/metrics`), kept off the
    /// public listeners; off when unset.
    #[arg(long, env = "IDBASE_METRICS")]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub edge: edge::EdgeArgs,
    #[command(flatten)]
    pub connections: connections::ConnectionArgs,
    #[command(flatten)]
    pub tls: tls::TlsArgs,
    #[command(flatten)]
    pub legacy: legacy::LegacyArgs,
    #[command(flatten)]
    pub follow: phase::follow::FollowArgs,
    #[command(flatten)]
    pub shadow: phase::shadow::ShadowArgs,
}

/// What a gateway needs to serve, however it was configured.
pub struct GatewayConfig {
    pub upstream: UpstreamConfig,
    pub clients: Clients,
    pub max_body_bytes: usize,
    /// Source address, WAF, login-anomaly detection.
    pub edge: edge::Edge,
}

/// The migration cutover: legacy and the phase this gateway follows. Off
/// (the default) means every request goes to idsvc.
#[derive(Default)]
pub struct CutoverConfig {
    pub legacy: Option<legacy::LegacyConfig>,
    pub follow: Option<phase::follow::FollowConfig>,
    /// Shadow reads; `None` when off.
    pub shadows: Option<Arc<phase::shadow::Shadows>>,
}

/// The whole HTTP API, without a cutover.
pub fn router(config: GatewayConfig) -> anyhow::Result<Router> {
    router_with(config, CutoverConfig::default())
}

/// The whole HTTP API. Following the phase starts here (it needs a Tokio
/// runtime) and stops when the router is dropped.
pub fn router_with(config: GatewayConfig, cutover_config: CutoverConfig) -> anyhow::Result<Router> {
    let upstream = Upstream::new(config.upstream).context("idsvc URL")?;
    let mut cutover = Cutover {
        legacy: cutover_config
            .legacy
            .map(legacy::Legacy::new)
            .transpose()
            .context("legacy URL")?,
        shadows: cutover_config.shadows,
        ..Cutover::default()
    };
    if let Some(follow) = cutover_config.follow {
        let follower = Follower::new(follow.stale_after);
        let reported = Reported {
            writes: Arc::clone(&cutover.writes),
            legacy_writes: Arc::clone(&cutover.legacy_writes),
            traffic: Arc::clone(&cutover.traffic),
            upstream: upstream.clone(),
            legacy: cutover.legacy.clone(),
        };
        let stop = cutover.stop_on_drop();
        phase::follow::spawn(Arc::clone(&follower), follow, reported, stop)
            .context("--idsvc-admin")?;
        cutover.follower = Some(follower);
    }
    let state = AppState {
        verifier: Arc::new(AccessVerifier::new(upstream.clone())),
        upstream,
        clients: config.clients,
        cutover,
        max_body_bytes: config.max_body_bytes,
    };
    let edge = config.edge;
    // The phase gate sits innermost on every member route: the edge's
    // login-anomaly watch and registration limit see requests served by
    // either side, and the gate sees the client `require_client` found.
    let gate = from_fn_with_state(state.clone(), phase::gate::route);
    let mut login = post(sessions::login).layer(gate.clone());
    if let Some(anomaly) = &edge.anomaly {
        anomaly.set_sink(security_event_sink(state.upstream.clone()));
        login = login.layer(from_fn_with_state(anomaly.clone(), anomaly::watch));
    }
    let internal = Router::new()
        .route(
            "/internal/v1/users/{id}",
            put(internal::upsert)
                .delete(internal::delete)
                .layer(gate.clone()),
        )
        .route_layer(from_fn(clients::require_internal));
    let mut register = post(users::register).layer(gate.clone());
    if let Some(rule) = &edge.registrations {
        register = register.layer(from_fn_with_state(rule.clone(), waf::registration::limit));
    }
    let clients_only = Router::new()
        .route("/v1/users", register)
        .route(
            "/v1/users/me",
            get(users::me)
                .patch(users::update_me)
                .delete(users::withdraw)
                .layer(gate.clone()),
        )
        .route("/v1/sessions", login)
        .route(
            "/v1/tokens/refresh",
            post(sessions::refresh).layer(gate.clone()),
        )
        .route("/v1/tokens/revoke", post(sessions::revoke).layer(gate))
        .merge(internal)
        .route_layer(from_fn_with_state(
            state.clients.clone(),
            clients::require_client,
        ));
    let open = Router::new()
        .route("/.well-known/jwks.json", get(meta::jwks))
        .route("/openapi.json", get(meta::openapi))
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz));
    Ok(clients_only
        .merge(open)
        .fallback(|| async { Problem::new(ProblemType::NotFound, "no such route".to_owned()) })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                ProblemType::MethodNotAllowed,
                "method not allowed on this route".to_owned(),
            )
        })
        // `layer`, not `route_layer`: unknown paths (a scanner's probes) are
        // logged, counted and judged by the WAF like every other request.
        .layer(from_fn_with_state(edge, edge::guard))
        .layer(from_fn(upstream::trace::report))
        .layer(from_fn(telemetry::observe))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state))
}

/// Sends the gateway's security events to idsvc's audit trail, in the
/// background: an alert must never slow down or fail a login.
fn security_event_sink(upstream: Upstream) -> anomaly::EventSink {
    Arc::new(move |kind, detail| {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let request = idbase_proto::v1::SecurityEventRequest {
                kind: kind.to_owned(),
                detail,
            };
            if let Err(status) = upstream.identity().record_security_event(request).await {
                tracing::warn!(kind, code = ?status.code(), "security event not recorded by idsvc");
            }
        });
    })
}

/// Serves the API on `listener` with the default connection limits until
/// `shutdown` is cancelled, then drains.
pub async fn serve(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listeners = Listeners {
        http: listener,
        https: None,
        metrics: None,
        limits: ConnectionLimits::default(),
    };
    serve_listeners(config, listeners, shutdown).await
}

/// A TLS listener and its PEM files.
pub struct TlsListener {
    pub listener: std::net::TcpListener,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the gateway listens on, and the limits its client connections
/// are held to.
pub struct Listeners {
    pub http: TcpListener,
    pub https: Option<TlsListener>,
    /// Prometheus `/metrics`, apart from the public listeners.
    pub metrics: Option<TcpListener>,
    pub limits: ConnectionLimits,
}

/// Serves plain HTTP and, if given, HTTPS and metrics until `shutdown`,
/// then drains every listener.
pub async fn serve_listeners(
    config: GatewayConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_listeners_with(config, CutoverConfig::default(), listeners, shutdown).await
}

/// [`serve_listeners`] with a cutover.
pub async fn serve_listeners_with(
    config: GatewayConfig,
    cutover: CutoverConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    telemetry::prometheus();
    if let Some(waf) = &config.edge.waf {
        waf.clone().watch(shutdown.clone());
    }
    let app = router_with(config, cutover)?;
    // Both public listeners share one connection table: they share the
    // process's descriptors.
    let connections = Connections::new(listeners.limits);
    let metrics = listeners
        .metrics
        .map(|listener| tokio::spawn(metrics_listener::serve(listener, shutdown.clone())));
    let https = listeners.https.map(|tls| {
        tokio::spawn(tls::serve(
            app.clone(),
            tls.listener,
            tls.cert,
            tls.key,
            tls::RELOAD_INTERVAL,
            connections.clone(),
            shutdown.clone(),
        ))
    });
    info!(http = %listeners.http.local_addr()?, "gateway listening");
    connections
        .serve(
            "http",
            listeners.http,
            app,
            connections::plain,
            shutdown.clone(),
        )
        .await?;
    if let Some(https) = https {
        https.await??;
    }
    if let Some(metrics) = metrics {
        metrics.await??;
    }
    Ok(())
}

/// `idbase gateway`.
pub async fn run(args: GatewayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Before anything sets a gauge (the anomaly detector publishes its initial state).
    telemetry::prometheus();
    let nofile = connections::raise_descriptor_limit();
    let clients = Clients::load(&args.clients)?;
    let listener = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding {}", args.http))?;
    let tls = match (args.tls.tls_cert, args.tls.tls_key) {
        (Some(cert), Some(key)) => Some(TlsListener {
            listener: std::net::TcpListener::bind(args.tls.https)
                .with_context(|| format!("binding {}", args.tls.https))?,
            cert,
            key,
        }),
        _ => None,
    };
    let metrics = match args.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };
    let limits = ConnectionLimits::from_args(
        &args.connections,
        args.edge.ipv6_prefix_len,
        TrustedProxies::new(args.edge.trusted_proxies.clone()),
    )
    .fit_descriptors(nofile);
    let legacy = args.legacy.config()?.map(|legacy| legacy::LegacyConfig {
        trusted_proxies: TrustedProxies::new(args.edge.trusted_proxies.clone()),
        max_body_bytes: args.max_body_bytes,
        ..legacy
    });
    let cutover = CutoverConfig {
        legacy,
        follow: args.follow.config(args.upstream.tls.files())?,
        shadows: args.shadow.shadows(),
    };
    let config = GatewayConfig {
        upstream: args.upstream.into(),
        clients,
        max_body_bytes: args.max_body_bytes,
        edge: edge::Edge::from_args(args.edge, clock::Clock::default())?,
    };
    let listeners = Listeners {
        http: listener,
        https: tls,
        metrics,
        limits,
    };
    serve_listeners_with(config, cutover, listeners, shutdown).await
}
