//! Members: registration (with its idempotency key), reads, optimistic
//! updates, deletion with tombstones, and the double write's upsert.

use super::SqlStore;
use super::sessions::revoke_all_sessions;
use crate::domain::{
    Millis, NewUser, Registration, Sealer, StoreError, StoreResult, Tombstone, UpsertOutcome,
    UserId, UserRow,
};
use crate::store::unique_key::{REGISTRATION_KEY, USERS_EMAIL};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

const USER_COLUMNS: &str = "id, email_sealed, email_index, phone_sealed, phone_index, password_hash, version, created_at, \
     updated_at";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

async fn user_where(
    store: &SqlStore,
    condition: &str,
    bind: impl FnOnce(AnyQuery<'_>) -> AnyQuery<'_>,
) -> StoreResult<Option<UserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {condition}");
    let row = bind(sqlx::query(&sql)).fetch_optional(&store.pool).await?;
    row.as_ref().map(user_row).transpose().map_err(Into::into)
}

fn user_row(row: &AnyRow) -> Result<UserRow, sqlx::Error> {
    Ok(UserRow {
        id: row.try_get("id")?,
        email_sealed: row.try_get("email_sealed")?,
        email_index: row.try_get("email_index")?,
        phone_sealed: row.try_get("phone_sealed")?,
        phone_index: row.try_get("phone_index")?,
        password_hash: row.try_get("password_hash")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A unique violation on the email's blind index means the email is taken;
/// any other error (a duplicate id included) stays a database error.
fn unique_as_email_taken(err: sqlx::Error) -> StoreError {
    if USERS_EMAIL.violated_by(&err) {
        StoreError::EmailTaken
    } else {
        err.into()
    }
}

async fn insert_user_row(conn: &mut AnyConnection, row: &UserRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, email_sealed, email_index, phone_sealed, phone_index, password_hash, \
         version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.id)
    .bind(&row.email_sealed)
    .bind(&row.email_index)
    .bind(&row.phone_sealed)
    .bind(&row.phone_index)
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
        "UPDATE users SET email_sealed = ?, email_index = ?, phone_sealed = ?, phone_index = ?, \
         password_hash = ?, version = ?, updated_at = ? WHERE id = ? AND version = ?",
    )
    .bind(&row.email_sealed)
    .bind(&row.email_index)
    .bind(&row.phone_sealed)
    .bind(&row.phone_index)
    .bind(&row.password_hash)
    .bind(row.version)
    .bind(row.updated_at)
    .bind(row.id)
    .bind(expected_version)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The next native id: `floor`, or past every id stored or deleted at or
/// above it. On MySQL the locking read holds the range's end until commit,
/// so concurrent registrations take turns (SQLite has one writer anyway).
async fn next_native_id(
    conn: &mut AnyConnection,
    floor: UserId,
    for_update: &str,
) -> Result<UserId, sqlx::Error> {
    let user: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT MAX(id) FROM users WHERE id >= ?{for_update}"
    ))
    .bind(floor)
    .fetch_one(&mut *conn)
    .await?;
    let deleted: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT MAX(id) FROM tombstones WHERE id >= ?{for_update}"
    ))
    .bind(floor)
    .fetch_one(&mut *conn)
    .await?;
    Ok(user.max(deleted).map_or(floor, |highest| highest + 1))
}

