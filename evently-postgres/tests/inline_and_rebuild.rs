//! Inline projections (a read model written in the append's transaction)
//! and rebuilding a read model from zero while queries keep working.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use evently_core::projection::{HandlerError, Projection, ProjectionOptions};
use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoreError, StreamId,
    StreamLifecycle,
};
use evently_postgres::sqlx::{self, PgConnection};
use evently_postgres::PgEventStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, evently_core::Event)]
enum Ledger {
    Credited { amount: i64 },
}

/// Sums credits per stream into `table`; refuses the amount 13.
struct Totals {
    name: &'static str,
    table: String,
}

impl Projection for Totals {
    type Event = Ledger;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        self.name
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<Ledger>,
    ) -> Result<(), HandlerError> {
        let Ledger::Credited { amount } = event.data;
        if amount == 13 {
            return Err("13 is refused".into());
        }
        sqlx::query(&format!(
            "INSERT INTO {t} (stream_id, total) VALUES ($1, $2) \
             ON CONFLICT (stream_id) DO UPDATE SET total = {t}.total + excluded.total",
            t = self.table
        ))
        .bind(event.stream_id.as_str())
        .bind(amount)
        .execute(tx)
        .await?;
        Ok(())
    }
}

fn credit(amount: i64) -> NewEvent {
    NewEvent::from_event(&Ledger::Credited { amount }, Metadata::new()).unwrap()
}

async fn totals(store: &PgEventStore, table: &str) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(&format!("SELECT stream_id, total FROM {table}"))
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn inline_store() -> (PgEventStore, String) {
    // The schema exists once a first handle connected; then the table, then
    // the handle with the inline projection.
    let plain = common::fresh_store().await;
    let table = format!("\"{}\".totals", plain.schema());
    sqlx::query(&format!(
        "CREATE TABLE {table} (stream_id text PRIMARY KEY, total bigint NOT NULL)"
    ))
    .execute(plain.pool())
    .await
    .unwrap();
    let store = PgEventStore::builder()
        .schema(plain.schema())
        .inline_projection(Totals {
            name: "totals",
            table: table.clone(),
        })
        .connect(&common::database_url())
        .await
        .unwrap();
    (store, table)
}

#[tokio::test]
async fn an_inline_read_model_is_current_when_the_append_returns() {
    let (store, table) = inline_store().await;
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
        totals(&store, &table).await,
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
    assert_eq!(totals(&store, &table).await["acct-1"], 112);
}

#[tokio::test]
async fn a_failing_inline_projection_fails_the_append_and_stores_nothing() {
    let (store, table) = inline_store().await;
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
    assert_eq!(totals(&store, &table).await["acct-1"], 1);
}

