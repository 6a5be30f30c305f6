//! `bench migrate`: the migration toolkit against MariaDB's own floor.
//!
//! Generates N legacy rows in the fixture layout (`e2e/fixtures/legacy`) as a
//! bcp-style TSV export, with duplicate emails (other case and spacing) and
//! soft-deleted rows, then runs the release `idbase migrate bulkload`,
//! `backfill` and `validate` as separate processes on a fresh database,
//! timing each and sampling its peak RSS. In the same run it measures the
//! floor: `LOAD DATA LOCAL INFILE` of the same file into a staging table plus
//! server-side `INSERT … SELECT` in 1000-row chunks into a table with the
//! indexes of `users` (the blind index computed by the server as SHA2, no
//! sealing): what MariaDB alone needs to move the rows.

use anyhow::{Context, bail};
use e2e::{fresh_mysql_database, generate_keys, idbase_binary};
use serde_json::{Value, json};
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Legacy rows to generate.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// `--batch` of the migrate jobs (rows per multi-row insert / id range).
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Keep the benchmark database (dropped by default: 1M rows take ~1 GB).
    #[arg(long)]
    keep_database: bool,
    /// Resize MariaDB's InnoDB buffer pool for the run (restored after), as a
    /// production database would be sized: at the default 128 MiB the blind
    /// index of tens of millions of members no longer fits, and every insert
    /// into it (ours and the floor's alike) waits for a random read.
    #[arg(long)]
    buffer_pool_mib: Option<u64>,
}

/// Every 50th row repeats the previous member's email in other case and
/// spacing (a duplicate the rule settles); every 97th is soft-deleted; every
/// 3rd has a phone number.
fn write_export(path: &Path, rows: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for id in 1..=rows {
        let salt = format!("{:08x}", id.wrapping_mul(0x9e37_79b9) as u32);
        let digest = sha2::Sha256::digest(format!("{salt}pw-{id}").as_bytes());
        let hash: String = digest.iter().map(|b| format!("{b:02X}")).collect();
        let email = if id % 50 == 0 {
            format!(" Member{}@Example.com", id - 1)
        } else {
            format!("member{id}@example.com")
        };
        let tel = if id % 3 == 0 {
            // Japanese mobile numbers: 090-[1-9]xxx-xxxx.
            format!("090-{:04}-{:04}", 1000 + (id / 10_000) % 9000, id % 10_000)
        } else {
            String::new()
        };
        let deleted = u8::from(id % 97 == 0);
        let second = id % 86_400;
        writeln!(
            out,
            "{id}\t{email}\t{hash}\t{salt}\t{tel}\t{deleted}\t2020-01-01 00:00:00.000\t\
             2024-01-01 {:02}:{:02}:{:02}.000",
            second / 3600,
            second / 60 % 60,
            second % 60
        )?;
    }
    out.flush()?;
    Ok(())
}

/// One `idbase migrate` stage: wall time, peak RSS, its JSON summary.
struct Stage {
    seconds: f64,
    peak_rss_mib: f64,
    summary: Value,
    success: bool,
}

fn run_stage(binary: &Path, args: &[String]) -> anyhow::Result<Stage> {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("migrate")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting idbase migrate")?;
    let pid = child.id();
    // VmHWM is the kernel's own peak; sample it until the process exits.
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout)?;
    }
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::String(stdout));
    Ok(Stage {
        seconds,
        peak_rss_mib: peak_kib as f64 / 1024.0,
        summary,
        success: status.success(),
    })
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    if args.rows == 0 {
        bail!("--rows must be at least 1");
    }
    let binary = idbase_binary()?;
    let dir = tempfile::tempdir()?;
    let export = dir.path().join("member.tsv");
    let generated = Instant::now();
    {
        let export = export.clone();
        let rows = args.rows;
        tokio::task::spawn_blocking(move || write_export(&export, rows)).await??;
    }
    let export_mib = std::fs::metadata(&export)?.len() as f64 / (1024.0 * 1024.0);
    eprintln!(
        "generated {} rows ({export_mib:.0} MiB) in {:.1} s",
        args.rows,
        generated.elapsed().as_secs_f64()
    );
    let database = fresh_mysql_database().await?;
    let restore_pool = match args.buffer_pool_mib {
        Some(mib) => Some(resize_buffer_pool(&database, mib << 20).await?),
        None => None,
    };
    let result = run_on(&args, &binary, &database, dir.path(), &export, export_mib).await;
    if let Some(bytes) = restore_pool {
        resize_buffer_pool(&database, bytes).await?;
    }
    if !args.keep_database {
        drop_database(&database).await?;
    }
    result
}

