//! The login throttle's rows: read, compare-and-swap, clear, purge.

use super::SqlStore;
use crate::domain::{Millis, StoreResult, ThrottleState};

pub(super) async fn throttle(store: &SqlStore, key: &[u8]) -> StoreResult<Option<ThrottleState>> {
    let found: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT failures, locked_until, updated_at FROM login_throttle WHERE throttle_key = ?",
    )
    .bind(key)
    .fetch_optional(&store.pool)
    .await?;
    Ok(
        found.map(|(failures, locked_until, updated_at)| ThrottleState {
            failures,
            locked_until,
            updated_at,
        }),
    )
}

pub(super) async fn swap_throttle(
    store: &SqlStore,
    key: &[u8],
    expected: Option<ThrottleState>,
    next: ThrottleState,
) -> StoreResult<bool> {
    let _writer = store.writer().await;
    let done = match expected {
        None => {
            let sql = format!(
                "{} INTO login_throttle (throttle_key, failures, locked_until, updated_at) VALUES (?, ?, ?, ?)",
                store.dialect.insert_ignore()
            );
            sqlx::query(&sql)
                .bind(key)
                .bind(next.failures)
                .bind(next.locked_until)
                .bind(next.updated_at)
                .execute(&store.pool)
                .await?
        }
        Some(old) => {
            sqlx::query(
                "UPDATE login_throttle SET failures = ?, locked_until = ?, updated_at = ? \
                 WHERE throttle_key = ? AND failures = ? AND locked_until = ? AND updated_at = ?",
            )
            .bind(next.failures)
            .bind(next.locked_until)
            .bind(next.updated_at)
            .bind(key)
            .bind(old.failures)
            .bind(old.locked_until)
            .bind(old.updated_at)
            .execute(&store.pool)
            .await?
        }
    };
    Ok(done.rows_affected() == 1)
}

pub(super) async fn clear_throttle(store: &SqlStore, key: &[u8]) -> StoreResult<()> {
    let _writer = store.writer().await;
    sqlx::query("DELETE FROM login_throttle WHERE throttle_key = ?")
        .bind(key)
        .execute(&store.pool)
        .await?;
    Ok(())
}

pub(super) async fn purge_throttle(store: &SqlStore, before: Millis) -> StoreResult<u64> {
    let _writer = store.writer().await;
    let done = sqlx::query("DELETE FROM login_throttle WHERE updated_at < ? AND locked_until < ?")
        .bind(before)
        .bind(before)
        .execute(&store.pool)
        .await?;
    Ok(done.rows_affected())
}
