//! [`EventStore`] for [`PgEventStore`]: each method checks its arguments
//! and hands over to the module of its role (append, read, journal,
//! subscription).

use evently_core::{
    CommandRecord, CommandStore, CorrelationStore, EventData, EventStore, EventStream,
    ExpectedVersion, JournalEntry, NewEvent, RecordedEvent, Snapshot, SnapshotStore, StoreError,
    StreamAppend, StreamId, StreamLifecycle,
};

use crate::error::unavailable_or_backend;
use crate::{journal, subscription, PgEventStore};

impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.append_pooled(stream_id, expected, events, None).await
    }

    async fn append_atomic(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        self.append_atomic_alone(appends).await
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        self.fetch_stream(stream_id, from_version, limit).await
    }

    async fn fold_stream<E, F>(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        f: F,
    ) -> Result<(), E>
    where
        E: From<StoreError> + Send,
        F: FnMut(EventData<'_>) -> Result<(), E> + Send,
    {
        self.fold_rows(stream_id, from_version, f).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.await_own_writes().await?;
        self.read_log(from_position, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        self.fetch_stream_version(stream_id).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.fetch_head().await
    }

    async fn events_after(&self, position: u64, cap: u64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(&self.inner.queries.events_after)
            .bind(crate::read::to_i64(position))
            .bind(crate::read::to_i64(cap))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(crate::error::unavailable_or_backend)?;
        Ok(count as u64)
    }

    fn subscribe(&self, from_position: u64) -> EventStream {
        subscription::subscribe(self.clone(), from_position)
    }

    fn subscribe_rows(&self, from_position: u64) -> evently_core::backend::LogStream {
        subscription::subscribe_rows(self.clone(), from_position)
    }
}

impl SnapshotStore for PgEventStore {
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        self.fetch_snapshot(stream_id).await
    }

    async fn save_snapshot(
        &self,
        stream_id: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        evently_core::limits::check_snapshot(stream_id, &snapshot)?;
        self.store_snapshot(stream_id, snapshot).await
    }
}

impl CommandStore for PgEventStore {
    async fn append_for_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::limits::check_command(stream_id, command, None)?;
        self.append_pooled(stream_id, expected, events, Some(command))
            .await
    }

    async fn record_rejected_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        error: &str,
    ) -> Result<(), StoreError> {
        evently_core::limits::check_command(stream_id, command, Some(error))?;
        journal::record_rejected(self, command, stream_id, error).await
    }

    async fn find_command(
        &self,
        command_id: uuid::Uuid,
    ) -> Result<Option<JournalEntry>, StoreError> {
        journal::find(self, command_id).await
    }

    async fn command_journal(&self, stream_id: &StreamId) -> Result<Vec<JournalEntry>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        journal::of_stream(self, stream_id).await
    }
}

impl CorrelationStore for PgEventStore {
    async fn read_correlation(
        &self,
        correlation_id: uuid::Uuid,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.fetch_correlation(correlation_id, from_position, limit)
            .await
    }
}

impl StreamLifecycle for PgEventStore {
    async fn close_stream(&self, stream_id: &StreamId) -> Result<(), StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(unavailable_or_backend)?;
        journal::close(self, stream_id, &mut conn).await
    }

    async fn erase_stream(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        journal::erase(self, stream_id).await
    }
}
