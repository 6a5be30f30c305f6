//! idsvc's integration tests: the store's conformance suite and the migration
//! jobs, run on SQLite and on a real MariaDB (`IDBASE_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`), each test on a fresh database; and the
//! mTLS suite of the gRPC ports.

// Test helpers outside #[test] functions may unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

/// Runs each listed test, `async fn NAME(backend: Backend)` in the calling
/// module (which has `Backend` in scope), on SQLite and on MariaDB, as
/// `…::sqlite::NAME` and `…::mysql::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod mysql {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::MySql).await })*
        }
    };
}

mod admin;
mod conformance;
mod cutover;
mod hardening;
mod harness;
mod migration;
mod mtls;
mod phase_store;
mod phases;
mod reflection;
