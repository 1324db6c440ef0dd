//! `#[derive(Projection)]`: one method per handled variant, `handles()` in
//! stored names (renamed variants included), unlisted variants never
//! decoded, and the read model the handlers compute.

// Listing every variant leaves the derive's catch-all arm unreachable: the
// derive must not make that a warning.
#![deny(unreachable_patterns)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use es::memory::MemoryStore;
use es::prelude::*;
use es::projection::{
    run_projection, HandlerError, MemoryReadModel, Projection, ProjectionOptions,
};
use es::{DecodeErrorKind, EncodeError, Payload};
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
#[projection(handle(Opened = open, Deposited, Frozen))]
struct WalletProjection;

impl WalletProjection {
    async fn open(
        &self,
        wallets: &mut Wallets,
        event: &RecordedEvent<WalletEvent>,
    ) -> Result<(), HandlerError> {
        let WalletEvent::Opened { owner } = &event.data else {
            return Err(format!("`open` called with {:?}", event.data).into());
        };
        wallets
            .owners
            .insert(event.stream_id.to_string(), owner.clone());
        wallets.balances.insert(event.stream_id.to_string(), 0);
        Ok(())
    }

    async fn deposited(
        &self,
        wallets: &mut Wallets,
        event: &RecordedEvent<WalletEvent>,
    ) -> Result<(), HandlerError> {
        let WalletEvent::Deposited { amount } = &event.data else {
            return Err(format!("`deposited` called with {:?}", event.data).into());
        };
        *wallets
            .balances
            .entry(event.stream_id.to_string())
            .or_default() += amount;
        Ok(())
    }

    async fn frozen(
        &self,
        wallets: &mut Wallets,
        event: &RecordedEvent<WalletEvent>,
    ) -> Result<(), HandlerError> {
        let WalletEvent::Frozen = &event.data else {
            return Err(format!("`frozen` called with {:?}", event.data).into());
        };
        wallets.frozen.insert(event.stream_id.to_string());
        Ok(())
    }
}

/// Every variant listed (so no catch-all is needed), one method for two of
/// them, and an explicit name.
#[derive(Projection)]
#[projection(name = "ledger", event = WalletEvent, sink = Vec<String>)]
#[projection(handle(Opened = line, Deposited = line, Withdrew = line, Noted = line, Frozen = line))]
struct Ledger;

impl Ledger {
    async fn line(
        &self,
        lines: &mut Vec<String>,
        event: &RecordedEvent<WalletEvent>,
    ) -> Result<(), HandlerError> {
        lines.push(format!("{} {:?}", event.stream_id, event.data));
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
            owners: BTreeMap::from([("w-1".into(), "Ada".into()), ("w-2".into(), "Bob".into())]),
            balances: BTreeMap::from([("w-1".into(), 42), ("w-2".into(), 0)]),
            frozen: BTreeSet::from(["w-2".into()]),
        }
    );
}

#[tokio::test]
async fn handle_ignores_a_variant_it_does_not_list() {
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
    WalletProjection.handle(&mut wallets, &event).await.unwrap();
    assert_eq!(wallets, Wallets::default());

    let mut lines = Vec::new();
    Ledger.handle(&mut lines, &event).await.unwrap();
    assert_eq!(lines, ["w-1 Withdrew { amount: 5 }"]);
}

/// A variant whose name in snake case is a keyword: its handler is the raw
/// identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum ParcelEvent {
    Move { to: String },
    Packed,
}

#[derive(Projection)]
#[projection(event = ParcelEvent, sink = Vec<String>, handle(Move))]
struct ParcelRoute;

impl ParcelRoute {
    async fn r#move(
        &self,
        route: &mut Vec<String>,
        event: &RecordedEvent<ParcelEvent>,
    ) -> Result<(), HandlerError> {
        if let ParcelEvent::Move { to } = &event.data {
            route.push(to.clone());
        }
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

/// An event written by hand, without `event_type_of_variant`: the derive
/// falls back to the variants' own names.
#[derive(Debug, Clone, PartialEq)]
enum Manual {
    Ping,
    Pong,
}

impl Event for Manual {
    const EVENT_TYPES: &'static [&'static str] = &["Ping", "Pong"];

    fn event_type(&self) -> &'static str {
        match self {
            Manual::Ping => "Ping",
            Manual::Pong => "Pong",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<Payload, EncodeError> {
        Ok(Payload::from_json("null").unwrap())
    }

    fn decode(
        event_type: &str,
        _schema_version: u32,
        _payload: &Payload,
    ) -> Result<Self, DecodeErrorKind> {
        match event_type {
            "Ping" => Ok(Manual::Ping),
            "Pong" => Ok(Manual::Pong),
            _ => Err(DecodeErrorKind::unknown_event_type(Self::EVENT_TYPES)),
        }
    }
}

#[derive(Projection)]
#[projection(event = Manual, sink = u32, handle(Pong = count))]
struct Pongs;

impl Pongs {
    async fn count(&self, n: &mut u32, _: &RecordedEvent<Manual>) -> Result<(), HandlerError> {
        *n += 1;
        Ok(())
    }
}

#[test]
fn a_hand_written_event_falls_back_to_the_variant_names() {
    assert_eq!(Pongs.handles(), ["Pong"]);
    assert_eq!(Pongs.name(), "pongs");
}
