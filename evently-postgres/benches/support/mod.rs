//! What the evently-postgres benches share: concurrent one-event appends.

use std::time::Instant;

use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
use evently_postgres::PgEventStore;

/// Appends `appends` one-event appends from `tasks` tasks, each to its own
/// stream `{prefix}-{task}` with an exact expected version; returns appends
/// per second.
pub async fn concurrent_appends(
    store: &PgEventStore,
    prefix: &str,
    appends: usize,
    tasks: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = store.clone();
        let stream = StreamId::new(format!("{prefix}-{task}"));
        handles.push(tokio::spawn(async move {
            for n in 0..appends / tasks {
                let event = NewEvent::raw(
                    "Deposited",
                    1,
                    Payload::from_json(format!("{{\"amount\":{n}}}")).expect("json"),
                    Metadata::new(),
                );
                store
                    .append(&stream, ExpectedVersion::Exact(n as u64), vec![event])
                    .await
                    .expect("append");
            }
        }));
    }
    for handle in handles {
        handle.await?;
    }
    Ok((appends / tasks * tasks) as f64 / started.elapsed().as_secs_f64())
}
