//! The gateway's integration tests: the real router in process.

mod connections;
mod tls;
mod waf;
