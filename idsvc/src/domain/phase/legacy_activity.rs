//! When idsvc last heard from legacy: a double write received, a legacy
//! refresh token exchanged. The move to phase 5 retires legacy, so it needs
//! both to have been quiet for a while (the `legacy-quiet` check).

use crate::domain::{Clock, Millis, Result, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A kind of call that means legacy (or its members' tokens) is still in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyActivity {
    DoubleWrite,
    TokenExchange,
}

impl LegacyActivity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DoubleWrite => "double-write",
            Self::TokenExchange => "token-exchange",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::DoubleWrite => 0,
            Self::TokenExchange => 1,
        }
    }
}

/// The fleet's latest activity of each kind; `None`: never seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastLegacyActivity {
    pub double_write: Option<Millis>,
    pub token_exchange: Option<Millis>,
}

/// Stores the time of legacy activity before the call is served, at most
/// once a second per kind on this replica: the stored time is never more
/// than a second behind the truth, and a crash after serving loses nothing.
pub struct LegacyActivityRecorder {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// What this replica last stored, by [`LegacyActivity::index`].
    stored: [AtomicI64; 2],
}

/// How far the stored time may lag behind the latest call.
const RESOLUTION_MS: Millis = 1000;

impl LegacyActivityRecorder {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            stored: [AtomicI64::new(Millis::MIN), AtomicI64::new(Millis::MIN)],
        }
    }

    /// Notes a call of `kind`; an error means the call must not be served
    /// (the `legacy-quiet` check would not know of it).
    pub async fn note(&self, kind: LegacyActivity) -> Result<()> {
        let now = self.clock.now_ms();
        let stored = &self.stored[kind.index()];
        if now.saturating_sub(stored.load(Ordering::Acquire)) < RESOLUTION_MS {
            return Ok(());
        }
        self.store.note_legacy_activity(kind, now).await?;
        stored.fetch_max(now, Ordering::AcqRel);
        Ok(())
    }
}