pub(super) async fn create_user(
    store: &SqlStore,
    user: NewUser<'_>,
    seal: &Sealer<'_>,
) -> StoreResult<UserRow> {
    let for_update = store.dialect.for_update();
    transaction!(store, |tx| {
        let id = match user.id_floor {
            Some(floor) => Some(next_native_id(&mut tx, floor, for_update).await?),
            None => None,
        };
        // The id is bound into the ciphertext, so insert first, then seal.
        let inserted = sqlx::query(
            "INSERT INTO users (id, email_sealed, email_index, password_hash, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
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
        let id = match id.or(inserted.last_insert_id()) {
            Some(id) => id,
            None => {
                sqlx::query_scalar("SELECT id FROM users WHERE email_index = ?")
                    .bind(user.email_index)
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        let sealed = seal(id).map_err(StoreError::Database)?;
        sqlx::query(
            "UPDATE users SET email_sealed = ?, phone_sealed = ?, phone_index = ? WHERE id = ?",
        )
        .bind(&sealed.email_sealed)
        .bind(&sealed.phone_sealed)
        .bind(&sealed.phone_index)
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
                if REGISTRATION_KEY.violated_by(&err) {
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
            phone_index: sealed.phone_index,
            password_hash: user.password_hash.to_owned(),
            version: user.version,
            created_at: user.now,
            updated_at: user.now,
        })
    })
}

pub(super) async fn registration(
    store: &SqlStore,
    key: &[u8],
    now: Millis,
) -> StoreResult<Option<Registration>> {
    let found: Option<(Vec<u8>, UserId)> = sqlx::query_as(
        "SELECT request_hash, user_id FROM registration_keys WHERE key_hash = ? AND expires_at > ?",
    )
    .bind(key)
    .bind(now)
    .fetch_optional(&store.pool)
    .await?;
    Ok(found.map(|(request, user_id)| Registration { request, user_id }))
}

pub(super) async fn purge_registrations(store: &SqlStore, now: Millis) -> StoreResult<u64> {
    let _writer = store.writer().await;
    let done = sqlx::query("DELETE FROM registration_keys WHERE expires_at <= ?")
        .bind(now)
        .execute(&store.pool)
        .await?;
    Ok(done.rows_affected())
}

pub(super) async fn user(store: &SqlStore, id: UserId) -> StoreResult<Option<UserRow>> {
    user_where(store, "id = ?", |q| q.bind(id)).await
}

/// The members of `ids` that are stored, in no particular order.
pub(super) async fn users(store: &SqlStore, ids: &[UserId]) -> StoreResult<Vec<UserRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; ids.len()].join(", ");
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id IN ({marks})");
    let query = ids.iter().fold(sqlx::query(&sql), |q, id| q.bind(*id));
    let rows = query.fetch_all(&store.pool).await?;
    Ok(rows.iter().map(user_row).collect::<Result<_, _>>()?)
}

pub(super) async fn user_by_email_index(
    store: &SqlStore,
    index: &[u8],
) -> StoreResult<Option<UserRow>> {
    let index = index.to_vec();
    user_where(store, "email_index = ?", |q| q.bind(index)).await
}

pub(super) async fn user_in_session(
    store: &SqlStore,
    id: UserId,
    session_id: &str,
) -> StoreResult<Option<UserRow>> {
    let session_id = session_id.to_owned();
    user_where(store,
        "id = ? AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = ? AND s.user_id = users.id AND s.revoked_at IS NULL)",
        |q| q.bind(id).bind(session_id),
    )
    .await
}

pub(super) async fn update_user(
    store: &SqlStore,
    row: &UserRow,
    expected_version: i64,
) -> StoreResult<bool> {
    let _writer = store.writer().await;
    let mut conn = store.pool.acquire().await?;
    update_user_row(&mut conn, row, expected_version)
        .await
        .map_err(unique_as_email_taken)
}

