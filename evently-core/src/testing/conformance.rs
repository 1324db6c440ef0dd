//! The store conformance suite: one test per clause of the log's contract,
//! written once and run against every store — ours and any a user writes.
//!
//! Run it from a test file of the store's crate with [`conformance_suite!`],
//! giving a function that makes a fresh, empty store for each test (its own
//! database or schema for a durable store, so tests run in parallel):
//!
//! ```text
//! evently_core::conformance_suite!(|| async { evently_memory::MemoryStore::new() });
//! ```
//!
//! Each clause is also a public async function, to run by hand. Clauses are
//! grouped by capability (see [`conformance_suite!`]): a store that
//! implements only [`EventStore`] runs the `log` section.
//!
//! [`conformance_suite!`]: crate::conformance_suite

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{NewEvent, Payload, RecordedEvent};
use crate::metadata::Metadata;
use crate::store::{
    CommandRecord, CommandStore, CorrelationStore, EventStore, JournalOutcome, Snapshot,
    SnapshotStore, StreamAppend, StreamLifecycle,
};
use crate::version::{ExpectedVersion, StreamId};

/// How many tasks the concurrency clauses run at once.
pub const CONCURRENT_TASKS: usize = 8;

/// How long a clause waits for a subscription before it fails.
const SUBSCRIPTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Generates one `#[test]` per clause of the store contract, in one module
/// per section: `log` (the [`EventStore`] core, every store), `snapshots`
/// ([`SnapshotStore`]), `commands` ([`CommandStore`]), `correlation`
/// ([`CorrelationStore`]), `lifecycle` ([`StreamLifecycle`]) and `every`
/// (clauses that cross capabilities: all of them).
///
/// The argument is a closure returning a future of a fresh, empty store;
/// after a `;`, the sections to run, for a store with only some
/// capabilities:
///
/// ```text
/// evently_core::conformance_suite!(|| async { MyStore::fresh().await });                 // all
/// evently_core::conformance_suite!(|| async { MyStore::fresh().await }; log, snapshots); // some
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!($factory; log, snapshots, commands, correlation, lifecycle, every);
    };
    ($factory:expr; $($section:ident),+ $(,)?) => {
        $($crate::conformance_suite!(@section $section $factory);)+
    };
    (@section log $factory:expr) => {
        $crate::conformance_suite!(@module log $factory;
            append_assigns_contiguous_versions_from_one,
            recorded_events_keep_every_field,
            expected_version_any,
            expected_version_no_stream,
            expected_version_stream_exists,
            expected_version_exact,
            failed_append_writes_nothing,
            empty_append_checks_expectation_and_writes_nothing,
            retried_append_stores_nothing_twice,
            reused_event_id_with_other_content_is_refused,
            retry_compares_payloads_as_json_values,
            repeated_event_id_within_one_append_is_refused,
            reserved_metadata_keys_are_refused,
            read_stream_pages_from_a_version,
            read_all_pages_in_one_stable_order,
            stream_ids_are_stored_literally,
            concurrent_appends_to_one_stream_lose_nothing,
            concurrent_appends_to_distinct_streams_lose_nothing,
            concurrent_retries_of_one_append_store_it_once,
            subscription_catches_up_then_follows_live_writers,
            subscription_starts_at_the_given_position,
            subscription_on_empty_log_waits_for_the_first_event,
            atomic_append_across_streams_stores_all_or_nothing,
            atomic_append_refuses_a_stream_twice,
            atomic_append_retried_stores_nothing_twice,
            concurrent_atomic_transfers_are_never_half_stored,
            page_reads_go_through_everything,
            fold_reads_match_whole_reads,
            events_a_store_cannot_hold_are_refused_and_write_nothing,
            exactly_one_winner_per_expected_version,
        );
    };
    (@section snapshots $factory:expr) => {
        $crate::conformance_suite!(@module snapshots $factory;
            snapshots_keep_the_latest,
            oversized_payloads_and_appends_are_refused_by_size,
        );
    };
    (@section commands $factory:expr) => {
        $crate::conformance_suite!(@module commands $factory;
            a_command_id_is_executed_once,
            concurrent_repeats_of_one_command_append_once,
            the_journal_lists_accepted_and_rejected_commands,
        );
    };
    (@section correlation $factory:expr) => {
        $crate::conformance_suite!(@module correlation $factory;
            correlation_reads_one_business_transaction,
        );
    };
    (@section lifecycle $factory:expr) => {
        $crate::conformance_suite!(@module lifecycle $factory;
            erasing_a_stream_keeps_the_log_shape,
        );
    };
    (@section every $factory:expr) => {
        $crate::conformance_suite!(@module every $factory;
            a_closed_stream_takes_no_more_events,
            erasing_a_stream_erases_its_journal,
            bad_stream_ids_are_refused_by_every_operation,
        );
    };
    // One module per section, so a test is named `<section>::<clause>`.
    (@module $name:ident $factory:expr; $($clause:ident),* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@clauses $factory; $($clause),*);
        }
    };
    (@clauses $factory:expr; $($clause:ident),* $(,)?) => {
        $(
            #[test]
            fn $clause() {
                $crate::testing::conformance::run($factory, $crate::testing::conformance::$clause);
            }
        )*
    };
}

/// Runs one clause on a fresh store from `factory`, on a multi-threaded
/// runtime (so concurrent clauses really run in parallel).
pub fn run<S, F, Fut, C, CFut>(factory: F, clause: C)
where
    S: EventStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = S>,
    C: FnOnce(S) -> CFut,
    CFut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("the conformance suite needs a tokio runtime");
    runtime.block_on(async move {
        let store = factory().await;
        clause(store).await;
    });
}

fn event(n: u64) -> NewEvent {
    NewEvent::raw(
        "Tested",
        1,
        Payload::from_value(&serde_json::json!({ "n": n })),
        Metadata::new(),
    )
}

