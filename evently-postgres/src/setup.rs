//! Connecting, naming the schema, and the embedded, versioned migrations.

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Executor;

use crate::queries::{
    Queries, SchemaName, BOOKKEEPING, FINGERPRINT, MIGRATION_LOCK, ROLLBACK_ADOPT, SAVEPOINT_ADOPT,
};

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
    /// A migration recorded in the schema is not the one this build has
    /// under that version: released migrations never change, so the
    /// database and the code disagree about what the schema holds.
    #[error(
        "migration {version} ({description}) applied to schema {schema:?} differs from this \
         build's: checksum {applied} in the database, {expected} in the code"
    )]
    MigrationChanged {
        /// The schema.
        schema: String,
        /// The migration's version.
        version: i32,
        /// What this build's migration of that version does.
        description: &'static str,
        /// The SHA-256 of the applied migration, in hex.
        applied: String,
        /// The SHA-256 of this build's migration, in hex.
        expected: String,
    },
    /// The schema records a migration this build does not have: a newer
    /// build migrated it.
    #[error(
        "schema {schema:?} has migration {version}, which this build does not know: \
         a newer build migrated it"
    )]
    UnknownMigration {
        /// The schema.
        schema: String,
        /// The unknown version.
        version: i32,
    },
    /// The schema was created by a build that recorded no checksums, and
    /// its tables, indexes or functions are not those of the released
    /// migrations it records (migration 1 was edited in place before it
    /// was released): it is not adopted, and nothing is changed.
    #[error(
        "schema {schema:?} records migrations {versions:?} (without checksums) but differs \
         from them as released: {}", differences.join("; ")
    )]
    LegacySchemaDiffers {
        /// The schema.
        schema: String,
        /// The migrations it records.
        versions: Vec<i32>,
        /// What is missing or different, one object per entry.
        differences: Vec<String>,
    },
    /// `migrate(false)`: the schema holds no event store, and this store
    /// may not create one.
    #[error(
        "schema {schema:?} holds no event store and this store does not run DDL \
         (migrate(false)): run the migrations first (PgEventStoreBuilder::migrate_only)"
    )]
    SchemaMissing {
        /// The schema.
        schema: String,
    },
    /// `migrate(false)`: the schema lacks migrations this build needs (or
    /// was created by a build that recorded no checksums), and this store
    /// may not apply them.
    #[error(
        "schema {schema:?} lacks migrations {missing:?} and this store does not run DDL \
         (migrate(false)): run the migrations first (PgEventStoreBuilder::migrate_only)"
    )]
    SchemaBehind {
        /// The schema.
        schema: String,
        /// The migrations to apply.
        missing: Vec<i32>,
    },
    /// The schema's stored positions are above every transaction id this
    /// cluster has handed out: it was restored from a logical dump of
    /// another cluster (`pg_dump`/`pg_restore`). Run
    /// [`PgEventStoreBuilder::rebase_after_restore`](crate::PgEventStoreBuilder::rebase_after_restore)
    /// once, before any writer, then reset checkpoints kept outside the
    /// database.
    #[error(
        "schema {schema:?} holds positions up to {highest_position} (transaction id {}), but \
         this cluster's next transaction id is {next_transaction_id}: it was restored from a \
         dump of another cluster. Its events would be invisible and appends to them fail; run \
         PgEventStoreBuilder::rebase_after_restore once, before any writer, then reset \
         consumer checkpoints kept outside the database", highest_position >> 20
    )]
    RestoredFromAnotherCluster {
        /// The schema.
        schema: String,
        /// The highest position stored (an event's or a checkpoint's).
        highest_position: u64,
        /// The cluster's next transaction id (`pg_snapshot_xmax`).
        next_transaction_id: u64,
    },
    /// [`PgEventStoreBuilder::rebase_after_restore`](crate::PgEventStoreBuilder::rebase_after_restore)
    /// failed; nothing was changed.
    #[error("cannot rebase the positions of schema {schema:?}: {reason}")]
    RebaseFailed {
        /// The schema.
        schema: String,
        /// Why.
        reason: String,
    },
}

/// What [`PgEventStoreBuilder::migrate_only`](crate::PgEventStoreBuilder::migrate_only) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The migrations applied now, in order (empty when the schema was up
    /// to date).
    pub applied: Vec<i32>,
    /// The schema was created by a build that recorded no checksums: its
    /// tables, indexes and functions were checked against the released
    /// migrations it records, and their checksums recorded.
    pub adopted: bool,
}

