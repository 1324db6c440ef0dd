//! Erasing a stream on PostgreSQL also erases what the store's own tables
//! hold of it besides the events and the journal (checked for every store
//! by the conformance suite): the error texts of its parked events, which
//! often quote the event's data.

mod common;

use std::time::Duration;

use common::*;
use evently_core::prelude::*;
use evently_core::projection::{HandlerError, OnFailure, Projection, ProjectionOptions};
use evently_core::{JournalOutcome, Payload};
use evently_postgres::sqlx::PgConnection;

/// Parks every event, quoting its payload in the error.
struct Quoting;

impl Projection for Quoting {
    type Event = Raw;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        "quoting"
    }

    async fn apply(
        &self,
        _: &mut PgConnection,
        e: &RecordedEvent<Raw>,
    ) -> Result<(), HandlerError> {
        Err(format!("cannot store {}", e.data.0).into())
    }
}

/// Any event, as its JSON text.
#[derive(Debug)]
struct Raw(String);

impl Event for Raw {
    const EVENT_TYPES: &'static [&'static str] = &["Signed"];

    fn event_type(&self) -> &'static str {
        "Signed"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<Payload, evently_core::EncodeError> {
        Ok(Payload::from_json(self.0.clone()).expect("JSON"))
    }

    fn decode(_: &str, _: u32, payload: &Payload) -> Result<Self, evently_core::DecodeErrorKind> {
        Ok(Raw(payload.as_str().to_owned()))
    }
}

fn signed(name: &str) -> NewEvent {
    NewEvent::raw(
        "Signed",
        1,
        Payload::from_value(&serde_json::json!({ "name": name })),
        Metadata::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_blanks_the_error_text_of_parked_events() {
    let store = fresh_store().await;
    let ada = StreamId::from("person-ada");
    let grace = StreamId::from("person-grace");
    store
        .append(&ada, ExpectedVersion::Any, vec![signed("Ada Lovelace")])
        .await
        .unwrap();
    let last = store
        .append(&grace, ExpectedVersion::Any, vec![signed("Grace Hopper")])
        .await
        .unwrap()[0]
        .global_position;
    let handle = store.run_projection(
        Quoting,
        ProjectionOptions::default()
            .retries(0, Duration::from_millis(1))
            .on_failure(OnFailure::Park),
    );
    handle.wait_for(last, PATIENCE).await.unwrap();
    handle.stop().await;
    let parked = store.parked("quoting").await.unwrap();
    assert_eq!(parked.len(), 2);
    assert!(
        parked[0].error.contains("Ada Lovelace"),
        "{}",
        parked[0].error
    );

    store.erase_stream(&ada).await.unwrap();
    let parked = store.parked("quoting").await.unwrap();
    assert_eq!(parked.len(), 2, "parked events stay listed");
    assert_eq!(parked[0].stream_id, "person-ada");
    assert_eq!(parked[0].error, JournalOutcome::ERASED_ERROR);
    assert!(
        parked[1].error.contains("Grace Hopper"),
        "other streams keep theirs"
    );
}
