//! What the derives generate, used through the `evently` facade: stored names,
//! versions and exact payloads of events, aggregate ids and command types
//! of commands, and aggregates deciding and evolving through the trait.

use evently::{Aggregate, Command, DecodeErrorKind, Event, Payload, RoutedCommand};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(version = 2)]
enum AccountEvent {
    #[event(name = "account.opened", version = 1)]
    Opened {
        owner: String,
    },
    Deposited {
        amount: u64,
    },
    Renamed(String),
    Moved(u32, u32),
    #[event(version = 5)]
    Closed,
}

fn round_trip<E: Event + std::fmt::Debug + PartialEq>(event: E, json: &str) {
    let payload = event.encode().unwrap();
    assert_eq!(payload.as_str(), json, "payload of {event:?}");
    let decoded = E::decode(event.event_type(), event.schema_version(), &payload).unwrap();
    assert_eq!(decoded, event);
}

#[test]
fn event_types_are_listed_in_declaration_order() {
    assert_eq!(
        AccountEvent::EVENT_TYPES,
        ["account.opened", "Deposited", "Renamed", "Moved", "Closed"]
    );
}

#[test]
fn event_type_and_version_come_from_attributes_or_defaults() {
    let cases = [
        (
            AccountEvent::Opened {
                owner: "ann".into(),
            },
            "account.opened",
            1,
        ),
        (AccountEvent::Deposited { amount: 5 }, "Deposited", 2),
        (AccountEvent::Renamed("bob".into()), "Renamed", 2),
        (AccountEvent::Moved(1, 2), "Moved", 2),
        (AccountEvent::Closed, "Closed", 5),
    ];
    for (event, event_type, version) in cases {
        assert_eq!(event.event_type(), event_type, "{event:?}");
        assert_eq!(event.schema_version(), version, "{event:?}");
    }
}