fn events(range: std::ops::Range<u64>) -> Vec<NewEvent> {
    range.map(event).collect()
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn new_ids(events: &[NewEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

async fn read_whole_stream<S: EventStore>(store: &S, stream: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, 1, usize::MAX)
        .await
        .expect("read_stream")
}

async fn read_whole_log<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store.read_all(1, usize::MAX).await.expect("read_all")
}

#[track_caller]
fn assert_wrong_version(
    result: Result<Vec<RecordedEvent>, StoreError>,
    stream: &StreamId,
    expected: ExpectedVersion,
    actual: u64,
) {
    match result {
        Err(StoreError::WrongExpectedVersion {
            stream_id,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(&stream_id, stream, "the conflict names the stream");
            assert_eq!(e, expected, "the conflict names the expected version");
            assert_eq!(a, actual, "the conflict names the actual version");
        }
        other => {
            panic!("expected WrongExpectedVersion({expected}, actual {actual}), got {other:?}")
        }
    }
}

/// Versions in a stream are 1, 2, 3, … in append order, across appends.
pub async fn append_assigns_contiguous_versions_from_one<S: EventStore>(store: S) {
    let stream = StreamId::from("account-1");
    let first = events(0..3);
    let recorded = store
        .append(&stream, ExpectedVersion::NoStream, first.clone())
        .await
        .expect("first append");
    assert_eq!(versions(&recorded), [1, 2, 3]);
    assert_eq!(ids(&recorded), new_ids(&first));
    let second = events(3..5);
    let recorded = store
        .append(&stream, ExpectedVersion::Exact(3), second.clone())
        .await
        .expect("second append");
    assert_eq!(versions(&recorded), [4, 5]);
    let stored = read_whole_stream(&store, &stream).await;
    assert_eq!(versions(&stored), [1, 2, 3, 4, 5]);
    assert_eq!(ids(&stored), [new_ids(&first), new_ids(&second)].concat());
    assert_eq!(store.stream_version(&stream).await.unwrap(), 5);
    assert_eq!(
        store
            .stream_version(&StreamId::from("account-2"))
            .await
            .unwrap(),
        0
    );
}

/// Every field of an appended event reads back unchanged, from the stream
/// and from the global log, and the store stamps a recording time.
pub async fn recorded_events_keep_every_field<S: EventStore>(store: S) {
    let stream = StreamId::from("order-ü-1");
    let mut metadata = Metadata::new()
        .with_correlation_id(Uuid::now_v7())
        .with_causation_id(Uuid::now_v7())
        .with("user", "alice")
        .with(
            "nested",
            serde_json::json!({ "tenant": 7, "tags": ["a", "b"] }),
        );
    let payload = Payload::from_value(&serde_json::json!({
        "text": "naïve \"quoted\" 'single' \\ back\nslash ✓",
        "big": u64::MAX,
        "neg": -1.5,
        "list": [1, null, true],
    }));
    metadata.command_id = Some(Uuid::now_v7());
    metadata.actor = Some("the billing service".into());
    let new = NewEvent::raw("OrderPlaced", 3, payload.clone(), metadata.clone());
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let recorded = store
        .append(&stream, ExpectedVersion::Any, vec![new.clone()])
        .await
        .expect("append");
    let after = chrono::Utc::now() + chrono::Duration::seconds(5);
    let from_stream = read_whole_stream(&store, &stream).await;
    let from_log = read_whole_log(&store).await;
    assert_eq!(from_stream.len(), 1);
    assert_eq!(
        from_log, from_stream,
        "the stream and the log hold the same event"
    );
    let stored = &from_stream[0];
    // A store may normalise the JSON text (key order, spacing): compare the
    // payload as JSON and everything else exactly.
    let returned = recorded[0].with_data(recorded[0].data.to_value().unwrap());
    assert_eq!(
        stored.with_data(stored.data.to_value().unwrap()),
        returned,
        "append returns the event as stored"
    );
    assert_eq!(stored.event_id, new.event_id);
    assert_eq!(stored.stream_id, stream);
    assert_eq!(stored.stream_version, 1);
    assert!(stored.global_position >= 1);
    assert_eq!(stored.event_type, "OrderPlaced");
    assert_eq!(stored.schema_version, 3);
    assert_eq!(stored.data.to_value().unwrap(), payload.to_value().unwrap());
    assert_eq!(stored.metadata.correlation_id, metadata.correlation_id);
    assert_eq!(stored.metadata.causation_id, metadata.causation_id);
    assert_eq!(stored.metadata.command_id, metadata.command_id);
    assert_eq!(stored.metadata.actor, metadata.actor);
    assert_eq!(stored.metadata.extra, metadata.extra);
    let drift = (stored.metadata.timestamp - metadata.timestamp).num_microseconds();
    assert!(
        drift.is_some_and(|us| us.abs() <= 1),
        "the metadata timestamp keeps at least microsecond precision"
    );
    assert!(
        stored.recorded_at >= before && stored.recorded_at <= after,
        "recorded_at {} is the time of the append",
        stored.recorded_at
    );
}

/// `Any` appends to a new and to an existing stream.
pub async fn expected_version_any<S: EventStore>(store: S) {
    let stream = StreamId::from("any-1");
    let r = store
        .append(&stream, ExpectedVersion::Any, events(0..1))
        .await
        .unwrap();
    assert_eq!(versions(&r), [1]);
    let r = store
        .append(&stream, ExpectedVersion::Any, events(1..3))
        .await
        .unwrap();
    assert_eq!(versions(&r), [2, 3]);
}

/// `NoStream` appends to a new stream only; the refusal names the actual
/// version and writes nothing.
pub async fn expected_version_no_stream<S: EventStore>(store: S) {
    let stream = StreamId::from("new-1");
    store
        .append(&stream, ExpectedVersion::NoStream, events(0..1))
        .await
        .unwrap();
    let refused = store
        .append(&stream, ExpectedVersion::NoStream, events(1..2))
        .await;
    assert_wrong_version(refused, &stream, ExpectedVersion::NoStream, 1);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
}

/// `StreamExists` appends to an existing stream only.
pub async fn expected_version_stream_exists<S: EventStore>(store: S) {
    let stream = StreamId::from("exists-1");
    let refused = store
        .append(&stream, ExpectedVersion::StreamExists, events(0..1))
        .await;
    assert_wrong_version(refused, &stream, ExpectedVersion::StreamExists, 0);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);
    store
        .append(&stream, ExpectedVersion::Any, events(0..1))
        .await
        .unwrap();
    let r = store
        .append(&stream, ExpectedVersion::StreamExists, events(1..2))
        .await
        .unwrap();
    assert_eq!(versions(&r), [2]);
}

/// `Exact(n)` appends only at version n (0 = no stream yet).
pub async fn expected_version_exact<S: EventStore>(store: S) {
    let stream = StreamId::from("exact-1");
    let refused = store
        .append(&stream, ExpectedVersion::Exact(1), events(0..1))
        .await;
    assert_wrong_version(refused, &stream, ExpectedVersion::Exact(1), 0);
    store
        .append(&stream, ExpectedVersion::Exact(0), events(0..2))
        .await
        .expect("Exact(0) on a new stream");
    for wrong in [0, 1, 3] {
        let refused = store
            .append(&stream, ExpectedVersion::Exact(wrong), events(2..3))
            .await;
        assert_wrong_version(refused, &stream, ExpectedVersion::Exact(wrong), 2);
    }
    let r = store
        .append(&stream, ExpectedVersion::Exact(2), events(2..3))
        .await
        .unwrap();
    assert_eq!(versions(&r), [3]);
}

/// A refused append writes none of its events: not in the stream, not in
/// the log, and its event ids stay free.
pub async fn failed_append_writes_nothing<S: EventStore>(store: S) {
    let stream = StreamId::from("atomic-1");
    store
        .append(&stream, ExpectedVersion::Any, events(0..2))
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    let batch = events(2..7);
    let refused = store
        .append(&stream, ExpectedVersion::Exact(1), batch.clone())
        .await;
    assert_wrong_version(refused, &stream, ExpectedVersion::Exact(1), 2);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    assert_eq!(store.head_position().await.unwrap(), head);
    assert_eq!(read_whole_log(&store).await.len(), 2);
    let r = store
        .append(&stream, ExpectedVersion::Exact(2), batch.clone())
        .await
        .expect("the refused events' ids are still free");
    assert_eq!(versions(&r), [3, 4, 5, 6, 7]);
    assert_eq!(ids(&r), new_ids(&batch));
}

/// Appending no events checks the expectation and writes nothing.
pub async fn empty_append_checks_expectation_and_writes_nothing<S: EventStore>(store: S) {
    let stream = StreamId::from("empty-1");
    let r = store
        .append(&stream, ExpectedVersion::NoStream, Vec::new())
        .await
        .unwrap();
    assert!(r.is_empty());
    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);
    let refused = store
        .append(&stream, ExpectedVersion::StreamExists, Vec::new())
        .await;
    assert_wrong_version(refused, &stream, ExpectedVersion::StreamExists, 0);
    assert_eq!(store.head_position().await.unwrap(), 0);
}

/// Re-sending an append (same ids, same content) stores nothing and
/// returns the first result, even with a now stale expectation and after
/// other events followed it.
pub async fn retried_append_stores_nothing_twice<S: EventStore>(store: S) {
    let stream = StreamId::from("retry-1");
    let batch = events(0..3);
    let first = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let again = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("a retry is not a conflict");
    assert_eq!(again, first);
    let later = store
        .append(&stream, ExpectedVersion::Exact(3), events(3..4))
        .await
        .unwrap();
    let third = store
        .append(&stream, ExpectedVersion::Any, batch.clone())
        .await
        .expect("a late retry");
    assert_eq!(third, first);
    let changed = event(99).with_id(later[0].event_id);
    let refused = store
        .append(&stream, ExpectedVersion::Exact(4), vec![changed])
        .await;
    assert!(
        matches!(refused, Err(StoreError::DuplicateEventId { .. })),
        "the same id with another payload is refused: {refused:?}"
    );
    let stored = read_whole_stream(&store, &stream).await;
    assert_eq!(versions(&stored), [1, 2, 3, 4]);
    assert_eq!(read_whole_log(&store).await.len(), 4);
}

