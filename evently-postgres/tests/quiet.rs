//! With NOTIFY off, the store contract still holds: subscriptions wake by
//! polling.

mod common;

use std::time::Duration;

use evently_postgres::PgEventStore;

async fn quiet_store() -> PgEventStore {
    common::store_builder(
        PgEventStore::builder()
            .notify(false)
            .poll_interval(Duration::from_millis(20)),
    )
    .await
}

mod conformance {
    use super::quiet_store;

    evently_core::conformance_suite!(quiet_store);
}

#[tokio::test]
async fn a_quiet_handle_sends_no_notify_and_a_loud_one_does() {
    use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
    use evently_postgres::sqlx::postgres::PgListener;

    let quiet = quiet_store().await;
    let loud = PgEventStore::builder()
        .schema(quiet.schema())
        .connect(&common::database_url())
        .await
        .unwrap();
    let mut listener = PgListener::connect(&common::database_url()).await.unwrap();
    listener
        .listen(&format!("{}_events", quiet.schema()))
        .await
        .unwrap();
    let event = || {
        NewEvent::raw(
            "Tested",
            1,
            Payload::from_json("{}").unwrap(),
            Metadata::new(),
        )
    };
    quiet
        .append(&StreamId::from("s"), ExpectedVersion::Any, vec![event()])
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(heard.is_err(), "the quiet handle sent a NOTIFY: {heard:?}");
    loud.append(&StreamId::from("s"), ExpectedVersion::Any, vec![event()])
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(
        matches!(heard, Ok(Ok(_))),
        "the loud handle's NOTIFY arrives: {heard:?}"
    );
}
