//! Fresh stores and services for tests.

use idsvc::crypto::{HashingPool, KeyRing, PasswordParams};
use idsvc::domain::{IdentityService, ManualClock, Policy};
use idsvc::store::SqlStore;
use rand::Rng;
use sqlx::Connection;
use std::sync::Arc;

pub struct Harness {
    pub service: IdentityService,
    pub store: Arc<SqlStore>,
    pub clock: Arc<ManualClock>,
    /// The store's URL, for jobs run through the `idbase migrate` CLI code.
    pub database_url: String,
    policy: Policy,
    dir: tempfile::TempDir,
}

pub enum Backend {
    Sqlite,
    MySql,
}

fn mysql_server_url() -> String {
    std::env::var("IDBASE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// Creates an empty database on the MariaDB server and returns its URL.
pub async fn fresh_mysql_database() -> String {
    let server = mysql_server_url();
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&server)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MariaDB is unreachable at {server} ({e}). Start it with \
             `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd` \
             or set IDBASE_TEST_MYSQL_URL."
            )
        });
    let name = format!("idbase_t_{:016x}", rand::thread_rng().r#gen::<u64>());
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

impl Harness {
    /// Where the SQLite files live (the keys dir too).
    pub fn store_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub async fn new(backend: Backend) -> Self {
        Self::with_policy(backend, Policy::default()).await
    }

    pub async fn with_policy(backend: Backend, policy: Policy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("idbase.db").display()),
            Backend::MySql => fresh_mysql_database().await,
        };
        let keys_dir = dir.path().join("keys");
        KeyRing::generate(&keys_dir).unwrap();
        let keys = KeyRing::load(&keys_dir).unwrap();
        let store = Arc::new(SqlStore::connect(&url).await.unwrap());
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        // Cheap argon2 so the suite is fast; the parameters are still argon2id.
        let hashing = HashingPool::new(PasswordParams::CHEAP, 2, 256).unwrap();
        let service =
            IdentityService::new(store.clone(), clock.clone(), &keys, hashing, policy.clone())
                .unwrap();
        Self {
            service,
            store,
            clock,
            database_url: url,
            policy,
            dir,
        }
    }

    /// A second service over the same store, keys and policy, shareable
    /// across tasks (the migration jobs take an `Arc`).
    pub fn shared_service(&self) -> Arc<IdentityService> {
        let keys = KeyRing::load(&self.dir.path().join("keys")).unwrap();
        let hashing = HashingPool::new(PasswordParams::CHEAP, 2, 256).unwrap();
        Arc::new(
            IdentityService::new(
                self.store.clone(),
                self.clock.clone(),
                &keys,
                hashing,
                self.policy.clone(),
            )
            .unwrap(),
        )
    }
}
