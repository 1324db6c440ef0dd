//! The publisher on a real broker: every event once, in log order, through
//! crashes of the publisher and of the broker, with two publishers at once.

mod support;

use std::time::Duration;

use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
use evently_memory::MemoryStore;
use evently_nats::{headers, PublishError, Publisher, PublisherConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(120);

async fn publisher<S: EventStore + Clone + 'static>(
    store: &S,
    client: async_nats::Client,
    stream: &str,
    prefix: &str,
) -> Publisher<S> {
    let publisher = Publisher::new(
        store.clone(),
        client,
        PublisherConfig::new(stream, prefix).max_in_flight(64),
    );
    publisher.ensure_stream().await.unwrap();
    publisher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_published_once_in_log_order_with_its_headers() {
    let client = shared_client().await;
    let (stream, prefix) = unique("order");
    let store = MemoryStore::new();
    append_events(&store, &hostile_streams(), 300, 3).await;
    let publisher = publisher(&store, client.clone(), &stream, &prefix).await;
    let running = publisher.spawn();
    assert!(
        publisher.wait_for(300, WAIT).await,
        "published: {:?}",
        publisher.stats()
    );

    // Live: events appended while it runs follow.
    append_events(&store, &[StreamId::from("account-late")], 20, 1).await;
    let head = store.head_position().await.unwrap();
    assert!(publisher.wait_for(head, WAIT).await);
    assert_eq!(publisher.lag().await.unwrap(), 0);
    assert_eq!(publisher.stats().published, 320);
    running.abort();

    let log = whole_log(&store).await;
    let stored = read_stream(&client, &stream).await;
    assert_stream_is_the_log(&stored, &log, &prefix);

    // The headers of one message, in full.
    let js = async_nats::jetstream::new(client.clone());
    let message = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_raw_message(5)
        .await
        .unwrap();
    let event = &log[4];
    let header = |name| message.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header(headers::EVENT_TYPE).as_deref(), Some("Tested"));
    assert_eq!(header(headers::SCHEMA_VERSION).as_deref(), Some("1"));
    assert_eq!(
        header(headers::STREAM).as_deref(),
        Some(evently_nats::subject::encode_token(event.stream_id.as_str()).as_str())
    );
    assert_eq!(
        header(headers::STREAM_VERSION),
        Some(event.stream_version.to_string())
    );
    assert_eq!(header(headers::GLOBAL_POSITION), Some("5".to_owned()));
    assert_eq!(
        header(headers::CORRELATION_ID),
        Some(uuid::Uuid::from_u128(5).to_string())
    );
    assert_eq!(header(headers::CAUSATION_ID), None);
    let metadata: serde_json::Value =
        serde_json::from_str(&header(headers::METADATA).unwrap()).unwrap();
    assert_eq!(
        metadata["correlation_id"],
        uuid::Uuid::from_u128(5).to_string()
    );
    assert_eq!(
        message.subject.as_str(),
        format!("{prefix}.account.account-a%2Eb%20c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_and_restarted_neither_skips_nor_repeats() {
    let client = shared_client().await;
    let (stream, prefix) = unique("restart");
    short_window_stream(&client, &stream, &prefix).await;
    let store = MemoryStore::new();
    append_events(&store, &hostile_streams(), 6_000, 7).await;
    for stop_at in [700, 2_100, 4_500] {
        // A new connection each time, as a restarted process has.
        let client = shared_client().await;
        let publisher = publisher(&store, client, &stream, &prefix).await;
        let running = publisher.spawn();
        assert!(publisher.wait_for(stop_at, WAIT).await);
        // Killed with publishes in flight.
        running.abort();
        let _ = running.await;
    }
    let publisher = publisher(&store, shared_client().await, &stream, &prefix).await;
    let running = publisher.spawn();
    assert!(
        publisher.wait_for(6_000, WAIT).await,
        "{:?}",
        publisher.stats()
    );
    running.abort();
    assert_stream_is_the_log(
        &read_stream(&client, &stream).await,
        &whole_log(&store).await,
        &prefix,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_at_once_store_each_event_once() {
    let client = shared_client().await;
    let (stream, prefix) = unique("two");
    short_window_stream(&client, &stream, &prefix).await;
    let store = MemoryStore::new();
    // Both start on an empty stream, then race through a backlog and a
    // live tail.
    let first = publisher(&store, shared_client().await, &stream, &prefix).await;
    // One publish at a time: it falls behind the first, and what it sends
    // is older than the 100 ms window, so only the fencing keeps it out.
    let second = Publisher::new(
        store.clone(),
        shared_client().await,
        PublisherConfig::new(&stream, &prefix).max_in_flight(1),
    );
    let tasks = [first.spawn(), second.spawn()];
    append_events(&store, &hostile_streams(), 3_000, 5).await;
    append_events(&store, &[StreamId::from("account-live")], 500, 1).await;
    let head = store.head_position().await.unwrap();
    assert!(first.wait_for(head, WAIT).await && second.wait_for(head, WAIT).await);
    for task in tasks {
        task.abort();
    }
    assert_stream_is_the_log(
        &read_stream(&client, &stream).await,
        &whole_log(&store).await,
        &prefix,
    );
    // An acknowledgement is counted by the publisher that received it; a
    // fenced publisher drops the ones still in flight, some of which may
    // have been stored: never more than the log, and both saw the end.
    let published = first.stats().published + second.stats().published;
    assert!(published <= 3_500 && published > 0, "{published}");
    assert_eq!(first.stats().last_position, head);
    assert_eq!(second.stats().last_position, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_and_restarted_mid_publish_loses_and_repeats_nothing() {
    let mut server = PrivateServer::start(None).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let (stream, prefix) = unique("broker");
    short_window_stream(&client, &stream, &prefix).await;
    let store = MemoryStore::new();
    append_events(&store, &hostile_streams(), 20_000, 10).await;
    let publisher = publisher(&store, client.clone(), &stream, &prefix).await;
    let running = publisher.spawn();
    for kill_at in [4_000, 12_000] {
        assert!(
            publisher.wait_for(kill_at, WAIT).await,
            "{:?}",
            publisher.stats()
        );
        server.kill().await;
        // The client sees the connection go before the broker comes back.
        for _ in 0..500 {
            if client.connection_state() != async_nats::connection::State::Connected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.restart().await;
    }
    assert!(
        publisher.wait_for(20_000, WAIT).await,
        "{:?}",
        publisher.stats()
    );
    running.abort();
    assert_stream_is_the_log(
        &read_stream(&client, &stream).await,
        &whole_log(&store).await,
        &prefix,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_the_broker_takes_stops_the_publisher_naming_it() {
    let server = PrivateServer::start(Some("max_payload: 4096\n")).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let (stream, prefix) = unique("large");
    let store = MemoryStore::new();
    let small = |n: u64| {
        NewEvent::raw(
            "Tested",
            1,
            Payload::from_value(&serde_json::json!({ "n": n })),
            Metadata::new(),
        )
    };
    let big = NewEvent::raw(
        "Tested",
        1,
        Payload::from_value(&serde_json::json!({ "blob": "x".repeat(5_000) })),
        Metadata::new(),
    );
    let big_id = big.event_id;
    let id = StreamId::from("account-1");
    store
        .append(
            &id,
            ExpectedVersion::Any,
            vec![small(1), small(2), small(3)],
        )
        .await
        .unwrap();
    store
        .append(&id, ExpectedVersion::Any, vec![big])
        .await
        .unwrap();
    store
        .append(&id, ExpectedVersion::Any, vec![small(5)])
        .await
        .unwrap();

    let publisher = publisher(&store, client.clone(), &stream, &prefix).await;
    let stopped = tokio::time::timeout(WAIT, publisher.run())
        .await
        .expect("the publisher stops");
    match &stopped {
        PublishError::TooLarge {
            event_id,
            position,
            size,
            limit,
            stream_id,
        } => {
            assert_eq!(*event_id, big_id);
            assert_eq!(*position, 4);
            assert_eq!(stream_id, "account-1");
            assert_eq!(*limit, 4096);
            assert!(*size > 5_000, "{size}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(stopped.is_fatal());
    let text = stopped.to_string();
    assert!(
        text.contains(&big_id.to_string()) && text.contains("4096"),
        "{text}"
    );
    // The events before it are published, nothing after it.
    let stored = read_stream(&client, &stream).await;
    assert_eq!(
        stored.iter().map(|m| m.position).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(publisher.stats().last_position, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_a_foreign_message_stops_the_publisher() {
    let client = shared_client().await;
    let (stream, prefix) = unique("foreign");
    let store = MemoryStore::new();
    append_events(&store, &hostile_streams(), 10, 1).await;
    let publisher = publisher(&store, client.clone(), &stream, &prefix).await;
    let js = async_nats::jetstream::new(client.clone());
    js.publish(format!("{prefix}.someone.else"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, publisher.run())
        .await
        .expect("the publisher stops")
    {
        PublishError::ForeignMessage {
            sequence, header, ..
        } => {
            assert_eq!(sequence, 1);
            assert_eq!(header, headers::GLOBAL_POSITION);
        }
        other => panic!("expected ForeignMessage, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_log_is_published_the_same_way() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let store = evently_postgres::PgEventStore::builder()
        .schema(format!("es_test_{}", uuid::Uuid::now_v7().simple()))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot set up a PostgreSQL store at {url}: {e}"));
    let client = shared_client().await;
    let (stream, prefix) = unique("postgres");
    append_events(&store, &hostile_streams(), 1_000, 4).await;
    let publisher = publisher(&store, client.clone(), &stream, &prefix).await;
    let running = publisher.spawn();
    // PostgreSQL positions are not dense: wait for the head's.
    let head = store.head_position().await.unwrap();
    assert!(
        publisher.wait_for(head, WAIT).await,
        "{:?}",
        publisher.stats()
    );
    running.abort();
    assert_stream_is_the_log(
        &read_stream(&client, &stream).await,
        &whole_log(&store).await,
        &prefix,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_id_too_long_for_a_subject_stops_the_publisher_naming_it() {
    let client = shared_client().await;
    let (stream, prefix) = unique("long");
    let store = MemoryStore::new();
    append_events(&store, &[StreamId::from("account-1")], 2, 1).await;
    // 2,048 bytes, the longest stream id a store takes: encoded, 6,144.
    let long = StreamId::new(format!("account-{}", "é".repeat(1_020)));
    append_events(&store, std::slice::from_ref(&long), 1, 1).await;
    append_events(&store, &[StreamId::from("account-1")], 1, 1).await;
    let publisher = publisher(&store, client.clone(), &stream, &prefix).await;
    match tokio::time::timeout(WAIT, publisher.run())
        .await
        .expect("the publisher stops")
    {
        PublishError::SubjectTooLong {
            position,
            stream_id,
            length,
            limit,
            ..
        } => {
            assert_eq!(position, 3);
            assert_eq!(stream_id, long.as_str());
            assert!(
                length > limit && limit == evently_nats::MAX_SUBJECT,
                "{length} {limit}"
            );
        }
        other => panic!("expected SubjectTooLong, got {other:?}"),
    }
    let stored = read_stream(&client, &stream).await;
    assert_eq!(
        stored.iter().map(|m| m.position).collect::<Vec<_>>(),
        vec![1, 2]
    );
}
