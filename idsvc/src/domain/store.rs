//! The storage the domain needs. Backends live in `crate::store` and implement
//! this trait; the domain never sees SQL.

use super::phase::{
    GatewayReport, LastValidation, LegacyTraffic, PhaseChange, PhaseState, PhaseSwap, Tally,
    TrafficKey,
};
use async_trait::async_trait;

pub type UserId = i64;
/// Unix milliseconds.
pub type Millis = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The email's blind index is already held by another user.
    #[error("email already taken")]
    EmailTaken,
    /// The registration key is already held by an earlier registration.
    #[error("registration key already used")]
    RegistrationKeyTaken,
    #[error("database: {0}")]
    Database(#[source] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A user row as stored: personal data sealed, password as a PHC string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub id: UserId,
    pub email_sealed: Vec<u8>,
    pub email_index: Vec<u8>,
    pub phone_sealed: Option<Vec<u8>>,
    /// Keyed blind index of the E.164 phone, for support's lookup by phone
    /// (not unique: members may share a number).
    pub phone_index: Option<Vec<u8>>,
    pub password_hash: String,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Sealed personal data for a user id (the id is bound into the ciphertext).
pub struct SealedPii {
    pub email_sealed: Vec<u8>,
    pub phone_sealed: Option<Vec<u8>>,
    pub phone_index: Option<Vec<u8>>,
}

/// Seals personal data once the user's id is known.
pub type Sealer<'a> = dyn Fn(UserId) -> anyhow::Result<SealedPii> + Send + Sync + 'a;

/// A new user's fields other than its sealed personal data.
pub struct NewUser<'a> {
    pub email_index: &'a [u8],
    pub password_hash: &'a str,
    pub version: i64,
    pub now: Millis,
    /// Recorded with the user, so a retried registration finds its result.
    pub key: Option<RegistrationKey<'a>>,
    /// Native ids (from phase 4): the id is the next one at or above this,
    /// above every id stored or deleted there; `None`: the next automatic id.
    pub id_floor: Option<UserId>,
}

/// A registration's `Idempotency-Key`, as keyed hashes: of the client and
/// key, and of the request it came with.
pub struct RegistrationKey<'a> {
    pub key: &'a [u8],
    pub request: &'a [u8],
    pub expires_at: Millis,
}

/// What an unexpired registration key recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub request: Vec<u8>,
    pub user_id: UserId,
}

/// What a double write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertOutcome {
    Created,
    Updated,
    /// The same version was stored before.
    Unchanged,
    /// A newer version or a newer deletion is stored.
    Stale,
}

/// A tombstone: what is left of a deleted user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub id: UserId,
    pub version: i64,
    pub deleted_at: Millis,
}

/// A refresh token to store (only its hash).
pub struct NewRefreshToken<'a> {
    pub hash: &'a [u8],
    pub session_id: &'a str,
    pub user_id: UserId,
    pub expires_at: Millis,
}

