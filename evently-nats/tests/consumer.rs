//! Another service's published stream consumed into a PostgreSQL read
//! model by the ordinary projection runner, through crashes and bad
//! messages.

mod support;

use evently_core::EventSource;

use std::collections::BTreeMap;
use std::time::Duration;

use evently_core::prelude::*;
use evently_core::projection::{
    HandlerError, OnFailure, Projection, ProjectionOptions, ProjectionState,
};
use evently_memory::MemoryStore;
use evently_nats::{JetStreamSource, Publisher, PublisherConfig};
use evently_postgres::sqlx::{self, PgConnection};
use evently_postgres::PgEventStore;
use rand::Rng;
use serde::{Deserialize, Serialize};
use support::*;

const WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum LedgerEvent {
    Credited { amount: u64 },
    Noted { text: String },
}

/// Totals per stream, and how many events made each.
struct Totals {
    table: String,
}

impl Projection for Totals {
    type Event = LedgerEvent;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        "remote_totals"
    }

    fn handles(&self) -> &[&str] {
        &["Credited"]
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<LedgerEvent>,
    ) -> Result<(), HandlerError> {
        let LedgerEvent::Credited { amount } = event.data else {
            return Err("only credits are handled".into());
        };
        sqlx::query(&format!(
            "INSERT INTO {} AS t (stream_id, total, events) VALUES ($1, $2, 1) \
             ON CONFLICT (stream_id) DO UPDATE SET total = t.total + excluded.total, events = t.events + 1",
            self.table
        ))
        .bind(event.stream_id.as_str())
        .bind(amount as i64)
        .execute(tx)
        .await?;
        Ok(())
    }
}

async fn read_model() -> (PgEventStore, Totals) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let store = PgEventStore::builder()
        .schema(format!("es_test_{}", uuid::Uuid::now_v7().simple()))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot set up a PostgreSQL store at {url}: {e}"));
    let table = format!("\"{}\".totals", store.schema());
    sqlx::query(&format!(
        "CREATE TABLE {table} (stream_id text PRIMARY KEY, total bigint NOT NULL, events bigint NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    (store, Totals { table })
}

async fn totals(store: &PgEventStore, table: &str) -> BTreeMap<String, (i64, i64)> {
    sqlx::query_as::<_, (String, i64, i64)>(&format!(
        "SELECT stream_id, total, events FROM {table}"
    ))
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|(s, t, e)| (s, (t, e)))
    .collect()
}

