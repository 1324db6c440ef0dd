//! Every future of the store's public API can be spawned on a multi-threaded
//! runtime (`tokio::spawn` needs `Send + 'static`): connecting, migrating,
//! appending (also inside a caller's transaction), reading, subscribing,
//! `status()`, and a repository's commands. Only compiled, never run
//! against a server.

use evently_core::{EventStore, ExpectedVersion, StreamId};
use evently_postgres::PgEventStore;
use futures::StreamExt;

#[allow(dead_code)]
fn spawn_everything(store: PgEventStore, url: String) {
    tokio::spawn(async move {
        let _ = PgEventStore::builder()
            .schema("spawned")
            .connect(&url)
            .await;
    });
    let s = store.clone();
    tokio::spawn(async move {
        let _ = PgEventStore::builder()
            .schema("spawned")
            .with_pool(s.pool().clone())
            .await;
    });
    let s = store.clone();
    tokio::spawn(async move {
        let _ = s.migrate().await;
    });
    let s = store.clone();
    tokio::spawn(async move {
        let stream = StreamId::from("s");
        let _ = s.append(&stream, ExpectedVersion::Any, vec![]).await;
        let _ = s.read_stream(&stream, 1, 10).await;
        let _ = s.read_all(0, 10).await;
        let _ = s.head_position().await;
        let _ = s.stream_version(&stream).await;
        let _ = s.status().await;
        let _ = s.subscribe(0).next().await;
    });
    let s = store.clone();
    tokio::spawn(async move {
        let mut tx = s.pool().begin().await.unwrap();
        let _ = s
            .append_in(&mut tx, &StreamId::from("s"), ExpectedVersion::Any, vec![])
            .await;
        let _ = s.append_atomic_in(&mut tx, vec![]).await;
        let _ = tx.commit().await;
    });
}

fn main() {}
