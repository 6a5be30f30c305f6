//! The migration phase (one row moved by compare-and-set), its history, and
//! the gateways' heartbeats.

use super::SqlStore;
use crate::domain::phase::{
    GatewayReport, LastValidation, LegacyTraffic, Phase, PhaseChange, PhaseState, PhaseSwap,
};
use crate::domain::{Millis, StoreError, StoreResult};
use sqlx::Row;
use sqlx::any::AnyRow;

/// The phase row's key: there is only one.
const ROW: i64 = 1;

const STATE_COLUMNS: &str =
    "phase, weight, generation, write_fence, ramp_key, changed_at, changed_by";
const HISTORY_COLUMNS: &str = "generation, from_phase, to_phase, from_weight, to_weight, who, at, \
     reason, forced, automatic, fence_ms";

/// Integers come back as i64 from both backends; the domain's are narrower
/// or unsigned. A stored value out of range is a corrupt row.
fn narrow<T: TryFrom<i64>>(value: i64, column: &str) -> Result<T, StoreError> {
    T::try_from(value)
        .map_err(|_| StoreError::Database(anyhow::anyhow!("{column} {value} is out of range")))
}

fn wide<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

fn phase_of(number: i64, column: &str) -> Result<Phase, StoreError> {
    Phase::from_number(narrow(number, column)?)
        .ok_or_else(|| StoreError::Database(anyhow::anyhow!("{column} {number} is no phase")))
}

fn state_row(row: &AnyRow) -> StoreResult<PhaseState> {
    Ok(PhaseState {
        phase: phase_of(row.try_get("phase")?, "phase")?,
        weight: narrow(row.try_get("weight")?, "weight")?,
        generation: narrow(row.try_get("generation")?, "generation")?,
        write_fence: row.try_get::<i64, _>("write_fence")? != 0,
        ramp_key: row.try_get("ramp_key")?,
        changed_at: row.try_get("changed_at")?,
        changed_by: row.try_get("changed_by")?,
    })
}

fn change_row(row: &AnyRow) -> StoreResult<PhaseChange> {
    let fence_ms: Option<i64> = row.try_get("fence_ms")?;
    Ok(PhaseChange {
        generation: narrow(row.try_get("generation")?, "generation")?,
        from_phase: phase_of(row.try_get("from_phase")?, "from_phase")?,
        to_phase: phase_of(row.try_get("to_phase")?, "to_phase")?,
        from_weight: narrow(row.try_get("from_weight")?, "from_weight")?,
        to_weight: narrow(row.try_get("to_weight")?, "to_weight")?,
        who: row.try_get("who")?,
        at: row.try_get("at")?,
        reason: row.try_get("reason")?,
        forced: row.try_get::<i64, _>("forced")? != 0,
        automatic: row.try_get::<i64, _>("automatic")? != 0,
        fence_ms: fence_ms.map(|ms| narrow(ms, "fence_ms")).transpose()?,
    })
}

pub(super) async fn phase_state(store: &SqlStore) -> StoreResult<Option<PhaseState>> {
    let row = sqlx::query(&format!(
        "SELECT {STATE_COLUMNS} FROM phase_state WHERE id = ?"
    ))
    .bind(ROW)
    .fetch_optional(&store.pool)
    .await?;
    row.as_ref().map(state_row).transpose()
}

pub(super) async fn create_phase_state(
    store: &SqlStore,
    initial: &PhaseState,
) -> StoreResult<PhaseState> {
    {
        let _writer = store.writer().await;
        // Replicas starting together race here; the first row stays, so all
        // of them agree on the ramp key.
        sqlx::query(&format!(
            "{} INTO phase_state (id, {STATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            store.dialect.insert_ignore()
        ))
        .bind(ROW)
        .bind(i64::from(initial.phase.number()))
        .bind(i64::from(initial.weight))
        .bind(wide(initial.generation))
        .bind(i64::from(initial.write_fence))
        .bind(&initial.ramp_key)
        .bind(initial.changed_at)
        .bind(&initial.changed_by)
        .execute(&store.pool)
        .await?;
    }
    phase_state(store)
        .await?
        .ok_or_else(|| StoreError::Database(anyhow::anyhow!("the phase row vanished")))
}

