//! Inline projections (a read model written in the append's transaction)
//! and rebuilding a read model from zero while queries keep working, in
//! the store's file.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use evently_core::projection::{HandlerError, Projection, ProjectionOptions};
use evently_core::view::View;
use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoreError, StreamId,
};
use evently_sqlite::sqlx::{self, sqlite::SqliteConnection};
use evently_sqlite::{RebuildError, SqliteEventStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, evently_core::Event)]
enum Ledger {
    Credited { amount: i64 },
}

/// Sums credits per stream into `table`; refuses the amount 13.
struct Totals {
    name: &'static str,
    table: &'static str,
}

impl Projection for Totals {
    type Event = Ledger;
    type Sink = SqliteConnection;

    fn name(&self) -> &str {
        self.name
    }

    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        event: &RecordedEvent<Ledger>,
    ) -> Result<(), HandlerError> {
        let Ledger::Credited { amount } = event.data;
        if amount == 13 {
            return Err("13 is refused".into());
        }
        sqlx::query(&format!(
            "INSERT INTO {t} (stream_id, total) VALUES (?, ?) \
             ON CONFLICT (stream_id) DO UPDATE SET total = total + excluded.total",
            t = self.table
        ))
        .bind(event.stream_id.as_str())
        .bind(amount)
        .execute(conn)
        .await?;
        Ok(())
    }
}

fn credit(amount: i64) -> NewEvent {
    NewEvent::from_event(&Ledger::Credited { amount }, Metadata::new()).unwrap()
}

fn file() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlite-rebuilds");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}.db", uuid::Uuid::now_v7()))
}

async fn totals(store: &SqliteEventStore, table: &str) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(&format!("SELECT stream_id, total FROM {table}"))
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn run_sql(store: &SqliteEventStore, sql: &str) {
    sqlx::raw_sql(sql).execute(store.pool()).await.unwrap();
}

async fn inline_store() -> SqliteEventStore {
    let path = file();
    let plain = SqliteEventStore::open(&path).await.unwrap();
    run_sql(
        &plain,
        "CREATE TABLE totals (stream_id TEXT PRIMARY KEY, total INTEGER NOT NULL)",
    )
    .await;
    drop(plain);
    SqliteEventStore::builder()
        .inline_projection(Totals {
            name: "totals",
            table: "totals",
        })
        .open(&path)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_inline_read_model_is_current_when_the_append_returns() {
    let store = inline_store().await;
    let stream = StreamId::from("acct-1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![credit(5), credit(7)],
        )
        .await
        .unwrap();
    assert_eq!(
        totals(&store, "totals").await,
        BTreeMap::from([("acct-1".into(), 12)])
    );
    // A retried append is stored once and applied once.
    let batch = vec![credit(100)];
    store
        .append(&stream, ExpectedVersion::Exact(2), batch.clone())
        .await
        .unwrap();
    store
        .append(&stream, ExpectedVersion::Exact(2), batch)
        .await
        .expect("a retry");
    assert_eq!(totals(&store, "totals").await["acct-1"], 112);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_inline_projection_fails_its_append_alone_and_stores_nothing_of_it() {
    let store = inline_store().await;
    let stream = StreamId::from("acct-1");
    store
        .append(&stream, ExpectedVersion::Any, vec![credit(1)])
        .await
        .unwrap();
    let refused = store
        .append(&stream, ExpectedVersion::Any, vec![credit(2), credit(13)])
        .await;
    match refused {
        Err(StoreError::InlineProjectionFailed { projection, reason }) => {
            assert_eq!(projection, "totals");
            assert_eq!(reason, "13 is refused");
        }
        other => panic!("expected InlineProjectionFailed, got {other:?}"),
    }
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
    assert_eq!(totals(&store, "totals").await["acct-1"], 1);

    // Appends queued together: each refused one fails alone.
    let tasks: Vec<_> = (0..40i64)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let amount = if n % 4 == 0 { 13 } else { n + 100 };
                store
                    .append(
                        &StreamId::from(format!("g-{n}")),
                        ExpectedVersion::NoStream,
                        vec![credit(amount)],
                    )
                    .await
            })
        })
        .collect();
    for (n, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        assert_eq!(result.is_err(), n % 4 == 0, "append {n}: {result:?}");
    }
    let all = totals(&store, "totals").await;
    assert_eq!(all.len(), 1 + 30, "acct-1 and the 30 accepted appends");
    assert_eq!(store.head_position().await.unwrap(), 31);
}

