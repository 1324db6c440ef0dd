//! Event identity across aggregates: two aggregates of one service whose
//! events share a variant name (`Opened` on an account and on a loan) and
//! whose fields decode into each other. A projection over the account's
//! events must see the accounts only, on every store and every runner
//! (the generic runner into a memory read model, the PostgreSQL runner
//! into a table, and inline projections).

#[allow(unused_macros)]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use evently::memory::MemoryStore;
use evently::prelude::*;
use evently::projection::{
    run_projection, HandlerError, MemoryReadModel, Projection, ProjectionOptions,
};
use evently_postgres::sqlx::{self, PgConnection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { name: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum LoanEvent {
    // Same stored type name and same fields as the account's `Opened`.
    Opened { name: String },
}

#[derive(Debug, Clone, Command)]
enum AccountCommand {
    Open { id: String, name: String },
}

#[derive(Debug, Clone, Command)]
enum LoanCommand {
    Open { id: String, name: String },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = Never)]
struct Account;

impl Account {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, Never> {
        let AccountCommand::Open { name, .. } = command;
        Ok(vec![AccountEvent::Opened { name }])
    }
    fn apply(&mut self, _: &AccountEvent) {}
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = LoanEvent, command = LoanCommand, error = Never)]
struct Loan;

impl Loan {
    fn decide(&self, command: LoanCommand) -> Result<Vec<LoanEvent>, Never> {
        let LoanCommand::Open { name, .. } = command;
        Ok(vec![LoanEvent::Opened { name }])
    }
    fn apply(&mut self, _: &LoanEvent) {}
}

/// An event type no aggregate claims: matched by its name alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum Unclaimed {
    Opened { name: String },
}

#[test]
fn an_aggregates_event_type_names_its_aggregate() {
    assert_eq!(AccountEvent::aggregate_type(), Some("account"));
    assert_eq!(LoanEvent::aggregate_type(), Some("loan"));
    assert_eq!(Unclaimed::aggregate_type(), None);
    let id = Account::stream_id("eu-7");
    assert_eq!(
        (id.aggregate_type(), id.aggregate_id()),
        (Some("account"), Some("eu-7"))
    );
}

/// Account names, keyed by account id, from the account events only.
struct AccountNames;

impl Projection for AccountNames {
    type Event = AccountEvent;
    type Sink = BTreeMap<String, String>;

    fn name(&self) -> &str {
        "account_names"
    }

    async fn apply(
        &self,
        names: &mut BTreeMap<String, String>,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Opened { name } = &event.data;
        let id = event.aggregate_id().ok_or("not an aggregate's stream")?;
        names.insert(id.to_owned(), name.clone());
        Ok(())
    }
}

/// Opens two accounts and two loans, interleaved; returns the last
/// position.
async fn open_accounts_and_loans<S: EventStore + CommandStore>(store: &S) -> u64 {
    let accounts = Repository::<Account, _>::new(store.clone());
    let loans = Repository::<Loan, _>::new(store.clone());
    let mut last = 0;
    for (id, name) in [("1", "Ada"), ("2", "Grace")] {
        accounts
            .execute(AccountCommand::Open {
                id: id.into(),
                name: name.into(),
            })
            .await
            .unwrap();
        let loan = loans
            .execute(LoanCommand::Open {
                id: format!("l{id}"),
                name: format!("loan of {name}"),
            })
            .await
            .unwrap();
        last = loan.events.last().unwrap().global_position;
    }
    last
}

fn expected_names() -> BTreeMap<String, String> {
    BTreeMap::from([("1".into(), "Ada".into()), ("2".into(), "Grace".into())])
}

async fn the_generic_runner_takes_only_the_aggregates_events<S: EventStore + CommandStore>(
    store: S,
) {
    let last = open_accounts_and_loans(&store).await;
    let model = MemoryReadModel::<BTreeMap<String, String>>::default();
    let handle = run_projection(
        store.clone(),
        AccountNames,
        model.clone(),
        ProjectionOptions::default(),
    );
    handle
        .wait_for(last, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(model.read(|names| names.clone()), expected_names());
    // The loans were read past, not stuck on: the checkpoint is the head.
    assert_eq!(model.checkpoint(), last);
    handle.stop().await;
}

#[tokio::test]
async fn memory_runner_takes_only_the_aggregates_events() {
    the_generic_runner_takes_only_the_aggregates_events(MemoryStore::new()).await;
}

#[tokio::test]
async fn generic_runner_on_postgres_takes_only_the_aggregates_events() {
    the_generic_runner_takes_only_the_aggregates_events(common::fresh_pg_store().await).await;
}

/// The same read model as a PostgreSQL table, written in the runner's
/// transaction.
struct AccountTable {
    insert: String,
}

impl Projection for AccountTable {
    type Event = AccountEvent;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        "account_table"
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let AccountEvent::Opened { name } = &event.data;
        sqlx::query(&self.insert)
            .bind(event.aggregate_id().ok_or("not an aggregate's stream")?)
            .bind(name)
            .execute(tx)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn postgres_runner_takes_only_the_aggregates_events() {
    let store = common::fresh_pg_store().await;
    let schema = store.schema().to_owned();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".account_names (id text PRIMARY KEY, name text)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let last = open_accounts_and_loans(&store).await;
    let handle = store.run_projection(
        AccountTable {
            insert: format!("INSERT INTO \"{schema}\".account_names VALUES ($1, $2)"),
        },
        ProjectionOptions::default(),
    );
    handle
        .wait_for(last, Duration::from_secs(10))
        .await
        .unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT id, name FROM \"{schema}\".account_names ORDER BY id"
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        rows.into_iter().collect::<BTreeMap<_, _>>(),
        expected_names()
    );
    handle.stop().await;
}

/// Unclaimed event types keep today's rule: matched by name, from any
/// stream, and every stored row still decodes (nothing was renamed).
#[tokio::test]
async fn unclaimed_event_types_match_by_name_and_old_rows_still_decode() {
    let store = MemoryStore::new();
    open_accounts_and_loans(&store).await;
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(all.iter().filter(|e| e.event_type == "Opened").count(), 4);
    for event in &all {
        assert!(event.decode::<Unclaimed>().is_ok(), "{event:?}");
    }
    let accounts = evently::backend::decode_handled::<AccountEvent>(&["Opened"], &all[0]).unwrap();
    assert_eq!(accounts.len(), 1);
    let loan_as_account =
        evently::backend::decode_handled::<AccountEvent>(&["Opened"], &all[1]).unwrap();
    assert!(
        loan_as_account.is_empty(),
        "a loan's event reached an account projection"
    );
    let unclaimed = evently::backend::decode_handled::<Unclaimed>(&["Opened"], &all[1]).unwrap();
    assert_eq!(unclaimed.len(), 1);
}
