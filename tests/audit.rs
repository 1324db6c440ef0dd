//! The log as an audit trail, on both stores: idempotent commands (also
//! sent concurrently), the command journal, correlation and causation
//! across aggregates, time travel, closed and erased streams.

use std::sync::Arc;

use evently::prelude::*;
use evently::{AsOf, DecodeErrorKind, JournalOutcome};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[macro_use]
mod common;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: u64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
}

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
struct Account {
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

fn open(id: &str) -> AccountCommand {
    AccountCommand::Open {
        id: id.into(),
        owner: id.to_uppercase(),
    }
}

fn deposit(id: &str, amount: u64) -> AccountCommand {
    AccountCommand::Deposit {
        id: id.into(),
        amount,
    }
}

async fn a_repeated_command_returns_its_first_outcome<S: EventStore + CommandStore>(store: S) {
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute(open("a")).await.unwrap();
    let id = Uuid::now_v7();
    let first = accounts
        .execute_with(deposit("a", 10), CommandContext::new().with_command_id(id))
        .await
        .unwrap();
    let again = accounts
        .execute_with(deposit("a", 10), CommandContext::new().with_command_id(id))
        .await
        .unwrap();
    assert_eq!(
        again.events, first.events,
        "the first outcome, not a new one"
    );
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 10);
    assert_eq!(store.stream_version(&first.stream_id).await.unwrap(), 2);
}

async fn a_command_sent_concurrently_executes_once<S: EventStore + CommandStore>(store: S) {
    let accounts = Arc::new(Repository::<Account, _>::new(store.clone()));
    accounts.execute(open("a")).await.unwrap();
    let id = Uuid::now_v7();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let accounts = Arc::clone(&accounts);
        tasks.push(tokio::spawn(async move {
            accounts
                .execute_with(deposit("a", 7), CommandContext::new().with_command_id(id))
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert!(
        outcomes.windows(2).all(|w| w[0].events == w[1].events),
        "one outcome for all"
    );
    assert_eq!(outcomes[0].events.len(), 1);
    assert_eq!(
        accounts.load("a").await.unwrap().state.balance,
        7,
        "deposited once"
    );
}

async fn the_journal_shows_what_was_asked_and_what_it_caused<S: EventStore + CommandStore>(
    store: S,
) {
    let accounts =
        Repository::<Account, _>::new(store.clone()).with_journal(Journal::AcceptedAndRejected);
    let context = CommandContext::new().with_actor("teller-3");
    accounts
        .execute_with(open("j"), context.clone())
        .await
        .unwrap();
    let refused = accounts.execute(open("j")).await.unwrap_err();
    assert_eq!(refused.rejection(), Some(&AccountError::AlreadyOpen));
    accounts.execute(deposit("j", 5)).await.unwrap();
    let journal = store
        .command_journal(&Account::stream_id("j"))
        .await
        .unwrap();
    let summary: Vec<(String, JournalOutcome)> = journal
        .iter()
        .map(|e| (e.command.command_type.clone(), e.outcome.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "Open".to_owned(),
                JournalOutcome::Accepted {
                    first_version: 1,
                    last_version: 1
                }
            ),
            (
                "Open".to_owned(),
                JournalOutcome::Rejected {
                    error: "the account is already open".into()
                }
            ),
            (
                "Deposit".to_owned(),
                JournalOutcome::Accepted {
                    first_version: 2,
                    last_version: 2
                }
            ),
        ]
    );
    assert_eq!(journal[0].command.command_id, context.command_id);
    assert_eq!(
        journal[0].command.metadata.actor.as_deref(),
        Some("teller-3")
    );
    assert_eq!(
        journal[2]
            .command
            .payload
            .as_ref()
            .unwrap()
            .to_value()
            .unwrap(),
        serde_json::json!({ "Deposit": { "id": "j", "amount": 5 } })
    );
}

async fn a_reaction_carries_its_cause_and_the_correlation<
    S: EventStore + CommandStore + CorrelationStore,
>(
    store: S,
) {
    let accounts = Repository::<Account, _>::new(store.clone());
    let start = CommandContext::new().with_actor("alice");
    let opened = accounts
        .execute_with(open("x"), start.clone())
        .await
        .unwrap();
    let trigger = &opened.events[0];
    // A process manager reacts to the event with a command elsewhere.
    let reaction = CommandContext::caused_by(trigger).with_actor("welcome-bonus");
    accounts.execute(open("y")).await.unwrap();
    let bonus = accounts
        .execute_with(deposit("y", 50), reaction.clone())
        .await
        .unwrap();
    let metadata = &bonus.events[0].metadata;
    assert_eq!(metadata.causation_id, Some(trigger.event_id));
    assert_eq!(metadata.correlation_id, Some(start.command_id));
    assert_eq!(metadata.command_id, Some(reaction.command_id));
    assert_eq!(metadata.actor.as_deref(), Some("welcome-bonus"));
    let trail = store
        .read_correlation(start.command_id, 0, 100)
        .await
        .unwrap();
    let trail: Vec<(String, u64)> = trail
        .iter()
        .map(|e| (e.stream_id.to_string(), e.stream_version))
        .collect();
    assert_eq!(
        trail,
        [("account-x".to_owned(), 1), ("account-y".to_owned(), 2)]
    );
}

async fn an_aggregate_loads_as_it_was<S: EventStore + CommandStore>(store: S) {
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute(open("t")).await.unwrap();
    accounts.execute(deposit("t", 1)).await.unwrap();
    let middle = accounts.execute(deposit("t", 10)).await.unwrap();
    let cut = middle.events[0].recorded_at;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    accounts.execute(deposit("t", 100)).await.unwrap();
    let at_two = accounts.load_as_of("t", AsOf::Version(2)).await.unwrap();
    assert_eq!((at_two.version, at_two.state.balance), (2, 1));
    let at_cut = accounts.load_as_of("t", AsOf::Time(cut)).await.unwrap();
    assert_eq!((at_cut.version, at_cut.state.balance), (3, 11));
    let now = accounts.load("t").await.unwrap();
    assert_eq!((now.version, now.state.balance), (4, 111));
    let before = accounts.load_as_of("t", AsOf::Version(0)).await.unwrap();
    assert_eq!(before.state, Account::default());
}

async fn closed_and_erased_streams_refuse_commands<
    S: EventStore + CommandStore + StreamLifecycle,
>(
    store: S,
) {
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute(open("c")).await.unwrap();
    store.close_stream(&Account::stream_id("c")).await.unwrap();
    let refused = accounts.execute(deposit("c", 1)).await.unwrap_err();
    assert!(
        matches!(
            refused,
            CommandError::Store(StoreError::StreamClosed { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "stream `account-c` is closed: it takes no more events"
    );
    assert!(
        accounts.load("c").await.unwrap().state.open,
        "a closed stream still loads"
    );

    accounts.execute(open("e")).await.unwrap();
    assert_eq!(
        store.erase_stream(&Account::stream_id("e")).await.unwrap(),
        1
    );
    let error = accounts.load("e").await.unwrap_err();
    match error {
        CommandError::Decode(e) => assert!(matches!(e.kind, DecodeErrorKind::Erased)),
        other => panic!("expected an erased event, got {other:?}"),
    }
}

on_every_store!(
    a_repeated_command_returns_its_first_outcome,
    a_command_sent_concurrently_executes_once,
    the_journal_shows_what_was_asked_and_what_it_caused,
    a_reaction_carries_its_cause_and_the_correlation,
    an_aggregate_loads_as_it_was,
    closed_and_erased_streams_refuse_commands,
);
