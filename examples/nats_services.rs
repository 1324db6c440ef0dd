//! Two services and a client, over NATS JetStream and one PostgreSQL
//! server, each service in a schema of its own:
//!
//! - **accounts** owns the account aggregate, serves its commands by
//!   virtual address (`accounts.account`, any number of instances) and
//!   publishes its log to the JetStream stream `EVENTLY_EXAMPLE_ACCOUNTS`
//!   on `events.accounts.<aggregate type>.<stream id>`;
//! - **reporting** keeps a balances table from that stream, never from the
//!   accounts tables;
//! - a **client** sends commands to `accounts` by its service name, gets
//!   the aggregate's own error back for a refused one, reads the balances
//!   from reporting, and lists the instances of `accounts`.
//!
//! Run it with PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and NATS with JetStream at
//! `NATS_URL` (default `127.0.0.1:4222`):
//! `cargo run --example nats_services --features postgres,nats`. It resets
//! its schemas (`nats_example_accounts`, `nats_example_reporting`) and its
//! stream first. The services run in one process here to keep the example
//! short; each has its own connections and shares nothing else.

use std::time::Duration;

use evently::nats::async_nats;
use evently::nats::{
    discover, CommandService, JetStreamSource, Publisher, PublisherConfig, RemoteError,
    RemoteRepository,
};
use evently::postgres::sqlx::{self, PgConnection};
use evently::postgres::PgEventStore;
use evently::prelude::*;
use evently::projection::{HandlerError, ProjectionOptions};
use serde::{Deserialize, Serialize};

// ---- the accounts service's domain ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

/// Serialize + Deserialize: commands travel as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
pub enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: u64 },
    Withdraw { id: String, amount: u64 },
}

/// Serialize + Deserialize: a refusal reaches the caller as this value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
pub struct Account {
    open: bool,
    balance: u64,
}

impl Account {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
            Withdraw { amount, .. } if amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: amount,
                })
            }
            Withdraw { amount, .. } => Ok(vec![AccountEvent::Withdrew { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
}

// ---- the reporting service's read model ----

/// Balances per account, from the accounts stream.
struct Balances;

impl Projection for Balances {
    type Event = AccountEvent;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        "balances"
    }

    fn handles(&self) -> &[&str] {
        &["Deposited", "Withdrew"]
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let delta = match event.data {
            AccountEvent::Deposited { amount } => amount as i64,
            AccountEvent::Withdrew { amount } => -(amount as i64),
            AccountEvent::Opened { .. } => 0,
        };
        sqlx::query(
            "INSERT INTO nats_example_reporting.balances AS b (account, balance) VALUES ($1, $2) \
             ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance",
        )
        .bind(event.stream_id.as_str())
        .bind(delta)
        .execute(tx)
        .await?;
        Ok(())
    }
}

const STREAM: &str = "EVENTLY_EXAMPLE_ACCOUNTS";
/// The subject prefix of the published events: apart from the service's
/// command subjects (`accounts.…`), which a stream on `accounts.>` would
/// capture too.
const EVENTS: &str = "events.accounts";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into());
    reset(&database, &nats).await?;

    // accounts: serve commands, publish the log.
    let accounts_store = PgEventStore::builder()
        .schema("nats_example_accounts")
        .connect(&database)
        .await?;
    let accounts_nats = async_nats::connect(&nats).await?;
    let mut accounts = CommandService::start(&accounts_nats, "accounts", "1.0.0").await?;
    accounts
        .serve(Repository::<Account, _>::new(accounts_store.clone()), 32)
        .await?;
    let publisher = Publisher::new(
        accounts_store.clone(),
        accounts_nats.clone(),
        PublisherConfig::new(STREAM, EVENTS),
    );
    publisher.ensure_stream().await?;
    let publishing = publisher.spawn();

    // reporting: its own schema, fed by the stream.
    let reporting_store = PgEventStore::builder()
        .schema("nats_example_reporting")
        .connect(&database)
        .await?;
    sqlx::query("CREATE TABLE nats_example_reporting.balances (account text PRIMARY KEY, balance bigint NOT NULL)")
        .execute(reporting_store.pool())
        .await?;
    let reporting_nats = async_nats::connect(&nats).await?;
    let balances = reporting_store.run_projection_from(
        JetStreamSource::new(reporting_nats, STREAM).filter(format!("{EVENTS}.account.>")),
        Balances,
        ProjectionOptions::default(),
    );

    // A client: commands by service name.
    let client = async_nats::connect(&nats).await?;
    let remote = RemoteRepository::<Account>::new(client.clone(), "accounts");
    for (id, owner) in [("alice", "Alice"), ("bob", "Bob")] {
        let opened = remote
            .execute(AccountCommand::Open {
                id: id.into(),
                owner: owner.into(),
            })
            .await?;
        println!(
            "open {id}: {} at version {}",
            opened.stream_id, opened.version
        );
    }
    let deposit = remote
        .execute(AccountCommand::Deposit {
            id: "alice".into(),
            amount: 100,
        })
        .await?;
    println!(
        "deposit 100 to alice: {:?}, position {}",
        deposit.events[0].data, deposit.events[0].global_position
    );
    remote
        .execute(AccountCommand::Deposit {
            id: "bob".into(),
            amount: 25,
        })
        .await?;
    remote
        .execute(AccountCommand::Withdraw {
            id: "alice".into(),
            amount: 30,
        })
        .await?;
    match remote
        .execute(AccountCommand::Withdraw {
            id: "bob".into(),
            amount: 500,
        })
        .await
    {
        Err(RemoteError::Rejected(refusal)) => {
            println!("withdraw 500 from bob: refused by the aggregate: {refusal:?}")
        }
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    // The reporting service catches up from the stream.
    let head = accounts_store.head_position().await?;
    if !publisher.wait_for(head, Duration::from_secs(30)).await {
        return Err("the log was not published in time".into());
    }
    let js = async_nats::jetstream::new(client.clone());
    let last = js
        .get_stream(STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    balances.wait_for(last, Duration::from_secs(30)).await?;
    println!("\n== reporting: balances, from the accounts stream ==");
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT account, balance FROM nats_example_reporting.balances ORDER BY account",
    )
    .fetch_all(reporting_store.pool())
    .await?;
    for (account, balance) in &rows {
        println!("  {account}: {balance}");
    }
    if rows
        != [
            ("account-alice".to_owned(), 70),
            ("account-bob".to_owned(), 25),
        ]
    {
        return Err(format!("unexpected balances: {rows:?}").into());
    }
    println!(
        "publisher: {:?}, lag {}",
        publisher.stats(),
        publisher.lag().await?
    );

    println!("\n== discovery: instances of `accounts` ==");
    for instance in discover(&client, "accounts", Duration::from_millis(300)).await? {
        println!(
            "  {} v{}: {:?}, {} requests, {} errors",
            instance.id, instance.version, instance.endpoints, instance.requests, instance.errors
        );
    }

    balances.stop().await;
    publishing.abort();
    accounts.stop().await;
    client.flush().await?;
    Ok(())
}

/// Starts from nothing: both schemas and the stream.
async fn reset(database: &str, nats: &str) -> Result<(), Box<dyn std::error::Error>> {
    use sqlx::Connection;
    let mut admin = PgConnection::connect(database).await?;
    for schema in ["nats_example_accounts", "nats_example_reporting"] {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut admin)
            .await?;
    }
    let client = async_nats::connect(nats).await?;
    // The stream holds the log it was published from: a new log needs a new stream.
    let _ = async_nats::jetstream::new(client)
        .delete_stream(STREAM)
        .await;
    Ok(())
}
