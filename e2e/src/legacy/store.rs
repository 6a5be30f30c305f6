//! The emulator's own MariaDB database: the legacy `Member` table exactly as
//! the fixture lays it out (e2e/fixtures/legacy/member.sql, which the bulk
//! load's mapping reads), plus the emulator's opaque tokens and an id
//! sequence. Soft deletes (`DelFlag = 1`); `UpdateDate` is the member's
//! version (the mapping's `version` column), moved forward on every write.

use super::password::Credential;
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};
use sqlx::{Executor, MySqlPool, Row};
use std::str::FromStr;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The fixture's DDL: the table the legacy team runs and the bulk load reads.
const MEMBER_DDL: &str = include_str!("../../fixtures/legacy/member.sql");

const EMULATOR_DDL: &[&str] = &[
    // Opaque tokens, stored as SHA-256: `Kind` 'a' access, 'r' refresh. A
    // login opens a session; a refresh rotates within it.
    "CREATE TABLE IF NOT EXISTS LegacyToken (
        TokenHash BINARY(32) NOT NULL PRIMARY KEY,
        Kind      CHAR(1)    NOT NULL,
        SessionId BIGINT     NOT NULL,
        MemberId  BIGINT     NOT NULL,
        ExpiresAt BIGINT     NOT NULL,
        Revoked   TINYINT    NOT NULL DEFAULT 0,
        RedeemedAt BIGINT    NULL,
        KEY ix_token_session (SessionId),
        KEY ix_token_member (MemberId)
    )",
    // `Member` has no AUTO_INCREMENT (the fixture's layout): new ids come
    // from here, set past the highest existing id at start.
    // Hashes idbase synced back that the Member columns cannot hold.
    "CREATE TABLE IF NOT EXISTS MemberSyncedHash (
        MemberId     BIGINT        NOT NULL PRIMARY KEY,
        PasswordHash VARCHAR(1024) NOT NULL
    )",
    // One row per email ever claimed: a writer that registers or moves to
    // an email locks its row first, so writers of the same email take turns
    // (the Member index is not unique, and gap locks on it deadlock).
    "CREATE TABLE IF NOT EXISTS MemberEmailClaim (
        MailAddress VARCHAR(256) NOT NULL PRIMARY KEY
    )",
    "CREATE TABLE IF NOT EXISTS MemberIdSequence (
        Id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY
    )",
];

/// Legacy DATETIMEs are JST (the mapping's `timezone`).
const JST: UtcOffset = match UtcOffset::from_hms(9, 0, 0) {
    Ok(offset) => offset,
    Err(_) => UtcOffset::UTC,
};

/// Access tokens live 15 minutes, refresh tokens 30 days: idbase's defaults.
pub const ACCESS_TTL_SECS: i64 = 15 * 60;
const REFRESH_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long a redeemed refresh token still names its member: the gateway
/// may retry an exchange that idsvc failed after legacy had redeemed.
pub const REDEEM_GRACE_MS: i64 = 30 * 1000;

/// Rows per INSERT while seeding.
const SEED_BATCH: i64 = 1000;

const MEMBER_COLUMNS: &str = "m.MemberId, m.MailAddress, m.PasswordHash, m.PasswordSalt, m.Tel, \
     CAST(m.RegistDate AS CHAR) AS RegistDate, CAST(m.UpdateDate AS CHAR) AS UpdateDate, \
     s.PasswordHash AS SyncedHash, CAST(m.DelFlag AS SIGNED) AS DelFlag";
const MEMBER_FROM: &str = "Member m LEFT JOIN MemberSyncedHash s ON s.MemberId = m.MemberId";

/// A live (not soft-deleted) member.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: i64,
    pub email: String,
    pub phone: Option<String>,
    pub credential: Credential,
    pub created_ms: i64,
    /// `UpdateDate` in epoch milliseconds: the version sent in double writes.
    pub version: i64,
}

impl Member {
    pub fn created_at(&self) -> String {
        rfc3339(self.created_ms)
    }

    pub fn updated_at(&self) -> String {
        rfc3339(self.version)
    }
}

