//! A bank account, event-sourced: open, deposit, withdraw. Withdrawing more
//! than the balance is refused with a domain error.
//!
//! Run it with `cargo run --example bank_account` (in memory), or on
//! PostgreSQL with `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo run --example bank_account` (in the schema `bank_example`, which it
//! resets first). Its tests, written with the given/when/then kit, run with
//! `cargo test --example bank_account`.

use es::memory::MemoryStore;
use es::prelude::*;
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            println!("store: PostgreSQL at {url}, schema bank_example\n");
            let reset = es_postgres::sqlx::PgPool::connect(&url).await?;
            es_postgres::sqlx::query("DROP SCHEMA IF EXISTS bank_example CASCADE")
                .execute(&reset)
                .await?;
            let store = PgEventStore::builder()
                .schema("bank_example")
                .connect(&url)
                .await?;
            run(store).await
        }
        Err(_) => {
            println!("store: in memory (set DATABASE_URL to use PostgreSQL)\n");
            run(MemoryStore::new()).await
        }
    }
}

async fn run<S: EventStore>(store: S) -> Result<(), Box<dyn std::error::Error>> {
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
    for e in store.read_all(1, usize::MAX).await? {
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
    Ok(())
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
