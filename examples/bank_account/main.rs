//! A bank account, event-sourced: open, deposit, withdraw. Withdrawing more
//! than the balance is refused with a domain error.
//!
//! Transfers between accounts run through a process manager: the source
//! sends the money, the process credits the target, and when the target
//! refuses (an account never opened) or the credit does not come within
//! 30 s, it returns the money to the source.
//!
//! A view keeps a read model — one document per account with its owner and
//! balance — current from the log, and the example answers from it: the
//! same view type on both stores.
//!
//! Run it with `cargo run --example bank_account` (in memory), with
//! `cargo run --example bank_account -- --store sqlite:bank.db` (in a
//! SQLite file: run it again and it continues where the first run stopped),
//! or with `-- --store postgres` (at `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, in the schema `bank_example`
//! or `$BANK_SCHEMA`, which it resets first). `BANK_STORE` may name the
//! store instead of `--store`; without either, a set `DATABASE_URL` means
//! PostgreSQL. Its tests, written with the given/when/then kit, run with
//! `cargo test --example bank_account`.

use std::time::Duration;

use evently::deadline::{DeadlineStore, SystemClock};
use evently::memory::MemoryStore;
use evently::prelude::*;
use evently::process::{process_status, run_process, ProcessOptions};
use evently::projection::ProjectionOptions;
use evently::view::{View, ViewStore};
use evently::ProjectionStore;
use evently_postgres::sqlx;
use evently_postgres::PgEventStore;
use evently_sqlite::SqliteEventStore;
use serde::{Deserialize, Serialize};

mod transfer;
use transfer::{Stage, Transfer};

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    Opened {
        owner: String,
    },
    Deposited {
        amount: u64,
    },
    Withdrew {
        amount: u64,
    },
    TransferSent {
        transfer: String,
        to: String,
        amount: u64,
    },
    TransferReceived {
        transfer: String,
        amount: u64,
    },
    TransferReturned {
        transfer: String,
        amount: u64,
    },
}

/// What a client asks of an account; `id` names the account.
#[derive(Debug, Clone, PartialEq, Command)]
pub enum AccountCommand {
    Open {
        id: String,
        owner: String,
    },
    Deposit {
        id: String,
        amount: u64,
    },
    Withdraw {
        id: String,
        amount: u64,
    },
    Transfer {
        id: String,
        to: String,
        amount: u64,
        transfer: String,
    },
    Receive {
        id: String,
        amount: u64,
        transfer: String,
    },
    Return {
        id: String,
        amount: u64,
        transfer: String,
    },
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
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            Deposit { amount: 0, .. } | Withdraw { amount: 0, .. } | Transfer { amount: 0, .. } => {
                Err(AccountError::ZeroAmount)
            }
            Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
            Withdraw { amount, .. } | Transfer { amount, .. } if amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: amount,
                })
            }
            Withdraw { amount, .. } => Ok(vec![AccountEvent::Withdrew { amount }]),
            Transfer {
                to,
                amount,
                transfer,
                ..
            } => Ok(vec![AccountEvent::TransferSent {
                transfer,
                to,
                amount,
            }]),
            Receive {
                amount, transfer, ..
            } => Ok(vec![AccountEvent::TransferReceived { transfer, amount }]),
            Return {
                amount, transfer, ..
            } => Ok(vec![AccountEvent::TransferReturned { transfer, amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Opened { .. } = event {
            self.open = true;
        }
        self.balance = balance_after(self.balance, event);
    }
}

/// An account's balance after `event`.
fn balance_after(balance: u64, event: &AccountEvent) -> u64 {
    match event {
        AccountEvent::Opened { .. } => balance,
        AccountEvent::Deposited { amount }
        | AccountEvent::TransferReceived { amount, .. }
        | AccountEvent::TransferReturned { amount, .. } => balance + amount,
        AccountEvent::Withdrew { amount } | AccountEvent::TransferSent { amount, .. } => {
            balance - amount
        }
    }
}

/// The read model: one document per account, kept by a view — the same
/// type in memory and in PostgreSQL (a `jsonb` table the framework creates).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountView {
    owner: String,
    balance: u64,
}