/// Appends through the store from its handler (the store is set once
/// built).
struct Echo(Arc<std::sync::OnceLock<SqliteEventStore>>);

impl Projection for Echo {
    type Event = Ledger;
    type Sink = SqliteConnection;

    fn name(&self) -> &str {
        "echo"
    }

    async fn apply(
        &self,
        _: &mut SqliteConnection,
        _: &RecordedEvent<Ledger>,
    ) -> Result<(), HandlerError> {
        let store = self.0.get().expect("set after open");
        store
            .append(
                &StreamId::from("echo"),
                ExpectedVersion::Any,
                vec![credit(1)],
            )
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_of_an_inline_projection_cannot_append_through_the_store() {
    let cell = Arc::new(std::sync::OnceLock::new());
    let store = SqliteEventStore::builder()
        .inline_projection(Echo(cell.clone()))
        .open(file())
        .await
        .unwrap();
    let _ = cell.set(store.clone());
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        store.append(&StreamId::from("a"), ExpectedVersion::Any, vec![credit(1)]),
    )
    .await
    .expect("an error, not a wait for itself");
    match refused {
        Err(StoreError::InlineProjectionFailed { reason, .. }) => {
            assert!(
                reason.contains("cannot write through the store"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.head_position().await.unwrap(), 0);
}

/// 600 credits over ten streams, tables `totals_v1` and `totals_v2` and a
/// view `totals` over the first, and `totals_v1` run up to the head.
async fn projected() -> (SqliteEventStore, BTreeMap<String, i64>, u64) {
    let store = SqliteEventStore::open(file()).await.unwrap();
    run_sql(
        &store,
        "CREATE TABLE totals_v1 (stream_id TEXT PRIMARY KEY, total INTEGER NOT NULL, generation INTEGER NOT NULL DEFAULT 1);
         CREATE TABLE totals_v2 (stream_id TEXT PRIMARY KEY, total INTEGER NOT NULL, generation INTEGER NOT NULL DEFAULT 2);
         CREATE VIEW totals AS SELECT * FROM totals_v1;",
    )
    .await;
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..600i64 {
        let stream = format!("acct-{}", i % 10);
        *expected.entry(stream.clone()).or_default() += i + 100;
        store
            .append(
                &StreamId::from(stream),
                ExpectedVersion::Any,
                vec![credit(i + 100)],
            )
            .await
            .unwrap();
    }
    let head = store.head_position().await.unwrap();
    (store, expected, head)
}

const V1: Totals = Totals {
    name: "totals_v1",
    table: "totals_v1",
};
const V2: Totals = Totals {
    name: "totals_v2",
    table: "totals_v2",
};
const SWITCH: &str = "DROP VIEW totals; CREATE VIEW totals AS SELECT * FROM totals_v2";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_fills_new_tables_and_switches_while_queries_keep_working() {
    let (store, expected, head) = projected().await;
    let v1 = store.run_projection(V1, ProjectionOptions::default());
    v1.wait_for(head, Duration::from_secs(20)).await.unwrap();
    assert_eq!(totals(&store, "totals").await, expected);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (store, stop, reads) = (store.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let total: Option<i64> = sqlx::query_scalar("SELECT sum(total) FROM totals")
                    .fetch_one(store.pool())
                    .await
                    .expect("the view answers during the rebuild");
                assert!(total.is_some_and(|t| t > 0));
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut reports = Vec::new();
    let v2 = store
        .rebuild_projection(
            V2,
            ProjectionOptions::default().batch_size(20),
            SWITCH,
            |progress, status| reports.push((progress.clone(), status.processed)),
        )
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    reader.await.unwrap();
    assert!(reads.load(Ordering::SeqCst) > 0);
    let (last, processed) = reports.last().expect("progress was reported");
    assert_eq!((last.behind, last.position, *processed), (0, head, 600));
    let generation: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT generation FROM totals")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(generation, [2], "the view reads the rebuilt table");
    assert_eq!(totals(&store, "totals").await, expected);
    // The new projection keeps running live.
    let more = store
        .append(
            &StreamId::from("acct-0"),
            ExpectedVersion::Any,
            vec![credit(1)],
        )
        .await
        .unwrap();
    v2.wait_for(more[0].global_position, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        totals(&store, "totals").await["acct-0"],
        expected["acct-0"] + 1
    );
    v1.stop().await;
    v2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilds_under_a_name_with_a_checkpoint_or_a_running_instance_are_refused() {
    let (store, expected, head) = projected().await;
    let live = store.run_projection(V1, ProjectionOptions::default());
    live.wait_for(head, Duration::from_secs(20)).await.unwrap();
    assert!(store.projection_running("totals_v1").await.unwrap());
    assert!(!store.projection_running("totals_v2").await.unwrap());
    for force in [false, true] {
        let refused = if force {
            store
                .force_rebuild_projection(V1, ProjectionOptions::default(), "", |_, _| {})
                .await
        } else {
            store
                .rebuild_projection(V1, ProjectionOptions::default(), "", |_, _| {})
                .await
        };
        match refused {
            Err(RebuildError::Running { name }) => assert_eq!(name, "totals_v1"),
            Err(other) => panic!("forced {force}: expected Running, got {other}"),
            Ok(_) => panic!("forced {force}: a rebuild under a running projection's name"),
        }
    }
    live.stop().await;
    assert!(!store.projection_running("totals_v1").await.unwrap());
    let refused = store
        .rebuild_projection(V1, ProjectionOptions::default(), "", |_, _| {})
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(refused, RebuildError::CheckpointExists { ref name, position } if name == "totals_v1" && position == head),
        "{refused}"
    );
    assert_eq!(store.checkpoint("totals_v1").await.unwrap(), head);
    assert_eq!(
        totals(&store, "totals_v1").await,
        expected,
        "nothing changed"
    );

    // In place: the table emptied and refilled, stale parked events gone.
    run_sql(
        &store,
        "INSERT INTO parked_events (projection, position, event_id, stream_id, stream_version, event_type, error, parked_at) \
         SELECT 'totals_v1', position, event_id, stream_id, stream_version, event_type, 'stale', 0 FROM events LIMIT 1",
    )
    .await;
    assert_eq!(store.parked("totals_v1").await.unwrap().len(), 1);
    let handle = store
        .rebuild_projection_in_place(
            V1,
            ProjectionOptions::default(),
            "DELETE FROM totals_v1",
            |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(store.checkpoint("totals_v1").await.unwrap(), head);
    assert_eq!(totals(&store, "totals_v1").await, expected, "applied once");
    assert!(store.parked("totals_v1").await.unwrap().is_empty());
    handle.stop().await;
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Sum {
    total: i64,
}

impl View for Sum {
    type Event = Ledger;

    fn key(event: &RecordedEvent<Ledger>) -> Option<String> {
        Some(event.stream_id.as_str().to_owned())
    }

    fn apply(&mut self, event: &RecordedEvent<Ledger>) {
        let Ledger::Credited { amount } = event.data;
        self.total += amount;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_view_rebuilt_in_place_holds_the_log_once() {
    let (store, expected, head) = projected().await;
    let views = store
        .run_view::<Sum>("sums", ProjectionOptions::default())
        .await
        .unwrap();
    views.wait_for(head, Duration::from_secs(20)).await.unwrap();
    views.stop().await;
    run_sql(&store, "UPDATE view_sums SET doc = '{\"total\":-1}'").await;
    let handle = store
        .rebuild_view::<Sum>("sums", ProjectionOptions::default(), |_, _| {})
        .await
        .unwrap();
    handle.stop().await;
    let sums: BTreeMap<String, i64> =
        sqlx::query_as::<_, (String, String)>("SELECT key, doc FROM view_sums")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|(k, d)| (k, serde_json::from_str::<Sum>(&d).unwrap().total))
            .collect();
    assert_eq!(sums, expected);
    assert_eq!(store.checkpoint("view_sums").await.unwrap(), head);
}
