//! Events written by older code load into today's types, on both stores:
//! step-by-step upgrades (v1 → v2 → v3), a renamed variant, an event split
//! into two, and clear errors for a missing upcaster or a version from the
//! future. The old payloads are stored by hand, as old code wrote them.

use std::collections::BTreeMap;
use std::time::Duration;

use evently::prelude::*;
use evently::projection::{
    run_projection, HandlerError, MemoryReadModel, Projection, ProjectionOptions,
};
use evently::upcast::OldEvent;
use evently::{DecodeErrorKind, Payload};
use serde::{Deserialize, Serialize};

#[macro_use]
mod common;

/// Today's events. Their history:
/// - `Deposited` v1 stored `{"cents": 1050}`; v2 stored `{"amount": 10.5}`;
///   v3 adds a currency.
/// - `Credited` v1 was renamed `Deposited` (its payload was v1's).
/// - `TransferredIn` v1 `{"amount": 10.0, "fee": 1.5}` became a deposit
///   and a fee.
/// - `Withdrew` is at v2 and nobody wrote an upcaster for its v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(upcaster = upcast_wallet)]
enum WalletEvent {
    #[event(version = 3)]
    Deposited {
        amount: f64,
        currency: String,
    },
    FeeCharged {
        amount: f64,
    },
    #[event(version = 2)]
    Withdrew {
        amount: f64,
    },
}

fn upcast_wallet(old: OldEvent) -> Option<Vec<OldEvent>> {
    match (old.event_type.as_str(), old.schema_version) {
        ("Deposited", 1) => Some(vec![old.upgraded(2, |p| {
            let cents = p["cents"].as_f64().unwrap_or_default();
            *p = serde_json::json!({ "amount": cents / 100.0 });
        })]),
        ("Deposited", 2) => Some(vec![old.upgraded(3, |p| p["currency"] = "EUR".into())]),
        ("Credited", 1) => Some(vec![old.renamed("Deposited", 1)]),
        ("TransferredIn", 1) => {
            let fee = old.payload["fee"].clone();
            let amount = old.payload["amount"].clone();
            Some(vec![
                OldEvent::new("Deposited", 2, serde_json::json!({ "amount": amount })),
                OldEvent::new("FeeCharged", 1, serde_json::json!({ "amount": fee })),
            ])
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Command)]
enum WalletCommand {
    Deposit { id: String, amount: f64 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(name = "wallet", event = WalletEvent, command = WalletCommand, error = Never)]
struct Wallet {
    balance: f64,
    deposits: u32,
}

impl Wallet {
    fn decide(&self, command: WalletCommand) -> Result<Vec<WalletEvent>, Never> {
        let WalletCommand::Deposit { amount, .. } = command;
        Ok(vec![WalletEvent::Deposited {
            amount,
            currency: "EUR".into(),
        }])
    }

    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::Deposited { amount, .. } => {
                self.balance += amount;
                self.deposits += 1;
            }
            WalletEvent::FeeCharged { amount } | WalletEvent::Withdrew { amount } => {
                self.balance -= amount
            }
        }
    }
}

async fn store_old<S: EventStore>(
    store: &S,
    stream: &str,
    event_type: &str,
    version: u32,
    payload: &str,
) {
    let event = NewEvent::raw(
        event_type.to_owned(),
        version,
        Payload::from_json(payload).unwrap(),
        Metadata::new(),
    );
    store
        .append(&StreamId::from(stream), ExpectedVersion::Any, vec![event])
        .await
        .unwrap();
}

