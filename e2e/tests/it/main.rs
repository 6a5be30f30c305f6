//! End-to-end: the built binary as idsvc and gateway processes on MariaDB,
//! driven over HTTP like a mobile app and the legacy web tier would.
//!
//! The `api` tests also run against a deployed gateway (a kind cluster) when
//! `IDBASE_E2E_GATEWAY_URL` names one (see `e2e::Target`); `edge` and
//! `failover` start their own processes, since they kill them or need
//! particular gateway flags; `admin_cli` runs `idbase admin phase` against
//! an `idbase dev` of its own.

// Test helpers outside #[test] functions may unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

mod admin_cli;
mod api;
mod contract;
mod cutover;
mod edge;
mod failover;
mod legacy;

/// The `idbase` that cargo built for this test run, with functional-test
/// argon2 costs.
fn options() -> e2e::Options<'static> {
    e2e::Options {
        binary: std::path::Path::new(env!("CARGO_BIN_EXE_idbase")),
        idsvc_args: e2e::CHEAP_ARGON2,
    }
}
