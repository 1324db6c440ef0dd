//! The command runtime: load an aggregate by folding its stream, let it
//! decide, append what it decided with the loaded version as the
//! expectation, and on a conflict reload and decide again.
//!
//! This module holds the repository's API and its options; loading is in
//! `load.rs`, running a command in `execute.rs`, the aggregate cache in
//! `cache.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::{Aggregate, RoutedCommand};
use crate::error::{CommandError, StoreError};
use crate::event::{NewEvent, RecordedEvent};
use crate::metadata::CommandContext;
use crate::store::{
    CommandRecord, CommandStore, EventStore, JournalEntry, Snapshot, SnapshotStore,
};
use crate::version::{ExpectedVersion, StreamId};

mod cache;
mod execute;
mod load;

use cache::AggregateCache;

/// Which commands a repository's journal keeps
/// ([`Repository::with_journal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Journal {
    /// Every accepted command, with the versions it produced.
    Accepted,
    /// Accepted commands, and refused ones with their error.
    AcceptedAndRejected,
}

/// When a repository snapshots an aggregate's state
/// ([`Repository::with_snapshots`]).
///
/// ```
/// use evently_core::Snapshots;
///
/// // After every 100 events; the state's format is version 2 (bump it when
/// // the aggregate's fields change: older snapshots are then ignored).
/// let snapshots = Snapshots::every(100).format(2);
/// assert_eq!(snapshots, Snapshots::every(100).format(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshots {
    every: u64,
    format: u32,
}

impl Snapshots {
    /// A snapshot after every `events` events (0 counts as 1), in format 1.
    pub fn every(events: u64) -> Self {
        Snapshots {
            every: events.max(1),
            format: 1,
        }
    }

    /// The version of the state's format (default 1): a snapshot stored in
    /// another format is ignored and the aggregate replayed.
    pub fn format(mut self, version: u32) -> Self {
        self.format = version;
        self
    }
}

/// How often the runtime tries again.
///
/// ```
/// use evently_core::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::default().max_attempts(5).backoff(Duration::from_millis(2));
/// assert_eq!(policy, RetryPolicy::default().backoff(Duration::from_millis(2)).max_attempts(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a command is decided before a conflict is returned
    /// (at least 1).
    pub(crate) max_attempts: u32,
    /// How many times one append is re-sent after the store was unavailable
    /// or the reply was lost (with the same event ids, so nothing is stored
    /// twice).
    pub(crate) max_transient_retries: u32,
    /// The first pause before re-sending; doubled each time.
    pub(crate) initial_backoff: Duration,
}

impl RetryPolicy {
    /// How many times a command is decided before a conflict is returned
    /// (default 10; 0 counts as 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How many times one append is re-sent after the store was unavailable
    /// or the reply was lost, with the same event ids so nothing is stored
    /// twice (default 3).
    pub fn max_transient_retries(mut self, retries: u32) -> Self {
        self.max_transient_retries = retries;
        self
    }

    /// The first pause before re-sending; doubled each time.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            max_transient_retries: 3,
            initial_backoff: Duration::from_millis(5),
        }
    }
}

/// An aggregate as loaded from its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state after every stored event.
    pub state: A,
    /// The stream's version: the number of events applied (0 = new).
    pub version: u64,
    /// How many events were read and applied (fewer than `version` when the
    /// load started from a snapshot).
    pub replayed: u64,
}

/// What a command committed.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome<E> {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The events as stored, with versions, positions and metadata. Empty
    /// when the aggregate decided that nothing needs to happen.
    pub events: Vec<RecordedEvent<E>>,
    /// The stream's version after the command.
    pub version: u64,
    /// How many times the command was decided (more than 1 after conflicts).
    pub attempts: u32,
}

