//! The store's futures can be spawned: each is `Send` for every lifetime
//! (tokio::spawn and `Repository` need it).

use evently_core::{
    CommandStore, EventStore, ExpectedVersion, SnapshotStore, StreamId, StreamLifecycle,
};
use evently_sqlite::SqliteEventStore;

fn is_send<T: Send>(_: &T) {}

#[tokio::test]
async fn every_future_of_the_store_is_send() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlite-send");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.db", uuid::Uuid::now_v7()));
    let open = SqliteEventStore::open(&path);
    is_send(&open);
    let store = open.await.unwrap();
    let stream = StreamId::from("s");
    let append = store.append(&stream, ExpectedVersion::Any, vec![]);
    is_send(&append);
    append.await.unwrap();
    let version = store.stream_version(&stream);
    is_send(&version);
    assert_eq!(version.await.unwrap(), 0);
    let read = store.read_stream(&stream, 1, 10);
    is_send(&read);
    assert!(read.await.unwrap().is_empty());
    let snapshot = store.load_snapshot(&stream);
    is_send(&snapshot);
    assert!(snapshot.await.unwrap().is_none());
    let journal = store.command_journal(&stream);
    is_send(&journal);
    assert!(journal.await.unwrap().is_empty());
    let close = store.close_stream(&stream);
    is_send(&close);
    close.await.unwrap();
}
