//! The production event store on PostgreSQL: atomic appends with expected
//! versions (one round trip), idempotent retries, atomic appends across
//! streams, a global order without gaps that live readers can follow,
//! LISTEN/NOTIFY subscriptions that survive dropped connections, snapshots,
//! and appends inside your own transaction.
//!
//! ```no_run
//! use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
//! use evently_postgres::PgEventStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgEventStore::builder()
//!     .schema("billing")
//!     .connect("postgres://postgres@127.0.0.1:5432/test")
//!     .await?;
//! let event = NewEvent::raw("Opened", 1, Payload::from_json(r#"{"owner":"ada"}"#)?, Metadata::new());
//! store.append(&StreamId::from("account-1"), ExpectedVersion::NoStream, vec![event]).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//!
//! Everything lives in one PostgreSQL schema (`es` unless configured), so
//! several services can share a database. The store creates and upgrades it
//! itself on connect: embedded, numbered migrations, recorded in
//! `schema_migrations` with the SHA-256 of each, applied in a transaction
//! under an advisory lock, so running them twice (or from two processes at
//! once) is harmless. A released migration never changes (a fix is a new
//! one): connect refuses a schema whose applied migration differs from this
//! build's ([`SetupError::MigrationChanged`]) or that a newer build migrated
//! ([`SetupError::UnknownMigration`]). A schema created before checksums
//! were recorded is adopted if its tables, indexes and functions are those
//! of the released migrations it records, and refused with what differs
//! otherwise ([`SetupError::LegacySchemaDiffers`]).
//!
//! For a service whose role may not run DDL, `builder().migrate(false)`
//! only checks the schema ([`SetupError::SchemaMissing`],
//! [`SetupError::SchemaBehind`]), and a deploy step runs the migrations
//! alone:
//!
//! ```no_run
//! # async fn run() -> Result<(), evently_postgres::SetupError> {
//! use evently_postgres::PgEventStore;
//!
//! // The deploy step, with a role that may run DDL.
//! PgEventStore::builder().schema("billing").migrate_only("postgres://migrator@db/prod").await?;
//! // The service.
//! let store = PgEventStore::builder()
//!     .schema("billing")
//!     .migrate(false)
//!     .connect("postgres://billing@db/prod")
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! | table | columns | indexes and why |
//! |---|---|---|
//! | `streams` | `stream_id text`, `version bigint` | primary key on `stream_id`: an append locks its stream's row, so appends to one stream serialise there and appends to different streams never wait for each other |
//! | `events` | `position bigint`, `event_id uuid`, `stream_id text`, `stream_version bigint`, `event_type text`, `schema_version int`, `payload jsonb`, `metadata jsonb`, `recorded_at timestamptz` | primary key on `position`: reads of the global log; unique `(stream_id, stream_version)`: reads of one stream, and no version can be stored twice; unique `event_id`: idempotent retries, an id is never stored twice |
//! | `snapshots` | `stream_id text`, `version bigint`, `schema_version int`, `state jsonb`, `taken_at timestamptz` | primary key on `stream_id`: one latest snapshot per stream |
//! | `schema_migrations` | `version int`, `description text`, `applied_at timestamptz`, `checksum bytea` | primary key on `version` |
//!
//! Functions complete it: `append_events(...)`, which appends one stream's
//! events in one statement, `readable_bound()`, and `stream_lock_key()` /
//! `lock_streams()`: a stream's advisory lock key includes the schema (two
//! schemas never wait for each other's streams of the same name), and
//! appends over several streams lock them in key order, so they cannot
//! deadlock even when two keys collide.
//!
//! # Restoring a dump into another cluster
//!
//! Positions come from transaction ids, which a logical dump
//! (`pg_dump`/`pg_restore`) does not carry over. Restored into a cluster
//! whose transaction ids are younger than the stored positions, the events
//! would be invisible to readers and their streams would refuse appends, so
//! connect refuses such a schema with
//! [`SetupError::RestoredFromAnotherCluster`]. The repair, run once after
//! the restore and before any writer:
//!
//! ```no_run
//! # async fn run() -> Result<(), evently_postgres::SetupError> {
//! let report = evently_postgres::PgEventStore::builder()
//!     .schema("billing")
//!     .rebase_after_restore("postgres://postgres@new-cluster/prod")
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! It renumbers the positions in log order below the cluster's transaction
//! ids, with the streams' last positions, the projections' checkpoints and
//! the parked events, in one transaction. Positions change: a consumer that
//! keeps its checkpoint outside the database must start again (from 0, or
//! from the new position of its last event). A physical backup (base backup,
//! replica) keeps the transaction ids and needs none of this.
//!
//! # The global order, without gaps
//!
//! A sequence handed out at insert does not give readers a safe order:
//! transactions commit in another order than they took their numbers, so a
//! reader of `position > last_seen` skips an event that commits late. This
//! store makes the position from the appending transaction's id instead:
//! `position = xid8 << 20 | index`, the index counting the events of that
//! transaction. Readers of the global log only read positions below
//! `pg_snapshot_xmin(pg_current_snapshot()) << 20`: every transaction older
//! than the oldest one still running has ended, so no event can ever appear
//! below what a reader has passed, and the order never changes once read.
//!
//! What it costs: nothing on the write path (no lock, no extra statement
//! beyond an index probe for the next index in the transaction), so writers
//! never wait for each other across streams. Readers of the global log see
//! an event once every older transaction of the cluster has ended: a
//! transaction left open (in any database of the cluster, once it has
//! written) stalls them — it never makes them skip — and
//! [`PgEventStore::status`] names it. A rolled-back append just ends and
//! stalls nobody. Positions increase but are not contiguous. One transaction
//! may append at most 2^20 events.
//!
//! # Round trips
//!
//! - `append`: one statement in its own implicit transaction, plus a pool
//!   checkout. For the common case (one stream, an exact or no-stream
//!   expectation, no command record) that statement moves the stream's row
//!   and inserts the events, with no advisory lock and no `FOR UPDATE`:
//!   appends at one version serialise on the stream's row and the second
//!   finds the version moved, and a row moves only when no younger
//!   transaction appended to the stream, so versions follow log order.
//!   When it stores nothing (a wrong expectation, a closed stream, an id
//!   stored already: a retry) it is followed by `append_events(...)`, which
//!   locks the stream and tells which, with its typed error; other
//!   expectations and command records go there directly.
//! - group commit: one statement per batch of concurrent appends (one
//!   `INSERT … SELECT FROM unnest(...)` for the streams' rows and one for
//!   the events); an append whose expectation does not hold, whose stream
//!   is closed or whose ids are stored already is left out of the batch
//!   and sent alone after it commits, for its own answer.
//! - `append_atomic` over n streams: n + 2 (`BEGIN`, one statement per
//!   stream, `COMMIT`).
//! - loading an aggregate: one (`fold_stream` streams the rows of one
//!   query), plus one for the snapshot when snapshots are on.
//! - `read_all` and `head_position`: one; a handle that has appended first
//!   waits (polling `readable_bound()`, bounded) until its own events are
//!   readable, so a writer reads its own writes.
//!
//! # Subscriptions
//!
//! [`EventStore::subscribe`](evently_core::EventStore::subscribe) reads pages
//! of the global log, then waits for a
//! NOTIFY on the schema's channel (sent by every append at commit) or the
//! poll interval, whichever is first. It holds at most one page per
//! subscriber: 4,096 events or about 8 MiB of payloads and metadata,
//! whichever comes first, and at least one event (payloads are at most
//! [`evently_core::limits::MAX_PAYLOAD_BYTES`]). One listener task per store handle, on
//! a connection of its own outside the pool (so a pool of one connection
//! still serves appends and reads), LISTENs for all of the handle's
//! subscriptions. When the server
//! restarts or a connection drops, reads back off and retry, the listener
//! reconnects, and each subscription resumes from the position after the
//! last event it delivered: nothing lost, nothing twice.

