//! Prometheus metrics on a listener of their own, apart from the public ones:
//! the metrics name routes, upstream endpoints and WAF rules, which is for the
//! cluster's scraper, not for the internet.

use crate::routes::meta;
use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The metrics listener's routes: `/metrics` only.
pub fn router() -> Router {
    Router::new().route("/metrics", get(meta::metrics))
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    info!(metrics = %listener.local_addr()?, "gateway metrics listening");
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
