//! A store wrapper that fails on purpose, so tests can prove that retries
//! neither lose nor duplicate events.

use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::{LogItem, LogStream, UnreadableEvent};
use crate::error::StoreError;
use crate::event::{NewEvent, RecordedEvent};
use crate::store::{
    CommandRecord, CommandStore, CorrelationStore, EventStore, EventStream, JournalEntry, Snapshot,
    SnapshotStore, StreamAppend, StreamLifecycle,
};
use crate::version::{ExpectedVersion, StreamId};

/// Wraps a store and injects faults on request: fail the next append before
/// it reaches the store, lose the reply of the next append after it
/// succeeded, fail the next read. Each injected failure is
/// [`StoreError::Unavailable`], as a dropped connection would be. It can
/// also make the event at a position unreadable, as a row whose metadata
/// no longer decodes is in a real store. Clones share the same faults.
///
/// Used in `tests/runtime.rs` of the workspace: a lost reply makes the
/// runtime re-send the same events, and the store's idempotency keeps them
/// stored once.
#[derive(Clone, Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<Mutex<Faults>>,
    unreadable: Arc<Mutex<std::collections::BTreeSet<u64>>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    fail_appends: u32,
    lose_append_replies: u32,
    fail_reads: u32,
    appends_seen: u64,
    reads_seen: u64,
    faults_injected: u64,
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`, injecting nothing until asked.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            faults: Arc::default(),
            unreadable: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next append fails before it reaches the store: nothing is written.
    pub fn fail_next_append(&self) {
        self.faults().fail_appends += 1;
    }

    /// The next append reaches the store and succeeds, but its caller gets
    /// [`StoreError::Unavailable`], as if the reply were lost on the way.
    pub fn lose_next_append_reply(&self) {
        self.faults().lose_append_replies += 1;
    }

    /// The next read (`read_stream`, `read_all`, `stream_version` or
    /// `head_position`) fails.
    pub fn fail_next_read(&self) {
        self.faults().fail_reads += 1;
    }

    /// The event at `position` reads as a corrupt row from now on: a
    /// `read_all` page holding it fails with [`StoreError::Corrupt`],
    /// `subscribe` yields that error after the events before it and ends,
    /// and `subscribe_rows` yields it as [`LogItem::Unreadable`] and goes
    /// on, as a PostgreSQL row whose metadata no longer decodes does.
    pub fn make_unreadable(&self, position: u64) {
        self.unreadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(position);
    }

    /// The error of an event made unreadable, or None.
    fn unreadable(
        unreadable: &Mutex<std::collections::BTreeSet<u64>>,
        event: &RecordedEvent,
    ) -> Option<StoreError> {
        let unreadable = unreadable.lock().unwrap_or_else(PoisonError::into_inner);
        unreadable
            .contains(&event.global_position)
            .then(|| StoreError::Corrupt {
                stream_id: event.stream_id.clone(),
                stream_version: event.stream_version,
                reason: "injected fault: the row cannot be read".into(),
            })
    }

    /// How many appends callers have attempted through this wrapper.
    pub fn appends_seen(&self) -> u64 {
        self.faults().appends_seen
    }

    /// How many reads (`read_stream`, `read_all`, `stream_version`,
    /// `head_position`, `load_snapshot`) callers have made through this
    /// wrapper: a way to count round trips.
    pub fn reads_seen(&self) -> u64 {
        self.faults().reads_seen
    }

    /// How many faults were injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.faults().faults_injected
    }

    fn take_append_fault(&self) -> AppendFault {
        let mut faults = self.faults();
        faults.appends_seen += 1;
        if faults.fail_appends > 0 {
            faults.fail_appends -= 1;
            faults.faults_injected += 1;
            AppendFault::FailBefore
        } else if faults.lose_append_replies > 0 {
            faults.lose_append_replies -= 1;
            faults.faults_injected += 1;
            AppendFault::LoseReply
        } else {
            AppendFault::None
        }
    }

    fn take_read_fault(&self) -> Result<(), StoreError> {
        let mut faults = self.faults();
        faults.reads_seen += 1;
        if faults.fail_reads > 0 {
            faults.fail_reads -= 1;
            faults.faults_injected += 1;
            return Err(StoreError::unavailable("injected fault: read failed"));
        }
        Ok(())
    }
}

impl<S> FaultyStore<S> {
    /// Runs one append (of any kind) through the next append fault.
    async fn faulty_append<T>(
        &self,
        append: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.take_append_fault() {
            AppendFault::FailBefore => Err(StoreError::unavailable(
                "injected fault: append failed before reaching the store",
            )),
            AppendFault::LoseReply => {
                append.await?;
                Err(lost_reply())
            }
            AppendFault::None => append.await,
        }
    }
}

fn lost_reply() -> StoreError {
    StoreError::unavailable("injected fault: the append succeeded but its reply was lost")
}

enum AppendFault {
    None,
    FailBefore,
    LoseReply,
}

impl<S: EventStore> EventStore for FaultyStore<S> {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.faulty_append(self.inner.append(stream_id, expected, events))
            .await
    }

    async fn append_atomic(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        self.faulty_append(self.inner.append_atomic(appends)).await
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.take_read_fault()?;
        self.inner.read_stream(stream_id, from_version, limit).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.take_read_fault()?;
        let page = self.inner.read_all(from_position, limit).await?;
        match page
            .iter()
            .find_map(|event| Self::unreadable(&self.unreadable, event))
        {
            Some(error) => Err(error),
            None => Ok(page),
        }
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        self.take_read_fault()?;
        self.inner.stream_version(stream_id).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.take_read_fault()?;
        self.inner.head_position().await
    }

    fn subscribe(&self, from_position: u64) -> EventStream {
        use futures::StreamExt;
        let unreadable = Arc::clone(&self.unreadable);
        // Up to and including the first unreadable event, as its error.
        self.inner
            .subscribe(from_position)
            .scan(false, move |ended, item| {
                if *ended {
                    return futures::future::ready(None);
                }
                let item = match item {
                    Ok(event) => match Self::unreadable(&unreadable, &event) {
                        Some(error) => Err(error),
                        None => Ok(event),
                    },
                    Err(error) => Err(error),
                };
                *ended = item.is_err();
                futures::future::ready(Some(item))
            })
            .boxed()
    }

    fn subscribe_rows(&self, from_position: u64) -> LogStream {
        use futures::StreamExt;
        let unreadable = Arc::clone(&self.unreadable);
        self.inner
            .subscribe_rows(from_position)
            .map(move |item| match item {
                Ok(LogItem::Event(event)) => match Self::unreadable(&unreadable, &event) {
                    Some(error) => Ok(LogItem::Unreadable(UnreadableEvent {
                        global_position: event.global_position,
                        stream_id: event.stream_id,
                        stream_version: event.stream_version,
                        event_id: Some(event.event_id),
                        event_type: Some(event.event_type.into_owned()),
                        schema_version: Some(event.schema_version),
                        error,
                    })),
                    None => Ok(LogItem::Event(event)),
                },
                other => other,
            })
            .boxed()
    }
}

// Each capability the wrapped store has, the wrapper has too: appends
// through the append faults, reads through the read faults.

impl<S: SnapshotStore> SnapshotStore for FaultyStore<S> {
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.take_read_fault()?;
        self.inner.load_snapshot(stream_id).await
    }

    async fn save_snapshot(
        &self,
        stream_id: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.save_snapshot(stream_id, snapshot).await
    }
}

impl<S: CommandStore> CommandStore for FaultyStore<S> {
    async fn append_for_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.faulty_append(
            self.inner
                .append_for_command(command, stream_id, expected, events),
        )
        .await
    }

    async fn record_rejected_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        error: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .record_rejected_command(command, stream_id, error)
            .await
    }

    async fn find_command(
        &self,
        command_id: uuid::Uuid,
    ) -> Result<Option<JournalEntry>, StoreError> {
        self.take_read_fault()?;
        self.inner.find_command(command_id).await
    }

    async fn command_journal(&self, stream_id: &StreamId) -> Result<Vec<JournalEntry>, StoreError> {
        self.take_read_fault()?;
        self.inner.command_journal(stream_id).await
    }
}

impl<S: CorrelationStore> CorrelationStore for FaultyStore<S> {
    async fn read_correlation(
        &self,
        correlation_id: uuid::Uuid,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.take_read_fault()?;
        self.inner
            .read_correlation(correlation_id, from_position, limit)
            .await
    }
}

impl<S: StreamLifecycle> StreamLifecycle for FaultyStore<S> {
    async fn close_stream(&self, stream_id: &StreamId) -> Result<(), StoreError> {
        self.inner.close_stream(stream_id).await
    }

    async fn erase_stream(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        self.inner.erase_stream(stream_id).await
    }
}
