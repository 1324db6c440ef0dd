//! The embedded migrations: idempotent, recorded once each, safe to run from
//! several connects at once; and schemas of one database are separate
//! stores.

mod common;

use std::time::Duration;

use common::*;
use es_core::{EventStore, ExpectedVersion, StreamId};
use es_postgres::{sqlx, PgEventStore, SetupError};
use uuid::Uuid;

const MIGRATION_1: &str = "streams, events, snapshots, append_events(), readable_bound()";

/// The rows of `schema_migrations`: (version, description, applied_at as text).
async fn migrations(store: &PgEventStore) -> Vec<(i32, String, String)> {
    sqlx::query_as(&format!(
        "SELECT version, description, applied_at::text FROM \"{}\".schema_migrations ORDER BY version",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .expect("read schema_migrations")
}

/// Exactly one row per migration: versions 1, 2, … n, the first the base
/// schema. (The list of migrations grows; the test does not pin its length.)
#[track_caller]
fn assert_one_row_per_migration(rows: &[(i32, String, String)]) {
    assert!(!rows.is_empty(), "no migration recorded");
    let versions: Vec<i32> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        versions,
        (1..=rows.len() as i32).collect::<Vec<_>>(),
        "{rows:?}"
    );
    assert_eq!(rows[0].1, MIGRATION_1);
}

/// The store's own tables are there (later migrations may add more).
#[track_caller]
fn assert_base_tables(tables: &[String]) {
    for table in ["events", "schema_migrations", "snapshots", "streams"] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing from {tables:?}"
        );
    }
}

async fn tables(store: &PgEventStore) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(store.schema())
    .fetch_all(store.pool())
    .await
    .expect("list the tables")
}

async fn connect(schema: &str) -> Result<PgEventStore, SetupError> {
    PgEventStore::builder()
        .schema(schema)
        .connect(&database_url())
        .await
}

#[tokio::test]
async fn connecting_again_to_a_schema_keeps_it_and_records_each_migration_once() {
    let first = fresh_store().await;
    let applied = migrations(&first).await;
    assert_one_row_per_migration(&applied);
    let first_tables = tables(&first).await;
    assert_base_tables(&first_tables);
    let stream = StreamId::from("kept");
    let written = first
        .append(&stream, ExpectedVersion::NoStream, numbered_batch(0, 3))
        .await
        .unwrap();

    let second = connect(first.schema()).await.expect("a second connect");
    second.migrate().await.expect("migrating again");
    first.migrate().await.expect("migrating again");
    let third = connect(first.schema()).await.expect("a third connect");
    assert_eq!(
        migrations(&third).await,
        applied,
        "nothing applied again: same rows, same applied_at"
    );
    assert_eq!(tables(&third).await, first_tables);

    // The data is untouched and every handle works on it.
    let read = third.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(as_json(&read), as_json(&written));
    let more = second
        .append(&stream, ExpectedVersion::Exact(3), vec![numbered(3)])
        .await
        .unwrap();
    assert_eq!(more[0].stream_version, 4);
    assert_eq!(first.stream_version(&stream).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schemas_of_one_database_are_separate_stores() {
    let one = fresh_store().await;
    let two = fresh_store().await;
    assert_ne!(one.schema(), two.schema());
    let two_reader = second_handle(&two).await;
    let mut two_subscription = two.subscribe(0);
    let stream = StreamId::from("same-name");

    let event = numbered(1);
    let in_one = one
        .append(&stream, ExpectedVersion::NoStream, vec![event.clone()])
        .await
        .unwrap();
    assert_eq!(in_one[0].stream_version, 1);
    // Once the event is readable in its own schema, it is still not in the
    // other one.
    let one_reader = second_handle(&one).await;
    read_log_until(&one_reader, PATIENCE, |log| log.len() == 1).await;
    assert!(two.read_stream(&stream, 1, 10).await.unwrap().is_empty());
    assert_eq!(two.stream_version(&stream).await.unwrap(), 0);
    assert!(two_reader.read_all(0, 100).await.unwrap().is_empty());
    assert_eq!(two_reader.head_position().await.unwrap(), 0);
    assert_quiet(&mut two_subscription, Duration::from_millis(700)).await;

    // The same stream, even the same event id, is new in the other schema.
    let in_two = two
        .append(&stream, ExpectedVersion::NoStream, vec![event.clone()])
        .await
        .unwrap();
    assert_eq!(in_two[0].stream_version, 1);
    assert_eq!(in_two[0].event_id, event.event_id);
    let delivered = receive(&mut two_subscription, 1, Duration::from_secs(10)).await;
    assert_eq!(delivered[0].global_position, in_two[0].global_position);
    assert_quiet(&mut two_subscription, Duration::from_millis(500)).await;
    assert_eq!(one.stream_version(&stream).await.unwrap(), 1);
    let two_log = read_log_until(&two_reader, PATIENCE, |log| !log.is_empty()).await;
    assert_eq!(two_log.len(), 1);
    let one_log = read_whole_log(&one_reader).await;
    assert_eq!(one_log.len(), 1);
    assert_eq!(one_log[0].global_position, in_one[0].global_position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_connects_to_one_new_schema_all_succeed() {
    let schema = format!("es_test_{}", Uuid::now_v7().simple());
    // Joined on one task rather than spawned: the connect future is not
    // `Send` (see tests/send_futures.rs). The four connects still run at
    // once against the server, each on its own pool.
    let connects = (0..4).map(|_| connect(&schema));
    let results = tokio::time::timeout(PATIENCE, futures::future::join_all(connects))
        .await
        .expect("the connects finish");
    let mut stores = Vec::new();
    for result in results {
        stores.push(result.unwrap_or_else(|e| panic!("a concurrent connect failed: {e}")));
    }
    assert_one_row_per_migration(&migrations(&stores[0]).await);
    assert_base_tables(&tables(&stores[0]).await);
    for (n, store) in stores.iter().enumerate() {
        store
            .append(
                &StreamId::from("shared"),
                ExpectedVersion::Exact(n as u64),
                vec![numbered(n as u64)],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        stores[3]
            .stream_version(&StreamId::from("shared"))
            .await
            .unwrap(),
        4
    );
}

#[tokio::test]
async fn an_invalid_schema_name_is_refused_before_connecting() {
    for bad in ["Billing", "1st", "a-b", "x\"; DROP SCHEMA public; --", ""] {
        match PgEventStore::builder()
            .schema(bad)
            .connect("postgres://nobody@127.0.0.1:1/none")
            .await
        {
            Err(SetupError::InvalidSchemaName(name)) => assert_eq!(name, bad),
            other => panic!(
                "{bad:?}: expected InvalidSchemaName, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}
