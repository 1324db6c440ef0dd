//! An in-memory event store with the same semantics as the durable stores:
//! atomic appends with expected versions, idempotent retries, one global
//! order, and live subscriptions. For tests, prototypes and single-process
//! tools; the log lives as long as the process.
//!
//! ```
//! use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
//! use evently_memory::MemoryStore;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let stream = StreamId::from("account-1");
//! let event = NewEvent::raw("Opened", 1, Payload::from_json(r#"{"owner":"ada"}"#).unwrap(), Metadata::new());
//! let recorded = store.append(&stream, ExpectedVersion::NoStream, vec![event]).await.unwrap();
//! assert_eq!((recorded[0].stream_version, recorded[0].global_position), (1, 1));
//! assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
//! # });
//! ```
//!
//! # Limits
//!
//! The store takes and refuses exactly what the PostgreSQL store does (see
//! [`evently_core::limits`]): a stream id of 1 to 2,048 bytes without a NUL
//! character, on every operation; no NUL character in event types,
//! payloads or metadata; payloads up to 32 MiB. Code tested here does not
//! break on PostgreSQL for input it accepted.
//!
//! # Concurrency and memory
//!
//! The store is a cheap handle (`Clone`) over one log behind a lock, safe to
//! use from many tokio tasks at once. An append holds the lock only while it
//! checks and pushes its events; the order in which appends take the lock is
//! the global order, so a reader never sees a gap.
//!
//! A subscriber does not get a queue of its own: it reads the shared log a
//! page at a time (at most 256 events buffered per subscriber) and waits for
//! the head to move when it has caught up. A slow subscriber therefore never
//! slows writers and never makes memory grow: it just falls behind, and
//! catches up at its own pace without missing an event.

#![warn(missing_docs)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::Utc;
use evently_core::projection::MemoryReadModel;
use evently_core::{
    CommandRecord, EventData, EventStore, EventStream, ExpectedVersion, JournalEntry,
    JournalOutcome, NewEvent, RecordedEvent, Snapshot, StoreError, StreamAppend, StreamId,
};
use tokio::sync::watch;

// The capabilities beyond the log: snapshots, command records, correlation
// reads, the life cycle of streams.
mod capabilities;
mod deadlines;
use uuid::Uuid;

/// How many events a subscriber reads from the log at a time.
const SUBSCRIPTION_PAGE: usize = 256;

/// The in-memory event store. Clones share the same log.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
    /// The documents of its views, by view name.
    views: evently_core::view::MemoryViews,
    /// The checkpoints of projections run with `ProjectionStore`, by name.
    checkpoints: Arc<std::sync::Mutex<HashMap<String, MemoryReadModel<()>>>>,
}

impl evently_core::ProjectionStore for MemoryStore {
    type Sink = ();

    fn run_projection_on<P, Src>(
        &self,
        source: Src,
        projection: P,
        options: evently_core::projection::ProjectionOptions,
    ) -> evently_core::projection::ProjectionHandle
    where
        P: evently_core::projection::Projection<Sink = ()>,
        Src: evently_core::EventSource,
    {
        let model = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(projection.name().to_owned())
            .or_default()
            .clone();
        evently_core::projection::run_projection(source, projection, model, options)
    }
}

struct Inner {
    log: RwLock<Log>,
    /// The global position of the last stored event, published to
    /// subscriptions (kept up to date only while one exists).
    head: watch::Sender<u64>,
    /// Scheduled deadlines, by owner and name.
    deadlines: std::sync::Mutex<deadlines::Deadlines>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            log: RwLock::new(Log::default()),
            head: watch::Sender::new(0),
            deadlines: Default::default(),
        }
    }
}

#[derive(Default)]
struct Log {
    /// The global log; the event at index `i` has position `i + 1`.
    events: Vec<RecordedEvent>,
    /// Each stream's events, as indices into `events`.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Every stored event id, as an index into `events`.
    ids: HashMap<Uuid, usize>,
    /// The latest snapshot of each stream that has one.
    snapshots: HashMap<StreamId, Snapshot>,
    /// Recorded commands, oldest first.
    journal: Vec<JournalEntry>,
    /// Accepted command ids, as indices into `journal`.
    accepted: HashMap<Uuid, usize>,
    /// Every recorded command id, as indices into `journal`, oldest first.
    commands: HashMap<Uuid, Vec<usize>>,
    /// Each stream's journal, as indices into `journal`.
    journals: HashMap<StreamId, Vec<usize>>,
    /// Each correlation id's events, as indices into `events`.
    correlations: HashMap<Uuid, Vec<usize>>,
    /// Streams that take no more events.
    closed: HashSet<StreamId>,
}

impl Log {
    /// The log indices of a stream's events from `from_version` on.
    fn stream_from(&self, stream_id: &StreamId, from_version: u64) -> &[usize] {
        let start = from_version.max(1) as usize - 1;
        self.streams
            .get(stream_id)
            .and_then(|indices| indices.get(start..))
            .unwrap_or_default()
    }