/// Runs commands against aggregates of type `A` kept in the store `S`.
///
/// ```
/// # use evently_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # enum CounterEvent { Incremented { by: u32 } }
/// # #[derive(Debug, Clone, Command)]
/// # enum CounterCommand { Increment { id: String, by: u32 } }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("overflow")]
/// # struct Overflow;
/// # #[derive(Debug, Default, Aggregate)]
/// # #[aggregate(event = CounterEvent, command = CounterCommand, error = Overflow)]
/// # struct Counter { value: u32 }
/// # impl Counter {
/// #     fn decide(&self, c: CounterCommand) -> Result<Vec<CounterEvent>, Overflow> {
/// #         let CounterCommand::Increment { by, .. } = c;
/// #         self.value.checked_add(by).ok_or(Overflow)?;
/// #         Ok(vec![CounterEvent::Incremented { by }])
/// #     }
/// #     fn apply(&mut self, e: &CounterEvent) { let CounterEvent::Incremented { by } = e; self.value += by; }
/// # }
/// # async fn run<S: CommandStore>(store: S) -> Result<(), CommandError<Overflow>> {
/// let counters = Repository::<Counter, _>::new(store);
/// let outcome = counters
///     .execute(CounterCommand::Increment { id: "c1".into(), by: 2 })
///     .await?;
/// assert_eq!(outcome.version, 1);
/// assert_eq!(counters.load("c1").await?.state.value, 2);
/// # Ok(())
/// # }
/// ```
pub struct Repository<A: Aggregate, S> {
    store: S,
    services: Arc<A::Services>,
    retry: RetryPolicy,
    snapshots: Option<SnapshotPolicy<A, S>>,
    journal: Option<JournalPolicy<A>>,
    /// The store's command records, when it keeps them ([`CommandStore`]):
    /// taken at construction, so the runtime needs no bound for them.
    commands: Option<CommandOps<S>>,
    cache: Option<Arc<AggregateCache<A>>>,
}

type StoreFuture<'a, T> = futures::future::BoxFuture<'a, Result<T, StoreError>>;

/// A [`CommandStore`]'s methods, as the runtime calls them.
pub(super) struct CommandOps<S> {
    pub(super) find: for<'a> fn(&'a S, uuid::Uuid) -> StoreFuture<'a, Option<JournalEntry>>,
    #[allow(clippy::type_complexity)]
    pub(super) append: for<'a> fn(
        &'a S,
        &'a CommandRecord,
        &'a StreamId,
        ExpectedVersion,
        Vec<NewEvent>,
    ) -> StoreFuture<'a, Vec<RecordedEvent>>,
    pub(super) reject:
        for<'a> fn(&'a S, &'a CommandRecord, &'a StreamId, &'a str) -> StoreFuture<'a, ()>,
}

impl<S> Clone for CommandOps<S> {
    fn clone(&self) -> Self {
        CommandOps { ..*self }
    }
}

impl<S: CommandStore> CommandOps<S> {
    fn of() -> Self {
        fn find<S: CommandStore>(s: &S, id: uuid::Uuid) -> StoreFuture<'_, Option<JournalEntry>> {
            Box::pin(s.find_command(id))
        }
        fn append<'a, S: CommandStore>(
            s: &'a S,
            command: &'a CommandRecord,
            stream: &'a StreamId,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> StoreFuture<'a, Vec<RecordedEvent>> {
            Box::pin(s.append_for_command(command, stream, expected, events))
        }
        fn reject<'a, S: CommandStore>(
            s: &'a S,
            command: &'a CommandRecord,
            stream: &'a StreamId,
            error: &'a str,
        ) -> StoreFuture<'a, ()> {
            Box::pin(s.record_rejected_command(command, stream, error))
        }
        CommandOps {
            find: find::<S>,
            append: append::<S>,
            reject: reject::<S>,
        }
    }
}

/// A [`SnapshotStore`]'s methods, as the runtime calls them.
pub(super) struct SnapshotOps<S> {
    pub(super) load: for<'a> fn(&'a S, &'a StreamId) -> StoreFuture<'a, Option<Snapshot>>,
    pub(super) save: for<'a> fn(&'a S, &'a StreamId, Snapshot) -> StoreFuture<'a, ()>,
}

