//! `legacy`: the legacy member system's emulator (see `e2e::legacy`).

use clap::Parser;
use e2e::legacy::{LegacyArgs, serve};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = LegacyArgs::parse();
    let http = args.http;
    let config = args.config()?;
    let listener = tokio::net::TcpListener::bind(http).await?;
    tracing::info!(%http, tls = config.tls.is_some(), "legacy emulator listening");
    serve(listener, config, shutdown_signal()).await
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
