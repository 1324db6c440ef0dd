//! Connecting, naming the schema, and the embedded, versioned migrations.

use sqlx::postgres::PgPool;
use sqlx::Executor;

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// Schema names are limited to lowercase ASCII letters, digits and `_`,
    /// starting with a letter or `_`, at most 50 bytes (the LISTEN channel
    /// adds a suffix within PostgreSQL's 63-byte limit).
    #[error("invalid schema name {0:?}: use 1 to 50 of a-z, 0-9 and _, not starting with a digit")]
    InvalidSchemaName(String),
    /// The server could not be reached.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed; the schema is left as it was before it.
    #[error("migration {version} ({description}) failed: {source}")]
    Migration {
        /// The migration's version.
        version: i32,
        /// What it does.
        description: &'static str,
        /// The server's error.
        #[source]
        source: sqlx::Error,
    },
}

/// The migrations, in order. Each runs once per schema, in a transaction,
/// under an advisory lock, and is recorded in `schema_migrations`.
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "streams, events, snapshots, append_events(), readable_bound()",
        include_str!("schema.sql"),
    ),
    (
        2,
        "projections, parked_events",
        include_str!("projections.sql"),
    ),
];

pub(crate) fn check_schema_name(name: &str) -> Result<(), SetupError> {
    let valid = !name.is_empty()
        && name.len() <= 50
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(SetupError::InvalidSchemaName(name.to_owned()))
    }
}

/// The LISTEN/NOTIFY channel of a schema.
pub(crate) fn channel(schema: &str) -> String {
    format!("{schema}_events")
}

/// Applies the migrations a schema lacks. Safe to run from many processes
/// at once and any number of times.
pub(crate) async fn migrate(pool: &PgPool, schema: &str) -> Result<(), SetupError> {
    let failed = |version, description, source| SetupError::Migration {
        version,
        description,
        source,
    };
    let setup = |source| failed(0, "migration bookkeeping", source);
    let mut tx = pool.begin().await.map_err(SetupError::Connect)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("es-postgres migrations of {schema}"))
        .execute(&mut *tx)
        .await
        .map_err(setup)?;
    // `Executor::execute` with plain text runs several statements, and its
    // future is `Send` (that of `sqlx::raw_sql` is not), so connecting works
    // from a spawned task.
    let bookkeeping = format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".schema_migrations (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    );
    tx.execute(bookkeeping.as_str()).await.map_err(setup)?;
    let applied: Vec<i32> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{schema}\".schema_migrations"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(setup)?;
    for &(version, description, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let sql = sql
            .replace("__SCHEMA__", &format!("\"{schema}\""))
            .replace("__CHANNEL__", &channel(schema));
        tx.execute(sql.as_str())
            .await
            .map_err(|e| failed(version, description, e))?;
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".schema_migrations (version, description) VALUES ($1, $2)"
        ))
        .bind(version)
        .bind(description)
        .execute(&mut *tx)
        .await
        .map_err(|e| failed(version, description, e))?;
        tracing::info!(schema, version, description, "applied migration");
    }
    tx.commit().await.map_err(setup)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["es", "billing_events", "_x", "a1"] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "Es", "a-b", "a\"b", "a;drop", &"x".repeat(51)] {
            assert!(
                matches!(
                    check_schema_name(bad),
                    Err(SetupError::InvalidSchemaName(_))
                ),
                "{bad}"
            );
        }
    }
}
