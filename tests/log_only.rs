//! A store that keeps only the log (it implements `EventStore` and no
//! capability trait): the conformance suite's `log` section runs on it,
//! commands run through `Repository::log_only`, and what needs a capability
//! it lacks is refused — at compile time for the repository's options
//! (`tests/ui/log_only_store_with_journal.rs`), with a typed error for an
//! idempotent command, never a silent `Ok`.

use evently::backend::LogStream;
use evently::memory::MemoryStore;
use evently::prelude::*;
use evently::EventStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The memory store seen through the core log trait only.
#[derive(Clone, Default)]
pub struct LogOnly(MemoryStore);

impl EventStore for LogOnly {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.append(stream_id, expected, events).await
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_stream(stream_id, from_version, limit).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_all(from_position, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        self.0.stream_version(stream_id).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.0.head_position().await
    }

    fn subscribe(&self, from_position: u64) -> EventStream {
        self.0.subscribe(from_position)
    }

    fn subscribe_rows(&self, from_position: u64) -> LogStream {
        self.0.subscribe_rows(from_position)
    }

    async fn append_atomic(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        self.0.append_atomic(appends).await
    }
}

// Only the core of the contract: a store with no capability runs it.
evently::conformance_suite!(|| async { LogOnly::default() }; log);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum TallyEvent {
    Added { n: u32 },
}

#[derive(Debug, Clone, Command)]
enum TallyCommand {
    Add { id: String, n: u32 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = TallyEvent, command = TallyCommand, error = Never)]
struct Tally {
    total: u32,
}

impl Tally {
    fn decide(&self, command: TallyCommand) -> Result<Vec<TallyEvent>, Never> {
        let TallyCommand::Add { n, .. } = command;
        Ok(vec![TallyEvent::Added { n }])
    }

    fn apply(&mut self, event: &TallyEvent) {
        let TallyEvent::Added { n } = event;
        self.total += n;
    }
}

#[tokio::test]
async fn commands_run_on_a_log_only_store_and_an_idempotent_one_is_refused() {
    let tallies = Repository::<Tally, _>::log_only(LogOnly::default());
    let add = |n| TallyCommand::Add { id: "t".into(), n };
    tallies.execute(add(2)).await.unwrap();
    tallies
        .execute_with(add(3), CommandContext::new().with_actor("clerk"))
        .await
        .unwrap();
    assert_eq!(tallies.load("t").await.unwrap().state.total, 5);
    // Nothing could remember the command id: refused, nothing appended.
    let refused = tallies
        .execute_with(
            add(4),
            CommandContext::new().with_command_id(Uuid::now_v7()),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Store(StoreError::Unsupported { .. }))
        ),
        "got {refused:?}"
    );
    assert_eq!(tallies.load("t").await.unwrap().state.total, 5);
}
