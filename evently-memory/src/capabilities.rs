//! The in-memory store's capabilities beyond the log: snapshots, command
//! records (idempotent commands, the journal), correlation reads, and
//! closing and erasing streams.

use chrono::Utc;
use evently_core::{
    CommandRecord, CommandStore, CorrelationStore, ExpectedVersion, JournalEntry, JournalOutcome,
    NewEvent, Payload, RecordedEvent, Snapshot, SnapshotStore, StoreError, StreamAppend, StreamId,
    StreamLifecycle,
};
use uuid::Uuid;

use crate::MemoryStore;

impl SnapshotStore for MemoryStore {
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        Ok(self.read().snapshots.get(stream_id).cloned())
    }

    async fn save_snapshot(
        &self,
        stream_id: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        evently_core::limits::check_snapshot(stream_id, &snapshot)?;
        let mut log = self.write();
        let newer = log
            .snapshots
            .get(stream_id)
            .is_none_or(|stored| stored.version < snapshot.version);
        if newer {
            log.snapshots.insert(stream_id.clone(), snapshot);
        }
        Ok(())
    }
}

impl CommandStore for MemoryStore {
    async fn append_for_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::limits::check_command(stream_id, command, None)?;
        let write = StreamAppend {
            stream_id: stream_id.clone(),
            expected,
            events,
        };
        Ok(self
            .append_now(vec![write], Some(command))?
            .pop()
            .unwrap_or_default())
    }

    async fn record_rejected_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        error: &str,
    ) -> Result<(), StoreError> {
        evently_core::limits::check_command(stream_id, command, Some(error))?;
        self.write().record(JournalEntry {
            command: command.clone(),
            stream_id: stream_id.clone(),
            outcome: JournalOutcome::Rejected {
                error: error.to_owned(),
            },
            recorded_at: Utc::now(),
        });
        Ok(())
    }

    async fn find_command(&self, command_id: Uuid) -> Result<Option<JournalEntry>, StoreError> {
        let log = self.read();
        if let Some(&i) = log.accepted.get(&command_id) {
            return Ok(Some(log.journal[i].clone()));
        }
        let latest = log.commands.get(&command_id).and_then(|all| all.last());
        Ok(latest.map(|&i| log.journal[i].clone()))
    }

    async fn command_journal(&self, stream_id: &StreamId) -> Result<Vec<JournalEntry>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let log = self.read();
        let indices = log.journals.get(stream_id).map_or(&[][..], Vec::as_slice);
        Ok(indices.iter().map(|&i| log.journal[i].clone()).collect())
    }
}

impl CorrelationStore for MemoryStore {
    async fn read_correlation(
        &self,
        correlation_id: Uuid,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.read();
        let indices = log
            .correlations
            .get(&correlation_id)
            .map_or(&[][..], Vec::as_slice);
        // Index i holds position i + 1.
        let start = indices.partition_point(|&i| (i as u64 + 1) < from_position);
        Ok(indices[start..]
            .iter()
            .take(limit)
            .map(|&i| log.events[i].clone())
            .collect())
    }
}

impl StreamLifecycle for MemoryStore {
    async fn close_stream(&self, stream_id: &StreamId) -> Result<(), StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        self.write().closed.insert(stream_id.clone());
        Ok(())
    }

    async fn erase_stream(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let mut log = self.write();
        log.closed.insert(stream_id.clone());
        let indices = log.streams.get(stream_id).cloned().unwrap_or_default();
        let now = Utc::now();
        for &i in &indices {
            let event = &mut log.events[i];
            event.data = Payload::from_json_unchecked("{}");
            event.metadata.actor = None;
            event.metadata.extra.clear();
            event.metadata.erased_at = Some(now);
        }
        log.snapshots.remove(stream_id);
        // Commands carry personal data too.
        let journal = log.journals.get(stream_id).cloned().unwrap_or_default();
        for i in journal {
            let entry = &mut log.journal[i];
            entry.command.payload = None;
            entry.command.metadata.actor = None;
            entry.command.metadata.extra.clear();
            entry.command.metadata.erased_at = Some(now);
            if let JournalOutcome::Rejected { error } = &mut entry.outcome {
                *error = JournalOutcome::ERASED_ERROR.into();
            }
        }
        Ok(indices.len() as u64)
    }
}
