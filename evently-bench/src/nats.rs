//! W8 and its floor F5: the PostgreSQL log published to NATS JetStream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use evently::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use evently_nats::{Publisher, PublisherConfig};

use crate::domain::{amount, AccountEvent};
use crate::report::Measurement;
use crate::support::{fresh_store, BoxError, Setup};

/// Publishes in flight at once, in W8 and F5 alike.
pub const IN_FLIGHT: usize = 256;
const STREAMS: usize = 100;

/// A fresh JetStream stream `name` on `<prefix>.>` (deleted first).
async fn fresh_stream(
    client: &async_nats::Client,
    name: &str,
    prefix: &str,
) -> Result<(), BoxError> {
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(name).await;
    js.create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn stream_len(client: &async_nats::Client, name: &str) -> Result<u64, BoxError> {
    let js = jetstream::new(client.clone());
    let len = js.get_stream(name).await?.info().await?.state.messages;
    js.delete_stream(name).await?;
    Ok(len)
}

/// W8: `events` deposits over 100 streams, appended to PostgreSQL before
/// the clock starts, then published by `evently_nats::Publisher` to a
/// fresh JetStream stream (256 in flight); events/s.
pub async fn w8(
    url: &str,
    nats_url: &str,
    events: usize,
    setup: Setup,
) -> Result<Measurement, BoxError> {
    let store = fresh_store(url, "es_bench_w8", 4, setup).await?;
    let per_stream = events.div_ceil(STREAMS);
    for s in 0..STREAMS {
        let batch: Vec<NewEvent> = (0..per_stream.min(events.saturating_sub(s * per_stream)))
            .map(|d| {
                NewEvent::from_event(
                    &AccountEvent::Deposited { amount: amount(d) },
                    Metadata::new(),
                )
            })
            .collect::<Result<_, _>>()?;
        if !batch.is_empty() {
            store
                .append(
                    &StreamId::for_aggregate("account", &format!("w8-{s}")),
                    ExpectedVersion::NoStream,
                    batch,
                )
                .await?;
        }
    }
    let head = store.head_position().await?;
    let client = async_nats::connect(nats_url).await?;
    fresh_stream(&client, "EVENTLY_BENCH_W8", "bench-w8").await?;
    let publisher = Publisher::new(
        store.clone(),
        client.clone(),
        PublisherConfig::new("EVENTLY_BENCH_W8", "bench-w8").max_in_flight(IN_FLIGHT),
    );
    let started = Instant::now();
    let running = tokio::spawn({
        let publisher = publisher.clone();
        async move { publisher.run().await }
    });
    let done = publisher.wait_for(head, Duration::from_secs(600)).await;
    let seconds = started.elapsed().as_secs_f64();
    running.abort();
    store.pool().close().await;
    let stored = stream_len(&client, "EVENTLY_BENCH_W8").await?;
    if !done || stored != events as u64 {
        return Err(format!("W8: the stream holds {stored} messages for {events} events").into());
    }
    Ok(Measurement::new("W8", "nats", events as u64, seconds).with("in_flight", IN_FLIGHT as u64))
}

/// F5: the same messages (subjects, headers of the same names and sizes,
/// payloads) built before the clock starts and published by a
/// hand-written async-nats loop with the same number in flight.
pub async fn f5(nats_url: &str, events: usize) -> Result<Measurement, BoxError> {
    let per_stream = events.div_ceil(STREAMS);
    let metadata = serde_json::to_string(&Metadata::new())?;
    let mut messages = Vec::with_capacity(events);
    for n in 0..events {
        let (s, d) = (n / per_stream, n % per_stream);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
        headers.insert("Evently-Event-Type", "Deposited");
        headers.insert("Evently-Schema-Version", "1");
        headers.insert("Evently-Stream", format!("account-w8-{s}").as_str());
        headers.insert("Evently-Stream-Version", (d + 1).to_string().as_str());
        headers.insert("Evently-Global-Position", (n + 1).to_string().as_str());
        headers.insert(
            "Evently-Recorded-At",
            chrono::Utc::now().to_rfc3339().as_str(),
        );
        headers.insert("Evently-Metadata", metadata.as_str());
        headers.insert("Content-Type", "application/json");
        let payload =
            serde_json::to_vec(&serde_json::json!({ "Deposited": { "amount": amount(d) } }))?;
        messages.push((format!("bench-f5.account.account-w8-{s}"), headers, payload));
    }
    let client = async_nats::connect(nats_url).await?;
    fresh_stream(&client, "EVENTLY_BENCH_F5", "bench-f5").await?;
    let js = jetstream::new(client.clone());
    let started = Instant::now();
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(IN_FLIGHT);
    for (subject, headers, payload) in messages {
        if in_flight.len() >= IN_FLIGHT {
            in_flight.pop_front().expect("full").await?;
        }
        let message = PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        in_flight.push_back(js.send_publish(subject, message).await?);
    }
    for ack in in_flight {
        ack.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored = stream_len(&client, "EVENTLY_BENCH_F5").await?;
    if stored != events as u64 {
        return Err(format!("F5: the stream holds {stored} messages for {events}").into());
    }
    Ok(Measurement::new("F5", "async-nats", events as u64, seconds)
        .with("in_flight", IN_FLIGHT as u64))
}