/// A refresh token's rotation.
pub struct Rotation<'a> {
    /// Hash of the token presented.
    pub presented: &'a [u8],
    /// The member and session the presented token names (unverified until
    /// the store matches them with its row); `None` for older tokens.
    pub claimed: Option<(UserId, &'a str)>,
    /// Hash of the successor token, which names its session too: made once
    /// the session is known.
    pub successor: &'a (dyn Fn(UserId, &str) -> [u8; 32] + Send + Sync),
    /// `now` + the refresh TTL; the store caps it at the session's start +
    /// `max_age_ms`.
    pub expires_at: Millis,
    pub now: Millis,
    pub grace_ms: i64,
    /// Absolute session lifetime from the session's start (login).
    pub max_age_ms: i64,
    /// The presented token must have been issued less than this long ago.
    pub idle_ms: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    Rotated {
        user_id: UserId,
        session_id: String,
    },
    /// An already-rotated token came back outside the grace window: the whole
    /// session (token family) is now revoked.
    Reused {
        user_id: UserId,
        session_id: String,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

/// A legacy refresh token exchanged for an idbase session.
pub struct LegacyExchange<'a> {
    /// SHA-256 of the legacy refresh token.
    pub legacy_token: &'a [u8],
    pub user_id: UserId,
    /// The new session's id, used when the token was not exchanged before.
    pub session_id: &'a str,
    /// Hash of the refresh token to issue, which names its session.
    pub successor: &'a (dyn Fn(UserId, &str) -> [u8; 32] + Send + Sync),
    /// When the issued refresh token expires; capped at the session's
    /// start + `max_age_ms` on a retry.
    pub expires_at: Millis,
    pub now: Millis,
    /// A retry within this long of the first exchange rotates its session.
    pub grace_ms: i64,
    pub max_age_ms: i64,
    /// The client app that presented the token (recorded with a new session).
    pub client: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// A new session was opened.
    Opened { session_id: String },
    /// The token was exchanged a moment ago: its session's current refresh
    /// token is replaced by a new one.
    Rotated { session_id: String },
    /// Exchanged before, outside the grace window, for another member, or
    /// the session it opened has ended.
    Invalid,
}

/// Failed-login counter for one (normalised, keyed-hashed) email.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleState {
    pub failures: i64,
    pub locked_until: Millis,
    pub updated_at: Millis,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a user (and its registration key); fails with `EmailTaken` when
    /// the index is held, `RegistrationKeyTaken` when an unexpired key is.
    async fn create_user(&self, user: NewUser<'_>, seal: &Sealer<'_>) -> StoreResult<UserRow>;
    /// The registration an unexpired key recorded.
    async fn registration(&self, key: &[u8], now: Millis) -> StoreResult<Option<Registration>>;
    /// Deletes registration keys that expired before `now`.
    async fn purge_registrations(&self, now: Millis) -> StoreResult<u64>;
    async fn user(&self, id: UserId) -> StoreResult<Option<UserRow>>;
    /// The members of `ids` that are stored, in no particular order.
    async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<UserRow>>;
    async fn user_by_email_index(&self, index: &[u8]) -> StoreResult<Option<UserRow>>;
    /// The members whose phone has this blind index, at most `limit`, by id.
    async fn users_by_phone_index(&self, index: &[u8], limit: u32) -> StoreResult<Vec<UserRow>>;
    /// The user, if the session is live and belongs to them.
    async fn user_in_session(&self, id: UserId, session_id: &str) -> StoreResult<Option<UserRow>>;
    /// Writes `row` if the stored version is still `expected_version`.
    async fn update_user(&self, row: &UserRow, expected_version: i64) -> StoreResult<bool>;
    /// Deletes the user (if stored with a version ≤ `version`), leaves or raises
    /// the tombstone, and revokes all their sessions. True if a user was deleted.
    async fn delete_user(&self, id: UserId, version: i64, now: Millis) -> StoreResult<bool>;
    /// A login's re-hash of the password: writes `row` if the stored
    /// version is still `expected_version`, and keeps `replaced` (the hash it
    /// replaces) as the last legacy hash unless a double write recorded one:
    /// a later double write of that same legacy hash is no password change.
    async fn rehash_user(
        &self,
        row: &UserRow,
        expected_version: i64,
        replaced: &str,
    ) -> StoreResult<bool>;
    async fn tombstone(&self, id: UserId) -> StoreResult<Option<Tombstone>>;
    /// Double write: newest version wins, tombstones win over older upserts.
    /// An update that changes the email index or brings another legacy
    /// password hash than the last double write (or, for a member no double
    /// write reached yet, than the stored hash) revokes all the member's
    /// sessions in the same transaction. Returns the outcome and the version now stored for the id.
    async fn upsert_legacy(&self, row: &UserRow) -> StoreResult<(UpsertOutcome, i64)>;

    /// Opens a session with its first refresh token; `client` names the
    /// client app that opened it.
    async fn create_session(
        &self,
        token: NewRefreshToken<'_>,
        client: Option<&str>,
        now: Millis,
    ) -> StoreResult<()>;
    /// Rotates the presented token into its successor. A token rotated less
    /// than `grace_ms` ago may be presented once more while its child is unused.
    /// A session past `max_age_ms` from its start, or a token older than
    /// `idle_ms`, does not rotate; the successor expires at the earlier of
    /// `expires_at` and the session's start + `max_age_ms`.
    async fn rotate_refresh_token(&self, rotation: Rotation<'_>) -> StoreResult<RotateOutcome>;
    /// Revokes the session the token belongs to; its owner if there was one.
    async fn revoke_session_of(&self, token: &[u8], now: Millis) -> StoreResult<Option<UserId>>;
    /// Revokes every live session of the user except `keep`.
    async fn revoke_sessions(
        &self,
        user_id: UserId,
        keep: Option<&str>,
        now: Millis,
    ) -> StoreResult<u64>;

    async fn throttle(&self, key: &[u8]) -> StoreResult<Option<ThrottleState>>;
    /// Compare-and-swap of a throttle row: `expected` None means "absent".
    /// Atomic across replicas; false when another attempt got there first.
    async fn swap_throttle(
        &self,
        key: &[u8],
        expected: Option<ThrottleState>,
        next: ThrottleState,
    ) -> StoreResult<bool>;
    async fn clear_throttle(&self, key: &[u8]) -> StoreResult<()>;
    /// Deletes throttle rows untouched since `before` and no longer locked.
    async fn purge_throttle(&self, before: Millis) -> StoreResult<u64>;

    async fn record_security_event(
        &self,
        kind: &str,
        user_id: Option<UserId>,
        detail: &str,
        now: Millis,
    ) -> StoreResult<()>;
    async fn security_events(&self, limit: i64) -> StoreResult<Vec<SecurityEvent>>;
    /// Adds a tally to the fleet's traffic of its slot, side and kind.
    async fn add_fleet_traffic(&self, key: &TrafficKey, tally: &Tally) -> StoreResult<()>;
    /// The fleet's traffic from the slot `slot` (Unix seconds) on.
    async fn fleet_traffic_since(&self, slot: i64) -> StoreResult<Vec<(TrafficKey, Tally)>>;
    /// Deletes the slots before `before`.
    async fn purge_fleet_traffic(&self, before: i64) -> StoreResult<u64>;
    /// A page of the audit trail (the event tail reads it forward and back).
    async fn security_events_page(&self, page: EventPage) -> StoreResult<Vec<SecurityEvent>>;
    /// A member's newest `limit` events, newest first.
    async fn member_events(&self, user_id: UserId, limit: u32) -> StoreResult<Vec<SecurityEvent>>;
    /// A member's sessions that are neither revoked nor expired at `now`,
    /// newest first, at most `limit`.
    async fn member_sessions(
        &self,
        user_id: UserId,
        now: Millis,
        limit: u32,
    ) -> StoreResult<Vec<SessionSummary>>;
    /// Revokes one live session of the member; false when it has none by that id.
    async fn revoke_member_session(
        &self,
        user_id: UserId,
        session_id: &str,
        now: Millis,
    ) -> StoreResult<bool>;

    /// Opens a session for a legacy refresh token, or rotates the one it
    /// opened within the grace window (see [`ExchangeOutcome`]). Concurrent
    /// exchanges of one token open one session.
    async fn exchange_legacy_session(
        &self,
        exchange: LegacyExchange<'_>,
    ) -> StoreResult<ExchangeOutcome>;

    /// The phase; `None` before it was first created.
    async fn phase_state(&self) -> StoreResult<Option<PhaseState>>;
    /// Stores `initial` unless a phase is stored already; returns the stored one.
    async fn create_phase_state(&self, initial: &PhaseState) -> StoreResult<PhaseState>;
    /// Compare-and-set on the generation, with its history row, in one
    /// transaction; false (and nothing written) when the generation moved.
    async fn swap_phase(&self, swap: PhaseSwap<'_>) -> StoreResult<bool>;
    /// The newest `limit` changes, newest first.
    async fn phase_history(&self, limit: u32) -> StoreResult<Vec<PhaseChange>>;
    /// Keeps a gateway's latest heartbeat (replacing its previous one).
    async fn record_gateway_report(&self, report: &GatewayReport) -> StoreResult<()>;
    /// The heartbeats received at or after `since`.
    async fn gateway_reports(&self, since: Millis) -> StoreResult<Vec<GatewayReport>>;
    /// Deletes heartbeats older than `before`.
    async fn purge_gateway_reports(&self, before: Millis) -> StoreResult<u64>;
    /// The newest `migrate validate` run; `None` before the first.
    async fn latest_validation(&self) -> StoreResult<Option<LastValidation>>;
    /// Adds `n` to the count of `kind` in the Unix second `second`.
    async fn count_legacy_traffic(
        &self,
        kind: LegacyTraffic,
        second: i64,
        n: i64,
    ) -> StoreResult<()>;
    /// The sum of `kind`'s counts from the Unix second `since` on.
    async fn legacy_traffic_since(&self, kind: LegacyTraffic, since: i64) -> StoreResult<i64>;
    /// The last Unix second with a count of `kind`; `None` when there is none.
    async fn last_legacy_traffic(&self, kind: LegacyTraffic) -> StoreResult<Option<i64>>;
    /// Deletes the counts of seconds before `before`.
    async fn purge_legacy_traffic(&self, before: i64) -> StoreResult<u64>;
}

/// A stored audit or security event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityEvent {
    /// Its position in the audit trail: increasing, the tail's cursor.
    pub id: i64,
    pub at: Millis,
    pub kind: String,
    pub user_id: Option<UserId>,
    pub detail: String,
}

/// A page of the audit trail, in the order it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventPage {
    /// The first `limit` events after `id`, oldest first.
    After { id: i64, limit: u32 },
    /// The last `limit` events before `id`, newest first.
    Before { id: i64, limit: u32 },
}

/// A member's session as support sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    pub id: String,
    pub created_at: Millis,
    /// When its refresh token last rotated; `None` when it never did.
    pub last_used_at: Option<Millis>,
    pub client: Option<String>,
}
