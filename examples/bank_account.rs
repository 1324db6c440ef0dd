//! A bank account, event-sourced: open, deposit, withdraw. Withdrawing more
//! than the balance is refused with a domain error.
//!
//! A projection keeps a read model — the list of accounts with their
//! balances — current from the log, and the example answers from it.
//!
//! Run it with `cargo run --example bank_account` (in memory), or on
//! PostgreSQL with `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo run --example bank_account` (in the schema `bank_example`, which it
//! resets first). Its tests, written with the given/when/then kit, run with
//! `cargo test --example bank_account`.

use std::collections::BTreeMap;
use std::time::Duration;

use es::memory::MemoryStore;
use es::prelude::*;
use es::projection::{
    run_projection, HandlerError, MemoryReadModel, Projection, ProjectionOptions,
};
use es_postgres::sqlx::{self, PgConnection};
use es_postgres::PgEventStore;
use serde::{Deserialize, Serialize};

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

/// What a client asks of an account; `id` names the account.
#[derive(Debug, Clone, Command)]
pub enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: u64 },
    Withdraw { id: String, amount: u64 },
}

/// Why an account refuses a command.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("an amount must be more than zero")]
    ZeroAmount,
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
}

/// An account's state, rebuilt from its events.
#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
pub struct Account {
    open: bool,
    balance: u64,
}

impl Account {
    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            Deposit { amount: 0, .. } | Withdraw { amount: 0, .. } => Err(AccountError::ZeroAmount),
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

/// The read model: one row per account, kept current by a projection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountRow {
    owner: String,
    balance: u64,
}

/// The account list in memory, for the in-memory run: one handler per
/// event type.
#[derive(Projection)]
#[projection(name = "accounts", event = AccountEvent, sink = BTreeMap<String, AccountRow>)]
#[projection(handle(Opened, Deposited, Withdrew))]
struct AccountList;

impl AccountList {
    async fn opened(
        &self,
        rows: &mut BTreeMap<String, AccountRow>,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Opened { owner } = &event.data else {
            return Err(unexpected(event));
        };
        rows.insert(
            account_id(event),
            AccountRow {
                owner: owner.clone(),
                balance: 0,
            },
        );
        Ok(())
    }

    async fn deposited(
        &self,
        rows: &mut BTreeMap<String, AccountRow>,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Deposited { amount } = &event.data else {
            return Err(unexpected(event));
        };
        rows.entry(account_id(event)).or_default().balance += amount;
        Ok(())
    }

    async fn withdrew(
        &self,
        rows: &mut BTreeMap<String, AccountRow>,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Withdrew { amount } = &event.data else {
            return Err(unexpected(event));
        };
        rows.entry(account_id(event)).or_default().balance -= amount;
        Ok(())
    }
}

/// The account list in PostgreSQL: the handlers write through the runner's
/// transaction, which also moves the projection's checkpoint.
#[derive(Projection)]
#[projection(name = "accounts", event = AccountEvent, sink = PgConnection)]
#[projection(handle(Opened, Deposited, Withdrew))]
struct AccountTable;

