//! A subscription's memory is bounded in bytes, not only in events: a page
//! of large events holds about `subscription_page_bytes` plus one event.
//!
//! The only test of its binary: it measures the process's resident memory.

mod common;

use common::*;
use evently_core::EventStore;
use evently_postgres::sqlx;

/// The process's resident memory, in bytes.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("resident pages");
    pages * 4096
}

const EVENTS: usize = 8;
const EVENT_BYTES: usize = 24 * 1024 * 1024;

#[tokio::test]
async fn a_page_of_large_events_is_bounded_in_bytes() {
    let store = fresh_store().await;
    // The events are made by the server, so this process never holds them
    // before the subscription reads them.
    let s = format!("\"{}\"", store.schema());
    for n in 0..EVENTS {
        sqlx::query(&format!(
            "SELECT * FROM {s}.append_events('big', 0::smallint, 0::bigint, ARRAY[gen_random_uuid()], \
             ARRAY['Big'], ARRAY[1], ARRAY['\"' || repeat('x', $1) || '\"'], \
             ARRAY['{{\"timestamp\":\"2024-05-01T12:00:00Z\",\"n\":{n}}}'])"
        ))
        .bind((EVENT_BYTES - 2) as i32)
        .fetch_all(store.pool())
        .await
        .expect("append a large event");
    }
    let reader = second_handle(&store).await;
    let before = resident_bytes();
    let mut subscription = reader.subscribe(0);
    let first = receive(&mut subscription, 1, PATIENCE).await;
    let held = resident_bytes().saturating_sub(before);
    eprintln!("held after the first event: {} MiB", held / (1024 * 1024));
    assert_eq!(first[0].data.len(), EVENT_BYTES);
    // All eight events of the page would be 192 MiB; the byte budget (8
    // MiB by default) holds this one and at most one more (and their read
    // buffers).
    assert!(
        held < 5 * EVENT_BYTES,
        "the subscription holds {} MiB after its first event",
        held / (1024 * 1024)
    );
    drop(first);
    let rest = receive(&mut subscription, EVENTS - 1, PATIENCE).await;
    assert!(rest.iter().all(|e| e.data.len() == EVENT_BYTES));
    let versions: Vec<u64> = rest.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (2..=EVENTS as u64).collect::<Vec<_>>());
    assert_eq!(
        reader
            .read_stream(&"big".into(), 1, 100)
            .await
            .unwrap()
            .len(),
        EVENTS
    );
}
