//! The cache of live aggregates, on both stores: a warm command reads
//! nothing, commands to one aggregate do not conflict with each other, and
//! a stale cached copy never decides — whether it would append, refuse or
//! do nothing.

use std::sync::Arc;

use evently::prelude::*;
use evently::testing::FaultyStore;
use serde::{Deserialize, Serialize};

#[macro_use]
mod common;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

#[derive(Debug, Clone, Command)]
enum AccountCommand {
    Deposit { id: String, amount: u64 },
    Withdraw { id: String, amount: u64 },
    Check { id: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("balance {0} is too low")]
struct TooLow(u64);

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = TooLow)]
struct Account {
    balance: u64,
}

impl Account {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, TooLow> {
        match command {
            AccountCommand::Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw { amount, .. } if amount > self.balance => {
                Err(TooLow(self.balance))
            }
            AccountCommand::Withdraw { amount, .. } => Ok(vec![AccountEvent::Withdrew { amount }]),
            AccountCommand::Check { .. } => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
}

fn deposit(amount: u64) -> AccountCommand {
    AccountCommand::Deposit {
        id: "a".into(),
        amount,
    }
}

fn withdraw(amount: u64) -> AccountCommand {
    AccountCommand::Withdraw {
        id: "a".into(),
        amount,
    }
}

async fn a_warm_command_reads_nothing<S: EventStore + CommandStore>(store: S) {
    let counted = FaultyStore::new(store);
    let accounts = Repository::<Account, _>::new(counted.clone()).with_cache(100);
    accounts.execute(deposit(1)).await.unwrap();
    let cold = counted.reads_seen();
    assert!(cold >= 1, "the first command loads the aggregate");
    for _ in 0..10 {
        accounts.execute(deposit(1)).await.unwrap();
    }
    assert_eq!(counted.reads_seen(), cold, "warm commands only append");
    assert_eq!(counted.appends_seen(), 11);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 11);
}

async fn commands_to_one_aggregate_do_not_conflict_in_process<S: EventStore + CommandStore>(
    store: S,
) {
    let accounts = Arc::new(Repository::<Account, _>::new(store).with_cache(100));
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let accounts = Arc::clone(&accounts);
        tasks.push(tokio::spawn(async move {
            let mut retries = 0;
            for i in 1..=25u64 {
                retries += accounts
                    .execute(deposit(task * 100 + i))
                    .await
                    .unwrap()
                    .attempts
                    - 1;
            }
            retries
        }));
    }
    let mut retries = 0;
    for task in tasks {
        retries += task.await.unwrap();
    }
    assert_eq!(retries, 0, "serialised in process: no conflict");
    let expected: u64 = (0..8u64)
        .flat_map(|t| (1..=25).map(move |i| t * 100 + i))
        .sum();
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (expected, 200));
}

async fn a_stale_copy_that_would_append_conflicts_and_reloads<S: EventStore + CommandStore>(
    store: S,
) {
    let cached = Repository::<Account, _>::new(store.clone()).with_cache(100);
    let other_process = Repository::<Account, _>::new(store.clone());
    cached.execute(deposit(10)).await.unwrap();
    other_process.execute(deposit(5)).await.unwrap();
    // On the stale copy (10) a withdrawal of 5 is fine: its append expects
    // version 1, conflicts, and the fresh copy (15) decides again.
    let outcome = cached.execute(withdraw(5)).await.unwrap();
    assert_eq!(
        outcome.attempts, 2,
        "the stale copy conflicted, then the fresh one decided"
    );
    assert_eq!(outcome.version, 3);
    assert_eq!(cached.load("a").await.unwrap().state.balance, 10);
    // And the copy kept after that command is current.
    let next = cached.execute(withdraw(10)).await.unwrap();
    assert_eq!((next.attempts, next.version), (1, 4));
}

async fn a_stale_copy_never_refuses_or_ignores_a_command<S: EventStore + CommandStore>(store: S) {
    let cached = Repository::<Account, _>::new(store.clone()).with_cache(100);
    let other_process = Repository::<Account, _>::new(store.clone());
    cached.execute(deposit(1)).await.unwrap();
    other_process.execute(deposit(100)).await.unwrap();
    // The cached copy says 1, too low: the store says otherwise.
    let outcome = cached
        .execute(withdraw(50))
        .await
        .expect("decided on fresh state");
    assert_eq!(
        outcome.events[0].data,
        AccountEvent::Withdrew { amount: 50 }
    );
    other_process.execute(withdraw(51)).await.unwrap();
    // An empty decision on a stale copy is checked too, and the copy renewed.
    let checked = cached
        .execute(AccountCommand::Check { id: "a".into() })
        .await
        .unwrap();
    assert_eq!(checked.version, 4);
    let refused = cached.execute(withdraw(1)).await.unwrap_err();
    assert_eq!(refused.rejection(), Some(&TooLow(0)));
}

