//! The zero-downtime migration toolkit (`idbase migrate …`): legacy sources
//! and their mapping, the transformation of a legacy row into the row a
//! double write would store.

pub mod mapping;
pub mod source;
pub mod transform;

pub use mapping::Mapping;
pub use source::{Record, Source};
pub use transform::{LegacyRecord, Transformer};
