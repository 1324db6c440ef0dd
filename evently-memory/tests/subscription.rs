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