/// A fresh token pair of one session.
pub struct Issued {
    pub access: String,
    pub refresh: String,
}

#[derive(Clone)]
pub struct Store {
    pool: MySqlPool,
}

impl Store {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = MySqlConnectOptions::from_str(url)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(16)
            // Reads inside a write see what others committed (the email
            // check after its claim), and searches take no gap locks.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        for ddl in std::iter::once(MEMBER_DDL).chain(EMULATOR_DDL.iter().copied()) {
            sqlx::raw_sql(ddl).execute(&pool).await?;
        }
        Ok(Self { pool })
    }

    /// Seeds members 1..=n (`member-<id>@legacy.example`, password
    /// `password-<id>`) unless the table holds members already, then moves the
    /// id sequence past the highest id.
    pub async fn seed(&self, n: i64) -> anyhow::Result<()> {
        let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Member")
            .fetch_one(&self.pool)
            .await?;
        if existing == 0 && n > 0 {
            let now = legacy_datetime(now_ms());
            let mut first = 1;
            while first <= n {
                let last = (first + SEED_BATCH - 1).min(n);
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO Member (MemberId, MailAddress, PasswordHash, PasswordSalt, Tel, \
                     DelFlag, RegistDate, UpdateDate) ",
                );
                insert.push_values(first..=last, |mut row, id| {
                    let credential = Credential::new(&format!("password-{id}"));
                    row.push_bind(id)
                        .push_bind(format!("member-{id}@legacy.example"))
                        .push_bind(credential.hash)
                        .push_bind(credential.salt)
                        .push_bind(None::<String>)
                        .push_bind(0_i8)
                        .push_bind(now.clone())
                        .push_bind(now.clone());
                });
                insert.build().execute(&self.pool).await?;
                first = last + 1;
            }
        }
        let next = self.max_id().await? + 1;
        // DDL takes no bind parameters; `next` is an integer.
        sqlx::raw_sql(&format!(
            "ALTER TABLE MemberIdSequence AUTO_INCREMENT = {next}"
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The highest member id ever used (deleted members included), 0 if none.
    pub async fn max_id(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(MemberId), 0) FROM Member")
            .fetch_one(&self.pool)
            .await
    }

    pub async fn begin(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::MySql>> {
        self.pool.begin().await
    }

    /// The live member with this (normalised) email; the latest updated one
    /// should the table hold duplicates.
    pub async fn member_by_email(&self, email: &str) -> sqlx::Result<Option<Member>> {
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM {MEMBER_FROM} WHERE m.MailAddress = ? AND m.DelFlag = 0 \
             ORDER BY m.UpdateDate DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| member_from(&r)).transpose()
    }

    /// The live member `id`, locked for the transaction's write.
    pub async fn member_for_update(
        conn: &mut MySqlConnection,
        id: i64,
    ) -> sqlx::Result<Option<Member>> {
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM {MEMBER_FROM} WHERE m.MemberId = ? AND m.DelFlag = 0 FOR UPDATE"
        );
        let row = sqlx::query(&sql).bind(id).fetch_optional(conn).await?;
        row.map(|r| member_from(&r)).transpose()
    }

    pub async fn member(&self, id: i64) -> sqlx::Result<Option<Member>> {
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM {MEMBER_FROM} WHERE m.MemberId = ? AND m.DelFlag = 0"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| member_from(&r)).transpose()
    }

    /// Whether a live member other than `except` holds the email. Claims
    /// the email first, so a concurrent writer of it waits for this
    /// transaction to end. The claim row is created outside the transaction:
    /// waiters on a duplicate insert hold shared locks, and upgrading them
    /// to exclusive ones deadlocks; on an existing row they simply queue.
    pub async fn email_taken(
        &self,
        conn: &mut MySqlConnection,
        email: &str,
        except: Option<i64>,
    ) -> sqlx::Result<bool> {
        sqlx::query("INSERT IGNORE INTO MemberEmailClaim (MailAddress) VALUES (?)")
            .bind(email)
            .execute(&self.pool)
            .await?;
        sqlx::query("SELECT MailAddress FROM MemberEmailClaim WHERE MailAddress = ? FOR UPDATE")
            .bind(email)
            .execute(&mut *conn)
            .await?;
        let holder: Option<i64> = sqlx::query_scalar(
            "SELECT MemberId FROM Member WHERE MailAddress = ? AND DelFlag = 0 \
             AND MemberId <> ? LIMIT 1",
        )
        .bind(email)
        .bind(except.unwrap_or(0))
        .fetch_optional(conn)
        .await?;
        Ok(holder.is_some())
    }

    /// A new member id (never reused, even when the registration rolls back).
    pub async fn next_id(&self) -> sqlx::Result<i64> {
        let done = sqlx::query("INSERT INTO MemberIdSequence () VALUES ()")
            .execute(&self.pool)
            .await?;
        i64::try_from(done.last_insert_id()).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }

    pub async fn insert(conn: &mut MySqlConnection, member: &Member) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO Member (MemberId, MailAddress, PasswordHash, PasswordSalt, Tel, DelFlag, \
             RegistDate, UpdateDate) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
        )
        .bind(member.id)
        .bind(&member.email)
        .bind(&member.credential.hash)
        .bind(&member.credential.salt)
        .bind(&member.phone)
        .bind(legacy_datetime(member.created_ms))
        .bind(legacy_datetime(member.version))
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn update(conn: &mut MySqlConnection, member: &Member) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE Member SET MailAddress = ?, PasswordHash = ?, PasswordSalt = ?, Tel = ?, \
             UpdateDate = ? WHERE MemberId = ? AND DelFlag = 0",
        )
        .bind(&member.email)
        .bind(&member.credential.hash)
        .bind(&member.credential.salt)
        .bind(&member.phone)
        .bind(legacy_datetime(member.version))
        .bind(member.id)
        .execute(&mut *conn)
        .await?;
        Self::store_synced(conn, member).await
    }

    async fn store_synced(conn: &mut MySqlConnection, member: &Member) -> sqlx::Result<()> {
        match &member.credential.synced {
            Some(hash) => sqlx::query(
                "INSERT INTO MemberSyncedHash (MemberId, PasswordHash) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE PasswordHash = VALUES(PasswordHash)",
            )
            .bind(member.id)
            .bind(hash),
            None => sqlx::query("DELETE FROM MemberSyncedHash WHERE MemberId = ?").bind(member.id),
        }
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The member `id` whether deleted or not, locked, with its soft-delete flag.
    pub async fn any_member_for_update(
        conn: &mut MySqlConnection,
        id: i64,
    ) -> sqlx::Result<Option<(Member, bool)>> {
        let sql =
            format!("SELECT {MEMBER_COLUMNS} FROM {MEMBER_FROM} WHERE m.MemberId = ? FOR UPDATE");
        let row = sqlx::query(&sql).bind(id).fetch_optional(conn).await?;
        row.map(|r| Ok((member_from(&r)?, r.try_get::<i64, _>("DelFlag")? != 0)))
            .transpose()
    }

    /// Writes a member idbase synced: the row as sent, live or soft-deleted.
    pub async fn put_synced(
        conn: &mut MySqlConnection,
        member: &Member,
        existed: bool,
        deleted: bool,
    ) -> sqlx::Result<()> {
        let sql = if existed {
            "UPDATE Member SET MailAddress = ?, PasswordHash = ?, PasswordSalt = ?, Tel = ?, \
             DelFlag = ?, UpdateDate = ? WHERE MemberId = ?"
        } else {
            "INSERT INTO Member (MailAddress, PasswordHash, PasswordSalt, Tel, DelFlag, UpdateDate, \
             MemberId, RegistDate) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        };
        let mut query = sqlx::query(sql)
            .bind(&member.email)
            .bind(&member.credential.hash)
            .bind(&member.credential.salt)
            .bind(&member.phone)
            .bind(i8::from(deleted))
            .bind(legacy_datetime(member.version))
            .bind(member.id);
        if !existed {
            query = query.bind(legacy_datetime(member.created_ms));
        }
        query.execute(&mut *conn).await?;
        if deleted {
            sqlx::query("UPDATE LegacyToken SET Revoked = 1 WHERE MemberId = ?")
                .bind(member.id)
                .execute(&mut *conn)
                .await?;
        }
        Self::store_synced(conn, member).await
    }

    /// Soft delete at `version`, and every token of the member revoked.
    pub async fn soft_delete(
        conn: &mut MySqlConnection,
        id: i64,
        version: i64,
    ) -> sqlx::Result<()> {
        sqlx::query("UPDATE Member SET DelFlag = 1, UpdateDate = ? WHERE MemberId = ?")
            .bind(legacy_datetime(version))
            .bind(id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE LegacyToken SET Revoked = 1 WHERE MemberId = ?")
            .bind(id)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Revokes every session of the member but `keep` (a password change).
    pub async fn revoke_other_sessions(
        conn: &mut MySqlConnection,
        member_id: i64,
        keep: i64,
    ) -> sqlx::Result<()> {
        sqlx::query("UPDATE LegacyToken SET Revoked = 1 WHERE MemberId = ? AND SessionId <> ?")
            .bind(member_id)
            .bind(keep)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// A token pair in a new session (`None`) or in `session`.
    pub async fn issue(&self, member_id: i64, session: Option<i64>) -> sqlx::Result<Issued> {
        let session = session.unwrap_or_else(|| rand::thread_rng().gen_range(1..i64::MAX));
        let now = now_ms();
        let issued = Issued {
            access: new_token("la_"),
            refresh: new_token("lr_"),
        };
        sqlx::query(
            "INSERT INTO LegacyToken (TokenHash, Kind, SessionId, MemberId, ExpiresAt) \
             VALUES (?, 'a', ?, ?, ?), (?, 'r', ?, ?, ?)",
        )
        .bind(token_hash(&issued.access))
        .bind(session)
        .bind(member_id)
        .bind(now + ACCESS_TTL_SECS * 1000)
        .bind(token_hash(&issued.refresh))
        .bind(session)
        .bind(member_id)
        .bind(now + REFRESH_TTL_MS)
        .execute(&self.pool)
        .await?;
        Ok(issued)
    }

    /// The live member and session of a valid access token.
    pub async fn access(&self, token: &str) -> sqlx::Result<Option<(i64, i64)>> {
        sqlx::query(
            "SELECT t.MemberId, t.SessionId FROM LegacyToken t \
             JOIN Member m ON m.MemberId = t.MemberId AND m.DelFlag = 0 \
             WHERE t.TokenHash = ? AND t.Kind = 'a' AND t.Revoked = 0 AND t.ExpiresAt > ?",
        )
        .bind(token_hash(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
    }

    /// Uses a refresh token up (it is single-use) and returns its live member
    /// and session. Presenting a used one again revokes its whole session:
    /// it was stolen, or its holder retried against the rules.
    pub async fn spend_refresh(&self, token: &str) -> sqlx::Result<Option<(i64, i64)>> {
        let hash = token_hash(token);
        let mut tx = self.pool.begin().await?;
        let Some(row) = lock_refresh(&mut tx, &hash).await? else {
            return Ok(None);
        };
        let valid = !row.revoked && row.expires > now_ms() && row.member_exists;
        if valid {
            sqlx::query("UPDATE LegacyToken SET Revoked = 1 WHERE TokenHash = ?")
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
        } else if row.revoked {
            sqlx::query("UPDATE LegacyToken SET Revoked = 1 WHERE SessionId = ?")
                .bind(row.session)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(valid.then_some((row.member, row.session)))
    }

    /// Redeems a refresh token for the exchange: its session ends and its
    /// member is named. A repeat within [`REDEEM_GRACE_MS`] names the member
    /// again (the gateway's retry); any other use of a spent token is reuse.
    pub async fn redeem(&self, token: &str) -> sqlx::Result<Option<i64>> {
        let hash = token_hash(token);
        let mut tx = self.pool.begin().await?;
        let Some(row) = lock_refresh(&mut tx, &hash).await? else {
            return Ok(None);
        };
        let now = now_ms();
        let outcome = match row.redeemed_at {
            Some(at) if now - at <= REDEEM_GRACE_MS && row.member_exists => Some(row.member),
            Some(_) => None,
            None if !row.revoked && row.expires > now && row.member_exists => {
                sqlx::query("UPDATE LegacyToken SET RedeemedAt = ? WHERE TokenHash = ?")
                    .bind(now)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
                Some(row.member)
            }
            None => None,
        };
        // Redeemed or not, the session ends (a spent token's reuse included).
        sqlx::query("UPDATE LegacyToken SET Revoked = 1 WHERE SessionId = ?")
            .bind(row.session)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Ends the session of a refresh token (unknown tokens are ignored).
    pub async fn revoke(&self, refresh_token: &str) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE LegacyToken SET Revoked = 1 WHERE SessionId IN \
             (SELECT SessionId FROM (SELECT SessionId FROM LegacyToken \
              WHERE TokenHash = ? AND Kind = 'r') AS s)",
        )
        .bind(token_hash(refresh_token))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A refresh token's row, locked for the rest of the transaction.
struct RefreshRow {
    member: i64,
    session: i64,
    revoked: bool,
    expires: i64,
    redeemed_at: Option<i64>,
    /// The member exists and is not withdrawn.
    member_exists: bool,
}

async fn lock_refresh(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    hash: &[u8],
) -> sqlx::Result<Option<RefreshRow>> {
    let row = sqlx::query(
        "SELECT t.MemberId, t.SessionId, t.Revoked, t.ExpiresAt, t.RedeemedAt, m.DelFlag \
         FROM LegacyToken t LEFT JOIN Member m ON m.MemberId = t.MemberId \
         WHERE t.TokenHash = ? AND t.Kind = 'r' FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|row| {
        let revoked: i8 = row.try_get(2)?;
        let deleted: Option<i8> = row.try_get(5)?;
        Ok(RefreshRow {
            member: row.try_get(0)?,
            session: row.try_get(1)?,
            revoked: revoked != 0,
            expires: row.try_get(3)?,
            redeemed_at: row.try_get(4)?,
            member_exists: deleted == Some(0),
        })
    })
    .transpose()
}

fn member_from(row: &sqlx::mysql::MySqlRow) -> sqlx::Result<Member> {
    let stamp = |column: &str| -> sqlx::Result<i64> {
        let text: String = row.try_get(column)?;
        idsvc::migration::mapping::stamp_millis(&text, JST).ok_or_else(|| {
            sqlx::Error::Decode(format!("{column} {text:?} is not a timestamp").into())
        })
    };
    Ok(Member {
        id: row.try_get("MemberId")?,
        email: row.try_get("MailAddress")?,
        phone: row.try_get("Tel")?,
        credential: Credential {
            hash: row.try_get("PasswordHash")?,
            salt: row.try_get("PasswordSalt")?,
            synced: row.try_get("SyncedHash")?,
        },
        created_ms: stamp("RegistDate")?,
        version: stamp("UpdateDate")?,
    })
}

pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The version of a member's next write: now, but always past the last one
/// (idbase keeps the newest version; equal stamps would look like a replay).
pub fn next_version(previous: i64) -> i64 {
    now_ms().max(previous + 1)
}

/// A JST `DATETIME(3)` literal, as the legacy table stores times.
fn legacy_datetime(ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(JST);
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
    );
    at.format(&format).unwrap_or_default()
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// `prefix` + 256 random bits, base64url.
fn new_token(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Tokens carry 256 random bits: an unkeyed hash is enough to store them.
fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_round_trips_through_the_bulk_loads_parser() {
        let ms = 1_764_900_000_123;
        let text = legacy_datetime(ms);
        assert_eq!(
            idsvc::migration::mapping::stamp_millis(&text, JST),
            Some(ms)
        );
    }

    #[test]
    fn tokens_carry_their_kind() {
        assert!(new_token("la_").starts_with("la_"));
        assert_eq!(new_token("lr_").len(), 3 + 43);
    }
}
