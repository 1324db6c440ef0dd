//! Group commit: the concurrent appends of one store handle, batched into
//! one statement and so one transaction and one WAL flush. The statement
//! is set-based (`queries::append_set`): one `INSERT … ON CONFLICT` moves
//! the rows of every stream whose expectation holds, one `INSERT … SELECT
//! FROM unnest(...)` stores their events. Each stream's expectation is
//! still checked on its own: an append that does not hold (a conflict, a
//! closed stream, ids stored already) is left out of the batch, stores
//! nothing, and is sent alone after the batch commits, where
//! `append_events()` gives it its own answer (its typed error, or the
//! stored events of a retry).

use std::sync::{Arc, Weak};

use evently_core::{ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamId};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::append::recorded;
use crate::error::unavailable_or_backend;
use crate::set::SetArgs;
use crate::{Inner, PgEventStore};

/// Most appends in one batch.
const MAX_BATCH: usize = 256;

/// A batch stops gathering once it holds this many events (a transaction
/// holds at most 2^20: the index part of a position).
const MAX_BATCH_EVENTS: usize = 1 << 16;

/// A batch stops gathering once it holds this many bytes of payloads and
/// metadata.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Appends larger than this go on their own, not through a batch.
pub(crate) const MAX_GROUPED_BYTES: usize = 4 * 1024 * 1024;

