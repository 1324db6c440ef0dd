//! Projections into tables of the same file: exactly once, resumed from
//! the checkpoint; and a handler that writes through the store is refused
//! with a clear error instead of waiting for the writer it holds.

use std::time::Duration;

use evently_core::projection::{HandlerError, Projection, ProjectionOptions, ProjectionState};
use evently_core::{
    Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId,
};
use evently_sqlite::sqlx::{self, SqliteConnection};
use evently_sqlite::SqliteEventStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum Ledger {
    Credited { amount: i64 },
}

/// Sums credits per stream into `totals`.
struct Totals;

impl Projection for Totals {
    type Event = Ledger;
    type Sink = SqliteConnection;

    fn name(&self) -> &str {
        "totals"
    }

    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        event: &RecordedEvent<Ledger>,
    ) -> Result<(), HandlerError> {
        let Ledger::Credited { amount } = event.data;
        sqlx::query(
            "INSERT INTO totals (stream, total, events) VALUES (?, ?, 1) \
             ON CONFLICT (stream) DO UPDATE SET total = total + excluded.total, events = events + 1",
        )
        .bind(event.stream_id.as_str())
        .bind(amount)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Appends through the store from inside its handler: refused, unless it
/// says it does not use its sink (the second field).
struct Echo(SqliteEventStore, bool);

impl Projection for Echo {
    type Event = Ledger;
    type Sink = SqliteConnection;

    fn name(&self) -> &str {
        "echo"
    }

    fn uses_sink(&self) -> bool {
        self.1
    }

    async fn apply(
        &self,
        _: &mut SqliteConnection,
        event: &RecordedEvent<Ledger>,
    ) -> Result<(), HandlerError> {
        if event.stream_id.as_str() == "echoes" {
            return Ok(());
        }
        self.0
            .append(
                &StreamId::from("echoes"),
                ExpectedVersion::Any,
                vec![credit(event.global_position as i64)],
            )
            .await?;
        Ok(())
    }
}

fn credit(amount: i64) -> NewEvent {
    NewEvent::from_event(&Ledger::Credited { amount }, Metadata::new()).unwrap()
}

async fn store() -> SqliteEventStore {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlite-projections");
    std::fs::create_dir_all(&dir).unwrap();
    SqliteEventStore::open(dir.join(format!("{}.db", uuid::Uuid::now_v7())))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projection_writes_each_event_once_into_the_file_and_resumes() {
    let store = store().await;
    sqlx::query("CREATE TABLE totals (stream TEXT PRIMARY KEY, total INTEGER NOT NULL, events INTEGER NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let mut last = 0;
    for i in 1..=50 {
        let stream = StreamId::from(format!("acct-{}", i % 5).as_str());
        last = store
            .append(&stream, ExpectedVersion::Any, vec![credit(i)])
            .await
            .unwrap()[0]
            .global_position;
    }
    let options = ProjectionOptions::default().batch_size(7);
    let handle = store.run_projection(Totals, options.clone());
    handle
        .wait_for(last, Duration::from_secs(20))
        .await
        .unwrap();
    let stopped = handle.stop().await;
    assert_eq!(stopped.state, ProjectionState::Stopped);
    assert_eq!(store.checkpoint("totals").await.unwrap(), last);

    // Written while it is stopped; picked up from the checkpoint.
    for i in 51..=60 {
        last = store
            .append(
                &StreamId::from("acct-0"),
                ExpectedVersion::Any,
                vec![credit(i)],
            )
            .await
            .unwrap()[0]
            .global_position;
    }
    let handle = store.run_projection(Totals, options);
    handle
        .wait_for(last, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        handle.status().processed,
        10,
        "it went on from its checkpoint"
    );
    handle.stop().await;
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT stream, total, events FROM totals ORDER BY stream")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let expected: Vec<(String, i64, i64)> = (0..5)
        .map(|k| {
            let mut amounts: Vec<i64> = (1..=50).filter(|i| i % 5 == k).collect();
            if k == 0 {
                amounts.extend(51..=60);
            }
            (
                format!("acct-{k}"),
                amounts.iter().sum(),
                amounts.len() as i64,
            )
        })
        .collect();
    assert_eq!(rows, expected, "each event applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_that_writes_through_the_store_gets_an_error_not_a_hang() {
    let store = store().await;
    store
        .append(
            &StreamId::from("acct-1"),
            ExpectedVersion::Any,
            vec![credit(1)],
        )
        .await
        .unwrap();
    let handle = store.run_projection(Echo(store.clone(), true), ProjectionOptions::default());
    let mut watch = handle.watch();
    let failed = tokio::time::timeout(
        Duration::from_secs(20),
        watch.wait_for(|s| matches!(s.state, ProjectionState::Failed(_))),
    )
    .await
    .expect("the runner fails rather than waiting for itself")
    .unwrap()
    .clone();
    let ProjectionState::Failed(reason) = failed.state else {
        unreachable!()
    };
    assert!(
        reason.contains("cannot write through the store"),
        "{reason}"
    );
    assert_eq!(
        store
            .stream_version(&StreamId::from("echoes"))
            .await
            .unwrap(),
        0
    );
    // The store still takes appends.
    store
        .append(
            &StreamId::from("acct-1"),
            ExpectedVersion::Any,
            vec![credit(2)],
        )
        .await
        .unwrap();
}

/// Writes into its sink though it said it does not use it.
struct Liar;

impl Projection for Liar {
    type Event = Ledger;
    type Sink = SqliteConnection;

    fn name(&self) -> &str {
        "liar"
    }

    fn uses_sink(&self) -> bool {
        false
    }

    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        _: &RecordedEvent<Ledger>,
    ) -> Result<(), HandlerError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS liar (n INTEGER)")
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projection_without_a_sink_appends_through_the_store() {
    let store = store().await;
    for amount in 1..=5 {
        store
            .append(
                &StreamId::from("acct-1"),
                ExpectedVersion::Any,
                vec![credit(amount)],
            )
            .await
            .unwrap();
    }
    let handle = store.run_projection(Echo(store.clone(), false), ProjectionOptions::default());
    // Each of the five credits is echoed once (positions 6 to 10).
    handle.wait_for(10, Duration::from_secs(20)).await.unwrap();
    handle.stop().await;
    assert_eq!(store.checkpoint("echo").await.unwrap(), 10);
    let echoes = store
        .read_stream(&StreamId::from("echoes"), 1, 100)
        .await
        .unwrap();
    let amounts: Vec<_> = echoes.iter().map(|e| e.data.as_str().to_owned()).collect();
    assert_eq!(
        amounts,
        (1..=5)
            .map(|n| format!("{{\"amount\":{n}}}"))
            .collect::<Vec<_>>()
    );

    // Its sink is read-only: a write through it is an error, not a write
    // outside the checkpoint's transaction.
    let handle = store.run_projection(Liar, ProjectionOptions::default());
    let mut watch = handle.watch();
    let failed = tokio::time::timeout(
        Duration::from_secs(20),
        watch.wait_for(|s| matches!(s.state, ProjectionState::Failed(_))),
    )
    .await
    .expect("the runner fails")
    .unwrap()
    .clone();
    let ProjectionState::Failed(reason) = failed.state else {
        unreachable!()
    };
    assert!(reason.contains("readonly"), "{reason}");
    assert_eq!(store.checkpoint("liar").await.unwrap(), 0);
}
