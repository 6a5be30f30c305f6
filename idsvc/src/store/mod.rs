//! Storage backends for the domain's [`Store`](crate::domain::Store) trait.
//!
//! One implementation of the trait, [`SqlStore`], runs on two backends
//! through sqlx's `Any` driver: SQLite (embedded default) and the MySQL
//! protocol (Aurora MySQL 3, MySQL 8, MariaDB 10.11). Where their SQL differs
//! the [`Dialect`] says so; each backend has its own embedded migrations.

mod migration;
mod sql;
mod unique_key;

pub use sql::{Dialect, SqlStore};

use crate::domain::StoreError;

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(err.into())
    }
}

/// True when the database gave up on a transaction that may succeed if run
/// again: an InnoDB deadlock (SQLSTATE 40001) or SQLite being busy.
fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40001") | Some("5") | Some("6"))
        }
        _ => false,
    }
}
