//! Process managers: workflows across aggregates (and services) that go on
//! after a crash and act when nothing happens in time.
//!
//! A process manager is an [`Aggregate`] of its own, one instance per
//! workflow (a transfer id), whose commands are [`ProcessInput`]s: the
//! events it follows, the refusals of commands it sent, and its deadlines
//! firing. Its decisions are its own events, stored in its own stream, so
//! it is replayed, audited, time-travelled and tested (given/when/then)
//! like any aggregate. What an event of its own means to the outside is a
//! pure function of that event: the commands to send
//! ([`ProcessManager::commands`]) and the deadlines to set or cancel
//! ([`ProcessManager::deadlines`]).
//!
//! [`run_process`] runs three things:
//!
//! - the **reactor**, a projection over the followed events: each one the
//!   process [routes](ProcessManager::route) to an instance becomes a
//!   command on that instance, with a command id derived from the event
//!   (a redelivery decides nothing twice);
//! - the **sender**, a projection over the process's own events: it sends
//!   each event's commands through a [`Dispatch`] (a local `Repository`,
//!   or a `RemoteRepository` over NATS), each with a command id derived
//!   from the event and its place, and schedules or cancels its deadlines.
//!   The reaction is recorded before anything is sent: a crash between
//!   the two resumes sending from the sender's checkpoint, and the ids make
//!   a resent command run once. A command its target refuses comes back
//!   as [`ProcessInput::Refused`], so the process can compensate;
//! - a **deadline runner** ([`run_deadlines`]) that hands each due
//!   deadline to its instance as [`ProcessInput::Deadline`], with the
//!   deadline's id as command id: fired once, however many runners race.
//!
//! Failures follow the projections' policies (retries with back-off, park
//! or stop: [`ProjectionOptions`]).

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use crate::aggregate::{Aggregate, Command};
use crate::deadline::{run_deadlines, Clock, Deadline, DeadlineOptions, DeadlineStore};
use crate::error::CommandError;
use crate::event::{Event, RecordedEvent};
use crate::metadata::CommandContext;
use crate::projection::{HandlerError, Projection, ProjectionHandle, ProjectionOptions};
use crate::runtime::Repository;
use crate::store::{CommandStore, EventSource, EventStore, ProjectionStore};

/// What a process instance is asked to decide on.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessInput<I, C> {
    /// An event it follows.
    Event(RecordedEvent<I>),
    /// A command it sent was refused by its target, with the reason.
    Refused {
        /// The command.
        command: C,
        /// The target's refusal, as text.
        reason: String,
    },
    /// One of its deadlines came.
    Deadline {
        /// The deadline's name.
        name: String,
        /// What was stored with it.
        payload: serde_json::Value,
    },
}

impl<I, C> Command for ProcessInput<I, C>
where
    I: Clone + Send + Sync + 'static,
    C: Clone + Send + Sync + 'static,
{
    fn command_type(&self) -> &'static str {
        match self {
            ProcessInput::Event(_) => "Event",
            ProcessInput::Refused { .. } => "Refused",
            ProcessInput::Deadline { .. } => "Deadline",
        }
    }
}

/// A deadline an event of the process sets or cancels.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadlineChange {
    /// Fire `name` `after` the event that sets it was recorded, with
    /// `payload`. Setting it again moves it.
    Set {
        /// The deadline's name, unique within the instance.
        name: String,
        /// How long from now.
        after: Duration,
        /// What the process gets back when it fires.
        payload: serde_json::Value,
    },
    /// The deadline `name` is moot.
    Cancel {
        /// The deadline's name.
        name: String,
    },
}

/// A process manager: an aggregate whose commands are [`ProcessInput`]s.
///
/// Its event type names should be its own: the sender decodes the events
/// of the log whose type is one of them.
pub trait ProcessManager: Aggregate<Command = ProcessInput<Self::Input, Self::Output>> {
    /// The events it follows (of other aggregates, as one enum).
    type Input: Event + Clone + Send + Sync + 'static;
    /// The commands it sends (as one enum), through a [`Dispatch`].
    type Output: Clone + Send + Sync + std::fmt::Debug + 'static;

    /// The instance an event belongs to (from its data, its metadata or
    /// its correlation id), or `None` when no instance cares.
    fn route(event: &RecordedEvent<Self::Input>) -> Option<String>;

    /// The commands one of its own events sends.
    fn commands(event: &Self::Event) -> Vec<Self::Output> {
        let _ = event;
        Vec::new()
    }

    /// The deadlines one of its own events sets or cancels.
    fn deadlines(event: &Self::Event) -> Vec<DeadlineChange> {
        let _ = event;
        Vec::new()
    }
}

