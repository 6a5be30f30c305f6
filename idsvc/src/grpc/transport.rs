//! How idsvc's gRPC listeners accept connections: mTLS in production, plain
//! text only on loopback (`idbase dev`, tests). Every accepted connection
//! carries a [`Caller`] for the authorisation layer.

use super::authz::{Caller, Peer};
use super::tls::{RELOAD_INTERVAL, ServerTls, ServerTlsFiles};
use anyhow::Context;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// A handshake that has not finished by then is dropped (a slow or
/// silent client must not hold a slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight per listener; beyond this new connections are
/// closed at once, so a connection flood costs bounded memory and CPU.
const MAX_HANDSHAKES: usize = 256;

/// `idbase idsvc` flags for its gRPC transport.
#[derive(Clone, Debug, clap::Args)]
pub struct TransportArgs {
    /// idsvc's PEM certificate chain for both gRPC ports (with `--tls-key`, `--client-ca`).
    #[arg(long, env = "IDBASE_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "IDBASE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle that signs callers' client certificates.
    #[arg(long, env = "IDBASE_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// SPIFFE trust domain of callers' ids (`spiffe://<domain>/<role>`).
    #[arg(long, env = "IDBASE_SPIFFE_TRUST_DOMAIN", default_value = "idbase")]
    pub spiffe_trust_domain: String,
    /// Serve plain-text gRPC without caller checks; loopback addresses only.
    #[arg(
        long,
        env = "IDBASE_INSECURE_PLAINTEXT",
        conflicts_with = "tls_cert",
        default_value_t = false
    )]
    pub insecure_plaintext: bool,
    /// Plain-text `grpc.health.v1` for kubelet probes (they cannot present
    /// a certificate); serves nothing else. Off when unset.
    #[arg(long, env = "IDBASE_HEALTH_GRPC")]
    pub health_grpc: Option<SocketAddr>,
}

/// How connections are accepted.
#[derive(Clone)]
pub enum Transport {
    /// No TLS and no caller checks: loopback only.
    Plaintext,
    /// TLS with client certificates; callers' roles come from their SPIFFE
    /// ids in `trust_domain`.
    Mtls {
        tls: Arc<ServerTls>,
        trust_domain: Arc<str>,
    },
}

impl Transport {
    /// The transport the flags ask for. Plain text must be asked for and is
    /// refused for any listen address that is not loopback.
    pub fn from_args(args: &TransportArgs, listen: &[SocketAddr]) -> anyhow::Result<Self> {
        match (&args.tls_cert, &args.tls_key, &args.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => {
                let tls = ServerTls::load(ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: client_ca.clone(),
                })?;
                Ok(Self::mtls(tls, &args.spiffe_trust_domain))
            }
            _ if args.insecure_plaintext => {
                Self::plaintext_on(listen)?;
                Ok(Self::Plaintext)
            }
            _ => anyhow::bail!(
                "idsvc needs --tls-cert, --tls-key and --client-ca (mTLS), \
                 or --insecure-plaintext on loopback addresses"
            ),
        }
    }

    pub fn mtls(tls: Arc<ServerTls>, trust_domain: &str) -> Self {
        Self::Mtls {
            tls,
            trust_domain: trust_domain.into(),
        }
    }

    /// Checks that plain text would only be served on loopback.
    pub fn plaintext_on(listen: &[SocketAddr]) -> anyhow::Result<()> {
        let exposed: Vec<String> = listen
            .iter()
            .filter(|addr| !addr.ip().is_loopback())
            .map(ToString::to_string)
            .collect();
        anyhow::ensure!(
            exposed.is_empty(),
            "plain-text gRPC is allowed on loopback addresses only, not on {}; \
             give --tls-cert, --tls-key and --client-ca",
            exposed.join(", ")
        );
        Ok(())
    }

    /// Starts re-reading the TLS files (nothing to do in plain text).
    pub fn watch(&self, shutdown: CancellationToken) {
        if let Self::Mtls { tls, .. } = self {
            Arc::clone(tls).watch(RELOAD_INTERVAL, shutdown);
        }
    }
}

/// An accepted connection, plain or TLS.
pub enum Conn {
    Plain(TcpStream, SocketAddr),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Caller),
}

impl Connected for Conn {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        match self {
            Conn::Plain(_, remote) => Caller {
                remote: Some(*remote),
                peer: Peer::Plaintext,
            },
            Conn::Tls(_, caller) => caller.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener`, for tonic's
/// `serve_with_incoming_shutdown`. TLS handshakes run concurrently (one slow
/// client does not hold up the others) with a timeout and a cap; failed
/// handshakes are logged and never reach tonic. Accepting stops at
/// `shutdown` or when tonic drops the stream, closing the listener.
pub fn incoming(
    listener: TcpListener,
    transport: Transport,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accepting a gRPC connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match &transport {
                Transport::Plaintext => {
                    if tx.send(Ok(Conn::Plain(tcp, remote))).await.is_err() {
                        return;
                    }
                }
                Transport::Mtls { tls, trust_domain } => {
                    let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                        debug!(%remote, "too many TLS handshakes in flight; connection closed");
                        continue;
                    };
                    let (tls, trust_domain, tx) =
                        (tls.current(), Arc::clone(trust_domain), tx.clone());
                    tokio::spawn(async move {
                        let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
                        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                warn!(%remote, error = %e, "gRPC TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%remote, "gRPC TLS handshake timed out");
                                return;
                            }
                        };
                        drop(permit);
                        let peer = match stream.get_ref().1.peer_certificates() {
                            Some([leaf, ..]) => Peer::certified(leaf, &trust_domain),
                            _ => Peer::Anonymous,
                        };
                        let caller = Caller {
                            remote: Some(remote),
                            peer,
                        };
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream), caller))).await;
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Binds a listen address with the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_only_on_loopback() {
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let v6: SocketAddr = "[::1]:50052".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:50052".parse().unwrap();
        assert!(Transport::plaintext_on(&[loopback, v6]).is_ok());
        let refused = Transport::plaintext_on(&[loopback, any]).unwrap_err();
        assert!(refused.to_string().contains("0.0.0.0:50052"), "{refused}");
    }
}
