//! Outlier ejection of one endpoint, as Envoy's `consecutive_gateway_failure`:
//! N failures in a row (connect failure, UNAVAILABLE, per-try timeout) eject
//! the endpoint for `base × k`, where k counts its recent ejections (capped at
//! `max`). After that time it is not trusted blindly: an active
//! `grpc.health.v1` check must answer SERVING to bring it back. k decays by
//! one for every `base` the endpoint then stays in, so an endpoint that flaps
//! stays out longer and one that recovered for good starts afresh.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct EjectionPolicy {
    pub consecutive_failures: u32,
    pub base: Duration,
    pub max: Duration,
}

#[derive(Debug, Default)]
pub struct Outlier {
    consecutive: u32,
    /// Set while ejected: when a health check may bring it back.
    ejected_until: Option<Instant>,
    /// Recent ejections (the multiplier k).
    recent: u32,
    returned_at: Option<Instant>,
}

impl Outlier {
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// An answer from idsvc (of any kind) ends a run of failures.
    pub fn on_success(&mut self) {
        self.consecutive = 0;
    }

    /// Returns true when this failure ejects the endpoint.
    pub fn on_failure(&mut self, policy: &EjectionPolicy, now: Instant) -> bool {
        if self.is_ejected() {
            return false;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        if self.consecutive < policy.consecutive_failures.max(1) {
            return false;
        }
        if let Some(back) = self.returned_at {
            let stayed = now.saturating_duration_since(back);
            let decay = stayed.as_nanos() / policy.base.as_nanos().max(1);
            self.recent = self
                .recent
                .saturating_sub(u32::try_from(decay).unwrap_or(u32::MAX));
        }
        self.recent = self.recent.saturating_add(1);
        let time = policy.base.saturating_mul(self.recent).min(policy.max);
        self.ejected_until = Some(now + time);
        self.consecutive = 0;
        true
    }

    /// True when the ejection time is over and a health check should decide.
    pub fn due_for_check(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now >= until)
    }

    /// A SERVING health check after the ejection time brings it back.
    /// Returns true when it did.
    pub fn on_health_serving(&mut self, now: Instant) -> bool {
        if !self.due_for_check(now) {
            return false;
        }
        self.ejected_until = None;
        self.consecutive = 0;
        self.returned_at = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: EjectionPolicy = EjectionPolicy {
        consecutive_failures: 5,
        base: Duration::from_secs(30),
        max: Duration::from_secs(300),
    };

    fn fail(outlier: &mut Outlier, times: u32) -> bool {
        (0..times).fold(false, |_, _| outlier.on_failure(&POLICY, Instant::now()))
    }

    /// Ejects, then returns how long until a health check may bring it back.
    async fn eject(outlier: &mut Outlier) -> Duration {
        assert!(fail(outlier, 5), "fifth failure in a row ejects");
        let mut waited = Duration::ZERO;
        while !outlier.due_for_check(Instant::now()) {
            waited += Duration::from_secs(1);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        waited
    }

    #[tokio::test(start_paused = true)]
    async fn five_consecutive_failures_eject() {
        let mut outlier = Outlier::default();
        assert!(!fail(&mut outlier, 4));
        outlier.on_success();
        assert!(!fail(&mut outlier, 4), "a success resets the run");
        assert!(!outlier.is_ejected());
        assert!(fail(&mut outlier, 1));
        assert!(outlier.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn comes_back_only_after_the_time_and_a_serving_check() {
        let mut outlier = Outlier::default();
        fail(&mut outlier, 5);
        assert!(!outlier.on_health_serving(Instant::now()), "too early");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!outlier.due_for_check(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(outlier.due_for_check(Instant::now()));
        assert!(outlier.is_ejected(), "still out until a check says SERVING");
        assert!(outlier.on_health_serving(Instant::now()));
        assert!(!outlier.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_ejections_grow_to_the_cap_and_decay() {
        let mut outlier = Outlier::default();
        let mut times = Vec::new();
        for _ in 0..12 {
            times.push(eject(&mut outlier).await.as_secs());
            assert!(outlier.on_health_serving(Instant::now()));
        }
        assert_eq!(&times[..4], &[30, 60, 90, 120]);
        assert_eq!(times[11], 300, "capped at max");
        // Staying in for 10 × base forgets all but two of the ejections.
        let k = outlier.recent;
        tokio::time::advance(POLICY.base * (k - 2)).await;
        assert_eq!(eject(&mut outlier).await.as_secs(), 90);
    }
}
