//! Hostile input and hostile states: rows deleted or changed by hand, a
//! version at the end of its range, a closed pool, a pool of one
//! connection, and group-commit batches whose rows or statement go wrong.
//! Each gives a typed error or the truth, never a panic, a lie or a loop.

mod common;

use std::time::Duration;

use common::*;
use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StoreError, StreamId,
};
use evently_postgres::{sqlx, PgEventStore};

/// Runs statements on the store's schema: `{s}` stands for the quoted
/// schema name.
async fn tamper(store: &PgEventStore, sql: &str) {
    let sql = sql.replace("{s}", &format!("\"{}\"", store.schema()));
    sqlx::raw_sql(&sql)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn group_store() -> PgEventStore {
    store_builder(PgEventStore::builder().group_commit(1)).await
}

#[track_caller]
fn assert_missing(
    result: Result<Vec<evently_core::RecordedEvent>, StoreError>,
    missing: u64,
    found: Option<u64>,
) {
    match result {
        Err(StoreError::MissingVersion {
            stream_id,
            missing: m,
            found: f,
        }) => {
            assert_eq!(stream_id.as_str(), "holey");
            assert_eq!((m, f), (missing, found));
        }
        other => panic!("expected MissingVersion {missing}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hole_in_a_stream_is_a_typed_error_naming_the_missing_version() {
    let store = fresh_store().await;
    let stream = StreamId::from("holey");
    store
        .append(&stream, ExpectedVersion::NoStream, numbered_batch(0, 5))
        .await
        .unwrap();
    tamper(
        &store,
        "DELETE FROM {s}.events WHERE stream_id = 'holey' AND stream_version = 3",
    )
    .await;
    assert_missing(store.read_stream(&stream, 1, 100).await, 3, Some(4));
    assert_missing(store.read_stream(&stream, 3, 100).await, 3, Some(4));
    // A page that ends before the hole is whole.
    assert_eq!(store.read_stream(&stream, 1, 2).await.unwrap().len(), 2);
    assert_eq!(store.read_stream(&stream, 4, 100).await.unwrap().len(), 2);
    let error = store.read_stream(&stream, 1, 100).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "stream `holey` is missing version 3 (the next stored version is 4)"
    );
    // The fold a load makes stops there too, after the versions before it.
    assert_eq!(
        fold_versions(&store, &stream, 1).await,
        (vec![1, 2], Some((3, Some(4))))
    );

    // The last events deleted: the stream's version says they existed.
    tamper(
        &store,
        "DELETE FROM {s}.events WHERE stream_id = 'holey' AND stream_version >= 3",
    )
    .await;
    assert_missing(store.read_stream(&stream, 1, 100).await, 3, None);
    assert_missing(store.read_stream(&stream, 4, 100).await, 4, None);
    assert_eq!(store.read_stream(&stream, 1, 2).await.unwrap().len(), 2);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 5);
    assert_eq!(
        fold_versions(&store, &stream, 1).await,
        (vec![1, 2], Some((3, None)))
    );
    // From past the last stored row (a load after a snapshot at 2).
    assert_eq!(
        fold_versions(&store, &stream, 3).await,
        (vec![], Some((3, None)))
    );
}

/// The versions `fold_stream` hands over from `from`, and the missing
/// version it ends with (and the next one found), if it does.
async fn fold_versions(
    store: &evently_postgres::PgEventStore,
    stream: &StreamId,
    from: u64,
) -> (Vec<u64>, Option<(u64, Option<u64>)>) {
    let mut seen = Vec::new();
    let result = store
        .fold_stream(stream, from, |e| {
            seen.push(e.stream_version);
            Ok::<_, StoreError>(())
        })
        .await;
    match result {
        Ok(()) => (seen, None),
        Err(StoreError::MissingVersion { missing, found, .. }) => (seen, Some((missing, found))),
        Err(other) => panic!("expected MissingVersion, got {other:?}"),
    }
}

#[tokio::test]
async fn a_version_at_the_end_of_its_range_is_a_typed_error() {
    for store in [fresh_store().await, group_store().await] {
        let stream = StreamId::from("full");
        store
            .append(&stream, ExpectedVersion::NoStream, numbered_batch(0, 1))
            .await
            .unwrap();
        tamper(
            &store,
            "UPDATE {s}.streams SET version = 9223372036854775806 WHERE stream_id = 'full'",
        )
        .await;
        let refused = store
            .append(&stream, ExpectedVersion::Any, numbered_batch(1, 2))
            .await;
        assert!(
            matches!(&refused, Err(StoreError::VersionOverflow { stream_id, .. }) if *stream_id == stream),
            "got {refused:?}"
        );
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("largest storable version"));
        // An expectation no stored version can meet is a conflict, not an
        // error of the database.
        let refused = store
            .append(
                &stream,
                ExpectedVersion::Exact(u64::MAX),
                numbered_batch(3, 1),
            )
            .await;
        assert!(
            matches!(
                refused,
                Err(StoreError::WrongExpectedVersion {
                    expected: ExpectedVersion::Exact(u64::MAX),
                    actual: 9223372036854775806,
                    ..
                })
            ),
            "got {refused:?}"
        );
    }
}