pub(super) async fn swap_phase(store: &SqlStore, swap: PhaseSwap<'_>) -> StoreResult<bool> {
    let (next, change) = (swap.next, swap.change);
    transaction!(store, |tx| {
        // The conditional UPDATE is the compare-and-set: of two writers
        // holding the same generation, the second matches no row (InnoDB
        // re-reads the row under its lock; SQLite has one writer).
        let swapped = sqlx::query(
            "UPDATE phase_state SET phase = ?, weight = ?, generation = ?, write_fence = ?, \
             changed_at = ?, changed_by = ? WHERE id = ? AND generation = ?",
        )
        .bind(i64::from(next.phase.number()))
        .bind(i64::from(next.weight))
        .bind(wide(next.generation))
        .bind(i64::from(next.write_fence))
        .bind(next.changed_at)
        .bind(&next.changed_by)
        .bind(ROW)
        .bind(wide(swap.expected_generation))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if swapped != 1 {
            return Ok(false);
        }
        sqlx::query(&format!(
            "INSERT INTO phase_history ({HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(wide(change.generation))
        .bind(i64::from(change.from_phase.number()))
        .bind(i64::from(change.to_phase.number()))
        .bind(i64::from(change.from_weight))
        .bind(i64::from(change.to_weight))
        .bind(&change.who)
        .bind(change.at)
        .bind(&change.reason)
        .bind(i64::from(change.forced))
        .bind(i64::from(change.automatic))
        .bind(change.fence_ms.map(wide))
        .execute(&mut *tx)
        .await?;
        if let Some((generation, fence_ms)) = swap.lifted {
            sqlx::query("UPDATE phase_history SET fence_ms = ? WHERE generation = ?")
                .bind(wide(fence_ms))
                .bind(wide(generation))
                .execute(&mut *tx)
                .await?;
        }
        Ok(true)
    })
}

pub(super) async fn phase_history(store: &SqlStore, limit: u32) -> StoreResult<Vec<PhaseChange>> {
    let rows = sqlx::query(&format!(
        "SELECT {HISTORY_COLUMNS} FROM phase_history ORDER BY generation DESC LIMIT ?"
    ))
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await?;
    rows.iter().map(change_row).collect()
}

pub(super) async fn record_gateway_report(
    store: &SqlStore,
    report: &GatewayReport,
) -> StoreResult<()> {
    let _writer = store.writer().await;
    sqlx::query(store.dialect.upsert_gateway_report())
        .bind(&report.gateway_id)
        .bind(wide(report.generation))
        .bind(i64::from(report.writes_in_flight))
        .bind(i64::from(report.endpoints_total))
        .bind(i64::from(report.endpoints_serving))
        .bind(report.legacy_reachable.map(i64::from))
        .bind(report.reported_at)
        .execute(&store.pool)
        .await?;
    Ok(())
}

pub(super) async fn gateway_reports(
    store: &SqlStore,
    since: Millis,
) -> StoreResult<Vec<GatewayReport>> {
    let rows = sqlx::query(
        "SELECT gateway_id, generation, writes_in_flight, endpoints_total, endpoints_serving, \
         legacy_reachable, reported_at FROM gateway_reports WHERE reported_at >= ? \
         ORDER BY gateway_id",
    )
    .bind(since)
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|row| {
            let legacy: Option<i64> = row.try_get("legacy_reachable")?;
            Ok(GatewayReport {
                gateway_id: row.try_get("gateway_id")?,
                generation: narrow(row.try_get("generation")?, "generation")?,
                writes_in_flight: narrow(row.try_get("writes_in_flight")?, "writes_in_flight")?,
                endpoints_total: narrow(row.try_get("endpoints_total")?, "endpoints_total")?,
                endpoints_serving: narrow(row.try_get("endpoints_serving")?, "endpoints_serving")?,
                legacy_reachable: legacy.map(|v| v != 0),
                reported_at: row.try_get("reported_at")?,
            })
        })
        .collect()
}

pub(super) async fn purge_gateway_reports(store: &SqlStore, before: Millis) -> StoreResult<u64> {
    let _writer = store.writer().await;
    let done = sqlx::query("DELETE FROM gateway_reports WHERE reported_at < ?")
        .bind(before)
        .execute(&store.pool)
        .await?;
    Ok(done.rows_affected())
}

pub(super) async fn latest_validation(store: &SqlStore) -> StoreResult<Option<LastValidation>> {
    let row = sqlx::query(
        "SELECT started_at, finished_at, source_rows, matched, missing, extra, different, \
         passed FROM migration_validations ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(&store.pool)
    .await?;
    row.map(|r| -> StoreResult<LastValidation> {
        Ok(LastValidation {
            started_at_ms: r.try_get(0)?,
            finished_at_ms: r.try_get(1)?,
            source_rows: r.try_get(2)?,
            matched: r.try_get(3)?,
            missing: r.try_get(4)?,
            extra: r.try_get(5)?,
            different: r.try_get(6)?,
            passed: r.try_get::<i64, _>(7)? != 0,
        })
    })
    .transpose()
}

pub(super) async fn count_legacy_traffic(
    store: &SqlStore,
    kind: LegacyTraffic,
    second: i64,
    n: i64,
) -> StoreResult<()> {
    // Concurrent upserts of one new (kind, second) row can deadlock in
    // InnoDB (both take the shared lock of the duplicate, then both want it
    // exclusively): the transaction loop runs the loser again.
    transaction!(store, |tx| {
        sqlx::query(store.dialect.add_legacy_traffic())
            .bind(kind.as_str())
            .bind(second)
            .bind(n)
            .execute(&mut *tx)
            .await?;
        Ok(())
    })?;
    Ok(())
}

pub(super) async fn legacy_traffic_since(
    store: &SqlStore,
    kind: LegacyTraffic,
    since: i64,
) -> StoreResult<i64> {
    // SUM of BIGINT is DECIMAL in MySQL: cast back so both drivers give i64.
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(count), 0) AS SIGNED) FROM legacy_traffic \
         WHERE kind = ? AND second >= ?",
    )
    .bind(kind.as_str())
    .bind(since)
    .fetch_one(&store.pool)
    .await?;
    Ok(row.try_get(0)?)
}

pub(super) async fn last_legacy_traffic(
    store: &SqlStore,
    kind: LegacyTraffic,
) -> StoreResult<Option<i64>> {
    let row = sqlx::query("SELECT MAX(second) FROM legacy_traffic WHERE kind = ?")
        .bind(kind.as_str())
        .fetch_one(&store.pool)
        .await?;
    Ok(row.try_get(0)?)
}

pub(super) async fn purge_legacy_traffic(store: &SqlStore, before: i64) -> StoreResult<u64> {
    let _writer = store.writer().await;
    let done = sqlx::query("DELETE FROM legacy_traffic WHERE second < ?")
        .bind(before)
        .execute(&store.pool)
        .await?;
    Ok(done.rows_affected())
}
