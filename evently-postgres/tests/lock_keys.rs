//! The per-stream lock keys: they include the schema, so two stores in two
//! schemas of one database never wait for each other, and atomic appends
//! take them in the order of the keys, so colliding keys cannot deadlock.
//! The common append (an exact or no-stream expectation) takes none, and
//! still keeps a stream's versions in log order.

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

/// The common append (one stream, an exact or no-stream expectation) is one
/// statement that takes no advisory lock: it completes while another
/// session holds the stream's advisory lock. The stream's row is what
/// serialises two appends to it.
#[tokio::test]
async fn an_exact_or_new_stream_append_takes_no_advisory_lock() {
    let store = fresh_store().await;
    let stream = StreamId::from("account-unlocked");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![numbered(1)])
        .await
        .unwrap();
    let s = store.schema();
    let mut holder = store.pool().begin().await.unwrap();
    for name in ["account-unlocked", "account-new"] {
        sqlx::query(&format!(
            "SELECT pg_advisory_xact_lock(\"{s}\".stream_lock_key($1))"
        ))
        .bind(name)
        .execute(&mut *holder)
        .await
        .unwrap();
    }
    let appended = tokio::time::timeout(
        PATIENCE,
        store.append(&stream, ExpectedVersion::Exact(1), vec![numbered(2)]),
    )
    .await
    .expect("an exact append waited for the stream's advisory lock")
    .unwrap();
    assert_eq!(appended[0].stream_version, 2);
    let created = tokio::time::timeout(
        PATIENCE,
        store.append(
            &StreamId::from("account-new"),
            ExpectedVersion::NoStream,
            vec![numbered(3)],
        ),
    )
    .await
    .expect("a new stream's append waited for the stream's advisory lock")
    .unwrap();
    assert_eq!(created[0].stream_version, 1);
    holder.rollback().await.unwrap();
}

/// A stream's versions follow log order: an append whose transaction is
/// older than the one that wrote the stream's last event (which the
/// single statement cannot see coming, as it takes no lock first) stores
/// nothing and is refused as worth retrying, in a new transaction. Staged
/// here by moving the stream's last position above every transaction's.
#[tokio::test]
async fn an_append_older_than_the_streams_last_event_stores_nothing() {
    let store = fresh_store().await;
    let stream = StreamId::from("account-ordered");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![numbered(1)])
        .await
        .unwrap();
    let s = store.schema();
    sqlx::query(&format!(
        "UPDATE \"{s}\".streams SET last_position = 1::bigint << 62 WHERE stream_id = $1"
    ))
    .bind(stream.as_str())
    .execute(store.pool())
    .await
    .unwrap();
    let refused = store
        .append(&stream, ExpectedVersion::Exact(1), vec![numbered(2)])
        .await
        .expect_err("an append below the stream's last event");
    assert!(refused.is_transient(), "{refused:?}");
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
    assert_eq!(store.read_stream(&stream, 1, 10).await.unwrap().len(), 1);
}
