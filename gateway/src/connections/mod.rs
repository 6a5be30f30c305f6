//! The gateway's HTTP and HTTPS listeners, served with hyper directly so
//! that every connection is bounded: a header timeout for the whole request
//! head (nginx's `client_header_timeout`), an idle timeout between requests
//! (`keepalive_timeout`), a cap per source address and a global cap below the
//! descriptor limit (idle connections are shed first), and HTTP/2 stream
//! limits with rapid-reset protection (CVE-2023-44487). On shutdown the
//! listeners stop accepting, every connection is asked to finish (HTTP/1
//! closes after its current response, HTTP/2 sends GOAWAY), and what is still
//! open after the drain period is closed.

pub mod registry;
pub mod tracked;

use crate::iptable::DEFAULT_IPV6_PREFIX_LEN;
use crate::waf::source_ip::TrustedProxies;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use registry::{Admitted, Registry};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};
use tracked::{ConnState, Phase, Tracked};

/// Time for the whole request head, from its first byte (or from accept, for
/// a connection's first request or TLS handshake). Real clients send a head
/// in one packet; 10 s leaves room for a slow mobile network while a
/// slow-loris holds a descriptor for at most this long.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// A kept-alive connection with no request in flight is closed after this.
/// Longer than the ALB's 60 s idle timeout, as AWS advises for targets, so
/// the ALB never sends a request on a connection the gateway is closing.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 75;
/// Concurrent connections per source address (per IPv6 network): browsers
/// open 6 per host, so this leaves room for a large NAT while one address
/// cannot take more than a small share of `DEFAULT_MAX_CONNECTIONS`. The
/// trusted proxies (the ALB) are exempt.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Connections of the whole process. An idle plain connection holds about
/// 8–16 KiB of buffers (TLS adds about as much again), so 4096 fit in the
/// gateway pod's 128 MiB memory limit beside everything else; lowered at
/// start to leave `FD_RESERVE` descriptors free under the process's limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Streams a client may have open at once on one HTTP/2 connection (the
/// value most servers advertise; nginx's `http2_max_concurrent_streams`).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may open and reset before the gateway has accepted them;
/// beyond that the connection is closed (the rapid-reset defence).
pub const DEFAULT_H2_MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the gateway may reset because of client protocol errors before it
/// closes the connection (hyper's default; the other half of the defence).
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Descriptors kept for everything that is not a client connection: gRPC
/// channels to idsvc, the legacy API, certificate and rule files, logs.
pub const FD_RESERVE: u64 = 512;
/// Open connections get this long to finish on shutdown.
pub const DRAIN: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// `idbase gateway` flags bounding client connections.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectionArgs {
    /// Seconds a client has to send a whole request head (and, on HTTPS,
    /// to finish the TLS handshake).
    #[arg(long, env = "IDBASE_HEADER_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Seconds a kept-alive connection may wait for its next request.
    #[arg(long, env = "IDBASE_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// Concurrent connections per source address (per IPv6 network of
    /// `--ipv6-prefix-len` bits); trusted proxies are exempt.
    #[arg(long, env = "IDBASE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub max_connections_per_address: usize,
    /// Concurrent connections of the process (lowered to fit the descriptor
    /// limit); when reached, idle connections are shed for new ones.
    #[arg(long, env = "IDBASE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// HTTP/2 streams a client may have open at once per connection.
    #[arg(long, env = "IDBASE_H2_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_H2_MAX_CONCURRENT_STREAMS)]
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams reset by the client before being accepted, after
    /// which the connection is closed (rapid reset, CVE-2023-44487).
    #[arg(long, env = "IDBASE_H2_MAX_PENDING_RESET_STREAMS", default_value_t = DEFAULT_H2_MAX_PENDING_RESET_STREAMS)]
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams reset for client protocol errors, after which the
    /// connection is closed.
    #[arg(long, env = "IDBASE_H2_MAX_LOCAL_ERROR_RESET_STREAMS", default_value_t = DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS)]
    pub h2_max_local_error_reset_streams: usize,
}

/// The connection limits as the listeners apply them.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections_per_address: usize,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
    /// Prefix length the per-address cap keys IPv6 peers by.
    pub ipv6_prefix: u8,
    /// Peers exempt from the per-address cap.
    pub trusted: TrustedProxies,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            h2_max_pending_reset_streams: DEFAULT_H2_MAX_PENDING_RESET_STREAMS,
            h2_max_local_error_reset_streams: DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            ipv6_prefix: DEFAULT_IPV6_PREFIX_LEN,
            trusted: TrustedProxies::default(),
        }
    }
}

impl ConnectionLimits {
    pub fn from_args(args: &ConnectionArgs, ipv6_prefix: u8, trusted: TrustedProxies) -> Self {
        Self {
            header_timeout: Duration::from_secs(args.header_timeout_secs),
            idle_timeout: Duration::from_secs(args.idle_timeout_secs),
            max_connections_per_address: args.max_connections_per_address,
            max_connections: args.max_connections,
            h2_max_concurrent_streams: args.h2_max_concurrent_streams,
            h2_max_pending_reset_streams: args.h2_max_pending_reset_streams,
            h2_max_local_error_reset_streams: args.h2_max_local_error_reset_streams,
            ipv6_prefix,
            trusted,
        }
    }

