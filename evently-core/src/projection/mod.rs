//! Projections: the global log turned into read models. A [`Projection`]
//! declares the event types it handles and writes each into its read model;
//! the runner ([`run_projection`]) feeds it the log in order — catch-up,
//! then live — with a checkpoint of its own, retries a failing event with
//! bounded exponential back-off, then stops or parks the event as the
//! [`OnFailure`] policy says. Where the checkpoint commits with the
//! read-model writes (PostgreSQL), each event is applied exactly once;
//! elsewhere at least once, and the handler sees the event id to drop
//! repeats.
//!
//! A store provides a [`ProjectionTarget`](crate::backend::ProjectionTarget):
//! where the checkpoint lives, what a transaction is, and who may run (one
//! instance at a time). [`MemoryReadModel`] is one, for any store.
//!
//! This module holds the user API; the runner's loop is in `runner.rs`, the
//! in-memory read model in `memory.rs`, and what a store implements for
//! the runner in [`crate::backend`].

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::event::{Event, RecordedEvent};

mod memory;
mod rebuild;
mod runner;

pub use memory::MemoryReadModel;
pub use rebuild::RebuildError;
pub use runner::run_projection;

/// What a projection handler fails with.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

// `#[derive(Projection)]`, beside the trait it implements (as serde does).
pub use evently_macros::Projection;

/// A read model kept up to date from the global log.
///
/// `Sink` is where handlers write: a database connection inside the
/// runner's transaction (`PgConnection` for PostgreSQL), or the read model
/// itself for an in-memory one.
///
/// Derive it with [`#[derive(Projection)]`](macro@Projection): one inherent
/// `async` method per event variant it applies, listed in
/// `#[projection(apply(...))]`. Each method gets the sink, the recorded
/// event (its id, position, aggregate id, metadata) and the variant's
/// fields by reference, in declaration order. The derived `handles()`
/// gives the stored names of those variants only (`#[event(name = "...")]`
/// included), so the runner never decodes the others; the derived `apply`
/// calls the method of the event's variant.
///
/// ```
/// use evently_core::projection::{HandlerError, Projection};
/// use evently_core::{Event, RecordedEvent};
/// use serde::{Deserialize, Serialize};
/// use std::collections::HashMap;
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// enum AccountEvent {
///     #[event(name = "account.opened")]
///     Opened { owner: String },
///     Deposited { amount: u64 },
///     Renamed { owner: String },
/// }
///
/// // `Renamed` is not listed: its events are skipped without being decoded.
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
/// assert_eq!(Balances.handles(), ["account.opened", "Deposited"]);
/// ```
///
/// Or implement it by hand:
///
/// ```
/// use evently_core::projection::{HandlerError, Projection};
/// use evently_core::RecordedEvent;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, evently_core::Event)]
/// # enum AccountEvent { Opened { owner: String }, Deposited { amount: u64 }, Renamed { owner: String } }
/// use std::collections::HashMap;
///
/// struct Balances;
///
/// impl Projection for Balances {
///     type Event = AccountEvent;
///     type Sink = HashMap<String, u64>;
///
///     fn name(&self) -> &str {
///         "balances"
///     }
///
///     // `Renamed` events are skipped without being decoded.
///     fn handles(&self) -> &[&str] {
///         &["Opened", "Deposited"]
///     }
///
///     async fn apply(
///         &self,
///         balances: &mut HashMap<String, u64>,
///         event: &RecordedEvent<AccountEvent>,
///     ) -> Result<(), HandlerError> {
///         let account = event.aggregate_id().unwrap_or_default().to_owned();
///         match &event.data {
///             AccountEvent::Opened { .. } => { balances.insert(account, 0); }
///             AccountEvent::Deposited { amount } => *balances.entry(account).or_default() += amount,
///             AccountEvent::Renamed { .. } => unreachable!("not handled"),
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// The event type its handlers take.
    type Event: Event;

    /// Where its handlers write.
    type Sink: Send;

    /// Its name: the key of its checkpoint, unique per store.
    fn name(&self) -> &str;

    /// The stored event types it handles; others are skipped without being
    /// decoded. All of the event type's by default.
    fn handles(&self) -> &[&str] {
        <Self::Event as Event>::EVENT_TYPES
    }

    /// Whether its handlers write through the sink: `true` unless said
    /// otherwise. A projection whose handlers act elsewhere, through a
    /// store's appends or another service's commands (a process manager's
    /// reactor and sender), says `false`. A store whose sink is its one
    /// writer (SQLite) then runs such handlers outside the batch's
    /// transaction, so they may append, and moves the checkpoint after
    /// them: a crash between the two runs them again, so they must be
    /// idempotent (command ids derived from the event), as they must be
    /// anyway wherever their effects are not in the sink's transaction.
    fn uses_sink(&self) -> bool {
        true
    }

    /// Applies one event to the read model.
    fn apply(
        &self,
        sink: &mut Self::Sink,
        event: &RecordedEvent<Self::Event>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies a batch of events, in order, in the runner's transaction
    /// (what a store's [`ProjectionTarget`](crate::backend::ProjectionTarget)
    /// calls). The default applies them one at a time; a projection that
    /// can do better on a whole batch (a view writes each touched document
    /// once) overrides it. On an error it gives the index of the event
    /// that failed, or of the first event of the failed part: the runner
    /// then rolls back and goes through the batch one event at a time with
    /// [`Projection::apply`], so retries and the failure policy still see
    /// the very event.
    fn apply_batch(
        &self,
        sink: &mut Self::Sink,
        events: &[RecordedEvent<Self::Event>],
    ) -> impl Future<Output = Result<(), (usize, HandlerError)>> + Send {
        async move {
            use tracing::Instrument;
            for (index, event) in events.iter().enumerate() {
                self.apply(sink, event)
                    .instrument(event_span(event))
                    .await
                    .map_err(|e| (index, e))?;
            }
            Ok(())
        }
    }
}

