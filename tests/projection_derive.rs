//! `#[derive(Projection)]`: one method per applied variant, called with the
//! variant's fields; `handles()` in stored names (renamed variants
//! included), unlisted variants never decoded, and the read model the
//! handlers compute.

// Listing every variant leaves the derive's catch-all arm unreachable: the
// derive must not make that a warning.
#![deny(unreachable_patterns)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use evently::memory::MemoryStore;
use evently::prelude::*;
use evently::projection::{
    run_projection, HandlerError, MemoryReadModel, Projection, ProjectionOptions,
};
use evently::Payload;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum WalletEvent {
    #[event(name = "x.opened")]
    Opened {
        owner: String,
    },
    Deposited {
        amount: u64,
    },
    Withdrew {
        amount: u64,
    },
    Noted(String),
    Frozen,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Wallets {
    owners: BTreeMap<String, String>,
    balances: BTreeMap<String, u64>,
    frozen: BTreeSet<String>,
}

/// Handles openings, deposits and freezes; withdrawals and notes are not
/// listed, so they are never decoded for it.
#[derive(Projection)]
#[projection(event = WalletEvent, sink = Wallets)]
#[projection(apply(Opened = open, Deposited, Frozen))]
struct WalletProjection;

type Recorded = RecordedEvent<WalletEvent>;

// The fields come as the enum has them: `&String`, not `&str`.
#[allow(clippy::ptr_arg)]
impl WalletProjection {
    async fn open(
        &self,
        wallets: &mut Wallets,
        event: &Recorded,
        owner: &String,
    ) -> Result<(), HandlerError> {
        let id = event.aggregate_id().ok_or("not an aggregate's stream")?;
        wallets.owners.insert(id.to_owned(), owner.clone());
        wallets.balances.insert(id.to_owned(), 0);
        Ok(())
    }

    async fn deposited(
        &self,
        wallets: &mut Wallets,
        event: &Recorded,
        amount: &u64,
    ) -> Result<(), HandlerError> {
        let id = event.aggregate_id().ok_or("not an aggregate's stream")?;
        *wallets.balances.entry(id.to_owned()).or_default() += amount;
        Ok(())
    }

    async fn frozen(&self, wallets: &mut Wallets, event: &Recorded) -> Result<(), HandlerError> {
        let id = event.aggregate_id().ok_or("not an aggregate's stream")?;
        wallets.frozen.insert(id.to_owned());
        Ok(())
    }
}

/// One method for two variants whose fields have the same types, and an
/// explicit name.
#[derive(Projection)]
#[projection(name = "movements", event = WalletEvent, sink = Vec<String>)]
#[projection(apply(Deposited = line, Withdrew = line))]
struct Movements;

impl Movements {
    async fn line(
        &self,
        lines: &mut Vec<String>,
        event: &Recorded,
        amount: &u64,
    ) -> Result<(), HandlerError> {
        lines.push(format!("{} {} {amount}", event.stream_id, event.event_type));
        Ok(())
    }
}

/// Every variant in one handler: the trait by hand, one `apply`.
struct Ledger;

impl Projection for Ledger {
    type Event = WalletEvent;
    type Sink = Vec<String>;

    fn name(&self) -> &str {
        "ledger"
    }

    async fn apply(&self, lines: &mut Vec<String>, event: &Recorded) -> Result<(), HandlerError> {
        lines.push(format!("{} {:?}", event.stream_id, event.data));
        Ok(())
    }
}

/// A tuple variant's fields come in order; listing every variant leaves
/// no catch-all (the `deny(unreachable_patterns)` above checks it).
#[derive(Projection)]
#[projection(event = WalletEvent, sink = Vec<String>)]
#[projection(apply(Opened = note, Deposited = note_amount, Withdrew = note_amount, Noted, Frozen = note_frozen))]
struct Notes;

// The fields come as the enum has them: `&String`, not `&str`.
#[allow(clippy::ptr_arg)]
impl Notes {
    async fn note(
        &self,
        notes: &mut Vec<String>,
        _: &Recorded,
        text: &String,
    ) -> Result<(), HandlerError> {
        notes.push(text.clone());
        Ok(())
    }

    async fn note_amount(
        &self,
        notes: &mut Vec<String>,
        _: &Recorded,
        amount: &u64,
    ) -> Result<(), HandlerError> {
        notes.push(amount.to_string());
        Ok(())
    }

    async fn noted(
        &self,
        notes: &mut Vec<String>,
        _: &Recorded,
        text: &String,
    ) -> Result<(), HandlerError> {
        notes.push(format!("note: {text}"));
        Ok(())
    }

    async fn note_frozen(&self, notes: &mut Vec<String>, _: &Recorded) -> Result<(), HandlerError> {
        notes.push("frozen".into());
        Ok(())
    }
}

fn new_event(event: &WalletEvent) -> NewEvent {
    NewEvent::from_event(event, Metadata::new()).unwrap()
}

async fn append(store: &MemoryStore, stream: &str, events: Vec<NewEvent>) -> u64 {
    let recorded = store
        .append(&StreamId::from(stream), ExpectedVersion::Any, events)
        .await
        .unwrap();
    recorded.last().unwrap().global_position
}

#[test]
fn the_derived_event_maps_variants_to_stored_names() {
    assert_eq!(
        WalletEvent::event_type_of_variant("Opened"),
        Some("x.opened")
    );
    assert_eq!(
        WalletEvent::event_type_of_variant("Deposited"),
        Some("Deposited")
    );
    assert_eq!(WalletEvent::event_type_of_variant("x.opened"), None);
    assert_eq!(WalletEvent::event_type_of_variant("Missing"), None);
}

#[test]
fn handles_gives_the_stored_names_of_the_listed_variants_only() {
    let projection = WalletProjection;
    assert_eq!(projection.name(), "wallet_projection");
    assert_eq!(projection.handles(), ["x.opened", "Deposited", "Frozen"]);
    // Computed once: the same list every time.
    assert!(std::ptr::eq(projection.handles(), projection.handles()));

    assert_eq!(Ledger.name(), "ledger");
    assert_eq!(
        Ledger.handles(),
        ["x.opened", "Deposited", "Withdrew", "Noted", "Frozen"]
    );
}

#[tokio::test]
async fn unlisted_variants_are_skipped_undecoded_and_the_handlers_build_the_read_model() {
    let store = MemoryStore::new();
    append(
        &store,
        "w-1",
        vec![
            new_event(&WalletEvent::Opened {
                owner: "Ada".into(),
            }),
            new_event(&WalletEvent::Deposited { amount: 30 }),
            // Not handled, and neither payload would decode.
            NewEvent::raw(
                "Withdrew",
                1,
                Payload::from_json(r#""not an object""#).unwrap(),
                Metadata::new(),
            ),
            NewEvent::raw(
                "Noted",
                1,
                Payload::from_json(r#"{"not":"a string"}"#).unwrap(),
                Metadata::new(),
            ),
            new_event(&WalletEvent::Deposited { amount: 12 }),
        ],
    )
    .await;
    let last = append(
        &store,
        "w-2",
        vec![
            new_event(&WalletEvent::Opened {
                owner: "Bob".into(),
            }),
            new_event(&WalletEvent::Noted("hello".into())),
            new_event(&WalletEvent::Withdrew { amount: 1 }),
            new_event(&WalletEvent::Frozen),
        ],
    )
    .await;
    // The two raw events really cannot decode: only skipping them lets the
    // projection through.
    for raw in &store.read_all(3, 2).await.unwrap() {
        assert!(raw.decode::<WalletEvent>().is_err(), "{raw:?}");
    }

    let model = MemoryReadModel::<Wallets>::default();
    let handle = run_projection(
        store.clone(),
        WalletProjection,
        model.clone(),
        ProjectionOptions::default().retries(0, Duration::from_millis(1)),
    );
    handle.wait_for(last, Duration::from_secs(5)).await.unwrap();
    let status = handle.stop().await;
    assert_eq!((status.position, status.processed), (last, last));
    assert!(model.parked().is_empty());
    assert_eq!(
        model.read(Wallets::clone),
        Wallets {
            // Keyed by aggregate id: streams `w-1` and `w-2` of aggregate `w`.
            owners: BTreeMap::from([("1".into(), "Ada".into()), ("2".into(), "Bob".into())]),
            balances: BTreeMap::from([("1".into(), 42), ("2".into(), 0)]),
            frozen: BTreeSet::from(["2".into()]),
        }
    );
}

#[tokio::test]
async fn apply_ignores_a_variant_it_does_not_list() {
    let store = MemoryStore::new();
    append(
        &store,
        "w-1",
        vec![new_event(&WalletEvent::Withdrew { amount: 5 })],
    )
    .await;
    let event = store.read_all(1, 1).await.unwrap()[0]
        .decode::<WalletEvent>()
        .unwrap();
    let mut wallets = Wallets::default();
    WalletProjection.apply(&mut wallets, &event).await.unwrap();
    assert_eq!(wallets, Wallets::default());

    let mut lines = Vec::new();
    Ledger.apply(&mut lines, &event).await.unwrap();
    assert_eq!(lines, ["w-1 Withdrew { amount: 5 }"]);
}

#[tokio::test]
async fn each_handler_gets_its_variants_fields_in_order() {
    let store = MemoryStore::new();
    let events = [
        WalletEvent::Opened {
            owner: "Ada".into(),
        },
        WalletEvent::Deposited { amount: 7 },
        WalletEvent::Noted("hi".into()),
        WalletEvent::Withdrew { amount: 2 },
        WalletEvent::Frozen,
    ];
    append(&store, "w-1", events.iter().map(new_event).collect()).await;
    let recorded: Vec<Recorded> = store
        .read_all(1, 10)
        .await
        .unwrap()
        .iter()
        .map(|raw| raw.decode().unwrap())
        .collect();
    let (mut notes, mut movements) = (Vec::new(), Vec::new());
    for event in &recorded {
        Notes.apply(&mut notes, event).await.unwrap();
        Movements.apply(&mut movements, event).await.unwrap();
    }
    assert_eq!(notes, ["Ada", "7", "note: hi", "2", "frozen"]);
    assert_eq!(movements, ["w-1 Deposited 7", "w-1 Withdrew 2"]);
    assert_eq!(Movements.name(), "movements");
    assert_eq!(Movements.handles(), ["Deposited", "Withdrew"]);
}

/// A variant whose name in snake case is a keyword: its handler is the raw
/// identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum ParcelEvent {
    Move { to: String },
    Packed,
}

#[derive(Projection)]
#[projection(event = ParcelEvent, sink = Vec<String>, apply(Move))]
struct ParcelRoute;

// The fields come as the enum has them: `&String`, not `&str`.
#[allow(clippy::ptr_arg)]
impl ParcelRoute {
    async fn r#move(
        &self,
        route: &mut Vec<String>,
        _: &RecordedEvent<ParcelEvent>,
        to: &String,
    ) -> Result<(), HandlerError> {
        route.push(to.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_keyword_method_name_is_called_as_a_raw_identifier() {
    assert_eq!(ParcelRoute.handles(), ["Move"]);
    let store = MemoryStore::new();
    let last = append(
        &store,
        "p-1",
        vec![
            NewEvent::from_event(&ParcelEvent::Packed, Metadata::new()).unwrap(),
            NewEvent::from_event(&ParcelEvent::Move { to: "Lyon".into() }, Metadata::new())
                .unwrap(),
        ],
    )
    .await;
    let model = MemoryReadModel::<Vec<String>>::default();
    let handle = run_projection(
        store.clone(),
        ParcelRoute,
        model.clone(),
        ProjectionOptions::default(),
    );
    handle.wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(model.read(Vec::clone), ["Lyon"]);
}