impl AccountTable {
    async fn opened(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Opened { owner } = &event.data else {
            return Err(unexpected(event));
        };
        sqlx::query("INSERT INTO bank_example.accounts (id, owner, balance) VALUES ($1, $2, 0)")
            .bind(account_id(event))
            .bind(owner.as_str())
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn deposited(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Deposited { amount } = &event.data else {
            return Err(unexpected(event));
        };
        sqlx::query("UPDATE bank_example.accounts SET balance = balance + $2 WHERE id = $1")
            .bind(account_id(event))
            .bind(i64::try_from(*amount)?)
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn withdrew(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Withdrew { amount } = &event.data else {
            return Err(unexpected(event));
        };
        sqlx::query("UPDATE bank_example.accounts SET balance = balance - $2 WHERE id = $1")
            .bind(account_id(event))
            .bind(i64::try_from(*amount)?)
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// A handler given another event type than its own (the derive calls each
/// handler with its variant only, so this never happens).
fn unexpected(event: &RecordedEvent<AccountEvent>) -> HandlerError {
    format!("no handler for {:?}", event.data).into()
}

fn account_id<E>(event: &RecordedEvent<E>) -> String {
    let stream = event.stream_id.as_str();
    stream.strip_prefix("account-").unwrap_or(stream).to_owned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            println!("store: PostgreSQL at {url}, schema bank_example\n");
            let reset = sqlx::PgPool::connect(&url).await?;
            sqlx::query("DROP SCHEMA IF EXISTS bank_example CASCADE")
                .execute(&reset)
                .await?;
            let store = PgEventStore::builder()
                .schema("bank_example")
                .connect(&url)
                .await?;
            sqlx::query(
                "CREATE TABLE bank_example.accounts \
                 (id text PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL)",
            )
            .execute(store.pool())
            .await?;
            let projection = store.run_projection(AccountTable, ProjectionOptions::default());
            let last = run(store.clone()).await?;
            // Read-your-writes: answer from the read model once it has
            // processed the last command's events.
            projection.wait_for(last, Duration::from_secs(10)).await?;
            println!("\n== read model: bank_example.accounts, kept by the projection ==");
            let rows: Vec<(String, String, i64)> =
                sqlx::query_as("SELECT id, owner, balance FROM bank_example.accounts ORDER BY id")
                    .fetch_all(store.pool())
                    .await?;
            for (id, owner, balance) in rows {
                println!("  {id}: owner {owner}, balance {balance}");
            }
            let status = projection.stop().await;
            println!(
                "  (projection `{}` at position {}, {} events processed)",
                status.name, status.position, status.processed
            );
            Ok(())
        }
        Err(_) => {
            println!("store: in memory (set DATABASE_URL to use PostgreSQL)\n");
            let store = MemoryStore::new();
            let rows = MemoryReadModel::<BTreeMap<String, AccountRow>>::default();
            let projection = run_projection(
                store.clone(),
                AccountList,
                rows.clone(),
                ProjectionOptions::default(),
            );
            let last = run(store).await?;
            projection.wait_for(last, Duration::from_secs(10)).await?;
            println!("\n== read model: the account list, kept by the projection ==");
            for (id, row) in rows.read(|rows| rows.clone()) {
                println!("  {id}: owner {}, balance {}", row.owner, row.balance);
            }
            let status = projection.stop().await;
            println!(
                "  (projection `{}` at position {}, {} events processed)",
                status.name, status.position, status.processed
            );
            Ok(())
        }
    }
}

/// Runs the commands and prints what happened; returns the global position
/// of the last stored event.
async fn run<S: EventStore>(store: S) -> Result<u64, Box<dyn std::error::Error>> {
    let accounts = Repository::<Account, _>::new(store.clone());

    let commands = [
        AccountCommand::Open {
            id: "alice".into(),
            owner: "Alice".into(),
        },
        AccountCommand::Deposit {
            id: "alice".into(),
            amount: 100,
        },
        AccountCommand::Withdraw {
            id: "alice".into(),
            amount: 30,
        },
        AccountCommand::Withdraw {
            id: "alice".into(),
            amount: 500,
        },
        AccountCommand::Open {
            id: "bob".into(),
            owner: "Bob".into(),
        },
        AccountCommand::Deposit {
            id: "bob".into(),
            amount: 25,
        },
    ];

    println!("== commands ==");
    for command in commands {
        println!("> {command:?}");
        match accounts.execute(command).await {
            Ok(outcome) => {
                for e in &outcome.events {
                    println!(
                        "  stored {:?} in `{}` at version {}, global position {}",
                        e.data, e.stream_id, e.stream_version, e.global_position
                    );
                }
            }
            Err(CommandError::Rejected(reason)) => println!("  rejected: {reason}"),
            Err(other) => return Err(other.into()),
        }
    }

    println!("\n== the global log ==");
    let log = store.read_all(1, usize::MAX).await?;
    for e in &log {
        println!(
            "  #{} {} v{} {} {}",
            e.global_position, e.stream_id, e.stream_version, e.event_type, e.data
        );
    }

    println!("\n== final balances ==");
    for id in ["alice", "bob"] {
        let account = accounts.load(id).await?;
        println!(
            "  {id}: {} (after {} events)",
            account.state.balance, account.version
        );
    }
    Ok(log.last().map_or(0, |e| e.global_position))
}

#[cfg(test)]
mod tests {
    use super::*;
    use es::testing::given;

    fn opened() -> AccountEvent {
        AccountEvent::Opened {
            owner: "Alice".into(),
        }
    }

    #[test]
    fn opening_a_new_account() {
        given::<Account>([])
            .when(AccountCommand::Open {
                id: "a".into(),
                owner: "Alice".into(),
            })
            .then_expect_events([opened()]);
    }

    #[test]
    fn an_account_opens_once() {
        given::<Account>([opened()])
            .when(AccountCommand::Open {
                id: "a".into(),
                owner: "Alice".into(),
            })
            .then_expect_error(AccountError::AlreadyOpen);
    }

    #[test]
    fn depositing_into_an_open_account() {
        let account = given::<Account>([opened(), AccountEvent::Deposited { amount: 10 }])
            .when(AccountCommand::Deposit {
                id: "a".into(),
                amount: 5,
            })
            .then_expect_events([AccountEvent::Deposited { amount: 5 }]);
        assert_eq!(account.balance, 15);
    }

    #[test]
    fn depositing_into_an_unopened_account_is_refused() {
        given::<Account>([])
            .when(AccountCommand::Deposit {
                id: "a".into(),
                amount: 5,
            })
            .then_expect_error(AccountError::NotOpen);
    }

    #[test]
    fn a_zero_amount_is_refused() {
        given::<Account>([opened()])
            .when(AccountCommand::Withdraw {
                id: "a".into(),
                amount: 0,
            })
            .then_expect_error(AccountError::ZeroAmount);
    }

    #[test]
    fn withdrawing_within_the_balance() {
        let account = given::<Account>([opened(), AccountEvent::Deposited { amount: 100 }])
            .when(AccountCommand::Withdraw {
                id: "a".into(),
                amount: 100,
            })
            .then_expect_events([AccountEvent::Withdrew { amount: 100 }]);
        assert_eq!(account.balance, 0);
    }

    #[test]
    fn an_overdraft_is_refused_with_the_balance() {
        given::<Account>([
            opened(),
            AccountEvent::Deposited { amount: 100 },
            AccountEvent::Withdrew { amount: 30 },
        ])
        .when(AccountCommand::Withdraw {
            id: "a".into(),
            amount: 500,
        })
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 70,
            requested: 500,
        });
    }

    #[tokio::test]
    async fn the_example_runs_against_the_memory_store() {
        let store = MemoryStore::new();
        let accounts = Repository::<Account, _>::new(store.clone());
        accounts
            .execute(AccountCommand::Open {
                id: "x".into(),
                owner: "X".into(),
            })
            .await
            .unwrap();
        let outcome = accounts
            .execute(AccountCommand::Deposit {
                id: "x".into(),
                amount: 40,
            })
            .await
            .unwrap();
        assert_eq!(outcome.version, 2);
        assert_eq!(outcome.events[0].global_position, 2);
        assert_eq!(
            outcome.events[0].data,
            AccountEvent::Deposited { amount: 40 }
        );
        let refused = accounts
            .execute(AccountCommand::Withdraw {
                id: "x".into(),
                amount: 41,
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.rejection(),
            Some(&AccountError::InsufficientFunds {
                balance: 40,
                requested: 41
            })
        );
        assert_eq!(store.event_count(), 2, "a refused command writes nothing");
        assert_eq!(accounts.load("x").await.unwrap().state.balance, 40);
    }
}