impl View for AccountView {
    type Event = AccountEvent;

    fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
        if let AccountEvent::Opened { owner } = &event.data {
            self.owner = owner.clone();
        }
        self.balance = balance_after(self.balance, &event.data);
    }
}

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    // `bank_account es …`: the operator's commands (`evently-cli`), with
    // this service's view registered, so `es rebuild accounts` and `es
    // retry accounts` can run its code.
    if std::env::args().nth(1).as_deref() == Some("es") {
        let cli = evently_cli::Cli::new().view::<AccountView>("accounts");
        let args = std::env::args_os().skip(1);
        return Ok(cli
            .run_with(args, &mut std::io::stdout(), &mut std::io::stderr())
            .await);
    }
    let store = match store_choice(std::env::args().skip(1)) {
        Ok(store) => store,
        Err(message) => {
            eprintln!("bank_account: {message}");
            eprintln!("usage: bank_account [--store memory|sqlite:PATH|postgres]  (or BANK_STORE)");
            return Ok(std::process::ExitCode::from(2));
        }
    };
    match store {
        StoreChoice::Postgres(url) => {
            let schema = std::env::var("BANK_SCHEMA").unwrap_or_else(|_| "bank_example".into());
            if !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!("BANK_SCHEMA {schema:?}: use a-z, 0-9 and _").into());
            }
            println!("store: PostgreSQL at {url}, schema {schema} (reset first)\n");
            let reset = sqlx::PgPool::connect(&url).await?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&reset)
                .await?;
            let store = PgEventStore::builder()
                .schema(&schema)
                .connect(&url)
                .await?;
            run_with_view(store).await?;
        }
        StoreChoice::Sqlite(path) => {
            let store = SqliteEventStore::open(&path).await?;
            let earlier = store.head_position().await?;
            if earlier == 0 {
                println!("store: SQLite in {}, new\n", path.display());
            } else {
                println!(
                    "store: SQLite in {}, continuing after the {earlier} events of earlier runs\n",
                    path.display()
                );
            }
            run_with_view(store).await?;
        }
        StoreChoice::Memory => {
            println!("store: in memory (--store sqlite:PATH keeps the log in a file)\n");
            run_with_view(MemoryStore::new()).await?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Where the example keeps its log.
#[derive(Debug, PartialEq)]
enum StoreChoice {
    /// In memory: gone when the example ends.
    Memory,
    /// In a SQLite file: a second run continues where the first stopped.
    Sqlite(std::path::PathBuf),
    /// On PostgreSQL at this URL (`DATABASE_URL`), in a schema reset first.
    Postgres(String),
}

/// The store named by `--store` (or `BANK_STORE`); without either,
/// PostgreSQL when `DATABASE_URL` is set, else memory.
fn store_choice(args: impl Iterator<Item = String>) -> Result<StoreChoice, String> {
    let mut named = std::env::var("BANK_STORE").ok();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.strip_prefix("--store") {
            Some("") => named = Some(args.next().ok_or("--store needs a value")?),
            Some(value) if value.starts_with('=') => named = Some(value[1..].to_owned()),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let url = || {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    };
    match named.as_deref() {
        None if std::env::var("DATABASE_URL").is_ok() => Ok(StoreChoice::Postgres(url())),
        None | Some("memory") => Ok(StoreChoice::Memory),
        Some("postgres") => Ok(StoreChoice::Postgres(url())),
        Some(other) => match other.strip_prefix("sqlite:") {
            Some("") => Err("sqlite: needs a file, as in sqlite:bank.db".into()),
            Some(path) => Ok(StoreChoice::Sqlite(path.into())),
            None => Err(format!(
                "unknown store {other:?}: memory, sqlite:PATH or postgres"
            )),
        },
    }
}

/// Runs the commands on `store`, then answers from the view.
async fn run_with_view<S>(store: S) -> Result<(), Box<dyn std::error::Error>>
where
    S: EventStore + ViewStore + CommandStore + ProjectionStore + DeadlineStore,
{
    let accounts = store
        .run_view::<AccountView>("accounts", ProjectionOptions::default())
        .await?;
    let last = run(store).await?;
    // Read-your-writes: answer from the view once it has processed the
    // last command's events.
    accounts.wait_for(last, Duration::from_secs(10)).await?;
    println!("\n== read model: the view `accounts`, one document per account ==");
    for account in accounts.list(None, 100).await?.documents {
        let AccountView { owner, balance } = account.doc;
        println!("  {}: owner {owner}, balance {balance}", account.key);
    }
    let status = accounts.stop().await;
    println!(
        "  (projection `{}` at position {}, {} events processed)",
        status.name, status.position, status.processed
    );
    Ok(())
}

/// Runs the commands and prints what happened; returns the global position
/// of the last stored event.
async fn run<S>(store: S) -> Result<u64, Box<dyn std::error::Error>>
where
    S: EventStore + CommandStore + ProjectionStore + DeadlineStore,
{
    let accounts = Repository::<Account, _>::new(store.clone());
    let start = store.head_position().await?;

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

    // Transfers: a process manager follows the log, credits the target
    // through the accounts' repository, and returns the money when the
    // target refuses (carol has no account).
    println!("\n== transfers, through the process manager `transfer` ==");
    let transfers = Repository::<Transfer, _>::new(store.clone());
    let running = run_process(
        transfers.clone(),
        store.clone(),
        accounts.clone(),
        SystemClock,
        ProcessOptions::default(),
    );
    // Transfer ids are unique in the log: a run on a store that earlier
    // runs wrote to goes on numbering.
    let earlier = store
        .read_all(1, usize::MAX)
        .await?
        .iter()
        .filter(|e| &*e.event_type == "TransferSent")
        .count();
    let ids: Vec<String> = (1..=2).map(|n| format!("t-{}", earlier + n)).collect();
    for (transfer, to, amount) in [(&ids[0], "bob", 20), (&ids[1], "carol", 15)] {
        let command = AccountCommand::Transfer {
            id: "alice".into(),
            to: to.into(),
            amount,
            transfer: transfer.clone(),
        };
        println!("> {command:?}");
        accounts.execute(command).await?;
    }
    for transfer in &ids {
        let status = loop {
            let status = process_status(&transfers, transfer).await?;
            if matches!(status.state.stage, Stage::Completed | Stage::Reversed) {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        println!("  {transfer}: {:?}", status.state.stage);
        for e in store
            .read_stream(&Transfer::stream_id(transfer), 1, 100)
            .await?
        {
            println!(
                "    v{} {} {} (caused by {})",
                e.stream_version,
                e.event_type,
                e.data,
                e.metadata
                    .causation_id
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            );
        }
    }
    running.stop().await;

    println!("\n== the global log (this run's events) ==");
    let log = store.read_all(start + 1, usize::MAX).await?;
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
    Ok(log.last().map_or(start, |e| e.global_position))
}

#[cfg(test)]
mod tests {
    use super::*;
    use evently::testing::given;

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

    #[test]
    fn a_transfer_credits_the_target_and_returns_the_money_when_it_is_refused() {
        use crate::transfer::TransferEvent;
        use evently::process::{DeadlineChange, ProcessInput};
        use evently::testing::recorded;
        let sent = AccountEvent::TransferSent {
            transfer: "t".into(),
            to: "bob".into(),
            amount: 20,
        };
        let started = TransferEvent::Started {
            transfer: "t".into(),
            from: "alice".into(),
            to: "bob".into(),
            amount: 20,
        };
        given::<Transfer>([])
            .when(ProcessInput::Event(recorded("account-alice", 3, sent)))
            .then_expect_commands([AccountCommand::Receive {
                id: "bob".into(),
                amount: 20,
                transfer: "t".into(),
            }])
            .then_expect_events([started.clone()]);
        given::<Transfer>([started])
            .when(ProcessInput::Refused {
                command: AccountCommand::Receive {
                    id: "bob".into(),
                    amount: 20,
                    transfer: "t".into(),
                },
                reason: "the account is not open".into(),
            })
            .then_expect_commands([AccountCommand::Return {
                id: "alice".into(),
                amount: 20,
                transfer: "t".into(),
            }])
            .then_expect_deadlines([DeadlineChange::Cancel {
                name: "credit".into(),
            }])
            .then_expect_events([TransferEvent::Failed {
                transfer: "t".into(),
                from: "alice".into(),
                amount: 20,
                reason: "the account is not open".into(),
            }]);
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

    #[test]
    fn the_store_is_chosen_by_flag() {
        let choose = |args: &[&str]| store_choice(args.iter().map(|a| a.to_string()));
        assert_eq!(choose(&["--store", "memory"]), Ok(StoreChoice::Memory));
        assert_eq!(
            choose(&["--store=sqlite:bank.db"]),
            Ok(StoreChoice::Sqlite("bank.db".into()))
        );
        assert!(matches!(
            choose(&["--store", "postgres"]),
            Ok(StoreChoice::Postgres(_))
        ));
        assert_eq!(
            choose(&["--store", "mysql"]),
            Err("unknown store \"mysql\": memory, sqlite:PATH or postgres".into())
        );
        assert_eq!(
            choose(&["--store", "sqlite:"]),
            Err("sqlite: needs a file, as in sqlite:bank.db".into())
        );
        assert_eq!(choose(&["--store"]), Err("--store needs a value".into()));
        assert_eq!(
            choose(&["--verbose"]),
            Err("unexpected argument \"--verbose\"".into())
        );
    }

    #[tokio::test]
    async fn a_second_run_on_the_same_sqlite_file_continues() {
        let dir = std::env::temp_dir().join(format!("bank-example-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bank.db");
        // The second run's two opens are refused: 12 events more, not 14.
        for (run, head, alice, bob) in [(1, 14, 50, 45), (2, 26, 100, 90)] {
            let store = SqliteEventStore::open(&path).await.unwrap();
            let view = store
                .run_view::<AccountView>("accounts", ProjectionOptions::default())
                .await
                .unwrap();
            let last = super::run(store.clone()).await.unwrap();
            assert_eq!(last, head, "run {run}: the log's head");
            view.wait_for(last, Duration::from_secs(10)).await.unwrap();
            let balances: Vec<_> = view
                .list(None, 10)
                .await
                .unwrap()
                .documents
                .into_iter()
                .map(|d| (d.key, d.doc.balance))
                .collect();
            assert_eq!(
                balances,
                [("alice".to_owned(), alice), ("bob".to_owned(), bob)],
                "run {run}"
            );
            view.stop().await;
        }
        // The second run's transfers went on numbering.
        let store = SqliteEventStore::open(&path).await.unwrap();
        let transfers = Repository::<Transfer, _>::new(store);
        let t4 = process_status(&transfers, "t-4").await.unwrap();
        assert_eq!(t4.state.stage, Stage::Reversed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_view_answers_after_the_commands() {
        let store = MemoryStore::new();
        let view = store
            .run_view::<AccountView>("accounts", ProjectionOptions::default())
            .await
            .unwrap();
        let last = run(store.clone()).await.unwrap();
        view.wait_for(last, Duration::from_secs(10)).await.unwrap();
        let page = view.list(None, 10).await.unwrap();
        let accounts: Vec<_> = page
            .documents
            .into_iter()
            .map(|d| (d.key, d.doc.owner, d.doc.balance))
            .collect();
        assert_eq!(
            accounts,
            [
                ("alice".to_owned(), "Alice".to_owned(), 50),
                ("bob".to_owned(), "Bob".to_owned(), 45)
            ]
        );
    }
}
