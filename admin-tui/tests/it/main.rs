//! The admin client against a test double of idsvc's `Phases` service on
//! loopback: real gRPC, real TLS, the exit codes a script sees.

// Test helpers outside #[test] functions may unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

mod double;
mod phase;
mod tls;
