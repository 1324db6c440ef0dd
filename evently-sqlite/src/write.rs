//! The write path: one transaction on the one write connection, with the
//! file's write lock taken up front (`BEGIN IMMEDIATE`).

use evently_core::{
    CommandRecord, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamAppend, StreamId,
};
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use crate::error::{self, SQLITE_BUSY, SQLITE_LOCKED};
use crate::{id_text, now, recorded, SqliteEventStore, COLUMNS};

/// Starts a write transaction, waiting for another process's lock up to
/// the busy time-out. A transaction left open by a write whose future was
/// dropped midway (a cancelled caller, an aborted runner) is rolled back
/// first: it never committed, and its caller never got an answer.
pub(crate) async fn begin(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    match sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("within a transaction") => {
            sqlx::query("ROLLBACK")
                .execute(&mut *conn)
                .await
                .map_err(error::store)?;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(busy)
        }
        Err(e) => Err(busy(e)),
    }
}

fn busy(e: sqlx::Error) -> StoreError {
    match error::code(&e) {
        Some(SQLITE_BUSY | SQLITE_LOCKED) => StoreError::unavailable(format!(
            "the event store's file is locked by another process for longer than the busy time-out: {e}"
        )),
        _ => error::store(e),
    }
}

/// Commits on `Ok`, rolls back on `Err`.
pub(crate) async fn finish<T>(
    conn: &mut SqliteConnection,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => Ok(value),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(error::store(e))
            }
        },
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

impl SqliteEventStore {
    /// Runs `f` in a write transaction on the write connection.
    pub(crate) async fn in_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c mut SqliteConnection,
        ) -> futures::future::BoxFuture<'c, Result<T, StoreError>>,
    {
        reentry()?;
        let mut conn = self.inner.writer.lock().await;
        begin(&mut conn).await?;
        let result = f(&mut conn).await;
        finish(&mut conn, result).await
    }

    /// Appends (checked all first, then written, all or nothing), with the
    /// command that caused them when there is one.
    ///
    /// Group commit: the append joins a queue, then waits for its answer
    /// or the write connection; whoever holds the connection writes every
    /// queued append in one transaction (a refused append rolls back
    /// alone), with one sync to disk for all of them. Alone, an append is
    /// its own group.
    pub(crate) async fn append_now(
        &self,
        writes: Vec<StreamAppend>,
        command: Option<&CommandRecord>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        evently_core::backend::check_appends(&writes)?;
        reentry()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending {
                writes,
                command: command.cloned(),
                reply,
            });
        // Whichever comes first: the answer (another append's holder wrote
        // this one in its group) or the write connection. Waiting for the
        // connection alone would make every append take its turn even when
        // its group was written long ago, and every turn write one append.
        let mut answer = answer;
        tokio::select! {
            biased;
            answered = &mut answer => {
                return answered.unwrap_or_else(|_| Err(dropped()));
            }
            mut conn = self.inner.writer.lock() => {
                let batch = std::mem::take(
                    &mut *self.inner.queue.lock().unwrap_or_else(|e| e.into_inner()),
                );
                if !batch.is_empty() {
                    let head = commit_group(&mut conn, batch).await;
                    self.publish(head);
                }
            }
        }
        answer.await.unwrap_or_else(|_| Err(dropped()))
    }
}

/// The answer of an append whose group was dropped (its holder's future
/// cancelled) before it committed.
fn dropped() -> StoreError {
    StoreError::unavailable("the append's group was dropped before it committed")
}

/// Refuses a write from inside a projection's batch (which holds the
/// writer) instead of waiting for ever.
fn reentry() -> Result<(), StoreError> {
    if crate::projection::IN_BATCH.try_with(|_| ()).is_ok() {
        return Err(StoreError::Backend(
            "a projection's handler on SQLite cannot write through the store: its batch holds the file's one writer \
             (write through the handler's connection instead, or say the projection does not use its sink: `Projection::uses_sink`)"
                .into(),
        ));
    }
    Ok(())
}

/// An append waiting for the write connection.
pub(crate) struct Pending {
    writes: Vec<StreamAppend>,
    command: Option<CommandRecord>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<RecordedEvent>>, StoreError>>,
}