async fn old_events_load_into_todays_types<S: EventStore + CommandStore>(store: S) {
    store_old(&store, "wallet-w", "Deposited", 1, r#"{"cents": 1050}"#).await;
    store_old(&store, "wallet-w", "Deposited", 2, r#"{"amount": 2.0}"#).await;
    store_old(&store, "wallet-w", "Credited", 1, r#"{"cents": 300}"#).await;
    store_old(
        &store,
        "wallet-w",
        "TransferredIn",
        1,
        r#"{"amount": 10.0, "fee": 1.5}"#,
    )
    .await;
    let wallets = Repository::<Wallet, _>::new(store.clone());
    wallets
        .execute(WalletCommand::Deposit {
            id: "w".into(),
            amount: 1.0,
        })
        .await
        .unwrap();

    let loaded = wallets.load("w").await.unwrap();
    assert_eq!(loaded.version, 5, "five stored events");
    assert_eq!(
        loaded.state,
        Wallet {
            balance: 10.5 + 2.0 + 3.0 + 10.0 - 1.5 + 1.0,
            deposits: 5
        }
    );

    // Each stored event, decoded: one step at a time up to today's version.
    let stored = store
        .read_stream(&StreamId::from("wallet-w"), 1, 10)
        .await
        .unwrap();
    let decoded: Vec<Vec<WalletEvent>> = stored
        .iter()
        .map(|e| {
            e.decode_all::<WalletEvent>()
                .unwrap()
                .into_iter()
                .map(|d| d.data)
                .collect()
        })
        .collect();
    let deposit = |amount: f64| WalletEvent::Deposited {
        amount,
        currency: "EUR".into(),
    };
    assert_eq!(
        decoded,
        [
            vec![deposit(10.5)],
            vec![deposit(2.0)],
            vec![deposit(3.0)],
            vec![deposit(10.0), WalletEvent::FeeCharged { amount: 1.5 }],
            vec![deposit(1.0)],
        ]
    );
    // The split event keeps its envelope: both halves sit at its position.
    let split = stored[3].decode_all::<WalletEvent>().unwrap();
    assert!(split
        .iter()
        .all(|e| e.global_position == stored[3].global_position));
    // `decode` wants exactly one event.
    let error = stored[3].decode::<WalletEvent>().unwrap_err();
    assert!(
        matches!(error.kind, DecodeErrorKind::NotOneEvent { count: 2 }),
        "{error}"
    );
}

async fn a_missing_upcaster_is_a_clear_error<S: EventStore + CommandStore>(store: S) {
    store_old(&store, "wallet-m", "Withdrew", 1, r#"{"amount": 1.0}"#).await;
    let error = Repository::<Wallet, _>::new(store.clone())
        .load("m")
        .await
        .unwrap_err();
    let CommandError::Decode(error) = error else {
        panic!("expected a decode error, got {error:?}");
    };
    assert!(matches!(
        &error.kind,
        DecodeErrorKind::MissingUpcaster { event_type, found: 1, current: Some(2) } if event_type == "Withdrew"
    ));
    assert_eq!(
        error.to_string(),
        "cannot decode event `Withdrew` (schema version 1) at version 1 of stream `wallet-m`: \
         no upcaster for `Withdrew` from schema version 1 (the event type reads version 2)"
    );

    store_old(&store, "wallet-f", "Deposited", 4, r#"{"amount": 1.0}"#).await;
    let error = Repository::<Wallet, _>::new(store.clone())
        .load("f")
        .await
        .unwrap_err();
    let CommandError::Decode(error) = error else {
        panic!("expected a decode error, got {error:?}");
    };
    assert!(matches!(
        error.kind,
        DecodeErrorKind::UnsupportedSchemaVersion {
            found: 4,
            current: 3
        }
    ));

    store_old(&store, "wallet-u", "Vanished", 1, "{}").await;
    let error = Repository::<Wallet, _>::new(store)
        .load("u")
        .await
        .unwrap_err();
    let CommandError::Decode(error) = error else {
        panic!("expected a decode error, got {error:?}");
    };
    assert!(
        matches!(error.kind, DecodeErrorKind::UnknownEventType { .. }),
        "{error}"
    );
}

/// Sums fees only: it sees the fee inside an old `TransferredIn`, and
/// never decodes a current `Deposited`.
#[derive(Projection)]
#[projection(event = WalletEvent, sink = BTreeMap<String, f64>, apply(FeeCharged = fee))]
struct Fees;

impl Fees {
    async fn fee(
        &self,
        fees: &mut BTreeMap<String, f64>,
        event: &RecordedEvent<WalletEvent>,
        amount: &f64,
    ) -> Result<(), HandlerError> {
        *fees.entry(event.stream_id.to_string()).or_default() += amount;
        Ok(())
    }
}

async fn projections_see_upcasted_events<S: EventStore>(store: S) {
    store_old(
        &store,
        "wallet-p",
        "TransferredIn",
        1,
        r#"{"amount": 10.0, "fee": 1.5}"#,
    )
    .await;
    store_old(&store, "wallet-p", "FeeCharged", 1, r#"{"amount": 0.5}"#).await;
    // A current event of a type the projection does not handle, with a
    // payload it could not decode: skipped without decoding.
    store_old(&store, "wallet-p", "Deposited", 3, r#"[1, 2]"#).await;
    // Another aggregate's event: not the projection's business.
    store_old(&store, "order-1", "OrderPlaced", 1, r#"{"total": 3}"#).await;
    let head = store.head_position().await.unwrap();
    let fees = MemoryReadModel::<BTreeMap<String, f64>>::default();
    let handle = run_projection(
        store.clone(),
        Fees,
        fees.clone(),
        ProjectionOptions::default(),
    );
    handle
        .wait_for(head, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        fees.read(|f| f.clone()),
        BTreeMap::from([("wallet-p".to_owned(), 2.0)])
    );
    assert_eq!(Fees.handles(), ["FeeCharged"]);
}

on_every_store!(
    old_events_load_into_todays_types,
    a_missing_upcaster_is_a_clear_error,
    projections_see_upcasted_events,
);