#![warn(missing_docs)]

// The modules, by role:
// - `builder`: configuring and connecting; `setup`: the migrations;
//   `restore`: schemas restored from a dump of another cluster.
// - `queries`: every SQL statement, built once per handle from the checked
//   `SchemaName` (no other module formats SQL).
// - `append`: the one append core and its after-commit step; `group`:
//   group commit; `read`: reads of streams, the log and snapshots;
//   `event_store`: the `EventStore` impl, handing over to these.
// - `journal`: commands and the life cycle of streams; `status`: what holds
//   readers back; `error`: the database's errors as the store's.
// - `notifier`, `subscription`: waking and feeding subscribers.
// - `projection`, `rebuild`, `view`: read models.
mod append;
mod builder;
mod deadlines;
mod error;
mod event_store;
mod group;
mod journal;
mod notifier;
mod projection;
mod queries;
mod read;
mod rebuild;
mod restore;
mod set;
mod setup;
mod status;
mod subscription;
pub mod view;

pub use builder::PgEventStoreBuilder;
pub use rebuild::RebuildError;
pub use restore::RebaseReport;
pub use setup::{MigrationReport, SetupError};
pub use status::{LogStatus, RunningTransaction};

/// The longest stream id the store takes, in bytes (its btree indexes
/// hold at most about 2,700 bytes per entry). Every store takes the same:
/// see [`evently_core::limits`].
pub use evently_core::limits::MAX_STREAM_ID_BYTES;