    /// Lowers the global cap to leave `FD_RESERVE` descriptors under `nofile`.
    pub fn fit_descriptors(mut self, nofile: u64) -> Self {
        let fits = usize::try_from(nofile.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX);
        if self.max_connections > fits {
            warn!(
                configured = self.max_connections,
                nofile,
                max_connections = fits,
                "connection cap lowered to fit the descriptor limit"
            );
            self.max_connections = fits;
        }
        self
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The header timeout is enforced per phase by `tracked`, from the
        // first byte of each head; hyper's own would also cut idle
        // keep-alive connections after the (shorter) header timeout.
        builder.http1().header_read_timeout(None).keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(self.h2_max_pending_reset_streams)
            .max_local_error_reset_streams(self.h2_max_local_error_reset_streams)
            // Pings find peers that vanished without closing.
            .keep_alive_interval(Some(self.idle_timeout))
            .keep_alive_timeout(self.header_timeout);
        builder
    }
}

/// Raises the soft descriptor limit to the hard one, so that the connection
/// cap, not the kernel, decides when to stop accepting. Returns the limit in
/// force.
pub fn raise_descriptor_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            info!(nofile = limit, "descriptor limit");
            limit
        }
        Err(e) => {
            let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
            warn!(error = %e, nofile = soft, "descriptor limit not raised");
            soft
        }
    }
}

/// The listeners of one process share its connection table.
#[derive(Clone)]
pub struct Connections {
    limits: Arc<ConnectionLimits>,
    registry: Arc<Registry>,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Self {
        let registry = Registry::new(
            limits.max_connections,
            limits.max_connections_per_address,
            limits.ipv6_prefix,
            limits.trusted.clone(),
        );
        Self {
            builder: Arc::new(limits.builder()),
            registry: Arc::new(registry),
            limits: Arc::new(limits),
        }
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Connections open now, on every listener.
    pub fn open(&self) -> usize {
        self.registry.open()
    }

    /// Serves `app` on `listener` until `shutdown`, then drains. `handshake`
    /// turns an accepted TCP stream into the stream HTTP is spoken on (TLS,
    /// or the stream itself) and says whether it negotiated HTTP/2; it runs
    /// under the header timeout.
    pub async fn serve<H, F, IO>(
        &self,
        name: &'static str,
        listener: TcpListener,
        app: Router,
        handshake: H,
        shutdown: CancellationToken,
    ) -> std::io::Result<()>
    where
        H: Fn(TcpStream) -> F + Clone + Send + 'static,
        F: Future<Output = std::io::Result<(IO, bool)>> + Send,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut tasks = JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors (EMFILE) or a connection reset
                        // before accept: keep serving what is open.
                        warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            // Finished connections are reaped as we go: memory stays bounded.
            while tasks.try_join_next().is_some() {}
            let state = Arc::new(ConnState::new(
                self.limits.header_timeout,
                self.limits.idle_timeout,
            ));
            let admitted = match self.registry.admit(peer.ip(), state.clone()) {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    metrics::counter!("idbase_http_connections_refused_total", "reason" => refusal.label())
                        .increment(1);
                    debug!(
                        listener = name,
                        reason = refusal.label(),
                        "connection refused"
                    );
                    // Closed at once: the client sees a reset, not a hang.
                    drop(stream);
                    continue;
                }
            };
            let (this, app, handshake, shutdown) = (
                self.clone(),
                app.clone(),
                handshake.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                let _ = stream.set_nodelay(true);
                let header_timeout = this.limits.header_timeout;
                let io = match tokio::time::timeout(header_timeout, handshake(stream)).await {
                    Ok(Ok((io, h2))) => {
                        if h2 {
                            state.set_h2();
                        }
                        io
                    }
                    Ok(Err(e)) => {
                        debug!(listener = name, error = %e, "handshake failed");
                        return;
                    }
                    Err(_) => {
                        closed("handshake_timeout");
                        return;
                    }
                };
                this.serve_connection(io, peer, state, admitted, app, shutdown)
                    .await;
            });
        }
        drop(listener);
        info!(listener = name, open = tasks.len(), "draining connections");
        if tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            warn!(
                listener = name,
                left = tasks.len(),
                "connections closed after the drain period"
            );
            tasks.shutdown().await;
        }
        Ok(())
    }

    async fn serve_connection<IO>(
        &self,
        io: IO,
        peer: SocketAddr,
        state: Arc<ConnState>,
        _admitted: Admitted,
        app: Router,
        shutdown: CancellationToken,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = {
            let state = state.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                let in_flight = state.begin();
                request.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                async move {
                    let response = app.oneshot(request).await;
                    drop(in_flight);
                    response
                }
            })
        };
        let io = TokioIo::new(Tracked::new(io, state.clone()));
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let why = loop {
            let deadline = state.deadline();
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = state.changed.notified() => continue,
                _ = sleep_until(deadline) => {
                    if state.deadline().is_some_and(|d| d <= tokio::time::Instant::now()) {
                        match state.phase() {
                            // A head still incomplete: nothing to finish.
                            Phase::Head => {
                                closed("header_timeout");
                                return;
                            }
                            _ => break "idle_timeout",
                        }
                    }
                }
                _ = state.shed.cancelled() => break "shed",
                _ = shutdown.cancelled() => break "shutdown",
            }
        };
        closed(why);
        // HTTP/1 closes after the response in progress, HTTP/2 sends GOAWAY
        // and finishes its open streams.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(DRAIN, connection).await;
    }
}

fn closed(reason: &'static str) {
    metrics::counter!("idbase_http_connections_closed_total", "reason" => reason).increment(1);
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The plain-HTTP handshake: none.
pub async fn plain(stream: TcpStream) -> std::io::Result<(TcpStream, bool)> {
    Ok((stream, false))
}
