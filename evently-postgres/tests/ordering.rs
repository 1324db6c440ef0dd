//! The global order without gaps: readers never read past a transaction that
//! is still running, so a late commit can never land below what they have
//! passed; a rolled-back or killed transaction stalls them only while it
//! runs; and under load a live subscriber sees every committed event once,
//! in the order `read_all` gives.
//!
//! The readable bound is cluster-wide, so the tests of this file take turns
//! (`SERIAL`): one test's open transaction would otherwise hold back the
//! others' readers and make their exact assertions on `status()` racy.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use evently_core::{
    EventStore, ExpectedVersion, RecordedEvent, StoreError, StreamAppend, StreamId,
};
use evently_postgres::sqlx;
use uuid::Uuid;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.global_position).collect()
}

#[track_caller]
fn assert_strictly_increasing(events: &[RecordedEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].global_position < pair[1].global_position,
            "positions must strictly increase: {} then {}",
            pair[0].global_position,
            pair[1].global_position
        );
    }
}

/// Every stream's versions increase along the global log (the contract of
/// `read_all_pages_in_one_stable_order`): returns the first violation.
fn stream_order_violation(log: &[RecordedEvent]) -> Option<String> {
    let mut last: HashMap<&StreamId, (u64, u64)> = HashMap::new();
    for e in log {
        if let Some(&(version, position)) = last.get(&e.stream_id) {
            if e.stream_version <= version {
                return Some(format!(
                    "stream `{}`: version {} (position {}) comes after version {version} (position {position}) in the global log",
                    e.stream_id, e.stream_version, e.global_position
                ));
            }
        }
        last.insert(&e.stream_id, (e.stream_version, e.global_position));
    }
    None
}

async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pg_backend_pid()")
}

/// T1 takes its position and stays open; T2 commits after it. Nobody reads
/// T2's event until T1 ends; then both arrive, T1's first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_transaction_holds_readers_back_until_it_commits_then_keeps_its_place() {
    let _turn = SERIAL.lock().await;
    let store = fresh_store().await;
    let reader = second_handle(&store).await;
    let mut subscription = store.subscribe(0);
    let (a, b) = (StreamId::from("a"), StreamId::from("b"));

    let mut tx1 = store.pool().begin().await.unwrap();
    let pid1 = backend_pid(&mut tx1).await;
    let first = store
        .append_in(&mut tx1, &a, ExpectedVersion::NoStream, vec![numbered(1)])
        .await
        .unwrap();
    let second = store
        .append(&b, ExpectedVersion::NoStream, vec![numbered(2)])
        .await
        .unwrap();
    let (p1, p2) = (first[0].global_position, second[0].global_position);
    assert!(p1 < p2, "T1 took its position first: {p1} < {p2}");
    assert_eq!(
        p1 & 0xF_FFFF,
        0,
        "the first event of a transaction has index 0"
    );
    assert_eq!(p2 & 0xF_FFFF, 0);

    // T2 has committed, but nothing is readable past the open T1.
    assert_quiet(&mut subscription, Duration::from_millis(1500)).await;
    assert!(reader.read_all(0, 100).await.unwrap().is_empty());
    assert_eq!(reader.head_position().await.unwrap(), 0);
    // Reading one stream is not held back.
    assert_eq!(
        ids(&reader.read_stream(&b, 1, 10).await.unwrap()),
        ids(&second)
    );
    let status = reader.status().await.unwrap();
    assert_eq!(status.waiting_events, 1, "{status:?}");
    assert_eq!(status.readable_head, 0, "{status:?}");
    assert!(status.readable_bound <= p1, "{status:?}");
    let oldest = status.oldest_transaction.expect("the open T1 is named");
    assert_eq!(oldest.pid, pid1);
    assert_eq!(oldest.state.as_deref(), Some("idle in transaction"));
    assert!(oldest.transaction_started.is_some());

    tx1.commit().await.unwrap();
    let delivered = receive(&mut subscription, 2, Duration::from_secs(10)).await;
    assert_eq!(ids(&delivered), [first[0].event_id, second[0].event_id]);
    assert_eq!(positions(&delivered), [p1, p2]);
    assert_eq!(delivered[0].stream_id, a);
    assert_eq!(delivered[1].stream_id, b);
    assert_quiet(&mut subscription, Duration::from_millis(300)).await;

    let log = reader.read_all(0, 100).await.unwrap();
    assert_eq!(ids(&log), ids(&delivered));
    assert_eq!(positions(&log), [p1, p2]);
    let again = store.read_all(0, 100).await.unwrap();
    assert_eq!(again, log, "a re-read gives the same order");
    assert_eq!(reader.head_position().await.unwrap(), p2);

    let after = reader.status().await.unwrap();
    assert_eq!(after.waiting_events, 0, "{after:?}");
    assert_eq!(after.readable_head, p2, "{after:?}");
}

