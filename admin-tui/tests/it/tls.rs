//! `https://` admin URLs: mutual TLS with real certificates from a test CA.

use crate::double::{Double, OPERATOR_TOKEN};
use crate::phase::admin;
use admin_tui::Exit;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

struct Ca(CertifiedIssuer<'static, KeyPair>);

struct Pem {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn issue(&self, mut params: CertificateParams, usage: ExtendedKeyUsagePurpose) -> Pem {
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// idsvc's admin port: `localhost` and 127.0.0.1.
    fn server(&self) -> Pem {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        self.issue(params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// An SRE's client certificate.
    fn client(&self) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://idbase/admin".try_into().unwrap()));
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A TLS connection for tonic's server.
struct Conn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The double behind mutual TLS: idsvc's certificate from `ca`, callers'
/// certificates checked against `ca`. Returns `https://127.0.0.1:PORT`.
async fn serve_mtls(ca: &Ca, ca_pem: &str) -> String {
    let server = ca.server();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server.cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A refused handshake just closes the connection.
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok(Conn(tls))).await;
                }
            });
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Double::new().service())
            .serve_with_incoming(ReceiverStream::new(rx)),
    );
    url
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn https_with_a_client_certificate_reaches_the_admin_port() {
    let ca = Ca::new("idbase test CA");
    let ca_pem = ca.0.pem();
    let url = serve_mtls(&ca, &ca_pem).await;
    let dir = tempfile::tempdir().unwrap();
    let client = ca.client();
    let flags = [
        "--admin-ca".to_owned(),
        write(dir.path(), "ca.pem", &ca_pem),
        "--admin-cert".to_owned(),
        write(dir.path(), "cert.pem", &client.cert),
        "--admin-key".to_owned(),
        write(dir.path(), "key.pem", &client.key),
    ];
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["phase", "get", "--json"]);
    let run = admin(&url, Some(OPERATOR_TOKEN), &args).await;
    assert_eq!(run.exit, Exit::Ok, "{}", run.err);
    assert_eq!(run.json()["phase"], 0);

    // A client certificate from another CA: the handshake fails, one line, exit 6.
    let stranger = Ca::new("someone else").client();
    let flags = [
        "--admin-ca".to_owned(),
        write(dir.path(), "ca.pem", &ca_pem),
        "--admin-cert".to_owned(),
        write(dir.path(), "stranger.pem", &stranger.cert),
        "--admin-key".to_owned(),
        write(dir.path(), "stranger.key", &stranger.key),
    ];
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["phase", "get"]);
    let refused = admin(&url, Some(OPERATOR_TOKEN), &args).await;
    assert_eq!(refused.exit, Exit::Unreachable, "{}", refused.err);
    assert_eq!(refused.err.lines().count(), 1, "{}", refused.err);
}

#[tokio::test]
async fn an_admin_port_signed_by_another_ca_is_not_trusted() {
    let ca = Ca::new("idbase test CA");
    let url = serve_mtls(&ca, &ca.0.pem()).await;
    let other = Ca::new("not idsvc's CA");
    let client = ca.client();
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--admin-ca".to_owned(),
        write(dir.path(), "other-ca.pem", &other.0.pem()),
        "--admin-cert".to_owned(),
        write(dir.path(), "cert.pem", &client.cert),
        "--admin-key".to_owned(),
        write(dir.path(), "key.pem", &client.key),
    ];
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["phase", "get"]);
    let run = admin(&url, Some(OPERATOR_TOKEN), &args).await;
    assert_eq!(run.exit, Exit::Unreachable, "{}", run.err);
    assert!(run.err.contains("tls handshake"), "{}", run.err);

    // Files that are not PEM: a usage error naming the file.
    let junk = write(dir.path(), "junk.pem", "not a certificate");
    let args = [
        "--admin-ca",
        &junk,
        "--admin-cert",
        &junk,
        "--admin-key",
        &junk,
        "phase",
        "get",
    ];
    let bad = admin(&url, Some(OPERATOR_TOKEN), &args).await;
    assert_eq!(bad.exit, Exit::Usage, "{}", bad.err);
    assert!(bad.err.contains("junk.pem"), "{}", bad.err);
}
