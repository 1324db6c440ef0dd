//! Your transaction, our events: `append_in` and `append_atomic_in` write
//! inside the caller's transaction, so the caller's own rows and the events
//! commit together or not at all.

mod common;

use std::time::Duration;

use common::*;
use evently_core::{
    EventStore, ExpectedVersion, RecordedEvent, StoreError, StreamAppend, StreamId,
};
use evently_postgres::sqlx::{self, Connection};
use evently_postgres::PgEventStore;
use uuid::Uuid;

/// A store in a fresh schema, with the caller's own `orders` table in it.
async fn store_with_orders() -> PgEventStore {
    let store = fresh_store().await;
    sqlx::query(&format!(
        "CREATE TABLE \"{}\".orders (id text PRIMARY KEY, note text NOT NULL)",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .expect("create the caller's table");
    store
}

fn insert_order(store: &PgEventStore) -> String {
    format!(
        "INSERT INTO \"{}\".orders (id, note) VALUES ($1, $2)",
        store.schema()
    )
}

async fn order_note(store: &PgEventStore, id: &str) -> Option<String> {
    sqlx::query_scalar(&format!(
        "SELECT note FROM \"{}\".orders WHERE id = $1",
        store.schema()
    ))
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .expect("read the caller's table")
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_makes_the_caller_s_row_and_the_events_visible_together() {
    let store = store_with_orders().await;
    let reader = second_handle(&store).await;
    let mut subscription = reader.subscribe(0);
    let stream = StreamId::from("order-1");

    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&insert_order(&store))
        .bind("o-1")
        .bind("placed")
        .execute(&mut *tx)
        .await
        .unwrap();
    let recorded = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            numbered_batch(0, 2),
        )
        .await
        .unwrap();
    assert_eq!(
        recorded
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(recorded[1].global_position, recorded[0].global_position + 1);
    // A second append in the same transaction continues the stream and the
    // transaction's positions.
    let more = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::Exact(2),
            vec![numbered(2)],
        )
        .await
        .unwrap();
    assert_eq!(more[0].stream_version, 3);
    assert_eq!(more[0].global_position, recorded[0].global_position + 2);

    // Nothing is visible outside before the commit.
    assert_eq!(order_note(&store, "o-1").await, None);
    assert_eq!(reader.stream_version(&stream).await.unwrap(), 0);
    assert!(reader.read_stream(&stream, 1, 10).await.unwrap().is_empty());
    assert_quiet(&mut subscription, Duration::from_millis(300)).await;

    tx.commit().await.unwrap();
    assert_eq!(order_note(&store, "o-1").await.as_deref(), Some("placed"));
    let all: Vec<RecordedEvent> = recorded.into_iter().chain(more).collect();
    let stored = reader.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(as_json(&stored), as_json(&all));
    assert_eq!(reader.stream_version(&stream).await.unwrap(), 3);
    let delivered = receive(&mut subscription, 3, Duration::from_secs(10)).await;
    assert_eq!(ids(&delivered), ids(&all));
    let log = read_log_until(&reader, PATIENCE, |log| log.len() == 3).await;
    assert_eq!(as_json(&log), as_json(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_discards_the_caller_s_row_and_the_events_together() {
    let store = store_with_orders().await;
    let reader = second_handle(&store).await;
    let stream = StreamId::from("order-2");
    let first = store
        .append(&stream, ExpectedVersion::NoStream, vec![numbered(0)])
        .await
        .unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&insert_order(&store))
        .bind("o-2")
        .bind("doomed")
        .execute(&mut *tx)
        .await
        .unwrap();
    let doomed = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::Exact(1),
            numbered_batch(1, 2),
        )
        .await
        .unwrap();
    assert_eq!(
        doomed.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [2, 3]
    );
    tx.rollback().await.unwrap();

    assert_eq!(order_note(&store, "o-2").await, None);
    assert_eq!(reader.stream_version(&stream).await.unwrap(), 1);
    assert_eq!(
        ids(&reader.read_stream(&stream, 1, 10).await.unwrap()),
        ids(&first)
    );

    // The versions are free again, and the rolled-back ids were never stored.
    let next = store
        .append(&stream, ExpectedVersion::Exact(1), vec![numbered(9)])
        .await
        .unwrap();
    assert_eq!(next[0].stream_version, 2);
    let reused = store
        .append(
            &StreamId::from("elsewhere"),
            ExpectedVersion::NoStream,
            vec![numbered(1).with_id(doomed[0].event_id)],
        )
        .await
        .unwrap();
    assert_eq!(
        reused[0].stream_version, 1,
        "a rolled-back event id is free"
    );
    let log = read_log_until(&reader, PATIENCE, |log| log.len() == 3).await;
    assert_eq!(
        ids(&log),
        [first[0].event_id, next[0].event_id, reused[0].event_id]
    );
    assert!(!log.iter().any(|e| e.event_id == doomed[1].event_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_atomic_in_spans_two_streams_inside_the_caller_s_transaction() {
    let store = store_with_orders().await;
    let reader = second_handle(&store).await;
    let (from, to) = (StreamId::from("account-a"), StreamId::from("account-z"));
    store
        .append(&from, ExpectedVersion::NoStream, vec![numbered(0)])
        .await
        .unwrap();

    // Committed: the row and both streams.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&insert_order(&store))
        .bind("transfer-1")
        .bind("a to z")
        .execute(&mut *tx)
        .await
        .unwrap();
    let results = store
        .append_atomic_in(
            &mut tx,
            vec![
                StreamAppend::new(to.clone(), ExpectedVersion::NoStream, vec![numbered(1)]),
                StreamAppend::new(from.clone(), ExpectedVersion::Exact(1), vec![numbered(2)]),
            ],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(
        (
            results[0][0].stream_id.clone(),
            results[0][0].stream_version
        ),
        (to.clone(), 1)
    );
    assert_eq!(
        (
            results[1][0].stream_id.clone(),
            results[1][0].stream_version
        ),
        (from.clone(), 2)
    );
    assert_eq!(
        results[0][0].global_position >> 20,
        results[1][0].global_position >> 20,
        "one transaction"
    );
    assert_eq!(
        order_note(&store, "transfer-1").await.as_deref(),
        Some("a to z")
    );
    assert_eq!(reader.stream_version(&from).await.unwrap(), 2);
    assert_eq!(reader.stream_version(&to).await.unwrap(), 1);

    // Rolled back: neither the row nor either stream.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&insert_order(&store))
        .bind("transfer-2")
        .bind("a to z again")
        .execute(&mut *tx)
        .await
        .unwrap();
    let undone = store
        .append_atomic_in(
            &mut tx,
            vec![
                StreamAppend::new(from.clone(), ExpectedVersion::Exact(2), vec![numbered(3)]),
                StreamAppend::new(to.clone(), ExpectedVersion::Exact(1), vec![numbered(4)]),
            ],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(order_note(&store, "transfer-2").await, None);
    assert_eq!(reader.stream_version(&from).await.unwrap(), 2);
    assert_eq!(reader.stream_version(&to).await.unwrap(), 1);

    let log = read_log_until(&reader, PATIENCE, |log| log.len() == 3).await;
    let undone_ids: Vec<Uuid> = undone.iter().flat_map(|r| ids(r)).collect();
    assert!(!log.iter().any(|e| undone_ids.contains(&e.event_id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_expected_version_inside_the_caller_s_transaction_is_typed_and_the_caller_rolls_back(
) {
    let store = store_with_orders().await;
    let stream = StreamId::from("order-3");
    let other = StreamId::from("order-4");
    store
        .append(&stream, ExpectedVersion::NoStream, numbered_batch(0, 2))
        .await
        .unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&insert_order(&store))
        .bind("o-3")
        .bind("conflicted")
        .execute(&mut *tx)
        .await
        .unwrap();
    let error = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::Exact(5),
            vec![numbered(2)],
        )
        .await
        .unwrap_err();
    match &error {
        StoreError::WrongExpectedVersion {
            stream_id,
            expected,
            actual,
        } => {
            assert_eq!(stream_id, &stream);
            assert_eq!(*expected, ExpectedVersion::Exact(5));
            assert_eq!(*actual, 2);
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    assert!(error.is_conflict());
    // PostgreSQL has aborted the transaction: the caller can only roll back.
    let aborted = sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap_err();
    assert_eq!(
        aborted
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("25P02"),
        "{aborted}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(order_note(&store, "o-3").await, None);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);

    // The same inside append_atomic_in: the first stream is fine, the second
    // refused; nothing of either stays.
    let mut tx = store.pool().begin().await.unwrap();
    let error = store
        .append_atomic_in(
            &mut tx,
            vec![
                StreamAppend::new(other.clone(), ExpectedVersion::NoStream, vec![numbered(7)]),
                StreamAppend::new(stream.clone(), ExpectedVersion::NoStream, vec![numbered(8)]),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::WrongExpectedVersion { stream_id, expected: ExpectedVersion::NoStream, actual: 2 } if stream_id == &stream),
        "{error:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(store.stream_version(&other).await.unwrap(), 0);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);

    // With a savepoint around the append, the caller can recover and commit
    // the rest of its work.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&insert_order(&store))
        .bind("o-4")
        .bind("kept")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut savepoint = tx.begin().await.unwrap();
    let error = store
        .append_in(
            &mut savepoint,
            &stream,
            ExpectedVersion::NoStream,
            vec![numbered(9)],
        )
        .await
        .unwrap_err();
    assert!(error.is_conflict(), "{error:?}");
    savepoint.rollback().await.unwrap();
    let recorded = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::Exact(2),
            vec![numbered(10)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(recorded[0].stream_version, 3);
    assert_eq!(order_note(&store, "o-4").await.as_deref(), Some("kept"));
    assert_eq!(store.stream_version(&stream).await.unwrap(), 3);
}

#[tokio::test]
async fn append_ordered_in_keeps_the_given_order_and_names_a_failed_expectation() {
    let store = fresh_store().await;
    let (z, a, m) = (
        StreamId::from("stream-z"),
        StreamId::from("stream-a"),
        StreamId::from("stream-m"),
    );
    store
        .append(&m, ExpectedVersion::NoStream, vec![numbered(0)])
        .await
        .unwrap();

    // Positions in the order given (z before a), not in name order.
    let mut tx = store.pool().begin().await.unwrap();
    let written = store
        .append_ordered_in(
            &mut tx,
            vec![
                StreamAppend::new(
                    z.clone(),
                    ExpectedVersion::NoStream,
                    vec![numbered(1), numbered(2)],
                ),
                StreamAppend::new(a.clone(), ExpectedVersion::NoStream, vec![numbered(3)]),
                StreamAppend::new(m.clone(), ExpectedVersion::Exact(1), vec![numbered(4)]),
            ],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let order: Vec<(String, u64)> = written
        .iter()
        .map(|e| (e.stream_id.as_str().to_owned(), e.stream_version))
        .collect();
    assert_eq!(
        order,
        vec![
            ("stream-z".into(), 1),
            ("stream-z".into(), 2),
            ("stream-a".into(), 1),
            ("stream-m".into(), 2)
        ]
    );
    let log = store.read_all(0, 10).await.unwrap();
    let logged: Vec<Uuid> = log.iter().skip(1).map(|e| e.event_id).collect();
    assert_eq!(logged, ids(&written), "the log reads them in that order");

    // A wrong expectation: refused with the stream and its version; the
    // caller rolls back, and nothing of the set stays.
    let mut tx = store.pool().begin().await.unwrap();
    let refused = store
        .append_ordered_in(
            &mut tx,
            vec![
                StreamAppend::new(a.clone(), ExpectedVersion::Exact(1), vec![numbered(5)]),
                StreamAppend::new(z.clone(), ExpectedVersion::Exact(1), vec![numbered(6)]),
            ],
        )
        .await
        .unwrap_err();
    drop(tx);
    match refused {
        StoreError::WrongExpectedVersion {
            stream_id, actual, ..
        } => assert_eq!((stream_id, actual), (z.clone(), 2)),
        other => panic!("expected a wrong expected version, got {other:?}"),
    }
    assert_eq!(store.stream_version(&a).await.unwrap(), 1);
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 5);
}