#[tokio::test]
async fn a_closed_pool_is_not_worth_retrying() {
    let store = fresh_store().await;
    store.pool().close().await;
    let refused = store
        .append(
            &StreamId::from("s"),
            ExpectedVersion::Any,
            numbered_batch(0, 1),
        )
        .await
        .unwrap_err();
    assert!(
        !refused.is_transient(),
        "a closed pool never comes back: {refused:?}"
    );
    let refused = store.read_all(0, 10).await.unwrap_err();
    assert!(!refused.is_transient(), "{refused:?}");
}

#[tokio::test]
async fn a_pool_of_one_connection_serves_a_subscription_and_appends() {
    let store = store_builder(PgEventStore::builder().max_connections(1)).await;
    let mut subscription = store.subscribe(0);
    // Wait until the listener LISTENs (it starts with the subscription).
    let watcher = second_handle(&store).await;
    let started = std::time::Instant::now();
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND query LIKE $1",
        )
        .bind(format!("%{}_events%", store.schema()))
        .fetch_one(watcher.pool())
        .await
        .unwrap();
        if listening > 0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the listener never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = tokio::time::timeout(
        PATIENCE,
        store.append(
            &StreamId::from("one"),
            ExpectedVersion::NoStream,
            numbered_batch(0, 3),
        ),
    )
    .await
    .expect("the append is not starved")
    .expect("the append succeeds");
    let received = receive(&mut subscription, 3, PATIENCE).await;
    assert_eq!(
        received.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        written.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
}

/// Appends `count` single events concurrently, each to a stream of its
/// own, and returns each outcome with its stream.
async fn concurrent_appends(
    store: &PgEventStore,
    count: u64,
) -> Vec<(
    StreamId,
    Result<Vec<evently_core::RecordedEvent>, StoreError>,
)> {
    let tasks: Vec<_> = (0..count)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::from(format!("s-{n}"));
                let result = store
                    .append(&stream, ExpectedVersion::NoStream, vec![numbered(n)])
                    .await;
                (stream, result)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("no append task panics"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_a_batch_refused_as_a_whole_is_not_unavailable_forever() {
    let store = group_store().await;
    // The server refuses every batch statement (and only those): a
    // trigger that raises when the statement inserting events is the
    // batch's.
    tamper(
        &store,
        "CREATE FUNCTION {s}.refuse_batches() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF current_query() LIKE '%WITH ORDINALITY AS a(stream, kind, expected, n, idx)%' THEN \
                 RAISE EXCEPTION 'broken batch' USING ERRCODE = 'XX000'; \
             END IF; \
             RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_batches BEFORE INSERT ON {s}.events \
             FOR EACH ROW EXECUTE FUNCTION {s}.refuse_batches();",
    )
    .await;
    // Each append gets its own outcome: here, stored alone, once.
    let outcomes = concurrent_appends(&store, 12).await;
    for (stream, result) in &outcomes {
        let written = result
            .as_ref()
            .unwrap_or_else(|e| panic!("{stream}: {e:?}"));
        assert_eq!(written[0].stream_version, 1);
        let stored = store.read_stream(stream, 1, 10).await.unwrap();
        assert_eq!(stored.len(), 1, "{stream}: stored once");
        assert_eq!(written[0].event_id, stored[0].event_id);
    }
    // Alone: each in a transaction of its own.
    let transactions: std::collections::HashSet<u64> = outcomes
        .iter()
        .map(|(_, r)| r.as_ref().unwrap()[0].global_position >> 20)
        .collect();
    assert_eq!(transactions.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_a_bad_append_fails_alone_with_the_direct_paths_error() {
    let store = group_store().await;
    let direct = fresh_store().await;
    let bad = || {
        NewEvent::raw(
            "Bad\0Type",
            1,
            Payload::from_value(&serde_json::json!({})),
            Metadata::new(),
        )
    };
    let expected = direct
        .append(&StreamId::from("bad"), ExpectedVersion::Any, vec![bad()])
        .await
        .unwrap_err();
    assert!(
        matches!(expected, StoreError::InvalidAppend { .. }),
        "{expected:?}"
    );
    for _ in 0..5 {
        let bad_append = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(&StreamId::from("bad"), ExpectedVersion::Any, vec![bad()])
                    .await
            })
        };
        let innocents = concurrent_appends(&store, 12);
        let (bad_result, innocents) = tokio::join!(bad_append, innocents);
        let refused = bad_result.unwrap().unwrap_err();
        assert!(
            matches!(refused, StoreError::InvalidAppend { .. }),
            "{refused:?}"
        );
        // The same refusal as without group commit, but for the event id.
        let strip = |e: &StoreError| {
            let text = e.to_string();
            text.split_once("): ")
                .map(|(_, r)| r.to_owned())
                .unwrap_or(text)
        };
        assert_eq!(strip(&refused), strip(&expected));
        for (stream, result) in innocents {
            result.unwrap_or_else(|e| panic!("{stream}: an innocent append failed: {e:?}"));
        }
        tamper(&store, "DELETE FROM {s}.events; DELETE FROM {s}.streams;").await;
    }
}