/// A rolled-back append ends its transaction and holds nobody back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_append_never_stalls_readers_and_never_appears() {
    let _turn = SERIAL.lock().await;
    let store = fresh_store().await;
    let reader = second_handle(&store).await;
    let mut subscription = store.subscribe(0);
    let ghost_stream = StreamId::from("ghost");

    let mut tx = store.pool().begin().await.unwrap();
    let ghost = store
        .append_in(
            &mut tx,
            &ghost_stream,
            ExpectedVersion::NoStream,
            vec![numbered(0)],
        )
        .await
        .unwrap();
    // Committed while the doomed transaction runs: held back until it ends.
    let during = store
        .append(
            &StreamId::from("during"),
            ExpectedVersion::NoStream,
            vec![numbered(1)],
        )
        .await
        .unwrap();
    assert_quiet(&mut subscription, Duration::from_millis(500)).await;
    tx.rollback().await.unwrap();

    let rolled_back_at = Instant::now();
    let after = store
        .append(
            &StreamId::from("after"),
            ExpectedVersion::NoStream,
            vec![numbered(2)],
        )
        .await
        .unwrap();
    let delivered = receive(&mut subscription, 2, Duration::from_secs(2)).await;
    assert!(
        rolled_back_at.elapsed() < Duration::from_secs(2),
        "delivered {:?} after the rollback",
        rolled_back_at.elapsed()
    );
    assert_eq!(ids(&delivered), [during[0].event_id, after[0].event_id]);
    assert_quiet(&mut subscription, Duration::from_millis(700)).await;

    assert!(reader
        .read_stream(&ghost_stream, 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(reader.stream_version(&ghost_stream).await.unwrap(), 0);
    let log = read_whole_log(&reader).await;
    assert_eq!(ids(&log), ids(&delivered));
    assert!(!log.iter().any(|e| e.event_id == ghost[0].event_id));
    assert_eq!(reader.status().await.unwrap().waiting_events, 0);
}

/// A transaction left open stalls readers, visibly in `status()`, and never
/// makes them skip: once it is killed, everything committed meanwhile
/// arrives, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_left_open_stalls_readers_visibly_and_never_makes_them_skip() {
    let _turn = SERIAL.lock().await;
    let store = fresh_store().await;
    let reader = second_handle(&store).await;
    let mut subscription = store.subscribe(0);
    let stalled_stream = StreamId::from("stalled");

    let mut tx = store.pool().begin().await.unwrap();
    let pid = backend_pid(&mut tx).await;
    let stalled = store
        .append_in(
            &mut tx,
            &stalled_stream,
            ExpectedVersion::NoStream,
            vec![numbered(0)],
        )
        .await
        .unwrap();

    let mut committed = Vec::new();
    for n in 0..50u64 {
        let stream = StreamId::new(format!("s-{}", n % 5));
        committed.extend(
            store
                .append(&stream, ExpectedVersion::Any, vec![numbered(n)])
                .await
                .unwrap(),
        );
    }
    assert_strictly_increasing(&committed);
    assert!(stalled[0].global_position < committed[0].global_position);

    assert_quiet(&mut subscription, Duration::from_secs(1)).await;
    assert!(reader.read_all(0, 1000).await.unwrap().is_empty());
    let status = reader.status().await.unwrap();
    assert_eq!(status.waiting_events, 50, "{status:?}");
    assert_eq!(status.readable_head, 0, "{status:?}");
    let oldest = status
        .oldest_transaction
        .clone()
        .expect("the open transaction is named");
    assert_eq!(oldest.pid, pid, "{status:?}");
    assert_eq!(oldest.state.as_deref(), Some("idle in transaction"));

    let mut control = control_connection().await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(oldest.pid)
        .fetch_one(&mut control)
        .await
        .unwrap();
    assert!(terminated);
    drop(tx);

    let delivered = receive(&mut subscription, 50, Duration::from_secs(10)).await;
    assert_eq!(ids(&delivered), ids(&committed), "all 50, in commit order");
    assert_strictly_increasing(&delivered);
    assert_quiet(&mut subscription, Duration::from_secs(1)).await;

    let log = read_whole_log(&reader).await;
    assert_eq!(ids(&log), ids(&committed));
    assert!(!log.iter().any(|e| e.event_id == stalled[0].event_id));
    assert!(reader
        .read_stream(&stalled_stream, 1, 10)
        .await
        .unwrap()
        .is_empty());
    let after = reader.status().await.unwrap();
    assert_eq!(after.waiting_events, 0, "{after:?}");
    assert_eq!(after.readable_head, committed[49].global_position);
}

