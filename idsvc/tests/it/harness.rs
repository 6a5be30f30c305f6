//! Fresh stores and services for tests.

use idsvc::crypto::{HashingPool, KeyRing, PasswordParams};
use idsvc::domain::{IdentityService, ManualClock, Policy};
use idsvc::store::SqlStore;
use std::sync::Arc;
use testdb::TestDatabase;
pub use testdb::fresh_mysql_database;

pub struct Harness {
    pub service: IdentityService,
    pub store: Arc<SqlStore>,
    pub clock: Arc<ManualClock>,
    /// The store's URL, for jobs run through the `idbase migrate` CLI code.
    pub database_url: String,
    policy: Policy,
    dir: tempfile::TempDir,
    /// Drops the MariaDB database once everything above is gone.
    _database: Option<TestDatabase>,
}

pub enum Backend {
    Sqlite,
    MySql,
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
        let (url, database) = match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("idbase.db").display());
                (url, None)
            }
            Backend::MySql => {
                let database = fresh_mysql_database().await.unwrap();
                (database.url().to_owned(), Some(database))
            }
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
            _database: database,
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
