//! The command runtime: load an aggregate by folding its stream, let it
//! decide, append what it decided with the loaded version as the
//! expectation, and on a conflict reload and decide again.

use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::{Aggregate, Command, RoutedCommand};
use crate::error::{CommandError, StoreError};
use crate::event::Payload;
use crate::event::{NewEvent, RecordedEvent};
use crate::metadata::CommandContext;
use crate::store::{CommandRecord, EventStore, JournalOutcome, Snapshot};
use crate::version::{ExpectedVersion, StreamId};

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
/// use es_core::Snapshots;
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

/// Events read per round trip when loading an aggregate.
const LOAD_PAGE: usize = 1024;

/// How often the runtime tries again.
///
/// ```
/// use es_core::RetryPolicy;
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
/// # use es_core::prelude::*;
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
/// #     fn handle(&self, c: CounterCommand) -> Result<Vec<CounterEvent>, Overflow> {
/// #         let CounterCommand::Increment { by, .. } = c;
/// #         self.value.checked_add(by).ok_or(Overflow)?;
/// #         Ok(vec![CounterEvent::Incremented { by }])
/// #     }
/// #     fn apply(&mut self, e: &CounterEvent) { let CounterEvent::Incremented { by } = e; self.value += by; }
/// # }
/// # async fn run<S: EventStore>(store: S) -> Result<(), CommandError<Overflow>> {
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
    snapshots: Option<SnapshotPolicy<A>>,
    journal: Option<JournalPolicy<A>>,
    cache: Option<Arc<AggregateCache<A>>>,
}

/// Live aggregates kept between commands, one slot per stream; a slot's
/// lock also serialises the commands to its aggregate in this process.
struct AggregateCache<A> {
    capacity: usize,
    slots: std::sync::Mutex<CacheSlots<A>>,
}

type Slot<A> = Arc<tokio::sync::Mutex<Option<Loaded<A>>>>;

struct CacheSlots<A> {
    map: std::collections::HashMap<StreamId, (Slot<A>, u64)>,
    clock: u64,
}

impl<A> AggregateCache<A> {
    fn new(capacity: usize) -> Self {
        AggregateCache {
            capacity: capacity.max(1),
            slots: std::sync::Mutex::new(CacheSlots {
                map: std::collections::HashMap::new(),
                clock: 0,
            }),
        }
    }

    /// The slot of a stream, marked as just used. Over capacity, the least
    /// recently used idle slots go (an eighth at a time).
    fn slot(&self, stream_id: &StreamId) -> Slot<A> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.clock += 1;
        let now = slots.clock;
        let slot = {
            let entry = slots
                .map
                .entry(stream_id.clone())
                .or_insert_with(|| (Arc::new(tokio::sync::Mutex::new(None)), now));
            entry.1 = now;
            Arc::clone(&entry.0)
        };
        self.trim(&mut slots);
        slot
    }

    /// Gives back a slot after a command. Slots in use cannot be evicted,
    /// so a burst of commands to more aggregates than the capacity fills
    /// the cache past it; the last of them to finish bring it back under.
    fn release(&self, slot: Slot<A>) {
        drop(slot);
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.trim(&mut slots);
    }

    /// Over capacity, the least recently used idle slots go (an eighth of
    /// the capacity more than needed, so trimming is not paid on every
    /// command).
    fn trim(&self, slots: &mut CacheSlots<A>) {
        if slots.map.len() <= self.capacity {
            return;
        }
        let mut idle: Vec<(u64, StreamId)> = slots
            .map
            .iter()
            .filter(|(_, (slot, _))| Arc::strong_count(slot) == 1)
            .map(|(id, (_, used))| (*used, id.clone()))
            .collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        let excess = slots.map.len() - self.capacity + self.capacity / 8;
        for (_, id) in idle.into_iter().take(excess) {
            slots.map.remove(&id);
        }
    }

    /// How many aggregates the cache holds.
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map
            .len()
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
struct SnapshotPolicy<A> {
    every: u64,
    schema_version: u32,
    encode: fn(&A) -> Result<String, serde_json::Error>,
    decode: fn(&str) -> Result<A, serde_json::Error>,
}

