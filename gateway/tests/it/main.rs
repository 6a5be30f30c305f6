//! The gateway's integration tests: the real router in process.

// Test helpers outside #[test] functions may unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

mod connections;
mod legacy;
mod phase;
mod tls;
mod waf;
