//! Test support shared by the workspace tests: running one test body on
//! every store.
#![allow(dead_code)]

/// Generates `memory::NAME` and `postgres::NAME` tests that run the async
/// function `NAME(store)` on a fresh in-memory store and on a fresh
/// PostgreSQL schema.
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(evently::memory::MemoryStore::new()).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(crate::common::fresh_pg_store().await).await;
                }
            )*
        }
    };
}

/// The tests on the memory store, PostgreSQL and SQLite.
macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        on_both_stores!($($test),*);

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(crate::common::fresh_sqlite_store().await).await;
                }
            )*
        }
    };
}

/// A store in a file of its own under `target/tmp`.
pub async fn fresh_sqlite_store() -> evently_sqlite::SqliteEventStore {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlite-stores");
    std::fs::create_dir_all(&dir).expect("a directory for the test's file");
    evently_sqlite::SqliteEventStore::open(dir.join(format!("{}.db", uuid::Uuid::now_v7())))
        .await
        .expect("open a fresh SQLite store")
}

/// A store in a new schema of its own; fails, saying why, when PostgreSQL
/// cannot be reached.
pub async fn fresh_pg_store() -> evently_postgres::PgEventStore {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    evently_postgres::PgEventStore::builder()
        .schema(format!("es_test_{}", uuid::Uuid::now_v7().simple()))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url} (set DATABASE_URL): {e}"))
}
