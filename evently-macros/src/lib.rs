//! Derive macros for the `evently` event-sourcing framework: `Event`, `Command`,
//! `Aggregate` and `Projection`. Use them through `evently` (or `evently-core`),
//! which re-exports them beside the traits they implement; the generated
//! code names those traits through that crate, so a user needs no other
//! dependency.
//!
//! Each derive parses its input into a model (`ast`, `attr`), checks it
//! (`valid`) and emits the impl (`expand`). Every mistake in an input is
//! reported in the same build, each at the token that causes it.

#![warn(missing_docs)]

mod ast;
mod attr;
mod ctxt;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `evently::Event` for an enum (one stored event type per variant) or a
/// struct (one event type).
///
/// The type must also derive serde's `Serialize` and `Deserialize`. A
/// variant's payload holds only its fields: a struct variant is stored as a
/// JSON object (`{"amount":5}`), a newtype variant as its value, a tuple
/// variant as an array and a unit variant as `null`.
///
/// | attribute | on | meaning | default |
/// |---|---|---|---|
/// | `#[event(version = N)]` | the enum | the schema version of its variants, `N >= 1` | `1` |
/// | `#[event(name = "...")]` | a variant, or the struct | the stored event type name | the variant's (or struct's) name |
/// | `#[event(version = N)]` | a variant, or the struct | the schema version, `N >= 1` | the enum's version, else `1` |
/// | `#[event(upcaster = function)]` | the enum, or the struct | `fn(OldEvent) -> Option<Vec<OldEvent>>`: one upcasting step for an older version or a former name (see `evently_core::upcast`) | none |
///
/// On an enum, `event_type_of_variant` maps each variant's Rust name to its
/// stored name (`"Opened"` to `"account.opened"` below), for the
/// `Projection` derive.
///
/// `decode` reads the current schema version of each type only: another
/// stored version is `DecodeErrorKind::UnsupportedSchemaVersion`, and a
/// type name none of the variants has is `DecodeErrorKind::UnknownEventType`.
///
/// The derive rejects generic types, unions, empty enums, two variants with
/// the same stored name, and the serde attributes that would change how
/// serde names or lays out the variants, which decoding relies on:
/// `#[serde(tag, content, untagged, rename_all)]` on the enum and
/// `#[serde(rename, alias, skip, skip_serializing, skip_deserializing,
/// other, untagged)]` on a variant. Name stored types with
/// `#[event(name = "...")]` instead.
///
/// ```
/// use evently_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
/// #[event(version = 2)]
/// enum AccountEvent {
///     #[event(name = "account.opened")]
///     Opened { owner: String },
///     #[event(version = 3)]
///     Deposited { amount: u64 },
///     Closed,
/// }
///
/// assert_eq!(AccountEvent::EVENT_TYPES, ["account.opened", "Deposited", "Closed"]);
/// assert_eq!(AccountEvent::event_type_of_variant("Opened"), Some("account.opened"));
/// let event = AccountEvent::Deposited { amount: 5 };
/// assert_eq!(event.schema_version(), 3);
/// assert_eq!(event.encode().unwrap().as_str(), r#"{"amount":5}"#);
/// ```
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_event(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `evently::Command` for an enum (one command type per variant) or a
/// struct (one command type).
///
/// Each variant (or the struct) names the aggregate instance it targets
/// with exactly one field: the field marked `#[command(id)]`, else the
/// field called `id`. `aggregate_id()` is that field's `Display` text, so
/// its type must implement `Display`. A tuple variant marks its id field.
///
/// | attribute | on | meaning | default |
/// |---|---|---|---|
/// | `#[command(id)]` | a field | this field holds the aggregate id | the field named `id` |
/// | `#[command(name = "...")]` | a variant, or the struct | the command type name (`command_type()`) | the variant's (or struct's) name |
///
/// A command type with no id field anywhere is not routed: it implements
/// `Command` only, and runs with `Repository::execute_on(id, command)`;
/// with id fields it also implements `RoutedCommand`. The derive rejects
/// generic types, unions, empty enums, and, in a routed enum, a variant
/// without an id field and a variant with two `#[command(id)]` fields.
///
/// ```
/// use evently_core::{Command, RoutedCommand};
///
/// #[derive(Clone, Command)]
/// enum AccountCommand {
///     Open { id: String, owner: String },
///     #[command(name = "deposit")]
///     Deposit { #[command(id)] account: u64, amount: u64 },
///     Close(#[command(id)] String),
/// }
///
/// let command = AccountCommand::Deposit { account: 7, amount: 10 };
/// assert_eq!(command.aggregate_id(), "7");
/// assert_eq!(command.command_type(), "deposit");
/// ```
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_command(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `evently::Aggregate` for a struct: the aggregate's state.
///
/// The struct must implement `Default` (the state before any event) and
/// have two inherent methods, which the impl calls:
///
/// ```text
/// fn apply(&mut self, event: &Event)
/// fn decide(&self, command: Command) -> Result<Vec<Event>, Error>                          // without `services`
/// async fn decide(&self, command: Command, services: &Services) -> Result<Vec<Event>, Error> // with `services`
/// ```
///
/// | attribute key | meaning | required |
/// |---|---|---|
/// | `#[aggregate(event = Type)]` | the event type (`Aggregate::Event`) | yes |
/// | `#[aggregate(command = Type)]` | the command type (`Aggregate::Command`) | yes |
/// | `#[aggregate(error = Type)]` | the domain error type (`Aggregate::Error`) | yes |
/// | `#[aggregate(services = Type)]` | what `decide` may consult; then `decide` is `async` and takes `&Type` | no: `()` |
/// | `#[aggregate(name = "...")]` | the aggregate type name (`Aggregate::TYPE`), prefix of its streams | no: the struct's name in snake case (`BankAccount` is `"bank_account"`) |
///
/// The keys may share one attribute or be spread over several. The derive
/// rejects enums, unions, generic types, a missing required key, a key
/// given twice and an empty name.
///
/// ```
/// use evently_core::Aggregate;
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, evently_core::Event)]
/// # enum AccountEvent { Opened { owner: String } }
/// # #[derive(Clone, evently_core::Command)]
/// # enum AccountCommand { Open { id: String, owner: String } }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("already open")]
/// # struct AlreadyOpen;
///
/// #[derive(Default, Aggregate)]
/// #[aggregate(event = AccountEvent, command = AccountCommand, error = AlreadyOpen)]
/// struct BankAccount {
///     open: bool,
/// }
///
/// impl BankAccount {
///     fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AlreadyOpen> {
///         match command {
///             AccountCommand::Open { .. } if self.open => Err(AlreadyOpen),
///             AccountCommand::Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
///         }
///     }
///
///     fn apply(&mut self, event: &AccountEvent) {
///         match event {
///             AccountEvent::Opened { .. } => self.open = true,
///         }
///     }
/// }
///
/// assert_eq!(BankAccount::TYPE, "bank_account");
/// ```
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_aggregate(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `evently::projection::Projection` for a struct: the projection, with
/// one inherent method per event variant it applies.
///
/// Each listed variant names a method of the struct, which the impl calls
/// with the runner's sink, the recorded event (id, position, aggregate id,
/// metadata) and the variant's fields by reference, in declaration order
/// (none for a unit variant):
///
/// ```text
/// // for `Deposited { amount: u64, note: String }`
/// async fn deposited(&self, sink: &mut Sink, event: &RecordedEvent<Event>, amount: &u64, note: &String)
///     -> Result<(), HandlerError>
/// ```
///
/// The fields come by reference to their own types (a `String` field as
/// `&String`: clippy's `ptr_arg` lint suggests `&str`, which would not
/// match; allow it on the impl).
///
/// | attribute key | meaning | required |
/// |---|---|---|
/// | `#[projection(event = Type)]` | the event enum (`Projection::Event`), with `#[derive(Event)]` | yes |
/// | `#[projection(sink = Type)]` | where the handlers write (`Projection::Sink`): `PgConnection`, or the `T` of a `MemoryReadModel<T>` | yes |
/// | `#[projection(apply(Variant = method, ...))]` | the variants applied, each with its method | yes, at least one variant |
/// | `#[projection(apply(Variant, ...))]` | the same, the method being the variant's name in snake case (`Opened` calls `opened`, `Move` calls `r#move`) | |
/// | `#[projection(name = "...")]` | the projection's name (`name()`), the key of its checkpoint | no: the struct's name in snake case (`AccountBalances` is `"account_balances"`) |
///
/// The two forms of `apply` entries mix in one list, and one method may
/// apply several variants whose fields have the same types. `handles()`
/// gives the stored event type names of the listed variants (their
/// `#[event(name = "...")]`, through `Event::event_type_of_variant`),
/// computed once; events of the other variants are skipped by the runner
/// without being decoded, and `apply` ignores them. The keys may share one
/// attribute or be spread over several. The methods' futures must be
/// `Send`, as `apply`'s is.
///
/// The derive rejects enums, unions, generic types, a missing `event`,
/// `sink` or `apply(...)`, an empty `apply()` list, a variant listed
/// twice, an entry that is not `Variant` or `Variant = method`, a variant
/// whose snake-case name cannot be a method (`Crate`: write
/// `Crate = on_crate`), a key given twice and an empty name. A listed
/// variant the event enum does not have, or a method the struct does not
/// have (or not `async`, or with other parameters), is reported by the
/// compiler at its name in the attribute.
///
/// ```
/// use evently_core::projection::{HandlerError, Projection};
/// use evently_core::RecordedEvent;
/// use std::collections::HashMap;
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, evently_core::Event)]
/// # enum AccountEvent { Opened { owner: String }, Deposited { amount: u64 }, Withdrew { amount: u64 } }
///
/// // `Withdrew` is not listed: its events are never decoded for `Balances`.
/// #[derive(Projection)]
/// #[projection(event = AccountEvent, sink = HashMap<String, u64>)]
/// #[projection(apply(Opened = open, Deposited))]
/// struct Balances;
///
/// type Recorded = RecordedEvent<AccountEvent>;
///
/// impl Balances {
///     async fn open(&self, balances: &mut HashMap<String, u64>, event: &Recorded, _owner: &String)
///         -> Result<(), HandlerError> {
///         balances.insert(event.aggregate_id().unwrap_or_default().to_owned(), 0);
///         Ok(())
///     }
///
///     async fn deposited(&self, balances: &mut HashMap<String, u64>, event: &Recorded, amount: &u64)
///         -> Result<(), HandlerError> {
///         *balances.entry(event.aggregate_id().unwrap_or_default().to_owned()).or_default() += amount;
///         Ok(())
///     }
/// }
///
/// assert_eq!(Balances.name(), "balances");
/// assert_eq!(Balances.handles(), ["Opened", "Deposited"]);
/// ```
#[proc_macro_derive(Projection, attributes(projection))]
pub fn derive_projection(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_projection(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
