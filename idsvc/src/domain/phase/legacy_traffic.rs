//! What idsvc hears of legacy, counted per second across the fleet: double
//! writes it accepted, legacy refresh tokens it exchanged, the member
//! writes the gateways proxied to legacy (which they report), and the
//! shadow reads it compared. Three guardrails read it: double-write parity
//! (every write legacy acknowledged came back as a double write), shadow
//! agreement and, for the move to 5, a quiet legacy.

use crate::domain::{Clock, Millis, Result, Store};
use std::sync::Arc;

/// A kind of legacy traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyTraffic {
    /// A double write idsvc accepted.
    DoubleWrite,
    /// A legacy refresh token presented for exchange (a refused one too).
    TokenExchange,
    /// A member write a gateway proxied to legacy and legacy acknowledged.
    ProxiedWrite,
    /// A login legacy answered, repeated here and compared (a shadow read).
    ShadowLogin,
    /// A shadow login whose difference persisted on the re-check.
    ShadowLoginMismatch,
    /// A `me` read legacy answered, repeated here and compared.
    ShadowMe,
    /// A shadow `me` read whose difference persisted on the re-check.
    ShadowMeMismatch,
}

impl LegacyTraffic {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DoubleWrite => "double-write",
            Self::TokenExchange => "token-exchange",
            Self::ProxiedWrite => "proxied-write",
            Self::ShadowLogin => "shadow-login",
            Self::ShadowLoginMismatch => "shadow-login-mismatch",
            Self::ShadowMe => "shadow-me",
            Self::ShadowMeMismatch => "shadow-me-mismatch",
        }
    }
}

/// Counts are kept this long; windows of the guardrails are at most this.
pub const LEGACY_TRAFFIC_RETENTION_MS: Millis = 30 * 24 * 3600 * 1000;

/// Adds to the fleet's counts in the store, stamped with this replica's clock.
pub struct LegacyTrafficCounter {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl LegacyTrafficCounter {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Counts `n` of `kind` now. An error means the call must not be served
    /// as if counted (the guardrails would not know of it).
    pub async fn count(&self, kind: LegacyTraffic, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let second = self.clock.now_ms().div_euclid(1000);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Ok(self.store.count_legacy_traffic(kind, second, n).await?)
    }
}
