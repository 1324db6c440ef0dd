//! Views: one serde document per key, kept by the projection runner, read
//! by key and in pages. Every test body runs on the memory store and on
//! PostgreSQL with the same view types.

#[macro_use]
mod common;

use std::time::Duration;

use evently::prelude::*;
use evently::projection::{OnFailure, ProjectionOptions, ProjectionState, WaitError};
use evently::view::{Document, View, ViewError, ViewStore};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { owner: String, branch: String },
    Deposited { amount: u64 },
    Closed,
}

// Claimed by the `account` aggregate: taken from `account-…` streams only.
impl AggregateEvent for AccountEvent {
    const AGGREGATE_TYPE: &'static str = "account";
}

/// One document per account (the default key: the aggregate id).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct AccountView {
    owner: String,
    balance: u64,
    history: Vec<String>,
}

impl View for AccountView {
    type Event = AccountEvent;

    fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
        match &event.data {
            AccountEvent::Opened { owner, .. } => self.owner = owner.clone(),
            AccountEvent::Deposited { amount } => {
                self.balance += amount;
                self.history.push(format!("+{amount}"));
            }
            AccountEvent::Closed => {}
        }
    }

    fn delete_on(event: &RecordedEvent<AccountEvent>) -> bool {
        matches!(event.data, AccountEvent::Closed)
    }
}

/// A key the view derives: one document per branch, counting openings;
/// other events leave it untouched.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct BranchView {
    accounts: Vec<String>,
}

impl View for BranchView {
    type Event = AccountEvent;

    fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
        if let Some(id) = event.aggregate_id() {
            self.accounts.push(id.to_owned());
        }
    }

    fn key(event: &RecordedEvent<AccountEvent>) -> Option<String> {
        match &event.data {
            AccountEvent::Opened { branch, .. } => Some(branch.clone()),
            _ => None,
        }
    }

    fn handles() -> &'static [&'static str] {
        &["Opened"]
    }
}

/// The documents of `AccountView` read with a field they do not have: a
/// view type changed without rebuilding its documents.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct StricterView {
    owner: String,
    balance: u64,
    nickname: String,
}

impl View for StricterView {
    type Event = AccountEvent;

    fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
        if let AccountEvent::Deposited { amount } = &event.data {
            self.balance += amount;
        }
    }
}

fn opened(owner: &str, branch: &str) -> AccountEvent {
    AccountEvent::Opened {
        owner: owner.into(),
        branch: branch.into(),
    }
}

/// Appends `events` to `stream`; returns the position of the last.
async fn append<S: EventStore>(store: &S, stream: &str, events: &[AccountEvent]) -> u64 {
    let events = events
        .iter()
        .map(|e| NewEvent::from_event(e, Metadata::new()).unwrap())
        .collect();
    let stored = store
        .append(&StreamId::new(stream), ExpectedVersion::Any, events)
        .await
        .unwrap();
    stored.last().unwrap().global_position
}

fn options() -> ProjectionOptions {
    ProjectionOptions::default().retries(0, Duration::from_millis(1))
}

fn keys<V>(documents: &[Document<V>]) -> Vec<&str> {
    documents.iter().map(|d| d.key.as_str()).collect()
}

async fn get_and_list_in_pages<S: ViewStore + EventStore>(store: S) {
    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    for id in ["erin", "alice", "dave", "carol", "bob"] {
        append(&store, &format!("account-{id}"), &[opened(id, "north")]).await;
    }
    let last = append(
        &store,
        "account-alice",
        &[
            AccountEvent::Deposited { amount: 100 },
            AccountEvent::Deposited { amount: 5 },
        ],
    )
    .await;
    views.wait_for(last, WAIT).await.unwrap();

    assert_eq!(
        views.get("alice").await.unwrap(),
        Some(AccountView {
            owner: "alice".into(),
            balance: 105,
            history: vec!["+100".into(), "+5".into()],
        })
    );
    assert_eq!(views.get("nobody").await.unwrap(), None);
    let alice = views.document("alice").await.unwrap().unwrap();
    assert_eq!((alice.version, alice.position), (3, last));

    let first = views.list(None, 2).await.unwrap();
    assert_eq!(keys(&first.documents), ["alice", "bob"]);
    assert_eq!(first.next.as_deref(), Some("bob"));
    let second = views.list(first.next.as_deref(), 2).await.unwrap();
    assert_eq!(keys(&second.documents), ["carol", "dave"]);
    let third = views.list(second.next.as_deref(), 2).await.unwrap();
    assert_eq!(keys(&third.documents), ["erin"]);
    assert_eq!(third.next, None);
    assert_eq!(third.documents[0].doc.owner, "erin");
    // A page exactly as long as what is left has no next page.
    let all = views.list(None, 5).await.unwrap();
    assert_eq!(all.documents.len(), 5);
    assert_eq!(all.next, None);
    assert!(views
        .list(Some("erin"), 10)
        .await
        .unwrap()
        .documents
        .is_empty());
    let one = views.list(Some("bob"), 0).await.unwrap();
    assert_eq!(keys(&one.documents), ["carol"]);
    assert_eq!(one.next.as_deref(), Some("carol"));
    assert_eq!(views.status().name, "view_accounts");
}

