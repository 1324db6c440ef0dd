//! The capabilities beyond the log: snapshots, command records
//! (idempotent commands, the journal), correlation reads, closing and
//! erasing streams.

use evently_core::{
    CommandRecord, CommandStore, CorrelationStore, ExpectedVersion, JournalEntry, JournalOutcome,
    Metadata, NewEvent, Payload, RecordedEvent, Snapshot, SnapshotStore, StoreError, StreamAppend,
    StreamId, StreamLifecycle,
};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error;
use crate::write::insert_command;
use crate::{id_text, now, recorded, time, SqliteEventStore, COLUMNS};

impl SnapshotStore for SqliteEventStore {
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let row: Option<(i64, i64, String, i64)> = sqlx::query_as(
            "SELECT version, schema_version, state, taken_at FROM snapshots WHERE stream_id = ?",
        )
        .bind(stream_id.as_str())
        .fetch_optional(self.pool())
        .await
        .map_err(error::store)?;
        row.map(|(version, schema_version, state, taken_at)| {
            let state = Payload::from_json(state).map_err(|e| StoreError::Corrupt {
                stream_id: stream_id.clone(),
                stream_version: version as u64,
                reason: format!("the snapshot is not JSON: {e}"),
            })?;
            Ok(Snapshot {
                version: version as u64,
                schema_version: schema_version as u32,
                state,
                taken_at: time(taken_at),
            })
        })
        .transpose()
    }

    async fn save_snapshot(
        &self,
        stream_id: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        evently_core::limits::check_snapshot(stream_id, &snapshot)?;
        let stream = stream_id.as_str().to_owned();
        self.in_write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO snapshots (stream_id, version, schema_version, state, taken_at) VALUES (?, ?, ?, ?, ?) \
                     ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
                     schema_version = excluded.schema_version, state = excluded.state, taken_at = excluded.taken_at \
                     WHERE excluded.version > snapshots.version",
                )
                .bind(&stream)
                .bind(snapshot.version as i64)
                .bind(i64::from(snapshot.schema_version))
                .bind(snapshot.state.as_str())
                .bind(snapshot.taken_at.timestamp_micros())
                .execute(&mut *conn)
                .await
                .map_err(error::store)?;
                Ok(())
            })
        })
        .await
    }
}

const JOURNAL_COLUMNS: &str =
    "command_id, command_type, stream_id, outcome, first_version, last_version, error, payload, metadata, recorded_at";

fn journal_entry(row: &SqliteRow) -> Result<JournalEntry, StoreError> {
    let stream_id: String = row.try_get(2).map_err(error::store)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        stream_id: StreamId::from(stream_id.as_str()),
        stream_version: 0,
        reason,
    };
    let id: String = row.try_get(0).map_err(error::store)?;
    let payload: Option<String> = row.try_get(7).map_err(error::store)?;
    let metadata: String = row.try_get(8).map_err(error::store)?;
    let metadata: Metadata = serde_json::from_str(&metadata)
        .map_err(|e| corrupt(format!("command metadata does not read: {e}")))?;
    let command = CommandRecord {
        command_id: id
            .parse()
            .map_err(|e| corrupt(format!("command id {id:?}: {e}")))?,
        command_type: row.try_get::<String, _>(1).map_err(error::store)?,
        payload: payload
            .map(|p| {
                Payload::from_json(p)
                    .map_err(|e| corrupt(format!("command payload is not JSON: {e}")))
            })
            .transpose()?,
        metadata,
    };
    let outcome: String = row.try_get(3).map_err(error::store)?;
    let outcome = if outcome == "accepted" {
        JournalOutcome::Accepted {
            first_version: row
                .try_get::<Option<i64>, _>(4)
                .map_err(error::store)?
                .unwrap_or(0) as u64,
            last_version: row
                .try_get::<Option<i64>, _>(5)
                .map_err(error::store)?
                .unwrap_or(0) as u64,
        }
    } else {
        JournalOutcome::Rejected {
            error: row
                .try_get::<Option<String>, _>(6)
                .map_err(error::store)?
                .unwrap_or_default(),
        }
    };
    Ok(JournalEntry {
        command,
        stream_id: StreamId::from(stream_id.as_str()),
        outcome,
        recorded_at: time(row.try_get(9).map_err(error::store)?),
    })
}