/// One append waiting for its batch, checked (its metadata serialised) by
/// its caller before it joined the queue.
pub(crate) struct Pending {
    pub stream_id: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub metadata: Vec<String>,
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
    // Serialised here, so a bad append fails alone, before it joins a
    // batch, with the error the direct path gives.
    let metadata = serialize_metadata(stream_id, &events)?;
    let bytes = events.iter().map(|e| e.payload.len()).sum::<usize>()
        + metadata.iter().map(String::len).sum::<usize>();
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        stream_id: stream_id.clone(),
        expected,
        events,
        metadata,
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
            let mut events = first.events.len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES && events < MAX_BATCH_EVENTS {
                match queue.try_recv() {
                    Ok(pending) => {
                        bytes += pending.bytes;
                        events += pending.events.len();
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

/// One row of the batch's statement: which append (from 1), and where one
/// of its events was stored.
fn read_row(
    row: &sqlx::postgres::PgRow,
) -> Result<(usize, i64, i64, chrono::DateTime<chrono::Utc>), sqlx::Error> {
    let index: i32 = row.try_get(0)?;
    Ok((
        usize::try_from(index).unwrap_or(0),
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    ))
}

/// Where one event of an append was stored: position, version, time.
type Stored = (i64, i64, chrono::DateTime<chrono::Utc>);

/// The rows of a batch of `appends` appends, by append (in order), and
/// whether a row could not be read or named no append of the batch (then
/// an append without rows has an unknown outcome, not a refusal).
fn sort_rows(
    appends: usize,
    rows: impl IntoIterator<
        Item = Result<(usize, i64, i64, chrono::DateTime<chrono::Utc>), sqlx::Error>,
    >,
) -> (Vec<Vec<Stored>>, bool) {
    let mut outcomes: Vec<Vec<Stored>> = (0..appends).map(|_| Vec::new()).collect();
    let mut unreadable = false;
    for row in rows {
        match row {
            Ok((index, position, version, at)) if (1..=appends).contains(&index) => {
                outcomes[index - 1].push((position, version, at));
            }
            Ok((index, ..)) => {
                tracing::error!(index, size = appends, "a batch row names no append of it");
                unreadable = true;
            }
            Err(error) => {
                tracing::error!(%error, "unreadable group-commit row");
                unreadable = true;
            }
        }
    }
    (outcomes, unreadable)
}

async fn commit(store: PgEventStore, batch: Vec<Pending>) {
    // One append per stream goes into the statement (a stream's row moves
    // once per statement); the others, and empty appends, go alone after
    // it, in their order. Streams in name order, so two committers'
    // batches lock shared rows in one order and cannot deadlock.
    let mut seen = std::collections::HashSet::new();
    let (mut set, mut later): (Vec<Pending>, Vec<Pending>) = batch
        .into_iter()
        .partition(|p| !p.events.is_empty() && seen.insert(p.stream_id.clone()));
    set.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    // A batch of one is the single-statement append, which is cheaper.
    if set.len() < 2 {
        set.append(&mut later);
        return each_alone(&store, set).await;
    }
    let total: usize = set.iter().map(|p| p.events.len()).sum();
    let mut args = SetArgs::with_capacity(set.len(), total);
    for p in &set {
        args.push(&p.stream_id, p.expected, &p.events, &p.metadata);
    }
    let result = args
        .bind(sqlx::query(&store.inner.queries.append_set))
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
                for pending in set.into_iter().chain(later) {
                    let _ = pending
                        .reply
                        .send(Err(StoreError::unavailable(message.clone())));
                }
            } else {
                // The statement as a whole was refused (an id another
                // append was storing at the same moment, say): it stored
                // nothing, so each append goes alone and gets its own
                // outcome.
                tracing::warn!(%error, "a group-commit batch failed; appending each alone");
                each_alone(&store, set.into_iter().chain(later).collect()).await;
            }
            return;
        }
    };
    let (outcomes, unreadable) = sort_rows(set.len(), rows.iter().map(read_row));
    let mut alone = Vec::new();
    for (pending, rows) in set.into_iter().zip(outcomes) {
        if rows.len() == pending.events.len() && !(unreadable && rows.is_empty()) {
            let recorded = pending
                .events
                .into_iter()
                .zip(rows)
                .map(|(e, (position, version, at))| {
                    recorded(&pending.stream_id, e, position, version, at)
                })
                .collect::<Vec<_>>();
            store.after_commit(&recorded);
            let _ = pending.reply.send(Ok(recorded));
        } else {
            // Left out of the batch (its expectation, a closed stream,
            // stored ids), or its rows cannot be read: sent alone, it is
            // refused with its own error, or stored now, or (stored
            // already) answered with its events as stored. Never "failed"
            // for events that committed.
            alone.push(pending);
        }
    }
    alone.append(&mut later);
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

/// Each event's metadata as JSON text.
fn serialize_metadata(
    stream_id: &StreamId,
    events: &[NewEvent],
) -> Result<Vec<String>, StoreError> {
    events
        .iter()
        .map(|e| {
            serde_json::to_string(&e.metadata).map_err(|err| StoreError::InvalidAppend {
                stream_id: stream_id.clone(),
                reason: format!("metadata does not serialize: {err}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use evently_core::{EventStore, Metadata, Payload, StreamLifecycle};

    use super::*;

    fn event(id: uuid::Uuid, payload: &str) -> NewEvent {
        let mut e = NewEvent::raw(
            "Noted",
            1,
            Payload::from_json(payload).expect("json"),
            Metadata::new(),
        );
        e.event_id = id;
        e
    }

    fn pending(
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> (
        Pending,
        oneshot::Receiver<Result<Vec<RecordedEvent>, StoreError>>,
    ) {
        let stream_id = StreamId::from(stream);
        let metadata = serialize_metadata(&stream_id, &events).expect("metadata");
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            stream_id,
            expected,
            events,
            metadata,
            bytes: 0,
            reply,
        };
        (pending, answer)
    }

    /// Rows that cannot be read, or that name no append of the batch,
    /// neither panic nor count as an append's events: the append they may
    /// belong to has too few rows, and is sent again alone (where a stored
    /// append answers with its events as stored).
    #[test]
    fn rows_that_name_no_append_or_cannot_be_read_leave_an_outcome_unknown() {
        let at = chrono::Utc::now();
        let (outcomes, unreadable) = sort_rows(
            2,
            vec![
                Ok((1, 10, 1, at)),
                Ok((3, 11, 1, at)),
                Ok((0, 12, 1, at)),
                Err(sqlx::Error::ColumnNotFound("out_position".into())),
            ],
        );
        assert_eq!(outcomes, vec![vec![(10, 1, at)], vec![]]);
        assert!(unreadable);
        let (outcomes, unreadable) = sort_rows(2, vec![Ok((2, 20, 1, at)), Ok((1, 21, 4, at))]);
        assert_eq!(outcomes, vec![vec![(21, 4, at)], vec![(20, 1, at)]]);
        assert!(!unreadable);
    }

    /// One batch, committed by one call of `commit`: two appends that
    /// hold, one whose expectation does not, one to a closed stream, one
    /// reusing a stored event id with other content, and a second append
    /// to a stream already in the batch. The good ones commit (the first
    /// two in the batch's one transaction); each failing caller gets its
    /// own typed error; nothing of theirs is stored.
    #[tokio::test]
    async fn a_batch_commits_the_appends_that_hold_and_answers_each_failure_alone() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("es_test_{}", uuid::Uuid::now_v7().simple());
        let store = PgEventStore::builder()
            .schema(schema)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot set up a PostgreSQL store at {url}: {e}"));
        let stored_id = uuid::Uuid::now_v7();
        let at_one = StreamId::from("at-one");
        store
            .append(
                &at_one,
                ExpectedVersion::NoStream,
                vec![event(stored_id, "{}")],
            )
            .await
            .expect("setup append");
        store
            .close_stream(&StreamId::from("closed"))
            .await
            .expect("close");

        let (fresh, fresh_answer) = pending(
            "fresh",
            ExpectedVersion::NoStream,
            vec![
                event(uuid::Uuid::now_v7(), r#"{"n":1}"#),
                event(uuid::Uuid::now_v7(), r#"{"n":2}"#),
            ],
        );
        let (conflict, conflict_answer) = pending(
            "at-one",
            ExpectedVersion::Exact(0),
            vec![event(uuid::Uuid::now_v7(), "{}")],
        );
        let (next, next_answer) = pending(
            "at-one",
            ExpectedVersion::Exact(1),
            vec![event(uuid::Uuid::now_v7(), r#"{"n":3}"#)],
        );
        let (closed, closed_answer) = pending(
            "closed",
            ExpectedVersion::Any,
            vec![event(uuid::Uuid::now_v7(), "{}")],
        );
        let (reuse, reuse_answer) = pending(
            "reuse",
            ExpectedVersion::NoStream,
            vec![event(stored_id, r#"{"other":true}"#)],
        );
        let (any, any_answer) = pending(
            "any",
            ExpectedVersion::Any,
            vec![event(uuid::Uuid::now_v7(), r#"{"n":4}"#)],
        );
        commit(
            store.clone(),
            vec![fresh, conflict, next, closed, reuse, any],
        )
        .await;

        let fresh = fresh_answer.await.expect("answered").expect("fresh stored");
        assert_eq!(
            fresh.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let any = any_answer.await.expect("answered").expect("any stored");
        assert_eq!(any[0].stream_version, 1);
        // Same transaction: the same id in the positions' upper bits.
        assert_eq!(fresh[0].global_position >> 20, any[0].global_position >> 20);

        match conflict_answer.await.expect("answered") {
            Err(StoreError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            }) => {
                assert_eq!(stream_id.as_str(), "at-one");
                assert_eq!(expected, ExpectedVersion::Exact(0));
                assert_eq!(actual, 1);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        match closed_answer.await.expect("answered") {
            Err(StoreError::StreamClosed { stream_id }) => assert_eq!(stream_id.as_str(), "closed"),
            other => panic!("expected StreamClosed, got {other:?}"),
        }
        match reuse_answer.await.expect("answered") {
            Err(StoreError::DuplicateEventId { event_id, .. }) => assert_eq!(event_id, stored_id),
            other => panic!("expected DuplicateEventId, got {other:?}"),
        }
        // The second append to a stream in the batch went after it.
        let next = next_answer.await.expect("answered").expect("next stored");
        assert_eq!(next[0].stream_version, 2);

        // What the log holds: the stored appends, nothing of the refused.
        for (stream, version) in [
            ("fresh", 2),
            ("any", 1),
            ("at-one", 2),
            ("reuse", 0),
            ("closed", 0),
        ] {
            assert_eq!(
                store
                    .stream_version(&StreamId::from(stream))
                    .await
                    .expect("version"),
                version,
                "{stream}"
            );
        }
        let all = store.read_all(0, 100).await.expect("read_all");
        assert_eq!(all.len(), 5);
    }
}
