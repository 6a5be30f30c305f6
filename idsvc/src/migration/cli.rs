//! `idbase migrate …`: arguments and dispatch; `src/main.rs` only parses.

use super::SourceJob;
use super::store::MigrationStore;
use super::{Mapping, backfill, bulkload, checkpoint, purge, reports, validate, validation};
use crate::PolicyArgs;
use crate::domain::IdentityService;
use crate::store::SqlStore;
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
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

/// The legacy source, as bulkload, validate and purge read it.
#[derive(Clone, Debug, clap::Args)]
pub struct SourceArgs {
    /// `tsv:PATH` (bcp -c export, gzip accepted), `mysql://…` or `sqlite://…`.
    #[arg(long, env = "IDBASE_SOURCE", hide_env_values = true)]
    pub source: String,
    /// The mapping TOML (README: "Migration mapping").
    #[arg(long, env = "IDBASE_MAPPING")]
    pub mapping: PathBuf,
    /// Rows per batch read from the source (bulkload: one multi-row INSERT
    /// each; validate: also store rows per page).
    #[arg(long, env = "IDBASE_MIGRATE_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Source row count, for the progress ETA.
    #[arg(long, env = "IDBASE_MIGRATE_EXPECTED_ROWS")]
    pub expected_rows: Option<u64>,
    /// No progress (a bar on a terminal, else a log event every few seconds).
    #[arg(long, env = "IDBASE_MIGRATE_QUIET")]
    pub quiet: bool,
}

impl SourceArgs {
    /// The job over this source, as bulkload, validate and purge run it.
    fn job<'a>(
        &'a self,
        service: Arc<IdentityService>,
        store: &'a dyn MigrationStore,
        mapping: &'a Mapping,
        cancel: &'a CancellationToken,
    ) -> SourceJob<'a> {
        SourceJob::new(service, store, &self.source, mapping, cancel)
    }
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
    /// No progress (a bar on a terminal, else a log event every few seconds).
    #[arg(long, env = "IDBASE_MIGRATE_QUIET")]
    pub quiet: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BulkloadArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Batches in flight at once, each on its own connection (MySQL; SQLite runs one).
    #[arg(long, env = "IDBASE_MIGRATE_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Write the rejects (id + reason) as JSON lines here.
    #[arg(long, env = "IDBASE_MIGRATE_REJECTS")]
    pub rejects: Option<PathBuf>,
    /// Write the duplicate-email losers (id, winner, reason) as JSON lines here.
    #[arg(long, env = "IDBASE_MIGRATE_CONFLICTS")]
    pub conflicts: Option<PathBuf>,
    /// Forget the checkpoint and load from the start.
    #[arg(long, env = "IDBASE_MIGRATE_RESTART")]
    pub restart: bool,
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
        store.clone(),
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
        MigrateCommand::Status(args) => run_status(args).await,
    }
}

/// The report files a job writes from its tables once it is done.
#[derive(Default)]
struct ReportFiles<'a> {
    rejects: Option<&'a Path>,
    conflicts: Option<&'a Path>,
}

/// The outcome of a counting job (bulkload, backfill, purge): `None` counts
/// mean it was interrupted; otherwise the report files asked for are written
/// and stdout gets `{job, counts, seconds}`.
async fn finish(
    store: &dyn MigrationStore,
    job: &str,
    counts: Option<impl Serialize>,
    started: Instant,
    files: ReportFiles<'_>,
) -> anyhow::Result<Outcome> {
    let Some(counts) = counts else {
        return Ok(Outcome::interrupted(job));
    };
    if let Some(path) = files.rejects {
        reports::write_rejects(store, job, path).await?;
    }
    if let Some(path) = files.conflicts {
        reports::write_conflicts(store, job, path).await?;
    }
    Ok(Outcome {
        report: serde_json::json!({
            "job": job,
            "counts": counts,
            "seconds": started.elapsed().as_secs_f64(),
        }),
        success: true,
    })
}

async fn run_status(args: StatusArgs) -> anyhow::Result<Outcome> {
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
    let job = args.source.job(service, store.as_ref(), &mapping, &cancel);
    let report = validate::run(job, &options).await.context(validate::JOB)?;
    let Some(report) = report else {
        return Ok(Outcome::interrupted(validate::JOB));
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
    let started = Instant::now();
    let job = args.source.job(service, store.as_ref(), &mapping, &cancel);
    let counts = purge::run(job, &options).await.context(purge::JOB)?;
    finish(
        store.as_ref(),
        purge::JOB,
        counts,
        started,
        ReportFiles::default(),
    )
    .await
}

async fn run_bulkload(args: BulkloadArgs, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let mapping = Mapping::load(&args.source.mapping)?;
    let (service, store) = open(&args.common).await?;
    if args.restart {
        checkpoint::reset(store.as_ref(), bulkload::JOB).await?;
    }
    let options = bulkload::BulkloadOptions {
        batch: args.source.batch,
        workers: args.workers,
        expected_rows: args.source.expected_rows,
        progress: !args.source.quiet,
    };
    let started = Instant::now();
    let job = args.source.job(service, store.as_ref(), &mapping, &cancel);
    let counts = bulkload::run(job, &options).await.context(bulkload::JOB)?;
    let files = ReportFiles {
        rejects: args.rejects.as_deref(),
        conflicts: args.conflicts.as_deref(),
    };
    finish(store.as_ref(), bulkload::JOB, counts, started, files).await
}

async fn run_backfill(args: BackfillArgs, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let store = SqlStore::connect(&args.common.database_url).await?;
    if args.restart {
        checkpoint::reset(&store, backfill::JOB).await?;
    }
    let started = Instant::now();
    let options = backfill::BackfillOptions {
        batch: args.batch,
        workers: args.workers,
        progress: !args.quiet,
    };
    let counts = backfill::run(&store, &options, &cancel)
        .await
        .context(backfill::JOB)?;
    let files = ReportFiles {
        rejects: args.rejects.as_deref(),
        conflicts: args.conflicts.as_deref(),
    };
    finish(&store, backfill::JOB, counts, started, files).await
}