/// A stored event id reused with other content, or in another stream, is
/// refused, and nothing is written.
pub async fn reused_event_id_with_other_content_is_refused<S: EventStore>(store: S) {
    let stream = StreamId::from("dup-1");
    let original = event(1);
    store
        .append(&stream, ExpectedVersion::Any, vec![original.clone()])
        .await
        .unwrap();
    let changed = event(2).with_id(original.event_id);
    let refused = store
        .append(&stream, ExpectedVersion::Any, vec![changed])
        .await;
    match refused {
        Err(StoreError::DuplicateEventId {
            event_id,
            stored_in,
            stored_version,
            ..
        }) => {
            assert_eq!(event_id, original.event_id);
            assert_eq!(stored_in, stream);
            assert_eq!(stored_version, 1);
        }
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    let elsewhere = StreamId::from("dup-2");
    let refused = store
        .append(&elsewhere, ExpectedVersion::Any, vec![original.clone()])
        .await;
    assert!(
        matches!(refused, Err(StoreError::DuplicateEventId { .. })),
        "the same id in another stream is refused: {refused:?}"
    );
    let mixed = vec![event(3), original.clone()];
    let refused = store.append(&stream, ExpectedVersion::Any, mixed).await;
    assert!(
        matches!(refused, Err(StoreError::DuplicateEventId { .. })),
        "new and stored ids in one append are refused: {refused:?}"
    );
    assert_eq!(read_whole_log(&store).await.len(), 1);
    assert_eq!(store.stream_version(&elsewhere).await.unwrap(), 0);
}

/// A retry is recognised by the JSON value of its payload, not its text:
/// the same event re-sent with other spacing, key order or number
/// spelling stores nothing twice on every store (PostgreSQL compares
/// `jsonb`), while another value under the same id is refused.
pub async fn retry_compares_payloads_as_json_values<S: EventStore>(store: S) {
    let stream = StreamId::from("json-1");
    let with = |text: &str| {
        NewEvent::raw(
            "Tested",
            1,
            Payload::from_json(text).unwrap(),
            Metadata::new(),
        )
    };
    let first = with(r#"{"n": 1, "tags": ["a", "b"], "price": 2.0}"#);
    let stored = store
        .append(&stream, ExpectedVersion::NoStream, vec![first.clone()])
        .await
        .unwrap();
    let mut respelled = with(r#"{"price":2,"tags":["a","b"],"n":1}"#).with_id(first.event_id);
    respelled.metadata = first.metadata.clone();
    let again = store
        .append(&stream, ExpectedVersion::NoStream, vec![respelled])
        .await
        .expect("the same JSON value is a retry");
    assert_eq!(ids(&again), ids(&stored));
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
    let mut other = with(r#"{"n": 2, "tags": ["a", "b"], "price": 2.0}"#).with_id(first.event_id);
    other.metadata = first.metadata.clone();
    let refused = store
        .append(&stream, ExpectedVersion::Any, vec![other])
        .await;
    assert!(
        matches!(refused, Err(StoreError::DuplicateEventId { .. })),
        "got {refused:?}"
    );
}

/// One event id twice in one append is refused; nothing is written.
pub async fn repeated_event_id_within_one_append_is_refused<S: EventStore>(store: S) {
    let stream = StreamId::from("twice-1");
    let e = event(1);
    let refused = store
        .append(&stream, ExpectedVersion::Any, vec![e.clone(), e])
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidAppend { .. })),
        "got {refused:?}"
    );
    assert_eq!(store.head_position().await.unwrap(), 0);
}

/// A user metadata key named like a known field (`timestamp`,
/// `erased_at`, …) is refused on every append path; nothing is written.
pub async fn reserved_metadata_keys_are_refused<S: EventStore>(store: S) {
    let stream = StreamId::from("reserved-1");
    for key in Metadata::RESERVED_KEYS {
        let mut bad = event(1);
        bad.metadata = bad.metadata.with(*key, "user value");
        let refused = store
            .append(&stream, ExpectedVersion::Any, vec![event(2), bad.clone()])
            .await;
        match refused {
            Err(StoreError::InvalidAppend { reason, .. }) => {
                assert!(reason.contains(key), "{key}: {reason}")
            }
            other => panic!("{key}: got {other:?}"),
        }
        let refused = store
            .append_atomic(vec![
                StreamAppend::new("reserved-2", ExpectedVersion::Any, vec![event(3)]),
                StreamAppend::new(stream.clone(), ExpectedVersion::Any, vec![bad]),
            ])
            .await;
        assert!(
            matches!(refused, Err(StoreError::InvalidAppend { .. })),
            "{key}: got {refused:?}"
        );
    }
    assert_eq!(store.head_position().await.unwrap(), 0);
    // A key that is not reserved is kept and read back.
    let mut good = event(4);
    good.metadata = good.metadata.with("tenant", "acme");
    store
        .append(&stream, ExpectedVersion::Any, vec![good])
        .await
        .unwrap();
    let read = read_whole_stream(&store, &stream).await;
    assert_eq!(
        read[0].metadata.get("tenant"),
        Some(&serde_json::json!("acme"))
    );
    assert_eq!(read[0].metadata.erased_at, None);
}

/// A stream reads from a version, with a limit; a missing stream or a
/// version past the end reads as empty.
pub async fn read_stream_pages_from_a_version<S: EventStore>(store: S) {
    let stream = StreamId::from("paged-1");
    store
        .append(&stream, ExpectedVersion::Any, events(0..10))
        .await
        .unwrap();
    store
        .append(
            &StreamId::from("paged-2"),
            ExpectedVersion::Any,
            events(0..3),
        )
        .await
        .unwrap();
    let page = store.read_stream(&stream, 4, 3).await.unwrap();
    assert_eq!(versions(&page), [4, 5, 6]);
    let tail = store.read_stream(&stream, 9, 100).await.unwrap();
    assert_eq!(versions(&tail), [9, 10]);
    assert!(store.read_stream(&stream, 11, 10).await.unwrap().is_empty());
    assert!(store.read_stream(&stream, 1, 0).await.unwrap().is_empty());
    assert_eq!(
        versions(&store.read_stream(&stream, 0, 2).await.unwrap()),
        [1, 2]
    );
    assert!(store
        .read_stream(&StreamId::from("missing"), 1, 10)
        .await
        .unwrap()
        .is_empty());
}

/// The global log reads in one order: positions increase, each stream's
/// versions increase along it, pages join into the whole, and a second read
/// gives the same order.
pub async fn read_all_pages_in_one_stable_order<S: EventStore>(store: S) {
    let streams: Vec<StreamId> = (0..3).map(|i| StreamId::new(format!("log-{i}"))).collect();
    for round in 0..4u64 {
        for stream in &streams {
            store
                .append(
                    stream,
                    ExpectedVersion::Any,
                    events(round * 2..round * 2 + 2),
                )
                .await
                .unwrap();
        }
    }
    let whole = read_whole_log(&store).await;
    assert_eq!(whole.len(), 24);
    assert!(whole
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    let mut last_version: BTreeMap<StreamId, u64> = BTreeMap::new();
    for e in &whole {
        let last = last_version.entry(e.stream_id.clone()).or_insert(0);
        assert_eq!(
            e.stream_version,
            *last + 1,
            "stream versions follow the log order"
        );
        *last = e.stream_version;
    }
    let mut paged = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 5).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 5);
        from = last.global_position + 1;
        paged.extend(page);
    }
    assert_eq!(ids(&paged), ids(&whole), "pages join into the whole log");
    // A reader's lag in events: what follows a position, however sparse
    // the positions are, and no more than the cap.
    assert_eq!(store.events_after(0, u64::MAX).await.unwrap(), 24);
    assert_eq!(
        store
            .events_after(whole[9].global_position, u64::MAX)
            .await
            .unwrap(),
        14
    );
    assert_eq!(store.events_after(0, 7).await.unwrap(), 7);
    assert_eq!(
        store
            .events_after(whole[23].global_position, u64::MAX)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        ids(&read_whole_log(&store).await),
        ids(&whole),
        "the order never changes"
    );
    let from_middle = store.read_all(whole[10].global_position, 3).await.unwrap();
    assert_eq!(ids(&from_middle), ids(&whole[10..13]));
    assert_eq!(
        store.head_position().await.unwrap(),
        whole.last().unwrap().global_position
    );
}

/// Stream ids with quotes, unicode, whitespace and SQL fragments are stored
/// and read back literally, and never match each other.
pub async fn stream_ids_are_stored_literally<S: EventStore>(store: S) {
    let names = [
        "plain",
        "it's \"quoted\"",
        "ünïcødé-流-🦀",
        "'; DROP TABLE events; --",
        "a%",
        "a_",
        "a",
        "back\\slash",
        "line\nbreak\ttab",
        " spaced ",
    ];
    for (i, name) in names.iter().enumerate() {
        store
            .append(
                &StreamId::from(*name),
                ExpectedVersion::NoStream,
                events(0..i as u64 + 1),
            )
            .await
            .unwrap_or_else(|e| panic!("append to {name:?}: {e}"));
    }
    for (i, name) in names.iter().enumerate() {
        let stream = StreamId::from(*name);
        let stored = read_whole_stream(&store, &stream).await;
        assert_eq!(stored.len(), i + 1, "stream {name:?}");
        assert!(stored.iter().all(|e| e.stream_id.as_str() == *name));
        assert_eq!(store.stream_version(&stream).await.unwrap(), i as u64 + 1);
    }
}