async fn read_your_writes<S: ViewStore + EventStore>(store: S) {
    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    for round in 1..=20u64 {
        let position = append(
            &store,
            "account-alice",
            &[AccountEvent::Deposited { amount: round }],
        )
        .await;
        let seen = views
            .get_after("alice", position, WAIT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.balance, round * (round + 1) / 2);
    }
    // Another aggregate's streams are not this view's, even with the same
    // event names.
    let position = append(
        &store,
        "loan-alice",
        &[AccountEvent::Deposited { amount: 1000 }],
    )
    .await;
    views.wait_for(position, WAIT).await.unwrap();
    assert_eq!(views.get("alice").await.unwrap().unwrap().balance, 210);
    assert_eq!(views.list(None, 10).await.unwrap().documents.len(), 1);
}

async fn a_key_the_view_derives<S: ViewStore + EventStore>(store: S) {
    let branches = store
        .run_view::<BranchView>("branches", options())
        .await
        .unwrap();
    append(
        &store,
        "account-a",
        &[opened("A", "north"), AccountEvent::Deposited { amount: 1 }],
    )
    .await;
    append(&store, "account-b", &[opened("B", "south")]).await;
    append(&store, "account-c", &[opened("C", "north")]).await;
    append(&store, "account-d", &[opened("D", "été")]).await;
    let last = append(&store, "account-e", &[opened("E", "North")]).await;
    branches.wait_for(last, WAIT).await.unwrap();
    assert_eq!(
        branches.get("north").await.unwrap().unwrap().accounts,
        ["a", "c"]
    );
    assert_eq!(
        branches.get("south").await.unwrap().unwrap().accounts,
        ["b"]
    );
    assert_eq!(branches.get("a").await.unwrap(), None);
    let page = branches.list(None, 10).await.unwrap();
    // Keys in byte order on every store (the table's key is `COLLATE "C"`).
    assert_eq!(keys(&page.documents), ["North", "north", "south", "été"]);
    assert_eq!(page.documents[1].version, 2);
}

async fn an_event_deletes_its_document<S: ViewStore + EventStore>(store: S) {
    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    append(
        &store,
        "account-alice",
        &[opened("Alice", "n"), AccountEvent::Deposited { amount: 7 }],
    )
    .await;
    append(&store, "account-bob", &[opened("Bob", "n")]).await;
    let closed = append(&store, "account-alice", &[AccountEvent::Closed]).await;
    views.wait_for(closed, WAIT).await.unwrap();
    assert_eq!(views.get("alice").await.unwrap(), None);
    assert_eq!(
        keys(&views.list(None, 10).await.unwrap().documents),
        ["bob"]
    );
    // A later event of the key starts a new document.
    let again = append(
        &store,
        "account-alice",
        &[AccountEvent::Deposited { amount: 2 }],
    )
    .await;
    views.wait_for(again, WAIT).await.unwrap();
    let alice = views.document("alice").await.unwrap().unwrap();
    assert_eq!(alice.doc.balance, 2);
    assert_eq!(alice.doc.owner, "");
    assert_eq!(alice.version, 1);
}

