//! The legacy proxy against a real HTTP server on loopback that records what
//! arrives: headers removed and added, query and body kept, answers passed
//! through, bodies streamed both ways, keep-alive reuse, timeouts, retries
//! only when replaying is safe, and 503 with Retry-After when legacy is gone.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::channel::mpsc;
use gateway::clients::{Client, ClientClass};
use gateway::legacy::{Forwarded, Legacy, LegacyArgs, LegacyConfig};
use gateway::telemetry::RequestId;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const TOKEN: &str = "gw-credential";

/// A request as legacy saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves `app` on loopback, counting accepted TCP connections.
async fn serve(app: Router) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Records every request, then answers 418 with headers legacy's way,
/// hop-by-hop ones included.
async fn record(State(recorder): State<Recorder>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    recorder.seen.lock().unwrap().push(Seen {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body: body.clone(),
    });
    let mut response = (StatusCode::IM_A_TEAPOT, body).into_response();
    let headers = response.headers_mut();
    headers.insert("legacy-served", HeaderValue::from_static("true"));
    headers.insert("x-legacy", HeaderValue::from_static("yes"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert("connection", HeaderValue::from_static("x-drop"));
    headers.insert("x-drop", HeaderValue::from_static("1"));
    response
}

async fn recording_legacy() -> (SocketAddr, Arc<AtomicUsize>, Recorder) {
    let recorder = Recorder::default();
    let app = Router::new()
        .fallback(any(record))
        .with_state(recorder.clone());
    let (addr, accepted) = serve(app).await;
    (addr, accepted, recorder)
}

fn legacy_at(addr: SocketAddr, tune: impl FnOnce(&mut LegacyConfig)) -> Legacy {
    let mut config = LegacyConfig::new(format!("http://{addr}/").parse().unwrap(), TOKEN);
    tune(&mut config);
    Legacy::new(config).unwrap()
}

fn web_client() -> Client {
    Client {
        id: "web-app".to_owned(),
        class: ClientClass::Web,
    }
}

fn request(method: Method, uri: &str, body: Body) -> Request {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap();
    request.extensions_mut().insert(ConnectInfo::<SocketAddr>(
        "198.51.100.7:40000".parse().unwrap(),
    ));
    request
}

fn tries(response: &Response) -> u32 {
    response.extensions().get::<Forwarded>().unwrap().tries
}

async fn text(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A closed port on loopback.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn a_request_crosses_as_a_proxy_sends_it_and_the_answer_comes_back_whole() {
    let (addr, _, recorder) = recording_legacy().await;
    let legacy = legacy_at(addr, |_| {});
    let mut req = request(
        Method::PATCH,
        "/v1/users/me?fields=email&x=1",
        Body::from(r#"{"display_name":"Ann"}"#),
    );
    let headers = req.headers_mut();
    for (name, value) in [
        ("client-token", "the-clients-secret"),
        ("authorization", "Bearer la_123"),
        ("content-type", "application/json"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=9"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic eDp5"),
        ("x-forwarded-for", "6.6.6.6"),
        ("idbase-gateway-token", "forged"),
        ("x-idbase-client-class", "internal"),
        ("x-request-id", "client-chosen"),
        ("host", "gateway.example"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    req.extensions_mut().insert(RequestId("req-42".to_owned()));

    let response = legacy.forward(req, &web_client(), 1).await;

    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(tries(&response), 1);
    let back = response.headers();
    assert_eq!(back["legacy-served"], "true");
    assert_eq!(back["x-legacy"], "yes");
    for hop in ["keep-alive", "connection", "x-drop"] {
        assert!(back.get(hop).is_none(), "{hop} came back");
    }
    assert_eq!(text(response).await, r#"{"display_name":"Ann"}"#);

    let seen = recorder.all();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.uri, "/v1/users/me?fields=email&x=1");
    assert_eq!(seen.body, r#"{"display_name":"Ann"}"#);
    let sent = &seen.headers;
    assert_eq!(sent["idbase-gateway-token"], TOKEN);
    assert_eq!(sent["x-idbase-client"], "web-app");
    assert_eq!(sent["x-idbase-client-class"], "web");
    assert_eq!(sent["x-request-id"], "req-42");
    // The peer is not a trusted proxy: the client's own list is dropped.
    assert_eq!(sent["x-forwarded-for"], "198.51.100.7");
    assert_eq!(sent["authorization"], "Bearer la_123");
    assert_eq!(sent["content-type"], "application/json");
    assert_eq!(sent["host"], addr.to_string());
    for gone in [
        "client-token",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(sent.get(gone).is_none(), "{gone} reached legacy");
    }
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_for_is_extended() {
    let (addr, _, recorder) = recording_legacy().await;
    let legacy = legacy_at(addr, |config| {
        config.trusted_proxies =
            gateway::waf::source_ip::TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
    });
    let mut req = request(Method::GET, "/v1/users/me", Body::empty());
    req.extensions_mut()
        .insert(ConnectInfo::<SocketAddr>("10.0.0.5:1234".parse().unwrap()));
    req.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    let response = legacy.forward(req, &web_client(), 0).await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(
        recorder.all()[0].headers["x-forwarded-for"],
        "203.0.113.9, 10.0.0.5"
    );
}

type Chunks = mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>;

/// Legacy's side of the streaming test: tells the test what the first chunk
/// was before the request body has ended, then answers with a body the test
/// writes.
#[derive(Clone)]
struct Streaming {
    first_chunk: mpsc::UnboundedSender<Bytes>,
    whole_body: mpsc::UnboundedSender<Bytes>,
    answer: Arc<Mutex<Option<Chunks>>>,
}

async fn stream_through(State(s): State<Streaming>, request: Request) -> Response {
    let mut body = request.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    s.first_chunk.unbounded_send(first.clone()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    s.whole_body
        .unbounded_send([first, rest].concat().into())
        .unwrap();
    let answer = s.answer.lock().unwrap().take().unwrap();
    Response::new(Body::from_stream(answer))
}

#[tokio::test]
async fn bodies_stream_both_ways_without_waiting_for_the_end() {
    use futures::StreamExt;
    let (first_tx, mut first_rx) = mpsc::unbounded();
    let (whole_tx, mut whole_rx) = mpsc::unbounded();
    let (answer_tx, answer_rx) = mpsc::unbounded();
    let app = Router::new()
        .route("/v1/users", post(stream_through))
        .with_state(Streaming {
            first_chunk: first_tx,
            whole_body: whole_tx,
            answer: Arc::new(Mutex::new(Some(answer_rx))),
        });
    let (addr, _) = serve(app).await;
    let legacy = legacy_at(addr, |_| {});

    let (body_tx, body_rx) = mpsc::unbounded::<Result<Bytes, std::io::Error>>();
    let req = request(Method::POST, "/v1/users", Body::from_stream(body_rx));
    let forwarding = tokio::spawn(async move { legacy.forward(req, &web_client(), 0).await });
    let wait = Duration::from_secs(5);

    body_tx.unbounded_send(Ok(Bytes::from("part-1;"))).unwrap();
    // Legacy has the first chunk while the client has not finished sending.
    let first = tokio::time::timeout(wait, first_rx.next()).await.unwrap();
    assert_eq!(first.unwrap(), "part-1;");
    body_tx.unbounded_send(Ok(Bytes::from("part-2"))).unwrap();
    drop(body_tx);
    let whole = tokio::time::timeout(wait, whole_rx.next()).await.unwrap();
    assert_eq!(whole.unwrap(), "part-1;part-2");

    let response = tokio::time::timeout(wait, forwarding)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    answer_tx
        .unbounded_send(Ok(Bytes::from("answer-1;")))
        .unwrap();
    // The client has legacy's first chunk while legacy has not finished answering.
    let frame = tokio::time::timeout(wait, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "answer-1;");
    answer_tx
        .unbounded_send(Ok(Bytes::from("answer-2")))
        .unwrap();
    drop(answer_tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "answer-2");
}

#[tokio::test]
async fn many_requests_share_a_few_kept_alive_connections() {
    let (addr, accepted, recorder) = recording_legacy().await;
    let legacy = legacy_at(addr, |_| {});
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let legacy = legacy.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    let response = legacy
                        .forward(
                            request(Method::GET, "/v1/users/me", Body::empty()),
                            &web_client(),
                            0,
                        )
                        .await;
                    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
                    text(response).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(recorder.all().len(), 100);
    let connections = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&connections),
        "{connections} connections for 100 requests"
    );
}

async fn assert_unavailable(response: Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(problem["type"], "urn:idbase:problem:unavailable");
}

#[tokio::test]
async fn a_stuck_get_is_tried_twice_and_a_stuck_post_once() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(any(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }));
    let (addr, _) = serve(app).await;
    let legacy = legacy_at(addr, |config| config.timeout = Duration::from_millis(200));

    let response = legacy
        .forward(
            request(Method::GET, "/v1/users/me", Body::empty()),
            &web_client(),
            0,
        )
        .await;
    assert_eq!(tries(&response), 2);
    assert_unavailable(response).await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    let response = legacy
        .forward(
            request(Method::POST, "/v1/sessions", Body::from("{}")),
            &web_client(),
            0,
        )
        .await;
    assert_eq!(tries(&response), 1);
    assert_unavailable(response).await;
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_unreachable_legacy_is_503_with_retry_after_after_one_retry() {
    let legacy = legacy_at(closed_port(), |_| {});
    // Nothing was sent, so even a POST with a body is tried again.
    let response = legacy
        .forward(
            request(
                Method::POST,
                "/v1/users",
                Body::from(r#"{"email":"a@b.c"}"#),
            ),
            &web_client(),
            0,
        )
        .await;
    assert_eq!(tries(&response), 2);
    assert_unavailable(response).await;
}

#[tokio::test]
async fn a_connection_lost_after_sending_replays_a_get_but_not_a_post() {
    // Reads the request, then hangs up without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            drop(tcp);
        }
    });
    let legacy = legacy_at(addr, |_| {});

    let response = legacy
        .forward(
            request(Method::POST, "/v1/users", Body::from("{}")),
            &web_client(),
            0,
        )
        .await;
    assert_eq!(tries(&response), 1);
    assert_unavailable(response).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let response = legacy
        .forward(
            request(Method::GET, "/v1/users/me", Body::empty()),
            &web_client(),
            0,
        )
        .await;
    assert_eq!(tries(&response), 2);
    assert_unavailable(response).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_streamed() {
    let (addr, accepted, _) = recording_legacy().await;
    let legacy = legacy_at(addr, |config| config.max_body_bytes = 16);

    let mut req = request(Method::POST, "/v1/users", Body::from("x".repeat(17)));
    req.headers_mut()
        .insert("content-length", HeaderValue::from(17));
    let response = legacy.forward(req, &web_client(), 0).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(tries(&response), 0);
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    let chunks =
        futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from("x".repeat(8)))));
    let response = legacy
        .forward(
            request(Method::POST, "/v1/users", Body::from_stream(chunks)),
            &web_client(),
            0,
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[derive(serde::Deserialize)]
struct RedeemBody {
    refresh_token: String,
}

async fn redeem_endpoint(headers: HeaderMap, body: axum::Json<RedeemBody>) -> Response {
    let ours = headers
        .get("idbase-gateway-token")
        .is_some_and(|v| v == TOKEN)
        && headers["x-idbase-client"] == "web-app"
        && headers["content-type"] == "application/json";
    match body.refresh_token.as_str() {
        "lr_good" if ours => axum::Json(serde_json::json!({ "member_id": 42 })).into_response(),
        "lr_broken" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

#[tokio::test]
async fn redeem_gives_the_member_or_none_and_unreachable_is_503() {
    let app = Router::new().route(gateway::legacy::REDEEM_PATH, post(redeem_endpoint));
    let (addr, _) = serve(app).await;
    let legacy = legacy_at(addr, |_| {});
    assert_eq!(
        legacy.redeem("lr_good", &web_client()).await.unwrap(),
        Some(42)
    );
    assert_eq!(
        legacy.redeem("lr_spent", &web_client()).await.unwrap(),
        None
    );
    let failed = legacy.redeem("lr_broken", &web_client()).await.unwrap_err();
    assert_eq!(failed.status, 503);

    let gone = legacy_at(closed_port(), |_| {});
    let failed = gone.redeem("lr_good", &web_client()).await.unwrap_err();
    assert_eq!(failed.status, 503);
    assert_eq!(failed.retry_after, Some(1));
}

#[tokio::test]
async fn reachable_means_health_answers_200() {
    let app = Router::new().route(
        gateway::legacy::HEALTH_PATH,
        get(|headers: HeaderMap| async move {
            if headers
                .get("idbase-gateway-token")
                .is_some_and(|v| v == TOKEN)
            {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            }
        }),
    );
    let (addr, _) = serve(app).await;
    assert!(legacy_at(addr, |_| {}).reachable().await);
    let wrong = Legacy::new(LegacyConfig::new(
        format!("http://{addr}").parse().unwrap(),
        "not-it",
    ))
    .unwrap();
    assert!(!wrong.reachable().await);
    assert!(!legacy_at(closed_port(), |_| {}).reachable().await);
}

#[test]
fn configuration_reads_the_credential_and_refuses_plain_text_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("legacy-token");
    std::fs::write(&file, "s3cret\n").unwrap();
    let args = LegacyArgs {
        legacy_url: Some("http://127.0.0.1:8081".parse().unwrap()),
        legacy_token_file: Some(file),
        legacy_timeout_ms: 250,
        legacy_pool_idle: 8,
        legacy_ca: None,
    };
    let config = args.config().unwrap().unwrap();
    assert_eq!(config.gateway_token, "s3cret");
    assert_eq!(config.timeout, Duration::from_millis(250));
    assert!(!format!("{config:?}").contains("s3cret"));
    assert!(
        LegacyArgs {
            legacy_url: None,
            ..args.clone()
        }
        .config()
        .unwrap()
        .is_none()
    );

    let refused = Legacy::new(LegacyConfig::new(
        "http://legacy.internal:8080".parse().unwrap(),
        "t",
    ))
    .err()
    .unwrap();
    assert!(refused.to_string().contains("loopback"), "{refused:#}");
    let https = LegacyConfig::new("https://legacy.internal".parse().unwrap(), "t");
    assert!(Legacy::new(https).is_ok());
    let empty = LegacyConfig::new("http://127.0.0.1:1".parse().unwrap(), "");
    assert!(Legacy::new(empty).is_err());
}

#[tokio::test]
async fn https_legacy_is_checked_against_the_configured_ca() {
    use rustls::pki_types::PrivateKeyDer;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
    )
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorder = Recorder::default();
    let app = Router::new()
        .fallback(any(record))
        .with_state(recorder.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("legacy-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let url: url::Url = format!("https://localhost:{port}/").parse().unwrap();

    let trusting = Legacy::new(LegacyConfig {
        ca: Some(ca),
        ..LegacyConfig::new(url.clone(), TOKEN)
    })
    .unwrap();
    let response = trusting
        .forward(
            request(Method::GET, "/v1/users/me", Body::empty()),
            &web_client(),
            0,
        )
        .await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(recorder.all()[0].headers["idbase-gateway-token"], TOKEN);

    // The web PKI does not vouch for a self-signed certificate: the handshake
    // fails, nothing was sent.
    let web_pki = Legacy::new(LegacyConfig::new(url, TOKEN)).unwrap();
    let response = web_pki
        .forward(
            request(Method::GET, "/v1/users/me", Body::empty()),
            &web_client(),
            0,
        )
        .await;
    assert_eq!(tries(&response), 2);
    assert_unavailable(response).await;
    assert_eq!(recorder.all().len(), 1);
}