pub(super) async fn delete_user(
    store: &SqlStore,
    id: UserId,
    version: i64,
    now: Millis,
) -> StoreResult<bool> {
    let for_update = store.dialect.for_update();
    transaction!(store, |tx| {
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
        sqlx::query(store.dialect.upsert_tombstone())
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

/// What `users.legacy_hash_sha256` holds of a password hash.
fn hash_digest(password_hash: &str) -> Vec<u8> {
    Sha256::digest(password_hash.as_bytes()).to_vec()
}

pub(super) async fn rehash_user(
    store: &SqlStore,
    row: &UserRow,
    expected_version: i64,
    replaced: &str,
) -> StoreResult<bool> {
    let _writer = store.writer().await;
    let done = sqlx::query(
        "UPDATE users SET password_hash = ?, version = ?, updated_at = ?, \
         legacy_hash_sha256 = COALESCE(legacy_hash_sha256, ?) WHERE id = ? AND version = ?",
    )
    .bind(&row.password_hash)
    .bind(row.version)
    .bind(row.updated_at)
    .bind(hash_digest(replaced))
    .bind(row.id)
    .bind(expected_version)
    .execute(&store.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn tombstone(store: &SqlStore, id: UserId) -> StoreResult<Option<Tombstone>> {
    let row = sqlx::query("SELECT id, version, deleted_at FROM tombstones WHERE id = ?")
        .bind(id)
        .fetch_optional(&store.pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Tombstone {
        id: row.try_get("id")?,
        version: row.try_get("version")?,
        deleted_at: row.try_get("deleted_at")?,
    }))
}

/// What a double write compares: version, created_at, email index,
/// password hash, the last legacy hash's SHA-256.
type StoredForUpsert = (i64, i64, Vec<u8>, String, Option<Vec<u8>>);

pub(super) async fn upsert_legacy(
    store: &SqlStore,
    row: &UserRow,
) -> StoreResult<(UpsertOutcome, i64)> {
    let for_update = store.dialect.for_update();
    transaction!(store, |tx| {
        let tombstone: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT version FROM tombstones WHERE id = ?{for_update}"
        ))
        .bind(row.id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(deleted) = tombstone.filter(|&deleted| deleted >= row.version) {
            return Ok((UpsertOutcome::Stale, deleted));
        }
        let stored: Option<StoredForUpsert> = sqlx::query_as(&format!(
            "SELECT version, created_at, email_index, password_hash, legacy_hash_sha256 \
                 FROM users WHERE id = ?{for_update}"
        ))
        .bind(row.id)
        .fetch_optional(&mut *tx)
        .await?;
        let legacy_hash = hash_digest(&row.password_hash);
        let outcome = match stored {
            Some((stored, ..)) if stored > row.version => {
                return Ok((UpsertOutcome::Stale, stored));
            }
            Some((stored, ..)) if stored == row.version => {
                return Ok((UpsertOutcome::Unchanged, stored));
            }
            Some((stored, created_at, email_index, password_hash, last_legacy_hash)) => {
                let update = UserRow {
                    created_at,
                    ..row.clone()
                };
                update_user_row(&mut tx, &update, stored)
                    .await
                    .map_err(unique_as_email_taken)?;
                // A new password or sign-in email ends every session, as a
                // change through idbase does: whoever held the old
                // credentials must not stay signed in. Both sides are in
                // their canonical stored form (blind index, canonical hash).
                // The password is compared with the last legacy hash, not
                // with the stored one, which a login at idbase re-hashes
                // without the password changing.
                let new_password = match last_legacy_hash {
                    Some(last) => last != legacy_hash,
                    None => password_hash != row.password_hash,
                };
                if email_index != row.email_index || new_password {
                    revoke_all_sessions(&mut tx, row.id, None, row.updated_at).await?;
                }
                UpsertOutcome::Updated
            }
            None => {
                insert_user_row(&mut tx, row)
                    .await
                    .map_err(unique_as_email_taken)?;
                UpsertOutcome::Created
            }
        };
        sqlx::query("UPDATE users SET legacy_hash_sha256 = ? WHERE id = ?")
            .bind(&legacy_hash)
            .bind(row.id)
            .execute(&mut *tx)
            .await?;
        Ok((outcome, row.version))
    })
}

pub(super) async fn users_by_phone_index(
    store: &SqlStore,
    index: &[u8],
    limit: u32,
) -> StoreResult<Vec<UserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE phone_index = ? ORDER BY id LIMIT ?");
    let rows = sqlx::query(&sql)
        .bind(index)
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await?;
    Ok(rows.iter().map(user_row).collect::<Result<_, _>>()?)
}
