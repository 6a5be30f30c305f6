//! `idbase`: the one binary. Parses the command line, sets up logging and
//! hands over to the libraries.

mod dev;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "idbase",
    version,
    about = "Identity platform and zero-downtime member migration"
)]
struct Cli {
    /// Log format: `json` for production, `pretty` for people.
    #[arg(long, global = true, env = "IDBASE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// idsvc and gateway in one process on SQLite: zero setup, for development.
    Dev(dev::DevArgs),
    /// The ID service (gRPC).
    Idsvc(idsvc::IdsvcArgs),
    /// The HTTP gateway.
    Gateway(gateway::GatewayArgs),
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The zero-downtime migration jobs (README: "Migration").
    #[command(subcommand)]
    Migrate(idsvc::migration::MigrateCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create PII, blind-index and signing keys in DIR; run again to rotate.
    Generate {
        #[arg(long, env = "IDBASE_KEYS_DIR")]
        out: PathBuf,
    },
}

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
    let default_format = match cli.command {
        Command::Dev(_) | Command::Keys(_) => LogFormat::Pretty,
        _ => LogFormat::Json,
    };
    init_tracing(cli.log_format.unwrap_or(default_format));
    match cli.command {
        Command::Dev(args) => dev::run(args, shutdown_signal()).await,
        Command::Idsvc(args) => idsvc::run(args.into_config(), shutdown_signal()).await,
        Command::Gateway(args) => gateway::run(args, shutdown_signal()).await,
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
    }
}