/// The span an event is applied in (DEBUG): its position, type and
/// correlation id.
pub(crate) fn event_span<E>(event: &RecordedEvent<E>) -> tracing::Span {
    tracing::debug_span!(
        "evently.projection.event",
        position = event.global_position,
        event_type = &*event.event_type,
        correlation_id = event.metadata.correlation_id.map(tracing::field::display),
    )
}

/// What the runner does with an event whose handler keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop the projection, marked failed, at the event before it.
    Stop,
    /// Park the event (stored with its error, listable, retryable) and go on.
    Park,
}

/// How a projection runs.
///
/// ```
/// use evently_core::projection::{OnFailure, ProjectionOptions};
/// use std::time::Duration;
///
/// let options = ProjectionOptions::default()
///     .batch_size(500)
///     .retries(5, Duration::from_millis(10))
///     .on_failure(OnFailure::Park);
/// assert_ne!(options, ProjectionOptions::default());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionOptions {
    /// Most events applied in one transaction (default 256).
    pub(crate) batch_size: usize,
    /// How long one batch should take at most (default 100 ms): after a
    /// slower batch the runner shrinks the next ones to fit, then grows them
    /// back. On PostgreSQL a batch's transaction holds back every reader of
    /// the global log in the cluster while it runs (see evently-postgres' notes
    /// on the global order), so a slow handler must not keep one open long.
    pub(crate) max_batch_time: Duration,
    /// Retries of a failing event before the policy applies (default 3).
    pub(crate) max_retries: u32,
    /// The first pause before a retry; doubled each time up to
    /// `max_backoff` (default 20 ms).
    pub(crate) initial_backoff: Duration,
    /// The longest pause between retries (default 2 s).
    pub(crate) max_backoff: Duration,
    /// Stop or park after the last retry (default [`OnFailure::Stop`]).
    pub(crate) on_failure: OnFailure,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            batch_size: Self::DEFAULT_BATCH_SIZE,
            max_batch_time: Duration::from_millis(100),
            max_retries: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            on_failure: OnFailure::Stop,
        }
    }
}

impl ProjectionOptions {
    /// Most events applied in one transaction unless [`ProjectionOptions::batch_size`] says otherwise.
    pub const DEFAULT_BATCH_SIZE: usize = 256;
}

impl ProjectionOptions {
    /// Sets the batch size (at least 1).
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// Sets the longest time one batch should take.
    pub fn max_batch_time(mut self, time: Duration) -> Self {
        self.max_batch_time = time;
        self
    }

    /// Sets the retries and the first back-off.
    pub fn retries(mut self, max_retries: u32, initial_backoff: Duration) -> Self {
        self.max_retries = max_retries;
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sets the failure policy.
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }
}

/// Where a projection runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionState {
    /// Waiting to become the one active instance.
    Standby,
    /// Applying events (catching up or live).
    Running,
    /// Stopped on request.
    Stopped,
    /// Stopped by an error: a handler that kept failing under
    /// [`OnFailure::Stop`], a panic, or a store failure.
    Failed(String),
}

