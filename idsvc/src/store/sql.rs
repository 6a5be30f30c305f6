//! The SQL implementation of the store, shared by SQLite and MySQL.

use super::{is_retryable, is_unique_violation};
use crate::domain::{
    Millis, NewRefreshToken, NewUser, Registration, RotateOutcome, Rotation, Sealer, SecurityEvent,
    Store, StoreError, StoreResult, ThrottleState, Tombstone, UpsertOutcome, UserId, UserRow,
};
use anyhow::Context;
use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

/// How often a transaction that lost a deadlock is run again.
const RETRIES: usize = 5;

const USER_COLUMNS: &str =
    "id, email_sealed, email_index, phone_sealed, password_hash, version, created_at, updated_at";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
}

impl Dialect {
    /// Row locks: InnoDB needs them; SQLite serialises writers anyway.
    fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::MySql => " FOR UPDATE",
        }
    }

    /// How many writers a job may run at once when it asks for `wanted`:
    /// SQLite has one writer at a time, MySQL takes a few connections.
    pub fn concurrent_writers(self, wanted: usize) -> usize {
        match self {
            Self::Sqlite => 1,
            Self::MySql => wanted.clamp(1, 16),
        }
    }

    pub fn insert_ignore(self) -> &'static str {
        match self {
            Self::Sqlite => "INSERT OR IGNORE",
            Self::MySql => "INSERT IGNORE",
        }
    }

    /// Raises a tombstone's version, never lowers it.
    fn upsert_tombstone(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "INSERT INTO tombstones (id, version, deleted_at) VALUES (?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET version = MAX(version, excluded.version), \
                 deleted_at = excluded.deleted_at"
            }
            Self::MySql => {
                "INSERT INTO tombstones (id, version, deleted_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE deleted_at = IF(VALUES(version) > version, VALUES(deleted_at), deleted_at), \
                 version = GREATEST(version, VALUES(version))"
            }
        }
    }
}

pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite allows one writer at a time and fails, rather than waits, when
    /// a reading transaction tries to become a writer; writers queue here.
    write_lock: Option<Mutex<()>>,
}