async fn run_on(
    args: &Args,
    binary: &Path,
    database: &str,
    dir: &Path,
    export: &Path,
    export_mib: f64,
) -> anyhow::Result<Value> {
    let database = database.to_owned();
    let keys = dir.join("keys");
    generate_keys(binary, &keys)?;
    let mapping: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/legacy/mapping.toml");
    let common = [
        "--database-url".to_owned(),
        database.clone(),
        "--keys-dir".to_owned(),
        keys.display().to_string(),
        "--batch".to_owned(),
        args.batch.to_string(),
    ];
    let source = vec![
        "--source".to_owned(),
        format!("tsv:{}", export.display()),
        "--mapping".to_owned(),
        mapping.display().to_string(),
        "--expected-rows".to_owned(),
        args.rows.to_string(),
    ];
    let stage = |name: &str, extra: &[String]| -> anyhow::Result<Stage> {
        let mut all = vec![name.to_owned()];
        all.extend(common.iter().cloned());
        all.extend(extra.iter().cloned());
        let stage = run_stage(binary, &all)?;
        let rate = args.rows as f64 / stage.seconds;
        eprintln!(
            "{name:<9} {:>8.1} s  {rate:>9.0} rows/s  peak RSS {:.1} MiB",
            stage.seconds, stage.peak_rss_mib
        );
        Ok(stage)
    };
    let bulkload = tokio::task::block_in_place(|| stage("bulkload", &source))?;
    if !bulkload.success {
        bail!("bulkload failed: {}", bulkload.summary);
    }
    let backfill = tokio::task::block_in_place(|| stage("backfill", &[]))?;
    if !backfill.success {
        bail!("backfill failed: {}", backfill.summary);
    }
    let report = dir.join("validate.json");
    let mut validate_args = source.clone();
    validate_args.extend(["--report".to_owned(), report.display().to_string()]);
    let validate = tokio::task::block_in_place(|| stage("validate", &validate_args))?;
    let validation: Value = std::fs::read_to_string(&report)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);

    let floor = measure_floor(&database, export).await?;
    let buffer_pool_mib = buffer_pool_bytes(&database).await? >> 20;
    eprintln!(
        "floor     {:>8.1} s  (LOAD DATA {:.1} s + INSERT … SELECT {:.1} s)",
        floor.0 + floor.1,
        floor.0,
        floor.1
    );
    let floor_s = floor.0 + floor.1;
    let ratio = (bulkload.seconds + backfill.seconds) / floor_s;
    let total = bulkload.seconds + backfill.seconds + validate.seconds;
    // Linear in rows: what 20M would take at this run's rates.
    let projected_20m_s = total * 20_000_000.0 / args.rows as f64;
    eprintln!(
        "ratio (bulkload + backfill) / floor = {ratio:.2}; 20M projected {projected_20m_s:.0} s"
    );

    let rate = |s: f64| args.rows as f64 / s;
    Ok(json!({
        "bench": "migrate",
        "rows": args.rows,
        "batch": args.batch,
        "export_mib": export_mib,
        "buffer_pool_mib": buffer_pool_mib,
        "bulkload_s": bulkload.seconds,
        "backfill_s": backfill.seconds,
        "validate_s": validate.seconds,
        "bulkload_rows_per_s": rate(bulkload.seconds),
        "backfill_rows_per_s": rate(backfill.seconds),
        "validate_rows_per_s": rate(validate.seconds),
        "floor_s": floor_s,
        "floor_load_data_s": floor.0,
        "floor_insert_select_s": floor.1,
        "ratio": ratio,
        "total_s": total,
        "projected_20m_s": projected_20m_s,
        "peak_rss_mib": {
            "bulkload": bulkload.peak_rss_mib,
            "backfill": backfill.peak_rss_mib,
            "validate": validate.peak_rss_mib,
        },
        "bulkload": bulkload.summary,
        "backfill": backfill.summary,
        "validate_passed": validate.success,
        "validation": validation,
    }))
}

async fn buffer_pool_bytes(database: &str) -> anyhow::Result<u64> {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(database).await?;
    let bytes: i64 = sqlx::query_scalar("SELECT CAST(@@innodb_buffer_pool_size AS SIGNED)")
        .fetch_one(&mut conn)
        .await?;
    Ok(bytes as u64)
}

