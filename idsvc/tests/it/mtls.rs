//! mTLS on idsvc's gRPC ports, over real TLS with certificates made here:
//! callers without a certificate, with one of the wrong identity or from
//! another CA are refused per RPC; the gateway's own upstream code reaches
//! idsvc end to end; replaced certificate files reach new connections.

use crate::harness::{Backend, Harness};
use gateway::upstream::tls::UpstreamTlsFiles;
use gateway::upstream::{Retry, Upstream, UpstreamConfig};
use hyper_util::rt::TokioIo;
use idbase_proto::v1::{self as pb, identity_client::IdentityClient};
use idsvc::grpc::Transport;
use idsvc::grpc::tls::{ServerTls, ServerTlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A certificate authority of the test.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A PEM certificate and its key.
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

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn issue(&self, params: CertificateParams) -> Pem {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// idsvc's certificate: `localhost` and 127.0.0.1.
    fn server(&self) -> Pem {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A caller's certificate naming `spiffe_id`.
    fn client(&self, spiffe_id: &str) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// idsvc serving over mTLS on loopback.
struct Server {
    grpc: SocketAddr,
    admin: SocketAddr,
    tls: Arc<ServerTls>,
    files: ServerTlsFiles,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    _harness: Harness,
}

impl Server {
    async fn start(ca: &Ca) -> Self {
        let harness = Harness::new(Backend::Sqlite).await;
        let dir = tempfile::tempdir().unwrap();
        let server = ca.server();
        let files = ServerTlsFiles {
            cert: write(dir.path(), "tls.crt", &server.cert),
            key: write(dir.path(), "tls.key", &server.key),
            client_ca: write(dir.path(), "ca.crt", &ca.pem()),
        };
        let tls = ServerTls::load(files.clone()).unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(idsvc::serve(
            harness.shared_service(),
            grpc,
            admin,
            Transport::mtls(Arc::clone(&tls), "idbase"),
            None,
            idsvc::AdminConfig::default(),
            shutdown.clone(),
        ));
        Self {
            grpc: grpc_addr,
            admin: admin_addr,
            tls,
            files,
            dir,
            shutdown,
            _harness: harness,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn client_config(ca_pem: &str, identity: Option<&Pem>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(pem) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS handshake with idsvc at `addr`, as `config`.
async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A gRPC channel to `addr` over TLS as `config`.
fn channel(addr: SocketAddr, config: Arc<ClientConfig>) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let config = Arc::clone(&config);
            async move { Ok::<_, std::io::Error>(TokioIo::new(handshake(addr, config).await?)) }
        }))
}

/// The code of each call a caller might make: `Ok` when idsvc served it
/// (whatever the answer), the refusal otherwise.
struct Calls {
    health: Result<(), Code>,
    admin_health: Result<(), Code>,
    jwks: Result<(), Code>,
    upsert: Result<(), Code>,
    register: Result<(), Code>,
}

/// A code that means the call reached the service (or was refused for
/// another reason than who called).
fn served<T>(answer: Result<T, tonic::Status>) -> Result<(), Code> {
    match answer {
        Ok(_) => Ok(()),
        Err(status) => match status.code() {
            code @ (Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unavailable
            | Code::Unknown) => Err(code),
            _ => Ok(()),
        },
    }
}

async fn calls(server: &Server, config: Arc<ClientConfig>, legacy_id: i64) -> Calls {
    let grpc = channel(server.grpc, Arc::clone(&config));
    let admin = channel(server.admin, config);
    let check = || HealthCheckRequest {
        service: String::new(),
    };
    let mut identity = IdentityClient::new(grpc.clone());
    Calls {
        health: served(HealthClient::new(grpc.clone()).check(check()).await),
        admin_health: served(HealthClient::new(admin).check(check()).await),
        jwks: served(identity.get_jwks(pb::Empty {}).await),
        upsert: served(identity.upsert_legacy_user(upsert_request(legacy_id)).await),
        register: served(
            identity
                .register(pb::RegisterRequest {
                    email: format!("m{legacy_id}@example.com"),
                    password: "correct horse battery".into(),
                    ..Default::default()
                })
                .await,
        ),
    }
}

fn upsert_request(id: i64) -> pb::UpsertLegacyUserRequest {
    pb::UpsertLegacyUserRequest {
        id,
        email: format!("legacy{id}@example.com"),
        phone: None,
        password_hash: idsvc::crypto::PasswordParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
        .hash("correct horse battery")
        .unwrap(),
        version: 1,
    }
}

#[tokio::test]
async fn the_gateway_may_call_every_rpc() {
    let ca = Ca::new("idbase internal CA");
    let server = Server::start(&ca).await;
    let gateway = ca.client("spiffe://idbase/gateway");
    let c = calls(&server, client_config(&ca.pem(), Some(&gateway)), 1).await;
    assert_eq!(
        (c.health, c.admin_health, c.jwks, c.upsert, c.register),
        (Ok(()), Ok(()), Ok(()), Ok(()), Ok(()))
    );
}

#[tokio::test]
async fn a_caller_without_a_certificate_is_refused_every_rpc() {
    let ca = Ca::new("idbase internal CA");
    let server = Server::start(&ca).await;
    let c = calls(&server, client_config(&ca.pem(), None), 2).await;
    let no = Err(Code::Unauthenticated);
    assert_eq!(
        (c.health, c.admin_health, c.jwks, c.upsert, c.register),
        (no, no, no, no, no)
    );
}

#[tokio::test]
async fn roles_are_checked_per_rpc() {
    let ca = Ca::new("idbase internal CA");
    let server = Server::start(&ca).await;
    let denied = Err(Code::PermissionDenied);

    // The admin role reads the public keys but writes no member.
    let admin = ca.client("spiffe://idbase/admin");
    let c = calls(&server, client_config(&ca.pem(), Some(&admin)), 3).await;
    assert_eq!(
        (c.health, c.admin_health, c.jwks, c.upsert, c.register),
        (Ok(()), Ok(()), Ok(()), denied, denied)
    );

    // A monitor checks health and nothing else.
    let monitor = ca.client("spiffe://idbase/monitor");
    let c = calls(&server, client_config(&ca.pem(), Some(&monitor)), 4).await;
    assert_eq!(
        (c.health, c.admin_health, c.jwks, c.upsert, c.register),
        (Ok(()), Ok(()), denied, denied, denied)
    );

    // Certificates from our CA that name no role of our trust domain.
    for id in ["spiffe://idbase/intruder", "spiffe://elsewhere/gateway"] {
        let stranger = ca.client(id);
        let c = calls(&server, client_config(&ca.pem(), Some(&stranger)), 5).await;
        assert_eq!(
            (c.health, c.admin_health, c.jwks, c.upsert, c.register),
            (denied, denied, denied, denied, denied),
            "{id}"
        );
    }

    // Nothing refused above reached the store: the gateway creates 3, 4 and 5.
    let gateway = ca.client("spiffe://idbase/gateway");
    let mut identity = IdentityClient::new(channel(
        server.grpc,
        client_config(&ca.pem(), Some(&gateway)),
    ));
    for id in [3, 4, 5] {
        let outcome = identity
            .upsert_legacy_user(upsert_request(id))
            .await
            .unwrap()
            .into_inner()
            .outcome;
        assert_eq!(outcome, pb::UpsertOutcome::Created as i32, "legacy id {id}");
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("idbase internal CA");
    let server = Server::start(&ca).await;
    let rogue_ca = Ca::new("rogue CA");
    let forged = rogue_ca.client("spiffe://idbase/gateway");
    // It trusts idsvc's certificate, but idsvc does not trust its own.
    let c = calls(&server, client_config(&ca.pem(), Some(&forged)), 6).await;
    for (rpc, result) in [
        ("health", c.health),
        ("upsert", c.upsert),
        ("register", c.register),
    ] {
        assert!(
            matches!(result, Err(Code::Unavailable | Code::Unknown)),
            "{rpc}: {result:?}"
        );
    }
    let gateway = ca.client("spiffe://idbase/gateway");
    let mut identity = IdentityClient::new(channel(
        server.grpc,
        client_config(&ca.pem(), Some(&gateway)),
    ));
    let outcome = identity
        .upsert_legacy_user(upsert_request(6))
        .await
        .unwrap()
        .into_inner()
        .outcome;
    assert_eq!(outcome, pb::UpsertOutcome::Created as i32);
}

#[tokio::test]
async fn the_gateways_upstream_reaches_idsvc_over_mtls() {
    let ca = Ca::new("idbase internal CA");
    let server = Server::start(&ca).await;
    let upstream_as = |spiffe_id: &str| {
        let dir = server.dir.path().join(spiffe_id.replace([':', '/'], "_"));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = ca.client(spiffe_id);
        let tls = UpstreamTlsFiles {
            ca: write(&dir, "ca.crt", &ca.pem()),
            cert: write(&dir, "tls.crt", &pem.cert),
            key: write(&dir, "tls.key", &pem.key),
        };
        // By name: the certificate's DNS SAN is checked, as in a cluster.
        Upstream::new(UpstreamConfig {
            tls: Some(tls),
            ..UpstreamConfig::single(format!("https://localhost:{}", server.grpc.port()))
        })
        .unwrap()
    };
    let register = |email: &str| pb::RegisterRequest {
        email: email.to_owned(),
        password: "correct horse battery".into(),
        ..Default::default()
    };

    let gateway = upstream_as("spiffe://idbase/gateway");
    assert!(gateway.ready().await);
    assert!(gateway.jwks().await.is_ok());
    let user = gateway
        .call(
            Retry::Unsafe,
            "req-1",
            register("hanako@example.com"),
            |mut c, r| async move { c.register(r).await },
        )
        .await
        .unwrap();
    assert_eq!(user.email, "hanako@example.com");

    let admin = upstream_as("spiffe://idbase/admin");
    let refused = admin
        .call(
            Retry::Unsafe,
            "req-2",
            register("taro@example.com"),
            |mut c, r| async move { c.register(r).await },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

#[tokio::test]
async fn replaced_certificate_files_reach_new_connections() {
    let ca = Ca::new("idbase internal CA");
    let server = Server::start(&ca).await;
    // A short interval so the test does not wait for the production one.
    let reloads = CancellationToken::new();
    Arc::clone(&server.tls).watch(Duration::from_millis(50), reloads.clone());
    let old_gateway = ca.client("spiffe://idbase/gateway");
    let old_config = client_config(&ca.pem(), Some(&old_gateway));
    let mut open = IdentityClient::new(channel(server.grpc, Arc::clone(&old_config)));
    open.get_jwks(pb::Empty {}).await.unwrap();

    // A new CA: new server certificate and new client CA, written in place.
    let new_ca = Ca::new("idbase internal CA 2");
    let new_server = new_ca.server();
    std::fs::write(&server.files.cert, &new_server.cert).unwrap();
    std::fs::write(&server.files.key, &new_server.key).unwrap();
    std::fs::write(&server.files.client_ca, new_ca.pem()).unwrap();

    let new_gateway = new_ca.client("spiffe://idbase/gateway");
    let both_cas = format!("{}{}", ca.pem(), new_ca.pem());
    let new_leaf = CertificateDer::from_pem_slice(new_server.cert.as_bytes()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stream = handshake(server.grpc, client_config(&both_cas, Some(&new_gateway))).await;
        if stream.is_ok_and(|s| {
            s.get_ref().1.peer_certificates() == Some(std::slice::from_ref(&new_leaf))
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reloads.cancel();

    // New connections: the new pair is served, the old one refused.
    let mut renewed = IdentityClient::new(channel(
        server.grpc,
        client_config(&new_ca.pem(), Some(&new_gateway)),
    ));
    renewed.upsert_legacy_user(upsert_request(7)).await.unwrap();
    let mut stale = IdentityClient::new(channel(server.grpc, old_config));
    assert!(stale.get_jwks(pb::Empty {}).await.is_err());
    // The connection opened before the change keeps working.
    open.get_jwks(pb::Empty {}).await.unwrap();
}

#[tokio::test]
async fn files_that_do_not_load_keep_the_previous_certificate() {
    let ca = Ca::new("idbase internal CA");
    let server = Server::start(&ca).await;
    let reloads = CancellationToken::new();
    Arc::clone(&server.tls).watch(Duration::from_millis(20), reloads.clone());
    // A key that belongs to another certificate.
    std::fs::write(&server.files.key, ca.server().key).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gateway = ca.client("spiffe://idbase/gateway");
    let mut identity = IdentityClient::new(channel(
        server.grpc,
        client_config(&ca.pem(), Some(&gateway)),
    ));
    identity.get_jwks(pb::Empty {}).await.unwrap();
    reloads.cancel();
}

/// The admin port's Phases service over mTLS: a gateway's certificate
/// alone may watch and report but nothing else; an admin certificate still
/// needs an admin token (none is configured here); a monitor's certificate
/// is refused by the port.
#[tokio::test]
async fn a_gateway_certificate_may_watch_and_report_the_phase_only() {
    use idbase_proto::v1::phases_client::PhasesClient;
    let ca = Ca::new("idbase internal CA");
    let server = Server::start(&ca).await;
    let as_role = |role: &str| {
        let pem = ca.client(&format!("spiffe://idbase/{role}"));
        PhasesClient::new(channel(server.admin, client_config(&ca.pem(), Some(&pem))))
    };
    let mut gateway = as_role("gateway");
    let mut watch = gateway
        .watch_phase(pb::WatchPhaseRequest {
            watcher: "gw-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!((first.phase, first.generation), (0, 1));
    gateway
        .report_phase(pb::PhaseReport {
            gateway_id: "gw-1".into(),
            generation: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let denied = gateway.get_phase(pb::GetPhaseRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");

    let refused = as_role("admin")
        .get_phase(pb::GetPhaseRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = as_role("monitor")
        .watch_phase(pb::WatchPhaseRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}
