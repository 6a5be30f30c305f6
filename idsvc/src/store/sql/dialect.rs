//! What SQLite and MySQL spell differently.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
}

impl Dialect {
    /// Row locks: InnoDB needs them; SQLite serialises writers anyway.
    pub(super) fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::MySql => " FOR UPDATE",
        }
    }

    /// How many writers a job may run at once when it asks for `wanted`:
    /// SQLite has one writer at a time, MySQL takes a few connections.
    pub fn concurrent_writers(self, wanted: usize) -> usize {
        match self {
            Self::Sqlite => 1,
            Self::MySql => wanted.clamp(1, 16),
        }
    }

    pub fn insert_ignore(self) -> &'static str {
        match self {
            Self::Sqlite => "INSERT OR IGNORE",
            Self::MySql => "INSERT IGNORE",
        }
    }

    /// Raises a tombstone's version, never lowers it.
    pub(super) fn upsert_tombstone(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "INSERT INTO tombstones (id, version, deleted_at) VALUES (?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET version = MAX(version, excluded.version), \
                 deleted_at = excluded.deleted_at"
            }
            Self::MySql => {
                "INSERT INTO tombstones (id, version, deleted_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE deleted_at = IF(VALUES(version) > version, VALUES(deleted_at), deleted_at), \
                 version = GREATEST(version, VALUES(version))"
            }
        }
    }

    /// Adds to a second's count of legacy traffic.
    pub(super) fn add_legacy_traffic(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "INSERT INTO legacy_traffic (kind, second, count) VALUES (?, ?, ?) \
                 ON CONFLICT (kind, second) DO UPDATE SET count = count + excluded.count"
            }
            Self::MySql => {
                "INSERT INTO legacy_traffic (kind, second, count) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE count = count + VALUES(count)"
            }
        }
    }

    /// Replaces a gateway's heartbeat row.
    pub(super) fn upsert_gateway_report(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "INSERT INTO gateway_reports (gateway_id, generation, writes_in_flight, \
                 endpoints_total, endpoints_serving, legacy_reachable, reported_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET \
                 generation = excluded.generation, writes_in_flight = excluded.writes_in_flight, \
                 endpoints_total = excluded.endpoints_total, \
                 endpoints_serving = excluded.endpoints_serving, \
                 legacy_reachable = excluded.legacy_reachable, reported_at = excluded.reported_at"
            }
            Self::MySql => {
                "INSERT INTO gateway_reports (gateway_id, generation, writes_in_flight, \
                 endpoints_total, endpoints_serving, legacy_reachable, reported_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
                 generation = VALUES(generation), writes_in_flight = VALUES(writes_in_flight), \
                 endpoints_total = VALUES(endpoints_total), \
                 endpoints_serving = VALUES(endpoints_serving), \
                 legacy_reachable = VALUES(legacy_reachable), reported_at = VALUES(reported_at)"
            }
        }
    }
}
