//! `bench gateway`: what the edge costs — the full WAF rule set against the
//! WAF off, and a failover against both clusters up — in one run.

use crate::{failover, waf};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of alternating WAF-off and WAF-on phases.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent `me` readers for the WAF comparison.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Concurrent `me` readers for the failover comparison.
    #[arg(long, default_value_t = 16)]
    failover_concurrency: usize,
    /// IPv4 CIDRs in the WAF's denylist (IPv6 gets a quarter as many).
    #[arg(long, default_value_t = 4000)]
    cidrs: usize,
    /// The gateway's per-try timeout in the failover comparison.
    #[arg(long, default_value_t = 250)]
    per_try_timeout_ms: u64,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let mut figures = waf::run(waf::Args {
        seconds: args.seconds,
        rounds: args.rounds,
        concurrency: args.concurrency,
        cidrs: args.cidrs,
    })
    .await?;
    let failover = failover::run(failover::Args {
        seconds: args.seconds,
        concurrency: args.failover_concurrency,
        per_try_timeout_ms: args.per_try_timeout_ms,
    })
    .await?;
    if let (Some(all), Value::Object(mut more)) = (figures.as_object_mut(), failover) {
        // Both halves say how many readers they ran; keep the two apart.
        if let Some(readers) = more.remove("concurrency") {
            more.insert("failover_concurrency".to_owned(), readers);
        }
        all.extend(more);
    }
    Ok(figures)
}