/// Sets the buffer pool size (MariaDB resizes it online, in the background)
/// and waits until the resize is done; returns the size before.
async fn resize_buffer_pool(database: &str, bytes: u64) -> anyhow::Result<u64> {
    use sqlx::Connection;
    let before = buffer_pool_bytes(database).await?;
    let mut conn = sqlx::AnyConnection::connect(database).await?;
    sqlx::raw_sql(&format!("SET GLOBAL innodb_buffer_pool_size = {bytes}"))
        .execute(&mut conn)
        .await
        .context("resizing the InnoDB buffer pool (needs SUPER)")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while buffer_pool_bytes(database).await? != bytes || resizing(&mut conn).await? {
        if Instant::now() > deadline {
            bail!("the buffer pool resize to {bytes} bytes did not finish in 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "InnoDB buffer pool: {} MiB (was {} MiB)",
        bytes >> 20,
        before >> 20
    );
    Ok(before)
}

async fn resizing(conn: &mut sqlx::AnyConnection) -> anyhow::Result<bool> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT VARIABLE_VALUE FROM information_schema.global_status \
         WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_RESIZE_STATUS'",
    )
    .fetch_optional(conn)
    .await?;
    // Empty when idle; "Completed resizing …" when the last resize is done.
    Ok(status.is_some_and(|s| !s.is_empty() && !s.starts_with("Completed")))
}

/// (LOAD DATA seconds, INSERT … SELECT seconds) for the same export.
async fn measure_floor(database: &str, export: &Path) -> anyhow::Result<(f64, f64)> {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(database).await?;
    sqlx::raw_sql(
        "CREATE TABLE floor_staging (
            MemberId BIGINT NOT NULL PRIMARY KEY, MailAddress VARCHAR(256) NOT NULL,
            PasswordHash CHAR(64) NOT NULL, PasswordSalt VARCHAR(32) NOT NULL,
            Tel VARCHAR(32) NULL, DelFlag TINYINT NOT NULL DEFAULT 0,
            RegistDate DATETIME(3) NOT NULL, UpdateDate DATETIME(3) NOT NULL
        ) ENGINE = InnoDB;
        CREATE TABLE floor_users LIKE users;",
    )
    .execute(&mut conn)
    .await
    .context("creating the floor tables")?;
    let (base, name) = database
        .rsplit_once('/')
        .context("database URL without a name")?;
    let (host, port) = base
        .trim_start_matches("mysql://")
        .rsplit_once('@')
        .map_or(base.trim_start_matches("mysql://"), |(_, host)| host)
        .split_once(':')
        .unwrap_or(("127.0.0.1", "3306"));
    let load = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE floor_staging FIELDS TERMINATED BY '\\t' \
         LINES TERMINATED BY '\\n' (MemberId, MailAddress, PasswordHash, PasswordSalt, @tel, \
         DelFlag, RegistDate, UpdateDate) SET Tel = NULLIF(@tel, '')",
        export.display()
    );
    let started = Instant::now();
    let status = Command::new("mariadb")
        .args([
            "--local-infile=1",
            "-h",
            host,
            "-P",
            port,
            "-u",
            "root",
            name,
            "-e",
        ])
        .arg(&load)
        .status()
        .context("running the mariadb client")?;
    if !status.success() {
        bail!("LOAD DATA LOCAL INFILE failed ({status})");
    }
    let load_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(MemberId), 0) FROM floor_staging")
        .fetch_one(&mut conn)
        .await?;
    // Live rows only; IGNORE drops the duplicate emails the unique index refuses.
    let insert = "INSERT IGNORE INTO floor_users (id, email_sealed, email_index, phone_sealed, \
         password_hash, version, created_at, updated_at) \
         SELECT MemberId, MailAddress, UNHEX(SHA2(LOWER(TRIM(MailAddress)), 256)), Tel, \
         PasswordHash, CAST(UNIX_TIMESTAMP(UpdateDate) * 1000 AS SIGNED), \
         CAST(UNIX_TIMESTAMP(RegistDate) * 1000 AS SIGNED), \
         CAST(UNIX_TIMESTAMP(UpdateDate) * 1000 AS SIGNED) \
         FROM floor_staging WHERE MemberId > ? AND MemberId <= ? AND DelFlag = 0";
    let mut lo = 0i64;
    while lo < max {
        sqlx::query(insert)
            .bind(lo)
            .bind(lo + 1000)
            .execute(&mut conn)
            .await?;
        lo += 1000;
    }
    Ok((load_s, started.elapsed().as_secs_f64()))
}

async fn drop_database(database: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let (base, name) = database
        .rsplit_once('/')
        .context("database URL without a name")?;
    let mut conn = sqlx::AnyConnection::connect(&format!("{base}/test")).await?;
    sqlx::raw_sql(&format!("DROP DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    Ok(())
}
