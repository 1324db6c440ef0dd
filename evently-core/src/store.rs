//! The event store contract every store implements: atomic appends with an
//! expected version, stream and global-log reads, and live subscriptions.
//!
//! The full contract (the log's rules in ARCHITECTURE.md) is checked by the
//! conformance suite in `testing::conformance`; a store is only a store when
//! it passes it.

use std::future::Future;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use uuid::Uuid;

use crate::backend::{LogItem, LogStream};

use crate::error::StoreError;
use crate::event::{EventData, NewEvent, Payload, RecordedEvent};
use crate::metadata::Metadata;
use crate::version::{ExpectedVersion, StreamId};

/// A command as a store records it: its id (so a repeat of an executed
/// command is refused by the store itself), its type, and — for aggregates
/// that keep a command journal — its payload and context.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRecord {
    /// The command's id.
    pub command_id: Uuid,
    /// The command's type name.
    pub command_type: String,
    /// The command as JSON, when the aggregate keeps a journal.
    pub payload: Option<Payload>,
    /// Who asked, correlation and causation, user keys.
    pub metadata: Metadata,
}

/// What became of a journaled command.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalOutcome {
    /// Accepted: it produced the stream's versions `first..=last`.
    Accepted {
        /// The first version it produced.
        first_version: u64,
        /// The last version it produced.
        last_version: u64,
    },
    /// Refused by the aggregate, with the domain error's text.
    Rejected {
        /// The error's text.
        error: String,
    },
}

impl JournalOutcome {
    /// The error text of a rejected command after its stream was erased:
    /// the original text may quote personal data.
    pub const ERASED_ERROR: &'static str = "(erased with its stream)";
}

/// One command in a stream's journal: what was asked, by whom, and what it
/// caused.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The command as recorded.
    pub command: CommandRecord,
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// Accepted (with the versions it produced) or rejected.
    pub outcome: JournalOutcome,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}

/// Events read per round trip by the default [`EventStore::fold_stream`].
const FOLD_PAGE: usize = 1024;

/// One stream's part of an atomic append across several streams.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    /// The stream appended to.
    pub stream_id: StreamId,
    /// What the append expects of that stream.
    pub expected: ExpectedVersion,
    /// The events to append to it.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// One stream's part of an atomic append.
    pub fn new(
        stream_id: impl Into<StreamId>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        StreamAppend {
            stream_id: stream_id.into(),
            expected,
            events,
        }
    }
}

/// A stored snapshot of an aggregate's state at a stream version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream version the state includes.
    pub version: u64,
    /// The version of the state's format; a snapshot of another format is
    /// ignored and the aggregate replayed in full.
    pub schema_version: u32,
    /// The state as JSON.
    pub state: Payload,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// A live subscription to the global log: every event from a position on,
/// in log order, first the stored ones (catch-up) and then new ones as they
/// commit. It ends only when the consumer drops it; a store error is yielded
/// as an item and the stream ends after it.
pub type EventStream = BoxStream<'static, Result<RecordedEvent, StoreError>>;

