//! Group commit: the concurrent appends of one store handle, batched into
//! one statement and so one transaction and one WAL flush. Each append runs
//! in a subtransaction of its own inside `append_batch()`, so every
//! stream's expected version is still checked on its own and a conflict
//! fails only that append.

use std::sync::{Arc, Weak};

use evently_core::{ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamId};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::append::expected_arg;
use crate::error::{append_refusal, unavailable_or_backend};
use crate::{Inner, PgEventStore};

/// Most appends in one batch: each takes a subtransaction, and more than 64
/// in one transaction would overflow PostgreSQL's per-backend subxid cache
/// and slow every snapshot in the cluster.
const MAX_BATCH: usize = 48;

/// A batch stops gathering once it holds this many bytes of payloads and
/// metadata: the batch travels as one `jsonb` value, which PostgreSQL
/// limits to 255 MiB.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Appends larger than this go on their own, not through a batch.
pub(crate) const MAX_GROUPED_BYTES: usize = 4 * 1024 * 1024;

/// One append waiting for its batch, checked and described (as
/// `append_batch()` reads it) by its caller before it joined the queue.
pub(crate) struct Pending {
    pub stream_id: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub described: serde_json::Value,
    pub bytes: usize,
    pub reply: oneshot::Sender<Result<Vec<RecordedEvent>, StoreError>>,
}

/// Appends through the queue (the append checked, small enough, without
/// a command record or inline projections); the committer that commits it
/// runs the after-commit step before it answers.
pub(crate) async fn append(
    queue: &mpsc::Sender<Pending>,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    // Described here, so a bad append fails alone, before it joins a
    // batch, with the error the direct path gives.
    let (described, bytes) = describe(stream_id, expected, &events)?;
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        stream_id: stream_id.clone(),
        expected,
        events,
        described,
        bytes,
        reply,
    };
    queue
        .send(pending)
        .await
        .map_err(|_| StoreError::unavailable("the group-commit queue is closed"))?;
    answer
        .await
        .map_err(|_| StoreError::unavailable("the group committer stopped before answering"))?
}

/// Starts `committers` tasks that drain the queue; returns its sender.
pub(crate) fn start(inner: Weak<Inner>, committers: usize) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH * committers.max(1));
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..committers.max(1) {
        tokio::spawn(commit_batches(Weak::clone(&inner), Arc::clone(&rx)));
    }
    tx
}

async fn commit_batches(inner: Weak<Inner>, queue: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        // Whatever is queued now goes into one batch; while it commits, the
        // next batch gathers.
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut bytes = first.bytes;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(pending) => {
                        bytes += pending.bytes;
                        batch.push(pending);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        commit(PgEventStore { inner }, batch).await;
    }
}

/// What one row of `append_batch()` says.
enum Outcome {
    Stored(i64, i64, chrono::DateTime<chrono::Utc>),
    Refused(String, String, String),
}

fn read_row(row: &sqlx::postgres::PgRow) -> Result<(usize, Outcome), String> {
    let index: i32 = row.try_get(0).map_err(|e| e.to_string())?;
    let index = usize::try_from(index).map_err(|_| format!("negative index {index}"))?;
    let code: Option<String> = row.try_get(4).map_err(|e| e.to_string())?;
    let outcome = match code {
        Some(code) => {
            let detail: Option<String> = row.try_get(5).map_err(|e| e.to_string())?;
            let message: Option<String> = row.try_get(6).map_err(|e| e.to_string())?;
            Outcome::Refused(
                code,
                detail.unwrap_or_default(),
                message.unwrap_or_default(),
            )
        }
        None => Outcome::Stored(
            row.try_get(1).map_err(|e| e.to_string())?,
            row.try_get(2).map_err(|e| e.to_string())?,
            row.try_get(3).map_err(|e| e.to_string())?,
        ),
    };
    Ok((index, outcome))
}