#[tokio::test]
async fn an_inline_projection_joins_the_callers_transaction() {
    let (store, table) = inline_store().await;
    let stream = StreamId::from("acct-1");
    let mut tx = store.pool().begin().await.unwrap();
    store
        .append_in(&mut tx, &stream, ExpectedVersion::Any, vec![credit(3)])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(totals(&store, &table).await.is_empty());
    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);
    let mut tx = store.pool().begin().await.unwrap();
    store
        .append_in(&mut tx, &stream, ExpectedVersion::Any, vec![credit(4)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(totals(&store, &table).await["acct-1"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_fills_new_tables_and_switches_while_queries_keep_working() {
    let store = common::fresh_store().await;
    let s = format!("\"{}\"", store.schema());
    sqlx::raw_sql(&format!(
        "CREATE TABLE {s}.totals_v1 (stream_id text PRIMARY KEY, total bigint NOT NULL, generation int NOT NULL DEFAULT 1);
         CREATE TABLE {s}.totals_v2 (stream_id text PRIMARY KEY, total bigint NOT NULL, generation int NOT NULL DEFAULT 2);
         CREATE VIEW {s}.totals AS SELECT * FROM {s}.totals_v1;"
    ))
    .execute(store.pool())
    .await
    .unwrap();
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
    let v1 = store.run_projection(
        Totals {
            name: "totals_v1",
            table: format!("{s}.totals_v1"),
        },
        ProjectionOptions::default(),
    );
    let head = store.head_position().await.unwrap();
    v1.wait_for(head, Duration::from_secs(20)).await.unwrap();

    // Readers query the view all along.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (store, stop, reads, s) = (store.clone(), stop.clone(), reads.clone(), s.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let total: Option<i64> =
                    sqlx::query_scalar(&format!("SELECT sum(total)::bigint FROM {s}.totals"))
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
            Totals {
                name: "totals_v2",
                table: format!("{s}.totals_v2"),
            },
            ProjectionOptions::default().batch_size(20),
            &format!("CREATE OR REPLACE VIEW {s}.totals AS SELECT * FROM {s}.totals_v2"),
            |progress, status| reports.push((progress.clone(), status.processed)),
        )
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    reader.await.unwrap();
    assert!(reads.load(Ordering::SeqCst) > 0);
    let (last, processed) = reports.last().expect("progress was reported");
    assert_eq!(last.behind, 0);
    assert_eq!(last.position, head);
    assert_eq!(*processed, 600);

    let generation: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT DISTINCT generation FROM {s}.totals"))
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(generation, [2], "the view reads the rebuilt tables");
    assert_eq!(totals(&store, &format!("{s}.totals")).await, expected);
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
        totals(&store, &format!("{s}.totals")).await["acct-0"],
        expected["acct-0"] + 1
    );
    v1.stop().await;
    v2.stop().await;
}

/// The store with 20 credits (1 to 21 but 13, which `Totals` refuses) over
/// four streams, a table
/// `totals_v1` and a view `totals` over it, and the projection `totals_v1`
/// run up to the head and stopped. Returns the store, its quoted schema,
/// the expected totals and the head.
async fn projected_and_stopped() -> (PgEventStore, String, BTreeMap<String, i64>, u64) {
    let store = common::fresh_store().await;
    let s = format!("\"{}\"", store.schema());
    sqlx::raw_sql(&format!(
        "CREATE TABLE {s}.totals_v1 (stream_id text PRIMARY KEY, total bigint NOT NULL);
         CREATE VIEW {s}.totals AS SELECT * FROM {s}.totals_v1;"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let mut expected = BTreeMap::new();
    for amount in (1..=21i64).filter(|a| *a != 13) {
        let stream = format!("acct-{}", amount % 4);
        *expected.entry(stream.clone()).or_default() += amount;
        store
            .append(
                &StreamId::from(stream),
                ExpectedVersion::Any,
                vec![credit(amount)],
            )
            .await
            .unwrap();
    }
    let head = store.head_position().await.unwrap();
    let live = store.run_projection(v1(&s), ProjectionOptions::default());
    live.wait_for(head, Duration::from_secs(20)).await.unwrap();
    live.stop().await;
    assert_eq!(totals(&store, &format!("{s}.totals_v1")).await, expected);
    (store, s, expected, head)
}

fn v1(s: &str) -> Totals {
    Totals {
        name: "totals_v1",
        table: format!("{s}.totals_v1"),
    }
}

/// `rebuild_projection` given a live projection's name by mistake used to
/// drop its checkpoint and replay the whole log into its live tables
/// (every total doubled). It is refused now, and changes nothing.
#[tokio::test]
async fn a_rebuild_under_a_name_that_has_a_checkpoint_is_refused_and_changes_nothing() {
    let (store, s, expected, head) = projected_and_stopped().await;
    let switch = format!("CREATE OR REPLACE VIEW {s}.totals AS SELECT * FROM {s}.totals_v1");
    let refused = store
        .rebuild_projection(v1(&s), ProjectionOptions::default(), &switch, |_, _| {})
        .await;
    match refused {
        Err(evently_postgres::RebuildError::CheckpointExists { name, position }) => {
            assert_eq!((name.as_str(), position), ("totals_v1", head));
        }
        Err(other) => panic!("expected CheckpointExists, got {other}"),
        Ok(handle) => {
            handle.stop().await;
            panic!(
                "the rebuild was not refused; the live table now holds {:?}",
                totals(&store, &format!("{s}.totals_v1")).await
            );
        }
    }
    assert_eq!(store.checkpoint("totals_v1").await.unwrap(), head);
    assert_eq!(totals(&store, &format!("{s}.totals_v1")).await, expected);

    // While an instance runs, even a forced rebuild is refused.
    assert!(!store.projection_running("totals_v1").await.unwrap());
    let live = store.run_projection(v1(&s), ProjectionOptions::default());
    live.wait_for(head, Duration::from_secs(20)).await.unwrap();
    assert!(store.projection_running("totals_v1").await.unwrap());
    assert!(!store.projection_running("totals_v2").await.unwrap());
    for force in [false, true] {
        let refused = if force {
            store
                .force_rebuild_projection(v1(&s), ProjectionOptions::default(), &switch, |_, _| {})
                .await
        } else {
            store
                .rebuild_projection(v1(&s), ProjectionOptions::default(), &switch, |_, _| {})
                .await
        };
        match refused {
            Err(evently_postgres::RebuildError::Running { name }) => assert_eq!(name, "totals_v1"),
            Err(other) => panic!("forced {force}: expected Running, got {other}"),
            Ok(_) => panic!("forced {force}: a rebuild under a running projection's name"),
        }
        let error = store
            .rebuild_projection(v1(&s), ProjectionOptions::default(), &switch, |_, _| {})
            .await
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            "projection `totals_v1` is running: stop it before rebuilding under its name"
        );
    }
    assert_eq!(store.checkpoint("totals_v1").await.unwrap(), head);
    assert_eq!(totals(&store, &format!("{s}.totals_v1")).await, expected);
    // The live instance was never disturbed.
    let more = store
        .append(
            &StreamId::from("acct-0"),
            ExpectedVersion::Any,
            vec![credit(1)],
        )
        .await
        .unwrap();
    live.wait_for(more[0].global_position, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        totals(&store, &format!("{s}.totals_v1")).await["acct-0"],
        expected["acct-0"] + 1
    );
    live.stop().await;
    assert!(!store.projection_running("totals_v1").await.unwrap());
}

/// Forced, a rebuild under the name replays the log from zero into its
/// (emptied) tables and drops its stale parked events.
#[tokio::test]
async fn a_forced_rebuild_replays_from_zero_under_the_same_name() {
    let (store, s, expected, head) = projected_and_stopped().await;
    sqlx::raw_sql(&format!(
        "TRUNCATE {s}.totals_v1;
         INSERT INTO {s}.parked_events (projection, position, event_id, stream_id, stream_version, event_type, error)
         SELECT 'totals_v1', position, event_id, stream_id, stream_version, event_type, 'stale'
         FROM {s}.events ORDER BY position LIMIT 1;"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(store.parked("totals_v1").await.unwrap().len(), 1);
    let switch = format!("CREATE OR REPLACE VIEW {s}.totals AS SELECT * FROM {s}.totals_v1");
    let handle = store
        .force_rebuild_projection(v1(&s), ProjectionOptions::default(), &switch, |_, _| {})
        .await
        .unwrap();
    assert_eq!(store.checkpoint("totals_v1").await.unwrap(), head);
    assert_eq!(totals(&store, &format!("{s}.totals")).await, expected);
    assert!(store.parked("totals_v1").await.unwrap().is_empty());
    handle.stop().await;
}

/// Over a log whose stream `gone` was erased (its last events are the last
/// of the log), a projection run from zero and a rebuild into new tables
/// hold nothing of the erased events, park none, and their checkpoints
/// move past them to the head.
#[tokio::test]
async fn a_run_from_zero_and_a_rebuild_over_an_erased_stream_hold_nothing_of_it() {
    let store = common::fresh_store().await;
    let s = format!("\"{}\"", store.schema());
    sqlx::raw_sql(&format!(
        "CREATE TABLE {s}.totals_v1 (stream_id text PRIMARY KEY, total bigint NOT NULL);
         CREATE TABLE {s}.totals_v2 (stream_id text PRIMARY KEY, total bigint NOT NULL);
         CREATE VIEW {s}.totals AS SELECT * FROM {s}.totals_v1;"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let (kept, gone) = (StreamId::from("acct-kept"), StreamId::from("acct-gone"));
    store
        .append(&kept, ExpectedVersion::Any, vec![credit(1), credit(2)])
        .await
        .unwrap();
    store
        .append(&gone, ExpectedVersion::Any, vec![credit(40)])
        .await
        .unwrap();
    store
        .append(&kept, ExpectedVersion::Any, vec![credit(3)])
        .await
        .unwrap();
    let erased = store
        .append(&gone, ExpectedVersion::Any, vec![credit(50), credit(60)])
        .await
        .unwrap();
    assert_eq!(store.erase_stream(&gone).await.unwrap(), 3);
    let head = store.head_position().await.unwrap();
    assert_eq!(
        head, erased[1].global_position,
        "the log ends with erased events"
    );
    let only_kept = BTreeMap::from([("acct-kept".to_owned(), 6)]);

    let v1 = store.run_projection(v1(&s), ProjectionOptions::default());
    v1.wait_for(head, Duration::from_secs(20)).await.unwrap();
    assert_eq!(totals(&store, &format!("{s}.totals_v1")).await, only_kept);
    assert_eq!(store.checkpoint("totals_v1").await.unwrap(), head);
    assert_eq!(v1.status().parked, 0);

    let v2 = store
        .rebuild_projection(
            Totals {
                name: "totals_v2",
                table: format!("{s}.totals_v2"),
            },
            ProjectionOptions::default(),
            &format!("CREATE OR REPLACE VIEW {s}.totals AS SELECT * FROM {s}.totals_v2"),
            |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(totals(&store, &format!("{s}.totals")).await, only_kept);
    assert_eq!(store.checkpoint("totals_v2").await.unwrap(), head);
    assert_eq!(v2.status().parked, 0);
    assert!(store.parked("totals_v1").await.unwrap().is_empty());
    assert!(store.parked("totals_v2").await.unwrap().is_empty());
    v1.stop().await;
    v2.stop().await;
}