#[test]
fn every_variant_shape_round_trips_with_only_its_fields_in_the_payload() {
    round_trip(
        AccountEvent::Opened {
            owner: "ann".into(),
        },
        r#"{"owner":"ann"}"#,
    );
    round_trip(AccountEvent::Deposited { amount: 5 }, r#"{"amount":5}"#);
    round_trip(AccountEvent::Renamed("bob".into()), r#""bob""#);
    round_trip(AccountEvent::Moved(1, 2), "[1,2]");
    round_trip(AccountEvent::Closed, "null");
}

#[test]
fn decode_reads_the_variant_named_by_the_stored_type() {
    let payload = Payload::from_json(r#"{"owner": "cy"}"#).unwrap();
    let event = AccountEvent::decode("account.opened", 1, &payload).unwrap();
    assert_eq!(event, AccountEvent::Opened { owner: "cy".into() });
}

#[test]
fn an_unknown_event_type_is_an_error_listing_the_known_ones() {
    let payload = Payload::from_json(r#"{"owner":"ann"}"#).unwrap();
    // The Rust name of a renamed variant is not a stored name.
    for unknown in ["Opened", "Withdrawn", ""] {
        match AccountEvent::decode(unknown, 1, &payload) {
            Err(DecodeErrorKind::UnknownEventType { known }) => {
                assert_eq!(known, "account.opened, Deposited, Renamed, Moved, Closed");
            }
            other => panic!("decoding {unknown:?} gave {other:?}"),
        }
    }
}

#[test]
fn another_schema_version_is_an_error_naming_both_versions() {
    let payload = Payload::from_json(r#"{"amount":5}"#).unwrap();
    match AccountEvent::decode("Deposited", 1, &payload) {
        Err(DecodeErrorKind::UnsupportedSchemaVersion { found, current }) => {
            assert_eq!((found, current), (1, 2));
        }
        other => panic!("{other:?}"),
    }
    match AccountEvent::decode("Closed", 2, &Payload::from_json("null").unwrap()) {
        Err(DecodeErrorKind::UnsupportedSchemaVersion { found, current }) => {
            assert_eq!((found, current), (2, 5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_payload_without_the_variants_fields_is_a_payload_error() {
    let payload = Payload::from_json(r#"{"sum":5}"#).unwrap();
    assert!(matches!(
        AccountEvent::decode("Deposited", 2, &payload),
        Err(DecodeErrorKind::Payload(_))
    ));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "limit.set", version = 3)]
struct LimitSet {
    limit: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
struct Audited {
    by: String,
}

#[test]
fn a_struct_is_one_event_type() {
    assert_eq!(LimitSet::EVENT_TYPES, ["limit.set"]);
    let event = LimitSet { limit: 100 };
    assert_eq!(event.event_type(), "limit.set");
    assert_eq!(event.schema_version(), 3);
    round_trip(event, r#"{"limit":100}"#);

    assert_eq!(Audited::EVENT_TYPES, ["Audited"]);
    let event = Audited { by: "ops".into() };
    assert_eq!(event.schema_version(), 1);
    round_trip(event, r#"{"by":"ops"}"#);
}

#[test]
fn a_struct_event_checks_the_stored_type_and_version() {
    let payload = Payload::from_json(r#"{"limit":100}"#).unwrap();
    match LimitSet::decode("LimitSet", 3, &payload) {
        Err(DecodeErrorKind::UnknownEventType { known }) => assert_eq!(known, "limit.set"),
        other => panic!("{other:?}"),
    }
    match LimitSet::decode("limit.set", 2, &payload) {
        Err(DecodeErrorKind::UnsupportedSchemaVersion { found, current }) => {
            assert_eq!((found, current), (2, 3));
        }
        other => panic!("{other:?}"),
    }
}

#[derive(Debug, Clone, PartialEq, Command)]
enum AccountCommand {
    Open {
        id: String,
        owner: String,
    },
    #[command(name = "deposit")]
    Deposit {
        #[command(id)]
        account: u64,
        amount: u64,
    },
    Close(String, #[command(id)] u32),
    // A marked field wins over a field named `id`.
    Transfer {
        id: String,
        #[command(id)]
        from: String,
        amount: u64,
    },
}

#[derive(Debug, Clone, Command)]
struct Freeze {
    id: u32,
}

#[derive(Debug, Clone, Command)]
#[command(name = "unfreeze")]
struct Unfreeze(#[command(id)] String);

#[test]
fn command_ids_come_from_the_id_field_or_the_marked_field() {
    let cases = [
        (
            AccountCommand::Open {
                id: "a-1".into(),
                owner: "ann".into(),
            },
            "a-1",
            "Open",
        ),
        (
            AccountCommand::Deposit {
                account: 7,
                amount: 10,
            },
            "7",
            "deposit",
        ),
        (AccountCommand::Close("done".into(), 42), "42", "Close"),
        (
            AccountCommand::Transfer {
                id: "t-9".into(),
                from: "a-2".into(),
                amount: 1,
            },
            "a-2",
            "Transfer",
        ),
    ];
    for (command, id, command_type) in cases {
        assert_eq!(command.aggregate_id(), id, "{command:?}");
        assert_eq!(command.command_type(), command_type, "{command:?}");
    }
    assert_eq!(Freeze { id: 3 }.aggregate_id(), "3");
    assert_eq!(Freeze { id: 3 }.command_type(), "Freeze");
    assert_eq!(Unfreeze("f-1".into()).aggregate_id(), "f-1");
    assert_eq!(Unfreeze("f-1".into()).command_type(), "unfreeze");
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("the account is not open")]
    NotOpen,
    #[error("a deposit of {amount} is over the limit of {limit}")]
    OverLimit { amount: u64, limit: u64 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = AccountError)]
struct BankAccount {
    open: bool,
    balance: u64,
}

impl BankAccount {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Close(..) => Ok(vec![AccountEvent::Closed]),
            AccountCommand::Transfer { .. } => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Closed => self.open = false,
            AccountEvent::Renamed(_) | AccountEvent::Moved(..) => {}
        }
    }
}

#[test]
fn an_aggregate_type_defaults_to_the_struct_name_in_snake_case() {
    assert_eq!(BankAccount::TYPE, "bank_account");
    assert_eq!(BankAccount::stream_id("a-1").as_str(), "bank_account-a-1");
}

#[test]
fn an_aggregate_without_services_decides_with_its_decide_and_applies_with_apply() {
    let mut account = BankAccount::default();
    let deposit = AccountCommand::Deposit {
        account: 1,
        amount: 5,
    };
    let refused = futures::executor::block_on(Aggregate::decide(&account, deposit.clone(), &()));
    assert_eq!(refused.unwrap_err(), AccountError::NotOpen);

    let open = AccountCommand::Open {
        id: "1".into(),
        owner: "ann".into(),
    };
    let events = futures::executor::block_on(Aggregate::decide(&account, open, &())).unwrap();
    assert_eq!(
        events,
        [AccountEvent::Opened {
            owner: "ann".into()
        }]
    );
    for event in &events {
        Aggregate::apply(&mut account, event);
    }
    let events = futures::executor::block_on(Aggregate::decide(&account, deposit, &())).unwrap();
    assert_eq!(events, [AccountEvent::Deposited { amount: 5 }]);
    Aggregate::apply(&mut account, &events[0]);
    assert!(account.open);
    assert_eq!(account.balance, 5);
}

/// A service the decision consults asynchronously.
struct Limits {
    max_deposit: u64,
}

impl Limits {
    async fn max_deposit(&self) -> u64 {
        tokio::task::yield_now().await;
        self.max_deposit
    }
}

// Keys may be spread over several attributes.
#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = AccountError)]
#[aggregate(services = Limits, name = "guarded_account", shares_event)]
struct GuardedAccount {
    balance: u64,
}

impl GuardedAccount {
    async fn decide(
        &self,
        command: AccountCommand,
        limits: &Limits,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Deposit { amount, .. } => {
                let limit = limits.max_deposit().await;
                if amount > limit {
                    return Err(AccountError::OverLimit { amount, limit });
                }
                Ok(vec![AccountEvent::Deposited { amount }])
            }
            _ => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Deposited { amount } = event {
            self.balance += amount;
        }
    }
}

#[tokio::test]
async fn an_aggregate_with_services_awaits_them_in_its_async_handle() {
    assert_eq!(GuardedAccount::TYPE, "guarded_account");
    let limits = Limits { max_deposit: 100 };
    let mut account = GuardedAccount::default();

    let over = AccountCommand::Deposit {
        account: 1,
        amount: 101,
    };
    assert_eq!(
        Aggregate::decide(&account, over, &limits)
            .await
            .unwrap_err(),
        AccountError::OverLimit {
            amount: 101,
            limit: 100
        }
    );

    let deposit = AccountCommand::Deposit {
        account: 1,
        amount: 100,
    };
    // The decision is `Send`: it can run on another task.
    let events = tokio::spawn(async move {
        let account = GuardedAccount::default();
        Aggregate::decide(&account, deposit, &limits).await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(events, [AccountEvent::Deposited { amount: 100 }]);
    Aggregate::apply(&mut account, &events[0]);
    assert_eq!(account.balance, 100);
}

#[allow(clippy::upper_case_acronyms)]
#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, command = AccountCommand, error = AccountError, shares_event)]
struct HTTPGateway;

impl HTTPGateway {
    fn decide(&self, _: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        Ok(vec![])
    }

    fn apply(&mut self, _: &AccountEvent) {}
}

#[test]
fn an_acronym_in_an_aggregate_name_is_one_word() {
    assert_eq!(HTTPGateway::TYPE, "http_gateway");
}
