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
//! A store provides a [`ProjectionTarget`]: where the checkpoint lives,
//! what a transaction is, and who may run (one instance at a time).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::event::{Event, Payload, RecordedEvent};
use crate::store::{EventStore, LogItem, UnreadableEvent};

/// What a projection handler fails with.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

// `#[derive(Projection)]`, beside the trait it implements (as serde does).
pub use es_macros::Projection;

/// A read model kept up to date from the global log.
///
/// `Sink` is where handlers write: a database connection inside the
/// runner's transaction (`PgConnection` for PostgreSQL), or the read model
/// itself for an in-memory one.
///
/// Derive it with [`#[derive(Projection)]`](macro@Projection): one inherent
/// `async` method per event variant it handles, listed in
/// `#[projection(handle(...))]`. The derived `handles()` gives the stored
/// names of those variants only (`#[event(name = "...")]` included), so the
/// runner never decodes the others; the derived `handle` calls the method
/// of the event's variant.
///
/// ```
/// use es_core::projection::{HandlerError, Projection};
/// use es_core::{Event, RecordedEvent};
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
/// #[projection(handle(Opened = open, Deposited))]
/// struct Balances;
///
/// impl Balances {
///     async fn open(
///         &self,
///         balances: &mut HashMap<String, u64>,
///         event: &RecordedEvent<AccountEvent>,
///     ) -> Result<(), HandlerError> {
///         balances.insert(event.stream_id.to_string(), 0);
///         Ok(())
///     }
///
///     async fn deposited(
///         &self,
///         balances: &mut HashMap<String, u64>,
///         event: &RecordedEvent<AccountEvent>,
///     ) -> Result<(), HandlerError> {
///         if let AccountEvent::Deposited { amount } = &event.data {
///             *balances.entry(event.stream_id.to_string()).or_default() += amount;
///         }
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
/// use es_core::projection::{HandlerError, Projection};
/// use es_core::RecordedEvent;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, es_core::Event)]
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
///     async fn handle(
///         &self,
///         balances: &mut HashMap<String, u64>,
///         event: &RecordedEvent<AccountEvent>,
///     ) -> Result<(), HandlerError> {
///         let account = event.stream_id.to_string();
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

    /// Applies one event to the read model.
    fn handle(
        &self,
        sink: &mut Self::Sink,
        event: &RecordedEvent<Self::Event>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Decodes what a projection handling the stored types `handles` wants of
/// one event of the global log, without decoding what it does not:
///
/// - an erased event, an event from a stream of another aggregate than the
///   one that claims `E` ([`Event::aggregate_type`]), or a current event of
///   a type it does not handle: nothing, undecoded;
/// - a current event of a handled type: that event;
/// - an older schema version, or a name the event type no longer has: the
///   upcasted events of handled types (a former name of another aggregate's
///   event, that no upcaster knows, is nothing).
pub fn decode_handled<E: Event>(
    handles: &[&str],
    event: &RecordedEvent,
) -> Result<Vec<RecordedEvent<E>>, crate::DecodeError> {
    if event.metadata.erased_at.is_some() {
        return Ok(Vec::new());
    }
    // An event type an aggregate claims comes from that aggregate's streams
    // only: another aggregate's `Opened` is not this one's.
    if let Some(owner) = E::aggregate_type() {
        if event.stream_id.aggregate_type() != Some(owner) {
            return Ok(Vec::new());
        }
    }
    let current = E::current_version(&event.event_type);
    let known = current.is_some() || E::EVENT_TYPES.contains(&&*event.event_type);
    let is_current = current.is_none_or(|v| v == event.schema_version);
    if known && is_current && !handles.contains(&&*event.event_type) {
        return Ok(Vec::new());
    }
    match event.decode_all::<E>() {
        Ok(events) => Ok(events
            .into_iter()
            .filter(|e| handles.contains(&e.data.event_type()))
            .collect()),
        Err(error) => match &error.kind {
            crate::DecodeErrorKind::MissingUpcaster {
                event_type,
                current: None,
                ..
            } if !known && *event_type == *event.event_type => Ok(Vec::new()),
            crate::DecodeErrorKind::UnknownEventType { .. } if !known => Ok(Vec::new()),
            _ => Err(error),
        },
    }
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
/// use es_core::projection::{OnFailure, ProjectionOptions};
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
    /// the global log in the cluster while it runs (see es-postgres' notes
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

/// Why a batch was not applied.
#[derive(Debug)]
pub enum BatchError {
    /// A handler failed at the event with this index in the batch; nothing
    /// of the batch is kept.
    Handler {
        /// The index of the failing event in the batch.
        index: usize,
        /// The handler's error.
        error: HandlerError,
    },
    /// Another instance moved the checkpoint: this one is no longer the
    /// active one and must start over.
    FencedOut,
    /// The store failed; nothing of the batch is kept.
    Store(StoreError),
}

impl From<StoreError> for BatchError {
    fn from(e: StoreError) -> Self {
        BatchError::Store(e)
    }
}

/// What a store gives the runner: the checkpoint, atomic batches, parking,
/// and who may run.
pub trait ProjectionTarget<P: Projection>: Send {
    /// Waits until this instance is the one active instance of the
    /// projection (a lease or lock), or returns at once where only one can
    /// exist.
    fn acquire(&mut self, projection: &P) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The stored checkpoint (0 before the first event).
    fn checkpoint(
        &mut self,
        projection: &P,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Applies the handled events of a batch and moves the checkpoint from
    /// `from` to `to`, all or nothing.
    fn apply_batch(
        &mut self,
        projection: &P,
        events: &[RecordedEvent<P::Event>],
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<(), BatchError>> + Send;

    /// Stores `event` as parked with `error` and moves the checkpoint from
    /// `from` past it, all or nothing.
    fn park(
        &mut self,
        projection: &P,
        event: &RecordedEvent<Payload>,
        error: &str,
        from: u64,
    ) -> impl Future<Output = Result<(), BatchError>> + Send;

    /// Stores a row of the log that cannot be read as parked with `error`
    /// and moves the checkpoint from `from` past it, all or nothing.
    ///
    /// The default parks, through [`ProjectionTarget::park`], an event made
    /// of what is known of the row: its position, stream and version, its
    /// id, type and schema version where they could be read (else the nil
    /// id, an empty type, version 0), a `null` payload and fresh metadata.
    fn park_unreadable(
        &mut self,
        projection: &P,
        row: &UnreadableEvent,
        error: &str,
        from: u64,
    ) -> impl Future<Output = Result<(), BatchError>> + Send {
        let placeholder = RecordedEvent {
            event_id: row.event_id.unwrap_or_default(),
            stream_id: row.stream_id.clone(),
            stream_version: row.stream_version,
            global_position: row.global_position,
            event_type: row.event_type.clone().unwrap_or_default().into(),
            schema_version: row.schema_version.unwrap_or_default(),
            data: Payload::from_value(&serde_json::Value::Null),
            metadata: crate::Metadata::new(),
            recorded_at: chrono::Utc::now(),
        };
        let error = error.to_owned();
        async move { self.park(projection, &placeholder, &error, from).await }
    }
}

/// A running projection: its status, a way to wait for it, and to stop it.
/// Dropping the handle stops the projection after its current batch (keep
/// the handle for as long as the projection should run).
pub struct ProjectionHandle {
    status: watch::Receiver<ProjectionStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
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
        let reached = tokio::time::timeout(
            timeout,
            status.wait_for(|s| {
                s.position >= position
                    || matches!(
                        s.state,
                        ProjectionState::Stopped | ProjectionState::Failed(_)
                    )
            }),
        )
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

/// Starts a projection on a tokio task: the runner follows `store`'s log
/// from `target`'s checkpoint. A panic in the projection stops this
/// projection only, marked failed.
pub fn run_projection<P, S, T>(
    store: S,
    projection: P,
    target: T,
    options: ProjectionOptions,
) -> ProjectionHandle
where
    P: Projection,
    S: EventStore,
    T: ProjectionTarget<P> + 'static,
{
    let initial = ProjectionStatus {
        name: projection.name().to_owned(),
        state: ProjectionState::Standby,
        position: 0,
        processed: 0,
        parked: 0,
        events_per_second: 0.0,
    };
    let (status_tx, status_rx) = watch::channel(initial);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut runner = Runner {
            store,
            projection,
            target,
            options,
            status: status_tx,
            stop: stop_rx,
        };
        let outcome = AssertUnwindSafe(runner.run()).catch_unwind().await;
        let state = match outcome {
            Ok(Ok(())) => ProjectionState::Stopped,
            Ok(Err(reason)) => ProjectionState::Failed(reason),
            Err(panic) => ProjectionState::Failed(format!(
                "the projection panicked: {}",
                panic_message(&*panic)
            )),
        };
        if let ProjectionState::Failed(reason) = &state {
            tracing::error!(projection = %runner.status.borrow().name, %reason, "projection stopped");
        }
        runner.status.send_modify(|s| s.state = state);
    });
    ProjectionHandle {
        status: status_rx,
        stop: stop_tx,
        task,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

struct Runner<P, S, T> {
    store: S,
    projection: P,
    target: T,
    options: ProjectionOptions,
    status: watch::Sender<ProjectionStatus>,
    stop: watch::Receiver<bool>,
}

/// How a run of the loop ended.
enum Restart {
    /// Stop was asked.
    Stop,
    /// Fenced out or the store failed: take the lease again and reload.
    Again,
}

impl<P, S, T> Runner<P, S, T>
where
    P: Projection,
    S: EventStore,
    T: ProjectionTarget<P>,
{
    /// Runs until stopped (Ok) or failed (Err with the reason).
    async fn run(&mut self) -> Result<(), String> {
        let mut failures = 0u32;
        loop {
            self.set_state(ProjectionState::Standby);
            let acquired = tokio::select! {
                acquired = self.target.acquire(&self.projection) => acquired,
                _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
            };
            match acquired {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    failures += 1;
                    tokio::time::sleep(self.backoff(failures)).await;
                    continue;
                }
                Err(e) => return Err(format!("cannot take the projection's lease: {e}")),
            }
            match self.follow().await {
                Ok(Restart::Stop) => return Ok(()),
                Ok(Restart::Again) => failures = 0,
                Err(StoreOrReason::Store(e)) if e.is_transient() => {
                    failures += 1;
                    tracing::warn!(projection = self.projection.name(), error = %e, "store unavailable; restarting from the checkpoint");
                    tokio::time::sleep(self.backoff(failures)).await;
                }
                Err(StoreOrReason::Store(e)) => return Err(e.to_string()),
                Err(StoreOrReason::Reason(reason)) => return Err(reason),
            }
        }
    }

    /// Follows the log from the checkpoint while this instance is active.
    async fn follow(&mut self) -> Result<Restart, StoreOrReason> {
        let mut checkpoint = self.target.checkpoint(&self.projection).await?;
        self.status.send_modify(|s| {
            s.position = checkpoint;
            s.state = ProjectionState::Running;
        });
        let mut log = self.store.subscribe_rows(checkpoint + 1);
        let mut limit = self.options.batch_size;
        loop {
            // A batch: the next event, and whatever else is ready now, up to
            // a row that cannot be read or an error (handled after the
            // events before it are applied).
            let first = tokio::select! {
                next = log.next() => next,
                _ = self.stop.wait_for(|stop| *stop) => return Ok(Restart::Stop),
            };
            let Some(first) = first else {
                return Ok(Restart::Again);
            };
            let mut batch = Vec::new();
            let mut after: Option<Result<UnreadableEvent, StoreError>> = None;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Ok(LogItem::Event(event)) => batch.push(event),
                    Ok(LogItem::Unreadable(row)) => after = Some(Ok(row)),
                    Err(error) => after = Some(Err(error)),
                }
                if after.is_none() && batch.len() < limit {
                    next = log.next().now_or_never().flatten();
                }
            }
            if !batch.is_empty() {
                let started = Instant::now();
                match self.process(&batch, checkpoint).await? {
                    Some(new_checkpoint) => {
                        let n = batch.len() as u64;
                        let elapsed = started.elapsed();
                        let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
                        limit = if elapsed > self.options.max_batch_time {
                            let fits = self.options.max_batch_time.as_secs_f64() * rate;
                            (fits as usize).clamp(1, self.options.batch_size)
                        } else {
                            limit.saturating_mul(2).min(self.options.batch_size)
                        };
                        checkpoint = new_checkpoint;
                        self.status.send_modify(|s| {
                            s.position = checkpoint;
                            s.processed += n;
                            s.events_per_second = rate;
                        });
                    }
                    None => return Ok(Restart::Again),
                }
            }
            match after {
                None => {}
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(row)) => match self.unreadable(&row, checkpoint).await? {
                    Some(new_checkpoint) => {
                        checkpoint = new_checkpoint;
                        self.status.send_modify(|s| {
                            s.position = checkpoint;
                            s.processed += 1;
                        });
                    }
                    None => return Ok(Restart::Again),
                },
            }
        }
    }

    /// A row of the log that cannot be read: skipped when it is of a type
    /// the projection does not handle, else parked or the projection
    /// stopped before it, as the policy says. Returns the new checkpoint,
    /// or None when fenced out.
    async fn unreadable(
        &mut self,
        row: &UnreadableEvent,
        checkpoint: u64,
    ) -> Result<Option<u64>, StoreOrReason> {
        // As `decode_handled` skips a current event of a type not handled.
        let skipped = row.event_type.as_deref().is_some_and(|event_type| {
            let current = <P::Event as Event>::current_version(event_type);
            current.is_some()
                && current == row.schema_version
                && !self.projection.handles().contains(&event_type)
        });
        let outcome = if skipped {
            self.target
                .apply_batch(&self.projection, &[], checkpoint, row.global_position)
                .await
        } else {
            let reason = format!(
                "the row at position {} (stream `{}` version {}) cannot be read: {}",
                row.global_position, row.stream_id, row.stream_version, row.error
            );
            if self.options.on_failure == OnFailure::Stop {
                return Err(StoreOrReason::Reason(reason));
            }
            let parked = self
                .target
                .park_unreadable(&self.projection, row, &reason, checkpoint)
                .await;
            if parked.is_ok() {
                tracing::warn!(projection = self.projection.name(), %reason, "unreadable row parked");
                self.status.send_modify(|s| s.parked += 1);
            }
            parked
        };
        match outcome {
            Ok(()) => Ok(Some(row.global_position)),
            Err(BatchError::FencedOut) => Ok(None),
            Err(BatchError::Store(e)) => Err(e.into()),
            Err(BatchError::Handler { error, .. }) => Err(StoreOrReason::Reason(format!(
                "cannot move past the unreadable row at position {}: {error}",
                row.global_position
            ))),
        }
    }

    /// Applies a batch; on a handler error, goes through it one event at a
    /// time with retries, then the policy. Returns the new checkpoint, or
    /// None when fenced out.
    async fn process(
        &mut self,
        batch: &[RecordedEvent],
        checkpoint: u64,
    ) -> Result<Option<u64>, StoreOrReason> {
        let last = batch.last().map_or(checkpoint, |e| e.global_position);
        let decoded = self.decode(batch);
        if let Ok(events) = &decoded {
            match self
                .target
                .apply_batch(&self.projection, events, checkpoint, last)
                .await
            {
                Ok(()) => return Ok(Some(last)),
                Err(BatchError::FencedOut) => return Ok(None),
                Err(BatchError::Store(e)) => return Err(e.into()),
                Err(BatchError::Handler { .. }) => {}
            }
        }
        // Something failed: isolate it, one event per transaction.
        let mut checkpoint = checkpoint;
        for event in batch {
            let mut attempt = 0;
            loop {
                let result = match self.decode(std::slice::from_ref(event)) {
                    Ok(one) => {
                        self.target
                            .apply_batch(&self.projection, &one, checkpoint, event.global_position)
                            .await
                    }
                    Err(error) => Err(BatchError::Handler { index: 0, error }),
                };
                let error = match result {
                    Ok(()) => break,
                    Err(BatchError::FencedOut) => return Ok(None),
                    Err(BatchError::Store(e)) => return Err(e.into()),
                    Err(BatchError::Handler { error, .. }) => error,
                };
                attempt += 1;
                if attempt <= self.options.max_retries {
                    tracing::warn!(projection = self.projection.name(), position = event.global_position, attempt, %error, "handler failed; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
                let reason = format!(
                    "event `{}` at position {} (stream `{}` version {}) failed {} times: {error}",
                    event.event_type,
                    event.global_position,
                    event.stream_id,
                    event.stream_version,
                    attempt
                );
                match self.options.on_failure {
                    OnFailure::Stop => return Err(StoreOrReason::Reason(reason)),
                    OnFailure::Park => {
                        match self
                            .target
                            .park(&self.projection, event, &reason, checkpoint)
                            .await
                        {
                            Ok(()) => {}
                            Err(BatchError::FencedOut) => return Ok(None),
                            Err(BatchError::Store(e)) => return Err(e.into()),
                            Err(BatchError::Handler { error, .. }) => {
                                return Err(StoreOrReason::Reason(format!("cannot park: {error}")))
                            }
                        }
                        tracing::warn!(projection = self.projection.name(), %reason, "event parked");
                        self.status.send_modify(|s| s.parked += 1);
                        break;
                    }
                }
            }
            checkpoint = event.global_position;
            self.status.send_modify(|s| s.position = checkpoint);
        }
        Ok(Some(checkpoint))
    }

    /// Decodes the events the projection handles; skips the others.
    fn decode(
        &self,
        batch: &[RecordedEvent],
    ) -> Result<Vec<RecordedEvent<P::Event>>, HandlerError> {
        let handles = self.projection.handles();
        let mut decoded = Vec::with_capacity(batch.len());
        for event in batch {
            decoded.extend(decode_handled::<P::Event>(handles, event).map_err(Box::new)?);
        }
        Ok(decoded)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.options
            .initial_backoff
            .saturating_mul(factor)
            .min(self.options.max_backoff)
    }

    fn set_state(&self, state: ProjectionState) {
        self.status.send_modify(|s| s.state = state);
    }
}

enum StoreOrReason {
    Store(StoreError),
    Reason(String),
}

impl From<StoreError> for StoreOrReason {
    fn from(e: StoreError) -> Self {
        StoreOrReason::Store(e)
    }
}

/// An in-memory read model with its checkpoint and parked events, for any
/// store: handlers write into a `T`. A batch is applied to a copy and
/// swapped in whole, so a failing batch leaves nothing behind (each event is
/// applied exactly once). Clones share one read model; one runner at a time
/// holds its lease, and the next takes over when that runner ends.
///
/// ```
/// use es_core::projection::MemoryReadModel;
/// use std::collections::HashMap;
///
/// let balances: MemoryReadModel<HashMap<String, u64>> = MemoryReadModel::default();
/// assert_eq!(balances.read(|b| b.len()), 0);
/// assert_eq!(balances.checkpoint(), 0);
/// ```
pub struct MemoryReadModel<T> {
    shared: std::sync::Arc<MemoryShared<T>>,
    lease: Option<tokio::sync::OwnedMutexGuard<()>>,
}

struct MemoryShared<T> {
    model: std::sync::Mutex<MemoryModel<T>>,
    lease: std::sync::Arc<tokio::sync::Mutex<()>>,
}

struct MemoryModel<T> {
    state: T,
    checkpoint: u64,
    parked: Vec<ParkedEvent>,
}

/// An event a projection gave up on, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedEvent {
    /// The event.
    pub event: RecordedEvent,
    /// The last error, with where the event is.
    pub error: String,
}

impl<T: Default> Default for MemoryReadModel<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> Clone for MemoryReadModel<T> {
    fn clone(&self) -> Self {
        MemoryReadModel {
            shared: std::sync::Arc::clone(&self.shared),
            lease: None,
        }
    }
}

impl<T> MemoryReadModel<T> {
    /// A read model starting from `state`, at checkpoint 0.
    pub fn new(state: T) -> Self {
        MemoryReadModel {
            shared: std::sync::Arc::new(MemoryShared {
                model: std::sync::Mutex::new(MemoryModel {
                    state,
                    checkpoint: 0,
                    parked: Vec::new(),
                }),
                lease: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            }),
            lease: None,
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, MemoryModel<T>> {
        self.shared
            .model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the model.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.model().state)
    }

    /// The checkpoint: the position of the last event processed.
    pub fn checkpoint(&self) -> u64 {
        self.model().checkpoint
    }

    /// The parked events, oldest first.
    pub fn parked(&self) -> Vec<ParkedEvent> {
        self.model().parked.clone()
    }

    /// Removes a parked event from the list and returns it, to apply again
    /// (by hand or with a fixed handler).
    pub fn unpark(&self, position: u64) -> Option<ParkedEvent> {
        let mut model = self.model();
        let index = model
            .parked
            .iter()
            .position(|p| p.event.global_position == position)?;
        Some(model.parked.remove(index))
    }
}

impl<P, T> ProjectionTarget<P> for MemoryReadModel<T>
where
    P: Projection<Sink = T>,
    T: Clone + Send + 'static,
{
    async fn acquire(&mut self, _projection: &P) -> Result<(), StoreError> {
        if self.lease.is_none() {
            let lease = std::sync::Arc::clone(&self.shared.lease);
            self.lease = Some(lease.lock_owned().await);
        }
        Ok(())
    }

    async fn checkpoint(&mut self, _projection: &P) -> Result<u64, StoreError> {
        Ok(self.model().checkpoint)
    }

    async fn apply_batch(
        &mut self,
        projection: &P,
        events: &[RecordedEvent<P::Event>],
        from: u64,
        to: u64,
    ) -> Result<(), BatchError> {
        let mut copy = {
            let model = self.model();
            if model.checkpoint != from {
                return Err(BatchError::FencedOut);
            }
            model.state.clone()
        };
        for (index, event) in events.iter().enumerate() {
            projection
                .handle(&mut copy, event)
                .await
                .map_err(|error| BatchError::Handler { index, error })?;
        }
        let mut model = self.model();
        if model.checkpoint != from {
            return Err(BatchError::FencedOut);
        }
        model.state = copy;
        model.checkpoint = to;
        Ok(())
    }

    async fn park(
        &mut self,
        _projection: &P,
        event: &RecordedEvent<Payload>,
        error: &str,
        from: u64,
    ) -> Result<(), BatchError> {
        let mut model = self.model();
        if model.checkpoint != from {
            return Err(BatchError::FencedOut);
        }
        model.parked.push(ParkedEvent {
            event: event.clone(),
            error: error.to_owned(),
        });
        model.checkpoint = event.global_position;
        Ok(())
    }
}
