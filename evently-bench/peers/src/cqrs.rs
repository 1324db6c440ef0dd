//! The bank on cqrs-es 0.5 with postgres-es 0.5, as their documentation
//! and cqrs-demo write it: the default event store (`postgres_cqrs`) and
//! the snapshot store (`postgres_snapshot_cqrs`, a snapshot every 100
//! events), which is the best of its W2 figures.

use std::sync::Arc;
use std::time::Instant;

use cqrs_es::event_sink::EventSink;
use cqrs_es::mem_store::MemStore;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{
    Aggregate, AggregateContext, AggregateError, CqrsFramework, DomainEvent, EventStore,
};
use postgres_es::{postgres_cqrs, postgres_snapshot_cqrs, PostgresCqrs, PostgresEventRepository};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{amount, retrying, schema_pool, Bank, BoxError};

// domain: begin (counted by `domain_lines`)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            AccountEvent::Opened { .. } => "Opened".to_owned(),
            AccountEvent::Deposited { .. } => "Deposited".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    open: bool,
    balance: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            AccountCommand::Open { .. } if self.open => return Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner } => AccountEvent::Opened { owner },
            AccountCommand::Deposit { .. } if !self.open => return Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount } => AccountEvent::Deposited { amount },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

// domain: end

/// The tables of postgres-es's `db/init.sql`.
const TABLES: &str = "
CREATE TABLE events (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL,
    sequence bigint CHECK (sequence >= 0) NOT NULL,
    event_type text NOT NULL, event_version text NOT NULL,
    payload json NOT NULL, metadata json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence));
CREATE TABLE snapshots (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL,
    last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));";

async fn tables(url: &str, schema: &str, pool: u32) -> Result<PgPool, BoxError> {
    let pool = schema_pool(url, schema, pool).await?;
    sqlx::raw_sql(TABLES).execute(&pool).await?;
    Ok(pool)
}

fn conflict(e: &AggregateError<AccountError>) -> bool {
    matches!(e, AggregateError::AggregateConflict)
}

async fn execute(
    cqrs: &PostgresCqrs<Account>,
    id: &str,
    command: AccountCommand,
) -> Result<u32, BoxError> {
    let ((), attempts) = retrying(|| cqrs.execute(id, command.clone()), conflict).await?;
    Ok(attempts)
}

async fn balance(pool: &PgPool, id: &str) -> Result<u64, BoxError> {
    // The documented way to read an aggregate: load it through an event
    // store (here a plain one, so no snapshot shortens the replay).
    let store: PersistedEventStore<PostgresEventRepository, Account> =
        PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()));
    let mut context = store.load_aggregate(id).await?;
    Ok(context.aggregate().balance)
}

async fn seed(pool: &PgPool, id: &str, deposits: usize) -> Result<(), BoxError> {
    let mut payloads = vec![serde_json::to_value(AccountEvent::Opened {
        owner: format!("owner of {id}"),
    })?];
    let mut types = vec!["Opened".to_owned()];
    for d in 0..deposits {
        payloads.push(serde_json::to_value(AccountEvent::Deposited {
            amount: amount(d),
        })?);
        types.push("Deposited".to_owned());
    }
    let sequences: Vec<i64> = (1..=payloads.len() as i64).collect();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'account', $1, s, t, '1.0', p::json, '{}'::json FROM UNNEST($2::bigint[], $3::text[], $4::jsonb[]) AS u(s, t, p)",
    )
    .bind(id)
    .bind(&sequences)
    .bind(&types)
    .bind(&payloads)
    .execute(pool)
    .await?;
    Ok(())
}

/// cqrs-es with `postgres_cqrs` (every command replays the stream), or
/// with `SNAPSHOTS` `postgres_snapshot_cqrs`, a snapshot every 100 events.
#[derive(Clone)]
pub struct CqrsBank<const SNAPSHOTS: bool> {
    cqrs: Arc<PostgresCqrs<Account>>,
    pool: PgPool,
}

impl<const SNAPSHOTS: bool> Bank for CqrsBank<SNAPSHOTS> {
    const NAME: &'static str = if SNAPSHOTS {
        "cqrs-es (snapshots)"
    } else {
        "cqrs-es"
    };

    async fn setup(url: &str, schema: &str, pool: u32) -> Result<Self, BoxError> {
        let pool = tables(url, schema, pool).await?;
        let cqrs = if SNAPSHOTS {
            postgres_snapshot_cqrs(pool.clone(), vec![], 100, ())
        } else {
            postgres_cqrs(pool.clone(), vec![], ())
        };
        Ok(CqrsBank {
            cqrs: Arc::new(cqrs),
            pool,
        })
    }

    async fn open(&self, id: &str) -> Result<(), BoxError> {
        execute(
            &self.cqrs,
            id,
            AccountCommand::Open {
                owner: format!("owner of {id}"),
            },
        )
        .await?;
        Ok(())
    }

    async fn deposit(&self, id: &str, amount: u64) -> Result<u32, BoxError> {
        execute(&self.cqrs, id, AccountCommand::Deposit { amount }).await
    }

    async fn balance(&self, id: &str) -> Result<u64, BoxError> {
        balance(&self.pool, id).await
    }

    async fn seed(&self, id: &str, deposits: usize) -> Result<(), BoxError> {
        seed(&self.pool, id, deposits).await
    }
}

/// W1 on cqrs-es's `MemStore`, one task.
pub async fn w1(accounts: usize, deposits: usize) -> Result<f64, BoxError> {
    let cqrs = CqrsFramework::new(MemStore::<Account>::default(), vec![], ());
    let started = Instant::now();
    for a in 0..accounts {
        let id = format!("bench-{a}");
        cqrs.execute(
            &id,
            AccountCommand::Open {
                owner: format!("owner of {id}"),
            },
        )
        .await?;
        for d in 0..deposits {
            cqrs.execute(&id, AccountCommand::Deposit { amount: amount(d) })
                .await?;
        }
    }
    Ok((accounts * (1 + deposits)) as f64 / started.elapsed().as_secs_f64())
}