impl<A> Clone for SnapshotPolicy<A> {
    fn clone(&self) -> Self {
        SnapshotPolicy { ..*self }
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
            cache: self.cache.clone(),
        }
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository for an aggregate that needs no services (or default ones).
    pub fn new(store: S) -> Self
    where
        A::Services: Default,
    {
        Self::with_services(store, A::Services::default())
    }

    /// A repository whose aggregates consult `services` when deciding.
    pub fn with_services(store: S, services: A::Services) -> Self {
        Repository {
            store,
            services: Arc::new(services),
            retry: RetryPolicy::default(),
            snapshots: None,
            journal: None,
            cache: None,
        }
    }

    /// Keeps up to `capacity` live aggregates between commands, so a command
    /// to a warm aggregate is one round trip (the append), and runs the
    /// commands to one aggregate one at a time in this process, so they do
    /// not conflict with each other (conflicts then only come from other
    /// processes). A cached aggregate never decides on stale state: the
    /// expected version guards every append and a conflict drops the
    /// cached copy and reloads; a refusal or an empty decision made on a
    /// cached copy is checked against the stream's version first.
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = Some(Arc::new(AggregateCache::new(capacity)));
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
    /// ([`EventStore::command_journal`]). Journaled commands are idempotent.
    ///
    /// ```text
    /// Repository::<Account, _>::new(store).with_journal(Journal::AcceptedAndRejected)
    /// ```
    pub fn with_journal(mut self, journal: Journal) -> Self
    where
        A::Command: serde::Serialize,
    {
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
    {
        self.snapshots = Some(SnapshotPolicy {
            every: snapshots.every,
            schema_version: snapshots.format,
            encode: |state| serde_json::to_string(state),
            decode: |text| serde_json::from_str(text),
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

    /// Loads the aggregate instance `id` by applying every stored event.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_stream(&A::stream_id(id)).await
    }

    /// Loads the aggregate as it was at a version or a time: for debugging
    /// and audits. Snapshots are not used.
    pub async fn load_as_of(
        &self,
        id: &str,
        as_of: AsOf,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let stream_id = A::stream_id(id);
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            replayed: 0,
        };
        loop {
            let page = self
                .store
                .read_stream(&stream_id, loaded.version + 1, LOAD_PAGE)
                .await?;
            let done = page.len() < LOAD_PAGE;
            for recorded in &page {
                let past = match as_of {
                    AsOf::Version(version) => recorded.stream_version > version,
                    AsOf::Time(time) => recorded.recorded_at > time,
                };
                if past {
                    return Ok(loaded);
                }
                for event in recorded.decode_all::<A::Event>()? {
                    loaded.state.evolve(&event.data);
                }
                loaded.version = recorded.stream_version;
                loaded.replayed += 1;
            }
            if done {
                return Ok(loaded);
            }
        }
    }

    async fn load_stream(&self, stream_id: &StreamId) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            replayed: 0,
        };
        if let Some(policy) = &self.snapshots {
            if let Some(snapshot) = self.store.load_snapshot(stream_id).await? {
                if snapshot.schema_version != policy.schema_version {
                    tracing::info!(stream = %stream_id, found = snapshot.schema_version, current = policy.schema_version, "ignoring a snapshot of another format; replaying in full");
                } else {
                    match (policy.decode)(snapshot.state.as_str()) {
                        Ok(state) => {
                            loaded.state = state;
                            loaded.version = snapshot.version;
                        }
                        Err(error) => {
                            tracing::warn!(stream = %stream_id, version = snapshot.version, %error, "ignoring a snapshot that does not decode; replaying in full")
                        }
                    }
                }
            }
        }
        loop {
            let page = self
                .store
                .read_stream(stream_id, loaded.version + 1, LOAD_PAGE)
                .await?;
            let done = page.len() < LOAD_PAGE;
            for recorded in &page {
                for event in recorded.decode_all::<A::Event>()? {
                    loaded.state.evolve(&event.data);
                }
                loaded.version = recorded.stream_version;
                loaded.replayed += 1;
            }
            if done {
                return Ok(loaded);
            }
        }
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

    /// Runs a command on the aggregate whose stream is `stream_id`.
    async fn execute_in(
        &self,
        stream_id: StreamId,
        command: A::Command,
        context: CommandContext,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let record = self.command_record(&command, &context)?;
        if let Some(record) = &record {
            if let Some(entry) = self.store.find_command(record.command_id).await? {
                if let JournalOutcome::Accepted {
                    first_version,
                    last_version,
                } = entry.outcome
                {
                    return self
                        .first_outcome(entry.stream_id, first_version, last_version, 0)
                        .await;
                }
            }
        }
        match &self.cache {
            Some(cache) => {
                // One command at a time per aggregate in this process: the
                // others wait here instead of racing into conflicts.
                let slot = cache.slot(&stream_id);
                let mut cached = slot.lock().await;
                let outcome = self
                    .run(command, &context, record.as_ref(), stream_id, &mut cached)
                    .await;
                drop(cached);
                cache.release(slot);
                outcome
            }
            None => {
                self.run(command, &context, record.as_ref(), stream_id, &mut None)
                    .await
            }
        }
    }

    /// Decides and appends, retrying on conflicts. `cached` is the live
    /// aggregate kept between commands (when the cache is on): it is taken
    /// for the command and put back only when it is known to be current.
    async fn run(
        &self,
        command: A::Command,
        context: &CommandContext,
        record: Option<&CommandRecord>,
        stream_id: StreamId,
        cached: &mut Option<Loaded<A>>,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut loaded, from_cache) = match cached.take() {
                Some(loaded) => (loaded, true),
                None => (self.load_stream(&stream_id).await?, false),
            };
            let decided = match loaded.state.decide(command.clone(), &self.services).await {
                Ok(decided) => decided,
                Err(error) => {
                    // A refusal appends nothing, so no expected version
                    // guards it: make sure a cached state was current.
                    if from_cache && self.moved_on(&stream_id, loaded.version).await? {
                        attempts -= 1;
                        continue;
                    }
                    if let (
                        Some(record),
                        Some(JournalPolicy {
                            rejections: true, ..
                        }),
                    ) = (record, &self.journal)
                    {
                        if let Err(e) = self
                            .store
                            .record_rejected_command(record, &stream_id, &error.to_string())
                            .await
                        {
                            tracing::warn!(stream = %stream_id, error = %e, "cannot journal a rejected command");
                        }
                    }
                    *cached = Some(loaded);
                    return Err(CommandError::Rejected(error));
                }
            };
            if decided.is_empty() {
                if from_cache && self.moved_on(&stream_id, loaded.version).await? {
                    attempts -= 1;
                    continue;
                }
                let version = loaded.version;
                *cached = Some(loaded);
                return Ok(CommandOutcome {
                    stream_id,
                    events: Vec::new(),
                    version,
                    attempts,
                });
            }
            let metadata = context.event_metadata();
            let new_events = decided
                .iter()
                .map(|event| NewEvent::from_event(event, metadata.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let expected = ExpectedVersion::at(loaded.version);
            match self
                .append_resending(record, &stream_id, expected, new_events)
                .await
            {
                Ok(recorded) => {
                    let version = recorded.last().map_or(loaded.version, |e| e.stream_version);
                    let snapshot = self
                        .snapshots
                        .as_ref()
                        .filter(|policy| version / policy.every > loaded.version / policy.every);
                    if snapshot.is_some() || self.cache.is_some() {
                        decided.iter().for_each(|e| loaded.state.evolve(e));
                        loaded.replayed += decided.len() as u64;
                        loaded.version = version;
                    }
                    if let Some(policy) = snapshot {
                        self.save_snapshot(policy, &stream_id, &loaded.state, version)
                            .await;
                    }
                    if self.cache.is_some() {
                        *cached = Some(loaded);
                    }
                    let events = recorded
                        .iter()
                        .zip(decided)
                        .map(|(recorded, event)| recorded.with_data(event))
                        .collect();
                    return Ok(CommandOutcome {
                        stream_id,
                        events,
                        version,
                        attempts,
                    });
                }
                Err(conflict) if conflict.is_conflict() => {
                    // The state was stale: it stays out of the cache, and
                    // the next attempt reloads.
                    tracing::debug!(stream = %stream_id, attempts, "conflict; reloading");
                    if attempts >= self.retry.max_attempts {
                        return Err(CommandError::Conflict {
                            stream_id,
                            attempts,
                            source: conflict,
                        });
                    }
                }
                Err(StoreError::CommandAlreadyExecuted {
                    stream_id,
                    first_version,
                    last_version,
                    ..
                }) => {
                    return self
                        .first_outcome(stream_id, first_version, last_version, attempts)
                        .await
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// Whether the stream moved past `version` (another writer appended).
    async fn moved_on(&self, stream_id: &StreamId, version: u64) -> Result<bool, StoreError> {
        Ok(self.store.stream_version(stream_id).await? != version)
    }

    /// What the store records of this command, if anything.
    fn command_record(
        &self,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Option<CommandRecord>, CommandError<A::Error>> {
        if self.journal.is_none() && !context.idempotent {
            return Ok(None);
        }
        let payload = match &self.journal {
            Some(journal) => Some(Payload::from_json_unchecked(
                (journal.encode)(command).map_err(crate::error::EncodeError::from)?,
            )),
            None => None,
        };
        Ok(Some(CommandRecord {
            command_id: context.command_id,
            command_type: command.command_type().to_owned(),
            payload,
            metadata: context.event_metadata(),
        }))
    }

    /// The outcome of a command executed before: its events, read back.
    async fn first_outcome(
        &self,
        stream_id: StreamId,
        first_version: u64,
        last_version: u64,
        attempts: u32,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let count = (last_version + 1).saturating_sub(first_version) as usize;
        let stored = self
            .store
            .read_stream(&stream_id, first_version, count)
            .await?;
        let mut events = Vec::with_capacity(stored.len());
        for e in &stored {
            events.extend(e.decode_all::<A::Event>()?);
        }
        Ok(CommandOutcome {
            stream_id,
            events,
            version: last_version,
            attempts,
        })
    }

    /// Saves a snapshot; a failure only costs a longer load later.
    async fn save_snapshot(
        &self,
        policy: &SnapshotPolicy<A>,
        stream_id: &StreamId,
        state: &A,
        version: u64,
    ) {
        let state = match (policy.encode)(state) {
            Ok(text) => Payload::from_json_unchecked(text),
            Err(error) => {
                tracing::warn!(stream = %stream_id, %error, "cannot encode a snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            version,
            schema_version: policy.schema_version,
            state,
            taken_at: chrono::Utc::now(),
        };
        if let Err(error) = self.store.save_snapshot(stream_id, snapshot).await {
            tracing::warn!(stream = %stream_id, %error, "cannot save a snapshot");
        }
    }

    /// Appends, re-sending the same events (same ids) when the store was
    /// unavailable or the reply was lost: the store's idempotency makes a
    /// re-sent append that had in fact succeeded return the first result.
    async fn append_resending(
        &self,
        command: Option<&CommandRecord>,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut backoff = self.retry.initial_backoff;
        let mut retries = 0;
        loop {
            let sent = match command {
                Some(command) => {
                    self.store
                        .append_for_command(command, stream_id, expected, events.clone())
                        .await
                }
                None => self.store.append(stream_id, expected, events.clone()).await,
            };
            match sent {
                Err(e) if e.is_transient() && retries < self.retry.max_transient_retries => {
                    retries += 1;
                    tracing::warn!(stream = %stream_id, retries, error = %e, "append failed; re-sending");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                result => return result,
            }
        }
    }
}
