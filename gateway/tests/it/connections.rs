//! Connection limits on real sockets over loopback: the header timeout cuts
//! a slow-loris, the idle timeout closes kept-alive connections, the
//! per-address cap refuses one address while another is served, a full
//! process sheds an idle connection, HTTP/2 advertises its stream limit, and
//! metrics stay off the public listener.

use gateway::clients::Clients;
use gateway::connections::{ConnectionLimits, Connections};
use gateway::{GatewayConfig, Listeners, TlsListener, serve_listeners};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

fn config() -> GatewayConfig {
    GatewayConfig {
        // Never dialled: /healthz does not call idsvc.
        upstream: gateway::upstream::UpstreamConfig::single("http://127.0.0.1:9".to_owned()),
        clients: Clients::from_tokens([]),
        max_body_bytes: 1024,
        edge: Default::default(),
    }
}

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        ..ConnectionLimits::default()
    }
}

struct Gateway {
    http: SocketAddr,
    metrics: SocketAddr,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    async fn start(limits: ConnectionLimits) -> Self {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, metrics_addr) = (http.local_addr().unwrap(), metrics.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let listeners = Listeners {
            http,
            https: None,
            metrics: Some(metrics),
            limits,
        };
        let served = tokio::spawn(serve_listeners(config(), listeners, shutdown.clone()));
        Self {
            http: http_addr,
            metrics: metrics_addr,
            shutdown,
            served,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.served)
            .await
            .expect("the gateway drains within its drain period")
            .unwrap()
            .unwrap();
    }
}

/// Sends one keep-alive request on `stream` and reads its response head and
/// body (the probes answer with a short body and a content-length).
async fn get(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// Waits (at most `within`) for the server to close `stream`; how long it took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            within.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn a_slow_loris_is_cut_after_the_header_timeout_while_others_are_served() {
    let gateway = Gateway::start(limits()).await;
    let mut loris = TcpStream::connect(gateway.http).await.unwrap();
    loris.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = loris.into_split();
    // One header line every 100 ms: each byte is on time, the head never ends.
    let trickle = tokio::spawn(async move {
        for i in 0..50 {
            if writer
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut other = TcpStream::connect(gateway.http).await.unwrap();
    assert!(
        get(&mut other, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(4), reader.read_to_end(&mut buf)).await;
    let cut_after = started.elapsed();
    assert!(
        read.is_ok(),
        "slow-loris still connected after {cut_after:?}"
    );
    assert!(
        cut_after >= Duration::from_millis(800) && cut_after < Duration::from_secs(3),
        "cut after {cut_after:?}"
    );
    assert!(
        !String::from_utf8_lossy(&buf).contains("200"),
        "the trickled request was served"
    );
    trickle.abort();
    gateway.stop().await;
}

#[tokio::test]
async fn kept_alive_connections_outlive_the_header_timeout_and_close_when_idle() {
    let gateway = Gateway::start(ConnectionLimits {
        idle_timeout: Duration::from_secs(3),
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(gateway.http).await.unwrap();
    assert!(
        get(&mut stream, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Longer than the header timeout, shorter than the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        get(&mut stream, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let idle = closed_within(&mut stream, Duration::from_secs(6)).await;
    let idle = idle.expect("an idle connection is closed");
    assert!(idle >= Duration::from_millis(2500), "closed after {idle:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn the_per_address_cap_refuses_one_address_while_another_is_served() {
    let gateway = Gateway::start(ConnectionLimits {
        max_connections_per_address: 2,
        ..limits()
    })
    .await;
    let mut first = connect_from("127.0.0.1", gateway.http).await;
    let mut second = connect_from("127.0.0.1", gateway.http).await;
    assert!(
        get(&mut first, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        get(&mut second, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let mut third = connect_from("127.0.0.1", gateway.http).await;
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let refused =
        tokio::time::timeout(Duration::from_secs(3), third.read_to_end(&mut answer)).await;
    assert!(
        refused.is_ok(),
        "the third connection was neither served nor closed"
    );
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    let mut elsewhere = connect_from("127.0.0.2", gateway.http).await;
    assert!(
        get(&mut elsewhere, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // A freed slot is usable again.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from("127.0.0.1", gateway.http).await;
    assert!(
        get(&mut again, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_full_gateway_sheds_an_idle_connection_for_a_new_one() {
    let gateway = Gateway::start(ConnectionLimits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let mut oldest = TcpStream::connect(gateway.http).await.unwrap();
    assert!(
        get(&mut oldest, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut newer = TcpStream::connect(gateway.http).await.unwrap();
    assert!(
        get(&mut newer, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let mut latest = TcpStream::connect(gateway.http).await.unwrap();
    assert!(
        get(&mut latest, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        closed_within(&mut oldest, Duration::from_secs(3))
            .await
            .is_some(),
        "the longest idle connection was not shed"
    );
    assert!(
        get(&mut newer, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    gateway.stop().await;
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_only() {
    let gateway = Gateway::start(limits()).await;
    let mut public = TcpStream::connect(gateway.http).await.unwrap();
    assert!(
        get(&mut public, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let answer = get(&mut public, "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let mut metrics = TcpStream::connect(gateway.metrics).await.unwrap();
    let answer = get(&mut metrics, "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("idbase_http_requests_total"), "{answer}");
    gateway.stop().await;
}

#[tokio::test]
async fn https_advertises_the_http2_stream_limit_and_cuts_a_stalled_handshake() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();

    let tls = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let https = tls.local_addr().unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let listeners = Listeners {
        http,
        https: Some(TlsListener {
            listener: tls,
            cert,
            key,
        }),
        metrics: None,
        limits: ConnectionLimits {
            h2_max_concurrent_streams: 7,
            ..limits()
        },
    };
    let served = tokio::spawn(serve_listeners(config(), listeners, shutdown.clone()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(issued.cert.der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let stream = connector
        .connect(
            ServerName::try_from("localhost").unwrap(),
            TcpStream::connect(https).await.unwrap(),
        )
        .await
        .unwrap();
    let (mut send, mut connection) = h2::client::handshake(stream).await.unwrap();
    let request = http::Request::get("https://localhost/healthz")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = tokio::select! {
        response = response => response.unwrap(),
        ended = &mut connection => panic!("connection ended: {ended:?}"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(connection.max_concurrent_send_streams(), 7);

    // A client that connects and never finishes its handshake is cut too.
    let mut stalled = TcpStream::connect(https).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let cut = closed_within(&mut stalled, Duration::from_secs(4)).await;
    assert!(
        cut.is_some(),
        "a stalled TLS handshake holds its connection"
    );

    drop(send);
    drop(connection);
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_connection_cap_fits_the_descriptor_limit() {
    let limits = ConnectionLimits {
        max_connections: 100_000,
        ..ConnectionLimits::default()
    }
    .fit_descriptors(4096);
    assert_eq!(
        limits.max_connections,
        4096 - gateway::connections::FD_RESERVE as usize
    );
    let connections = Connections::new(limits);
    assert_eq!(connections.open(), 0);
}
