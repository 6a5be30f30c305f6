//! The zero-downtime migration toolkit (`idbase migrate …`): legacy sources
//! and their mapping, the transformation of a legacy row into the row a
//! double write would store, and the jobs.

pub mod backfill;
pub mod bulkload;
pub mod checkpoint;
pub mod cli;
pub mod mapping;
pub mod progress;
pub mod purge;
pub mod reports;
pub mod source;
pub mod store;
pub mod store_scan;
pub mod transform;
pub mod validate;
pub mod validation;

pub use cli::{MigrateCommand, Outcome, run};
pub use mapping::Mapping;
pub use source::{Record, Source};
pub use store::MigrationStore;
pub use transform::{LegacyRecord, Transformer};

use crate::domain::IdentityService;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every job that reads the legacy source works with: the service (its
/// normalisation and double-write paths), idbase's store, the source and its
/// mapping, and the cancellation of the run.
pub struct SourceJob<'a> {
    pub service: Arc<IdentityService>,
    pub store: &'a dyn MigrationStore,
    pub source: &'a str,
    pub mapping: &'a Mapping,
    pub cancel: &'a CancellationToken,
}

impl<'a> SourceJob<'a> {
    pub fn new(
        service: Arc<IdentityService>,
        store: &'a dyn MigrationStore,
        source: &'a str,
        mapping: &'a Mapping,
        cancel: &'a CancellationToken,
    ) -> Self {
        Self {
            service,
            store,
            source,
            mapping,
            cancel,
        }
    }
}
