//! The bank on evently, as its README writes an aggregate: the defaults
//! (the cache of live aggregates on, no snapshots, group commit off).

use std::time::Instant;

use evently::postgres::PgEventStore;
use evently::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{amount, reset_schema, Bank, BoxError};

// domain: begin (counted by `domain_lines`)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

#[derive(Debug, Clone, Command)]
pub enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: u64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
pub struct Account {
    open: bool,
    balance: u64,
}

impl Account {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            AccountCommand::Deposit { .. } if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

// domain: end

/// evently on PostgreSQL with its defaults.
#[derive(Clone)]
pub struct EventlyBank {
    store: PgEventStore,
    repository: Repository<Account, PgEventStore>,
}

impl Bank for EventlyBank {
    const NAME: &'static str = "evently";

    async fn setup(url: &str, schema: &str, pool: u32) -> Result<Self, BoxError> {
        reset_schema(url, schema, false).await?;
        let store = PgEventStore::builder()
            .schema(schema)
            .max_connections(pool)
            .connect(url)
            .await?;
        let mut held = Vec::new();
        for _ in 0..pool {
            held.push(store.pool().acquire().await?);
        }
        drop(held);
        Ok(EventlyBank {
            repository: Repository::new(store.clone()),
            store,
        })
    }

    async fn open(&self, id: &str) -> Result<(), BoxError> {
        self.repository
            .execute(AccountCommand::Open {
                id: id.to_owned(),
                owner: format!("owner of {id}"),
            })
            .await?;
        Ok(())
    }

    async fn deposit(&self, id: &str, amount: u64) -> Result<u32, BoxError> {
        let outcome = self
            .repository
            .execute(AccountCommand::Deposit {
                id: id.to_owned(),
                amount,
            })
            .await?;
        Ok(outcome.attempts)
    }

    async fn balance(&self, id: &str) -> Result<u64, BoxError> {
        let loaded = Repository::<Account, _>::new(self.store.clone())
            .without_cache()
            .load(id)
            .await?;
        Ok(loaded.state.balance)
    }

    async fn seed(&self, id: &str, deposits: usize) -> Result<(), BoxError> {
        let mut events = vec![NewEvent::from_event(
            &AccountEvent::Opened {
                owner: format!("owner of {id}"),
            },
            Metadata::new(),
        )?];
        for d in 0..deposits {
            events.push(NewEvent::from_event(
                &AccountEvent::Deposited { amount: amount(d) },
                Metadata::new(),
            )?);
        }
        self.store
            .append(
                &StreamId::for_aggregate("account", id),
                ExpectedVersion::NoStream,
                events,
            )
            .await?;
        Ok(())
    }
}

/// W1 on the in-memory store, one task.
pub async fn w1(accounts: usize, deposits: usize) -> Result<f64, BoxError> {
    let repository = Repository::<Account, _>::new(evently::memory::MemoryStore::new());
    let started = Instant::now();
    for a in 0..accounts {
        let id = format!("bench-{a}");
        repository
            .execute(AccountCommand::Open {
                id: id.clone(),
                owner: format!("owner of {id}"),
            })
            .await?;
        for d in 0..deposits {
            repository
                .execute(AccountCommand::Deposit {
                    id: id.clone(),
                    amount: amount(d),
                })
                .await?;
        }
    }
    Ok((accounts * (1 + deposits)) as f64 / started.elapsed().as_secs_f64())
}
