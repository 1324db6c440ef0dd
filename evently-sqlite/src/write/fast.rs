//! The fast way: the common append in one round trip.

use evently_core::{CommandRecord, ExpectedVersion, RecordedEvent, StreamAppend};
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use super::checked::json;
use crate::{id_text, now};

/// How the fast way went.
pub(super) enum Fast {
    /// Stored.
    Done((Vec<Vec<RecordedEvent>>, u64)),
    /// Not for it (an expectation other than an exact version, or no
    /// events), or refused before writing anything: take the careful way.
    NotTaken,
    /// Refused after writing part of it: roll back.
    Undo,
}

/// The common append (what `Repository` sends: each stream's version
/// expected exactly) in one round trip to SQLite: per stream, its row
/// moved only if it is at the expected version and open (the check and
/// the write in one statement), then each event inserted at the log's
/// last position + 1 only if the statement before it changed a row
/// (`changes()`), returning its position, then the command recorded the
/// same way. No look-up of the event ids: a stored id fails the insert's
/// unique key, and the careful way then tells a retry (the stored events)
/// from a clash. Whatever refuses it, the careful way says why.
///
/// `own_transaction`: the statements begin and commit their own
/// transaction (an append of one stream alone in its group: refused, it
/// wrote nothing, and the empty transaction commits).
pub(super) async fn write_fast(
    conn: &mut SqliteConnection,
    writes: &[StreamAppend],
    command: Option<&CommandRecord>,
    own_transaction: bool,
) -> Fast {
    let exact = |w: &StreamAppend| match w.expected {
        ExpectedVersion::Exact(v) => Some(v),
        ExpectedVersion::NoStream => Some(0),
        _ => None,
    };
    if writes
        .iter()
        .any(|w| exact(w).is_none() || w.events.is_empty())
        || (own_transaction && writes.len() != 1)
    {
        return Fast::NotTaken;
    }
    let recorded_at = now();
    let micros = recorded_at.timestamp_micros();
    let mut sql = String::from(if own_transaction {
        "BEGIN IMMEDIATE;"
    } else {
        ""
    });
    let mut n = 0;
    let mut arg = || {
        n += 1;
        format!("?{n}")
    };
    let mut metadata = Vec::new();
    for write in writes {
        let (stream, last, current) = (arg(), arg(), arg());
        // A new stream gets its row; an existing one must have it.
        if exact(write) == Some(0) {
            sql += &format!(
                "INSERT INTO streams (stream_id, version) VALUES ({stream}, {last}) \
                 ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version \
                 WHERE streams.version = {current} AND streams.closed = 0;"
            );
        } else {
            sql += &format!(
                "UPDATE streams SET version = {last} \
                 WHERE stream_id = {stream} AND version = {current} AND closed = 0;"
            );
        }
        for e in &write.events {
            let Ok(json) = json(&write.stream_id, &e.metadata) else {
                return Fast::NotTaken;
            };
            metadata.push(json);
            let args: Vec<String> = (0..8).map(|_| arg()).collect();
            sql += &format!(
                "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
                 schema_version, payload, metadata, correlation_id, recorded_at) \
                 SELECT (SELECT COALESCE(MAX(position), 0) + 1 FROM events), {}, {stream}, {} \
                 WHERE changes() = 1 RETURNING position;",
                args[0],
                args[1..].join(", ")
            );
        }
        if command.is_some() {
            let args: Vec<String> = (0..6).map(|_| arg()).collect();
            sql += &format!(
                "INSERT INTO commands (command_id, command_type, stream_id, outcome, first_version, \
                 last_version, error, payload, metadata, recorded_at) \
                 SELECT {}, {}, {stream}, 'accepted', {}, {last}, NULL, {} WHERE changes() = 1;",
                args[0],
                args[1],
                args[2],
                args[3..].join(", ")
            );
        }
    }
    if own_transaction {
        sql += "COMMIT;";
    }
    let command_metadata = match command.map(|c| json(&writes[0].stream_id, &c.metadata)) {
        Some(Err(_)) => return Fast::NotTaken,
        Some(Ok(json)) => Some(json),
        None => None,
    };
    let mut query = sqlx::query(&sql);
    let mut metadata = metadata.iter();
    for write in writes {
        let current = exact(write).unwrap_or(0);
        let last = current + write.events.len() as u64;
        query = query
            .bind(write.stream_id.as_str())
            .bind(last as i64)
            .bind(current as i64);
        for (i, e) in write.events.iter().enumerate() {
            query = query
                .bind(id_text(e.event_id))
                .bind((current + 1 + i as u64) as i64)
                .bind(&*e.event_type)
                .bind(i64::from(e.schema_version))
                .bind(e.payload.as_str())
                .bind(metadata.next().map(String::as_str))
                .bind(e.metadata.correlation_id.map(id_text))
                .bind(micros);
        }
        if let Some(command) = command {
            query = query
                .bind(id_text(command.command_id))
                .bind(command.command_type.as_str())
                .bind((current + 1) as i64)
                .bind(command.payload.as_ref().map(|p| p.as_str()))
                .bind(command_metadata.as_deref())
                .bind(micros);
        }
    }
    let positions: Vec<i64> = match query.fetch_all(&mut *conn).await {
        Ok(rows) => rows.iter().filter_map(|r| r.try_get(0).ok()).collect(),
        Err(_) => return Fast::Undo,
    };
    let total: usize = writes.iter().map(|w| w.events.len()).sum();
    if positions.len() != total {
        // Nothing was written when no event was (the first check refused
        // it; with one stream, the only check); else part of it was.
        return if positions.is_empty() && writes.len() == 1 {
            Fast::NotTaken
        } else {
            Fast::Undo
        };
    }
    let mut positions = positions.into_iter();
    let mut head = 0;
    let results = writes
        .iter()
        .map(|write| {
            let current = exact(write).unwrap_or(0);
            write
                .events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    head = positions.next().unwrap_or_default() as u64;
                    RecordedEvent {
                        event_id: e.event_id,
                        stream_id: write.stream_id.clone(),
                        stream_version: current + 1 + i as u64,
                        global_position: head,
                        event_type: e.event_type.clone(),
                        schema_version: e.schema_version,
                        data: e.payload.clone(),
                        metadata: e.metadata.clone(),
                        recorded_at,
                    }
                })
                .collect()
        })
        .collect();
    Fast::Done((results, head))
}
