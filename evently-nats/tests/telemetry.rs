//! What the NATS side reports: a remote command traced on both sides
//! under its correlation id, the publisher's counts and lag. In a test
//! binary of its own: `tracing` caches per call site whether anyone
//! listens, and tests without a collector running beside these could
//! leave that cache saying no one does.

mod support;

use std::time::Duration;

use evently_core::prelude::*;
use evently_core::testing::telemetry::capture;
use evently_memory::MemoryStore;
use evently_nats::{CommandService, Publisher, PublisherConfig, RemoteRepository};
use serde::{Deserialize, Serialize};
use support::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum NoteEvent {
    Written { text: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
enum NoteCommand {
    Write { id: String, text: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "note", event = NoteEvent, command = NoteCommand, error = Never)]
struct Note;

impl Note {
    fn decide(&self, command: NoteCommand) -> Result<Vec<NoteEvent>, Never> {
        let NoteCommand::Write { text, .. } = command;
        Ok(vec![NoteEvent::Written { text }])
    }

    fn apply(&mut self, _: &NoteEvent) {}
}

/// One request followed across the services by its correlation id: the
/// client's span, the serving instance's and the command's carry it.
#[test]
fn a_remote_command_is_traced_on_both_sides_under_its_correlation_id() {
    let correlation = uuid::Uuid::now_v7();
    let (command_id, seen) = capture(async move {
        let name = format!("notes_{}", uuid::Uuid::now_v7().simple());
        let client = shared_client().await;
        let mut service = CommandService::start(&client, &name, "1.0.0")
            .await
            .unwrap();
        service
            .serve(Repository::<Note, _>::new(MemoryStore::new()), 4)
            .await
            .unwrap();
        let notes = RemoteRepository::<Note>::new(client.clone(), &name);
        let context = CommandContext::new().with_correlation_id(correlation);
        let command_id = context.command_id;
        let command = NoteCommand::Write {
            id: "n".into(),
            text: "traced".into(),
        };
        notes.execute_with(command, context).await.unwrap();
        service.stop().await;
        command_id
    });
    let correlation = correlation.to_string();
    let command_id = command_id.to_string();
    for name in [
        "evently.remote_command",
        "evently.serve_command",
        "evently.command",
    ] {
        let spans = seen.spans_named(name);
        assert_eq!(spans.len(), 1, "{name}: {spans:?}");
        assert_eq!(
            spans[0].field("correlation_id"),
            Some(&*correlation),
            "{name}"
        );
        assert_eq!(spans[0].field("command_id"), Some(&*command_id), "{name}");
    }
    assert_eq!(
        seen.spans_named("evently.command")[0].parent.as_deref(),
        Some("evently.serve_command")
    );
    assert_eq!(
        seen.spans_named("evently.remote_command")[0].field("outcome"),
        Some("accepted")
    );
    assert_eq!(
        seen.counter(
            evently_nats::service::REMOTE_COMMANDS,
            &[("outcome", "accepted")]
        ),
        Some(1)
    );
}

/// The publisher counts what the stream acknowledged and reports its lag
/// in events (the log's events after the last published one), under its
/// span.
#[test]
fn the_publisher_reports_published_events_and_its_lag() {
    let (stream, prefix) = unique("metrics");
    let (lag, seen) = capture({
        let stream = stream.clone();
        async move {
            let client = shared_client().await;
            let store = MemoryStore::new();
            append_events(&store, &[StreamId::from("account-m")], 40, 1).await;
            let publisher = Publisher::new(
                store.clone(),
                client,
                PublisherConfig::new(&stream, &prefix),
            );
            publisher.ensure_stream().await.unwrap();
            let running = publisher.spawn();
            assert!(publisher.wait_for(40, Duration::from_secs(60)).await);
            let lag = publisher.lag().await.unwrap();
            running.abort();
            let _ = running.await;
            lag
        }
    });
    assert_eq!(lag, 0);
    let labels = [("stream", stream.as_str())];
    assert_eq!(
        seen.counter(evently_nats::PUBLISHED_EVENTS, &labels),
        Some(40)
    );
    // Counted once when the publisher started: all 40 behind, or fewer
    // if the first acknowledgements came first.
    let gauge = seen
        .gauge(evently_nats::PUBLISHER_LAG_EVENTS, &labels)
        .unwrap();
    assert!((0.0..=40.0).contains(&gauge), "{gauge}");
    let spans = seen.spans_named("evently.publish");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].field("stream"), Some(stream.as_str()));
}