/// The migrations, in order. Each runs once per schema, in a transaction,
/// under an advisory lock, and is recorded in `schema_migrations` with the
/// SHA-256 of its text. A released migration never changes (a unit test
/// pins the checksums): a fix is a new migration.
///
/// Placeholders: `__SCHEMA__` (the quoted schema), `__SCHEMA_NAME__` (its
/// bare name, inside a literal) and `__CHANNEL__` (the NOTIFY channel).
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
    (
        3,
        "per-schema stream lock keys, taken in key order",
        include_str!("migration_3_lock_keys.sql"),
    ),
    (4, "deadlines", include_str!("migration_4_deadlines.sql")),
];

/// The last migration released before checksums were recorded: a schema
/// without checksums records at most these.
const LAST_WITHOUT_CHECKSUMS: i32 = 2;

/// The SHA-256 of a migration's text (before its placeholders are filled).
fn checksum(sql: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(sql.as_bytes()).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A migration's SQL for `schema`, announcing on `channel`.
fn render(sql: &str, schema: &SchemaName, channel: &str) -> String {
    sql.replace("__SCHEMA_NAME__", schema.as_str())
        .replace("__SCHEMA__", &schema.quoted())
        .replace("__CHANNEL__", channel)
}

/// The bookkeeping of a schema, as found.
struct Bookkeeping {
    /// `schema_migrations` exists.
    table: bool,
    /// It has the `checksum` column.
    checksums: bool,
}

async fn bookkeeping(conn: &mut PgConnection, schema: &str) -> Result<Bookkeeping, sqlx::Error> {
    let (table, checksums): (bool, bool) = sqlx::query_as(BOOKKEEPING)
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Bookkeeping { table, checksums })
}

/// Checks the applied migrations against this build's; returns the
/// versions still to apply.
fn compare(schema: &str, applied: &[(i32, Vec<u8>)]) -> Result<Vec<i32>, SetupError> {
    for (version, sum) in applied {
        let Some(&(_, description, sql)) = MIGRATIONS.iter().find(|m| m.0 == *version) else {
            return Err(SetupError::UnknownMigration {
                schema: schema.to_owned(),
                version: *version,
            });
        };
        let expected = checksum(sql);
        if *sum != expected {
            return Err(SetupError::MigrationChanged {
                schema: schema.to_owned(),
                version: *version,
                description,
                applied: hex(sum),
                expected: hex(&expected),
            });
        }
    }
    Ok(MIGRATIONS
        .iter()
        .map(|m| m.0)
        .filter(|v| !applied.iter().any(|(a, _)| a == v))
        .collect())
}

fn bookkeeping_failed(source: sqlx::Error) -> SetupError {
    SetupError::Migration {
        version: 0,
        description: "migration bookkeeping",
        source,
    }
}

/// Applies the migrations a schema lacks, after checking that the applied
/// ones are this build's (adopting a schema made before checksums). Safe
/// to run from many processes at once and any number of times.
pub(crate) async fn migrate(
    pool: &PgPool,
    queries: &Queries,
) -> Result<MigrationReport, SetupError> {
    let schema = queries.schema.as_str();
    let failed = |version, description, source| SetupError::Migration {
        version,
        description,
        source,
    };
    let setup = bookkeeping_failed;
    let mut tx = pool.begin().await.map_err(SetupError::Connect)?;
    sqlx::query(MIGRATION_LOCK)
        .bind(format!("evently-postgres migrations of {schema}"))
        .execute(&mut *tx)
        .await
        .map_err(setup)?;
    let found = bookkeeping(&mut tx, schema).await.map_err(setup)?;
    let mut adopted = false;
    if !found.table {
        // `Executor::execute` with plain text runs several statements, and
        // its future is `Send` (that of `sqlx::raw_sql` is not), so
        // connecting works from a spawned task.
        tx.execute(queries.create_bookkeeping.as_str())
            .await
            .map_err(setup)?;
    } else if !found.checksums {
        adopt(&mut tx, queries).await?;
        adopted = true;
    }
    let applied: Vec<(i32, Vec<u8>)> = sqlx::query_as(&queries.applied_migrations)
        .fetch_all(&mut *tx)
        .await
        .map_err(setup)?;
    let missing = compare(schema, &applied)?;
    for &(version, description, sql) in MIGRATIONS {
        if !missing.contains(&version) {
            continue;
        }
        let rendered = render(sql, &queries.schema, &queries.schema.channel());
        tx.execute(rendered.as_str())
            .await
            .map_err(|e| failed(version, description, e))?;
        sqlx::query(&queries.record_migration)
            .bind(version)
            .bind(description)
            .bind(checksum(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| failed(version, description, e))?;
        tracing::info!(schema, version, description, "applied migration");
    }
    tx.commit().await.map_err(setup)?;
    Ok(MigrationReport {
        applied: missing,
        adopted,
    })
}

/// For `migrate(false)`: checks, without DDL, that the schema has every
/// migration of this build and that they are this build's.
pub(crate) async fn check(pool: &PgPool, queries: &Queries) -> Result<(), SetupError> {
    let schema = queries.schema.as_str();
    let setup = bookkeeping_failed;
    let mut conn = pool.acquire().await.map_err(SetupError::Connect)?;
    let found = bookkeeping(&mut conn, schema).await.map_err(setup)?;
    if !found.table {
        return Err(SetupError::SchemaMissing {
            schema: schema.to_owned(),
        });
    }
    if !found.checksums {
        let versions: Vec<i32> = sqlx::query_scalar(&queries.migration_versions)
            .fetch_all(&mut *conn)
            .await
            .map_err(setup)?;
        return Err(SetupError::SchemaBehind {
            schema: schema.to_owned(),
            missing: MIGRATIONS
                .iter()
                .map(|m| m.0)
                .filter(|v| !versions.contains(v))
                .collect(),
        });
    }
    let applied: Vec<(i32, Vec<u8>)> = sqlx::query_as(&queries.applied_migrations)
        .fetch_all(&mut *conn)
        .await
        .map_err(setup)?;
    let missing = compare(schema, &applied)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SetupError::SchemaBehind {
            schema: schema.to_owned(),
            missing,
        })
    }
}

