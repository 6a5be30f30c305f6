//! Sessions and their refresh tokens: issue, rotate (a fast path without
//! a transaction, and one under row locks), revoke.

use super::SqlStore;
use crate::domain::{
    ExchangeOutcome, LegacyExchange, Millis, NewRefreshToken, RotateOutcome, Rotation,
    SessionSummary, StoreResult, UserId,
};
use crate::store::unique_key::LEGACY_EXCHANGE;
use sqlx::{AnyConnection, Row};

pub(super) async fn revoke_all_sessions(
    conn: &mut AnyConnection,
    user_id: UserId,
    keep: Option<&str>,
    now: Millis,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL AND id <> ?",
    )
    .bind(now)
    .bind(user_id)
    .bind(keep.unwrap_or(""))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

async fn insert_refresh_token(
    conn: &mut AnyConnection,
    token: &NewRefreshToken<'_>,
    now: Millis,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, session_id, user_id, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(token.hash)
    .bind(token.session_id)
    .bind(token.user_id)
    .bind(token.expires_at)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

/// The common rotation, in two statements and no transaction: insert the
/// successor from the presented token's row if that row is current,
/// unexpired, in a live session and names the claimed member and session;
/// then retire the presented token unless a concurrent rotation retired it
/// first (then the successor is withdrawn and `rotate_locked` decides:
/// grace window or reuse). Successor first, so a retired token's child
/// always exists for `rotate_locked` to look at. False when this path
/// does not apply. (Five round trips under a lock were most of a
/// refresh's cost: MariaDB's and idsvc's.)
async fn rotate_current(
    store: &SqlStore,
    r: &Rotation<'_>,
    user_id: UserId,
    session_id: &str,
) -> StoreResult<bool> {
    let _writer = store.writer().await;
    let next = (r.successor)(user_id, session_id);
    // The session's lifetime and idle timeout are decided here, in the
    // statement that inserts the successor: the successor expires at the
    // earlier of now + refresh TTL and the session's start + its lifetime; a
    // session past its lifetime, or a token issued longer ago than the idle
    // timeout, matches no row.
    let inserted = sqlx::query(
        "INSERT INTO refresh_tokens (hash, session_id, user_id, expires_at, created_at) \
         SELECT ?, t.session_id, t.user_id, \
         CASE WHEN s.created_at + ? < ? THEN s.created_at + ? ELSE ? END, ? \
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
         WHERE t.hash = ? AND t.user_id = ? AND t.session_id = ? \
         AND t.replaced_by IS NULL AND t.expires_at > ? AND t.created_at > ? \
         AND s.revoked_at IS NULL AND s.created_at + ? > ?",
    )
    .bind(&next[..])
    .bind(r.max_age_ms)
    .bind(r.expires_at)
    .bind(r.max_age_ms)
    .bind(r.expires_at)
    .bind(r.now)
    .bind(r.presented)
    .bind(user_id)
    .bind(session_id)
    .bind(r.now)
    .bind(r.now.saturating_sub(r.idle_ms))
    .bind(r.max_age_ms)
    .bind(r.now)
    .execute(&store.pool)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    let retired = sqlx::query(
        "UPDATE refresh_tokens SET replaced_by = ?, rotated_at = ? \
         WHERE hash = ? AND replaced_by IS NULL",
    )
    .bind(&next[..])
    .bind(r.now)
    .bind(r.presented)
    .execute(&store.pool)
    .await?
    .rows_affected();
    if retired == 0 {
        sqlx::query("DELETE FROM refresh_tokens WHERE hash = ?")
            .bind(&next[..])
            .execute(&store.pool)
            .await?;
        return Ok(false);
    }
    Ok(true)
}

/// Rotation under a row lock: tokens that name no session (issued before
/// they did), a token already rotated (grace window or reuse), and
/// unknown, expired or revoked ones.
async fn rotate_locked(store: &SqlStore, r: &Rotation<'_>) -> StoreResult<RotateOutcome> {
    let (presented, now, grace_ms) = (r.presented, r.now, r.grace_ms);
    let for_update = store.dialect.for_update();
    let token_sql = format!(
        "SELECT t.session_id, t.user_id, t.replaced_by, t.rotated_at, t.expires_at, \
         t.created_at AS issued_at, s.created_at AS started_at, s.revoked_at \
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = ?{for_update}"
    );
    transaction!(store, |tx| {
        let Some(token) = sqlx::query(&token_sql)
            .bind(presented)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(RotateOutcome::Invalid);
        };
        let session_id: String = token.try_get("session_id")?;
        let user_id: UserId = token.try_get("user_id")?;
        let replaced_by: Option<Vec<u8>> = token.try_get("replaced_by")?;
        let rotated_at: Option<Millis> = token.try_get("rotated_at")?;
        let expires_at: Millis = token.try_get("expires_at")?;
        let revoked_at: Option<Millis> = token.try_get("revoked_at")?;
        let issued_at: Millis = token.try_get("issued_at")?;
        let started_at: Millis = token.try_get("started_at")?;
        let ends_at = started_at.saturating_add(r.max_age_ms);
        if revoked_at.is_some() || expires_at <= now || ends_at <= now {
            return Ok(RotateOutcome::Invalid);
        }
        // Idle: a current token issued too long ago. (A rotated one came
        // back: the grace window or reuse detection below decides.)
        if replaced_by.is_none() && issued_at <= now.saturating_sub(r.idle_ms) {
            return Ok(RotateOutcome::Invalid);
        }
        let next = (r.successor)(user_id, &session_id);
        let next = &next[..];
        let new_token = NewRefreshToken {
            hash: next,
            session_id: &session_id,
            user_id,
            expires_at: r.expires_at.min(ends_at),
        };
        let retire = "UPDATE refresh_tokens SET replaced_by = ?, rotated_at = COALESCE(rotated_at, ?) WHERE hash = ?";
        match replaced_by {
            None => {
                sqlx::query(retire)
                    .bind(next)
                    .bind(now)
                    .bind(presented)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(child) => {
                let child_replaced: Option<Option<Vec<u8>>> = sqlx::query_scalar(&format!(
                    "SELECT replaced_by FROM refresh_tokens WHERE hash = ?{for_update}"
                ))
                .bind(&child)
                .fetch_optional(&mut *tx)
                .await?;
                let within_grace = rotated_at.is_some_and(|at| now - at <= grace_ms);
                let child_unused = matches!(child_replaced, Some(None));
                if !(within_grace && child_unused) {
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(&session_id)
                    .execute(&mut *tx)
                    .await?;
                    return Ok(RotateOutcome::Reused {
                        user_id,
                        session_id,
                    });
                }
                // The parent came back within the grace window (the client
                // missed our answer): the unused child is superseded.
                sqlx::query(retire)
                    .bind(next)
                    .bind(now)
                    .bind(&child)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE refresh_tokens SET replaced_by = ? WHERE hash = ?")
                    .bind(next)
                    .bind(presented)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        insert_refresh_token(&mut tx, &new_token, now).await?;
        Ok(RotateOutcome::Rotated {
            user_id,
            session_id: session_id.clone(),
        })
    })
}

pub(super) async fn create_session(
    store: &SqlStore,
    token: NewRefreshToken<'_>,
    client: Option<&str>,
    now: Millis,
) -> StoreResult<()> {
    // Two statements, no transaction (BEGIN and COMMIT were two of a
    // login's eight round trips): a failure between them leaves a
    // session without a token, which nothing can use or list.
    let _writer = store.writer().await;
    let mut conn = store.pool.acquire().await?;
    sqlx::query("INSERT INTO sessions (id, user_id, created_at, client) VALUES (?, ?, ?, ?)")
        .bind(token.session_id)
        .bind(token.user_id)
        .bind(now)
        .bind(client)
        .execute(&mut *conn)
        .await?;
    insert_refresh_token(&mut conn, &token, now).await?;
    Ok(())
}

pub(super) async fn rotate_refresh_token(
    store: &SqlStore,
    rotation: Rotation<'_>,
) -> StoreResult<RotateOutcome> {
    if let Some((user_id, session_id)) = rotation.claimed
        && rotate_current(store, &rotation, user_id, session_id).await?
    {
        return Ok(RotateOutcome::Rotated {
            user_id,
            session_id: session_id.to_owned(),
        });
    }
    rotate_locked(store, &rotation).await
}

pub(super) async fn revoke_session_of(
    store: &SqlStore,
    token: &[u8],
    now: Millis,
) -> StoreResult<Option<UserId>> {
    transaction!(store, |tx| {
        let found: Option<(String, UserId)> =
            sqlx::query_as("SELECT session_id, user_id FROM refresh_tokens WHERE hash = ?")
                .bind(token)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((session_id, user_id)) = found else {
            return Ok(None);
        };
        sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(&session_id)
            .execute(&mut *tx)
            .await?;
        Ok(Some(user_id))
    })
}

pub(super) async fn revoke_sessions(
    store: &SqlStore,
    user_id: UserId,
    keep: Option<&str>,
    now: Millis,
) -> StoreResult<u64> {
    let _writer = store.writer().await;
    let mut conn = store.pool.acquire().await?;
    Ok(revoke_all_sessions(&mut conn, user_id, keep, now).await?)
}

/// One try of [`exchange_legacy_session`]: `None` when a concurrent
/// exchange of the same token recorded it first (nothing was written).
async fn exchange_once(
    store: &SqlStore,
    e: &LegacyExchange<'_>,
) -> StoreResult<Option<ExchangeOutcome>> {
    let for_update = store.dialect.for_update();
    transaction!(store, |tx| {
        let recorded: Option<(UserId, String, Millis)> = sqlx::query_as(&format!(
            "SELECT user_id, session_id, created_at FROM legacy_exchanges \
             WHERE legacy_token_sha256 = ?{for_update}"
        ))
        .bind(e.legacy_token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, session_id, exchanged_at)) = recorded else {
            // The exchange's row first: a concurrent twin collides here,
            // before either wrote a session.
            let recorded = sqlx::query(
                "INSERT INTO legacy_exchanges (legacy_token_sha256, user_id, session_id, created_at) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(e.legacy_token)
            .bind(e.user_id)
            .bind(e.session_id)
            .bind(e.now)
            .execute(&mut *tx)
            .await;
            match recorded {
                Err(err) if LEGACY_EXCHANGE.violated_by(&err) => return Ok(None),
                other => other?,
            };
            sqlx::query(
                "INSERT INTO sessions (id, user_id, created_at, client) VALUES (?, ?, ?, ?)",
            )
            .bind(e.session_id)
            .bind(e.user_id)
            .bind(e.now)
            .bind(e.client)
            .execute(&mut *tx)
            .await?;
            let hash = (e.successor)(e.user_id, e.session_id);
            let token = NewRefreshToken {
                hash: &hash,
                session_id: e.session_id,
                user_id: e.user_id,
                expires_at: e.expires_at,
            };
            insert_refresh_token(&mut tx, &token, e.now).await?;
            return Ok(Some(ExchangeOutcome::Opened {
                session_id: e.session_id.to_owned(),
            }));
        };
        if user_id != e.user_id || e.now - exchanged_at > e.grace_ms {
            return Ok(Some(ExchangeOutcome::Invalid));
        }
        let session: Option<(Millis, Option<Millis>)> = sqlx::query_as(&format!(
            "SELECT created_at, revoked_at FROM sessions WHERE id = ?{for_update}"
        ))
        .bind(&session_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((started_at, None)) = session else {
            return Ok(Some(ExchangeOutcome::Invalid));
        };
        // A retry of the exchange (the client missed our answer): the
        // session's current token is superseded, as a rotation would.
        let next = (e.successor)(user_id, &session_id);
        sqlx::query(
            "UPDATE refresh_tokens SET replaced_by = ?, rotated_at = COALESCE(rotated_at, ?) \
             WHERE session_id = ? AND replaced_by IS NULL",
        )
        .bind(&next[..])
        .bind(e.now)
        .bind(&session_id)
        .execute(&mut *tx)
        .await?;
        let token = NewRefreshToken {
            hash: &next,
            session_id: &session_id,
            user_id,
            expires_at: e.expires_at.min(started_at.saturating_add(e.max_age_ms)),
        };
        insert_refresh_token(&mut tx, &token, e.now).await?;
        Ok(Some(ExchangeOutcome::Rotated {
            session_id: session_id.clone(),
        }))
    })
}

pub(super) async fn exchange_legacy_session(
    store: &SqlStore,
    exchange: LegacyExchange<'_>,
) -> StoreResult<ExchangeOutcome> {
    // The loser of a race re-reads the winner's row (and rotates its session).
    for _ in 0..2 {
        if let Some(outcome) = exchange_once(store, &exchange).await? {
            return Ok(outcome);
        }
    }
    Ok(ExchangeOutcome::Invalid)
}

pub(super) async fn member_sessions(
    store: &SqlStore,
    user_id: UserId,
    now: Millis,
    limit: u32,
) -> StoreResult<Vec<SessionSummary>> {
    // A session's newest refresh token was issued at its last rotation (the
    // first one at login, with the session).
    let rows: Vec<(String, Millis, Option<String>, Millis)> = sqlx::query_as(
        "SELECT s.id, s.created_at, s.client, MAX(r.created_at) FROM sessions s \
         JOIN refresh_tokens r ON r.session_id = s.id \
         WHERE s.user_id = ? AND s.revoked_at IS NULL \
         GROUP BY s.id, s.created_at, s.client HAVING MAX(r.expires_at) > ? \
         ORDER BY s.created_at DESC LIMIT ?",
    )
    .bind(user_id)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, created_at, client, newest)| SessionSummary {
            id,
            created_at,
            last_used_at: (newest > created_at).then_some(newest),
            client,
        })
        .collect())
}

pub(super) async fn revoke_member_session(
    store: &SqlStore,
    user_id: UserId,
    session_id: &str,
    now: Millis,
) -> StoreResult<bool> {
    let _writer = store.writer().await;
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(session_id)
    .bind(user_id)
    .execute(&store.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
