//! The retry budget: retries may add at most `percent` on top of the request
//! rate, so a sick cluster is not hammered by every caller retrying at once
//! (Envoy's `retry_budget.budget_percent`, measured over a window as
//! Finagle/linkerd do). A floor of `min_per_sec` keeps retries possible at
//! low traffic, where one failure would otherwise exhaust the budget.

use std::time::Duration;
use tower::retry::budget::{Budget as _, TpsBudget};

/// How long a request's deposit stays spendable.
const WINDOW: Duration = Duration::from_secs(10);

pub struct RetryBudget(TpsBudget);

impl RetryBudget {
    /// `percent` of the request rate (0–1000, so 20 means one retry per five
    /// requests), plus `min_per_sec` retries a second regardless.
    pub fn new(percent: u32, min_per_sec: u32) -> Self {
        // u32 → f32 is exact for any percent we accept.
        #[allow(clippy::cast_precision_loss)]
        let ratio = percent as f32 / 100.0;
        Self(TpsBudget::new(WINDOW, min_per_sec, ratio))
    }

    /// Every original request earns a fraction of a retry.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// True when a retry may be sent now; spends it.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spendable(budget: &RetryBudget) -> usize {
        std::iter::from_fn(|| budget.withdraw().then_some(())).count()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fraction_of_requests() {
        let budget = RetryBudget::new(20, 0);
        assert_eq!(spendable(&budget), 0, "nothing earned yet");
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(spendable(&budget), 20);
        assert_eq!(spendable(&budget), 0, "spent");
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_retries_at_low_traffic_and_refills() {
        let budget = RetryBudget::new(20, 2);
        // The floor is per second over the window.
        let first = spendable(&budget);
        assert!(first >= 2, "floor of 2/s, got {first}");
        assert_eq!(spendable(&budget), 0);
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert!(spendable(&budget) >= 2, "the floor comes back");
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let budget = RetryBudget::new(50, 0);
        for _ in 0..10 {
            budget.deposit();
        }
        tokio::time::advance(WINDOW * 2).await;
        assert_eq!(spendable(&budget), 0, "old requests earn no retries now");
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(spendable(&budget), 5);
    }
}