async fn a_small_cache_stays_correct<S: EventStore + CommandStore>(store: S) {
    let accounts = Repository::<Account, _>::new(store).with_cache(2);
    for round in 1..=3u64 {
        for id in ["a", "b", "c", "d", "e"] {
            accounts
                .execute(AccountCommand::Deposit {
                    id: id.into(),
                    amount: round,
                })
                .await
                .unwrap();
        }
    }
    for id in ["a", "b", "c", "d", "e"] {
        assert_eq!(accounts.load(id).await.unwrap().state.balance, 6);
    }
}

/// A burst of concurrent commands to more aggregates than the capacity:
/// while they run each holds its aggregate, and once they are done the
/// cache holds no more than its capacity.
async fn a_burst_does_not_leave_the_cache_past_its_capacity<S: EventStore + CommandStore>(
    store: S,
) {
    let accounts = Repository::<Account, _>::new(store).with_cache(4);
    let burst = (0..32).map(|n| {
        let accounts = accounts.clone();
        tokio::spawn(async move {
            accounts
                .execute(AccountCommand::Deposit {
                    id: format!("burst-{n}"),
                    amount: 1,
                })
                .await
        })
    });
    for outcome in futures::future::join_all(burst).await {
        outcome.unwrap().unwrap();
    }
    assert!(
        accounts.cached_aggregates() <= 4,
        "{} aggregates cached",
        accounts.cached_aggregates()
    );
    assert_eq!(accounts.load("burst-31").await.unwrap().state.balance, 1);
}

/// Holds the second decision of a command until released: a retry that
/// has loaded its state before the first attempt committed.
#[derive(Default)]
struct Gate {
    decisions: std::sync::atomic::AtomicU32,
    release: tokio::sync::Notify,
    holding: tokio::sync::Notify,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum DoorEvent {
    Opened,
}

#[derive(Debug, Clone, Command)]
enum DoorCommand {
    Open { id: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the door is already open")]
struct AlreadyOpen;

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "door", event = DoorEvent, command = DoorCommand, error = AlreadyOpen, services = Arc<Gate>)]
struct Door {
    open: bool,
}

impl Door {
    async fn decide(
        &self,
        _: DoorCommand,
        gate: &Arc<Gate>,
    ) -> Result<Vec<DoorEvent>, AlreadyOpen> {
        if gate
            .decisions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            gate.holding.notify_one();
            gate.release.notified().await;
        }
        if self.open {
            Err(AlreadyOpen)
        } else {
            Ok(vec![DoorEvent::Opened])
        }
    }

    fn apply(&mut self, _: &DoorEvent) {
        self.open = true;
    }
}

/// A client that timed out retries its command (same id) while the first
/// attempt still runs: the retry loses the append race to the first
/// attempt, and must answer with that attempt's outcome, not decide again
/// on the state the first attempt made ("already open").
async fn a_retry_that_loses_to_its_own_first_attempt_returns_that_outcome<
    S: EventStore + CommandStore,
>(
    store: S,
) {
    let gate = Arc::new(Gate::default());
    let doors = Repository::<Door, _>::with_services(store.clone(), Arc::clone(&gate));
    let context = CommandContext::new().with_command_id(uuid::Uuid::now_v7());
    let open = || DoorCommand::Open { id: "d".into() };
    // The retry: it finds no record yet, loads the empty door and is held
    // in its decision.
    let retry = tokio::spawn({
        let (doors, context) = (doors.clone(), context.clone());
        async move { doors.execute_with(open(), context).await }
    });
    gate.holding.notified().await;
    // The first attempt (another instance, no cache) runs whole.
    let other = Repository::<Door, _>::with_services(store.clone(), Arc::clone(&gate));
    let first = other.execute_with(open(), context).await.unwrap();
    gate.release.notify_one();
    let retried = retry.await.unwrap().unwrap();
    assert_eq!((retried.version, first.version), (1, 1));
    assert_eq!(retried.events[0].event_id, first.events[0].event_id);
    assert_eq!(
        store
            .stream_version(&StreamId::new("door-d"))
            .await
            .unwrap(),
        1
    );
}

on_every_store!(
    a_retry_that_loses_to_its_own_first_attempt_returns_that_outcome,
    a_burst_does_not_leave_the_cache_past_its_capacity,
    a_warm_command_reads_nothing,
    commands_to_one_aggregate_do_not_conflict_in_process,
    a_stale_copy_that_would_append_conflicts_and_reloads,
    a_stale_copy_never_refuses_or_ignores_a_command,
    a_small_cache_stays_correct,
);
