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