/// Each stream's versions increase along the global log, also when the
/// appending transaction got its id before another transaction appended to
/// the same stream and committed (here: the caller's transaction wrote
/// first, then appends to a stream that a younger transaction appended to).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_s_versions_increase_along_the_global_log_when_a_caller_transaction_appends_late()
{
    let _turn = SERIAL.lock().await;
    let store = fresh_store().await;
    let reader = second_handle(&store).await;
    let stream = StreamId::from("shared");

    let mut older = store.pool().begin().await.unwrap();
    // The caller's own first write gives its transaction its id.
    store
        .append_in(
            &mut older,
            &StreamId::from("other"),
            ExpectedVersion::NoStream,
            vec![numbered(0)],
        )
        .await
        .unwrap();
    // A younger transaction appends version 1 of `shared` and commits.
    let v1 = store
        .append(&stream, ExpectedVersion::NoStream, vec![numbered(1)])
        .await
        .unwrap();
    // The older transaction now appending version 2 of `shared` would put
    // it before version 1 in the log: it is refused, and the caller retries
    // the transaction (which then gets a younger id).
    let refused = store
        .append_in(
            &mut older,
            &stream,
            ExpectedVersion::Exact(1),
            vec![numbered(2)],
        )
        .await;
    match &refused {
        Err(StoreError::Unavailable {
            reason: message, ..
        }) => assert!(
            message.contains("was appended to by a younger transaction; retry the transaction"),
            "{message}"
        ),
        other => panic!("expected a retryable refusal, got {other:?}"),
    }
    older.rollback().await.unwrap();
    let mut retry = store.pool().begin().await.unwrap();
    store
        .append_in(
            &mut retry,
            &StreamId::from("other"),
            ExpectedVersion::NoStream,
            vec![numbered(0)],
        )
        .await
        .unwrap();
    let v2 = store
        .append_in(
            &mut retry,
            &stream,
            ExpectedVersion::Exact(1),
            vec![numbered(2)],
        )
        .await
        .unwrap();
    retry.commit().await.unwrap();
    assert_eq!((v1[0].stream_version, v2[0].stream_version), (1, 2));

    let log = read_log_until(&reader, PATIENCE, |log| log.len() == 3).await;
    let shared: Vec<u64> = log
        .iter()
        .filter(|e| e.stream_id == stream)
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(
        shared,
        [1, 2],
        "version 1 (position {}) must come before version 2 (position {}) in the global log",
        v1[0].global_position,
        v2[0].global_position
    );
    assert!(
        v1[0].global_position < v2[0].global_position,
        "version 1 is at position {}, version 2 at {}",
        v1[0].global_position,
        v2[0].global_position
    );
}

/// The same with the store's own `append_atomic` (no caller transaction):
/// a transfer locks its first stream (and so gets its transaction id), then
/// waits for the second stream while a younger single-stream append to it
/// commits; the transfer's event on the second stream then has the higher
/// version but the lower position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_atomic_appends_keep_each_stream_s_versions_increasing_along_the_global_log() {
    let _turn = SERIAL.lock().await;
    let store = fresh_store().await;
    let reader = second_handle(&store).await;
    let rounds = 400u64;
    let transfers = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..rounds {
                store
                    .append_atomic(vec![
                        StreamAppend::new("acct-a", ExpectedVersion::Any, vec![numbered(n)]),
                        StreamAppend::new("acct-b", ExpectedVersion::Any, vec![numbered(n)]),
                    ])
                    .await
                    .expect("transfer");
            }
        })
    };
    let deposits = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..rounds * 2 {
                store
                    .append(
                        &StreamId::from("acct-b"),
                        ExpectedVersion::Any,
                        vec![numbered(n)],
                    )
                    .await
                    .expect("deposit");
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        transfers.await.unwrap();
        deposits.await.unwrap();
    })
    .await
    .expect("the writers finish");

    let total = (rounds * 4) as usize;
    let log = read_log_until(&reader, PATIENCE, |log| log.len() == total).await;
    assert_strictly_increasing(&log);
    if let Some(violation) = stream_order_violation(&log) {
        panic!("{violation}");
    }
}

