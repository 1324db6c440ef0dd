//! A slow subscriber never slows writers and never makes memory grow: it
//! reads the shared log a page at a time and falls behind.

use std::time::Duration;

use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
use evently_memory::MemoryStore;
use futures::StreamExt;

fn event(n: u64) -> NewEvent {
    NewEvent::raw(
        "Tested",
        1,
        Payload::from_value(&serde_json::json!({ "n": n })),
        Metadata::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_subscriber_falls_behind_without_blocking_writers() {
    const WRITERS: u64 = 8;
    const PER_WRITER: u64 = 1_000;
    let store = MemoryStore::new();
    let mut subscription = store.subscribe(1);
    // Take one event, then stall while the writers run.
    store
        .append(
            &StreamId::from("first"),
            ExpectedVersion::Any,
            vec![event(0)],
        )
        .await
        .unwrap();
    let first = subscription.next().await.unwrap().unwrap();
    assert_eq!(first.global_position, 1);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("w-{w}"));
            for n in 0..PER_WRITER {
                store
                    .append(&stream, ExpectedVersion::Any, vec![event(n)])
                    .await
                    .unwrap();
            }
        }));
    }
    // The writers finish although the subscriber reads nothing meanwhile.
    tokio::time::timeout(Duration::from_secs(30), async {
        for writer in writers {
            writer.await.unwrap();
        }
    })
    .await
    .expect("writers are never held up by a stalled subscriber");
    let total = 1 + WRITERS * PER_WRITER;
    assert_eq!(store.event_count() as u64, total);

    // Then the subscriber catches up on every event, once, in order.
    let mut expected = 2;
    while expected <= total {
        let event = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("the subscriber catches up")
            .unwrap()
            .unwrap();
        assert_eq!(event.global_position, expected);
        expected += 1;
        if expected % 1000 == 0 {
            // Be slow for real.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Appends made while nobody subscribes do not publish the head (it saves
/// W1 the wake-up); a subscription opened afterwards, while writers go on,
/// still sees every event, and the head position counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_arrives_after_unobserved_appends_sees_every_event() {
    let store = MemoryStore::new();
    let stream = StreamId::from("before");
    for n in 0..3 {
        store
            .append(&stream, ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
    }
    assert_eq!(store.head_position().await.unwrap(), 3);

    for round in 0..50u64 {
        // Writers race the subscription's opening: each round appends
        // two events, one of them while the subscription may be opening.
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::new(format!("round-{round}"));
                for n in 0..2 {
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event(n)])
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut subscription = store.subscribe(1);
        writer.await.unwrap();
        // Three before the rounds, three in each round before this one.
        let total = 3 + 3 * round + 2;
        assert_eq!(store.head_position().await.unwrap(), total);
        for expected in 1..=total {
            let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
                .await
                .unwrap_or_else(|_| panic!("round {round}: event {expected} never came"))
                .unwrap()
                .unwrap();
            assert_eq!(event.global_position, expected);
        }
        // And one appended while it waits at the head wakes it.
        let waiting = tokio::spawn(async move { subscription.next().await });
        tokio::task::yield_now().await;
        store
            .append(&stream, ExpectedVersion::Any, vec![event(99)])
            .await
            .unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the waiting subscriber was not woken"))
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(woken.global_position, total + 1);
    }
}
