//! Benchmarks of the built `idbase` binary on this machine:
//! `cargo run --release -p e2e --bin bench -- <bench> [--json FILE]`.
//!
//! Each bench starts what it measures as real processes on loopback and
//! MariaDB, prints its figures and, with `--json`, writes them for CI or the
//! README. These are measurements, not pass/fail tests.

mod auth;
mod cutover;
mod failover;
mod gateway;
mod load;
mod migrate;
mod waf;

// The same allocator as `idbase`, whose proxy path `bench cutover` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Every bench member's password.
const PASSWORD: &str = "bench horse battery staple";
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "idbase benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// Also write the figures to this file as JSON.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// Logins, refreshes and `GET /v1/users/me` through the gateway, against the raw argon2id limit.
    Auth(auth::Args),
    /// The cutover at the edge: the legacy proxy against nginx, and how fast a phase change reaches the gateways.
    Cutover(cutover::Args),
    #[command(hide = true)]
    CutoverProxy(cutover::ProxyArgs),
    /// The edge's costs: `gateway-waf` and `gateway-failover` in one run.
    Gateway(gateway::Args),
    /// `GET /v1/users/me` with the full WAF rule set against the WAF off.
    GatewayWaf(waf::Args),
    /// `GET /v1/users/me` with both idsvc endpoints up vs the first one down.
    GatewayFailover(failover::Args),
    /// `idbase migrate` bulkload, backfill and validate against MariaDB's LOAD DATA floor.
    Migrate(migrate::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let figures = match cli.bench {
        Bench::Auth(args) => auth::run(args).await?,
        Bench::Cutover(args) => cutover::run(args).await?,
        Bench::CutoverProxy(args) => cutover::serve_proxy(args).await?,
        Bench::Gateway(args) => gateway::run(args).await?,
        Bench::GatewayWaf(args) => waf::run(args).await?,
        Bench::GatewayFailover(args) => failover::run(args).await?,
        Bench::Migrate(args) => migrate::run(args).await?,
    };
    let text = serde_json::to_string_pretty(&figures)?;
    println!("{text}");
    if let Some(path) = cli.json {
        std::fs::write(&path, text + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
