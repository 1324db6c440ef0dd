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