impl<S> Clone for SnapshotOps<S> {
    fn clone(&self) -> Self {
        SnapshotOps { ..*self }
    }
}

impl<S: SnapshotStore> SnapshotOps<S> {
    fn of() -> Self {
        fn load<'a, S: SnapshotStore>(
            s: &'a S,
            stream: &'a StreamId,
        ) -> StoreFuture<'a, Option<Snapshot>> {
            Box::pin(s.load_snapshot(stream))
        }
        fn save<'a, S: SnapshotStore>(
            s: &'a S,
            stream: &'a StreamId,
            snapshot: Snapshot,
        ) -> StoreFuture<'a, ()> {
            Box::pin(s.save_snapshot(stream, snapshot))
        }
        SnapshotOps {
            load: load::<S>,
            save: save::<S>,
        }
    }
}

/// How the command journal records commands.
struct JournalPolicy<A: Aggregate> {
    encode: fn(&A::Command) -> Result<String, serde_json::Error>,
    rejections: bool,
}

impl<A: Aggregate> Clone for JournalPolicy<A> {
    fn clone(&self) -> Self {
        JournalPolicy { ..*self }
    }
}

/// A point in an aggregate's past to load it at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// After this many events (stream version).
    Version(u64),
    /// After the longest prefix of the stream recorded at or before this
    /// time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// When and how to snapshot an aggregate's state.
struct SnapshotPolicy<A, S> {
    every: u64,
    schema_version: u32,
    encode: fn(&A) -> Result<String, serde_json::Error>,
    decode: fn(&str) -> Result<A, serde_json::Error>,
    ops: SnapshotOps<S>,
}

impl<A, S> Clone for SnapshotPolicy<A, S> {
    fn clone(&self) -> Self {
        SnapshotPolicy {
            ops: self.ops.clone(),
            ..*self
        }
    }
}

