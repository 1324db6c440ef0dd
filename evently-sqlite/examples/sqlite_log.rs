//! A small tool on an SQLite event store, used by the crate's fault tests
//! as a real second process (and handy by hand):
//!
//! ```text
//! sqlite_log append FILE STREAM APPENDS EVENTS_PER_APPEND   prints "acked VERSION" after each append
//! sqlite_log follow FILE COUNT                              prints "POSITION STREAM VERSION" for COUNT events
//! ```

use std::io::Write;

use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
use evently_sqlite::SqliteEventStore;
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sqlite_log append FILE STREAM APPENDS EVENTS_PER_APPEND | sqlite_log follow FILE COUNT";
    let store = SqliteEventStore::open(args.get(1).ok_or(usage)?).await?;
    let mut out = std::io::stdout().lock();
    match args.first().map(String::as_str) {
        Some("append") => {
            let stream = StreamId::from(args.get(2).ok_or(usage)?.as_str());
            let appends: u64 = args.get(3).ok_or(usage)?.parse()?;
            let per: u64 = args.get(4).ok_or(usage)?.parse()?;
            for i in 0..appends {
                let events = (0..per)
                    .map(|k| {
                        let payload =
                            Payload::from_value(&serde_json::json!({ "append": i, "event": k }));
                        NewEvent::raw("Logged", 1, payload, Metadata::new())
                    })
                    .collect();
                let recorded = store.append(&stream, ExpectedVersion::Any, events).await?;
                let version = recorded.last().map_or(0, |e| e.stream_version);
                writeln!(out, "acked {version}")?;
                out.flush()?;
            }
        }
        Some("follow") => {
            let count: usize = args.get(2).ok_or(usage)?.parse()?;
            writeln!(out, "following")?;
            out.flush()?;
            let mut events = store.subscribe(1).take(count);
            while let Some(event) = events.next().await {
                let e = event?;
                writeln!(
                    out,
                    "{} {} {}",
                    e.global_position,
                    e.stream_id.as_str(),
                    e.stream_version
                )?;
            }
            out.flush()?;
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
