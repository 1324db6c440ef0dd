//! The command runtime against the in-memory store: load, decide, append,
//! retry on conflict, re-send after lost replies, metadata on every event,
//! typed errors for bad stored data.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use evently::memory::MemoryStore;
use evently::prelude::*;
use evently::testing::FaultyStore;
use evently::{DecodeErrorKind, Payload, RetryPolicy};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum CounterEvent {
    Added { n: u64 },
}

#[derive(Debug, Clone, Command)]
enum CounterCommand {
    Add { id: String, n: u64 },
    Touch { id: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum CounterError {
    #[error("cannot add zero")]
    Zero,
}

/// Lets a test act as another writer in the middle of a decision.
#[derive(Default)]
struct Interference {
    store: Option<MemoryStore>,
    times: AtomicU32,
}

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(event = CounterEvent, command = CounterCommand, error = CounterError, services = Interference)]
struct Counter {
    total: u64,
}

impl Counter {
    async fn decide(
        &self,
        command: CounterCommand,
        interference: &Interference,
    ) -> Result<Vec<CounterEvent>, CounterError> {
        if let Some(store) = &interference.store {
            let left = interference.times.load(Ordering::SeqCst);
            if left > 0 {
                interference.times.store(left - 1, Ordering::SeqCst);
                let stream = Counter::stream_id(&command.aggregate_id());
                let other = NewEvent::from_event(&CounterEvent::Added { n: 1000 }, Metadata::new())
                    .unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![other])
                    .await
                    .unwrap();
            }
        }
        match command {
            CounterCommand::Add { n: 0, .. } => Err(CounterError::Zero),
            CounterCommand::Add { n, .. } => Ok(vec![CounterEvent::Added { n }]),
            CounterCommand::Touch { .. } => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Added { n } => self.total += n,
        }
    }
}

fn add(id: &str, n: u64) -> CounterCommand {
    CounterCommand::Add { id: id.into(), n }
}

fn counters(store: MemoryStore) -> Repository<Counter, MemoryStore> {
    Repository::new(store)
}

#[tokio::test]
async fn a_command_stores_its_events_with_versions_positions_and_metadata() {
    let store = MemoryStore::new();
    let repo = counters(store.clone());
    repo.execute(add("other", 1)).await.unwrap();
    let correlation = Uuid::now_v7();
    let context = CommandContext::new()
        .with_correlation_id(correlation)
        .with_actor("alice")
        .with("tenant", "acme");
    let outcome = repo
        .execute_with(add("c1", 5), context.clone())
        .await
        .unwrap();
    assert_eq!(outcome.stream_id.as_str(), "counter-c1");
    assert_eq!(outcome.version, 1);
    assert_eq!(outcome.attempts, 1);
    let event = &outcome.events[0];
    assert_eq!(event.data, CounterEvent::Added { n: 5 });
    assert_eq!((event.stream_version, event.global_position), (1, 2));
    assert_eq!(event.metadata.correlation_id, Some(correlation));
    assert_eq!(event.metadata.causation_id, Some(context.command_id));
    assert_eq!(event.metadata.command_id, Some(context.command_id));
    assert_eq!(event.metadata.actor.as_deref(), Some("alice"));
    assert_eq!(
        event.metadata.get("tenant"),
        Some(&serde_json::json!("acme"))
    );
    let stored = store.read_stream(&outcome.stream_id, 1, 10).await.unwrap();
    assert_eq!(
        stored[0].metadata, event.metadata,
        "the store holds the same metadata"
    );
    assert_eq!(repo.load("c1").await.unwrap().state.total, 5);
}

#[tokio::test]
async fn a_new_business_transaction_is_correlated_by_its_command_id() {
    let repo = counters(MemoryStore::new());
    let context = CommandContext::new();
    let outcome = repo
        .execute_with(add("c1", 1), context.clone())
        .await
        .unwrap();
    assert_eq!(
        outcome.events[0].metadata.correlation_id,
        Some(context.command_id)
    );
}

#[tokio::test]
async fn a_rejected_command_writes_nothing() {
    let store = MemoryStore::new();
    let repo = counters(store.clone());
    repo.execute(add("c1", 2)).await.unwrap();
    let error = repo.execute(add("c1", 0)).await.unwrap_err();
    assert_eq!(error.rejection(), Some(&CounterError::Zero));
    assert_eq!(error.to_string(), "command rejected: cannot add zero");
    assert_eq!(store.event_count(), 1);
}

