//! Group commit: the concurrent appends of one store handle, batched into
//! one statement and so one transaction and one WAL flush. Each append runs
//! in a subtransaction of its own inside `append_batch()`, so every
//! stream's expected version is still checked on its own and a conflict
//! fails only that append.

use std::sync::{Arc, Weak};

use es_core::{ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamId};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::{append_refusal, unavailable_or_backend, Inner, PgEventStore};

/// Most appends in one batch: each takes a subtransaction, and more than 64
/// in one transaction would overflow PostgreSQL's per-backend subxid cache
/// and slow every snapshot in the cluster.
const MAX_BATCH: usize = 48;

/// One append waiting for its batch.
pub(crate) struct Pending {
    pub stream_id: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<Vec<RecordedEvent>, StoreError>>,
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
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
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

async fn commit(store: PgEventStore, mut batch: Vec<Pending>) {
    // Lock streams in one order in every batch: two committers' batches
    // that share streams would otherwise deadlock, and a waiting batch
    // holds back every reader of the log until the deadlock is detected.
    // The sort is stable, so appends to one stream keep their order.
    batch.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    let appends: Vec<serde_json::Value> = batch.iter().map(describe).collect();
    let result = sqlx::query(&format!(
        "SELECT out_index, out_position, out_version, out_recorded_at, out_code, out_detail, \
                out_message FROM \"{}\".append_batch($1::jsonb)",
        store.schema()
    ))
    .bind(serde_json::Value::Array(appends).to_string())
    .fetch_all(store.pool())
    .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(error) => {
            // The whole statement failed: nothing was committed. Callers
            // re-send (same event ids), which is always safe.
            let error = unavailable_or_backend(error);
            let message = error.to_string();
            for pending in batch {
                let _ = pending
                    .reply
                    .send(Err(StoreError::Unavailable(message.clone())));
            }
            return;
        }
    };
    let mut outcomes: Vec<Vec<(i64, i64, chrono::DateTime<chrono::Utc>)>> =
        batch.iter().map(|_| Vec::new()).collect();
    let mut failures: Vec<Option<(String, String, String)>> = batch.iter().map(|_| None).collect();
    for row in &rows {
        let parsed = (|| -> Result<(), sqlx::Error> {
            let index: i32 = row.try_get(0)?;
            let index = index as usize;
            let code: Option<String> = row.try_get(4)?;
            match code {
                Some(code) => {
                    let detail: Option<String> = row.try_get(5)?;
                    let message: Option<String> = row.try_get(6)?;
                    failures[index] = Some((
                        code,
                        detail.unwrap_or_default(),
                        message.unwrap_or_default(),
                    ));
                }
                None => outcomes[index].push((row.try_get(1)?, row.try_get(2)?, row.try_get(3)?)),
            }
            Ok(())
        })();
        if let Err(error) = parsed {
            tracing::error!(%error, "unreadable append_batch row");
        }
    }
    let mut retry_alone = Vec::new();
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
                    None => retry_alone.push(pending),
                }
            }
            None if rows.len() == pending.events.len() => {
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
                    .collect();
                let _ = pending.reply.send(Ok(recorded));
            }
            None => {
                let _ = pending.reply.send(Err(StoreError::Backend(
                    format!(
                        "append_batch returned {} rows for {} events",
                        rows.len(),
                        pending.events.len()
                    )
                    .into(),
                )));
            }
        }
    }
    for pending in retry_alone {
        let result = store
            .append_direct(&pending.stream_id, pending.expected, pending.events)
            .await;
        let _ = pending.reply.send(result);
    }
}

/// One append as `append_batch()` reads it.
fn describe(pending: &Pending) -> serde_json::Value {
    let (kind, expected) = match pending.expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(v) => (3, v),
    };
    let events = &pending.events;
    serde_json::json!({
        "stream": pending.stream_id.as_str(),
        "kind": kind,
        "expected": expected,
        "ids": events.iter().map(|e| e.event_id.to_string()).collect::<Vec<_>>(),
        "types": events.iter().map(|e| &*e.event_type).collect::<Vec<_>>(),
        "versions": events.iter().map(|e| e.schema_version.to_string()).collect::<Vec<_>>(),
        "payloads": events.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>(),
        "metadata": events
            .iter()
            .map(|e| serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".into()))
            .collect::<Vec<_>>(),
    })
}