impl CommandStore for SqliteEventStore {
    async fn append_for_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::limits::check_command(stream_id, command, None)?;
        let write = StreamAppend::new(stream_id.clone(), expected, events);
        Ok(self
            .append_now(vec![write], Some(command))
            .await?
            .pop()
            .unwrap_or_default())
    }

    async fn record_rejected_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        error: &str,
    ) -> Result<(), StoreError> {
        evently_core::limits::check_command(stream_id, command, Some(error))?;
        let (command, stream_id, error) = (command.clone(), stream_id.clone(), error.to_owned());
        self.in_write(move |conn| {
            Box::pin(async move {
                insert_command(
                    conn,
                    &command,
                    &stream_id,
                    "rejected",
                    None,
                    Some(&error),
                    now().timestamp_micros(),
                )
                .await
            })
        })
        .await
    }

    async fn find_command(&self, command_id: Uuid) -> Result<Option<JournalEntry>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOURNAL_COLUMNS} FROM commands WHERE command_id = ? \
             ORDER BY outcome = 'accepted' DESC, seq DESC LIMIT 1"
        ))
        .bind(id_text(command_id))
        .fetch_optional(self.pool())
        .await
        .map_err(error::store)?;
        row.as_ref().map(journal_entry).transpose()
    }

    async fn command_journal(&self, stream_id: &StreamId) -> Result<Vec<JournalEntry>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let rows = sqlx::query(&format!(
            "SELECT {JOURNAL_COLUMNS} FROM commands WHERE stream_id = ? ORDER BY seq"
        ))
        .bind(stream_id.as_str())
        .fetch_all(self.pool())
        .await
        .map_err(error::store)?;
        rows.iter().map(journal_entry).collect()
    }
}

impl CorrelationStore for SqliteEventStore {
    async fn read_correlation(
        &self,
        correlation_id: Uuid,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE correlation_id = ? AND position >= ? ORDER BY position LIMIT ?"
        ))
        .bind(id_text(correlation_id))
        .bind(from_position.min(i64::MAX as u64) as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(self.pool())
        .await
        .map_err(error::store)?;
        rows.iter().map(recorded).collect()
    }
}

impl StreamLifecycle for SqliteEventStore {
    async fn close_stream(&self, stream_id: &StreamId) -> Result<(), StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let stream = stream_id.as_str().to_owned();
        self.in_write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO streams (stream_id, version, closed) VALUES (?, 0, 1) \
                     ON CONFLICT (stream_id) DO UPDATE SET closed = 1",
                )
                .bind(&stream)
                .execute(&mut *conn)
                .await
                .map_err(error::store)?;
                Ok(())
            })
        })
        .await
    }

    async fn erase_stream(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let stream = stream_id.clone();
        self.in_write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO streams (stream_id, version, closed) VALUES (?, 0, 1) \
                     ON CONFLICT (stream_id) DO UPDATE SET closed = 1",
                )
                .bind(stream.as_str())
                .execute(&mut *conn)
                .await
                .map_err(error::store)?;
                let erased_at = now();
                let rows: Vec<(i64, String)> =
                    sqlx::query_as("SELECT position, metadata FROM events WHERE stream_id = ? ORDER BY stream_version")
                        .bind(stream.as_str())
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(error::store)?;
                for (position, metadata) in &rows {
                    let mut m: Metadata = serde_json::from_str(metadata).unwrap_or_default();
                    m.actor = None;
                    m.extra.clear();
                    m.erased_at = Some(erased_at);
                    sqlx::query("UPDATE events SET payload = '{}', metadata = ? WHERE position = ?")
                        .bind(serde_json::to_string(&m).map_err(|e| StoreError::Backend(Box::new(e)))?)
                        .bind(position)
                        .execute(&mut *conn)
                        .await
                        .map_err(error::store)?;
                }
                sqlx::query("DELETE FROM snapshots WHERE stream_id = ?")
                    .bind(stream.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(error::store)?;
                // Commands carry personal data too.
                let commands: Vec<(i64, String, String)> =
                    sqlx::query_as("SELECT seq, metadata, outcome FROM commands WHERE stream_id = ?")
                        .bind(stream.as_str())
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(error::store)?;
                for (seq, metadata, outcome) in &commands {
                    let mut m: Metadata = serde_json::from_str(metadata).unwrap_or_default();
                    m.actor = None;
                    m.extra.clear();
                    m.erased_at = Some(erased_at);
                    let error = (outcome == "rejected").then_some(JournalOutcome::ERASED_ERROR);
                    sqlx::query("UPDATE commands SET payload = NULL, metadata = ?, error = ? WHERE seq = ?")
                        .bind(serde_json::to_string(&m).map_err(|e| StoreError::Backend(Box::new(e)))?)
                        .bind(error)
                        .bind(seq)
                        .execute(&mut *conn)
                        .await
                        .map_err(error::store)?;
                }
                Ok(rows.len() as u64)
            })
        })
        .await
    }
}
