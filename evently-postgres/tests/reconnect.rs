//! A live subscription survives dropped connections: while writers append,
//! every backend of the database is terminated, several times; writers
//! re-send the same events after `Unavailable` (the store de-duplicates
//! them), and the subscriber still gets every committed event exactly once,
//! in order.
//!
//! Terminating every backend of a database would kill the connections of
//! the other tests running at the same time, so this test makes a database
//! of its own (named `es_test_…`, which CI cleans up if a run dies) and
//! drops it at the end.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use evently_core::{EventStore, ExpectedVersion, RecordedEvent, StoreError, StreamId};
use evently_postgres::sqlx::{self, Connection};
use evently_postgres::PgEventStore;
use futures::FutureExt;
use uuid::Uuid;

const WRITERS: u64 = 3;
const PER_WRITER: u64 = 1_000;
const TOTAL: u64 = WRITERS * PER_WRITER;

/// What the scenario observed, checked after the database is dropped.
struct Observed {
    committed: Vec<RecordedEvent>,
    received: Vec<RecordedEvent>,
    log: Vec<RecordedEvent>,
    terminated: Vec<i64>,
    resends: u64,
    elapsed: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_subscription_survives_every_connection_being_terminated() {
    let database = format!("es_test_db_{}", Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&url_for_database("postgres"))
        .await
        .expect("a connection to the postgres database");
    sqlx::query(&format!("CREATE DATABASE \"{database}\""))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");

    let url = url_for_database(&database);
    let scenario = std::panic::AssertUnwindSafe(run(url)).catch_unwind();
    let outcome = tokio::time::timeout(Duration::from_secs(120), scenario).await;

    // Clean up whatever happened, then judge.
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .await
    .expect("DROP DATABASE");
    let observed = match outcome {
        Err(_) => panic!("the scenario did not finish within 120 s"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(observed)) => observed,
    };
    println!(
        "reconnect: {} events, {:?} backends terminated per round, {} re-sent appends, {:?}",
        observed.committed.len(),
        observed.terminated,
        observed.resends,
        observed.elapsed
    );

    assert_eq!(observed.terminated.len(), 3);
    assert!(
        observed.terminated.iter().all(|&n| n > 0),
        "every round terminated someone: {:?}",
        observed.terminated
    );
    assert_eq!(observed.committed.len() as u64, TOTAL);
    let committed: HashSet<Uuid> = observed.committed.iter().map(|e| e.event_id).collect();
    assert_eq!(committed.len() as u64, TOTAL, "no event committed twice");

    let received = &observed.received;
    assert_eq!(received.len() as u64, TOTAL);
    let received_ids: HashSet<Uuid> = received.iter().map(|e| e.event_id).collect();
    assert_eq!(received_ids.len() as u64, TOTAL, "nothing delivered twice");
    assert_eq!(received_ids, committed, "every committed event delivered");
    for pair in received.windows(2) {
        assert!(pair[0].global_position < pair[1].global_position);
    }
    let log_ids: Vec<Uuid> = observed.log.iter().map(|e| e.event_id).collect();
    let received_order: Vec<Uuid> = received.iter().map(|e| e.event_id).collect();
    assert_eq!(
        log_ids, received_order,
        "the subscriber's order is read_all's"
    );
    // What each writer was told is what the log holds.
    for recorded in &observed.committed {
        let stored = observed
            .log
            .iter()
            .find(|e| e.event_id == recorded.event_id)
            .unwrap();
        assert_eq!(
            (stored.global_position, stored.stream_version),
            (recorded.global_position, recorded.stream_version)
        );
    }
}

async fn run(url: String) -> Observed {
    let store = PgEventStore::builder()
        .schema("es_reconnect")
        .poll_interval(Duration::from_millis(200))
        .connect(&url)
        .await
        .expect("a store in the new database");
    let started = Instant::now();
    let progress = Arc::new(AtomicU64::new(0));

    let subscriber = {
        let mut subscription = store.subscribe(0);
        tokio::spawn(async move {
            let received =
                receive(&mut subscription, TOTAL as usize, Duration::from_secs(90)).await;
            assert_quiet(&mut subscription, Duration::from_secs(1)).await;
            received
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let progress = Arc::clone(&progress);
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("writer-{w}"));
            let mut committed = Vec::new();
            let mut resends = 0u64;
            let mut version = 0u64;
            let mut k = 0u64;
            while (committed.len() as u64) < PER_WRITER {
                let size = (k % 3 + 1).min(PER_WRITER - committed.len() as u64);
                k += 1;
                let batch = numbered_batch(w * 1_000_000 + committed.len() as u64, size);
                let mut pause = Duration::from_millis(5);
                let recorded = loop {
                    match store
                        .append(&stream, ExpectedVersion::Exact(version), batch.clone())
                        .await
                    {
                        Ok(recorded) => break recorded,
                        Err(StoreError::Unavailable { .. }) if resends < 10_000 => {
                            resends += 1;
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_millis(500));
                        }
                        Err(other) => panic!("writer {w}: {other:?}"),
                    }
                };
                assert_eq!(
                    recorded.iter().map(|e| e.event_id).collect::<Vec<_>>(),
                    batch.iter().map(|e| e.event_id).collect::<Vec<_>>()
                );
                version = recorded.last().unwrap().stream_version;
                progress.fetch_add(recorded.len() as u64, Ordering::SeqCst);
                committed.extend(recorded);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (committed, resends)
        }));
    }

    // Terminate every other backend of this database at about 25 %, 50 %
    // and 75 % of the writes.
    let mut control = sqlx::PgConnection::connect(&url)
        .await
        .expect("a control connection");
    let mut terminated = Vec::new();
    for quarter in 1..=3 {
        while progress.load(Ordering::SeqCst) < TOTAL * quarter / 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut control)
        .await
        .expect("terminate the backends");
        terminated.push(n);
    }

    let mut committed = Vec::new();
    let mut resends = 0;
    for writer in writers {
        let (mine, r) = writer.await.expect("writer task");
        committed.extend(mine);
        resends += r;
    }
    let received = subscriber.await.expect("subscriber task");
    let elapsed = started.elapsed();
    let reader = PgEventStore::builder()
        .schema("es_reconnect")
        .connect(&url)
        .await
        .expect("a reader");
    let log = read_log_until(&reader, PATIENCE, |log| log.len() as u64 >= TOTAL).await;
    reader.pool().close().await;
    store.pool().close().await;
    Observed {
        committed,
        received,
        log,
        terminated,
        resends,
        elapsed,
    }
}