/// An event a projection gave up on, with why: what
/// `MemoryReadModel::parked` and the PostgreSQL store's `parked(name)` list.
/// `retry_parked(&projection, position)` (on either) applies it again.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ParkedEvent {
    /// The event's global position.
    pub position: u64,
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// Its stream.
    pub stream_id: String,
    /// Its version there.
    pub stream_version: u64,
    /// Its stored type.
    pub event_type: String,
    /// The last error, with where the event is.
    pub error: String,
}

impl ParkedEvent {
    /// The parked entry of `event`, failed with `error`.
    pub fn new<E>(event: &RecordedEvent<E>, error: &str) -> Self {
        ParkedEvent {
            position: event.global_position,
            event_id: event.event_id,
            stream_id: event.stream_id.to_string(),
            stream_version: event.stream_version,
            event_type: event.event_type.to_string(),
            error: error.to_owned(),
        }
    }
}

/// How far a projection's checkpoint is behind the head of the log, read
/// from where the checkpoint is kept (any process may ask; see
/// [`ProjectionHandle::status`] for the runner's own view).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionProgress {
    /// The projection.
    pub name: String,
    /// Its checkpoint.
    pub position: u64,
    /// The last position of the log a reader can see.
    pub head: u64,
    /// Events between the checkpoint and the head.
    pub behind: u64,
}

impl ProjectionProgress {
    /// The progress of `name` at checkpoint 0 of an empty log (a store
    /// fills in the rest).
    pub fn new(name: &str) -> Self {
        ProjectionProgress {
            name: name.to_owned(),
            position: 0,
            head: 0,
            behind: 0,
        }
    }
}

/// A projection's progress, as its runner last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Running, stopped or failed.
    pub state: ProjectionState,
    /// The checkpoint: the position of the last event it has processed.
    pub position: u64,
    /// Events processed (applied or skipped) by this runner.
    pub processed: u64,
    /// Events parked by this runner.
    pub parked: u64,
    /// Events per second over the last batch.
    pub events_per_second: f64,
}

/// A running projection: its status, a way to wait for it, and to stop it.
/// Dropping the handle stops the projection after its current batch (keep
/// the handle for as long as the projection should run).
pub struct ProjectionHandle {
    pub(super) status: watch::Receiver<ProjectionStatus>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

/// Why waiting for a projection ended without it reaching the position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The time ran out.
    #[error("projection `{name}` reached position {reached}, not {wanted}, within {timeout:?}")]
    Timeout {
        /// The projection.
        name: String,
        /// The position waited for.
        wanted: u64,
        /// Where it was when the time ran out.
        reached: u64,
        /// How long it waited.
        timeout: Duration,
    },
    /// The projection stopped or failed first.
    #[error("projection `{name}` is {state:?} at position {reached}, before {wanted}")]
    NotRunning {
        /// The projection.
        name: String,
        /// The position waited for.
        wanted: u64,
        /// Where it stopped.
        reached: u64,
        /// Why.
        state: ProjectionState,
    },
}

impl ProjectionHandle {
    /// The latest status.
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.clone()
    }

    /// Waits until the projection has processed `position` (read-your-writes
    /// for an API: wait for the position of the command's last event).
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), WaitError> {
        let mut status = self.status.clone();
        // The guard `wait_for` returns is a read lock on the status: it must
        // be gone before `self.status()` reads again, or a runner waiting
        // to write between the two reads deadlocks both (seen in CI).
        let reached = tokio::time::timeout(timeout, async {
            status
                .wait_for(|s| {
                    s.position >= position
                        || matches!(
                            s.state,
                            ProjectionState::Stopped | ProjectionState::Failed(_)
                        )
                })
                .await
                .map(|_| ())
        })
        .await;
        let current = self.status();
        match reached {
            _ if current.position >= position => Ok(()),
            Ok(_) => Err(WaitError::NotRunning {
                name: current.name,
                wanted: position,
                reached: current.position,
                state: current.state,
            }),
            Err(_) => Err(WaitError::Timeout {
                name: current.name,
                wanted: position,
                reached: current.position,
                timeout,
            }),
        }
    }

    /// Asks the runner to stop after its current batch, and waits for it.
    pub async fn stop(self) -> ProjectionStatus {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let status = self.status.borrow().clone();
        status
    }

    /// Aborts the runner at once, wherever it is (as a crash would).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Whether the runner's task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
