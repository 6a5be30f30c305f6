//! Which endpoint served a request and after how many retries, for the access
//! log: `report` scopes a slot around the handler, [`Upstream::call`] fills
//! it, and the response carries it out as an [`Served`] extension that
//! `telemetry::observe` reads.
//!
//! [`Upstream::call`]: super::Upstream::call

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::{Arc, Mutex, PoisonError};

/// The last idsvc endpoint tried for the request, and the retries its calls
/// took in total.
#[derive(Clone, Debug, Default)]
pub struct Served {
    pub endpoint: Option<Arc<str>>,
    pub retries: u32,
}

type Slot = Arc<Mutex<Served>>;

tokio::task_local! {
    static SLOT: Slot;
}

/// Notes a call's endpoint and retries (a no-op outside `report`).
pub fn record(endpoint: &Arc<str>, retries: u32) {
    let _ = SLOT.try_with(|slot| {
        let mut served = slot.lock().unwrap_or_else(PoisonError::into_inner);
        served.endpoint = Some(endpoint.clone());
        served.retries = served.retries.saturating_add(retries);
    });
}

/// Middleware: runs the handler with a slot and returns what was recorded as
/// a response extension.
pub async fn report(request: Request, next: Next) -> Response {
    let slot = Slot::default();
    let mut response = SLOT.scope(slot.clone(), next.run(request)).await;
    let served = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if served.endpoint.is_some() {
        response.extensions_mut().insert(served);
    }
    response
}
