//! The embedded migrations: idempotent, recorded once each, safe to run from
//! several connects at once; and schemas of one database are separate
//! stores.

mod common;

use std::time::Duration;

use common::*;
use evently_core::{EventStore, ExpectedVersion, StreamId};
use evently_postgres::{sqlx, PgEventStore, SetupError};
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

// ---------------------------------------------------------------------------
// Checksums, adoption of schemas made before them, migrate(false), and
// running the migrations alone.

/// The schema as the last build without migration checksums created it.
const SCHEMA_AT_0F36D9C: &str = include_str!("fixtures/schema_at_0f36d9c.sql");

/// Loads a fixture into `schema`, on a connection of its own (a dump sets
/// the session's search_path).
async fn load_fixture(fixture: &str, schema: &str) {
    use evently_postgres::sqlx::{Connection, Executor};
    let mut conn = control_connection().await;
    conn.execute(fixture.replace("__SCHEMA__", schema).as_str())
        .await
        .expect("load the fixture");
    conn.close().await.unwrap();
}

/// Appends with the old build's own SQL function, as it did.
async fn legacy_append(schema: &str, stream: &str, events: &[evently_core::NewEvent]) {
    let mut conn = control_connection().await;
    let metadata: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(&e.metadata).unwrap())
        .collect();
    sqlx::query(&format!(
        "SELECT * FROM \"{schema}\".append_events($1, 0::smallint, 0, $2, $3, $4, $5, $6)"
    ))
    .bind(stream)
    .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.event_type.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.schema_version as i32)
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.payload.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(metadata)
    .fetch_all(&mut conn)
    .await
    .expect("append with the old build's function");
}

fn new_schema() -> String {
    format!("es_test_{}", Uuid::now_v7().simple())
}

/// The checksums recorded in a schema: (version, hex).
async fn checksums(store: &PgEventStore) -> Vec<(i32, Option<Vec<u8>>)> {
    sqlx::query_as(&format!(
        "SELECT version, checksum FROM \"{}\".schema_migrations ORDER BY version",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .expect("read the checksums")
}

#[tokio::test]
async fn a_schema_created_by_the_previous_build_is_adopted_and_upgraded_with_its_events_intact() {
    let schema = new_schema();
    load_fixture(SCHEMA_AT_0F36D9C, &schema).await;
    let a = numbered_batch(0, 3);
    let b = numbered_batch(10, 2);
    legacy_append(&schema, "account-a", &a).await;
    legacy_append(&schema, "account-b", &b).await;
    legacy_append(&schema, "account-a", &numbered_batch(3, 1)).await;

    // A deploy step runs the migrations alone: it adopts the schema (its
    // DDL is migrations 1 and 2 as released) and applies the newer ones.
    let report = PgEventStore::builder()
        .schema(&schema)
        .migrate_only(&database_url())
        .await
        .expect("adopt and upgrade the old schema");
    assert!(report.adopted);
    assert_eq!(report.applied, vec![3, 4]);

    let store = connect(&schema).await.expect("connect after the upgrade");
    let recorded = checksums(&store).await;
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    assert!(recorded
        .iter()
        .all(|(_, sum)| sum.as_ref().is_some_and(|s| s.len() == 32)));
    let rows = migrations(&store).await;
    assert_one_row_per_migration(&rows);

    // The events are intact, in their streams and in the global log.
    let stream_a = store
        .read_stream(&StreamId::from("account-a"), 1, 10)
        .await
        .unwrap();
    let ids: Vec<Uuid> = stream_a.iter().map(|e| e.event_id).collect();
    let mut expected: Vec<Uuid> = a.iter().map(|e| e.event_id).collect();
    let log = read_log_until(&store, PATIENCE, |log| log.len() == 6).await;
    expected.push(log[5].event_id);
    assert_eq!(ids, expected);
    assert_eq!(
        stream_a
            .iter()
            .map(|e| e.data.to_value().unwrap())
            .collect::<Vec<_>>(),
        (0..4)
            .map(|n| serde_json::json!({ "n": n }))
            .collect::<Vec<_>>()
    );
    let log_ids: Vec<Uuid> = log.iter().map(|e| e.event_id).collect();
    let mut in_order: Vec<Uuid> = a.iter().chain(&b).map(|e| e.event_id).collect();
    in_order.push(stream_a[3].event_id);
    assert_eq!(log_ids, in_order);
    assert!(log
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));

    // And the new build appends to them.
    let more = store
        .append(
            &StreamId::from("account-a"),
            ExpectedVersion::Exact(4),
            vec![numbered(4)],
        )
        .await
        .unwrap();
    assert_eq!(more[0].stream_version, 5);
    assert!(more[0].global_position > log[5].global_position);

    // Connecting again changes nothing.
    let again = connect(&schema).await.unwrap();
    assert_eq!(migrations(&again).await, rows);
}

#[tokio::test]
async fn a_schema_from_an_earlier_build_whose_ddl_differs_is_refused_and_left_alone() {
    // An earlier build's migration 1 had no `closed` column on streams (it
    // was edited in place later).
    let earlier = SCHEMA_AT_0F36D9C.replace("    closed boolean DEFAULT false NOT NULL,\n", "");
    assert!(
        earlier != SCHEMA_AT_0F36D9C,
        "the fixture has no `closed` column"
    );
    let schema = new_schema();
    load_fixture(&earlier, &schema).await;
    let mut conn = control_connection().await;
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".events \
         (position, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
         SELECT (pg_current_xact_id()::text::bigint << 20) + v, gen_random_uuid(), 'kept', v, \
                'Numbered', 1, '{{}}', '{{}}' FROM generate_series(1, 2) v"
    ))
    .execute(&mut conn)
    .await
    .unwrap();

    match connect(&schema).await {
        Err(SetupError::LegacySchemaDiffers {
            schema: named,
            versions,
            differences,
        }) => {
            assert_eq!(named, schema);
            assert_eq!(versions, vec![1, 2]);
            assert!(
                differences.iter().any(|d| d.contains("streams.closed")),
                "{differences:?}"
            );
        }
        other => panic!("expected LegacySchemaDiffers, got {:?}", other.map(|_| ())),
    }
    // Nothing changed: no checksums, no migration 3, the events still there.
    let (has_checksum, versions, events): (bool, i64, i64) = sqlx::query_as(&format!(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 \
                        AND table_name = 'schema_migrations' AND column_name = 'checksum'), \
                (SELECT count(*) FROM \"{schema}\".schema_migrations), \
                (SELECT count(*) FROM \"{schema}\".events)"
    ))
    .bind(&schema)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((has_checksum, versions, events), (false, 2, 2));
}