/// Load: 8 writers (4 on their own streams, 4 pairs contending on 2 streams
/// with exact expectations and retries) while a live subscriber follows
/// from position 0. The subscriber gets every committed event exactly once,
/// in the order `read_all` gives, and each stream is contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_load_a_live_subscriber_gets_every_committed_event_once_in_log_order() {
    const WRITERS: usize = 8;
    const PER_WRITER: u64 = 2_500;
    const TOTAL: usize = WRITERS * PER_WRITER as usize;
    let _turn = SERIAL.lock().await;
    let store = fresh_store().await;
    let reader = second_handle(&store).await;
    let started = Instant::now();

    let subscriber = {
        let mut subscription = store.subscribe(0);
        tokio::spawn(async move {
            let received = receive(&mut subscription, TOTAL, Duration::from_secs(180)).await;
            let first_all = started.elapsed();
            // Exactly once: nothing more arrives.
            assert_quiet(&mut subscription, Duration::from_secs(1)).await;
            (received, first_all)
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let (stream, contended) = if w < 4 {
                (StreamId::new(format!("solo-{w}")), false)
            } else {
                (StreamId::new(format!("shared-{}", w % 2)), true)
            };
            let mut committed: Vec<(StreamId, Uuid)> = Vec::new();
            let mut conflicts = 0u64;
            let mut written = 0u64;
            let mut expected = 0u64;
            let mut k = 0u64;
            while written < PER_WRITER {
                let size = ((k + w as u64) % 5 + 1).min(PER_WRITER - written);
                k += 1;
                let batch = numbered_batch(w as u64 * 1_000_000 + written, size);
                let recorded = loop {
                    match store
                        .append(&stream, ExpectedVersion::Exact(expected), batch.clone())
                        .await
                    {
                        Ok(recorded) => break recorded,
                        Err(StoreError::WrongExpectedVersion { actual, .. }) if contended => {
                            conflicts += 1;
                            expected = actual;
                        }
                        Err(other) => panic!("writer {w} on {stream}: {other}"),
                    }
                };
                expected = recorded.last().unwrap().stream_version;
                committed.extend(recorded.iter().map(|e| (e.stream_id.clone(), e.event_id)));
                written += size;
            }
            (committed, conflicts)
        }));
    }
    let mut committed: Vec<(StreamId, Uuid)> = Vec::new();
    let mut conflicts = 0;
    for writer in writers {
        let (mine, c) = tokio::time::timeout(Duration::from_secs(180), writer)
            .await
            .expect("the writers finish")
            .expect("writer task");
        committed.extend(mine);
        conflicts += c;
    }
    let writers_done = started.elapsed();
    let (received, all_received) = subscriber.await.expect("subscriber task");
    println!(
        "load: {TOTAL} events by {WRITERS} writers ({conflicts} conflicts) written in {writers_done:?}; \
         the subscriber had all of them after {all_received:?}"
    );

    assert_eq!(committed.len(), TOTAL);
    assert_eq!(received.len(), TOTAL);
    let committed_ids: HashSet<Uuid> = committed.iter().map(|(_, id)| *id).collect();
    let received_ids: HashSet<Uuid> = received.iter().map(|e| e.event_id).collect();
    assert_eq!(committed_ids.len(), TOTAL, "no id committed twice");
    assert_eq!(received_ids.len(), TOTAL, "nothing delivered twice");
    assert_eq!(
        received_ids, committed_ids,
        "every committed event delivered"
    );
    assert_strictly_increasing(&received);

    let log = read_whole_log(&reader).await;
    assert_eq!(
        ids(&log),
        ids(&received),
        "the subscriber's order is read_all's"
    );
    assert_eq!(positions(&log), positions(&received));
    if let Some(violation) = stream_order_violation(&log) {
        panic!("{violation}");
    }

    let mut per_stream: BTreeMap<StreamId, HashSet<Uuid>> = BTreeMap::new();
    for (stream, id) in &committed {
        per_stream.entry(stream.clone()).or_default().insert(*id);
    }
    assert_eq!(per_stream.len(), 6);
    for (stream, expected_ids) in per_stream {
        let stored = reader.read_stream(&stream, 1, usize::MAX).await.unwrap();
        let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
        assert_eq!(
            versions,
            (1..=expected_ids.len() as u64).collect::<Vec<_>>(),
            "stream {stream} is contiguous"
        );
        assert_eq!(
            stored.iter().map(|e| e.event_id).collect::<HashSet<_>>(),
            expected_ids
        );
        let expected_len = if stream.as_str().starts_with("solo") {
            2_500
        } else {
            5_000
        };
        assert_eq!(stored.len(), expected_len, "stream {stream}");
    }
}
