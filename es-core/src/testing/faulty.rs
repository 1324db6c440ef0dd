//! A store wrapper that fails on purpose, so tests can prove that retries
//! neither lose nor duplicate events.

use std::sync::{Arc, Mutex, PoisonError};

use crate::error::StoreError;
use crate::event::{NewEvent, RecordedEvent};
use crate::store::{EventStore, EventStream, Snapshot, StreamAppend};
use crate::version::{ExpectedVersion, StreamId};

/// Wraps a store and injects faults on request: fail the next append before
/// it reaches the store, lose the reply of the next append after it
/// succeeded, fail the next read. Each injected failure is
/// [`StoreError::Unavailable`], as a dropped connection would be. Clones
/// share the same faults.
///
/// Used in `tests/runtime.rs` of the workspace: a lost reply makes the
/// runtime re-send the same events, and the store's idempotency keeps them
/// stored once.
#[derive(Clone, Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<Mutex<Faults>>,
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
            return Err(StoreError::Unavailable(
                "injected fault: read failed".into(),
            ));
        }
        Ok(())
    }
}

fn lost_reply() -> StoreError {
    StoreError::Unavailable("injected fault: the append succeeded but its reply was lost".into())
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
        match self.take_append_fault() {
            AppendFault::FailBefore => Err(StoreError::Unavailable(
                "injected fault: append failed before reaching the store".into(),
            )),
            AppendFault::LoseReply => {
                self.inner.append(stream_id, expected, events).await?;
                Err(lost_reply())
            }
            AppendFault::None => self.inner.append(stream_id, expected, events).await,
        }
    }

    async fn append_atomic(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        match self.take_append_fault() {
            AppendFault::FailBefore => Err(StoreError::Unavailable(
                "injected fault: append failed before reaching the store".into(),
            )),
            AppendFault::LoseReply => {
                self.inner.append_atomic(appends).await?;
                Err(lost_reply())
            }
            AppendFault::None => self.inner.append_atomic(appends).await,
        }
    }

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
        self.inner.read_all(from_position, limit).await
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
        self.inner.subscribe(from_position)
    }
}
