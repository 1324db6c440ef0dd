//! Schemas restored from a logical dump of another cluster: detected at
//! connect, repaired once by renumbering the stored positions.
//!
//! A position is `xid8 << 20 | index`, the appending transaction's id. A
//! `pg_dump` restored into another cluster keeps the positions but not the
//! transaction ids: when the new cluster's ids are younger, the stored
//! events sit above every id it has handed out. Readers, which stop below
//! the oldest running transaction, never see them; appends to their streams
//! fail forever (the stream's last position is "younger"); and new events
//! get positions below the old ones.

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Executor};

use crate::queries::{Queries, FIRST_REBASED};
use crate::setup::SetupError;

/// What [`PgEventStoreBuilder::rebase_after_restore`](crate::PgEventStoreBuilder::rebase_after_restore) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebaseReport {
    /// Events renumbered (0 when the schema needed no rebase).
    pub events: u64,
    /// The highest position before.
    pub highest_before: u64,
    /// The highest position after.
    pub highest_after: u64,
}

/// The highest stored position (events and checkpoints) and the cluster's
/// next transaction id.
async fn positions(conn: &mut PgConnection, queries: &Queries) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(&queries.stored_positions)
        .fetch_one(&mut *conn)
        .await
}

/// Refuses a schema whose positions are above what this cluster's
/// transaction ids can have produced.
pub(crate) async fn check(pool: &PgPool, queries: &Queries) -> Result<(), SetupError> {
    let schema = queries.schema.as_str();
    let mut conn = pool.acquire().await.map_err(SetupError::Connect)?;
    let (highest, next_xid) =
        positions(&mut conn, queries)
            .await
            .map_err(|source| SetupError::Migration {
                version: 0,
                description: "checking stored positions against the cluster",
                source,
            })?;
    if highest >> 20 >= next_xid {
        return Err(SetupError::RestoredFromAnotherCluster {
            schema: schema.to_owned(),
            highest_position: highest as u64,
            next_transaction_id: next_xid as u64,
        });
    }
    Ok(())
}

/// Renumbers the positions of a restored schema, in one transaction.
pub(crate) async fn rebase(url: &str, queries: &Queries) -> Result<RebaseReport, SetupError> {
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(SetupError::Connect)?;
    let result = rebase_on(&mut conn, queries).await;
    let _ = conn.close().await;
    result
}

async fn rebase_on(conn: &mut PgConnection, queries: &Queries) -> Result<RebaseReport, SetupError> {
    let schema = queries.schema.as_str();
    let failed = |reason: String| SetupError::RebaseFailed {
        schema: schema.to_owned(),
        reason,
    };
    let db = |e: sqlx::Error| failed(e.to_string());
    let mut tx = conn.begin().await.map_err(SetupError::Connect)?;
    // Nobody appends, reads or moves a checkpoint meanwhile.
    tx.execute(queries.lock_for_rebase.as_str())
        .await
        .map_err(db)?;
    let (highest, next_xid) = positions(&mut tx, queries).await.map_err(db)?;
    if highest >> 20 < next_xid {
        return Ok(RebaseReport {
            events: 0,
            highest_before: highest as u64,
            highest_after: highest as u64,
        });
    }
    // Rebased positions stay below the oldest transaction running now, so
    // every later append (even of a transaction already running) lands
    // above them, and readers can read them at once.
    let (count, oldest_xid): (i64, i64) = sqlx::query_as(&queries.rebase_count)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    if FIRST_REBASED + count > oldest_xid << 20 {
        return Err(failed(format!(
            "{count} events do not fit below this cluster's oldest transaction id \
             {oldest_xid} (2^20 events per transaction id): run at least {} transactions \
             (for example `SELECT pg_current_xact_id()`, each on its own) and try again",
            ((FIRST_REBASED + count) >> 20) + 1 - oldest_xid
        )));
    }
    // Old → new, in log order (see `Queries::rebase`).
    tx.execute(queries.rebase.as_str()).await.map_err(db)?;
    let (after,): (i64,) = sqlx::query_as(&queries.max_position)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::warn!(
        schema,
        events = count,
        highest_before = highest,
        highest_after = after,
        "rebased the positions of a restored schema; reset checkpoints kept outside the database"
    );
    Ok(RebaseReport {
        events: count as u64,
        highest_before: highest as u64,
        highest_after: after as u64,
    })
}
