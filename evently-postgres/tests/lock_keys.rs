//! The per-stream lock keys: they include the schema, so two stores in two
//! schemas of one database never wait for each other, and atomic appends
//! (and group-commit batches) take them in the order of the keys, so
//! colliding keys cannot deadlock.

mod common;

use std::time::Duration;

use common::*;
use evently_core::{EventStore, ExpectedVersion, StreamAppend, StreamId};
use evently_postgres::{sqlx, PgEventStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_locked_in_one_schema_does_not_block_the_same_name_in_another() {
    let one = fresh_store().await;
    let two = fresh_store().await;
    let stream = StreamId::from("account-same-name");

    // One holds the stream's lock in an open transaction.
    let mut tx = one.pool().begin().await.unwrap();
    one.append_in(
        &mut tx,
        &stream,
        ExpectedVersion::NoStream,
        vec![numbered(1)],
    )
    .await
    .unwrap();

    // The same name in the other schema is another stream: its append
    // completes while the first transaction is still open.
    let appended = tokio::time::timeout(
        PATIENCE,
        two.append(&stream, ExpectedVersion::NoStream, vec![numbered(2)]),
    )
    .await
    .expect("an append in another schema waited for a lock held in this one")
    .unwrap();
    assert_eq!(appended[0].stream_version, 1);
    // And so does an atomic append over it.
    tokio::time::timeout(
        PATIENCE,
        two.append_atomic(vec![
            StreamAppend::new(stream.clone(), ExpectedVersion::Exact(1), vec![numbered(3)]),
            StreamAppend::new(
                StreamId::from("other"),
                ExpectedVersion::Any,
                vec![numbered(4)],
            ),
        ]),
    )
    .await
    .expect("an atomic append in another schema waited for a lock held in this one")
    .unwrap();

    tx.commit().await.unwrap();
    assert_eq!(one.stream_version(&stream).await.unwrap(), 1);
    assert_eq!(two.stream_version(&stream).await.unwrap(), 2);
}

/// Makes the lock keys of `store` collide on purpose: `a` and `e` share
/// key 20, `c` and `d` share key 10, `b` has 30 (every other stream keeps
/// its own key). By name, an atomic append over {a, b, c} locks 20, 30, 10
/// and one over {d, e} locks 10, 20: a cycle. By key both lock 10 first.
async fn collide_lock_keys(store: &PgEventStore) {
    let s = store.schema();
    sqlx::query(&format!(
        "CREATE OR REPLACE FUNCTION \"{s}\".stream_lock_key(p_stream text) RETURNS bigint \
         LANGUAGE sql IMMUTABLE AS $$ SELECT CASE p_stream \
             WHEN 'a' THEN 20 WHEN 'e' THEN 20 WHEN 'c' THEN 10 WHEN 'd' THEN 10 \
             WHEN 'b' THEN 30 \
             ELSE hashtextextended('{s} ' || p_stream, 0) END $$"
    ))
    .execute(store.pool())
    .await
    .expect("replace the lock key function");
}

/// Waits until a backend waits for a lock that `holder` holds, and returns
/// its process id (polls `pg_locks`; no timing assumption).
async fn wait_until_blocked_by(store: &PgEventStore, holder: i32) -> i32 {
    let started = std::time::Instant::now();
    loop {
        let blocked: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid)) LIMIT 1",
        )
        .bind(holder)
        .fetch_optional(store.pool())
        .await
        .unwrap();
        if let Some(pid) = blocked {
            return pid;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "nobody waited for backend {holder}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn atomic(names: &[&str]) -> Vec<StreamAppend> {
    names
        .iter()
        .map(|s| StreamAppend::new(StreamId::from(*s), ExpectedVersion::Any, vec![numbered(0)]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn atomic_appends_lock_in_key_order_so_colliding_keys_cannot_deadlock() {
    let store = fresh_store().await;
    collide_lock_keys(&store).await;

    // A holder keeps key 30 (stream b) in an open transaction.
    let mut holder = store.pool().begin().await.unwrap();
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    store
        .append_in(
            &mut holder,
            &StreamId::from("b"),
            ExpectedVersion::Any,
            vec![numbered(0)],
        )
        .await
        .unwrap();

    // The first atomic append takes what it can and waits for key 30.
    let first = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append_atomic(atomic(&["a", "b", "c"]))
                .await
                .map(|_| ())
        }
    });
    let first_pid = wait_until_blocked_by(&store, holder_pid).await;
    // The second one waits for the first. Locked by key, it waits for key
    // 10 holding nothing; locked by name it would hold 10 and wait for 20,
    // which the first holds while it waits for 10: a deadlock, and one of
    // them aborted.
    let second = tokio::spawn({
        let store = store.clone();
        async move { store.append_atomic(atomic(&["d", "e"])).await.map(|_| ()) }
    });
    wait_until_blocked_by(&store, first_pid).await;
    holder.commit().await.unwrap();

    let first = tokio::time::timeout(PATIENCE, first)
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(PATIENCE, second)
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_ok(), "the first atomic append failed: {first:?}");
    assert!(
        second.is_ok(),
        "the second atomic append failed: {second:?}"
    );
    for (name, version) in [("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 1)] {
        assert_eq!(
            store.stream_version(&StreamId::from(name)).await.unwrap(),
            version,
            "{name}"
        );
    }
}
