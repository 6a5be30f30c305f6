//! `idbase`: the one binary. Parses the command line, sets up logging and
//! hands over to the libraries.

mod cli;
mod dev;
mod reference;

use clap::Parser;
use cli::{Cli, Command, KeysCommand, LogFormat};
use tokio_util::sync::CancellationToken;

// The gateway's proxy path allocates a little per request on every worker
// thread; mimalloc's thread-local heaps spend a fraction of glibc's time on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // idsvc offers its own log lines to the admin event tail.
    let log_tail =
        matches!(cli.command, Command::Idsvc(_) | Command::Dev(_)).then(idsvc::log_tail::layer);
    let log = gateway::telemetry::init_logging(
        cli.log_format.unwrap_or(default_format) == LogFormat::Json,
        log_tail,
    );
    // `exit` skips destructors: the log guard is dropped first so queued
    // lines reach stderr.
    let exit = |code: i32, log: tracing_appender::non_blocking::WorkerGuard| -> ! {
        drop(log);
        std::process::exit(code)
    };
    match cli.command {
        Command::Dev(args) => dev::run(*args, shutdown_signal()).await,
        Command::Idsvc(args) => idsvc::run(args.into_config(), shutdown_signal()).await,
        Command::Gateway(args) => gateway::run(*args, shutdown_signal()).await,
        Command::Admin(args) => exit(admin_tui::run(args).await.code(), log),
        Command::Migrate(command) => {
            let outcome = idsvc::migration::run(command, shutdown_signal()).await?;
            println!("{}", outcome.report);
            if !outcome.success {
                exit(1, log);
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
