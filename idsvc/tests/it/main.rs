//! idsvc's integration tests: one conformance suite, run on SQLite and on a
//! real MariaDB (`IDBASE_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`), each test on a fresh database.

mod conformance;
mod harness;
mod migration;
mod reflection;