/// Re-exported so callers can name the connection types of
/// [`PgEventStore::append_in`] without depending on sqlx themselves.
pub use sqlx;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPool;

use queries::Queries;

/// Most events one transaction may append: the index part of a position
/// has 20 bits.
pub(crate) const MAX_EVENTS_PER_TRANSACTION: usize = 1 << 20;

/// The PostgreSQL event store. Clones share one pool.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    channel: String,
    /// Every statement, for this handle's schema.
    queries: Queries,
    options: Options,
    /// The highest position this handle appended, so its own reads of the
    /// global log can wait until those events are readable.
    last_appended: AtomicU64,
    /// The highest own position already seen readable: reads need not ask
    /// the server again until this handle appends past it.
    own_readable: AtomicU64,
    /// Counts NOTIFYs on the channel; subscriptions wait for it to move.
    wakeups: Arc<tokio::sync::watch::Sender<u64>>,
    /// Whether the listener task runs.
    listener_started: std::sync::Mutex<bool>,
    /// Read models updated in the same transaction as each append.
    inline: Vec<Arc<dyn projection::InlineProjection>>,
    /// The group-commit queue, when group commit is on.
    group: Option<tokio::sync::mpsc::Sender<group::Pending>>,
    /// Wakes the notifier task after appends (when notify is on).
    notifier: Option<Arc<tokio::sync::Notify>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let the notifier see that the store is gone.
        if let Some(notifier) = &self.notifier {
            notifier.notify_one();
        }
    }
}

#[derive(Clone)]
struct Options {
    poll_interval: Duration,
    subscription_page: usize,
    subscription_page_bytes: usize,
    read_your_writes_timeout: Duration,
}

impl PgEventStore {
    /// A builder with the defaults: schema `es`, 10 connections.
    pub fn builder() -> PgEventStoreBuilder {
        PgEventStoreBuilder::default()
    }

    /// Connects with the defaults.
    pub async fn connect(url: &str) -> Result<Self, SetupError> {
        Self::builder().connect(url).await
    }

    /// The pool, for the service's own queries and transactions.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        self.inner.queries.schema.as_str()
    }

    /// The channel on which appends NOTIFY subscribers (`"{schema}_events"`),
    /// for tools that LISTEN themselves.
    pub fn notify_channel(&self) -> &str {
        &self.inner.channel
    }

    /// Runs the migrations again (they are idempotent); `connect` already did.
    pub async fn migrate(&self) -> Result<(), SetupError> {
        setup::migrate(&self.inner.pool, &self.inner.queries)
            .await
            .map(|_| ())
    }
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.schema())
            .finish_non_exhaustive()
    }
}
