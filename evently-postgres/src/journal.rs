//! The command journal and stream life cycle: rejected commands, look-ups
//! of recorded commands, closing and erasing streams.

use evently_core::{
    CommandRecord, JournalEntry, JournalOutcome, Metadata, Payload, StoreError, StreamId,
};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use crate::error::unavailable_or_backend;
use crate::PgEventStore;

fn entry(row: &PgRow) -> Result<JournalEntry, StoreError> {
    let stream_id: String = row.try_get(4).map_err(unavailable_or_backend)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        stream_id: StreamId::from(stream_id.as_str()),
        stream_version: 0,
        reason: format!("unreadable command journal row: {reason}"),
    };
    let get = |e: sqlx::Error| corrupt(e.to_string());
    let metadata: String = row.try_get(3).map_err(get)?;
    let metadata: Metadata = serde_json::from_str(&metadata).map_err(|e| corrupt(e.to_string()))?;
    let payload: Option<String> = row.try_get(2).map_err(get)?;
    let outcome: String = row.try_get(5).map_err(get)?;
    let outcome = if outcome == "accepted" {
        JournalOutcome::Accepted {
            first_version: row.try_get::<Option<i64>, _>(6).map_err(get)?.unwrap_or(0) as u64,
            last_version: row.try_get::<Option<i64>, _>(7).map_err(get)?.unwrap_or(0) as u64,
        }
    } else {
        JournalOutcome::Rejected {
            error: row
                .try_get::<Option<String>, _>(8)
                .map_err(get)?
                .unwrap_or_default(),
        }
    };
    Ok(JournalEntry {
        command: CommandRecord {
            command_id: row.try_get(0).map_err(get)?,
            command_type: row.try_get(1).map_err(get)?,
            payload: payload.map(Payload::from_json_unchecked),
            metadata,
        },
        stream_id: StreamId::from(stream_id.as_str()),
        outcome,
        recorded_at: row.try_get(9).map_err(get)?,
    })
}

pub(crate) async fn record_rejected(
    store: &PgEventStore,
    command: &CommandRecord,
    stream_id: &StreamId,
    error: &str,
) -> Result<(), StoreError> {
    let metadata =
        serde_json::to_string(&command.metadata).map_err(|e| StoreError::Backend(Box::new(e)))?;
    sqlx::query(&store.inner.queries.record_rejected)
        .bind(command.command_id)
        .bind(&command.command_type)
        .bind(stream_id.as_str())
        .bind(error)
        .bind(command.payload.as_ref().map(Payload::as_str))
        .bind(metadata)
        .execute(store.pool())
        .await
        .map_err(unavailable_or_backend)?;
    Ok(())
}

pub(crate) async fn find(
    store: &PgEventStore,
    command_id: uuid::Uuid,
) -> Result<Option<JournalEntry>, StoreError> {
    let row = sqlx::query(&store.inner.queries.find_command)
        .bind(command_id)
        .fetch_optional(store.pool())
        .await
        .map_err(unavailable_or_backend)?;
    row.as_ref().map(entry).transpose()
}

pub(crate) async fn of_stream(
    store: &PgEventStore,
    stream_id: &StreamId,
) -> Result<Vec<JournalEntry>, StoreError> {
    let rows = sqlx::query(&store.inner.queries.command_journal)
        .bind(stream_id.as_str())
        .fetch_all(store.pool())
        .await
        .map_err(unavailable_or_backend)?;
    rows.iter().map(entry).collect()
}

pub(crate) async fn close(
    store: &PgEventStore,
    stream_id: &StreamId,
    conn: &mut PgConnection,
) -> Result<(), StoreError> {
    sqlx::query(&store.inner.queries.close_stream)
        .bind(stream_id.as_str())
        .execute(conn)
        .await
        .map_err(unavailable_or_backend)?;
    Ok(())
}

/// Closes the stream, then replaces payloads with `{}` and keeps only the
/// metadata that is not personal (ids, timestamp), stamping `erased_at`.
pub(crate) async fn erase(store: &PgEventStore, stream_id: &StreamId) -> Result<u64, StoreError> {
    let q = &store.inner.queries;
    let mut tx = store.pool().begin().await.map_err(unavailable_or_backend)?;
    close(store, stream_id, &mut tx).await?;
    let erased = sqlx::query(&q.erase_events)
        .bind(stream_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(unavailable_or_backend)?;
    // Commands carry personal data too.
    sqlx::query(&q.erase_commands)
        .bind(stream_id.as_str())
        .bind(JournalOutcome::ERASED_ERROR)
        .execute(&mut *tx)
        .await
        .map_err(unavailable_or_backend)?;
    // A parked event's error text may quote the event's data.
    sqlx::query(&q.erase_parked)
        .bind(stream_id.as_str())
        .bind(JournalOutcome::ERASED_ERROR)
        .execute(&mut *tx)
        .await
        .map_err(unavailable_or_backend)?;
    sqlx::query(&q.erase_snapshot)
        .bind(stream_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(unavailable_or_backend)?;
    tx.commit().await.map_err(unavailable_or_backend)?;
    Ok(erased.rows_affected())
}