/// What an append came to: the events stored, per stream, and the head.
type Outcome = Result<(Vec<Vec<RecordedEvent>>, u64), StoreError>;

/// Writes a group of appends in one transaction and answers each; returns
/// the head after it.
async fn commit_group(conn: &mut SqliteConnection, group: Vec<Pending>) -> u64 {
    // One append alone: one round trip, in a transaction of its own.
    if let [p] = &group[..] {
        match write_fast(conn, &p.writes, p.command.as_ref(), true).await {
            Fast::Done((results, head)) => {
                if let Some(p) = group.into_iter().next() {
                    let _ = p.reply.send(Ok(results));
                }
                return head;
            }
            Fast::NotTaken => {}
            Fast::Undo => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            }
        }
    }
    if let Err(e) = begin(conn).await {
        return refuse_all(group, &e.to_string());
    }
    let outcomes = match write_group(conn, &group).await {
        Some(outcomes) => outcomes,
        None => {
            // A check refused an append after part of it was written: the
            // group again, the careful way.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            if let Err(e) = begin(conn).await {
                return refuse_all(group, &e.to_string());
            }
            let mut outcomes = Vec::with_capacity(group.len());
            for p in &group {
                outcomes.push(careful(conn, p, group.len() == 1).await);
            }
            outcomes
        }
    };
    // An append alone needs no savepoint: refused, the whole transaction
    // rolls back.
    let end = if group.len() == 1 && outcomes[0].is_err() {
        "ROLLBACK"
    } else {
        "COMMIT"
    };
    if let Err(e) = sqlx::query(end).execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return refuse_all(
            group,
            &format!("the commit failed, nothing of this append was stored: {e}"),
        );
    }
    let mut head = 0;
    for (p, outcome) in group.into_iter().zip(outcomes) {
        if let Ok((_, h)) = &outcome {
            head = head.max(*h);
        }
        let _ = p.reply.send(outcome.map(|(results, _)| results));
    }
    head
}

/// Answers every append of the group with `message`; the head is unmoved.
fn refuse_all(group: Vec<Pending>, message: &str) -> u64 {
    for p in group {
        let _ = p
            .reply
            .send(Err(StoreError::unavailable(message.to_owned())));
    }
    0
}

/// Each append of the group the fast way where it can, else the careful
/// way; `None` when a fast attempt was refused after writing part of it.
async fn write_group(conn: &mut SqliteConnection, group: &[Pending]) -> Option<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(group.len());
    for p in group {
        match write_fast(conn, &p.writes, p.command.as_ref(), false).await {
            Fast::Done(done) => outcomes.push(Ok(done)),
            Fast::Undo => return None,
            Fast::NotTaken => outcomes.push(careful(conn, p, group.len() == 1).await),
        }
    }
    Some(outcomes)
}

/// The careful way: every check first, then the writes; in a savepoint
/// of its own unless it is alone in its transaction.
async fn careful(conn: &mut SqliteConnection, p: &Pending, alone: bool) -> Outcome {
    if alone {
        return write_all(conn, &p.writes, p.command.as_ref()).await;
    }
    sqlx::query("SAVEPOINT append")
        .execute(&mut *conn)
        .await
        .map_err(error::store)?;
    let result = write_all(conn, &p.writes, p.command.as_ref()).await;
    let end = if result.is_ok() {
        "RELEASE append"
    } else {
        "ROLLBACK TO append; RELEASE append"
    };
    sqlx::Executor::execute(&mut *conn, end)
        .await
        .map_err(error::store)?;
    result
}

/// How the fast way went.
enum Fast {
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
async fn write_fast(
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
pub(crate) async fn stream_state(
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
pub(crate) async fn accepted(
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

fn json<T: serde::Serialize + ?Sized>(
    stream_id: &StreamId,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::InvalidAppend {
        stream_id: stream_id.clone(),
        reason: format!("metadata does not serialize: {e}"),
    })
}

async fn write_all(
    conn: &mut SqliteConnection,
    writes: &[StreamAppend],
    command: Option<&CommandRecord>,
) -> Outcome {
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
    for (write, plan) in writes.iter().zip(plans) {
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
    Ok((results, head))
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