#[tokio::test]
async fn an_applied_migration_that_differs_from_the_code_is_refused_at_connect() {
    let store = fresh_store().await;
    let s = store.schema().to_owned();
    sqlx::query(&format!(
        "UPDATE \"{s}\".schema_migrations SET checksum = sha256('edited in place') WHERE version = 1"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    match connect(&s).await {
        Err(error @ SetupError::MigrationChanged { .. }) => {
            let SetupError::MigrationChanged {
                schema, version, ..
            } = &error
            else {
                unreachable!()
            };
            assert_eq!((schema.as_str(), *version), (s.as_str(), 1));
            assert!(error.to_string().contains("migration 1"), "{error}");
        }
        other => panic!("expected MigrationChanged, got {:?}", other.map(|_| ())),
    }
    // The same with migrate(false).
    assert!(matches!(
        PgEventStore::builder()
            .schema(&s)
            .migrate(false)
            .connect(&database_url())
            .await,
        Err(SetupError::MigrationChanged { version: 1, .. })
    ));

    // A migration this build does not know: a newer build was there.
    let other = fresh_store().await;
    sqlx::query(&format!(
        "INSERT INTO \"{}\".schema_migrations (version, description, checksum) \
         VALUES (99, 'from the future', sha256('x'))",
        other.schema()
    ))
    .execute(other.pool())
    .await
    .unwrap();
    assert!(matches!(
        connect(other.schema()).await,
        Err(SetupError::UnknownMigration { version: 99, .. })
    ));
}

#[tokio::test]
async fn migrate_false_runs_no_ddl_and_refuses_a_missing_or_behind_schema() {
    let schema = new_schema();
    let no_ddl = || PgEventStore::builder().schema(&schema).migrate(false);
    match no_ddl().connect(&database_url()).await {
        Err(SetupError::SchemaMissing { schema: named }) => assert_eq!(named, schema),
        other => panic!("expected SchemaMissing, got {:?}", other.map(|_| ())),
    }
    let mut conn = control_connection().await;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(!exists, "migrate(false) created the schema");

    // The deploy step migrates; the service then connects without DDL.
    let report = PgEventStore::builder()
        .schema(&schema)
        .migrate_only(&database_url())
        .await
        .unwrap();
    assert!(!report.adopted);
    assert_eq!(report.applied, vec![1, 2, 3, 4]);
    let store = no_ddl().connect(&database_url()).await.unwrap();
    store
        .append(
            &StreamId::from("s"),
            ExpectedVersion::NoStream,
            vec![numbered(1)],
        )
        .await
        .unwrap();
    let again = PgEventStore::builder()
        .schema(&schema)
        .migrate_only(&database_url())
        .await
        .unwrap();
    assert!(again.applied.is_empty());

    // A schema behind this build is refused, and left behind.
    sqlx::query(&format!(
        "DELETE FROM \"{schema}\".schema_migrations WHERE version = 3"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    match no_ddl().connect(&database_url()).await {
        Err(SetupError::SchemaBehind { missing, .. }) => assert_eq!(missing, vec![3]),
        other => panic!("expected SchemaBehind, got {:?}", other.map(|_| ())),
    }
    // A schema made before checksums is behind too: it needs adopting.
    let old = new_schema();
    load_fixture(SCHEMA_AT_0F36D9C, &old).await;
    assert!(matches!(
        PgEventStore::builder()
            .schema(&old)
            .migrate(false)
            .connect(&database_url())
            .await,
        Err(SetupError::SchemaBehind { .. })
    ));
}