/// The origin service: 10,000 credits and some notes over 20 accounts,
/// published to a JetStream stream; returns the totals a full replay gives.
async fn origin(
    client: &async_nats::Client,
    stream: &str,
    prefix: &str,
) -> (MemoryStore, BTreeMap<String, (i64, i64)>) {
    let store = MemoryStore::new();
    let mut expected = BTreeMap::new();
    for n in 0..10_000u64 {
        let account = format!("account-{}", n % 20);
        let amount = n % 50 + 1;
        let mut events =
            vec![NewEvent::from_event(&LedgerEvent::Credited { amount }, Metadata::new()).unwrap()];
        if n % 100 == 0 {
            events.push(
                NewEvent::from_event(
                    &LedgerEvent::Noted {
                        text: format!("note {n}"),
                    },
                    Metadata::new(),
                )
                .unwrap(),
            );
        }
        store
            .append(
                &StreamId::from(account.as_str()),
                ExpectedVersion::Any,
                events,
            )
            .await
            .unwrap();
        let entry = expected.entry(account).or_insert((0, 0));
        entry.0 += amount as i64;
        entry.1 += 1;
    }
    let publisher = Publisher::new(
        store.clone(),
        client.clone(),
        PublisherConfig::new(stream, prefix),
    );
    publisher.ensure_stream().await.unwrap();
    let running = publisher.spawn();
    let head = store.head_position().await.unwrap();
    assert!(publisher.wait_for(head, WAIT).await);
    running.abort();
    (store, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_at_random_points_applies_each_event_once() {
    let client = shared_client().await;
    let (stream, prefix) = unique("consume");
    let (_, expected) = origin(&client, &stream, &prefix).await;
    let (store, projection) = read_model().await;
    let table = projection.table.clone();
    let source = JetStreamSource::new(client.clone(), &stream);
    let last = 10_100; // the stream's last sequence: 10,000 credits and 100 notes
                       // A consumer's lag in events, from the stream's last sequence.
    assert_eq!(source.events_after(0, u64::MAX).await.unwrap(), last);
    assert_eq!(source.events_after(10_000, u64::MAX).await.unwrap(), 100);
    assert_eq!(source.events_after(0, 50).await.unwrap(), 50);

    let mut rng = rand::rng();
    let mut projection = Some(projection);
    for _ in 0..4 {
        let handle = store.run_projection_from(
            source.clone(),
            projection.take().unwrap(),
            ProjectionOptions::default(),
        );
        // Killed (aborted, as a crash) somewhere in the middle.
        let at = store.checkpoint("remote_totals").await.unwrap() + rng.random_range(500..2_000);
        handle.wait_for(at.min(last), WAIT).await.unwrap();
        handle.abort();
        projection = Some(Totals {
            table: table.clone(),
        });
    }
    let handle = store.run_projection_from(
        source,
        projection.take().unwrap(),
        ProjectionOptions::default(),
    );
    handle.wait_for(last, WAIT).await.unwrap();
    handle.stop().await;

    assert_eq!(store.checkpoint("remote_totals").await.unwrap(), last);
    // Equal to a full replay: nothing lost, nothing applied twice.
    assert_eq!(totals(&store, &table).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_handled_by_the_failure_policy_naming_subject_and_sequence() {
    let client = shared_client().await;
    let (stream, prefix) = unique("malformed");
    let origin_store = MemoryStore::new();
    let credit =
        |amount| NewEvent::from_event(&LedgerEvent::Credited { amount }, Metadata::new()).unwrap();
    let id = StreamId::from("account-1");
    origin_store
        .append(&id, ExpectedVersion::Any, vec![credit(5), credit(7)])
        .await
        .unwrap();
    let publisher = Publisher::new(
        origin_store.clone(),
        client.clone(),
        PublisherConfig::new(&stream, &prefix),
    );
    publisher.ensure_stream().await.unwrap();
    let running = publisher.spawn();
    assert!(publisher.wait_for(2, WAIT).await);
    running.abort();
    let _ = running.await;
    // Someone else writes to the stream: a body that is not JSON, and a
    // message with no headers at all.
    let js = async_nats::jetstream::new(client.clone());
    let mut bad_headers = async_nats::HeaderMap::new();
    bad_headers.insert(
        evently_nats::headers::MESSAGE_ID,
        uuid::Uuid::now_v7().to_string().as_str(),
    );
    js.publish_with_headers(
        format!("{prefix}.account.account-1"),
        bad_headers,
        "{not json".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    js.publish(format!("{prefix}.account.account-2"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Then a well-formed one: message 1 again under a new event id (the
    // publisher would stop at a foreign tail, so it is written by hand).
    let first = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    // (Stored messages keep the publisher's `Nats-Expected-Last-Sequence`.)
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in first.headers.iter() {
        let name = name.to_string();
        if !name.starts_with("Nats-") {
            headers.insert(name.as_str(), values[0].as_str());
        }
    }
    headers.insert(
        evently_nats::headers::MESSAGE_ID,
        uuid::Uuid::now_v7().to_string().as_str(),
    );
    js.publish_with_headers(first.subject.to_string(), headers, first.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();

    // Stop: the events before the bad message are applied, and it stops there.
    let (store, projection) = read_model().await;
    let table = projection.table.clone();
    let source = JetStreamSource::new(client.clone(), &stream);
    let options = ProjectionOptions::default();
    let handle = store.run_projection_from(source.clone(), projection, options.clone());
    let failed = tokio::time::timeout(WAIT, async {
        loop {
            if let ProjectionState::Failed(reason) = handle.status().state {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the projection stops at the bad message");
    assert!(
        failed.contains("message 3") && failed.contains(&format!("{prefix}.account.account-1")),
        "{failed}"
    );
    assert_eq!(store.checkpoint("remote_totals").await.unwrap(), 2);
    assert_eq!(
        totals(&store, &table).await[&"account-1".to_owned()],
        (12, 2)
    );
    let _ = handle.stop().await;

    // Park: both bad messages parked with their subject and sequence, the
    // event after them applied.
    let handle = store.run_projection_from(
        source,
        Totals {
            table: table.clone(),
        },
        options.on_failure(OnFailure::Park),
    );
    handle.wait_for(5, WAIT).await.unwrap();
    handle.stop().await;
    let parked = store.parked("remote_totals").await.unwrap();
    assert_eq!(
        parked.iter().map(|p| p.position).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let named = |sequence: u64, account: &str| {
        format!("message {sequence} on subject `{prefix}.account.{account}`")
    };
    assert!(
        parked[0].error.contains(&named(3, "account-1")),
        "{}",
        parked[0].error
    );
    assert!(
        parked[1].error.contains(&named(4, "account-2")),
        "{}",
        parked[1].error
    );
    assert_eq!(
        totals(&store, &table).await[&"account-1".to_owned()],
        (17, 3)
    );
}

/// The bonus service: one grant per credit it hears of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum BonusEvent {
    Granted { amount: u64 },
}

#[derive(Debug, Clone, Command)]
enum BonusCommand {
    Grant { id: String, amount: u64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum BonusError {}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "bonus", event = BonusEvent, command = BonusCommand, error = BonusError)]
struct Bonus {
    total: u64,
}

impl Bonus {
    fn decide(&self, command: BonusCommand) -> Result<Vec<BonusEvent>, BonusError> {
        let BonusCommand::Grant { amount, .. } = command;
        Ok(vec![BonusEvent::Granted { amount }])
    }

    fn apply(&mut self, event: &BonusEvent) {
        let BonusEvent::Granted { amount } = event;
        self.total += amount;
    }
}

/// Reacts to each credit of another service with a command of its own.
struct Grants {
    bonus: Repository<Bonus, MemoryStore>,
    /// Positions that fail once, after their command ran: the batch rolls
    /// back and is delivered again.
    fail_once: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
}

impl Projection for Grants {
    type Event = LedgerEvent;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        "grants"
    }

    fn handles(&self) -> &[&str] {
        &["Credited"]
    }

    async fn apply(
        &self,
        _tx: &mut PgConnection,
        event: &RecordedEvent<LedgerEvent>,
    ) -> Result<(), HandlerError> {
        let command = BonusCommand::Grant {
            id: "pool".to_owned(),
            amount: 1,
        };
        // The command id comes from the event id: a redelivered event
        // (the batch was not committed when the consumer died) gets the
        // first outcome back instead of a second grant.
        self.bonus
            .execute_with(command, CommandContext::caused_by(event))
            .await
            .map_err(|e| HandlerError::from(e.to_string()))?;
        if self
            .fail_once
            .lock()
            .unwrap()
            .remove(&event.global_position)
        {
            return Err("a failure after the command ran".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_to_a_redelivered_event_executes_its_command_once() {
    let client = shared_client().await;
    let (stream, prefix) = unique("react");
    let (_, _) = origin(&client, &stream, &prefix).await;
    let (store, _) = read_model().await;
    let bonus_store = MemoryStore::new();
    let bonus = Repository::<Bonus, _>::new(bonus_store.clone());
    let source = JetStreamSource::new(client.clone(), &stream);
    let last = 10_100;
    let mut rng = rand::rng();
    let fail_once = std::sync::Arc::new(std::sync::Mutex::new(
        (1..=last).filter(|p| p % 700 == 0).collect(),
    ));
    let grants = || Grants {
        bonus: bonus.clone(),
        fail_once: fail_once.clone(),
    };
    for _ in 0..4 {
        let handle =
            store.run_projection_from(source.clone(), grants(), ProjectionOptions::default());
        let at = store.checkpoint("grants").await.unwrap() + rng.random_range(500..2_000);
        handle.wait_for(at.min(last), WAIT).await.unwrap();
        // Killed mid-batch, most likely: some of the batch's commands ran,
        // its checkpoint did not move.
        handle.abort();
    }
    let handle = store.run_projection_from(source, grants(), ProjectionOptions::default());
    handle.wait_for(last, WAIT).await.unwrap();
    handle.stop().await;

    assert!(
        fail_once.lock().unwrap().is_empty(),
        "every planned failure happened"
    );
    let pool = bonus.load("pool").await.unwrap();
    assert_eq!(
        (pool.state.total, pool.version),
        (10_000, 10_000),
        "one grant per credit"
    );
    // Each grant names the credit that caused it.
    let grants = bonus_store.read_all(1, 20_000).await.unwrap();
    let causes: std::collections::HashSet<_> = grants
        .iter()
        .map(|g| g.metadata.causation_id.unwrap())
        .collect();
    assert_eq!(causes.len(), 10_000);
}
