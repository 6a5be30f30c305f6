//! TLS termination with a real self-signed certificate and a real rustls
//! client: ALPN for both HTTP versions, and a certificate swap picked up
//! without a restart.

use gateway::clients::Clients;
use gateway::{GatewayConfig, router};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn self_signed(cert: &Path, key: &Path) -> CertificateDer<'static> {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(cert, issued.cert.pem()).unwrap();
    std::fs::write(key, issued.signing_key.serialize_pem()).unwrap();
    issued.cert.der().clone()
}

/// Handshakes offering `alpn`; returns the negotiated protocol, the server's
/// certificate and the stream.
async fn connect(
    addr: SocketAddr,
    trusted: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> (
    Option<Vec<u8>>,
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let cert = session.peer_certificates().unwrap()[0].clone();
    (alpn, cert, stream)
}

#[tokio::test]
async fn tls_offers_both_http_versions_and_reloads_a_rotated_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = self_signed(&cert, &key);
    let app = router(GatewayConfig {
        upstream: gateway::upstream::UpstreamConfig::single("http://127.0.0.1:9".to_owned()),
        clients: Clients::from_tokens([]),
        max_body_bytes: 1024,
        edge: Default::default(),
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(gateway::tls::serve(
        app,
        listener,
        cert.clone(),
        key.clone(),
        Duration::from_millis(100),
        gateway::connections::Connections::new(Default::default()),
        shutdown.clone(),
    ));

    let (alpn, served, _) =
        connect(addr, std::slice::from_ref(&first), &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(served, first);

    let (alpn, _, mut stream) = connect(addr, std::slice::from_ref(&first), &[b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    // cert-manager rotates the pair in place; new handshakes get the new one.
    let second = self_signed(&cert, &key);
    let trusted = [first.clone(), second.clone()];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, served, _) = connect(addr, &trusted, &[b"http/1.1"]).await;
        if served == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotated certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken pair is refused and the current certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, served, _) = connect(addr, &trusted, &[b"http/1.1"]).await;
    assert_eq!(served, second);

    shutdown.cancel();
    server.await.unwrap().unwrap();
}