impl SqlStore {
    /// Connects to `sqlite://PATH` or `mysql://…` and applies the migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(parent) = std::path::Path::new(path).parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            (Dialect::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("mysql://") {
            (Dialect::MySql, url.to_owned())
        } else {
            anyhow::bail!("database URL must start with sqlite:// or mysql://");
        };
        let pool = match dialect {
            Dialect::Sqlite => AnyPoolOptions::new()
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets readers run beside the writer; NORMAL is durable in WAL mode.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await
                .context("opening SQLite database")?,
            Dialect::MySql => AnyPoolOptions::new()
                .max_connections(32)
                .acquire_timeout(Duration::from_secs(5))
                // No ping before each use: it is a round trip per query, the
                // largest share of MariaDB's work for a `me` read. A
                // connection that died (a failover) fails its next query,
                // which sqlx then drops; the gateway retries reads.
                .test_before_acquire(false)
                .connect(&url)
                .await
                .context("connecting to MySQL")?,
        };
        let migrator = match dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Dialect::MySql => sqlx::migrate!("./migrations/mysql"),
        };
        migrator.run(&pool).await.context("applying migrations")?;
        let write_lock = (dialect == Dialect::Sqlite).then(|| Mutex::new(()));
        Ok(Self {
            pool,
            dialect,
            write_lock,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The pool, for tests that inspect what is really stored.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn writer(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    async fn user_where(
        &self,
        condition: &str,
        bind: impl FnOnce(AnyQuery<'_>) -> AnyQuery<'_>,
    ) -> StoreResult<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {condition}");
        let row = bind(sqlx::query(&sql)).fetch_optional(&self.pool).await?;
        row.as_ref().map(user_row).transpose().map_err(Into::into)
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn user_row(row: &AnyRow) -> Result<UserRow, sqlx::Error> {
    Ok(UserRow {
        id: row.try_get("id")?,
        email_sealed: row.try_get("email_sealed")?,
        email_index: row.try_get("email_index")?,
        phone_sealed: row.try_get("phone_sealed")?,
        password_hash: row.try_get("password_hash")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A unique violation on the email's blind index means the email is taken;
/// any other error (a duplicate id included) stays a database error.
fn unique_as_email_taken(err: sqlx::Error) -> StoreError {
    if is_unique_violation(&err) && err.to_string().contains("email_index") {
        StoreError::EmailTaken
    } else {
        err.into()
    }
}

async fn insert_user_row(conn: &mut AnyConnection, row: &UserRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, email_sealed, email_index, phone_sealed, password_hash, version, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.id)
    .bind(&row.email_sealed)
    .bind(&row.email_index)
    .bind(&row.phone_sealed)
    .bind(&row.password_hash)
    .bind(row.version)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(conn)
    .await
    .map(drop)
}

async fn update_user_row(
    conn: &mut AnyConnection,
    row: &UserRow,
    expected_version: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE users SET email_sealed = ?, email_index = ?, phone_sealed = ?, password_hash = ?, \
         version = ?, updated_at = ? WHERE id = ? AND version = ?",
    )
    .bind(&row.email_sealed)
    .bind(&row.email_index)
    .bind(&row.phone_sealed)
    .bind(&row.password_hash)
    .bind(row.version)
    .bind(row.updated_at)
    .bind(row.id)
    .bind(expected_version)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn revoke_all_sessions(
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

/// Runs `body` in a transaction, again when the database reports a deadlock.
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let _writer = $store.writer().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut $tx = $store.pool.begin().await?;
            let result: Result<_, StoreError> = async { $body }.await;
            match result {
                Ok(value) => match $tx.commit().await {
                    Ok(()) => break Ok(value),
                    Err(err) if attempt < RETRIES && is_retryable(&err) => continue,
                    Err(err) => break Err(StoreError::from(err)),
                },
                Err(StoreError::Database(err))
                    if attempt < RETRIES
                        && err.downcast_ref::<sqlx::Error>().is_some_and(is_retryable) =>
                {
                    continue;
                }
                Err(err) => break Err(err),
            }
        }
    }};
}

/// Refresh-token rotation (`Store::rotate_refresh_token`).
impl SqlStore {
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
        &self,
        r: &Rotation<'_>,
        user_id: UserId,
        session_id: &str,
    ) -> StoreResult<bool> {
        let _writer = self.writer().await;
        let next = (r.successor)(user_id, session_id);
        let inserted = sqlx::query(
            "INSERT INTO refresh_tokens (hash, session_id, user_id, expires_at, created_at) \
             SELECT ?, t.session_id, t.user_id, ?, ? FROM refresh_tokens t \
             WHERE t.hash = ? AND t.user_id = ? AND t.session_id = ? \
             AND t.replaced_by IS NULL AND t.expires_at > ? \
             AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = t.session_id AND s.revoked_at IS NULL)",
        )
        .bind(&next[..])
        .bind(r.expires_at)
        .bind(r.now)
        .bind(r.presented)
        .bind(user_id)
        .bind(session_id)
        .bind(r.now)
        .execute(&self.pool)
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
        .execute(&self.pool)
        .await?
        .rows_affected();
        if retired == 0 {
            sqlx::query("DELETE FROM refresh_tokens WHERE hash = ?")
                .bind(&next[..])
                .execute(&self.pool)
                .await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Rotation under a row lock: tokens that name no session (issued before
    /// they did), a token already rotated (grace window or reuse), and
    /// unknown, expired or revoked ones.
    async fn rotate_locked(&self, r: &Rotation<'_>) -> StoreResult<RotateOutcome> {
        let (presented, now, grace_ms) = (r.presented, r.now, r.grace_ms);
        let for_update = self.dialect.for_update();
        let token_sql = format!(
            "SELECT t.session_id, t.user_id, t.replaced_by, t.rotated_at, t.expires_at, s.revoked_at \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = ?{for_update}"
        );
        transaction!(self, |tx| {
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
            if revoked_at.is_some() || expires_at <= now {
                return Ok(RotateOutcome::Invalid);
            }
            let next = (r.successor)(user_id, &session_id);
            let next = &next[..];
            let new_token = NewRefreshToken {
                hash: next,
                session_id: &session_id,
                user_id,
                expires_at: r.expires_at,
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
                        sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
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
}

#[async_trait]
impl Store for SqlStore {
    async fn create_user(&self, user: NewUser<'_>, seal: &Sealer<'_>) -> StoreResult<UserRow> {
        transaction!(self, |tx| {
            // The id is bound into the ciphertext, so insert first, then seal.
            let inserted = sqlx::query(
                "INSERT INTO users (email_sealed, email_index, password_hash, version, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(Vec::<u8>::new())
            .bind(user.email_index)
            .bind(user.password_hash)
            .bind(user.version)
            .bind(user.now)
            .bind(user.now)
            .execute(&mut *tx)
            .await
            .map_err(unique_as_email_taken)?;
            // MySQL reports the id; SQLite through `Any` does not, so ask.
            let id = match inserted.last_insert_id() {
                Some(id) => id,
                None => {
                    sqlx::query_scalar("SELECT id FROM users WHERE email_index = ?")
                        .bind(user.email_index)
                        .fetch_one(&mut *tx)
                        .await?
                }
            };
            let sealed = seal(id).map_err(StoreError::Database)?;
            sqlx::query("UPDATE users SET email_sealed = ?, phone_sealed = ? WHERE id = ?")
                .bind(&sealed.email_sealed)
                .bind(&sealed.phone_sealed)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if let Some(key) = &user.key {
                // An expired key may be used again.
                sqlx::query("DELETE FROM registration_keys WHERE key_hash = ? AND expires_at <= ?")
                    .bind(key.key)
                    .bind(user.now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO registration_keys (key_hash, request_hash, user_id, expires_at) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(key.key)
                .bind(key.request)
                .bind(id)
                .bind(key.expires_at)
                .execute(&mut *tx)
                .await
                .map_err(|err| {
                    if is_unique_violation(&err) {
                        StoreError::RegistrationKeyTaken
                    } else {
                        err.into()
                    }
                })?;
            }
            Ok(UserRow {
                id,
                email_sealed: sealed.email_sealed,
                email_index: user.email_index.to_vec(),
                phone_sealed: sealed.phone_sealed,
                password_hash: user.password_hash.to_owned(),
                version: user.version,
                created_at: user.now,
                updated_at: user.now,
            })
        })
    }

    async fn registration(&self, key: &[u8], now: Millis) -> StoreResult<Option<Registration>> {
        let found: Option<(Vec<u8>, UserId)> = sqlx::query_as(
            "SELECT request_hash, user_id FROM registration_keys WHERE key_hash = ? AND expires_at > ?",
        )
        .bind(key)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(|(request, user_id)| Registration { request, user_id }))
    }

    async fn purge_registrations(&self, now: Millis) -> StoreResult<u64> {
        let _writer = self.writer().await;
        let done = sqlx::query("DELETE FROM registration_keys WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<UserRow>> {
        self.user_where("id = ?", |q| q.bind(id)).await
    }

    async fn user_by_email_index(&self, index: &[u8]) -> StoreResult<Option<UserRow>> {
        let index = index.to_vec();
        self.user_where("email_index = ?", |q| q.bind(index)).await
    }

    async fn user_in_session(&self, id: UserId, session_id: &str) -> StoreResult<Option<UserRow>> {
        let session_id = session_id.to_owned();
        self.user_where(
            "id = ? AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = ? AND s.user_id = users.id AND s.revoked_at IS NULL)",
            |q| q.bind(id).bind(session_id),
        )
        .await
    }

    async fn update_user(&self, row: &UserRow, expected_version: i64) -> StoreResult<bool> {
        let _writer = self.writer().await;
        let mut conn = self.pool.acquire().await?;
        update_user_row(&mut conn, row, expected_version)
            .await
            .map_err(unique_as_email_taken)
    }

    async fn delete_user(&self, id: UserId, version: i64, now: Millis) -> StoreResult<bool> {
        let for_update = self.dialect.for_update();
        transaction!(self, |tx| {
            let stored: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT version FROM users WHERE id = ?{for_update}"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if stored.is_some_and(|stored| stored > version) {
                // The user changed after this deletion was issued: it is stale.
                return Ok(false);
            }
            sqlx::query(self.dialect.upsert_tombstone())
                .bind(id)
                .bind(version)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if stored.is_none() {
                return Ok(false);
            }
            sqlx::query("DELETE FROM users WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            revoke_all_sessions(&mut tx, id, None, now).await?;
            Ok(true)
        })
    }

    async fn tombstone(&self, id: UserId) -> StoreResult<Option<Tombstone>> {
        let row = sqlx::query("SELECT id, version, deleted_at FROM tombstones WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Tombstone {
            id: row.try_get("id")?,
            version: row.try_get("version")?,
            deleted_at: row.try_get("deleted_at")?,
        }))
    }

    async fn upsert_legacy(&self, row: &UserRow) -> StoreResult<(UpsertOutcome, i64)> {
        let for_update = self.dialect.for_update();
        transaction!(self, |tx| {
            let tombstone: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT version FROM tombstones WHERE id = ?{for_update}"
            ))
            .bind(row.id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(deleted) = tombstone.filter(|&deleted| deleted >= row.version) {
                return Ok((UpsertOutcome::Stale, deleted));
            }
            let stored: Option<(i64, i64)> = sqlx::query_as(&format!(
                "SELECT version, created_at FROM users WHERE id = ?{for_update}"
            ))
            .bind(row.id)
            .fetch_optional(&mut *tx)
            .await?;
            match stored {
                Some((stored, _)) if stored > row.version => Ok((UpsertOutcome::Stale, stored)),
                Some((stored, _)) if stored == row.version => {
                    Ok((UpsertOutcome::Unchanged, stored))
                }
                Some((stored, created_at)) => {
                    let update = UserRow {
                        created_at,
                        ..row.clone()
                    };
                    update_user_row(&mut tx, &update, stored)
                        .await
                        .map_err(unique_as_email_taken)?;
                    Ok((UpsertOutcome::Updated, row.version))
                }
                None => {
                    insert_user_row(&mut tx, row)
                        .await
                        .map_err(unique_as_email_taken)?;
                    Ok((UpsertOutcome::Created, row.version))
                }
            }
        })
    }

    async fn create_session(&self, token: NewRefreshToken<'_>, now: Millis) -> StoreResult<()> {
        // Two statements, no transaction (BEGIN and COMMIT were two of a
        // login's eight round trips): a failure between them leaves a
        // session without a token, which nothing can use or list.
        let _writer = self.writer().await;
        let mut conn = self.pool.acquire().await?;
        sqlx::query("INSERT INTO sessions (id, user_id, created_at) VALUES (?, ?, ?)")
            .bind(token.session_id)
            .bind(token.user_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        insert_refresh_token(&mut conn, &token, now).await?;
        Ok(())
    }

    async fn rotate_refresh_token(&self, rotation: Rotation<'_>) -> StoreResult<RotateOutcome> {
        if let Some((user_id, session_id)) = rotation.claimed
            && self.rotate_current(&rotation, user_id, session_id).await?
        {
            return Ok(RotateOutcome::Rotated {
                user_id,
                session_id: session_id.to_owned(),
            });
        }
        self.rotate_locked(&rotation).await
    }

    async fn revoke_session_of(&self, token: &[u8], now: Millis) -> StoreResult<Option<UserId>> {
        transaction!(self, |tx| {
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

    async fn revoke_sessions(
        &self,
        user_id: UserId,
        keep: Option<&str>,
        now: Millis,
    ) -> StoreResult<u64> {
        let _writer = self.writer().await;
        let mut conn = self.pool.acquire().await?;
        Ok(revoke_all_sessions(&mut conn, user_id, keep, now).await?)
    }

    async fn throttle(&self, key: &[u8]) -> StoreResult<Option<ThrottleState>> {
        let found: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT failures, locked_until, updated_at FROM login_throttle WHERE throttle_key = ?",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            found.map(|(failures, locked_until, updated_at)| ThrottleState {
                failures,
                locked_until,
                updated_at,
            }),
        )
    }

    async fn swap_throttle(
        &self,
        key: &[u8],
        expected: Option<ThrottleState>,
        next: ThrottleState,
    ) -> StoreResult<bool> {
        let _writer = self.writer().await;
        let done = match expected {
            None => {
                let sql = format!(
                    "{} INTO login_throttle (throttle_key, failures, locked_until, updated_at) VALUES (?, ?, ?, ?)",
                    self.dialect.insert_ignore()
                );
                sqlx::query(&sql)
                    .bind(key)
                    .bind(next.failures)
                    .bind(next.locked_until)
                    .bind(next.updated_at)
                    .execute(&self.pool)
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
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    async fn clear_throttle(&self, key: &[u8]) -> StoreResult<()> {
        let _writer = self.writer().await;
        sqlx::query("DELETE FROM login_throttle WHERE throttle_key = ?")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn purge_throttle(&self, before: Millis) -> StoreResult<u64> {
        let _writer = self.writer().await;
        let done =
            sqlx::query("DELETE FROM login_throttle WHERE updated_at < ? AND locked_until < ?")
                .bind(before)
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    async fn record_security_event(
        &self,
        kind: &str,
        user_id: Option<UserId>,
        detail: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let _writer = self.writer().await;
        sqlx::query("INSERT INTO security_events (at, kind, user_id, detail) VALUES (?, ?, ?, ?)")
            .bind(now)
            .bind(kind)
            .bind(user_id)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn security_events(&self, limit: i64) -> StoreResult<Vec<SecurityEvent>> {
        let rows: Vec<(i64, String, Option<i64>, String)> = sqlx::query_as(
            "SELECT at, kind, user_id, detail FROM security_events ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
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
}