/// An append-only log of events, in streams and in one global order: the
/// core every store implements. What a store can do besides is a trait of
/// its own — [`SnapshotStore`], [`CommandStore`], [`CorrelationStore`],
/// [`StreamLifecycle`] — so a store or a wrapper that lacks one is a
/// compile error where it is needed, never a silent `Unsupported`.
///
/// Versions in a stream are contiguous from 1; global positions increase
/// from 1 in the one order every reader sees. Stores are cheap handles:
/// clones share the same log.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// Appends `events` to `stream_id` if the stream meets `expected`: all
    /// of them or none. Returns the events as recorded, with their versions
    /// and positions.
    ///
    /// An append whose event ids are all already stored, in this stream, in
    /// the same order and with the same content, is a retry: it stores
    /// nothing and returns the events as first recorded, whatever the
    /// expectation. Any other reuse of a stored id is
    /// [`StoreError::DuplicateEventId`]. Appending no events checks the
    /// expectation and writes nothing.
    fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Reads up to `limit` events of one stream, from `from_version`
    /// (inclusive, versions start at 1) on. A stream that does not exist
    /// reads as empty.
    fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Hands each event of one stream from `from_version` to its end to
    /// `f`, in order, with only what folding it into an aggregate needs
    /// ([`EventData`], borrowed: no ids, metadata or copies), as it is read:
    /// what `Repository` loads with. Ends at the first error of `f`, or of
    /// the store (a gap is [`StoreError::MissingVersion`], as for
    /// [`EventStore::read_stream`]). The default reads whole events a page
    /// at a time; a store overrides it to read and parse less.
    fn fold_stream<E, F>(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        mut f: F,
    ) -> impl Future<Output = Result<(), E>> + Send
    where
        E: From<StoreError> + Send,
        F: FnMut(EventData<'_>) -> Result<(), E> + Send,
    {
        async move {
            let mut from = from_version.max(1);
            loop {
                let page = self.read_stream(stream_id, from, FOLD_PAGE).await?;
                for event in &page {
                    f(EventData::of(event))?;
                }
                match page.last() {
                    Some(last) if page.len() == FOLD_PAGE => from = last.stream_version + 1,
                    _ => return Ok(()),
                }
            }
        }
    }

    /// Reads up to `limit` events of the global log, from `from_position`
    /// (inclusive, positions start at 1) on.
    fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The stream's current version: 0 when it does not exist.
    fn stream_version(
        &self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The position of the last event a reader of the global log can see: 0
    /// for an empty log.
    fn head_position(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// How many events of the global log follow `position`, counted up to
    /// `cap` (a reader's lag in events: positions need not be dense, so a
    /// difference of positions is not a count).
    ///
    /// The default reads the log after `position` in pages and counts;
    /// stores that can count cheaper override it.
    fn events_after(
        &self,
        position: u64,
        cap: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move {
            const PAGE: usize = 1_000;
            let (mut from, mut count) = (position + 1, 0u64);
            while count < cap {
                let page = self.read_all(from, PAGE).await?;
                count += page.len() as u64;
                match page.last() {
                    Some(last) if page.len() == PAGE => from = last.global_position + 1,
                    _ => break,
                }
            }
            Ok(count.min(cap))
        }
    }

    /// Follows the global log from `from_position` (inclusive): catch-up,
    /// then live. See [`EventStream`].
    fn subscribe(&self, from_position: u64) -> EventStream;

    /// Appends to several streams atomically: every stream's expectation is
    /// checked on its own, and either all events are stored or none. The
    /// first refused stream's error is returned. A stream may appear once.
    /// Returns each stream's recorded events, in the order given.
    fn append_atomic(
        &self,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = Result<Vec<Vec<RecordedEvent>>, StoreError>> + Send;

    /// Follows the global log as [`EventStore::subscribe`] does, except that
    /// a stored row that cannot be read (one [`EventStore::subscribe`] ends
    /// on with [`StoreError::Corrupt`]) is yielded as
    /// [`LogItem::Unreadable`], with its position, and the subscription goes
    /// on after it. The projection runner reads the log this way, so that it
    /// can park such a row, or apply the events before it and stop there.
    ///
    /// The default yields [`EventStore::subscribe`]'s events as
    /// [`LogItem::Event`] (and its errors as they are): right for a store
    /// whose rows always read back, such as the in-memory one. Wrappers
    /// delegate it.
    fn subscribe_rows(&self, from_position: u64) -> LogStream {
        self.subscribe(from_position)
            .map(|item| item.map(LogItem::Event))
            .boxed()
    }
}

/// Where a projection reads events from: the global log of a store, or a
/// stream another service publishes (`evently-nats`'s `JetStreamSource`).
/// The projection runner needs nothing else, so projections, their
/// checkpoints and failure policies work the same on either.
///
/// Positions are the source's own: a store's global positions, or a
/// JetStream stream's sequence numbers. They increase along the source,
/// and a checkpoint is the last one applied.
pub trait EventSource: Clone + Send + Sync + 'static {
    /// Follows the source from `from_position` (inclusive): catch-up, then
    /// live, as [`EventStore::subscribe_rows`] does for a store's log.
    fn rows_from(&self, from_position: u64) -> LogStream;

    /// How many events follow `position`, counted up to `cap`: what a
    /// projection reports as its lag in events.
    fn events_after(
        &self,
        position: u64,
        cap: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Every store is a source of its own log.
impl<S: EventStore> EventSource for S {
    fn rows_from(&self, from_position: u64) -> LogStream {
        self.subscribe_rows(from_position)
    }

    fn events_after(
        &self,
        position: u64,
        cap: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        EventStore::events_after(self, position, cap)
    }
}

/// A store that runs projections with their checkpoints kept in it: what
/// the framework's own runners built on projections (process managers)
/// need of a store, whichever it is. The sink is the store's: PostgreSQL's
/// transaction, nothing on the memory store.
pub trait ProjectionStore: Clone + Send + Sync + 'static {
    /// What a projection's handler writes into.
    type Sink: Send;

    /// Runs `projection` on `source` from its checkpoint in this store.
    fn run_projection_on<P, Src>(
        &self,
        source: Src,
        projection: P,
        options: crate::projection::ProjectionOptions,
    ) -> crate::projection::ProjectionHandle
    where
        P: crate::projection::Projection<Sink = Self::Sink>,
        Src: EventSource;
}

/// A store that keeps snapshots of aggregates' state, so
/// [`crate::Repository::with_snapshots`] can load the latest one and only
/// the events after it.
pub trait SnapshotStore: EventStore {
    /// The latest snapshot of a stream, if there is one.
    fn load_snapshot(
        &self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Stores a snapshot of a stream, replacing an older one (a snapshot
    /// older than the stored one is ignored).
    fn save_snapshot(
        &self,
        stream_id: &StreamId,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A store that records commands: idempotent commands (a command id that
/// already produced events returns that first outcome) and the command
/// journal ([`crate::Repository::with_journal`]).
pub trait CommandStore: EventStore {
    /// Appends the events a command produced and records the command, all or
    /// nothing. When the command id was already recorded as accepted,
    /// nothing is appended and the error
    /// [`StoreError::CommandAlreadyExecuted`] says where its events are. A
    /// re-sent append (same event ids) returns the first result, as
    /// [`EventStore::append`] does.
    fn append_for_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Records a command the aggregate refused (for journals that keep
    /// rejections).
    fn record_rejected_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        error: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The recorded command with this id, if any.
    fn find_command(
        &self,
        command_id: Uuid,
    ) -> impl Future<Output = Result<Option<JournalEntry>, StoreError>> + Send;

    /// The commands recorded for a stream, oldest first.
    fn command_journal(
        &self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Vec<JournalEntry>, StoreError>> + Send;
}

/// A store that reads one business transaction (one correlation id)
/// across streams: the audit trail.
pub trait CorrelationStore: EventStore {
    /// Up to `limit` events of one business transaction (one correlation
    /// id), across streams, in log order, from `from_position` (inclusive)
    /// on: its audit trail, a page at a time (pass the last position + 1 to
    /// read on).
    fn read_correlation(
        &self,
        correlation_id: Uuid,
        from_position: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;
}

/// A store whose streams can be closed and erased (personal data).
pub trait StreamLifecycle: EventStore {
    /// Closes a stream: every later append to it fails with
    /// [`StoreError::StreamClosed`]; its events stay readable.
    fn close_stream(
        &self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Erases a stream's personal data: closes it, replaces every payload
    /// with `{}`, drops the actor and user keys from the metadata, and
    /// stamps `metadata.erased_at`; in its command journal, drops the
    /// payloads, actors and user keys and replaces rejection texts with
    /// [`JournalOutcome::ERASED_ERROR`]; drops its snapshot; and where the
    /// store keeps parked events, replaces their error texts too. The events keep their ids, types,
    /// versions and positions, so the log keeps its shape: projections skip
    /// erased events (their checkpoints move past them) and loading the
    /// aggregate fails with [`crate::DecodeErrorKind::Erased`]. Returns how
    /// many events were erased.
    fn erase_stream(
        &self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
