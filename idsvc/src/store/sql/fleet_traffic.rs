//! The fleet's member traffic per 5-second slot (see
//! `domain::phase::fleet_traffic`): added to by every replica, read back as
//! series, purged after a day.

use super::SqlStore;
use super::dialect::Dialect;
use crate::domain::StoreResult;
use crate::domain::phase::{BUCKETS, RouteKind, Tally, TrafficKey, TrafficSide};
use sqlx::Row;
use std::sync::OnceLock;

/// The count columns, in `Tally` order: outcomes, then buckets.
fn counts() -> &'static [String] {
    static COLUMNS: OnceLock<Vec<String>> = OnceLock::new();
    COLUMNS.get_or_init(|| {
        let outcomes = [
            "ok",
            "unauthorized",
            "not_found",
            "throttled",
            "client_error",
            "server_error",
        ];
        outcomes
            .iter()
            .map(|c| (*c).to_owned())
            .chain((0..BUCKETS).map(|i| format!("b{i}")))
            .collect()
    })
}

fn values(tally: &Tally) -> impl Iterator<Item = u64> + '_ {
    [
        tally.ok,
        tally.unauthorized,
        tally.not_found,
        tally.throttled,
        tally.client_error,
        tally.server_error,
    ]
    .into_iter()
    .chain(tally.buckets)
}

fn add_sql(dialect: Dialect) -> String {
    let columns = counts().join(", ");
    let marks = vec!["?"; counts().len() + 3].join(", ");
    let insert =
        format!("INSERT INTO fleet_traffic (slot, side, kind, {columns}) VALUES ({marks})");
    let adds: Vec<String> = counts()
        .iter()
        .map(|c| match dialect {
            Dialect::Sqlite => format!("{c} = {c} + excluded.{c}"),
            Dialect::MySql => format!("{c} = {c} + VALUES({c})"),
        })
        .collect();
    match dialect {
        Dialect::Sqlite => format!(
            "{insert} ON CONFLICT (slot, side, kind) DO UPDATE SET {}",
            adds.join(", ")
        ),
        Dialect::MySql => format!("{insert} ON DUPLICATE KEY UPDATE {}", adds.join(", ")),
    }
}

pub(super) async fn add_fleet_traffic(
    store: &SqlStore,
    key: &TrafficKey,
    tally: &Tally,
) -> StoreResult<()> {
    let sql = add_sql(store.dialect);
    // Concurrent upserts of one new row can deadlock in InnoDB: the
    // transaction loop runs the loser again.
    transaction!(store, |tx| {
        let mut query = sqlx::query(&sql)
            .bind(key.slot)
            .bind(key.side.as_str())
            .bind(key.kind.as_str());
        for value in values(tally) {
            query = query.bind(i64::try_from(value).unwrap_or(i64::MAX));
        }
        query.execute(&mut *tx).await?;
        Ok(())
    })?;
    Ok(())
}

pub(super) async fn fleet_traffic_since(
    store: &SqlStore,
    slot: i64,
) -> StoreResult<Vec<(TrafficKey, Tally)>> {
    let sql = format!(
        "SELECT slot, side, kind, {} FROM fleet_traffic WHERE slot >= ? ORDER BY slot",
        counts().join(", ")
    );
    let rows = sqlx::query(&sql).bind(slot).fetch_all(&store.pool).await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        let side: String = row.try_get(1)?;
        let kind: String = row.try_get(2)?;
        // Rows of a side or kind this version does not know are skipped.
        let (Some(side), Some(kind)) = (TrafficSide::parse(&side), RouteKind::parse(&kind)) else {
            continue;
        };
        let mut numbers = Vec::with_capacity(counts().len());
        for i in 0..counts().len() {
            let n: i64 = row.try_get(i + 3)?;
            numbers.push(u64::try_from(n).unwrap_or(0));
        }
        let mut tally = Tally {
            ok: numbers[0],
            unauthorized: numbers[1],
            not_found: numbers[2],
            throttled: numbers[3],
            client_error: numbers[4],
            server_error: numbers[5],
            ..Tally::default()
        };
        tally.buckets.copy_from_slice(&numbers[6..]);
        let key = TrafficKey {
            slot: row.try_get(0)?,
            side,
            kind,
        };
        found.push((key, tally));
    }
    Ok(found)
}

pub(super) async fn purge_fleet_traffic(store: &SqlStore, before: i64) -> StoreResult<u64> {
    let _writer = store.writer().await;
    let done = sqlx::query("DELETE FROM fleet_traffic WHERE slot < ?")
        .bind(before)
        .execute(&store.pool)
        .await?;
    Ok(done.rows_affected())
}
