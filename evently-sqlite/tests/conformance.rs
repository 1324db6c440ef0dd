//! The store conformance suite, run against SQLite, one file per test.

use evently_sqlite::SqliteEventStore;

async fn fresh_store() -> SqliteEventStore {
    // Under target/tmp: removed with the build, never in the system temp.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlite-conformance");
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join(format!("{}.db", uuid::Uuid::now_v7()));
    SqliteEventStore::open(&path)
        .await
        .expect("open a fresh store")
}

evently_core::conformance_suite!(fresh_store);

/// `sqlite::memory:` (or `:memory:`) opens a store in memory: each its
/// own, no file written, the same behaviour.
#[tokio::test]
async fn sqlite_memory_opens_a_store_in_memory_of_its_own() {
    use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
    let cwd = std::env::current_dir().unwrap();
    let (a, b) = (
        SqliteEventStore::open("sqlite::memory:").await.unwrap(),
        SqliteEventStore::open(":memory:").await.unwrap(),
    );
    assert_eq!(a.path(), std::path::Path::new(":memory:"));
    let event = || {
        NewEvent::raw(
            "Noted",
            1,
            Payload::from_json("{}").unwrap(),
            Metadata::new(),
        )
    };
    let stored = a
        .append(
            &StreamId::from("s"),
            ExpectedVersion::NoStream,
            vec![event(), event()],
        )
        .await
        .unwrap();
    assert_eq!(stored[1].global_position, 2);
    assert_eq!(a.read_all(1, 10).await.unwrap().len(), 2);
    assert_eq!(b.head_position().await.unwrap(), 0, "another store");
    for name in ["sqlite::memory:", ":memory:"] {
        assert!(!cwd.join(name).exists(), "no file {name}");
    }
}