/// What became of a sent command.
#[derive(Debug, Clone, PartialEq)]
pub enum Dispatched {
    /// Its target took it (or had taken it: a repeat under the same id).
    Done,
    /// Its target refused it, with the reason: the process is told.
    Refused(String),
}

/// Sends a process's commands to their targets. An `Err` is a failure
/// worth retrying (the target unreachable); the sender retries under the
/// projection's policy, with the same command id.
pub trait Dispatch<C>: Clone + Send + Sync + 'static {
    /// Sends `command` under `context` (its command id is derived from the
    /// process's event: send it as an idempotent command).
    fn send(
        &self,
        command: C,
        context: CommandContext,
    ) -> impl Future<Output = Result<Dispatched, String>> + Send;
}

/// A repository sends its own aggregate's commands: accepted is
/// [`Dispatched::Done`], the aggregate's refusal [`Dispatched::Refused`]
/// with its text, anything else an error to retry.
impl<A, S> Dispatch<A::Command> for Repository<A, S>
where
    A: Aggregate,
    A::Command: crate::aggregate::RoutedCommand,
    S: EventStore + CommandStore,
{
    async fn send(
        &self,
        command: A::Command,
        context: CommandContext,
    ) -> Result<Dispatched, String> {
        match self.execute_with(command, context).await {
            Ok(_) => Ok(Dispatched::Done),
            Err(CommandError::Rejected(error)) => Ok(Dispatched::Refused(error.to_string())),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// How a process runs.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// The reactor's and the sender's projections.
    pub projection: ProjectionOptions,
    /// The deadline runner.
    pub deadlines: DeadlineOptions,
}

/// A running process manager: its three runners. Dropping it stops the
/// projections after their batch; the deadline runner stops with
/// [`ProcessHandles::stop`] or an abort.
pub struct ProcessHandles {
    /// The reactor (followed events → instances).
    pub reactor: ProjectionHandle,
    /// The sender (own events → commands and deadlines).
    pub sender: ProjectionHandle,
    /// The deadline runner.
    pub deadlines: tokio::task::JoinHandle<()>,
}

impl ProcessHandles {
    /// Stops all three.
    pub async fn stop(self) {
        self.deadlines.abort();
        self.reactor.stop().await;
        self.sender.stop().await;
    }

    /// Aborts all three at once, wherever they are (as a crash would).
    pub fn abort(&self) {
        self.deadlines.abort();
        self.reactor.abort();
        self.sender.abort();
    }
}

/// Where a process instance stands: its state (from its own log), its
/// version, and the deadlines it waits for.
#[derive(Debug)]
pub struct ProcessStatus<P> {
    /// The instance's state.
    pub state: P,
    /// Its version (0: never started).
    pub version: u64,
    /// The deadlines it waits for, earliest first.
    pub waiting: Vec<Deadline>,
}

/// The status of the process instance `id`.
pub async fn process_status<P, S>(
    repository: &Repository<P, S>,
    id: &str,
) -> Result<ProcessStatus<P>, CommandError<P::Error>>
where
    P: ProcessManager,
    S: EventStore + DeadlineStore,
{
    let loaded = repository.load(id).await?;
    let waiting = repository
        .store()
        .pending(P::stream_id(id).as_str())
        .await?;
    Ok(ProcessStatus {
        state: loaded.state,
        version: loaded.version,
        waiting,
    })
}

/// Runs the process manager `P`: its instances in `repository` (whose
/// store also keeps the runners' checkpoints and the deadlines), the
/// events it follows read from `source` (the same store's log, or another
/// service's stream), its commands sent by `dispatch`, its deadlines on
/// `clock`.
pub fn run_process<P, S, Src, D, C>(
    repository: Repository<P, S>,
    source: Src,
    dispatch: D,
    clock: C,
    options: ProcessOptions,
) -> ProcessHandles
where
    P: ProcessManager,
    S: EventStore + CommandStore + ProjectionStore + DeadlineStore,
    Src: EventSource,
    D: Dispatch<P::Output>,
    C: Clock,
{
    let store = repository.store().clone();
    let reactor = store.run_projection_on(
        source,
        Reactor::<P, S, S::Sink> {
            name: format!("process_{}_reactor", P::TYPE),
            repository: repository.clone(),
            _sink: PhantomData,
        },
        options.projection.clone(),
    );
    let sender = store.run_projection_on(
        store.clone(),
        Sender::<P, S, D, S::Sink> {
            name: format!("process_{}_sender", P::TYPE),
            repository: repository.clone(),
            dispatch,
            _sink: PhantomData,
        },
        options.projection,
    );
    let prefix = P::stream_id("").as_str().to_owned();
    let deadlines = run_deadlines(
        store,
        clock,
        prefix,
        options.deadlines,
        move |deadline: Deadline| {
            let repository = repository.clone();
            async move {
                let id = deadline
                    .owner
                    .strip_prefix(P::stream_id("").as_str())
                    .unwrap_or(&deadline.owner)
                    .to_owned();
                let input = ProcessInput::Deadline {
                    name: deadline.name,
                    payload: deadline.payload,
                };
                let context = CommandContext::new().with_command_id(deadline.id);
                // A refusal: the process says the deadline is moot.
                tell(&repository, &id, input, context).await
            }
        },
    );
    ProcessHandles {
        reactor,
        sender,
        deadlines,
    }
}

/// Hands `input` to the process instance `id`. The instance declining it
/// (not for it, or too late: a refusal) records nothing and owes nothing;
/// any other failure is the caller's to retry.
async fn tell<P, S>(
    repository: &Repository<P, S>,
    id: &str,
    input: ProcessInput<P::Input, P::Output>,
    context: CommandContext,
) -> Result<(), String>
where
    P: ProcessManager,
    S: EventStore + CommandStore,
{
    match repository.execute_on_with(id, input, context).await {
        Ok(_) => Ok(()),
        Err(CommandError::Rejected(error)) => {
            tracing::debug!(process = P::TYPE, %id, %error, "input declined");
            Ok(())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Followed events → commands on the instances they route to.
struct Reactor<P: ProcessManager, S, K> {
    name: String,
    repository: Repository<P, S>,
    _sink: PhantomData<fn() -> K>,
}

impl<P, S, K> Projection for Reactor<P, S, K>
where
    P: ProcessManager,
    S: EventStore + CommandStore,
    K: Send + 'static,
{
    type Event = P::Input;
    type Sink = K;

    fn name(&self) -> &str {
        &self.name
    }

    fn uses_sink(&self) -> bool {
        false
    }

    async fn apply(&self, _: &mut K, event: &RecordedEvent<P::Input>) -> Result<(), HandlerError> {
        let Some(id) = P::route(event) else {
            return Ok(());
        };
        let context = CommandContext::caused_by_as(event, P::TYPE);
        let input = ProcessInput::Event(event.clone());
        Ok(tell(&self.repository, &id, input, context).await?)
    }
}

/// The process's own events → its commands sent, its deadlines set.
struct Sender<P: ProcessManager, S, D, K> {
    name: String,
    repository: Repository<P, S>,
    dispatch: D,
    _sink: PhantomData<fn() -> K>,
}

impl<P, S, D, K> Projection for Sender<P, S, D, K>
where
    P: ProcessManager,
    S: EventStore + CommandStore + DeadlineStore,
    D: Dispatch<P::Output>,
    K: Send + 'static,
{
    type Event = P::Event;
    type Sink = K;

    fn name(&self) -> &str {
        &self.name
    }

    fn uses_sink(&self) -> bool {
        false
    }

    async fn apply(&self, _: &mut K, event: &RecordedEvent<P::Event>) -> Result<(), HandlerError> {
        if event.aggregate_type() != Some(P::TYPE) {
            return Ok(());
        }
        let owner = event.stream_id.as_str().to_owned();
        let id = event.aggregate_id().unwrap_or(&owner).to_owned();
        for (n, command) in P::commands(&event.data).into_iter().enumerate() {
            let context = CommandContext::caused_by_as(event, &format!("command-{n}"));
            match self.dispatch.send(command.clone(), context).await? {
                Dispatched::Done => {}
                Dispatched::Refused(reason) => {
                    let context = CommandContext::caused_by_as(event, &format!("refused-{n}"));
                    let input = ProcessInput::Refused { command, reason };
                    tell(&self.repository, &id, input, context).await?;
                }
            }
        }
        for change in P::deadlines(&event.data) {
            let store = self.repository.store();
            match change {
                DeadlineChange::Set {
                    name,
                    after,
                    payload,
                } => {
                    let mut key = event.event_id.as_bytes().to_vec();
                    key.extend_from_slice(name.as_bytes());
                    let deadline = Deadline {
                        id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &key),
                        owner: owner.clone(),
                        due: event.recorded_at
                            + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX),
                        name,
                        payload,
                    };
                    store.schedule(deadline).await?;
                }
                DeadlineChange::Cancel { name } => {
                    store.cancel(&owner, &name).await?;
                }
            }
        }
        Ok(())
    }
}
