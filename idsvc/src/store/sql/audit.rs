//! The security-event audit trail.

use super::SqlStore;
use crate::domain::{EventPage, Millis, SecurityEvent, StoreResult, UserId};

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

type EventRow = (i64, i64, String, Option<i64>, String);

fn events(rows: Vec<EventRow>) -> Vec<SecurityEvent> {
    rows.into_iter()
        .map(|(id, at, kind, user_id, detail)| SecurityEvent {
            id,
            at,
            kind,
            user_id,
            detail,
        })
        .collect()
}

pub(super) async fn security_events(
    store: &SqlStore,
    limit: i64,
) -> StoreResult<Vec<SecurityEvent>> {
    let rows = sqlx::query_as(
        "SELECT id, at, kind, user_id, detail FROM security_events ORDER BY id DESC LIMIT ?",
    )
    .bind(limit)
    .fetch_all(&store.pool)
    .await?;
    Ok(events(rows))
}

pub(super) async fn security_events_page(
    store: &SqlStore,
    page: EventPage,
) -> StoreResult<Vec<SecurityEvent>> {
    let query = match page {
        EventPage::After { .. } => {
            "SELECT id, at, kind, user_id, detail FROM security_events \
             WHERE id > ? ORDER BY id LIMIT ?"
        }
        EventPage::Before { .. } => {
            "SELECT id, at, kind, user_id, detail FROM security_events \
             WHERE id < ? ORDER BY id DESC LIMIT ?"
        }
    };
    let (EventPage::After { id, limit } | EventPage::Before { id, limit }) = page;
    let rows = sqlx::query_as(query)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await?;
    Ok(events(rows))
}

pub(super) async fn member_events(
    store: &SqlStore,
    user_id: UserId,
    limit: u32,
) -> StoreResult<Vec<SecurityEvent>> {
    let rows = sqlx::query_as(
        "SELECT id, at, kind, user_id, detail FROM security_events \
         WHERE user_id = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(user_id)
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await?;
    Ok(events(rows))
}