#[tokio::test]
async fn a_decision_without_events_writes_nothing() {
    let store = MemoryStore::new();
    let repo = counters(store.clone());
    repo.execute(add("c1", 2)).await.unwrap();
    let outcome = repo
        .execute(CounterCommand::Touch { id: "c1".into() })
        .await
        .unwrap();
    assert!(outcome.events.is_empty());
    assert_eq!(outcome.version, 1);
    assert_eq!(store.event_count(), 1);
}

#[tokio::test]
async fn a_conflict_reloads_and_decides_again_on_fresh_state() {
    let store = MemoryStore::new();
    let interference = Interference {
        store: Some(store.clone()),
        times: AtomicU32::new(1),
    };
    let repo = Repository::<Counter, _>::with_services(store.clone(), interference);
    let outcome = repo.execute(add("c1", 7)).await.unwrap();
    assert_eq!(outcome.attempts, 2);
    assert_eq!(outcome.version, 2, "the other writer's event is version 1");
    assert_eq!(repo.load("c1").await.unwrap().state.total, 1007);
}

#[tokio::test]
async fn a_conflict_that_persists_is_reported_after_the_last_attempt() {
    let store = MemoryStore::new();
    let interference = Interference {
        store: Some(store.clone()),
        times: AtomicU32::new(5),
    };
    let repo = Repository::<Counter, _>::with_services(store.clone(), interference)
        .retry_policy(RetryPolicy::default().max_attempts(3));
    let error = repo.execute(add("c1", 7)).await.unwrap_err();
    match &error {
        CommandError::Conflict {
            stream_id,
            attempts,
            source,
        } => {
            assert_eq!(stream_id.as_str(), "counter-c1");
            assert_eq!(*attempts, 3);
            assert!(source.is_conflict());
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "stream `counter-c1` kept changing: gave up after 3 conflicting attempts"
    );
    let total = repo.load("c1").await.unwrap().state.total;
    assert_eq!(total, 3000, "only the other writer's events are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_lose_no_update() {
    let store = MemoryStore::new();
    let repo = Repository::<Counter, _>::new(store.clone())
        .retry_policy(RetryPolicy::default().max_attempts(1000));
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let mut retried = 0;
            for i in 1..=20u64 {
                let outcome = repo.execute(add("shared", task * 100 + i)).await.unwrap();
                retried += outcome.attempts - 1;
            }
            retried
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let expected: u64 = (0..8u64)
        .flat_map(|t| (1..=20).map(move |i| t * 100 + i))
        .sum();
    let loaded = repo.load("shared").await.unwrap();
    assert_eq!(loaded.state.total, expected);
    assert_eq!(loaded.version, 160);
}

#[tokio::test]
async fn an_append_that_failed_is_sent_again_and_stored_once() {
    let store = FaultyStore::new(MemoryStore::new());
    let repo = Repository::<Counter, _>::new(store.clone());
    store.fail_next_append();
    let outcome = repo.execute(add("c1", 3)).await.unwrap();
    assert_eq!(outcome.version, 1);
    assert_eq!(store.appends_seen(), 2);
    assert_eq!(store.faults_injected(), 1);
    assert_eq!(store.inner().event_count(), 1);
}

#[tokio::test]
async fn an_append_whose_reply_was_lost_is_stored_once() {
    let store = FaultyStore::new(MemoryStore::new());
    let repo = Repository::<Counter, _>::new(store.clone());
    repo.execute(add("c1", 1)).await.unwrap();
    store.lose_next_append_reply();
    let outcome = repo.execute(add("c1", 3)).await.unwrap();
    assert_eq!(store.appends_seen(), 3, "the lost append was re-sent once");
    let stored = store.inner().read_all(1, 100).await.unwrap();
    assert_eq!(stored.len(), 2, "the re-sent events were not stored twice");
    assert_eq!(outcome.events[0].event_id, stored[1].event_id);
    assert_eq!(outcome.events[0].global_position, stored[1].global_position);
    assert_eq!(repo.load("c1").await.unwrap().state.total, 4);
}

#[tokio::test]
async fn a_store_that_stays_down_is_reported_and_nothing_is_written() {
    let store = FaultyStore::new(MemoryStore::new());
    let repo = Repository::<Counter, _>::new(store.clone())
        .retry_policy(RetryPolicy::default().max_transient_retries(2));
    for _ in 0..3 {
        store.fail_next_append();
    }
    let error = repo.execute(add("c1", 3)).await.unwrap_err();
    assert!(
        matches!(error, CommandError::Store(StoreError::Unavailable { .. })),
        "{error:?}"
    );
    assert_eq!(store.appends_seen(), 3);
    assert_eq!(store.inner().event_count(), 0);
}

#[tokio::test]
async fn a_failed_read_is_reported_and_nothing_is_written() {
    let store = FaultyStore::new(MemoryStore::new());
    let repo = Repository::<Counter, _>::new(store.clone());
    store.fail_next_read();
    let error = repo.execute(add("c1", 3)).await.unwrap_err();
    assert!(matches!(
        error,
        CommandError::Store(StoreError::Unavailable { .. })
    ));
    assert_eq!(store.inner().event_count(), 0);
    repo.execute(add("c1", 3))
        .await
        .expect("the next command succeeds");
}

async fn store_raw(
    store: &MemoryStore,
    stream: &str,
    event_type: &str,
    version: u32,
    payload: &str,
) {
    let event = NewEvent::raw(
        event_type.to_owned(),
        version,
        Payload::from_json(payload).unwrap(),
        Metadata::new(),
    );
    store
        .append(&StreamId::from(stream), ExpectedVersion::Any, vec![event])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_payload_that_no_longer_decodes_is_a_typed_error_naming_where_it_is() {
    let store = MemoryStore::new();
    let repo = counters(store.clone());
    repo.execute(add("good", 1)).await.unwrap();
    repo.execute(add("bad", 1)).await.unwrap();
    store_raw(&store, "counter-bad", "Added", 1, r#"{"n":"not a number"}"#).await;
    let error = repo.load("bad").await.unwrap_err();
    let CommandError::Decode(decode) = &error else {
        panic!("expected a decode error, got {error:?}");
    };
    assert_eq!(decode.stream_id.as_str(), "counter-bad");
    assert_eq!(decode.stream_version, 2);
    assert_eq!(decode.event_type, "Added");
    assert!(matches!(decode.kind, DecodeErrorKind::Payload(_)));
    assert!(
        error.to_string().starts_with(
            "cannot decode event `Added` (schema version 1) at version 2 of stream `counter-bad`: payload does not match the event"
        ),
        "{error}"
    );
    assert_eq!(
        repo.load("good").await.unwrap().state.total,
        1,
        "other streams still load"
    );
    assert_eq!(store.event_count(), 3, "nothing was lost");
}

#[tokio::test]
async fn an_unknown_event_type_is_a_typed_error() {
    let store = MemoryStore::new();
    store_raw(&store, "counter-x", "Renamed", 1, "{}").await;
    let error = counters(store).load("x").await.unwrap_err();
    let CommandError::Decode(decode) = &error else {
        panic!("expected a decode error, got {error:?}");
    };
    assert_eq!(decode.event_type, "Renamed");
    assert!(matches!(
        decode.kind,
        DecodeErrorKind::UnknownEventType { .. }
    ));
    assert!(
        error
            .to_string()
            .ends_with("unknown event type (known: Added)"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unsupported_schema_version_is_a_typed_error() {
    let store = MemoryStore::new();
    store_raw(&store, "counter-x", "Added", 2, r#"{"n":1}"#).await;
    let error = counters(store).load("x").await.unwrap_err();
    let CommandError::Decode(decode) = &error else {
        panic!("expected a decode error, got {error:?}");
    };
    assert!(matches!(
        decode.kind,
        DecodeErrorKind::UnsupportedSchemaVersion {
            found: 2,
            current: 1
        }
    ));
}

#[tokio::test]
async fn many_aggregates_from_many_tasks() {
    let store = MemoryStore::new();
    let repo = Arc::new(counters(store.clone()));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let repo = Arc::clone(&repo);
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                repo.execute(add(&format!("c{task}"), i + 1)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for task in 0..8 {
        let loaded = repo.load(&format!("c{task}")).await.unwrap();
        assert_eq!((loaded.state.total, loaded.version), ((1..=25).sum(), 25));
    }
    assert_eq!(store.event_count(), 200);
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "snapped", event = CounterEvent, command = CounterCommand, error = CounterError, shares_event)]
struct Snapped {
    total: u64,
}

impl Snapped {
    fn decide(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Add { n: 0, .. } => Err(CounterError::Zero),
            CounterCommand::Add { n, .. } => Ok(vec![CounterEvent::Added { n }]),
            CounterCommand::Touch { .. } => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Added { n } = event;
        self.total += n;
    }
}

#[tokio::test]
async fn a_load_starts_from_the_latest_snapshot() {
    let store = MemoryStore::new();
    let repo = Repository::<Snapped, _>::new(store.clone()).with_snapshots(Snapshots::every(10));
    for n in 1..=25 {
        repo.execute(add("s", n)).await.unwrap();
    }
    let snapshot = store
        .load_snapshot(&StreamId::from("snapped-s"))
        .await
        .unwrap()
        .expect("a snapshot was taken");
    assert_eq!(snapshot.version, 20);
    assert_eq!(
        snapshot.state.to_value().unwrap(),
        serde_json::json!({ "total": 210 })
    );
    let loaded = repo.load("s").await.unwrap();
    assert_eq!(
        (loaded.state.total, loaded.version, loaded.replayed),
        (325, 25, 5)
    );
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_means_a_full_replay() {
    let store = MemoryStore::new();
    let repo = Repository::<Snapped, _>::new(store.clone()).with_snapshots(Snapshots::every(10));
    for n in 1..=12 {
        repo.execute(add("s", n)).await.unwrap();
    }
    let stream = StreamId::from("snapped-s");
    let broken = evently::Snapshot {
        version: 12,
        schema_version: 1,
        state: Payload::from_json(r#"{"total":"not a number"}"#).unwrap(),
        taken_at: chrono_now(),
    };
    store.save_snapshot(&stream, broken).await.unwrap();
    let loaded = repo.load("s").await.unwrap();
    assert_eq!(
        (loaded.state.total, loaded.version, loaded.replayed),
        (78, 12, 12)
    );
    // A snapshot of an older state format is ignored the same way.
    let other_format =
        Repository::<Snapped, _>::new(store.clone()).with_snapshots(Snapshots::every(10).format(2));
    assert_eq!(other_format.load("s").await.unwrap().replayed, 12);
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

// ---------------------------------------------------------------------------
// Commands without an id field: the caller names the aggregate.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum LampEvent {
    SwitchedOn,
    SwitchedOff,
}

/// No variant carries an id: the derive accepts it, and only `execute_on`
/// can run it (`execute` does not compile: see tests/ui).
#[derive(Debug, Clone, Command)]
enum LampCommand {
    On,
    Off,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("already {0}")]
struct Already(&'static str);

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(event = LampEvent, command = LampCommand, error = Already)]
struct Lamp {
    on: bool,
}

impl Lamp {
    fn decide(&self, command: LampCommand) -> Result<Vec<LampEvent>, Already> {
        match (command, self.on) {
            (LampCommand::On, true) => Err(Already("on")),
            (LampCommand::On, false) => Ok(vec![LampEvent::SwitchedOn]),
            (LampCommand::Off, false) => Err(Already("off")),
            (LampCommand::Off, true) => Ok(vec![LampEvent::SwitchedOff]),
        }
    }

    fn apply(&mut self, event: &LampEvent) {
        self.on = matches!(event, LampEvent::SwitchedOn);
    }
}

#[tokio::test]
async fn a_command_without_an_id_runs_on_the_aggregate_the_caller_names() {
    let store = MemoryStore::new();
    let lamps = Repository::<Lamp, _>::new(store.clone());
    let on = lamps.execute_on("hall", LampCommand::On).await.unwrap();
    assert_eq!(on.events[0].stream_id.as_str(), "lamp-hall");
    assert_eq!(on.events[0].data, LampEvent::SwitchedOn);
    assert!(matches!(
        lamps.execute_on("hall", LampCommand::On).await,
        Err(CommandError::Rejected(Already("on")))
    ));
    // Another lamp is another stream.
    lamps.execute_on("porch", LampCommand::On).await.unwrap();
    let ctx = CommandContext::new().with_actor("night-timer");
    let off = lamps
        .execute_on_with("hall", LampCommand::Off, ctx)
        .await
        .unwrap();
    assert_eq!(off.events[0].metadata.actor.as_deref(), Some("night-timer"));
    assert!(!lamps.load("hall").await.unwrap().state.on);
    assert!(lamps.load("porch").await.unwrap().state.on);
    assert_eq!(LampCommand::Off.command_type(), "Off");
}

#[tokio::test]
async fn execute_on_overrides_the_id_a_command_carries() {
    let store = MemoryStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    let outcome = counters
        .execute_on(
            "other",
            CounterCommand::Add {
                id: "ignored".into(),
                n: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome.events[0].stream_id.as_str(), "counter-other");
}
