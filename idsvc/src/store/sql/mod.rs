//! The SQL implementation of the store, shared by SQLite and MySQL: the
//! connection and the transaction loop here, the statements by concern in
//! `users`, `sessions`, `throttle` and `audit`, and what the two backends
//! spell differently in `dialect`.

use crate::domain::phase::{
    GatewayReport, LastValidation, LegacyTraffic, PhaseChange, PhaseState, PhaseSwap, Tally,
    TrafficKey,
};
use crate::domain::{
    EventPage, ExchangeOutcome, LegacyExchange, Millis, NewRefreshToken, NewUser, Registration,
    RotateOutcome, Rotation, Sealer, SecurityEvent, SessionSummary, Store, StoreResult,
    ThrottleState, Tombstone, UpsertOutcome, UserId, UserRow,
};
use anyhow::Context;
use async_trait::async_trait;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

/// How often a transaction that lost a deadlock is run again.
const RETRIES: usize = 5;

/// Waits a random few milliseconds, more with each lost attempt, before a
/// transaction that lost a deadlock runs again: run at once, it tends to
/// meet the same rival holding the same locks.
async fn back_off(attempt: usize) {
    use rand::Rng;
    let most = 2u64 << attempt.min(RETRIES);
    let wait = rand::thread_rng().gen_range(1..=most);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// Runs `body` in a transaction, again when the database reports a deadlock.
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let _writer = $store.writer().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut $tx = $store.pool.begin().await?;
            let result: Result<_, $crate::domain::StoreError> = async { $body }.await;
            match result {
                Ok(value) => match $tx.commit().await {
                    Ok(()) => break Ok(value),
                    Err(err)
                        if attempt < $crate::store::sql::RETRIES
                            && $crate::store::is_retryable(&err) =>
                    {
                        $crate::store::sql::back_off(attempt).await;
                        continue;
                    }
                    Err(err) => break Err($crate::domain::StoreError::from(err)),
                },
                Err($crate::domain::StoreError::Database(err))
                    if attempt < $crate::store::sql::RETRIES
                        && err
                            .downcast_ref::<sqlx::Error>()
                            .is_some_and($crate::store::is_retryable) =>
                {
                    $crate::store::sql::back_off(attempt).await;
                    continue;
                }
                Err(err) => break Err(err),
            }
        }
    }};
}

mod audit;
mod dialect;
mod fleet_traffic;
mod phase;
mod sessions;
mod throttle;
mod users;

pub use dialect::Dialect;

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

    /// Queues SQLite writers (see `write_lock`); MySQL needs no queue.
    async fn writer(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }
}

/// The store's forwarding table: each method lives with its concern.
#[async_trait]
impl Store for SqlStore {
    async fn create_user(&self, user: NewUser<'_>, seal: &Sealer<'_>) -> StoreResult<UserRow> {
        users::create_user(self, user, seal).await
    }

    async fn registration(&self, key: &[u8], now: Millis) -> StoreResult<Option<Registration>> {
        users::registration(self, key, now).await
    }