/// Many tasks appending to one stream with optimistic concurrency: every
/// accepted event is stored once, versions are 1..=n with no gap.
pub async fn concurrent_appends_to_one_stream_lose_nothing<S: EventStore>(store: S) {
    const PER_TASK: u64 = 25;
    let stream = StreamId::from("contended-1");
    let mut tasks = Vec::new();
    for task in 0..CONCURRENT_TASKS as u64 {
        let store = store.clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut conflicts = 0u64;
            for n in 0..PER_TASK {
                let e = event(task * 1000 + n);
                loop {
                    let version = store.stream_version(&stream).await.unwrap();
                    match store
                        .append(&stream, ExpectedVersion::at(version), vec![e.clone()])
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::WrongExpectedVersion { .. }) => conflicts += 1,
                        Err(other) => panic!("append failed: {other}"),
                    }
                }
                mine.push(e.event_id);
            }
            (mine, conflicts)
        }));
    }
    let mut accepted = HashSet::new();
    for task in tasks {
        let (mine, _conflicts) = task.await.expect("writer task");
        accepted.extend(mine);
    }
    let stored = read_whole_stream(&store, &stream).await;
    let total = CONCURRENT_TASKS as u64 * PER_TASK;
    assert_eq!(versions(&stored), (1..=total).collect::<Vec<_>>());
    let stored_ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(stored_ids.len() as u64, total, "no event stored twice");
    assert_eq!(stored_ids, accepted, "every accepted event is stored");
}

/// Many tasks appending to their own streams at once: all events stored,
/// each stream contiguous, every global position distinct.
pub async fn concurrent_appends_to_distinct_streams_lose_nothing<S: EventStore>(store: S) {
    const APPENDS: u64 = 20;
    let mut tasks = Vec::new();
    for task in 0..CONCURRENT_TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("distinct-{task}"));
            for n in 0..APPENDS {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(n * 2),
                        events(n * 2..n * 2 + 2),
                    )
                    .await
                    .expect("append to an own stream never conflicts");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let log = read_whole_log(&store).await;
    assert_eq!(log.len(), CONCURRENT_TASKS * APPENDS as usize * 2);
    let positions: HashSet<u64> = log.iter().map(|e| e.global_position).collect();
    assert_eq!(positions.len(), log.len(), "global positions are distinct");
    for task in 0..CONCURRENT_TASKS {
        let stream = StreamId::new(format!("distinct-{task}"));
        let stored = read_whole_stream(&store, &stream).await;
        assert_eq!(versions(&stored), (1..=APPENDS * 2).collect::<Vec<_>>());
    }
}

/// The same append re-sent by many tasks at once (a retry storm) is stored
/// once, and every sender gets the same result.
pub async fn concurrent_retries_of_one_append_store_it_once<S: EventStore>(store: S) {
    let stream = StreamId::from("storm-1");
    let batch = events(0..3);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENT_TASKS {
        let store = store.clone();
        let stream = stream.clone();
        let batch = batch.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(&stream, ExpectedVersion::NoStream, batch)
                .await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            task.await
                .expect("sender task")
                .expect("every sender succeeds"),
        );
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "every sender sees one result"
    );
    assert_eq!(
        versions(&read_whole_stream(&store, &stream).await),
        [1, 2, 3]
    );
    assert_eq!(read_whole_log(&store).await.len(), 3);
}

async fn collect<S: EventStore>(store: &S, from: u64, count: usize) -> Vec<RecordedEvent> {
    let mut subscription = store.subscribe(from);
    let mut received = Vec::with_capacity(count);
    let result = tokio::time::timeout(SUBSCRIPTION_TIMEOUT, async {
        while received.len() < count {
            match subscription.next().await {
                Some(Ok(e)) => received.push(e),
                Some(Err(e)) => panic!("subscription failed: {e}"),
                None => panic!("subscription ended after {} events", received.len()),
            }
        }
    })
    .await;
    if result.is_err() {
        panic!(
            "subscription received {} of {count} events in {SUBSCRIPTION_TIMEOUT:?}",
            received.len()
        );
    }
    received
}

/// A subscription from the start delivers the stored events, then those
/// that concurrent writers append: each exactly once, in log order.
pub async fn subscription_catches_up_then_follows_live_writers<S: EventStore>(store: S) {
    const BEFORE: u64 = 50;
    const PER_TASK: u64 = 30;
    store
        .append(
            &StreamId::from("before"),
            ExpectedVersion::Any,
            events(0..BEFORE),
        )
        .await
        .unwrap();
    let total = BEFORE as usize + CONCURRENT_TASKS * PER_TASK as usize;
    let subscriber = {
        let store = store.clone();
        tokio::spawn(async move { collect(&store, 1, total).await })
    };
    let mut writers = Vec::new();
    for task in 0..CONCURRENT_TASKS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("live-{}", task % 3));
            let mut n = 0;
            while n < PER_TASK {
                let size = (task as u64 % 3 + 1).min(PER_TASK - n);
                store
                    .append(&stream, ExpectedVersion::Any, events(n..n + size))
                    .await
                    .expect("append");
                n += size;
                tokio::task::yield_now().await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    let received = subscriber.await.expect("subscriber task");
    let log = read_whole_log(&store).await;
    assert_eq!(log.len(), total);
    let unique: HashSet<Uuid> = received.iter().map(|e| e.event_id).collect();
    assert_eq!(unique.len(), total, "no event delivered twice");
    assert_eq!(
        ids(&received),
        ids(&log),
        "delivered in log order, none skipped"
    );
    // Nothing more than the log: a further event arrives next, alone.
    let mut subscription = store.subscribe(log.last().unwrap().global_position + 1);
    let extra = store
        .append(&StreamId::from("after"), ExpectedVersion::Any, events(0..1))
        .await
        .unwrap();
    let next = tokio::time::timeout(SUBSCRIPTION_TIMEOUT, subscription.next())
        .await
        .expect("the live event arrives")
        .expect("the subscription is open")
        .expect("no error");
    assert_eq!(next.event_id, extra[0].event_id);
}

/// A subscription from a position starts exactly there.
pub async fn subscription_starts_at_the_given_position<S: EventStore>(store: S) {
    store
        .append(
            &StreamId::from("start-1"),
            ExpectedVersion::Any,
            events(0..10),
        )
        .await
        .unwrap();
    let log = read_whole_log(&store).await;
    let received = collect(&store, log[4].global_position, 6).await;
    assert_eq!(ids(&received), ids(&log[4..]));
}

/// A subscription to an empty log waits, then delivers the first event.
pub async fn subscription_on_empty_log_waits_for_the_first_event<S: EventStore>(store: S) {
    let subscriber = {
        let store = store.clone();
        tokio::spawn(async move { collect(&store, 0, 2).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let appended = store
        .append(
            &StreamId::from("first-1"),
            ExpectedVersion::NoStream,
            events(0..2),
        )
        .await
        .unwrap();
    let received = subscriber.await.expect("subscriber task");
    assert_eq!(ids(&received), ids(&appended));
}

/// An append across several streams checks each stream's expectation and
/// stores every event or none.
pub async fn atomic_append_across_streams_stores_all_or_nothing<S: EventStore>(store: S) {
    let a = StreamId::from("transfer-a");
    let b = StreamId::from("transfer-b");
    store
        .append(&a, ExpectedVersion::Any, events(0..1))
        .await
        .unwrap();
    let first = store
        .append_atomic(vec![
            StreamAppend::new(a.clone(), ExpectedVersion::Exact(1), events(1..3)),
            StreamAppend::new(b.clone(), ExpectedVersion::NoStream, events(0..1)),
        ])
        .await
        .expect("both expectations hold");
    assert_eq!(first.len(), 2);
    assert_eq!(versions(&first[0]), [2, 3]);
    assert_eq!(versions(&first[1]), [1]);
    assert!(first[0]
        .iter()
        .chain(&first[1])
        .all(|e| e.global_position > 0));
    let head = store.head_position().await.unwrap();
    let refused = store
        .append_atomic(vec![
            StreamAppend::new(a.clone(), ExpectedVersion::Exact(3), events(3..4)),
            StreamAppend::new(b.clone(), ExpectedVersion::Exact(5), events(1..2)),
        ])
        .await;
    match refused {
        Err(StoreError::WrongExpectedVersion {
            stream_id,
            expected,
            actual,
        }) => {
            assert_eq!(stream_id, b, "the refusal names the failing stream");
            assert_eq!(expected, ExpectedVersion::Exact(5));
            assert_eq!(actual, 1);
        }
        other => panic!("expected WrongExpectedVersion on {b}, got {other:?}"),
    }
    assert_eq!(
        store.stream_version(&a).await.unwrap(),
        3,
        "nothing of the refused append is stored"
    );
    assert_eq!(store.stream_version(&b).await.unwrap(), 1);
    assert_eq!(store.head_position().await.unwrap(), head);
}

/// One stream twice in one atomic append is refused.
pub async fn atomic_append_refuses_a_stream_twice<S: EventStore>(store: S) {
    let a = StreamId::from("twice-a");
    let refused = store
        .append_atomic(vec![
            StreamAppend::new(a.clone(), ExpectedVersion::Any, events(0..1)),
            StreamAppend::new(a.clone(), ExpectedVersion::Any, events(1..2)),
        ])
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidAppend { .. })),
        "got {refused:?}"
    );
    assert_eq!(store.head_position().await.unwrap(), 0);
}