async fn restarts_from_its_checkpoint<S: ViewStore + EventStore>(store: S) {
    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    append(&store, "account-alice", &[opened("Alice", "n")]).await;
    let position = append(
        &store,
        "account-alice",
        &[
            AccountEvent::Deposited { amount: 1 },
            AccountEvent::Deposited { amount: 2 },
        ],
    )
    .await;
    views.wait_for(position, WAIT).await.unwrap();
    let stopped = views.stop().await;
    assert_eq!(stopped.state, ProjectionState::Stopped);
    assert_eq!(stopped.position, position);

    // Written while no runner runs.
    append(
        &store,
        "account-alice",
        &[AccountEvent::Deposited { amount: 4 }],
    )
    .await;
    let position = append(&store, "account-bob", &[opened("Bob", "n")]).await;

    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    views.wait_for(position, WAIT).await.unwrap();
    let alice = views.document("alice").await.unwrap().unwrap();
    assert_eq!(alice.doc.balance, 7);
    assert_eq!(alice.doc.history, ["+1", "+2", "+4"]);
    assert_eq!(alice.version, 4, "each event applied once");
    // It went on from its checkpoint, not from the start of the log.
    assert_eq!(views.status().processed, 2);

    // A crash (the runner aborted mid-flight) then a restart: still once.
    let mut last = 0;
    for amount in [10, 20, 30] {
        last = append(
            &store,
            "account-alice",
            &[AccountEvent::Deposited { amount }],
        )
        .await;
    }
    views.projection().abort();
    drop(views);
    let position = append(
        &store,
        "account-alice",
        &[AccountEvent::Deposited { amount: 40 }],
    )
    .await;
    assert!(position > last);
    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    views.wait_for(position, WAIT).await.unwrap();
    let alice = views.document("alice").await.unwrap().unwrap();
    assert_eq!(alice.doc.balance, 107);
    assert_eq!(
        alice.doc.history,
        ["+1", "+2", "+4", "+10", "+20", "+30", "+40"]
    );
    assert_eq!(alice.version, 8);
}

/// Documents written by `AccountView`, then the view type changed.
async fn documents_of_another_shape<S: ViewStore + EventStore>(store: &S) -> u64 {
    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    append(store, "account-alice", &[opened("Alice", "n")]).await;
    let position = append(store, "account-bob", &[opened("Bob", "n")]).await;
    views.wait_for(position, WAIT).await.unwrap();
    views.stop().await;
    position
}

