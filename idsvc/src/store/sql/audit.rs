//! The security-event audit trail.

use super::SqlStore;
use crate::domain::{Millis, SecurityEvent, StoreResult, UserId};

pub(super) async fn record_security_event(
    store: &SqlStore,
    kind: &str,
    user_id: Option<UserId>,
    detail: &str,
    now: Millis,
) -> StoreResult<()> {
    let _writer = store.writer().await;
    sqlx::query("INSERT INTO security_events (at, kind, user_id, detail) VALUES (?, ?, ?, ?)")
        .bind(now)
        .bind(kind)
        .bind(user_id)
        .bind(detail)
        .execute(&store.pool)
        .await?;
    Ok(())
}

pub(super) async fn security_events(
    store: &SqlStore,
    limit: i64,
) -> StoreResult<Vec<SecurityEvent>> {
    let rows: Vec<(i64, String, Option<i64>, String)> = sqlx::query_as(
        "SELECT at, kind, user_id, detail FROM security_events ORDER BY id DESC LIMIT ?",
    )
    .bind(limit)
    .fetch_all(&store.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(at, kind, user_id, detail)| SecurityEvent {
            at,
            kind,
            user_id,
            detail,
        })
        .collect())
}
