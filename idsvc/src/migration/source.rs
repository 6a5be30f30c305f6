//! `--source`: legacy rows, streamed in batches with bounded memory.
//!
//! `tsv:PATH` reads a `bcp … queryout -c` export (gzip when the file starts
//! with the gzip magic); `mysql://…` / `sqlite://…` run the mapping's query.
//! A producer task fills a channel of at most `DEPTH` batches, so memory stays
//! bounded by `DEPTH × batch` rows whatever the source size.

use super::mapping::Mapping;
use anyhow::{Context, bail};
use futures::TryStreamExt;
use sqlx::{Column, Row, ValueRef};
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Batches in flight between the reader and the consumer.
const DEPTH: usize = 4;

/// One legacy row: values in `Source::columns` order, `None` for NULL.
pub type Record = Vec<Option<String>>;

/// A running source: column names, then batches until `None`.
pub struct Source {
    pub columns: Arc<Vec<String>>,
    batches: mpsc::Receiver<anyhow::Result<Vec<Record>>>,
}

impl Source {
    /// Opens `spec` and starts reading batches of `batch` rows.
    pub async fn open(spec: &str, mapping: &Mapping, batch: usize) -> anyhow::Result<Self> {
        let batch = batch.max(1);
        if let Some(path) = spec.strip_prefix("tsv:") {
            return open_tsv(path, mapping, batch);
        }
        if spec.starts_with("mysql://") || spec.starts_with("sqlite://") {
            let Some(query) = mapping.query.clone() else {
                bail!("a database source needs `query` in the mapping");
            };
            return open_database(spec, query, batch).await;
        }
        bail!("unknown source {spec:?}: use tsv:PATH, mysql://… or sqlite://…")
    }

    /// The next batch, or `None` at the end.
    pub async fn next_batch(&mut self) -> anyhow::Result<Option<Vec<Record>>> {
        self.batches.recv().await.transpose()
    }

    /// Position of a mapped column in each record.
    pub fn position(&self, column: &str) -> anyhow::Result<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))
            .with_context(|| format!("the source has no column {column:?}"))
    }
}

fn open_tsv(path: &str, mapping: &Mapping, batch: usize) -> anyhow::Result<Source> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let mut magic = [0u8; 2];
    let gzip = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn BufRead + Send> = if gzip {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    };
    let mut lines = reader.lines();
    let tsv = mapping.tsv.clone();
    let columns = if tsv.header {
        let header = lines.next().context("the export is empty")??;
        split(&header, &tsv.delimiter)
            .map(|c| c.trim().to_owned())
            .collect()
    } else if tsv.columns.is_empty() {
        bail!("mapping: tsv.columns is needed when the export has no header");
    } else {
        tsv.columns.clone()
    };
    let width = columns.len();
    let (tx, rx) = mpsc::channel(DEPTH);
    // Blocking file and gzip reads stay off the async workers.
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(batch);
        for (n, line) in lines.enumerate() {
            let line = match line {
                Ok(line) => line,
                Err(err) => {
                    let _ = tx.blocking_send(Err(err.into()));
                    return;
                }
            };
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                continue;
            }
            let record: Record = split(line, &tsv.delimiter)
                .map(|v| (v != tsv.null).then(|| v.to_owned()))
                .collect();
            if record.len() != width {
                let line_no = n + 1 + usize::from(tsv.header);
                let err = anyhow::anyhow!(
                    "line {line_no}: {} fields, the mapping expects {width}",
                    record.len()
                );
                let _ = tx.blocking_send(Err(err));
                return;
            }
            out.push(record);
            if out.len() == batch
                && tx
                    .blocking_send(Ok(std::mem::replace(&mut out, Vec::with_capacity(batch))))
                    .is_err()
            {
                return;
            }
        }
        if !out.is_empty() {
            let _ = tx.blocking_send(Ok(out));
        }
    });
    Ok(Source {
        columns: Arc::new(columns),
        batches: rx,
    })
}

fn split<'a>(line: &'a str, delimiter: &'a str) -> impl Iterator<Item = &'a str> {
    line.split(delimiter)
}

async fn open_database(url: &str, query: String, batch: usize) -> anyhow::Result<Source> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connecting to the source database")?;
    // Learn the column names from the statement without reading rows.
    let described = sqlx::Executor::describe(&pool, &query)
        .await
        .context("preparing the source query")?;
    let columns: Vec<String> = described
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::spawn(async move {
        let mut rows = sqlx::query(&query).fetch(&pool);
        let mut out = Vec::with_capacity(batch);
        loop {
            match rows.try_next().await {
                Ok(Some(row)) => match record_of(&row) {
                    Ok(record) => out.push(record),
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                },
                Ok(None) => break,
                Err(err) => {
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            }
            if out.len() == batch
                && tx
                    .send(Ok(std::mem::replace(&mut out, Vec::with_capacity(batch))))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if !out.is_empty() {
            let _ = tx.send(Ok(out)).await;
        }
    });
    Ok(Source {
        columns: Arc::new(columns),
        batches: rx,
    })
}

/// Every value as text, whatever its SQL type (the Any driver decodes only
/// basic types: cast dates to text in the query).
fn record_of(row: &sqlx::any::AnyRow) -> anyhow::Result<Record> {
    (0..row.len())
        .map(|i| {
            if row.try_get_raw(i)?.is_null() {
                return Ok(None);
            }
            if let Ok(s) = row.try_get::<String, _>(i) {
                return Ok(Some(s));
            }
            if let Ok(n) = row.try_get::<i64, _>(i) {
                return Ok(Some(n.to_string()));
            }
            if let Ok(f) = row.try_get::<f64, _>(i) {
                return Ok(Some(f.to_string()));
            }
            if let Ok(b) = row.try_get::<Vec<u8>, _>(i) {
                return Ok(Some(String::from_utf8_lossy(&b).into_owned()));
            }
            bail!(
                "column {} has a type the source reader cannot read; cast it to text in the query",
                row.columns()[i].name()
            )
        })
        .collect()
}
