//! The careful way: every check first (a retried append, a command run
//! before, a closed stream, the expected version), then the writes.

use evently_core::{CommandRecord, NewEvent, RecordedEvent, StoreError, StreamAppend, StreamId};
use sqlx::sqlite::SqliteConnection;

use crate::{error, id_text, now, recorded, COLUMNS};

/// Inserts an event at the log's last position + 1 (the one writer holds
/// the file's lock: no gap, no race); its position.
async fn insert_event(
    conn: &mut SqliteConnection,
    event: &RecordedEvent,
    micros: i64,
) -> Result<u64, StoreError> {
    let metadata = json(&event.stream_id, &event.metadata)?;
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
         payload, metadata, correlation_id, recorded_at) \
         VALUES ((SELECT COALESCE(MAX(position), 0) + 1 FROM events), ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         RETURNING position",
    )
    .bind(id_text(event.event_id))
    .bind(event.stream_id.as_str())
    .bind(event.stream_version as i64)
    .bind(&*event.event_type)
    .bind(i64::from(event.schema_version))
    .bind(event.data.as_str())
    .bind(&metadata)
    .bind(event.metadata.correlation_id.map(id_text))
    .bind(micros)
    .fetch_one(&mut *conn)
    .await
    .map_err(error::store)?;
    Ok(position as u64)
}

async fn stored_event(
    conn: &mut SqliteConnection,
    id: uuid::Uuid,
) -> Result<Option<RecordedEvent>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM events WHERE event_id = ?"))
        .bind(id_text(id))
        .fetch_optional(&mut *conn)
        .await
        .map_err(error::store)?;
    row.as_ref().map(recorded).transpose()
}

fn duplicate(stored: &RecordedEvent, reason: &str) -> StoreError {
    StoreError::DuplicateEventId {
        event_id: stored.event_id,
        stored_in: stored.stream_id.clone(),
        stored_version: stored.stream_version,
        reason: reason.to_owned(),
    }
}

/// If every event id of `events` is stored, as these events, in this
/// order, in this stream: the stored events (a retried append). A partial
/// or different reuse of stored ids is an error.
async fn replayed(
    conn: &mut SqliteConnection,
    stream_id: &StreamId,
    events: &[NewEvent],
) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
    let mut found: Vec<RecordedEvent> = Vec::new();
    for (i, new) in events.iter().enumerate() {
        let Some(stored) = stored_event(conn, new.event_id).await? else {
            if let Some(first) = found.first() {
                return Err(duplicate(
                    first,
                    "the append mixes stored and new event ids",
                ));
            }
            continue;
        };
        if stored.stream_id != *stream_id {
            return Err(duplicate(&stored, "the id belongs to another stream"));
        }
        if found.len() != i {
            return Err(duplicate(
                &stored,
                "the append mixes stored and new event ids",
            ));
        }
        if let Some(previous) = found.last() {
            if previous.stream_version + 1 != stored.stream_version {
                return Err(duplicate(
                    &stored,
                    "the events were stored in another order",
                ));
            }
        }
        if stored.event_type != new.event_type
            || stored.schema_version != new.schema_version
            || !stored.data.same_json(&new.payload)
            || stored.metadata != new.metadata
        {
            return Err(duplicate(&stored, "the stored event has other content"));
        }
        found.push(stored);
    }
    Ok((!found.is_empty()).then_some(found))
}

/// A stream's version and whether it is closed.
async fn stream_state(
    conn: &mut SqliteConnection,
    stream_id: &StreamId,
) -> Result<(u64, bool), StoreError> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT version, closed FROM streams WHERE stream_id = ?")
            .bind(stream_id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(error::store)?;
    Ok(row.map_or((0, false), |(v, c)| (v as u64, c != 0)))
}

/// The accepted execution of a command id: its stream and versions.
async fn accepted(
    conn: &mut SqliteConnection,
    command_id: uuid::Uuid,
) -> Result<Option<(String, i64, i64)>, StoreError> {
    sqlx::query_as(
        "SELECT stream_id, first_version, last_version FROM commands WHERE command_id = ? AND outcome = 'accepted'",
    )
    .bind(id_text(command_id))
    .fetch_optional(&mut *conn)
    .await
    .map_err(error::store)
}