impl<A: Aggregate, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            services: Arc::clone(&self.services),
            retry: self.retry,
            snapshots: self.snapshots.clone(),
            journal: self.journal.clone(),
            commands: self.commands.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<A: Aggregate, S: CommandStore> Repository<A, S> {
    /// A repository for an aggregate that needs no services (or default
    /// ones). The store records commands ([`CommandStore`]), so a command
    /// given an id (`CommandContext::with_command_id`) is idempotent; for a
    /// store that keeps only the log, see [`Repository::log_only`].
    pub fn new(store: S) -> Self
    where
        A::Services: Default,
    {
        Self::with_services(store, A::Services::default())
    }

    /// A repository whose aggregates consult `services` when deciding.
    pub fn with_services(store: S, services: A::Services) -> Self {
        let mut repository = Self::log_only_with_services(store, services);
        repository.commands = Some(CommandOps::of());
        repository
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository over a store that keeps only the log (no
    /// [`CommandStore`]): commands run as usual, but a context given a
    /// command id (`CommandContext::with_command_id`) is refused with
    /// [`StoreError::Unsupported`], since nothing could remember it; a
    /// journal ([`Repository::with_journal`]) needs a [`CommandStore`].
    pub fn log_only(store: S) -> Self
    where
        A::Services: Default,
    {
        Self::log_only_with_services(store, A::Services::default())
    }

    /// [`Repository::log_only`] with services.
    pub fn log_only_with_services(store: S, services: A::Services) -> Self {
        Repository {
            store,
            services: Arc::new(services),
            retry: RetryPolicy::default(),
            snapshots: None,
            journal: None,
            commands: None,
            cache: Some(Arc::new(AggregateCache::new(Self::DEFAULT_CACHE_CAPACITY))),
        }
    }

    /// How many live aggregates a repository keeps by default (see
    /// [`Repository::with_cache`]).
    pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

    /// Keeps up to `capacity` live aggregates between commands (on by
    /// default, [`Repository::DEFAULT_CACHE_CAPACITY`]), so a command to a
    /// warm aggregate is one round trip (the append), and runs the commands
    /// to one aggregate one at a time in this process, so they do not
    /// conflict with each other (conflicts then only come from other
    /// processes). A cached aggregate never decides on stale state: the
    /// expected version guards every append and a conflict drops the
    /// cached copy and reloads; a refusal or an empty decision made on a
    /// cached copy is checked against the stream's version first. Size it
    /// to the aggregates that are busy at once; the least recently used
    /// idle ones go first.
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = Some(Arc::new(AggregateCache::new(capacity)));
        self
    }

    /// Keeps no aggregate between commands: each command loads its
    /// aggregate (from a snapshot, with [`Repository::with_snapshots`]),
    /// and commands to one aggregate race, a conflict making the loser
    /// reload and decide again.
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    /// How many live aggregates the cache holds (0 without a cache). At
    /// most the capacity once no command runs; commands running at once
    /// each hold theirs until they finish.
    pub fn cached_aggregates(&self) -> usize {
        self.cache.as_ref().map_or(0, |cache| cache.len())
    }

    /// Keeps a command journal: every accepted command is stored with its
    /// id, type, payload, context and the versions it produced — and, with
    /// [`Journal::AcceptedAndRejected`], every refused one with its error —
    /// so an operator can see what was asked and what it caused
    /// ([`CommandStore::command_journal`]). Journaled commands are idempotent.
    ///
    /// ```text
    /// Repository::<Account, _>::new(store).with_journal(Journal::AcceptedAndRejected)
    /// ```
    pub fn with_journal(mut self, journal: Journal) -> Self
    where
        A::Command: serde::Serialize,
        S: CommandStore,
    {
        self.commands = Some(CommandOps::of());
        self.journal = Some(JournalPolicy {
            encode: |command| serde_json::to_string(command),
            rejections: matches!(journal, Journal::AcceptedAndRejected),
        });
        self
    }

    /// Snapshots the state as [`Snapshots`] says (in the stores that keep
    /// snapshots), so a load reads the latest snapshot and only the events
    /// after it. A snapshot of another format, or one that does not decode,
    /// is ignored (the latter with a warning) and the aggregate replayed in
    /// full.
    ///
    /// ```text
    /// Repository::<Account, _>::new(store).with_snapshots(Snapshots::every(100).format(2))
    /// ```
    pub fn with_snapshots(mut self, snapshots: Snapshots) -> Self
    where
        A: serde::Serialize + serde::de::DeserializeOwned,
        S: SnapshotStore,
    {
        self.snapshots = Some(SnapshotPolicy {
            every: snapshots.every,
            schema_version: snapshots.format,
            encode: |state| serde_json::to_string(state),
            decode: |text| serde_json::from_str(text),
            ops: SnapshotOps::of(),
        });
        self
    }

    /// Replaces the retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs a command with a fresh [`CommandContext`], on the aggregate it
    /// names ([`RoutedCommand::aggregate_id`]).
    pub async fn execute(
        &self,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>>
    where
        A::Command: RoutedCommand,
    {
        self.execute_with(command, CommandContext::new()).await
    }

    /// Runs a command on the aggregate instance `id`, for command types
    /// that carry no id (or to override the one they carry), with a fresh
    /// [`CommandContext`].
    pub async fn execute_on(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.execute_on_with(id, command, CommandContext::new())
            .await
    }

    /// [`Repository::execute_with`] on the aggregate instance `id`.
    pub async fn execute_on_with(
        &self,
        id: &str,
        command: A::Command,
        context: CommandContext,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.execute_in(A::stream_id(id), command, context).await
    }

    /// Runs a command: load, decide, append with the loaded version as the
    /// expectation; on a conflict, reload and decide again, up to
    /// [`RetryPolicy::max_attempts`] times. Every event carries the context's
    /// metadata, with the command id as its causation id.
    pub async fn execute_with(
        &self,
        command: A::Command,
        context: CommandContext,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>>
    where
        A::Command: RoutedCommand,
    {
        let stream_id = A::stream_id(&command.aggregate_id());
        self.execute_in(stream_id, command, context).await
    }
}