/// Re-sending an atomic append stores nothing twice and returns the first
/// result.
pub async fn atomic_append_retried_stores_nothing_twice<S: EventStore>(store: S) {
    let appends = vec![
        StreamAppend::new("retry-a", ExpectedVersion::NoStream, events(0..2)),
        StreamAppend::new("retry-b", ExpectedVersion::NoStream, events(0..1)),
    ];
    let first = store.append_atomic(appends.clone()).await.unwrap();
    let again = store
        .append_atomic(appends)
        .await
        .expect("a retry is not a conflict");
    assert_eq!(again, first);
    assert_eq!(read_whole_log(&store).await.len(), 3);
}

/// Transfers between accounts from many tasks at once, each an atomic
/// append to two streams with exact expectations: every accepted transfer
/// is stored in both streams, none in one only, and versions stay
/// contiguous.
pub async fn concurrent_atomic_transfers_are_never_half_stored<S: EventStore>(store: S) {
    const ACCOUNTS: usize = 4;
    const PER_TASK: usize = 10;
    let accounts: Vec<StreamId> = (0..ACCOUNTS)
        .map(|i| StreamId::new(format!("acct-{i}")))
        .collect();
    let mut tasks = Vec::new();
    for task in 0..CONCURRENT_TASKS {
        let store = store.clone();
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for n in 0..PER_TASK {
                // Opposite directions on purpose: lock ordering must not deadlock.
                let (from, to) = if (task + n) % 2 == 0 {
                    (task % ACCOUNTS, (task + 1) % ACCOUNTS)
                } else {
                    ((task + 1) % ACCOUNTS, task % ACCOUNTS)
                };
                let transfer = Uuid::now_v7();
                let leg = |side: &str| {
                    NewEvent::raw(
                        "Transferred",
                        1,
                        Payload::from_value(
                            &serde_json::json!({ "transfer": transfer, "side": side }),
                        ),
                        Metadata::new(),
                    )
                };
                loop {
                    let vf = store.stream_version(&accounts[from]).await.unwrap();
                    let vt = store.stream_version(&accounts[to]).await.unwrap();
                    let result = store
                        .append_atomic(vec![
                            StreamAppend::new(
                                accounts[from].clone(),
                                ExpectedVersion::at(vf),
                                vec![leg("debit")],
                            ),
                            StreamAppend::new(
                                accounts[to].clone(),
                                ExpectedVersion::at(vt),
                                vec![leg("credit")],
                            ),
                        ])
                        .await;
                    match result {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() || e.is_transient() => {
                            tokio::task::yield_now().await
                        }
                        Err(e) => panic!("transfer failed: {e}"),
                    }
                }
                done.push(transfer);
            }
            done
        }));
    }
    let mut transfers = Vec::new();
    for task in tasks {
        transfers.extend(task.await.expect("transfer task"));
    }
    let mut legs: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for account in &accounts {
        let stored = read_whole_stream(&store, account).await;
        assert_eq!(
            versions(&stored),
            (1..=stored.len() as u64).collect::<Vec<_>>()
        );
        total += stored.len();
        for e in stored {
            *legs
                .entry(e.data.to_value().unwrap()["transfer"].to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(total, transfers.len() * 2);
    assert_eq!(legs.len(), transfers.len());
    assert!(
        legs.values().all(|&n| n == 2),
        "every transfer has both legs"
    );
}

/// A store keeps the latest snapshot of each stream; an older one never
/// replaces a newer one.
pub async fn snapshots_keep_the_latest<S: SnapshotStore>(store: S) {
    let stream = StreamId::from("snap-1");
    assert_eq!(store.load_snapshot(&stream).await.unwrap(), None);
    let snapshot = |version: u64| Snapshot {
        version,
        schema_version: 2,
        state: Payload::from_value(&serde_json::json!({ "at": version })),
        taken_at: chrono::Utc::now(),
    };
    store.save_snapshot(&stream, snapshot(5)).await.unwrap();
    store.save_snapshot(&stream, snapshot(3)).await.unwrap();
    let loaded = store
        .load_snapshot(&stream)
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!((loaded.version, loaded.schema_version), (5, 2));
    assert_eq!(
        loaded.state.to_value().unwrap(),
        serde_json::json!({ "at": 5 })
    );
    store.save_snapshot(&stream, snapshot(8)).await.unwrap();
    assert_eq!(
        store.load_snapshot(&stream).await.unwrap().unwrap().version,
        8
    );
    assert_eq!(
        store
            .load_snapshot(&StreamId::from("snap-2"))
            .await
            .unwrap(),
        None
    );
}

/// The lean read a fold uses ([`EventStore::fold_stream`]) gives the same
/// events, in the same order, as [`EventStore::read_stream`], from any
/// version, and stops at the first error its function returns.
pub async fn fold_reads_match_whole_reads<S: EventStore>(store: S) {
    let stream = StreamId::from("fold-1");
    store
        .append(
            &StreamId::from("other-1"),
            ExpectedVersion::Any,
            events(0..2),
        )
        .await
        .unwrap();
    store
        .append(&stream, ExpectedVersion::Any, events(0..1500))
        .await
        .unwrap();
    for from in [0, 1, 3, 1025, 1500, 1501, 2000] {
        let whole = store.read_stream(&stream, from, 2000).await.unwrap();
        let expected: Vec<String> = whole
            .iter()
            .map(|e| format!("{:?}", crate::EventData::of(e)))
            .collect();
        let mut folded = Vec::new();
        store
            .fold_stream(&stream, from, |e| {
                folded.push(format!("{e:?}"));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        assert_eq!(folded, expected, "from {from}");
    }
    let mut none = 0;
    store
        .fold_stream(&StreamId::from("none-1"), 1, |_| {
            none += 1;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    assert_eq!(none, 0);
    // The fold stops at its function's first error.
    let mut seen = Vec::new();
    let stopped = store
        .fold_stream(&stream, 1, |e| {
            seen.push(e.stream_version);
            if e.stream_version == 3 {
                return Err(StoreError::Unsupported {
                    operation: "stop here",
                });
            }
            let mut decoded = Vec::new();
            e.decode_each::<crate::testing::conformance::Probe>(&stream, |p| decoded.push(p.n))
                .map_err(|err| StoreError::Backend(Box::new(err)))?;
            assert_eq!(decoded, [e.stream_version - 1]);
            Ok(())
        })
        .await;
    assert!(
        matches!(stopped, Err(StoreError::Unsupported { .. })),
        "{stopped:?}"
    );
    assert_eq!(seen, [1, 2, 3]);
}

/// Reads in pages go through a long stream and the log to their ends,
/// each page starting where the last one ended.
pub async fn page_reads_go_through_everything<S: EventStore>(store: S) {
    let stream = StreamId::from("long-1");
    for chunk in 0..5u64 {
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                events(chunk * 500..(chunk + 1) * 500),
            )
            .await
            .unwrap();
    }
    let mut streamed: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = streamed.last().map_or(1, |e| e.stream_version + 1);
        let page = store.read_stream(&stream, from, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 1000);
        streamed.extend(page);
    }
    assert_eq!(versions(&streamed), (1..=2500).collect::<Vec<_>>());
    let from_middle = store.read_stream(&stream, 2001, 1000).await.unwrap();
    assert_eq!(from_middle.len(), 500);
    let mut log: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = log.last().map_or(0, |e| e.global_position + 1);
        let page = store.read_all(from, 700).await.unwrap();
        if page.is_empty() {
            break;
        }
        log.extend(page);
    }
    assert_eq!(ids(&log), ids(&streamed));
}

fn command(id: Uuid, payload: Option<serde_json::Value>) -> CommandRecord {
    let mut metadata = Metadata::new().with_correlation_id(id);
    metadata.command_id = Some(id);
    metadata.actor = Some("alice".into());
    CommandRecord {
        command_id: id,
        command_type: "Deposit".into(),
        payload: payload.as_ref().map(Payload::from_value),
        metadata,
    }
}

/// A command id produces events once: a second execution (new event ids)
/// is refused with where the first one's events are, and appends nothing.
pub async fn a_command_id_is_executed_once<S: CommandStore>(store: S) {
    let stream = StreamId::from("cmd-1");
    let record = command(Uuid::now_v7(), None);
    let first = store
        .append_for_command(&record, &stream, ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();
    assert_eq!(versions(&first), [1, 2]);
    let again = store
        .append_for_command(&record, &stream, ExpectedVersion::Any, events(2..3))
        .await;
    match again {
        Err(StoreError::CommandAlreadyExecuted {
            command_id,
            stream_id,
            first_version,
            last_version,
        }) => {
            assert_eq!(command_id, record.command_id);
            assert_eq!(stream_id, stream);
            assert_eq!((first_version, last_version), (1, 2));
        }
        other => panic!("expected CommandAlreadyExecuted, got {other:?}"),
    }
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    let found = store
        .find_command(record.command_id)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(found.stream_id, stream);
    assert_eq!(
        found.outcome,
        JournalOutcome::Accepted {
            first_version: 1,
            last_version: 2
        }
    );
    assert_eq!(store.find_command(Uuid::now_v7()).await.unwrap(), None);
    // A re-sent append of the first execution (same event ids) is still a
    // retry, not a second execution.
    let resent = store
        .append_for_command(
            &record,
            &stream,
            ExpectedVersion::NoStream,
            first
                .iter()
                .zip(events(0..2))
                .map(|(f, e)| NewEvent {
                    event_id: f.event_id,
                    metadata: f.metadata.clone(),
                    payload: f.data.clone(),
                    ..e
                })
                .collect(),
        )
        .await
        .expect("a re-sent append is a retry");
    assert_eq!(ids(&resent), ids(&first));
}

/// The same command sent by many tasks at once appends once; every other
/// sender learns where its events are.
pub async fn concurrent_repeats_of_one_command_append_once<S: CommandStore>(store: S) {
    let stream = StreamId::from("cmd-storm");
    let record = command(Uuid::now_v7(), None);
    let mut tasks = Vec::new();
    for task in 0..CONCURRENT_TASKS as u64 {
        let store = store.clone();
        let stream = stream.clone();
        let record = record.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_for_command(
                    &record,
                    &stream,
                    ExpectedVersion::Any,
                    events(task * 10..task * 10 + 3),
                )
                .await
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("sender task") {
            Ok(recorded) => {
                accepted += 1;
                assert_eq!(versions(&recorded), [1, 2, 3]);
            }
            Err(StoreError::CommandAlreadyExecuted {
                first_version,
                last_version,
                ..
            }) => {
                assert_eq!((first_version, last_version), (1, 3));
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(accepted, 1, "exactly one execution");
    assert_eq!(read_whole_stream(&store, &stream).await.len(), 3);
}

/// The journal lists a stream's commands in order: accepted ones with the
/// versions they produced, rejected ones with their error, each with its
/// payload and context.
pub async fn the_journal_lists_accepted_and_rejected_commands<S: CommandStore>(store: S) {
    let stream = StreamId::from("journal-1");
    let accepted = command(Uuid::now_v7(), Some(serde_json::json!({ "amount": 5 })));
    let rejected = command(Uuid::now_v7(), Some(serde_json::json!({ "amount": 500 })));
    store
        .append_for_command(&accepted, &stream, ExpectedVersion::NoStream, events(0..1))
        .await
        .unwrap();
    store
        .record_rejected_command(&rejected, &stream, "insufficient funds")
        .await
        .unwrap();
    let journal = store.command_journal(&stream).await.unwrap();
    assert_eq!(journal.len(), 2);
    assert_eq!(journal[0].command.command_id, accepted.command_id);
    assert_eq!(
        journal[0].outcome,
        JournalOutcome::Accepted {
            first_version: 1,
            last_version: 1
        }
    );
    assert_eq!(journal[0].command.command_type, "Deposit");
    assert_eq!(
        journal[0]
            .command
            .payload
            .as_ref()
            .map(|p| p.to_value().unwrap()),
        Some(serde_json::json!({ "amount": 5 }))
    );
    assert_eq!(journal[0].command.metadata.actor.as_deref(), Some("alice"));
    assert_eq!(journal[1].command.command_id, rejected.command_id);
    assert_eq!(
        journal[1].outcome,
        JournalOutcome::Rejected {
            error: "insufficient funds".into()
        }
    );
    assert!(store
        .command_journal(&StreamId::from("journal-2"))
        .await
        .unwrap()
        .is_empty());
}

/// One correlation id's events, across streams, in log order.
pub async fn correlation_reads_one_business_transaction<S: CorrelationStore>(store: S) {
    let correlation = Uuid::now_v7();
    let correlated = |n: u64| {
        NewEvent::raw(
            "Tested",
            1,
            Payload::from_value(&serde_json::json!({ "n": n })),
            Metadata::new().with_correlation_id(correlation),
        )
    };
    let mut expected = Vec::new();
    for round in 0..3u64 {
        store
            .append(
                &StreamId::from("noise"),
                ExpectedVersion::Any,
                events(round..round + 1),
            )
            .await
            .unwrap();
        let a = store
            .append(
                &StreamId::from("order-1"),
                ExpectedVersion::Any,
                vec![correlated(round)],
            )
            .await
            .unwrap();
        let b = store
            .append(
                &StreamId::from("payment-1"),
                ExpectedVersion::Any,
                vec![correlated(round + 10)],
            )
            .await
            .unwrap();
        expected.extend(ids(&a));
        expected.extend(ids(&b));
    }
    let trail = store.read_correlation(correlation, 0, 1000).await.unwrap();
    assert_eq!(ids(&trail), expected);
    assert!(trail
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    // A page at a time: at most `limit` events, read on from the next
    // position, and together the whole trail.
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = store.read_correlation(correlation, from, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        from = last.global_position + 1;
        paged.extend(page);
    }
    assert_eq!(ids(&paged), expected);
    assert!(store
        .read_correlation(Uuid::now_v7(), 0, 1000)
        .await
        .unwrap()
        .is_empty());
}

/// A closed stream refuses appends, with a typed error; its events stay
/// readable and other streams are not affected.
pub async fn a_closed_stream_takes_no_more_events<S: StreamLifecycle + CommandStore>(store: S) {
    let stream = StreamId::from("closing-1");
    store
        .append(&stream, ExpectedVersion::Any, events(0..2))
        .await
        .unwrap();
    store.close_stream(&stream).await.unwrap();
    let refused = store
        .append(&stream, ExpectedVersion::Exact(2), events(2..3))
        .await;
    assert!(
        matches!(&refused, Err(StoreError::StreamClosed { stream_id }) if *stream_id == stream),
        "got {refused:?}"
    );
    let refused = store
        .append_for_command(
            &command(Uuid::now_v7(), None),
            &stream,
            ExpectedVersion::Any,
            events(2..3),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::StreamClosed { .. })),
        "got {refused:?}"
    );
    assert_eq!(versions(&read_whole_stream(&store, &stream).await), [1, 2]);
    store
        .append(
            &StreamId::from("closing-2"),
            ExpectedVersion::Any,
            events(0..1),
        )
        .await
        .expect("other streams are open");
}

/// Erasing a stream blanks its payloads and personal metadata but keeps
/// every event's id, type, version and position; the stream is closed and
/// its events no longer decode.
pub async fn erasing_a_stream_keeps_the_log_shape<S: StreamLifecycle>(store: S) {
    let stream = StreamId::from("person-1");
    let personal = |n: u64| {
        let mut metadata = Metadata::new().with("email", "ada@example.com");
        metadata.actor = Some("ada".into());
        NewEvent::raw(
            "Tested",
            1,
            Payload::from_value(&serde_json::json!({ "n": n, "name": "Ada" })),
            metadata,
        )
    };
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            (0..3).map(personal).collect(),
        )
        .await
        .unwrap();
    store
        .append(
            &StreamId::from("other"),
            ExpectedVersion::Any,
            vec![personal(9)],
        )
        .await
        .unwrap();
    let before = read_whole_stream(&store, &stream).await;
    assert_eq!(store.erase_stream(&stream).await.unwrap(), 3);
    let after = read_whole_stream(&store, &stream).await;
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(versions(&after), versions(&before));
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.global_position, b.global_position);
        assert_eq!(a.event_type, b.event_type);
        assert_eq!(a.data.to_value().unwrap(), serde_json::json!({}));
        assert!(a.metadata.erased_at.is_some());
        assert_eq!(a.metadata.actor, None);
        assert!(
            a.metadata.extra.is_empty(),
            "user keys are erased: {:?}",
            a.metadata.extra
        );
        assert!(matches!(
            a.decode::<crate::testing::conformance::Probe>()
                .map_err(|e| e.kind),
            Err(crate::DecodeErrorKind::Erased)
        ));
    }
    // The lean read a fold uses knows it too.
    let mut erased = Vec::new();
    store
        .fold_stream(&stream, 1, |d| {
            let refused = d.decode_each::<crate::testing::conformance::Probe>(&stream, |_| {});
            erased.push((d.erased, refused.map_err(|e| e.kind)));
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    assert_eq!(erased.len(), 3);
    for (flag, refused) in erased {
        assert!(flag);
        assert!(matches!(refused, Err(crate::DecodeErrorKind::Erased)));
    }
    let refused = store
        .append(&stream, ExpectedVersion::Any, events(0..1))
        .await;
    assert!(
        matches!(refused, Err(StoreError::StreamClosed { .. })),
        "erased streams are closed"
    );
    let other = read_whole_stream(&store, &StreamId::from("other")).await;
    assert_eq!(
        other[0].data.to_value().unwrap()["name"],
        "Ada",
        "other streams keep their data"
    );
    assert_eq!(
        read_whole_log(&store).await.len(),
        4,
        "the log keeps its shape"
    );
}

/// Erasing a stream erases the personal data its command journal holds
/// too: payloads, who asked, user keys, and the text of rejections (which
/// may quote the data). The journal keeps its shape (ids, types, outcomes,
/// versions); other streams' commands are untouched.
pub async fn erasing_a_stream_erases_its_journal<S: StreamLifecycle + CommandStore>(store: S) {
    let stream = StreamId::from("person-2");
    let personal = |payload: serde_json::Value| {
        let mut record = command(Uuid::now_v7(), Some(payload));
        record.metadata = record.metadata.with("email", "ada@example.com");
        record
    };
    let accepted = personal(serde_json::json!({ "name": "Ada" }));
    store
        .append_for_command(&accepted, &stream, ExpectedVersion::NoStream, events(0..1))
        .await
        .unwrap();
    store
        .record_rejected_command(
            &personal(serde_json::json!({ "name": "Ada" })),
            &stream,
            "Ada Lovelace (ada@example.com) is blocked",
        )
        .await
        .unwrap();
    let other = StreamId::from("person-3");
    store
        .record_rejected_command(
            &personal(serde_json::json!({ "name": "Grace" })),
            &other,
            "Grace is blocked",
        )
        .await
        .unwrap();
    store.erase_stream(&stream).await.unwrap();
    let journal = store.command_journal(&stream).await.unwrap();
    assert_eq!(journal.len(), 2, "the journal keeps its shape");
    assert_eq!(journal[0].command.command_id, accepted.command_id);
    assert_eq!(
        journal[0].outcome,
        JournalOutcome::Accepted {
            first_version: 1,
            last_version: 1
        }
    );
    assert_eq!(
        journal[1].outcome,
        JournalOutcome::Rejected {
            error: JournalOutcome::ERASED_ERROR.into()
        }
    );
    for entry in &journal {
        assert_eq!(entry.command.payload, None);
        assert_eq!(entry.command.metadata.actor, None);
        assert!(
            entry.command.metadata.extra.is_empty(),
            "user keys are erased: {:?}",
            entry.command.metadata.extra
        );
        assert!(entry.command.metadata.erased_at.is_some());
        assert_eq!(entry.command.command_type, "Deposit");
    }
    let untouched = store.command_journal(&other).await.unwrap();
    assert_eq!(
        untouched[0].outcome,
        JournalOutcome::Rejected {
            error: "Grace is blocked".into()
        }
    );
    assert_eq!(
        untouched[0].command.metadata.get("email"),
        Some(&serde_json::json!("ada@example.com"))
    );
}

#[track_caller]
fn assert_invalid_stream_id<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    stream: &StreamId,
    operation: &str,
) {
    match result {
        Err(StoreError::InvalidStreamId { stream_id, reason }) => {
            assert_eq!(&stream_id, stream, "{operation}: the error names the id");
            assert!(!reason.is_empty(), "{operation}: the error says why");
        }
        other => panic!("{operation} on {stream:?}: expected InvalidStreamId, got {other:?}"),
    }
}

/// A stream id no store can hold (empty, with a NUL character, longer than
/// [`crate::limits::MAX_STREAM_ID_BYTES`]) is refused with `InvalidStreamId` by
/// every operation that names a stream, and nothing is written; an id of
/// exactly the limit works everywhere.
pub async fn bad_stream_ids_are_refused_by_every_operation<
    S: SnapshotStore + CommandStore + StreamLifecycle,
>(
    store: S,
) {
    let too_long = "x".repeat(crate::limits::MAX_STREAM_ID_BYTES + 1);
    for bad in ["", "nul\0inside", "\0", too_long.as_str()] {
        let stream = StreamId::from(bad);
        assert_invalid_stream_id(
            store
                .append(&stream, ExpectedVersion::Any, events(0..1))
                .await,
            &stream,
            "append",
        );
        assert_invalid_stream_id(
            store
                .append_atomic(vec![
                    StreamAppend::new("fine", ExpectedVersion::Any, events(0..1)),
                    StreamAppend::new(stream.clone(), ExpectedVersion::Any, events(1..2)),
                ])
                .await,
            &stream,
            "append_atomic",
        );
        assert_invalid_stream_id(
            store
                .append_for_command(
                    &command(Uuid::now_v7(), None),
                    &stream,
                    ExpectedVersion::Any,
                    events(0..1),
                )
                .await,
            &stream,
            "append_for_command",
        );
        assert_invalid_stream_id(
            store.read_stream(&stream, 1, 10).await,
            &stream,
            "read_stream",
        );
        assert_invalid_stream_id(
            store.stream_version(&stream).await,
            &stream,
            "stream_version",
        );
        assert_invalid_stream_id(store.close_stream(&stream).await, &stream, "close_stream");
        assert_invalid_stream_id(store.erase_stream(&stream).await, &stream, "erase_stream");
        let snapshot = Snapshot {
            version: 1,
            schema_version: 1,
            state: Payload::from_value(&serde_json::json!({})),
            taken_at: chrono::Utc::now(),
        };
        assert_invalid_stream_id(
            store.save_snapshot(&stream, snapshot).await,
            &stream,
            "save_snapshot",
        );
        assert_invalid_stream_id(store.load_snapshot(&stream).await, &stream, "load_snapshot");
    }
    assert!(
        read_whole_log(&store).await.is_empty(),
        "nothing was written"
    );

    let at_limit = StreamId::from("y".repeat(crate::limits::MAX_STREAM_ID_BYTES));
    store
        .append(&at_limit, ExpectedVersion::NoStream, events(0..2))
        .await
        .expect("an id of exactly the limit is stored");
    assert_eq!(
        versions(&read_whole_stream(&store, &at_limit).await),
        [1, 2]
    );
    assert_eq!(store.stream_version(&at_limit).await.unwrap(), 2);
}

#[track_caller]
fn assert_invalid_append(result: Result<Vec<RecordedEvent>, StoreError>, what: &str, needle: &str) {
    match result {
        Err(StoreError::InvalidAppend { stream_id, reason }) => {
            assert_eq!(stream_id.as_str(), "hostile", "{what}");
            assert!(
                reason.contains(needle),
                "{what}: {reason:?} should mention {needle:?}"
            );
        }
        other => panic!("{what}: expected InvalidAppend, got {other:?}"),
    }
}

/// An event no store can hold (an empty, NUL or over-long type name, a
/// NUL character in the payload or metadata, a schema version above
/// `i32::MAX`) is refused with `InvalidAppend` saying what is wrong, and
/// nothing of its append is written; text that only looks like a NUL
/// escape is stored as it is.
pub async fn events_a_store_cannot_hold_are_refused_and_write_nothing<S: EventStore>(store: S) {
    let stream = StreamId::from("hostile");
    let typed = |event_type: String| {
        NewEvent::raw(
            event_type,
            1,
            Payload::from_value(&serde_json::json!({})),
            Metadata::new(),
        )
    };
    let with_payload = |json: &str| {
        NewEvent::raw(
            "Tested",
            1,
            Payload::from_json(json).expect("valid JSON"),
            Metadata::new(),
        )
    };
    let cases: Vec<(&str, NewEvent, &str)> = vec![
        ("empty type", typed(String::new()), "event type is empty"),
        ("NUL in type", typed("Bad\0Type".into()), "NUL"),
        (
            "long type",
            typed("T".repeat(crate::limits::MAX_EVENT_TYPE_BYTES + 1)),
            "event type has",
        ),
        (
            "escaped NUL in payload",
            with_payload(r#"{"text":"a\u0000b"}"#),
            "payload contains a NUL",
        ),
        (
            "NUL in metadata",
            NewEvent::raw(
                "Tested",
                1,
                Payload::from_value(&serde_json::json!({})),
                Metadata::new().with("note", "a\0b"),
            ),
            "metadata contains a NUL",
        ),
        (
            "schema version",
            NewEvent::raw(
                "Tested",
                i32::MAX as u32 + 1,
                Payload::from_value(&serde_json::json!({})),
                Metadata::new(),
            ),
            "schema version",
        ),
    ];
    for (what, bad, needle) in cases {
        let mut append = events(0..2);
        append.insert(1, bad);
        assert_invalid_append(
            store
                .append(&stream, ExpectedVersion::Any, append.clone())
                .await,
            what,
            needle,
        );
        let atomic = store
            .append_atomic(vec![
                StreamAppend::new("innocent", ExpectedVersion::Any, events(10..11)),
                StreamAppend::new(stream.clone(), ExpectedVersion::Any, append),
            ])
            .await
            .map(|mut all| all.pop().unwrap_or_default());
        assert_invalid_append(atomic, what, needle);
    }
    assert!(
        read_whole_log(&store).await.is_empty(),
        "nothing of a refused append is written"
    );

    // A backslash followed by `u0000` is text, not a NUL character.
    let literal = with_payload(r#"{"text":"a\\u0000b"}"#);
    let written = store
        .append(&stream, ExpectedVersion::NoStream, vec![literal])
        .await
        .expect("an escaped backslash is not a NUL");
    let read = read_whole_stream(&store, &stream).await;
    assert_eq!(ids(&read), ids(&written));
    assert_eq!(read[0].data.to_value().unwrap()["text"], "a\\u0000b");
}

/// A payload above [`crate::limits::MAX_PAYLOAD_BYTES`] is `PayloadTooLarge`, an
/// append above [`crate::limits::MAX_APPEND_BYTES`] is `AppendTooLarge`, a snapshot
/// above [`crate::limits::MAX_SNAPSHOT_BYTES`] is `PayloadTooLarge`, each naming
/// the size and the limit; nothing is written.
pub async fn oversized_payloads_and_appends_are_refused_by_size<S: SnapshotStore>(store: S) {
    let stream = StreamId::from("big");
    // A JSON string of `len` bytes in all.
    let blob = |len: usize| Payload::from_json(format!("\"{}\"", "x".repeat(len - 2))).unwrap();
    let big = blob(crate::limits::MAX_PAYLOAD_BYTES + 1);
    let refused = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Tested", 1, big, Metadata::new())],
        )
        .await;
    match refused {
        Err(StoreError::PayloadTooLarge {
            stream_id,
            size,
            limit,
        }) => {
            assert_eq!(stream_id, stream);
            assert_eq!(
                (size, limit),
                (
                    crate::limits::MAX_PAYLOAD_BYTES + 1,
                    crate::limits::MAX_PAYLOAD_BYTES
                )
            );
        }
        other => panic!(
            "expected PayloadTooLarge, got {:?}",
            other.map(|written| written.len())
        ),
    }

    // Payloads share their text, so this append costs little memory here.
    let part = blob(crate::limits::MAX_PAYLOAD_BYTES);
    let count = crate::limits::MAX_APPEND_BYTES / crate::limits::MAX_PAYLOAD_BYTES + 1;
    let parts: Vec<NewEvent> = (0..count)
        .map(|_| NewEvent::raw("Tested", 1, part.clone(), Metadata::new()))
        .collect();
    let refused = store
        .append(&stream, ExpectedVersion::Any, parts.clone())
        .await;
    match refused {
        Err(StoreError::AppendTooLarge {
            stream_id,
            size,
            limit,
        }) => {
            assert_eq!(stream_id, stream);
            assert!(size > limit, "{size} > {limit}");
            assert_eq!(limit, crate::limits::MAX_APPEND_BYTES);
        }
        other => panic!(
            "expected AppendTooLarge, got {:?}",
            other.map(|written| written.len())
        ),
    }
    let refused = store
        .append_atomic(vec![StreamAppend::new(
            stream.clone(),
            ExpectedVersion::Any,
            parts,
        )])
        .await;
    assert!(
        matches!(refused, Err(StoreError::AppendTooLarge { .. })),
        "{:?}",
        refused.map(|written| written.len())
    );

    let snapshot = Snapshot {
        version: 1,
        schema_version: 1,
        state: blob(crate::limits::MAX_SNAPSHOT_BYTES + 1),
        taken_at: chrono::Utc::now(),
    };
    let refused = store.save_snapshot(&stream, snapshot).await;
    assert!(
        matches!(refused, Err(StoreError::PayloadTooLarge { size, .. }) if size == crate::limits::MAX_SNAPSHOT_BYTES + 1),
        "{refused:?}"
    );
    assert!(store.load_snapshot(&stream).await.unwrap().is_none());
    assert!(
        read_whole_log(&store).await.is_empty(),
        "nothing was written"
    );
    let message = StoreError::PayloadTooLarge {
        stream_id: stream.clone(),
        size: 300_000_000,
        limit: crate::limits::MAX_PAYLOAD_BYTES,
    }
    .to_string();
    assert!(
        !message.contains("NUL") && message.contains("300000000"),
        "{message}"
    );
}

/// Many tasks appending to one stream at the same `Exact` version: exactly
/// one wins, and every other one is refused with a conflict that names the
/// winner's last version; round after round.
pub async fn exactly_one_winner_per_expected_version<S: EventStore>(store: S) {
    const ROUNDS: u64 = 5;
    let stream = StreamId::from("race-1");
    let mut version = 0;
    for round in 0..ROUNDS {
        // A different batch size per task, so the winner is known by the
        // versions it got, not only by being the one success.
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CONCURRENT_TASKS));
        let mut tasks = Vec::new();
        for task in 0..CONCURRENT_TASKS as u64 {
            let store = store.clone();
            let stream = stream.clone();
            let barrier = std::sync::Arc::clone(&barrier);
            let size = task % 3 + 1;
            let batch = events(round * 100 + task * 10..round * 100 + task * 10 + size);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let result = store
                    .append(&stream, ExpectedVersion::Exact(version), batch.clone())
                    .await;
                (batch, result)
            }));
        }
        let mut winners = Vec::new();
        let mut conflicts = Vec::new();
        for task in tasks {
            let (batch, result) = task.await.expect("writer task");
            match result {
                Ok(recorded) => winners.push((batch, recorded)),
                Err(StoreError::WrongExpectedVersion {
                    stream_id,
                    expected,
                    actual,
                }) => {
                    assert_eq!(stream_id, stream, "the conflict names the stream");
                    assert_eq!(expected, ExpectedVersion::Exact(version));
                    conflicts.push(actual);
                }
                Err(other) => panic!("round {round}: expected success or a conflict, got {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one append at version {version} wins"
        );
        assert_eq!(conflicts.len(), CONCURRENT_TASKS - 1);
        let (batch, recorded) = winners.pop().expect("one winner");
        let last = version + batch.len() as u64;
        assert_eq!(ids(&recorded), new_ids(&batch));
        assert_eq!(
            versions(&recorded),
            (version + 1..=last).collect::<Vec<_>>()
        );
        assert!(
            conflicts.iter().all(|&actual| actual == last),
            "round {round}: every conflict reports the winner's version {last}: {conflicts:?}"
        );
        let stored = read_whole_stream(&store, &stream).await;
        assert_eq!(versions(&stored), (1..=last).collect::<Vec<_>>());
        assert_eq!(ids(&stored[version as usize..]), new_ids(&batch));
        version = last;
    }
    assert_eq!(read_whole_log(&store).await.len() as u64, version);
}

/// An event type for the decoding checks of the suite.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[doc(hidden)]
pub struct Probe {
    n: u64,
}

impl crate::Event for Probe {
    const EVENT_TYPES: &'static [&'static str] = &["Tested"];

    fn event_type(&self) -> &'static str {
        "Tested"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<Payload, crate::EncodeError> {
        crate::event::encode_struct(self)
    }

    fn decode(_: &str, _: u32, payload: &Payload) -> Result<Self, crate::DecodeErrorKind> {
        crate::event::decode_struct(payload)
    }
}