    async fn purge_registrations(&self, now: Millis) -> StoreResult<u64> {
        users::purge_registrations(self, now).await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<UserRow>> {
        users::user(self, id).await
    }

    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserRow>> {
        users::users(self, ids).await
    }

    async fn user_by_email_index(&self, index: &[u8]) -> StoreResult<Option<UserRow>> {
        users::user_by_email_index(self, index).await
    }

    async fn users_by_phone_index(&self, index: &[u8], limit: u32) -> StoreResult<Vec<UserRow>> {
        users::users_by_phone_index(self, index, limit).await
    }

    async fn user_in_session(&self, id: UserId, session_id: &str) -> StoreResult<Option<UserRow>> {
        users::user_in_session(self, id, session_id).await
    }

    async fn update_user(&self, row: &UserRow, expected_version: i64) -> StoreResult<bool> {
        users::update_user(self, row, expected_version).await
    }

    async fn delete_user(&self, id: UserId, version: i64, now: Millis) -> StoreResult<bool> {
        users::delete_user(self, id, version, now).await
    }

    async fn rehash_user(
        &self,
        row: &UserRow,
        expected_version: i64,
        replaced: &str,
    ) -> StoreResult<bool> {
        users::rehash_user(self, row, expected_version, replaced).await
    }

    async fn tombstone(&self, id: UserId) -> StoreResult<Option<Tombstone>> {
        users::tombstone(self, id).await
    }

    async fn upsert_legacy(&self, row: &UserRow) -> StoreResult<(UpsertOutcome, i64)> {
        users::upsert_legacy(self, row).await
    }

    async fn create_session(
        &self,
        token: NewRefreshToken<'_>,
        client: Option<&str>,
        now: Millis,
    ) -> StoreResult<()> {
        sessions::create_session(self, token, client, now).await
    }

    async fn rotate_refresh_token(&self, rotation: Rotation<'_>) -> StoreResult<RotateOutcome> {
        sessions::rotate_refresh_token(self, rotation).await
    }

    async fn revoke_session_of(&self, token: &[u8], now: Millis) -> StoreResult<Option<UserId>> {
        sessions::revoke_session_of(self, token, now).await
    }

    async fn revoke_sessions(
        &self,
        user_id: UserId,
        keep: Option<&str>,
        now: Millis,
    ) -> StoreResult<u64> {
        sessions::revoke_sessions(self, user_id, keep, now).await
    }

    async fn throttle(&self, key: &[u8]) -> StoreResult<Option<ThrottleState>> {
        throttle::throttle(self, key).await
    }

    async fn swap_throttle(
        &self,
        key: &[u8],
        expected: Option<ThrottleState>,
        next: ThrottleState,
    ) -> StoreResult<bool> {
        throttle::swap_throttle(self, key, expected, next).await
    }

    async fn clear_throttle(&self, key: &[u8]) -> StoreResult<()> {
        throttle::clear_throttle(self, key).await
    }

    async fn purge_throttle(&self, before: Millis) -> StoreResult<u64> {
        throttle::purge_throttle(self, before).await
    }

    async fn record_security_event(
        &self,
        kind: &str,
        user_id: Option<UserId>,
        detail: &str,
        now: Millis,
    ) -> StoreResult<()> {
        audit::record_security_event(self, kind, user_id, detail, now).await
    }

    async fn security_events(&self, limit: i64) -> StoreResult<Vec<SecurityEvent>> {
        audit::security_events(self, limit).await
    }

    async fn add_fleet_traffic(&self, key: &TrafficKey, tally: &Tally) -> StoreResult<()> {
        fleet_traffic::add_fleet_traffic(self, key, tally).await
    }

    async fn fleet_traffic_since(&self, slot: i64) -> StoreResult<Vec<(TrafficKey, Tally)>> {
        fleet_traffic::fleet_traffic_since(self, slot).await
    }

    async fn purge_fleet_traffic(&self, before: i64) -> StoreResult<u64> {
        fleet_traffic::purge_fleet_traffic(self, before).await
    }

    async fn security_events_page(&self, page: EventPage) -> StoreResult<Vec<SecurityEvent>> {
        audit::security_events_page(self, page).await
    }

    async fn member_events(&self, user_id: UserId, limit: u32) -> StoreResult<Vec<SecurityEvent>> {
        audit::member_events(self, user_id, limit).await
    }

    async fn member_sessions(
        &self,
        user_id: UserId,
        now: Millis,
        limit: u32,
    ) -> StoreResult<Vec<SessionSummary>> {
        sessions::member_sessions(self, user_id, now, limit).await
    }

    async fn revoke_member_session(
        &self,
        user_id: UserId,
        session_id: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        sessions::revoke_member_session(self, user_id, session_id, now).await
    }

    async fn exchange_legacy_session(
        &self,
        exchange: LegacyExchange<'_>,
    ) -> StoreResult<ExchangeOutcome> {
        sessions::exchange_legacy_session(self, exchange).await
    }

    async fn phase_state(&self) -> StoreResult<Option<PhaseState>> {
        phase::phase_state(self).await
    }

    async fn create_phase_state(&self, initial: &PhaseState) -> StoreResult<PhaseState> {
        phase::create_phase_state(self, initial).await
    }

    async fn swap_phase(&self, swap: PhaseSwap<'_>) -> StoreResult<bool> {
        phase::swap_phase(self, swap).await
    }

    async fn phase_history(&self, limit: u32) -> StoreResult<Vec<PhaseChange>> {
        phase::phase_history(self, limit).await
    }

    async fn record_gateway_report(&self, report: &GatewayReport) -> StoreResult<()> {
        phase::record_gateway_report(self, report).await
    }

    async fn gateway_reports(&self, since: Millis) -> StoreResult<Vec<GatewayReport>> {
        phase::gateway_reports(self, since).await
    }

    async fn purge_gateway_reports(&self, before: Millis) -> StoreResult<u64> {
        phase::purge_gateway_reports(self, before).await
    }

    async fn latest_validation(&self) -> StoreResult<Option<LastValidation>> {
        phase::latest_validation(self).await
    }

    async fn count_legacy_traffic(
        &self,
        kind: LegacyTraffic,
        second: i64,
        n: i64,
    ) -> StoreResult<()> {
        phase::count_legacy_traffic(self, kind, second, n).await
    }

    async fn legacy_traffic_since(&self, kind: LegacyTraffic, since: i64) -> StoreResult<i64> {
        phase::legacy_traffic_since(self, kind, since).await
    }

    async fn last_legacy_traffic(&self, kind: LegacyTraffic) -> StoreResult<Option<i64>> {
        phase::last_legacy_traffic(self, kind).await
    }

    async fn purge_legacy_traffic(&self, before: i64) -> StoreResult<u64> {
        phase::purge_legacy_traffic(self, before).await
    }
}