pub(super) fn json<T: serde::Serialize + ?Sized>(
    stream_id: &StreamId,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::InvalidAppend {
        stream_id: stream_id.clone(),
        reason: format!("metadata does not serialize: {e}"),
    })
}

/// Checks every stream (a retried append, a command run before, a closed
/// stream, the expected version), then writes; says of each stream
/// whether its events were stored now (`true`) or found stored by an
/// earlier try of the append.
pub(super) async fn write_checked(
    conn: &mut SqliteConnection,
    writes: &[StreamAppend],
    command: Option<&CommandRecord>,
) -> Result<(Vec<Vec<RecordedEvent>>, u64, Vec<bool>), StoreError> {
    // Check every stream before writing any.
    let mut plans = Vec::with_capacity(writes.len());
    for write in writes {
        if let Some(replayed) = replayed(conn, &write.stream_id, &write.events).await? {
            plans.push(Err(replayed));
            continue;
        }
        if let Some(command) = command {
            if let Some((stream, first, last)) = accepted(conn, command.command_id).await? {
                return Err(StoreError::CommandAlreadyExecuted {
                    command_id: command.command_id,
                    stream_id: StreamId::from(stream.as_str()),
                    first_version: first as u64,
                    last_version: last as u64,
                });
            }
        }
        let (current, closed) = stream_state(conn, &write.stream_id).await?;
        if closed {
            return Err(StoreError::StreamClosed {
                stream_id: write.stream_id.clone(),
            });
        }
        if !write.expected.matches(current) {
            return Err(StoreError::WrongExpectedVersion {
                stream_id: write.stream_id.clone(),
                expected: write.expected,
                actual: current,
            });
        }
        plans.push(Ok(current));
    }

    let mut head = 0;
    let recorded_at = now();
    let micros = recorded_at.timestamp_micros();
    let mut results = Vec::with_capacity(writes.len());
    let mut fresh = Vec::with_capacity(writes.len());
    for (write, plan) in writes.iter().zip(plans) {
        fresh.push(plan.is_ok());
        let current = match plan {
            Ok(current) => current,
            Err(replayed) => {
                results.push(replayed);
                continue;
            }
        };
        let stream_id = &write.stream_id;
        let mut recorded = Vec::with_capacity(write.events.len());
        for (i, e) in write.events.iter().enumerate() {
            let event = RecordedEvent {
                event_id: e.event_id,
                stream_id: stream_id.clone(),
                stream_version: current + 1 + i as u64,
                global_position: 0,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                data: e.payload.clone(),
                metadata: e.metadata.clone(),
                recorded_at,
            };
            head = insert_event(conn, &event, micros).await?;
            recorded.push(RecordedEvent {
                global_position: head,
                ..event
            });
        }
        if let (Some(first), Some(last)) = (recorded.first(), recorded.last()) {
            sqlx::query(
                "INSERT INTO streams (stream_id, version) VALUES (?, ?) \
                 ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
            )
            .bind(stream_id.as_str())
            .bind(last.stream_version as i64)
            .execute(&mut *conn)
            .await
            .map_err(error::store)?;
            if let Some(command) = command {
                insert_command(
                    conn,
                    command,
                    stream_id,
                    "accepted",
                    Some((first.stream_version, last.stream_version)),
                    None,
                    micros,
                )
                .await?;
            }
        }
        results.push(recorded);
    }
    Ok((results, head, fresh))
}

/// Adds a command to the journal.
pub(crate) async fn insert_command(
    conn: &mut SqliteConnection,
    command: &CommandRecord,
    stream_id: &StreamId,
    outcome: &str,
    versions: Option<(u64, u64)>,
    error: Option<&str>,
    micros: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO commands (command_id, command_type, stream_id, outcome, first_version, last_version, \
         error, payload, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id_text(command.command_id))
    .bind(&command.command_type)
    .bind(stream_id.as_str())
    .bind(outcome)
    .bind(versions.map(|v| v.0 as i64))
    .bind(versions.map(|v| v.1 as i64))
    .bind(error)
    .bind(command.payload.as_ref().map(|p| p.as_str().to_owned()))
    .bind(json(stream_id, &command.metadata)?)
    .bind(micros)
    .execute(&mut *conn)
    .await
    .map_err(error::store)?;
    Ok(())
}
