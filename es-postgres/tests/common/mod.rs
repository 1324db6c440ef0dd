//! Test support: a fresh schema per test, so tests run in parallel against
//! one server. A test that cannot reach PostgreSQL fails, saying why.
#![allow(dead_code)]

use es_postgres::PgEventStore;

/// `DATABASE_URL`, or the local test database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store in a new, empty schema of its own.
pub async fn fresh_store() -> PgEventStore {
    store_builder(es_postgres::PgEventStore::builder()).await
}

/// A store in a new schema, configured by `builder`.
pub async fn store_builder(builder: es_postgres::PgEventStoreBuilder) -> PgEventStore {
    let schema = format!("es_test_{}", uuid::Uuid::now_v7().simple());
    let url = database_url();
    builder
        .schema(schema)
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot set up a PostgreSQL store at {url} (set DATABASE_URL, or start the server): {e}")
        })
}
