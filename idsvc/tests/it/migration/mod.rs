//! The migration jobs end to end on a fresh store: sources and the
//! transformation, bulkload, backfill (alone and beside double writes),
//! validate and purge, each in its own module. The helpers here build the
//! legacy exports and run the jobs the way `idbase migrate` does.

mod backfill;
mod bulkload;
mod double_writes;
mod flagged;
mod purge;
mod source;
mod validate;

use crate::harness::Harness;
use idsvc::migration::Mapping;
use sha2::Digest;
use std::path::{Path, PathBuf};

/// The fixture mapping of the legacy `Member` table.
fn mapping_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/fixtures/legacy/mapping.toml")
}

fn mapping() -> Mapping {
    Mapping::load(&mapping_path()).unwrap()
}

/// Backfill in `batch`-id ranges, two at a time (one on SQLite).
fn backfill_options(batch: usize) -> idsvc::migration::backfill::BackfillOptions {
    idsvc::migration::backfill::BackfillOptions {
        batch,
        workers: 2,
        progress: false,
    }
}

/// `n` fixture rows as a bcp export: every 50th row repeats an earlier
/// member's email in other case/spacing, every 97th is soft-deleted, every
/// 211th has a bad email (a reject).
fn export(n: i64) -> String {
    let mut text = String::new();
    for id in 1..=n {
        let salt = format!("s{id}");
        let hash = hex::encode_upper(sha2::Sha256::digest(format!("{salt}pw-{id}")));
        let email = if id % 211 == 0 {
            format!("broken{id}")
        } else if id % 50 == 0 {
            format!(" MEMBER{}@example.com", id - 1)
        } else {
            format!("member{id}@example.com")
        };
        let del = i64::from(id % 97 == 0);
        text.push_str(&format!(
            "{id}\t{email}\t{hash}\t{salt}\t\t{del}\t2020-01-01 00:00:00\t2024-01-01 00:00:{:02}.000\n",
            id % 60
        ));
    }
    text
}

/// Both rows of a duplicate pair `(a, b)` of `export` are live and staged.
fn pair_live(a: i64, b: i64) -> bool {
    a % 97 != 0 && b % 97 != 0 && a % 211 != 0 && b % 211 != 0
}

/// Whether `id` of `export` loses its email under the latest-updated rule:
/// rows 50k-1 and 50k share an email when both are live and staged, and the
/// later UpdateDate (second = id % 60) keeps it.
fn is_export_loser(id: i64) -> bool {
    ((id + 1) % 50 == 0 && pair_live(id, id + 1) && (id + 1) % 60 != 0)
        || (id % 50 == 0 && pair_live(id - 1, id) && id % 60 == 0)
}

/// Live duplicate losers of `export(n)` (one per live pair).
fn export_losers(n: i64) -> u64 {
    (1..=n)
        .filter(|id| id % 50 == 0 && pair_live(id - 1, *id))
        .count() as u64
}

async fn user_ids(h: &Harness) -> Vec<(i64, i64, String)> {
    use sqlx::Row;
    sqlx::query("SELECT id, version, password_hash FROM users ORDER BY id")
        .fetch_all(h.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Runs `validate` over a TSV export in the fixture layout.
async fn validate(
    h: &Harness,
    export: &Path,
    allow: &[&str],
) -> idsvc::migration::validation::ValidationReport {
    use idsvc::migration::{validate, validation};
    let allow: Vec<String> = allow.iter().map(|a| (*a).to_owned()).collect();
    let options = validate::ValidateOptions {
        batch: 64,
        expected_rows: None,
        progress: false,
        allow: validation::Allow::parse(&allow).unwrap(),
    };
    validate::run(
        idsvc::migration::SourceJob::new(
            h.shared_service(),
            &*h.store,
            &format!("tsv:{}", export.display()),
            &mapping(),
            &tokio_util::sync::CancellationToken::new(),
        ),
        &options,
    )
    .await
    .unwrap()
    .unwrap()
}

/// Every legacy row is counted exactly once.
fn assert_balanced(r: &idsvc::migration::validation::ValidationReport) {
    assert_eq!(
        r.source_rows,
        r.matched
            + r.missing
            + r.different
            + r.duplicate_losers
            + r.rejected
            + r.extra_reasons.deleted_in_legacy
            + r.extra_reasons.rejected_in_legacy,
        "{r:#?}"
    );
    assert_eq!(
        r.extra,
        r.extra_reasons.absent_in_legacy
            + r.extra_reasons.deleted_in_legacy
            + r.extra_reasons.rejected_in_legacy
    );
}

/// Bulkloads the export at `path` in 100-row batches, two written at once.
async fn bulkload_export(h: &Harness, path: &Path) {
    let options = idsvc::migration::bulkload::BulkloadOptions {
        batch: 100,
        workers: 2,
        expected_rows: None,
        progress: false,
    };
    idsvc::migration::bulkload::run(
        idsvc::migration::SourceJob::new(
            h.shared_service(),
            &*h.store,
            &format!("tsv:{}", path.display()),
            &mapping(),
            &tokio_util::sync::CancellationToken::new(),
        ),
        &options,
    )
    .await
    .unwrap()
    .unwrap();
}

/// `export(n)` bulkloaded and backfilled; returns the export's path.
async fn migrated(h: &Harness, dir: &Path, n: i64) -> std::path::PathBuf {
    use idsvc::migration::backfill;
    let path = dir.join("member.tsv");
    std::fs::write(&path, export(n)).unwrap();
    bulkload_export(h, &path).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    backfill::run(&*h.store, &backfill_options(128), &cancel)
        .await
        .unwrap()
        .unwrap();
    path
}

/// `idbase migrate …` through the CLI code, as the binary runs it.
async fn cli(args: &[&str]) -> anyhow::Result<idsvc::migration::Outcome> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: idsvc::migration::MigrateCommand,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once("migrate").chain(args.iter().copied()),
    )?;
    idsvc::migration::run(cli.command, tokio_util::sync::CancellationToken::new()).await
}
