//! W8 and its floor F5: the PostgreSQL log published to NATS JetStream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use evently::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use evently_nats::{Publisher, PublisherConfig};

use crate::domain::{amount, AccountEvent};
use crate::report::Measurement;
use crate::support::{fresh_store, vacuum, BoxError, Setup};

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
    // A log in service has statistics (autovacuum analyses a table within
    // a minute of a bulk insert); without them PostgreSQL plans the
    // publisher's page query as a scan of the rest of the log. W6 does the
    // same before its catch-up.
    vacuum(store.pool(), "es_bench_w8.events").await?;
    let head = store.head_position().await?;
    let client = async_nats::connect(nats_url).await?;
    fresh_stream(&client, "EVENTLY_BENCH_W8", "bench-w8").await?;
    let publisher = Publisher::new(
        store.clone(),
        client.clone(),
        PublisherConfig::new("EVENTLY_BENCH_W8", "bench-w8").max_in_flight(IN_FLIGHT),
    );
    let started = Instant::now();
    let running = publisher.spawn();
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
/// payloads, and the publisher's fence, `Nats-Expected-Last-Sequence`)
/// built before the clock starts and published by a hand-written
/// async-nats loop with the same number in flight.
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
    for (sequence, (subject, headers, payload)) in messages.into_iter().enumerate() {
        if in_flight.len() >= IN_FLIGHT {
            in_flight.pop_front().expect("full").await?;
        }
        // The same message as the publisher's, its fence included.
        let message = PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .expected_last_sequence(sequence as u64);
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

/// Records when each event reached the consumer's handler.
struct Arrivals {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(uuid::Uuid, Instant)>>>,
}

impl evently::projection::Projection for Arrivals {
    type Event = AccountEvent;
    type Sink = evently_postgres::sqlx::PgConnection;

    fn name(&self) -> &str {
        "w9_arrivals"
    }

    fn handles(&self) -> &[&str] {
        &["Deposited"]
    }

    async fn apply(
        &self,
        _tx: &mut evently_postgres::sqlx::PgConnection,
        event: &evently::RecordedEvent<AccountEvent>,
    ) -> Result<(), evently::projection::HandlerError> {
        self.seen
            .lock()
            .expect("not poisoned")
            .push((event.event_id, Instant::now()));
        Ok(())
    }
}

/// W9: end-to-end lag. One event appended every millisecond (1,000
/// events/s) to PostgreSQL; the publisher puts it on JetStream; a
/// projection in another schema consumes the stream. The lag of an event
/// runs from its append's return (committed) to its handler in the
/// consumer (inside the read model's transaction); p50 and p99 in ms.
pub async fn w9(
    url: &str,
    nats_url: &str,
    events: usize,
    setup: Setup,
) -> Result<Measurement, BoxError> {
    let store = fresh_store(url, "es_bench_w9", 2, setup).await?;
    let reader = fresh_store(url, "es_bench_w9_reader", 2, setup).await?;
    let client = async_nats::connect(nats_url).await?;
    fresh_stream(&client, "EVENTLY_BENCH_W9", "bench-w9").await?;
    let publisher = Publisher::new(
        store.clone(),
        client.clone(),
        PublisherConfig::new("EVENTLY_BENCH_W9", "bench-w9").max_in_flight(IN_FLIGHT),
    );
    let publishing = publisher.spawn();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(events)));
    let consumer = reader.run_projection_from(
        evently_nats::JetStreamSource::new(client.clone(), "EVENTLY_BENCH_W9"),
        Arrivals { seen: seen.clone() },
        evently::projection::ProjectionOptions::default(),
    );
    let mut sent = std::collections::HashMap::with_capacity(events);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    for n in 0..events {
        tick.tick().await;
        let event = NewEvent::from_event(
            &AccountEvent::Deposited { amount: amount(n) },
            Metadata::new(),
        )?;
        let id = event.event_id;
        store
            .append(
                &StreamId::for_aggregate("account", &format!("w9-{}", n % 10)),
                ExpectedVersion::Any,
                vec![event],
            )
            .await?;
        sent.insert(id, Instant::now());
    }
    let seconds = started.elapsed().as_secs_f64();
    consumer
        .wait_for(events as u64, Duration::from_secs(120))
        .await
        .map_err(|e| format!("W9: the consumer did not catch up: {e}"))?;
    consumer.stop().await;
    publishing.abort();
    let mut lags: Vec<f64> = seen
        .lock()
        .expect("not poisoned")
        .iter()
        .filter_map(|(id, at)| {
            sent.get(id)
                .map(|s| at.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        })
        .collect();
    if lags.len() != events {
        return Err(format!(
            "W9: {} of {events} events reached the consumer once",
            lags.len()
        )
        .into());
    }
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| lags[((lags.len() as f64 - 1.0) * p).round() as usize];
    let _ = jetstream::new(client)
        .delete_stream("EVENTLY_BENCH_W9")
        .await;
    store.pool().close().await;
    reader.pool().close().await;
    Ok(Measurement::new("W9", "nats", events as u64, seconds)
        .with("lag_p50_ms", (pct(0.5) * 1000.0).round() / 1000.0)
        .with("lag_p99_ms", (pct(0.99) * 1000.0).round() / 1000.0)
        .with("lag_max_ms", (pct(1.0) * 1000.0).round() / 1000.0))
}

