//! The gateway's integration tests: the real router in process.

mod tls;
mod waf;