    /// Adds a command to the journal and its indexes.
    fn record(&mut self, entry: JournalEntry) {
        let index = self.journal.len();
        self.commands
            .entry(entry.command.command_id)
            .or_default()
            .push(index);
        self.journals
            .entry(entry.stream_id.clone())
            .or_default()
            .push(index);
        self.journal.push(entry);
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.read();
        f.debug_struct("MemoryStore")
            .field("events", &log.events.len())
            .field("streams", &log.streams.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events the store holds.
    pub fn event_count(&self) -> usize {
        self.read().events.len()
    }

    fn read(&self) -> RwLockReadGuard<'_, Log> {
        // No code panics while holding the lock, and the log is consistent
        // between statements, so a poisoned lock still holds a good log.
        self.inner
            .log
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Log> {
        self.inner
            .log
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn append_now(
        &self,
        writes: Vec<StreamAppend>,
        command: Option<&CommandRecord>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        evently_core::backend::check_appends(&writes)?;

        let mut log = self.write();
        // Check every stream before writing any.
        let mut plans = Vec::with_capacity(writes.len());
        for write in &writes {
            if let Some(replayed) = log.replayed(&write.stream_id, &write.events)? {
                plans.push(Err(replayed));
                continue;
            }
            if let Some(first) = command.and_then(|c| log.accepted.get(&c.command_id)) {
                let entry = &log.journal[*first];
                if let JournalOutcome::Accepted {
                    first_version,
                    last_version,
                } = entry.outcome
                {
                    return Err(StoreError::CommandAlreadyExecuted {
                        command_id: entry.command.command_id,
                        stream_id: entry.stream_id.clone(),
                        first_version,
                        last_version,
                    });
                }
            }
            if log.closed.contains(&write.stream_id) {
                return Err(StoreError::StreamClosed {
                    stream_id: write.stream_id.clone(),
                });
            }
            let current = log.streams.get(&write.stream_id).map_or(0, Vec::len) as u64;
            if !write.expected.matches(current) {
                return Err(StoreError::WrongExpectedVersion {
                    stream_id: write.stream_id.clone(),
                    expected: write.expected,
                    actual: current,
                });
            }
            plans.push(Ok(current));
        }

        let recorded_at = Utc::now();
        let mut results = Vec::with_capacity(writes.len());
        for (write, plan) in writes.into_iter().zip(plans) {
            let current = match plan {
                Ok(current) => current,
                Err(replayed) => {
                    results.push(replayed);
                    continue;
                }
            };
            let first_index = log.events.len();
            let stream_id = write.stream_id;
            let recorded: Vec<RecordedEvent> = write
                .events
                .into_iter()
                .enumerate()
                .map(|(i, e)| RecordedEvent {
                    event_id: e.event_id,
                    stream_id: stream_id.clone(),
                    stream_version: current + 1 + i as u64,
                    global_position: (first_index + i + 1) as u64,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    data: e.payload,
                    metadata: e.metadata,
                    recorded_at,
                })
                .collect();
            if !recorded.is_empty() {
                let Log {
                    events: all,
                    streams,
                    ids,
                    correlations,
                    ..
                } = &mut *log;
                let indices = streams.entry(stream_id).or_default();
                for (i, event) in recorded.iter().enumerate() {
                    ids.insert(event.event_id, first_index + i);
                    indices.push(first_index + i);
                    if let Some(correlation) = event.metadata.correlation_id {
                        correlations
                            .entry(correlation)
                            .or_default()
                            .push(first_index + i);
                    }
                }
                all.extend(recorded.iter().cloned());
            }
            if let (Some(command), Some(first), Some(last)) =
                (command, recorded.first(), recorded.last())
            {
                let index = log.journal.len();
                log.accepted.insert(command.command_id, index);
                log.record(JournalEntry {
                    command: command.clone(),
                    stream_id: first.stream_id.clone(),
                    outcome: JournalOutcome::Accepted {
                        first_version: first.stream_version,
                        last_version: last.stream_version,
                    },
                    recorded_at,
                });
            }
            results.push(recorded);
        }
        let head = log.events.len() as u64;
        drop(log);
        // With no subscriber, nobody waits: waking the watch's waiters
        // costs a handful of mutexes per append (7 % of W1), so skip it.
        // A subscriber that arrives later reads the log before it waits,
        // and an append that sees no receiver wrote its events before
        // that subscriber's first read (the log's lock orders them).
        if self.inner.head.receiver_count() == 0 {
            return Ok(results);
        }
        // Another append may have published a higher head since the lock
        // was released: the head only moves forward, or a subscriber
        // waiting for that append's events would sleep until the next one
        // (found by evently-core/tests/model_check.rs).
        self.inner.head.send_if_modified(|h| {
            let moved = head > *h;
            if moved {
                *h = head;
            }
            moved
        });
        Ok(results)
    }

    fn read_log(&self, from_position: u64, limit: usize) -> Vec<RecordedEvent> {
        let log = self.read();
        let start = from_position.max(1) as usize - 1;
        log.events
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take(limit)
            .cloned()
            .collect()
    }
}

impl Log {
    /// If every event id of `events` is already stored, as these events, in
    /// this order, in this stream: the stored events (a retried append).
    /// A partial or different reuse of stored ids is an error.
    fn replayed(
        &self,
        stream_id: &StreamId,
        events: &[NewEvent],
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let mut found: Vec<usize> = Vec::new();
        for (i, new) in events.iter().enumerate() {
            let Some(&index) = self.ids.get(&new.event_id) else {
                if found.is_empty() {
                    continue;
                }
                let stored = &self.events[found[0]];
                return Err(duplicate(
                    stored,
                    "the append mixes stored and new event ids",
                ));
            };
            let stored = &self.events[index];
            if stored.stream_id != *stream_id {
                return Err(duplicate(stored, "the id belongs to another stream"));
            }
            if found.len() != i {
                return Err(duplicate(
                    stored,
                    "the append mixes stored and new event ids",
                ));
            }
            if let Some(&previous) = found.last() {
                if self.events[previous].stream_version + 1 != stored.stream_version {
                    return Err(duplicate(stored, "the events were stored in another order"));
                }
            }
            if stored.event_type != new.event_type
                || stored.schema_version != new.schema_version
                || !stored.data.same_json(&new.payload)
                || stored.metadata != new.metadata
            {
                return Err(duplicate(stored, "the stored event has other content"));
            }
            found.push(index);
        }
        if found.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            found.into_iter().map(|i| self.events[i].clone()).collect(),
        ))
    }
}

fn duplicate(stored: &RecordedEvent, reason: &str) -> StoreError {
    StoreError::DuplicateEventId {
        event_id: stored.event_id,
        stored_in: stored.stream_id.clone(),
        stored_version: stored.stream_version,
        reason: reason.to_owned(),
    }
}

impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let write = StreamAppend {
            stream_id: stream_id.clone(),
            expected,
            events,
        };
        Ok(self
            .append_now(vec![write], None)?
            .pop()
            .unwrap_or_default())
    }

    async fn append_atomic(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        self.append_now(appends, None)
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let log = self.read();
        Ok(log
            .stream_from(stream_id, from_version)
            .iter()
            .take(limit)
            .map(|&i| log.events[i].clone())
            .collect())
    }

    async fn fold_stream<E, F>(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        mut f: F,
    ) -> Result<(), E>
    where
        E: From<StoreError> + Send,
        F: FnMut(EventData<'_>) -> Result<(), E> + Send,
    {
        evently_core::backend::check_stream_id(stream_id)?;
        // Under the read lock, with nothing awaited: no event is copied.
        let log = self.read();
        for &i in log.stream_from(stream_id, from_version) {
            f(EventData::of(&log.events[i]))?;
        }
        Ok(())
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.read_log(from_position, limit))
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        Ok(self.read().streams.get(stream_id).map_or(0, Vec::len) as u64)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        // Not the watch's value: that one moves only while someone
        // subscribes.
        Ok(self.read().events.len() as u64)
    }

    async fn events_after(&self, position: u64, cap: u64) -> Result<u64, StoreError> {
        // Positions are dense here: the log's length is its head.
        let head = self.read().events.len() as u64;
        Ok(head.saturating_sub(position).min(cap))
    }

    fn subscribe(&self, from_position: u64) -> EventStream {
        let state = Subscription {
            store: self.clone(),
            head: self.inner.head.subscribe(),
            next: from_position.max(1),
            buffer: VecDeque::new(),
        };
        Box::pin(futures::stream::unfold(state, |mut sub| async move {
            loop {
                if let Some(event) = sub.buffer.pop_front() {
                    return Some((Ok(event), sub));
                }
                let page = sub.store.read_log(sub.next, SUBSCRIPTION_PAGE);
                if let Some(last) = page.last() {
                    sub.next = last.global_position + 1;
                    sub.buffer.extend(page);
                    continue;
                }
                let next = sub.next;
                // The subscription holds a store handle, so the sender lives
                // as long as it does and this wait ends only on new events.
                sub.head.wait_for(|head| *head >= next).await.ok()?;
            }
        }))
    }
}

struct Subscription {
    store: MemoryStore,
    head: watch::Receiver<u64>,
    next: u64,
    buffer: VecDeque<RecordedEvent>,
}

/// Views in memory: the documents of a view name live as long as the
/// store, so a view started again goes on from its checkpoint.
impl evently_core::view::ViewStore for MemoryStore {
    async fn run_view<V: evently_core::view::View>(
        &self,
        name: &str,
        options: evently_core::projection::ProjectionOptions,
    ) -> Result<evently_core::view::Views<V>, evently_core::view::ViewError> {
        self.views.run(self.clone(), name, options)
    }
}
