//! `idbase migrate …`: arguments and dispatch; `src/main.rs` only parses.

use super::{Mapping, backfill, bulkload, checkpoint, purge, reports, validate, validation};
use crate::PolicyArgs;
use crate::domain::IdentityService;
use crate::store::SqlStore;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Shared by every job.
#[derive(Clone, Debug, clap::Args)]
pub struct Common {
    /// idbase's database (the store the live service uses).
    #[arg(long, env = "IDBASE_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Directory of PII and blind-index keys (`idbase keys generate`).
    #[arg(long, env = "IDBASE_KEYS_DIR")]
    pub keys_dir: PathBuf,
    /// The service's rules; the jobs use its sealing and indexing only.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// Stream the legacy source into the staging table (resumable).
    Bulkload(BulkloadArgs),
    /// Fill absent users from staging in id-range batches (resumable, idempotent).
    Backfill(BackfillArgs),
    /// Compare the legacy source with the store by id (exit 1 on differences not allowed).
    Validate(ValidateArgs),
    /// Delete stored members soft-deleted in the legacy source (dry run unless --apply).
    Purge(PurgeArgs),
    /// Jobs run, checkpoints, counts, the last validation.
    Status(StatusArgs),
}

/// The legacy source, read as bulkload reads it.
#[derive(Clone, Debug, clap::Args)]
pub struct SourceArgs {
    /// `tsv:PATH` (bcp -c export, gzip accepted), `mysql://…` or `sqlite://…`.
    #[arg(long, env = "IDBASE_SOURCE", hide_env_values = true)]
    pub source: String,
    /// The mapping TOML (README: "Migration mapping").
    #[arg(long, env = "IDBASE_MAPPING")]
    pub mapping: PathBuf,
    /// Rows per batch read from the source (and store rows per page).
    #[arg(long, env = "IDBASE_MIGRATE_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Source row count, for the ETA on stderr.
    #[arg(long, env = "IDBASE_MIGRATE_EXPECTED_ROWS")]
    pub expected_rows: Option<u64>,
    /// No progress line on stderr.
    #[arg(long, env = "IDBASE_MIGRATE_QUIET")]
    pub quiet: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Also write the report (JSON) here.
    #[arg(long, env = "IDBASE_MIGRATE_REPORT")]
    pub report: Option<PathBuf>,
    /// Differences that do not fail: fields `email`, `phone`, `password_hash`,
    /// `deleted`, `version`; `missing`; `extra` or one of its reasons
    /// `absent_in_legacy`, `deleted_in_legacy`, `rejected_in_legacy`. Comma-separated.
    #[arg(long, env = "IDBASE_MIGRATE_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Delete for real; without it, only list what would be deleted.
    #[arg(long, env = "IDBASE_MIGRATE_APPLY")]
    pub apply: bool,
    /// Write one JSON line per member found soft-deleted in legacy: `{id, version, action}`.
    #[arg(long, env = "IDBASE_MIGRATE_REPORT")]
    pub report: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub common: Common,
    /// Staged ids per batch (one INSERT … SELECT each).
    #[arg(long, env = "IDBASE_MIGRATE_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Batches in flight at once, each on its own connection (MySQL; SQLite runs one).
    #[arg(long, env = "IDBASE_MIGRATE_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Write the conflicts (email owned by another id) as JSON lines here.
    #[arg(long, env = "IDBASE_MIGRATE_CONFLICTS")]
    pub conflicts: Option<PathBuf>,
    /// Write the rows that failed (id + reason) as JSON lines here.
    #[arg(long, env = "IDBASE_MIGRATE_REJECTS")]
    pub rejects: Option<PathBuf>,
    /// Forget the checkpoint and scan from the first id (changes nothing already done).
    #[arg(long, env = "IDBASE_MIGRATE_RESTART")]
    pub restart: bool,
    /// No progress line on stderr.
    #[arg(long, env = "IDBASE_MIGRATE_QUIET")]
    pub quiet: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BulkloadArgs {
    #[command(flatten)]
    pub common: Common,
    /// `tsv:PATH` (bcp -c export, gzip accepted), `mysql://…` or `sqlite://…`.
    #[arg(long, env = "IDBASE_SOURCE", hide_env_values = true)]
    pub source: String,
    /// The mapping TOML (README: "Migration mapping").
    #[arg(long, env = "IDBASE_MAPPING")]
    pub mapping: PathBuf,
    /// Rows per batch (one multi-row INSERT each).
    #[arg(long, env = "IDBASE_MIGRATE_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Batches in flight at once, each on its own connection (MySQL; SQLite runs one).
    #[arg(long, env = "IDBASE_MIGRATE_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Source row count, for the ETA on stderr.
    #[arg(long, env = "IDBASE_MIGRATE_EXPECTED_ROWS")]
    pub expected_rows: Option<u64>,
    /// Write the rejects (id + reason) as JSON lines here.
    #[arg(long, env = "IDBASE_MIGRATE_REJECTS")]
    pub rejects: Option<PathBuf>,
    /// Write the duplicate-email losers (id, winner, reason) as JSON lines here.
    #[arg(long, env = "IDBASE_MIGRATE_CONFLICTS")]
    pub conflicts: Option<PathBuf>,
    /// Forget the checkpoint and load from the start.
    #[arg(long, env = "IDBASE_MIGRATE_RESTART")]
    pub restart: bool,
    /// No progress line on stderr.
    #[arg(long, env = "IDBASE_MIGRATE_QUIET")]
    pub quiet: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
}

/// What a job prints on stdout (JSON) and whether the process should fail.
pub struct Outcome {
    pub report: serde_json::Value,
    pub success: bool,
}

impl Outcome {
    /// Ctrl-C or SIGTERM stopped the job; its checkpoint says where.
    fn interrupted(job: &str) -> Self {
        Self {
            report: serde_json::json!({"job": job, "interrupted": true}),
            success: false,
        }
    }
}

/// The ID service and the store it runs on, over one connection pool (one
/// migration run) for a job that needs both.
async fn open(common: &Common) -> anyhow::Result<(Arc<IdentityService>, Arc<SqlStore>)> {
    let store = Arc::new(SqlStore::connect(&common.database_url).await?);
    // Jobs seal and index; they never sign, so they neither need nor read the
    // signing keys (their pods do not mount them).
    let service = crate::service_over(
        Arc::clone(&store),
        &common.keys_dir,
        crate::crypto::KeyUse::Jobs,
        &common.policy,
    )?;
    Ok((service, store))
}

/// Runs one `idbase migrate` job.
pub async fn run(command: MigrateCommand, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    match command {
        MigrateCommand::Bulkload(args) => run_bulkload(args, cancel).await,
        MigrateCommand::Backfill(args) => run_backfill(args, cancel).await,
        MigrateCommand::Validate(args) => run_validate(args, cancel).await,
        MigrateCommand::Purge(args) => run_purge(args, cancel).await,
        MigrateCommand::Status(args) => {
            let store = SqlStore::connect(&args.common.database_url).await?;
            let jobs = checkpoint::all(&store).await?;
            let jobs: Vec<serde_json::Value> = jobs
                .into_iter()
                .map(|c| {
                    serde_json::json!({
                        "job": c.job,
                        "position": c.position,
                        "done": c.done,
                        "counts": serde_json::from_str::<serde_json::Value>(&c.counts).unwrap_or_default(),
                        "updated_at_ms": c.updated_at,
                    })
                })
                .collect();
            let last_validation = validation::latest(&store).await?;
            Ok(Outcome {
                report: serde_json::json!({ "jobs": jobs, "last_validation": last_validation }),
                success: true,
            })
        }
    }
}

async fn run_validate(args: ValidateArgs, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let allow = validation::Allow::parse(&args.allow)?;
    let mapping = Mapping::load(&args.source.mapping)?;
    let (service, store) = open(&args.common).await?;
    let options = validate::ValidateOptions {
        batch: args.source.batch,
        expected_rows: args.source.expected_rows,
        progress: !args.source.quiet,
        allow,
    };
    let report = validate::run(
        service,
        &store,
        &args.source.source,
        &mapping,
        &options,
        &cancel,
    )
    .await
    .context("validate")?;
    let Some(report) = report else {
        return Ok(Outcome::interrupted("validate"));
    };
    let json = serde_json::to_value(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Outcome {
        report: json,
        success: report.passed,
    })
}

async fn run_purge(args: PurgeArgs, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let mapping = Mapping::load(&args.source.mapping)?;
    let (service, store) = open(&args.common).await?;
    let options = purge::PurgeOptions {
        batch: args.source.batch,
        apply: args.apply,
        progress: !args.source.quiet,
        expected_rows: args.source.expected_rows,
        report: args.report.clone(),
    };
    let started = std::time::Instant::now();
    let counts = purge::run(
        service,
        &store,
        &args.source.source,
        &mapping,
        &options,
        &cancel,
    )
    .await
    .context("purge")?;
    let Some(counts) = counts else {
        return Ok(Outcome::interrupted("purge"));
    };
    Ok(Outcome {
        report: serde_json::json!({
            "job": "purge",
            "counts": counts,
            "seconds": started.elapsed().as_secs_f64(),
        }),
        success: true,
    })
}

async fn run_bulkload(args: BulkloadArgs, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let mapping = Mapping::load(&args.mapping)?;
    let (service, store) = open(&args.common).await?;
    if args.restart {
        checkpoint::reset(&store, bulkload::JOB).await?;
    }
    let options = bulkload::BulkloadOptions {
        batch: args.batch,
        workers: args.workers,
        expected_rows: args.expected_rows,
        progress: !args.quiet,
    };
    let started = std::time::Instant::now();
    let counts = bulkload::run(service, &store, &args.source, &mapping, &options, &cancel)
        .await
        .context("bulkload")?;
    let Some(counts) = counts else {
        return Ok(Outcome::interrupted("bulkload"));
    };
    if let Some(path) = &args.rejects {
        reports::write_rejects(&store, bulkload::JOB, path).await?;
    }
    if let Some(path) = &args.conflicts {
        reports::write_conflicts(&store, bulkload::JOB, path).await?;
    }
    Ok(Outcome {
        report: serde_json::json!({
            "job": "bulkload",
            "counts": counts,
            "seconds": started.elapsed().as_secs_f64(),
        }),
        success: true,
    })
}

async fn run_backfill(args: BackfillArgs, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let store = SqlStore::connect(&args.common.database_url).await?;
    if args.restart {
        checkpoint::reset(&store, backfill::JOB).await?;
    }
    let started = std::time::Instant::now();
    let options = backfill::BackfillOptions {
        batch: args.batch,
        workers: args.workers,
        progress: !args.quiet,
    };
    let counts = backfill::run(&store, &options, &cancel)
        .await
        .context("backfill")?;
    let Some(counts) = counts else {
        return Ok(Outcome::interrupted("backfill"));
    };
    if let Some(path) = &args.rejects {
        reports::write_rejects(&store, backfill::JOB, path).await?;
    }
    if let Some(path) = &args.conflicts {
        reports::write_conflicts(&store, backfill::JOB, path).await?;
    }
    Ok(Outcome {
        report: serde_json::json!({
            "job": "backfill",
            "counts": counts,
            "seconds": started.elapsed().as_secs_f64(),
        }),
        success: true,
    })
}
