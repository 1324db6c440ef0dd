//! The bank on esrs 0.18 (PostgreSQL store), as its README writes it: an
//! aggregate of pure functions, `AggregateManager::load` then
//! `handle_command`. Ids are UUIDs in esrs: an account's name maps to a
//! UUID v5.

use std::sync::Arc;

use esrs::manager::AggregateManager;
use esrs::store::postgres::{PgStore, PgStoreBuilder, PgStoreError};
use esrs::{Aggregate, AggregateState};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{amount, retrying, schema_pool, Bank, BoxError};

// domain: begin (counted by `domain_lines`)
pub struct Account;

#[derive(Debug, Default, Clone)]
pub struct AccountState {
    open: bool,
    balance: u64,
}

pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle_command(
        state: &Self::State,
        command: Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error> {
        match command {
            AccountCommand::Open { .. } if state.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened { owner }]),
            AccountCommand::Deposit { .. } if !state.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount }]),
        }
    }

    fn apply_event(state: Self::State, event: Self::Event) -> Self::State {
        match event {
            AccountEvent::Opened { .. } => AccountState {
                open: true,
                ..state
            },
            AccountEvent::Deposited { amount } => AccountState {
                balance: state.balance + amount,
                ..state
            },
        }
    }
}

// domain: end

fn account_id(id: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, id.as_bytes())
}

/// A second writer took the next sequence number first: esrs's unique
/// `(aggregate_id, sequence_number)` index refused this one.
fn conflict(e: &BoxError) -> bool {
    matches!(
        e.downcast_ref::<PgStoreError>(),
        Some(PgStoreError::Sqlx(sqlx::Error::Database(db))) if db.is_unique_violation()
    )
}

#[derive(Clone)]
pub struct EsrsBank {
    manager: Arc<AggregateManager<PgStore<Account>>>,
    pool: PgPool,
}

impl EsrsBank {
    async fn command(
        &self,
        id: &str,
        command: impl Fn() -> AccountCommand,
    ) -> Result<u32, BoxError> {
        let id = account_id(id);
        let ((), attempts) = retrying(
            || async {
                let state = self
                    .manager
                    .load(id)
                    .await?
                    .unwrap_or_else(|| AggregateState::with_id(id));
                match self.manager.handle_command(state, command()).await? {
                    Ok(_) => Ok(()),
                    Err(refused) => Err(BoxError::from(refused)),
                }
            },
            conflict,
        )
        .await?;
        Ok(attempts)
    }
}

impl Bank for EsrsBank {
    const NAME: &'static str = "esrs";

    async fn setup(url: &str, schema: &str, pool: u32) -> Result<Self, BoxError> {
        let pool = schema_pool(url, schema, pool).await?;
        let store: PgStore<Account> = PgStoreBuilder::new(pool.clone()).try_build().await?;
        Ok(EsrsBank {
            manager: Arc::new(AggregateManager::new(store)),
            pool,
        })
    }

    async fn open(&self, id: &str) -> Result<(), BoxError> {
        let owner = format!("owner of {id}");
        self.command(id, || AccountCommand::Open {
            owner: owner.clone(),
        })
        .await?;
        Ok(())
    }

    async fn deposit(&self, id: &str, amount: u64) -> Result<u32, BoxError> {
        self.command(id, || AccountCommand::Deposit { amount })
            .await
    }

    async fn balance(&self, id: &str) -> Result<u64, BoxError> {
        let state = self
            .manager
            .load(account_id(id))
            .await?
            .ok_or_else(|| format!("esrs: no account {id}"))?;
        Ok(state.into_inner().balance)
    }

    async fn seed(&self, id: &str, deposits: usize) -> Result<(), BoxError> {
        let mut payloads = vec![serde_json::to_value(AccountEvent::Opened {
            owner: format!("owner of {id}"),
        })?];
        for d in 0..deposits {
            payloads.push(serde_json::to_value(AccountEvent::Deposited {
                amount: amount(d),
            })?);
        }
        let sequences: Vec<i32> = (1..=payloads.len() as i32).collect();
        sqlx::query(
            "INSERT INTO account_events (id, aggregate_id, payload, occurred_on, sequence_number)
             SELECT gen_random_uuid(), $1, p, now(), s FROM UNNEST($2::int[], $3::jsonb[]) AS u(s, p)",
        )
        .bind(account_id(id))
        .bind(&sequences)
        .bind(&payloads)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
