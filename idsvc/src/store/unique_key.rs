//! Which unique key a write collided with, recognised by the key's name: the
//! domain acts on two collisions (a taken email, a held idempotency key) and
//! treats every other one, a duplicate id included, as a database error.

/// A unique key as each backend names it in its errors.
pub(super) struct UniqueKey {
    /// The index name; MySQL reports it (`PRIMARY` for a primary key).
    mysql: &'static str,
    /// `table.column`: SQLite names the columns, not the index.
    sqlite: &'static str,
}

/// `users.email_index`: one member per email.
pub(super) const USERS_EMAIL: UniqueKey = UniqueKey {
    mysql: "users_email_index",
    sqlite: "users.email_index",
};

/// `registration_keys`' primary key: one registration per idempotency key.
pub(super) const REGISTRATION_KEY: UniqueKey = UniqueKey {
    mysql: "PRIMARY",
    sqlite: "registration_keys.key_hash",
};

/// `legacy_exchanges`' primary key: one session per legacy refresh token.
pub(super) const LEGACY_EXCHANGE: UniqueKey = UniqueKey {
    mysql: "PRIMARY",
    sqlite: "legacy_exchanges.legacy_token_sha256",
};

impl UniqueKey {
    /// True when `err` is a unique-key violation of this key.
    pub(super) fn violated_by(&self, err: &sqlx::Error) -> bool {
        violated_key(err).is_some_and(|name| name == self.mysql || name == self.sqlite)
    }
}

/// The name of the unique key a write collided with; `None` for any other
/// error. The driver's constraint name where it gives one, else the name in
/// the message.
fn violated_key(err: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    if !db.is_unique_violation() {
        return None;
    }
    match db.constraint() {
        Some(name) => Some(name.to_owned()),
        None => key_in_message(db.message()).map(str::to_owned),
    }
}

/// The key named in a unique-violation message, as SQLite and MySQL write
/// them (neither driver fills in `DatabaseError::constraint`):
/// - SQLite: `UNIQUE constraint failed: users.email_index`;
/// - MySQL/MariaDB error 1062: `Duplicate entry '…' for key 'users_email_index'`,
///   which MySQL 8 qualifies with the table (`'users.users_email_index'`).
fn key_in_message(message: &str) -> Option<&str> {
    if let Some(columns) = message.strip_prefix("UNIQUE constraint failed: ") {
        return Some(columns);
    }
    // The last occurrence: the duplicated value itself may contain the phrase.
    let (_, quoted) = message.rsplit_once(" for key '")?;
    let key = quoted.strip_suffix('\'')?;
    Some(key.rsplit_once('.').map_or(key, |(_, name)| name))
}

#[cfg(test)]
mod tests {
    use super::key_in_message;

    #[test]
    fn sqlite_names_the_columns() {
        assert_eq!(
            key_in_message("UNIQUE constraint failed: users.email_index"),
            Some("users.email_index")
        );
    }

    #[test]
    fn mariadb_names_the_key() {
        assert_eq!(
            key_in_message("Duplicate entry '\\x01\\x02' for key 'users_email_index'"),
            Some("users_email_index")
        );
        assert_eq!(
            key_in_message("Duplicate entry 'x' for key 'PRIMARY'"),
            Some("PRIMARY")
        );
    }

    #[test]
    fn mysql_8_qualifies_the_key_with_its_table() {
        assert_eq!(
            key_in_message("Duplicate entry 'x' for key 'users.users_email_index'"),
            Some("users_email_index")
        );
    }

    #[test]
    fn a_value_that_looks_like_a_key_does_not_fool_it() {
        assert_eq!(
            key_in_message("Duplicate entry 'a for key 'PRIMARY'' for key 'users_email_index'"),
            Some("users_email_index")
        );
    }

    #[test]
    fn other_messages_name_no_key() {
        assert_eq!(
            key_in_message("Deadlock found when trying to get lock"),
            None
        );
        assert_eq!(
            key_in_message("NOT NULL constraint failed: users.email_index"),
            None
        );
    }
}
