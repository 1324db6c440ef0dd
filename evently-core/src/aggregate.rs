//! The decision model: an [`Aggregate`] decides on a [`Command`] from its
//! current state and evolves by applying the events it decided.

use std::future::Future;

use crate::event::Event;
use crate::version::StreamId;

/// A command: a request to change one aggregate instance.
///
/// Derive it with `#[derive(Command)]` on an enum or a struct. Each variant
/// names its target aggregate with a field called `id`, or with a field
/// marked `#[command(id)]` (the field's type must implement `Display`):
/// then it is a [`RoutedCommand`]. A command type without any id field is
/// run against an id the caller gives (`Repository::execute_on`).
///
/// ```
/// use evently_core::{Command, RoutedCommand};
///
/// #[derive(Clone, Command)]
/// enum AccountCommand {
///     Open { id: String, owner: String },
///     Deposit { #[command(id)] account: u64, amount: u64 },
/// }
///
/// let cmd = AccountCommand::Deposit { account: 7, amount: 10 };
/// assert_eq!(cmd.aggregate_id(), "7");
/// assert_eq!(cmd.command_type(), "Deposit");
/// ```
pub trait Command: Clone + Send + Sync + 'static {
    /// The command's type name (its variant), for logs and journals.
    fn command_type(&self) -> &'static str;
}

/// A command that names the aggregate instance it targets, so
/// `Repository::execute(command)` can route it. `#[derive(Command)]`
/// implements it when the command has an id field (`id`, or one marked
/// `#[command(id)]`) in every variant; a command type without one is run
/// with `Repository::execute_on(id, command)`.
///
/// ```
/// use evently_core::{Command, RoutedCommand};
///
/// #[derive(Clone, Command)]
/// struct Deposit { id: String, amount: u64 }
///
/// #[derive(Clone, Command)]
/// enum AccountCommand { Open { owner: String }, Close }
///
/// assert_eq!(Deposit { id: "a".into(), amount: 5 }.aggregate_id(), "a");
/// assert_eq!(AccountCommand::Close.command_type(), "Close");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not name the aggregate it targets",
    label = "no id field",
    note = "add a field named `id` (or mark one with `#[command(id)]`) to every variant, \
            or run it with `execute_on(id, command)`"
)]
pub trait RoutedCommand: Command {
    /// The id of the aggregate instance this command targets.
    fn aggregate_id(&self) -> String;
}

/// An event-sourced aggregate: state rebuilt by applying its events, and a
/// decision function from state and command to new events.
///
/// Derive it with `#[derive(Aggregate)]` and write two inherent methods of
/// the same names as the trait's (the derive forwards to them, and refuses
/// to compile when one is missing rather than call itself):
///
/// ```text
/// fn decide(&self, command: C) -> Result<Vec<E>, Error>               // without services
/// async fn decide(&self, command: C, services: &S) -> Result<Vec<E>, Error> // with services = S
/// fn apply(&mut self, event: &E)
/// ```
///
/// | attribute key | meaning | required |
/// |---|---|---|
/// | `event = Type` | the event type | yes |
/// | `command = Type` | the command type | yes |
/// | `error = Type` | the domain error type | yes |
/// | `services = Type` | what `decide` may consult (then `decide` is `async`) | no (`()`) |
/// | `name = "..."` | the aggregate type name, prefix of its streams; no `-` | no (the struct's name in snake case) |
/// | `shares_event` | another aggregate claims the event type (see below) | no |
///
/// The derive also implements [`crate::AggregateEvent`] for the event type:
/// the event type belongs to this aggregate, and projections over it take
/// events from this aggregate's streams only. A second aggregate declaring
/// the same event type does not compile (conflicting implementations),
/// unless it says `shares_event`: then it reads and writes that type, but
/// projections over it see only the first aggregate's streams.
///
/// `decide` must not change state (it takes `&self`), and `apply` must not
/// fail or do I/O: replaying the same events always gives the same state.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate type name; streams are named `"{TYPE}-{id}"`.
    const TYPE: &'static str;

    /// The events this aggregate produces and applies.
    type Event: Event;

    /// The commands it accepts.
    type Command: Command;

    /// Its domain error: why a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// What the decision may consult (an authorisation service, a rate
    /// table, …); `()` for none.
    type Services: Send + Sync + 'static;

    /// The stream that holds the events of the instance `id`.
    fn stream_id(id: &str) -> StreamId {
        StreamId::for_aggregate(Self::TYPE, id)
    }

    /// Decides which events a command produces, or why it is refused.
    fn decide<'a>(
        &'a self,
        command: Self::Command,
        services: &'a Self::Services,
    ) -> impl Future<Output = Result<Vec<Self::Event>, Self::Error>> + Send + 'a;

    /// Applies one event to the state.
    fn apply(&mut self, event: &Self::Event);
}