/// W10: 8 clients send `commands` deposits over 50 accounts, through
/// `RemoteRepository` to `instances` in-process `CommandService`s (each
/// with its own NATS connection, store pool of 8 and cache), or with
/// `instances` 0 to one local `Repository` (pool 8): commands/s.
pub async fn w10(
    url: &str,
    nats_url: &str,
    commands: usize,
    instances: usize,
    setup: Setup,
) -> Result<Measurement, BoxError> {
    use crate::domain::{Account, AccountCommand};
    use evently::Repository;
    const CLIENTS: usize = 8;
    const ACCOUNTS: usize = 50;
    let schema = "es_bench_w10";
    let store = fresh_store(url, schema, 8, setup).await?;
    let local = Repository::<Account, _>::new(store.clone());
    for a in 0..ACCOUNTS {
        local
            .execute(AccountCommand::Open {
                id: format!("w10-{a}"),
                owner: format!("owner {a}"),
            })
            .await?;
    }
    let service = format!("bench_w10_{}", uuid::Uuid::now_v7().simple());
    let mut servers = Vec::new();
    for _ in 0..instances {
        let client = async_nats::connect(nats_url).await?;
        let mut server = evently_nats::CommandService::start(&client, &service, "1.0.0").await?;
        let store = evently_postgres::PgEventStore::builder()
            .schema(schema)
            .max_connections(8)
            .connect(url)
            .await?;
        server
            .serve(Repository::<Account, _>::new(store), 64)
            .await?;
        servers.push(server);
    }
    let client = async_nats::connect(nats_url).await?;
    let remote = evently_nats::RemoteRepository::<Account>::new(client, &service);
    let per_client = commands / CLIENTS;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (local, remote) = (local.clone(), remote.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..per_client {
                let command = AccountCommand::Deposit {
                    id: format!("w10-{}", (c * 7 + n) % ACCOUNTS),
                    amount: amount(n),
                };
                if instances == 0 {
                    local.execute(command).await.map_err(|e| e.to_string())?;
                } else {
                    remote.execute(command).await.map_err(|e| e.to_string())?;
                }
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    for server in servers {
        server.stop().await;
    }
    let name = match instances {
        0 => "W10-local".to_owned(),
        n => format!("W10-{n}"),
    };
    Ok(
        Measurement::new(name, "nats", (per_client * CLIENTS) as u64, seconds)
            .with("instances", instances as u64),
    )
}
