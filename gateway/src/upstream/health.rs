//! Active `grpc.health.v1` checks that bring ejected endpoints back: only
//! endpoints whose ejection time is over are checked, so a healthy pool costs
//! idsvc nothing.

use super::pool::Pool;
use std::sync::Weak;

/// Runs until the pool is dropped.
pub async fn check_ejected(pool: Weak<Pool>) {
    loop {
        let Some(interval) = pool.upgrade().map(|p| p.config.health_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let timeout = pool.config.per_try_timeout;
        for endpoint in pool.endpoints.iter().filter(|e| e.due_for_check()) {
            if endpoint.serving(timeout).await {
                endpoint.on_health_serving();
            }
        }
    }
}