async fn commit(store: PgEventStore, mut batch: Vec<Pending>) {
    // Lock streams in one order in every batch: two committers' batches
    // that share streams would otherwise deadlock, and a waiting batch
    // holds back every reader of the log until the deadlock is detected.
    // The sort is stable, so appends to one stream keep their order.
    batch.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    let appends: Vec<&serde_json::Value> = batch.iter().map(|p| &p.described).collect();
    let text = match serde_json::to_string(&appends) {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(%error, "cannot write a group-commit batch; appending alone");
            return each_alone(&store, batch).await;
        }
    };
    let result = sqlx::query(&store.inner.queries.append_batch)
        .bind(text)
        .fetch_all(store.pool())
        .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(error) => {
            let error = unavailable_or_backend(error);
            if error.is_transient() {
                // The connection failed: whether the batch committed is
                // unknown. Callers re-send (same event ids), which is safe.
                let message = error.to_string();
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(StoreError::unavailable(message.clone())));
                }
            } else {
                // The statement as a whole was refused, so no retry of the
                // batch can succeed: each append goes alone and gets its own
                // outcome (a re-sent append that did commit returns its
                // stored events).
                tracing::warn!(%error, "a group-commit batch failed; appending each alone");
                each_alone(&store, batch).await;
            }
            return;
        }
    };
    let mut outcomes: Vec<Vec<(i64, i64, chrono::DateTime<chrono::Utc>)>> =
        batch.iter().map(|_| Vec::new()).collect();
    let mut failures: Vec<Option<(String, String, String)>> = batch.iter().map(|_| None).collect();
    // A row that cannot be read (or names no append of the batch) leaves
    // some append's outcome unknown: those are sent again alone below.
    let mut unreadable = false;
    for row in &rows {
        match read_row(row) {
            Ok((index, Outcome::Refused(code, detail, message))) if index < batch.len() => {
                failures[index] = Some((code, detail, message));
            }
            Ok((index, Outcome::Stored(position, version, at))) if index < batch.len() => {
                outcomes[index].push((position, version, at));
            }
            Ok((index, _)) => {
                tracing::error!(
                    index,
                    size = batch.len(),
                    "append_batch row names no append of the batch"
                );
                unreadable = true;
            }
            Err(error) => {
                tracing::error!(%error, "unreadable append_batch row");
                unreadable = true;
            }
        }
    }
    let mut alone = Vec::new();
    for ((pending, rows), failure) in batch.into_iter().zip(outcomes).zip(failures) {
        match failure {
            Some((code, detail, message)) => {
                match append_refusal(
                    &code,
                    &detail,
                    &message,
                    &pending.stream_id,
                    pending.expected,
                    None,
                ) {
                    Some(refused) => {
                        let _ = pending.reply.send(Err(refused));
                    }
                    // Anything else (an id stored concurrently, a stream a
                    // younger transaction appended to): the direct path
                    // knows how to retry it.
                    None => alone.push(pending),
                }
            }
            None if rows.len() == pending.events.len() && !(unreadable && rows.is_empty()) => {
                let recorded = pending
                    .events
                    .into_iter()
                    .zip(rows)
                    .map(|(e, (position, version, recorded_at))| RecordedEvent {
                        event_id: e.event_id,
                        stream_id: pending.stream_id.clone(),
                        stream_version: version as u64,
                        global_position: position as u64,
                        event_type: e.event_type,
                        schema_version: e.schema_version,
                        data: e.payload,
                        metadata: e.metadata,
                        recorded_at,
                    })
                    .collect::<Vec<_>>();
                store.after_commit(&recorded);
                let _ = pending.reply.send(Ok(recorded));
            }
            // The batch committed, but what became of this append cannot
            // be read from its rows: sent again alone, it is either stored
            // already (and returns its events as stored) or refused or
            // stored now. Never "failed" for events that committed.
            None => alone.push(pending),
        }
    }
    each_alone(&store, alone).await;
}

/// Sends each append on its own (with its after-commit step) and answers
/// its caller.
async fn each_alone(store: &PgEventStore, appends: Vec<Pending>) {
    for pending in appends {
        let result = store
            .append_alone(&pending.stream_id, pending.expected, pending.events, None)
            .await;
        let _ = pending.reply.send(result);
    }
}

/// One append as `append_batch()` reads it, with its size in bytes. Its
/// caller has checked it (`evently_core::check_events`), so no value in it is
/// one PostgreSQL refuses.
pub(crate) fn describe(
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<(serde_json::Value, usize), StoreError> {
    let (kind, expected) = expected_arg(expected);
    let mut metadata = Vec::with_capacity(events.len());
    for e in events {
        metadata.push(serde_json::to_string(&e.metadata).map_err(|err| {
            StoreError::InvalidAppend {
                stream_id: stream_id.clone(),
                reason: format!("metadata does not serialize: {err}"),
            }
        })?);
    }
    let bytes = events.iter().map(|e| e.payload.len()).sum::<usize>()
        + metadata.iter().map(String::len).sum::<usize>();
    let described = serde_json::json!({
        "stream": stream_id.as_str(),
        "kind": kind,
        "expected": expected,
        "ids": events.iter().map(|e| e.event_id.to_string()).collect::<Vec<_>>(),
        "types": events.iter().map(|e| &*e.event_type).collect::<Vec<_>>(),
        "versions": events.iter().map(|e| e.schema_version.to_string()).collect::<Vec<_>>(),
        "payloads": events.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>(),
        "metadata": metadata,
    });
    Ok((described, bytes))
}
