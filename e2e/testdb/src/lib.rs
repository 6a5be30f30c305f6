//! Throwaway MariaDB databases for tests and benchmarks.
//!
//! [`fresh_mysql_database`] creates an empty database on the server named by
//! `IDBASE_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`) and
//! returns a guard that drops it again when it goes out of scope, whether the
//! test passed or panicked. Set `IDBASE_TEST_KEEP_DATABASES=1` to keep them
//! for a post-mortem; the guard then prints each one's name.

use anyhow::Context;
use rand::Rng;
use sqlx::{Connection, MySqlConnection};
use std::sync::mpsc;
use std::time::Duration;

/// How long a dropped guard waits for `DROP DATABASE`. Dropping a benchmark's
/// millions of rows takes seconds; past this the database is left behind and
/// the guard says so rather than hanging the test.
const DROP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `DROP DATABASE` may wait for a table lock (MariaDB's
/// `lock_wait_timeout`, in seconds). A test that panicked inside a
/// transaction can hold one until its runtime is gone; failing fast leaves
/// that one database behind instead of stalling the run.
const LOCK_WAIT_SECONDS: u32 = 10;

/// An empty MariaDB database that is dropped with this guard.
///
/// Dereferences to the database's URL, so it goes wherever a `&str` URL
/// does; keep the guard alive for as long as anything uses the database.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    server: String,
    name: String,
}

/// Creates an empty database on the MariaDB server (`IDBASE_TEST_MYSQL_URL`).
pub async fn fresh_mysql_database() -> anyhow::Result<TestDatabase> {
    let server = std::env::var("IDBASE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    // Callers often open the URL through `sqlx::Any`.
    sqlx::any::install_default_drivers();
    let mut conn = MySqlConnection::connect(&server).await.with_context(|| {
        format!(
            "MariaDB is unreachable at {server}. Start it with `start-stop-daemon --start --oknodo \
             --background --exec /usr/sbin/mariadbd` or set IDBASE_TEST_MYSQL_URL."
        )
    })?;
    let name = format!("idbase_t_{:016x}", rand::thread_rng().r#gen::<u64>());
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    Ok(TestDatabase {
        url: format!("{base}/{name}"),
        server,
        name,
    })
}

impl TestDatabase {
    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl std::ops::Deref for TestDatabase {
    type Target = str;

    fn deref(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("IDBASE_TEST_KEEP_DATABASES").is_some_and(|v| v != "0") {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        // The guard is usually dropped on an async runtime's thread, where
        // blocking on that runtime would deadlock and starting another one
        // panics; so the drop runs on its own thread with its own runtime,
        // and this thread only waits (boundedly) for it to finish.
        let (server, name) = (self.server.clone(), self.name.clone());
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(drop_database(&server, &name));
        });
        match finished.recv_timeout(DROP_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test database {} left behind: {e:#}", self.name),
            Err(_) => eprintln!(
                "test database {} left behind: DROP DATABASE took over {DROP_TIMEOUT:?}",
                self.name
            ),
        }
    }
}

fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut conn = MySqlConnection::connect(server).await?;
        sqlx::raw_sql(&format!(
            "SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}; DROP DATABASE IF EXISTS {name}"
        ))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(name: &str) -> bool {
        let server = std::env::var("IDBASE_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
        let mut conn = MySqlConnection::connect(&server).await.unwrap();
        let found: Option<String> = sqlx::query_scalar(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ?",
        )
        .bind(name)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        found.is_some()
    }

    #[tokio::test]
    async fn the_database_lives_as_long_as_its_guard() {
        let database = fresh_mysql_database().await.unwrap();
        let name = database.name.clone();
        let mut conn = MySqlConnection::connect(&database).await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)")
            .execute(&mut conn)
            .await
            .unwrap();
        assert!(exists(&name).await);

        // Dropped on the test's single-threaded runtime, with a connection
        // to it still open: neither may stall the drop.
        drop(database);
        assert!(!exists(&name).await, "{name} is still there");
        conn.close().await.unwrap();
    }
}
