//! Who wakes subscribers, and when: an append inside the caller's
//! transaction announces its events when that transaction commits — not
//! before (subscribers would read nothing and sleep through the commit),
//! not never, and not after a rollback. And a handle's reads wait for its
//! own appends once, not on every read while a transaction elsewhere stays
//! open.
//!
//! The observer is a LISTEN of the test's own on the store's channel, the
//! same notifications the store's subscriptions count.

mod common;

use std::time::Duration;

use common::*;
use evently_core::prelude::*;
use evently_postgres::sqlx::postgres::PgListener;
use evently_postgres::PgEventStore;

/// How long the tests watch for a notification that must not come.
const QUIET: Duration = Duration::from_millis(300);

async fn listen(store: &PgEventStore) -> PgListener {
    let mut listener = PgListener::connect(&database_url())
        .await
        .expect("LISTEN connection");
    listener
        .listen(store.notify_channel())
        .await
        .expect("LISTEN");
    listener
}

async fn assert_no_notification(listener: &mut PgListener, when: &str) {
    if let Ok(got) = tokio::time::timeout(QUIET, listener.recv()).await {
        panic!("a notification {when}: {got:?}");
    }
}

async fn assert_notified(listener: &mut PgListener, when: &str) {
    tokio::time::timeout(PATIENCE, listener.recv())
        .await
        .unwrap_or_else(|_| panic!("no notification {when}"))
        .expect("LISTEN connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_in_announces_at_the_callers_commit() {
    let store = fresh_store().await;
    let mut listener = listen(&store).await;
    let mut tx = store.pool().begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            &StreamId::from("in-1"),
            ExpectedVersion::Any,
            numbered_batch(1, 2),
        )
        .await
        .unwrap();
    assert_no_notification(&mut listener, "before the caller committed").await;
    tx.commit().await.unwrap();
    assert_notified(&mut listener, "after the caller committed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_atomic_in_announces_at_the_callers_commit() {
    let store = fresh_store().await;
    let mut listener = listen(&store).await;
    let mut tx = store.pool().begin().await.unwrap();
    store
        .append_atomic_in(
            &mut tx,
            vec![
                StreamAppend::new("a-1", ExpectedVersion::Any, numbered_batch(1, 1)),
                StreamAppend::new("a-2", ExpectedVersion::Any, numbered_batch(2, 1)),
            ],
        )
        .await
        .unwrap();
    assert_no_notification(&mut listener, "before the caller committed").await;
    tx.commit().await.unwrap();
    assert_notified(&mut listener, "after the caller committed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_append_in_announces_nothing() {
    let store = fresh_store().await;
    let mut listener = listen(&store).await;
    let mut tx = store.pool().begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            &StreamId::from("in-2"),
            ExpectedVersion::Any,
            numbered_batch(1, 1),
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_no_notification(&mut listener, "after a rollback").await;
    assert_eq!(store.head_position().await.unwrap(), 0);
}

/// A subscriber on another handle, which polls only every two minutes,
/// receives an event appended in a caller's transaction once it commits:
/// the commit's notification wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receives_a_committed_append_in_without_polling() {
    let store = fresh_store().await;
    let watcher = PgEventStore::builder()
        .schema(store.schema())
        .poll_interval(Duration::from_secs(120))
        .connect(&database_url())
        .await
        .unwrap();
    // The first event goes through the usual path and proves the
    // subscription is live and caught up.
    store
        .append(
            &StreamId::from("s-1"),
            ExpectedVersion::Any,
            numbered_batch(1, 1),
        )
        .await
        .unwrap();
    let mut subscription = watcher.subscribe(0);
    let first = receive(&mut subscription, 1, PATIENCE).await;
    let mut tx = store.pool().begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            &StreamId::from("s-1"),
            ExpectedVersion::Exact(1),
            numbered_batch(2, 1),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let second = receive(&mut subscription, 1, PATIENCE).await;
    assert!(second[0].global_position > first[0].global_position);
    assert_eq!(second[0].stream_version, 2);
}

/// A transaction left open elsewhere, older than this handle's append:
/// the first read waits (bounded) for the append, later reads do not wait
/// again for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wait_for_own_appends_once() {
    let timeout = Duration::from_secs(3);
    let store = store_builder(PgEventStore::builder().read_your_writes_timeout(timeout)).await;
    let mut blocker = control_connection().await;
    use evently_postgres::sqlx::Connection;
    let mut open = blocker.begin().await.unwrap();
    evently_postgres::sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    store
        .append(
            &StreamId::from("own-1"),
            ExpectedVersion::Any,
            numbered_batch(1, 1),
        )
        .await
        .unwrap();
    // Bounded by the timeout: returns what is readable (not the append).
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    // Not another wait for the same append: well within one timeout.
    let again = tokio::time::timeout(timeout / 2, store.read_all(0, 10)).await;
    assert!(
        again.is_ok(),
        "the second read waited again for the same append"
    );
    open.rollback().await.unwrap();
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 1);
}
