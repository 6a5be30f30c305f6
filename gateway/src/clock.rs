//! Milliseconds on a monotonic clock that tests can drive: rate windows,
//! login-anomaly windows and auto-block expiry read time only from here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub enum Clock {
    /// Real time since the clock was made.
    System(Instant),
    /// Time that moves only when a test advances it.
    Manual(Arc<AtomicU64>),
}

impl Default for Clock {
    fn default() -> Self {
        Self::System(Instant::now())
    }
}

impl Clock {
    /// A clock at zero that moves only by [`Clock::advance`].
    pub fn manual() -> Self {
        Self::Manual(Arc::new(AtomicU64::new(0)))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Self::System(start) => u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            Self::Manual(now) => now.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward; a system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(now) = self {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            now.fetch_add(by, Ordering::Relaxed);
        }
    }
}
