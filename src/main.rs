//! `idbase`: the one binary. Parses the command line, sets up logging and
//! hands over to the libraries.

mod cli;
mod dev;
mod reference;

use clap::Parser;
use cli::{Cli, Command, KeysCommand, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}

/// Cancelled on SIGTERM (Kubernetes) or Ctrl-C.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: draining");
        cancel.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The generated references print and exit before any logging is set up.
    if let Some(printed) = reference::print(&cli.command) {
        return match printed {
            // `idbase man | head` closes the pipe early: not an error.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.map_err(Into::into),
        };
    }
    let default_format = match cli.command {
        Command::Dev(_) | Command::Keys(_) | Command::Admin(_) => LogFormat::Pretty,
        _ => LogFormat::Json,
    };
    init_tracing(cli.log_format.unwrap_or(default_format));
    match cli.command {
        Command::Dev(args) => dev::run(*args, shutdown_signal()).await,
        Command::Idsvc(args) => idsvc::run(args.into_config(), shutdown_signal()).await,
        Command::Gateway(args) => gateway::run(*args, shutdown_signal()).await,
        Command::Admin(args) => std::process::exit(admin_tui::run(args).await.code()),
        Command::Migrate(command) => {
            let outcome = idsvc::migration::run(command, shutdown_signal()).await?;
            println!("{}", outcome.report);
            if !outcome.success {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Generate { out }) => {
            let kid = idsvc::crypto::KeyRing::generate(&out)?;
            println!("created keys {kid} in {}", out.display());
            Ok(())
        }
        // Printed by `reference::print` above.
        Command::Completions { .. } | Command::Man { .. } | Command::MarkdownHelp => Ok(()),
    }
}
