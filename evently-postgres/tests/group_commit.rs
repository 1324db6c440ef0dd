//! Group commit: the whole store contract holds with it on, concurrent
//! appends share transactions, and a conflict fails only its own append.

mod common;

use std::collections::HashSet;

use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StoreError, StreamId,
};
use evently_postgres::PgEventStore;

async fn group_store() -> PgEventStore {
    common::store_builder(PgEventStore::builder().group_commit(2)).await
}

mod conformance {
    use super::group_store;

    evently_core::conformance_suite!(group_store);
}

fn event(n: u64) -> NewEvent {
    NewEvent::raw(
        "Tested",
        1,
        Payload::from_value(&serde_json::json!({ "n": n })),
        Metadata::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_transactions_and_a_conflict_fails_alone() {
    let store = group_store().await;
    let taken = StreamId::from("taken");
    store
        .append(&taken, ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for round in 0..20u64 {
        for writer in 0..16u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // Writer 0 always expects a new stream for `taken`: refused.
                let (stream, expected) = if writer == 0 {
                    (StreamId::from("taken"), ExpectedVersion::NoStream)
                } else {
                    (StreamId::new(format!("w{writer}")), ExpectedVersion::Any)
                };
                store.append(&stream, expected, vec![event(round)]).await
            }));
        }
    }
    let mut positions = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(recorded) => positions.push(recorded[0].global_position),
            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                assert_eq!(actual, 1);
                refused += 1;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(refused, 20, "only the conflicting appends fail");
    assert_eq!(positions.len(), 300);
    // A position is the transaction id << 20 | index: appends that share a
    // transaction share the high bits.
    let transactions: HashSet<u64> = positions.iter().map(|p| p >> 20).collect();
    assert!(
        transactions.len() < positions.len(),
        "{} appends in {} transactions: some were batched",
        positions.len(),
        transactions.len()
    );
    for writer in 1..16u64 {
        let stream = StreamId::new(format!("w{writer}"));
        assert_eq!(store.stream_version(&stream).await.unwrap(), 20);
    }
    assert_eq!(store.stream_version(&taken).await.unwrap(), 1);
}
