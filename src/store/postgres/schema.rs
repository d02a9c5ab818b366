//! Schema names and the connection-level setup steps that use them.

use sqlx::{AssertSqlSafe, Connection, postgres::PgConnection};

use super::{MAX_SCHEMA_LEN, sql::describe};
use crate::store::StoreError;

/// A schema name safe to put, double-quoted, into DDL: 1 to
/// [`MAX_SCHEMA_LEN`] characters of `[a-z0-9_]`, starting with a letter or
/// `_`, and not `pg_…` (reserved by PostgreSQL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SchemaName(String);

impl SchemaName {
    pub(super) fn parse(name: &str) -> Result<Self, StoreError> {
        let mut chars = name.chars();
        let plain = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain || name.len() > MAX_SCHEMA_LEN || name.starts_with("pg_") {
            return Err(StoreError::Unavailable(format!(
                "postgres: invalid schema name {name:?}: use 1 to {MAX_SCHEMA_LEN} of a-z, 0-9 \
                 and _, starting with a letter or _, not pg_"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Ends a connection whose work is done. A failure to say goodbye changes
/// nothing: the connection is dropped and the server ends the session anyway.
pub(super) async fn close_quietly(conn: PgConnection) {
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %describe(&e), "postgres: closing a setup connection");
    }
}

/// Creates `schema` unless it exists.
///
/// `IF NOT EXISTS` is not race-free: two sessions that both find the schema
/// missing both insert it into the catalog, and the later one fails with
/// `unique_violation` (or `duplicate_schema`) once the first commits. Either
/// way the schema now exists, which is all this asks.
pub(super) async fn create_schema(
    setup: &mut PgConnection,
    schema: &SchemaName,
) -> Result<(), StoreError> {
    // DDL takes no bind parameters; the name is a checked identifier.
    let ddl = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", schema.as_str());
    match sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *setup).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("23505" | "42P06")) => {
            Ok(())
        }
        Err(e) => Err(StoreError::Unavailable(format!(
            "postgres: cannot create schema {}: {}",
            schema.as_str(),
            describe(&e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["signet", "_x", "t_123_456_7", &"a".repeat(MAX_SCHEMA_LEN)] {
            assert!(SchemaName::parse(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "1abc",
            "Signet",
            "a-b",
            "a\"b",
            "a; DROP SCHEMA public",
            "pg_catalog",
            "é",
            &"a".repeat(MAX_SCHEMA_LEN + 1),
        ] {
            assert!(SchemaName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
