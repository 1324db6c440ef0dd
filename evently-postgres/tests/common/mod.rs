//! Test support: a fresh schema per test, so tests run in parallel against
//! one server. A test that cannot reach PostgreSQL fails, saying why.
#![allow(dead_code)]

use evently_postgres::PgEventStore;

/// `DATABASE_URL`, or the local test database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store in a new, empty schema of its own.
pub async fn fresh_store() -> PgEventStore {
    store_builder(evently_postgres::PgEventStore::builder()).await
}

/// A store in a new schema, configured by `builder`.
pub async fn store_builder(builder: evently_postgres::PgEventStoreBuilder) -> PgEventStore {
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

// ---------------------------------------------------------------------------
// Helpers shared by the integration tests below the conformance suite.

use std::time::Duration;

use evently_core::{EventStream, Metadata, NewEvent, Payload, RecordedEvent};
use futures::StreamExt;

/// The longest any test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A raw event of type `Numbered` with payload `{"n": n}`.
pub fn numbered(n: u64) -> NewEvent {
    NewEvent::raw(
        "Numbered",
        1,
        Payload::from_value(&serde_json::json!({ "n": n })),
        Metadata::new(),
    )
}

/// `count` numbered events starting at `from`.
pub fn numbered_batch(from: u64, count: u64) -> Vec<NewEvent> {
    (from..from + count).map(numbered).collect()
}

/// A second handle on the same schema of the same database. It has not
/// appended, so its `read_all` never waits for its own writes.
pub async fn second_handle(store: &PgEventStore) -> PgEventStore {
    PgEventStore::builder()
        .schema(store.schema())
        .connect(&database_url())
        .await
        .expect("a second handle on the same schema")
}

/// The URL of another database on the same server as `database_url()`.
pub fn url_for_database(database: &str) -> String {
    let url = database_url();
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base.to_owned(), format!("?{query}")),
        None => (url.clone(), String::new()),
    };
    let (server, _) = base
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("DATABASE_URL {url} names no database"));
    format!("{server}/{database}{query}")
}

/// Receives `count` events from a subscription, failing the test after
/// `within`, or on a store error.
pub async fn receive(
    subscription: &mut EventStream,
    count: usize,
    within: Duration,
) -> Vec<RecordedEvent> {
    let mut received = Vec::with_capacity(count);
    let outcome = tokio::time::timeout(within, async {
        while received.len() < count {
            match subscription.next().await {
                Some(Ok(event)) => received.push(event),
                Some(Err(error)) => panic!("the subscription failed: {error}"),
                None => panic!("the subscription ended"),
            }
        }
    })
    .await;
    if outcome.is_err() {
        panic!(
            "received {} of {count} events within {within:?}",
            received.len()
        );
    }
    received
}

/// Asserts that a subscription delivers nothing during `quiet`.
pub async fn assert_quiet(subscription: &mut EventStream, quiet: Duration) {
    if let Ok(item) = tokio::time::timeout(quiet, subscription.next()).await {
        panic!("expected nothing from the subscription for {quiet:?}, got {item:?}");
    }
}

/// Reads the whole readable global log, a page at a time.
pub async fn read_whole_log(store: &PgEventStore) -> Vec<RecordedEvent> {
    use evently_core::EventStore;
    let mut log = Vec::new();
    let mut from = 0;
    loop {
        let page = store.read_all(from, 1024).await.expect("read_all");
        let Some(last) = page.last() else { break };
        from = last.global_position + 1;
        let full = page.len() == 1024;
        log.extend(page);
        if !full {
            break;
        }
    }
    log
}

/// Polls the readable global log until `done` holds for it, failing the
/// test after `within`.
pub async fn read_log_until(
    store: &PgEventStore,
    within: Duration,
    done: impl Fn(&[RecordedEvent]) -> bool,
) -> Vec<RecordedEvent> {
    let started = std::time::Instant::now();
    loop {
        let log = read_whole_log(store).await;
        if done(&log) {
            return log;
        }
        if started.elapsed() > within {
            panic!(
                "the global log did not reach the expected state within {within:?}: {} events",
                log.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain connection to the database of `store` (not from its pool).
pub async fn control_connection() -> evently_postgres::sqlx::PgConnection {
    use evently_postgres::sqlx::Connection;
    evently_postgres::sqlx::PgConnection::connect(&database_url())
        .await
        .expect("a control connection")
}

/// Events with their payloads parsed, to compare as JSON: the store keeps
/// payloads as `jsonb`, so the text it reads back is normalised (spacing,
/// key order) while the JSON is the same.
pub fn as_json(events: &[RecordedEvent]) -> Vec<RecordedEvent<serde_json::Value>> {
    events
        .iter()
        .map(|e| e.with_data(e.data.to_value().unwrap()))
        .collect()
}