async fn fingerprint(conn: &mut PgConnection, schema: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(FINGERPRINT)
        .bind(schema)
        .fetch_all(&mut *conn)
        .await
}

/// Adopts a schema created by a build that recorded no checksums: builds
/// the released migrations it records in a scratch schema (rolled back),
/// and records their checksums if none of the scratch schema's columns,
/// constraints, indexes and functions is missing or different in it.
async fn adopt(tx: &mut PgConnection, queries: &Queries) -> Result<(), SetupError> {
    let schema = queries.schema.as_str();
    let setup = |source| SetupError::Migration {
        version: 0,
        description: "adopting a schema without checksums",
        source,
    };
    let versions: Vec<i32> = sqlx::query_scalar(&queries.migration_versions)
        .fetch_all(&mut *tx)
        .await
        .map_err(setup)?;
    if let Some(&version) = versions
        .iter()
        .find(|&&v| !(1..=LAST_WITHOUT_CHECKSUMS).contains(&v))
    {
        return Err(SetupError::UnknownMigration {
            schema: schema.to_owned(),
            version,
        });
    }
    let scratch = SchemaName::new(&format!("es_adopt_{}", uuid::Uuid::now_v7().simple()))?;
    tx.execute(SAVEPOINT_ADOPT).await.map_err(setup)?;
    for &(version, description, sql) in MIGRATIONS {
        if versions.contains(&version) {
            tx.execute(render(sql, &scratch, &queries.schema.channel()).as_str())
                .await
                .map_err(|source| SetupError::Migration {
                    version,
                    description,
                    source,
                })?;
        }
    }
    let expected = fingerprint(tx, scratch.as_str()).await.map_err(setup)?;
    tx.execute(ROLLBACK_ADOPT).await.map_err(setup)?;
    let actual = fingerprint(tx, schema).await.map_err(setup)?;
    let differences: Vec<String> = expected
        .iter()
        .filter(|line| !actual.contains(line))
        .map(|line| format!("missing or different: {line}"))
        .collect();
    if !differences.is_empty() {
        return Err(SetupError::LegacySchemaDiffers {
            schema: schema.to_owned(),
            versions,
            differences,
        });
    }
    tx.execute(queries.add_checksums.as_str())
        .await
        .map_err(setup)?;
    for &(version, _, sql) in MIGRATIONS {
        if versions.contains(&version) {
            sqlx::query(&queries.record_checksum)
                .bind(version)
                .bind(checksum(sql))
                .execute(&mut *tx)
                .await
                .map_err(setup)?;
        }
    }
    tx.execute(queries.checksums_not_null.as_str())
        .await
        .map_err(setup)?;
    tracing::info!(
        schema,
        ?versions,
        "adopted a schema without migration checksums"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Released migrations never change: a database that applied one
    /// records its checksum and refuses a build whose text differs. A fix
    /// is a new migration. (Change this list only by appending to it.)
    #[test]
    fn released_migrations_never_change() {
        let released: &[(i32, &str)] = &[
            (
                1,
                "41119f9780946ebeea2a25d8ac1639b70985fd878a15cdb597a5fb60c6351c3a",
            ),
            (
                2,
                "2545b9727d0f2771a4716808d62c37a6c3e7b9914452f5240dcd6dd43c0328f6",
            ),
            (
                3,
                "f3246d682eb567929fe23ef31f7fe0025cb2d8a8b8fd953529d9892c23deb84d",
            ),
        ];
        for (version, pinned) in released {
            let (_, _, sql) = MIGRATIONS.iter().find(|m| m.0 == *version).unwrap();
            assert_eq!(hex(&checksum(sql)), *pinned, "migration {version} changed");
        }
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
    }
}
