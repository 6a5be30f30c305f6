//! Request ids, one span and one log line per request, and Prometheus metrics.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;
use tracing::Instrument;

/// Installs the process's log subscriber: one JSON object per line (or a
/// compact human form), filtered by `RUST_LOG` (default `info`), on stderr,
/// and whatever else `also` does with each line (idsvc's live log tail).
///
/// Lines are formatted on the calling thread and written by a logging
/// thread through a buffer, so a request never waits on a `write` to a
/// slow or contended stderr; the buffer is flushed whenever the queue
/// empties. Nothing is dropped: when the queue (128k lines) is full,
/// callers wait as they would on a direct write. Keep the guard until the
/// process ends: dropping it flushes what is queued.
pub fn init_logging<L>(json: bool, also: L) -> tracing_appender::non_blocking::WorkerGuard
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("idbase-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The filter is global: `also` sees the lines stderr gets.
    let subscriber = tracing_subscriber::registry().with(also).with(filter);
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    if json {
        subscriber
            .with(
                lines
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    // The request's span is the only one; listing it again as
                    // `spans` would double every line's cost.
                    .with_span_list(false),
            )
            .init();
    } else {
        subscriber.with(lines.compact()).init();
    }
    guard
}

/// The request id header, named like the gRPC metadata that carries it on.
pub const REQUEST_ID: &str = idbase_proto::problem::REQUEST_ID_METADATA_KEY;

/// The request's id, as accepted or generated.
#[derive(Clone)]
pub struct RequestId(pub String);

/// Latency buckets in seconds: from a cached-key `me` to a queued argon2 hash.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder's histograms are drained (the exporter's own default).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's Prometheus recorder (installed once, shared by every server
/// in the process, so `idbase dev` shows idsvc's metrics too).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Histograms keep every sample until upkeep folds them into
            // their buckets; without it a gateway whose metrics nobody
            // scrapes would grow by every request it serves.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("idbase-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            // Another recorder may exist in tests that start several gateways.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Accepts a client's `X-Request-Id` if it is short and plain (it ends up in
/// logs and gRPC metadata), otherwise makes one.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Outermost middleware: request id, span, access log line, metrics.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("http", request_id = %id, %method, route, client = tracing::field::Empty);
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let served = response
        .extensions()
        .get::<crate::upstream::trace::Served>()
        .cloned()
        .unwrap_or_default();
    let latency = started.elapsed();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let labels = [
        ("route", route.clone()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("idbase_http_requests_total", &labels).increment(1);
    metrics::histogram!("idbase_http_request_duration_seconds", &labels)
        .record(latency.as_secs_f64());
    // The access log line: the span adds time, request id, method, route and
    // client; the edge adds the source address and the WAF's decision.
    let source_ip = response
        .extensions()
        .get::<crate::waf::source_ip::SourceIp>()
        .map(|s| s.0);
    let routed = response
        .extensions()
        .get::<crate::phase::gate::Routed>()
        .copied();
    let side = routed.map_or("gateway", |r| r.side);
    let phase = routed.and_then(|r| r.phase);
    metrics::counter!(
        "idbase_gateway_requests_total",
        "side" => side,
        "outcome" => outcome(status)
    )
    .increment(1);
    let waf = response
        .extensions()
        .get::<crate::edge::WafLabel>()
        .map_or("off", |w| w.0.as_str());
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = latency.as_secs_f64() * 1000.0,
            source_ip = source_ip.map(tracing::field::display),
            waf,
            side,
            phase,
            upstream = served.endpoint.as_deref(),
            upstream_retries = served.retries,
            "request"
        )
    });
    response
}

/// The outcome label of `idbase_gateway_requests_total`.
fn outcome(status: u16) -> &'static str {
    match status {
        401 => "401",
        404 => "404",
        429 => "429",
        500.. => "5xx",
        400..=499 => "other4xx",
        _ => "ok",
    }
}
