//! What a command and a projection report: spans with the aggregate, the
//! command and the correlation id, and the metrics of
//! `evently::telemetry`, captured per test.

use std::time::Duration;

use evently::memory::MemoryStore;
use evently::prelude::*;
use evently::projection::{
    run_projection, HandlerError, MemoryReadModel, OnFailure, Projection, ProjectionOptions,
};
use evently::telemetry;
use evently::testing::telemetry::capture;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
    Deposited { amount: u64 },
}

#[derive(Debug, Clone, Command)]
enum AccountCommand {
    Deposit { id: String, amount: u64 },
    Withdraw { id: String, amount: u64 },
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
            AccountCommand::Withdraw { .. } => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        let AccountEvent::Deposited { amount } = event;
        self.balance += amount;
    }
}

fn deposit(id: &str, amount: u64) -> AccountCommand {
    AccountCommand::Deposit {
        id: id.into(),
        amount,
    }
}

#[test]
fn a_command_runs_in_a_span_with_its_ids_and_is_counted_by_outcome() {
    let correlation = uuid::Uuid::now_v7();
    let (command_id, seen) = capture(async move {
        let accounts = Repository::<Account, _>::new(MemoryStore::new());
        let context = CommandContext::new().with_correlation_id(correlation);
        let command_id = context.command_id;
        accounts
            .execute_with(deposit("a", 5), context)
            .await
            .unwrap();
        let refused = accounts
            .execute(AccountCommand::Withdraw {
                id: "a".into(),
                amount: 9,
            })
            .await;
        assert!(matches!(refused, Err(CommandError::Rejected(TooLow(5)))));
        command_id
    });
    let commands = seen.spans_named("evently.command");
    assert_eq!(commands.len(), 2);
    let first = commands[0];
    assert_eq!(first.field("aggregate"), Some("account"));
    assert_eq!(first.field("stream"), Some("account-a"));
    assert_eq!(first.field("command"), Some("Deposit"));
    assert_eq!(first.field("command_id"), Some(&*command_id.to_string()));
    assert_eq!(
        first.field("correlation_id"),
        Some(&*correlation.to_string())
    );
    assert_eq!(first.field("outcome"), Some("accepted"));
    assert_eq!(first.field("attempts"), Some("1"));
    assert_eq!(commands[1].field("command"), Some("Withdraw"));
    assert_eq!(commands[1].field("outcome"), Some("rejected"));
    // A command without a correlation id starts one: its own id.
    assert_eq!(
        commands[1].field("correlation_id"),
        commands[1].field("command_id")
    );
    // Load, decide and append inside the first command's span, in order.
    let inside: Vec<&str> = seen
        .spans
        .iter()
        .take_while(|s| s.name != "evently.command")
        .filter(|s| s.parent.as_deref() == Some("evently.command"))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(inside, ["evently.load", "evently.decide", "evently.append"]);

    let account = [("aggregate", "account")];
    let accepted = [("aggregate", "account"), ("outcome", "accepted")];
    let rejected = [("aggregate", "account"), ("outcome", "rejected")];
    assert_eq!(seen.counter(telemetry::COMMANDS, &accepted), Some(1));
    assert_eq!(seen.counter(telemetry::COMMANDS, &rejected), Some(1));
    assert_eq!(
        seen.histogram(telemetry::COMMAND_SECONDS, &account)
            .map(<[f64]>::len),
        Some(2)
    );
    assert_eq!(
        seen.histogram(telemetry::APPEND_SECONDS, &account)
            .map(<[f64]>::len),
        Some(1),
        "a refusal appends nothing"
    );
}

#[test]
fn a_conflict_is_counted_and_the_retry_shows_in_the_attempts() {
    let ((), seen) = capture(async {
        let store = MemoryStore::new();
        let cached = Repository::<Account, _>::new(store.clone());
        cached.execute(deposit("a", 1)).await.unwrap();
        // Another writer moves the stream on: the cached copy is stale.
        let other = Repository::<Account, _>::new(store.clone());
        other.execute(deposit("a", 1)).await.unwrap();
        let outcome = cached.execute(deposit("a", 1)).await.unwrap();
        assert_eq!((outcome.version, outcome.attempts), (3, 2));
    });
    assert_eq!(
        seen.counter(telemetry::CONFLICTS, &[("aggregate", "account")]),
        Some(1)
    );
    assert_eq!(
        seen.spans_named("evently.command")[2].field("attempts"),
        Some("2")
    );
}

/// Counts credits; refuses an amount of 13.
struct Totals;

impl Projection for Totals {
    type Event = AccountEvent;
    type Sink = u64;

    fn name(&self) -> &str {
        "totals"
    }

    async fn apply(
        &self,
        total: &mut u64,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Deposited { amount } = event.data;
        if amount == 13 {
            return Err("13 is refused".into());
        }
        *total += amount;
        Ok(())
    }
}

#[test]
fn a_projection_reports_its_batches_events_lag_and_parked_events() {
    let correlation = uuid::Uuid::now_v7();
    let (total, seen) = capture(async move {
        let store = MemoryStore::new();
        let accounts = Repository::<Account, _>::new(store.clone());
        for amount in [1, 13, 2] {
            let context = CommandContext::new().with_correlation_id(correlation);
            accounts
                .execute_with(deposit("a", amount), context)
                .await
                .unwrap();
        }
        let model = MemoryReadModel::<u64>::default();
        let options = ProjectionOptions::default()
            .retries(0, Duration::from_millis(1))
            .on_failure(OnFailure::Park);
        let handle = run_projection(store.clone(), Totals, model.clone(), options);
        handle.wait_for(3, Duration::from_secs(5)).await.unwrap();
        // Live, after the catch-up: a batch of its own.
        accounts.execute(deposit("b", 4)).await.unwrap();
        handle.wait_for(4, Duration::from_secs(5)).await.unwrap();
        handle.stop().await;
        model.read(|total| *total)
    });
    assert_eq!(total, 7);
    let totals = [("projection", "totals")];
    assert_eq!(seen.counter(telemetry::PROJECTION_EVENTS, &totals), Some(4));
    assert_eq!(seen.counter(telemetry::PARKED_EVENTS, &totals), Some(1));
    assert_eq!(
        seen.gauge(telemetry::PROJECTION_LAG_EVENTS, &totals),
        Some(0.0)
    );
    let age = seen
        .gauge(telemetry::PROJECTION_LAG_SECONDS, &totals)
        .unwrap();
    assert!((0.0..5.0).contains(&age), "{age}");
    let batches = seen.spans_named("evently.projection.batch");
    assert!(
        batches.len() >= 2,
        "the catch-up and the live event: {batches:?}"
    );
    let last = batches.last().unwrap();
    assert_eq!(
        (
            last.field("first"),
            last.field("last"),
            last.field("events")
        ),
        (Some("4"), Some("4"), Some("1"))
    );
    // Each event applied in a span that names its correlation id.
    let events = seen.spans_named("evently.projection.event");
    let correlated = events
        .iter()
        .filter(|s| s.field("correlation_id") == Some(&*correlation.to_string()))
        .count();
    assert!(correlated >= 3, "{events:?}");
    assert!(events
        .iter()
        .all(|s| s.parent.as_deref() == Some("evently.projection.batch")));
}
