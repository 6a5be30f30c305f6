//! End-to-end: the built binary as idsvc and gateway processes on MariaDB,
//! driven over HTTP like a mobile app and the legacy web tier would.

mod api;
mod edge;
mod failover;