async fn a_malformed_document_is_a_typed_error_and_stops_the_runner<S: ViewStore + EventStore>(
    store: S,
) {
    let checkpoint = documents_of_another_shape(&store).await;
    let views = store
        .run_view::<StricterView>("accounts", options().on_failure(OnFailure::Stop))
        .await
        .unwrap();
    let error = views.get("alice").await.unwrap_err();
    match &error {
        ViewError::Malformed { view, key, reason } => {
            assert_eq!((view.as_str(), key.as_str()), ("accounts", "alice"));
            assert!(reason.contains("nickname"), "{reason}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(error.to_string().contains("`alice`"), "{error}");
    assert!(matches!(
        views.list(None, 10).await,
        Err(ViewError::Malformed { .. })
    ));

    let position = append(
        &store,
        "account-alice",
        &[AccountEvent::Deposited { amount: 3 }],
    )
    .await;
    // Read-your-writes says why it cannot.
    match views.get_after("alice", position, WAIT).await {
        Err(ViewError::Wait(WaitError::NotRunning { wanted, .. })) => assert_eq!(wanted, position),
        other => panic!("expected NotRunning, got {other:?}"),
    }
    let status = views.status();
    let ProjectionState::Failed(reason) = &status.state else {
        panic!("expected a failed runner, got {status:?}");
    };
    assert!(reason.contains("does not decode"), "{reason}");
    assert_eq!(status.position, checkpoint, "stopped before the event");
}

async fn a_malformed_document_is_parked_under_park<S: ViewStore + EventStore>(store: S) {
    documents_of_another_shape(&store).await;
    let views = store
        .run_view::<StricterView>("accounts", options().on_failure(OnFailure::Park))
        .await
        .unwrap();
    append(
        &store,
        "account-alice",
        &[AccountEvent::Deposited { amount: 3 }],
    )
    .await;
    let position = append(
        &store,
        "account-carol",
        &[AccountEvent::Deposited { amount: 9 }],
    )
    .await;
    views.wait_for(position, WAIT).await.unwrap();
    assert_eq!(views.status().parked, 1);
    assert_eq!(views.status().state, ProjectionState::Running);
    assert_eq!(
        views.get("carol").await.unwrap(),
        Some(StricterView {
            balance: 9,
            ..StricterView::default()
        })
    );
    assert!(matches!(
        views.get("alice").await,
        Err(ViewError::Malformed { .. })
    ));
}

async fn a_bad_name_is_refused<S: ViewStore + EventStore>(store: S) {
    let too_long = "a".repeat(59);
    for name in [
        "",
        "Accounts",
        "a-b",
        "a b",
        "a\"; DROP TABLE x; --",
        "é",
        &too_long,
    ] {
        match store.run_view::<AccountView>(name, options()).await {
            Err(ViewError::InvalidName { name: refused }) => assert_eq!(refused, name),
            Err(other) => panic!("`{name}`: expected InvalidName, got {other:?}"),
            Ok(_) => panic!("`{name}` was accepted"),
        }
    }
    let longest = "a".repeat(58);
    assert!(store
        .run_view::<AccountView>(&longest, options())
        .await
        .is_ok());
}

/// Keeps the owner's name with `_` turned into U+0000 (the log cannot
/// hold a NUL on PostgreSQL, but a view can compute one).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct RawOwners {
    owner: String,
}

impl View for RawOwners {
    type Event = AccountEvent;

    fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
        if let AccountEvent::Opened { owner, .. } = &event.data {
            self.owner = owner.replace('_', "\0");
        }
    }
}

/// What PostgreSQL's jsonb cannot store fails the same way in memory.
async fn a_nul_in_a_document_fails_on_every_store<S: ViewStore + EventStore>(store: S) {
    let views = store
        .run_view::<RawOwners>("owners", options().on_failure(OnFailure::Park))
        .await
        .unwrap();
    append(&store, "account-a", &[opened("A_B", "n")]).await;
    let position = append(&store, "account-b", &[opened("B", "n")]).await;
    views.wait_for(position, WAIT).await.unwrap();
    assert_eq!(views.status().parked, 1);
    assert_eq!(views.get("a").await.unwrap(), None);
    assert_eq!(views.get("b").await.unwrap().unwrap().owner, "B");
}

/// Runners aborted mid catch-up, again and again: each restart goes on
/// from the checkpoint that committed with the documents, so no event is
/// applied twice or skipped.
async fn survives_crashes_mid_catch_up<S: ViewStore + EventStore>(store: S) {
    append(&store, "account-alice", &[opened("Alice", "n")]).await;
    let mut last = 0;
    for _ in 0..20 {
        let deposits = vec![AccountEvent::Deposited { amount: 1 }; 20];
        last = append(&store, "account-alice", &deposits).await;
    }
    let small_batches = options().batch_size(4);
    let mut crashes = 0;
    loop {
        let views = store
            .run_view::<AccountView>("accounts", small_batches.clone())
            .await
            .unwrap();
        let mut status = views.projection().watch();
        let started = status.borrow().position;
        // Wait for a batch or two to commit, then crash.
        let reached = status
            .wait_for(|s| s.position > started || s.position >= last)
            .await
            .unwrap()
            .position;
        if reached >= last || crashes == 5 {
            views.wait_for(last, WAIT).await.unwrap();
            let alice = views.document("alice").await.unwrap().unwrap();
            assert_eq!(alice.doc.balance, 400);
            assert_eq!(alice.doc.history.len(), 400);
            assert_eq!(alice.version, 401, "each event applied once");
            break;
        }
        views.projection().abort();
        crashes += 1;
    }
    assert!(crashes > 0, "the runner was never caught mid catch-up");
}

/// A catch-up folds a batch per key and writes each touched key once: the
/// documents come out as event by event, deletions and re-creations
/// within one batch included (versions, positions, contents).
async fn a_batch_gives_what_event_by_event_gives<S: ViewStore + EventStore>(store: S) {
    append(
        &store,
        "account-alice",
        &[opened("Alice", "n"), AccountEvent::Deposited { amount: 3 }],
    )
    .await;
    append(&store, "account-bob", &[opened("Bob", "s")]).await;
    append(
        &store,
        "account-alice",
        &[
            AccountEvent::Deposited { amount: 4 },
            AccountEvent::Closed,
            AccountEvent::Deposited { amount: 5 },
        ],
    )
    .await;
    append(&store, "account-carol", &[opened("Carol", "n")]).await;
    let last = append(&store, "account-carol", &[AccountEvent::Closed]).await;
    let bob_deposit = append(
        &store,
        "account-bob",
        &[AccountEvent::Deposited { amount: 9 }],
    )
    .await;

    // All of it in one batch, and the same log one event per batch.
    let batched = store
        .run_view::<AccountView>("batched", options())
        .await
        .unwrap();
    let single = store
        .run_view::<AccountView>("single", options().batch_size(1))
        .await
        .unwrap();
    for views in [&batched, &single] {
        views.wait_for(bob_deposit.max(last), WAIT).await.unwrap();
    }
    let everything = |page: evently::view::DocumentPage<AccountView>| {
        page.documents
            .into_iter()
            .map(|d| (d.key, d.doc, d.version, d.position))
            .collect::<Vec<_>>()
    };
    let from_batch = everything(batched.list(None, 10).await.unwrap());
    assert_eq!(from_batch, everything(single.list(None, 10).await.unwrap()));
    let alice = from_batch.iter().find(|d| d.0 == "alice").unwrap();
    // Deleted by `Closed`, started again by the deposit after it.
    assert_eq!(
        (alice.1.balance, alice.1.owner.as_str(), alice.2),
        (5, "", 1)
    );
    let bob = from_batch.iter().find(|d| d.0 == "bob").unwrap();
    assert_eq!((bob.1.balance, bob.2, bob.3), (9, 2, bob_deposit));
    assert!(
        from_batch.iter().all(|d| d.0 != "carol"),
        "carol was closed"
    );
}

on_every_store!(
    a_batch_gives_what_event_by_event_gives,
    survives_crashes_mid_catch_up,
    a_nul_in_a_document_fails_on_every_store,
    get_and_list_in_pages,
    read_your_writes,
    a_key_the_view_derives,
    an_event_deletes_its_document,
    restarts_from_its_checkpoint,
    a_malformed_document_is_a_typed_error_and_stops_the_runner,
    a_malformed_document_is_parked_under_park,
    a_bad_name_is_refused,
);

/// PostgreSQL: the framework's table, and a document edited by hand into
/// something that does not decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_documents_in_a_jsonb_table() {
    let store = common::fresh_pg_store().await;
    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    let position = append(&store, "account-alice", &[opened("Alice", "n")]).await;
    views.wait_for(position, WAIT).await.unwrap();
    let table = format!("\"{}\".view_accounts", store.schema());
    let (doc, version, stored_position): (String, i64, i64) = evently_postgres::sqlx::query_as(
        &format!("SELECT doc::text, version, position FROM {table} WHERE key = 'alice'"),
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({"owner": "Alice", "balance": 0, "history": []})
    );
    assert_eq!((version, stored_position as u64), (1, position));
    assert_eq!(store.checkpoint("view_accounts").await.unwrap(), position);

    evently_postgres::sqlx::query(&format!(
        "UPDATE {table} SET doc = '[1, 2]' WHERE key = 'alice'"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    assert!(matches!(
        views.get("alice").await,
        Err(ViewError::Malformed { ref key, .. }) if key == "alice"
    ));
}

/// PostgreSQL: an event parked on a document that did not decode is
/// applied again, once, by the fixed view type.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_retries_a_parked_view_event() {
    let store = common::fresh_pg_store().await;
    documents_of_another_shape(&store).await;
    let views = store
        .run_view::<StricterView>("accounts", options().on_failure(OnFailure::Park))
        .await
        .unwrap();
    let parked = append(
        &store,
        "account-alice",
        &[AccountEvent::Deposited { amount: 3 }],
    )
    .await;
    views.wait_for(parked, WAIT).await.unwrap();
    views.stop().await;
    let rows = store.parked("view_accounts").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].error.contains("does not decode"),
        "{}",
        rows[0].error
    );

    assert!(store
        .retry_parked_view::<AccountView>("accounts", parked)
        .await
        .unwrap());
    assert!(!store
        .retry_parked_view::<AccountView>("accounts", parked)
        .await
        .unwrap());
    let views = store
        .run_view::<AccountView>("accounts", options())
        .await
        .unwrap();
    let alice = views.document("alice").await.unwrap().unwrap();
    assert_eq!((alice.doc.balance, alice.version), (3, 2));
    assert!(store.parked("view_accounts").await.unwrap().is_empty());
}
