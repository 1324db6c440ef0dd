//! The production event store on PostgreSQL: atomic appends with expected
//! versions (one round trip), idempotent retries, atomic appends across
//! streams, a global order without gaps that live readers can follow,
//! LISTEN/NOTIFY subscriptions that survive dropped connections, snapshots,
//! and appends inside your own transaction.
//!
//! ```no_run
//! use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
//! use es_postgres::PgEventStore;
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
//! # async fn run() -> Result<(), es_postgres::SetupError> {
//! use es_postgres::PgEventStore;
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
//! # async fn run() -> Result<(), es_postgres::SetupError> {
//! let report = es_postgres::PgEventStore::builder()
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
//! - `append`: one (a single `SELECT append_events(...)` statement in its
//!   own implicit transaction), plus a pool checkout.
//! - `append_atomic` over n streams: n + 2 (`BEGIN`, one statement per
//!   stream, `COMMIT`).
//! - loading an aggregate: one per 1,024 events (`read_stream` pages), plus
//!   one for the snapshot when snapshots are on.
//! - `read_all` and `head_position`: one; a handle that has appended first
//!   waits (polling `readable_bound()`, bounded) until its own events are
//!   readable, so a writer reads its own writes.
//!
//! # Subscriptions
//!
//! [`EventStore::subscribe`] reads pages of the global log, then waits for a
//! NOTIFY on the schema's channel (sent by every append at commit) or the
//! poll interval, whichever is first. It holds at most one page per
//! subscriber: 512 events or about 8 MiB of payloads and metadata,
//! whichever comes first, and at least one event (payloads are at most
//! [`es_core::MAX_PAYLOAD_BYTES`]). One listener task per store handle, on
//! a connection of its own outside the pool (so a pool of one connection
//! still serves appends and reads), LISTENs for all of the handle's
//! subscriptions. When the server
//! restarts or a connection drops, reads back off and retry, the listener
//! reconnects, and each subscription resumes from the position after the
//! last event it delivered: nothing lost, nothing twice.

#![warn(missing_docs)]

mod group;
mod journal;
mod notifier;
mod projection;
mod restore;
mod setup;
mod subscription;
pub mod view;

pub use projection::{ParkedRow, ProjectionProgress, RebuildError};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use es_core::{
    CommandRecord, EventStore, EventStream, ExpectedVersion, JournalEntry, Metadata, NewEvent,
    Payload, RecordedEvent, Snapshot, StoreError, StreamAppend, StreamId,
};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

pub use restore::RebaseReport;
pub use setup::{MigrationReport, SetupError};

/// Re-exported so callers can name the connection types of
/// [`PgEventStore::append_in`] without depending on sqlx themselves.
pub use sqlx;

/// The PostgreSQL event store. Clones share one pool.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: String,
    channel: String,
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

struct Queries {
    append: String,
    append_command: String,
    read_stream: String,
    read_all: String,
    read_page: String,
    readable_bound: String,
    read_correlation: String,
    head_position: String,
    stream_version: String,
    load_snapshot: String,
    save_snapshot: String,
}

impl Queries {
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let columns = "e.position, e.event_id, e.stream_id, e.stream_version, e.event_type, \
                       e.schema_version, e.payload::text, e.metadata::text, e.recorded_at";
        Queries {
            append: format!(
                "SELECT out_position, out_version, out_recorded_at, out_replayed \
                 FROM {s}.append_events($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            append_command: format!(
                "SELECT out_position, out_version, out_recorded_at, out_replayed \
                 FROM {s}.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            // The stream's version comes with its events (or alone, when
            // none is read) so that a hole at the end is seen too.
            read_stream: format!(
                "SELECT {columns}, h.version FROM {s}.streams h \
                 LEFT JOIN LATERAL (SELECT * FROM {s}.events e \
                     WHERE e.stream_id = $1 AND e.stream_version >= $2 \
                     ORDER BY e.stream_version LIMIT $3) e ON true \
                 WHERE h.stream_id = $1 \
                 ORDER BY e.stream_version"
            ),
            read_all: format!(
                "SELECT {columns} FROM {s}.events e \
                 WHERE e.position >= $1 AND e.position < {s}.readable_bound() \
                 ORDER BY e.position LIMIT $2"
            ),
            // A page for a subscription: at most $2 events, and only as
            // many as fit in $3 bytes by their stored size (at least one).
            read_page: format!(
                "SELECT {columns} FROM (\
                     SELECT e.*, sum(pg_column_size(e.payload) + pg_column_size(e.metadata)) \
                                 OVER (ORDER BY e.position) AS running_bytes, \
                            pg_column_size(e.payload) + pg_column_size(e.metadata) AS row_bytes \
                     FROM {s}.events e \
                     WHERE e.position >= $1 AND e.position < {s}.readable_bound() \
                     ORDER BY e.position LIMIT $2) e \
                 WHERE e.running_bytes - e.row_bytes < $3 \
                 ORDER BY e.position"
            ),
            readable_bound: format!("SELECT {s}.readable_bound()"),
            read_correlation: format!(
                "SELECT {columns} FROM {s}.events e \
                 WHERE e.metadata ? 'correlation_id' AND e.metadata->>'correlation_id' = $1 \
                   AND e.position >= $2 AND e.position < {s}.readable_bound() \
                 ORDER BY e.position LIMIT $3"
            ),
            head_position: format!(
                "SELECT coalesce(max(e.position), 0) FROM {s}.events e \
                 WHERE e.position < {s}.readable_bound()"
            ),
            stream_version: format!("SELECT version FROM {s}.streams WHERE stream_id = $1"),
            load_snapshot: format!(
                "SELECT version, schema_version, state::text, taken_at FROM {s}.snapshots \
                 WHERE stream_id = $1"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots AS t (stream_id, version, schema_version, state, taken_at) \
                 VALUES ($1, $2, $3, $4::jsonb, $5) \
                 ON CONFLICT (stream_id) DO UPDATE \
                 SET version = excluded.version, schema_version = excluded.schema_version, \
                     state = excluded.state, taken_at = excluded.taken_at \
                 WHERE t.version < excluded.version"
            ),
        }
    }
}

/// Configures and connects a [`PgEventStore`].
///
/// ```no_run
/// # async fn run() -> Result<(), es_postgres::SetupError> {
/// use std::time::Duration;
///
/// let store = es_postgres::PgEventStore::builder()
///     .schema("orders")
///     .max_connections(16)
///     .poll_interval(Duration::from_millis(250))
///     .connect("postgres://postgres@127.0.0.1:5432/test")
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgEventStoreBuilder {
    schema: String,
    max_connections: u32,
    poll_interval: Duration,
    subscription_page: usize,
    subscription_page_bytes: usize,
    read_your_writes_timeout: Duration,
    inline: Vec<Arc<dyn projection::InlineProjection>>,
    group_committers: usize,
    notify: bool,
    migrate: bool,
}

impl std::fmt::Debug for PgEventStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStoreBuilder")
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("poll_interval", &self.poll_interval)
            .field("subscription_page", &self.subscription_page)
            .field("read_your_writes_timeout", &self.read_your_writes_timeout)
            .field(
                "inline",
                &self
                    .inline
                    .iter()
                    .map(|p| p.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for PgEventStoreBuilder {
    fn default() -> Self {
        PgEventStoreBuilder {
            schema: "es".into(),
            max_connections: 10,
            poll_interval: Duration::from_millis(500),
            subscription_page: 512,
            subscription_page_bytes: 8 * 1024 * 1024,
            read_your_writes_timeout: Duration::from_secs(5),
            inline: Vec::new(),
            group_committers: 0,
            notify: true,
            migrate: true,
        }
    }
}

impl PgEventStoreBuilder {
    /// The PostgreSQL schema that holds the store's tables (default `es`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The pool's size (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How often a waiting subscription polls when no NOTIFY arrives
    /// (default 500 ms): the fallback when notifications are lost.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Events a subscription reads and holds at a time (default 512).
    pub fn subscription_page(mut self, events: usize) -> Self {
        self.subscription_page = events.max(1);
        self
    }

    /// Bytes of payloads and metadata a subscription reads and holds at a
    /// time (default 8 MiB): a page ends at this size or at
    /// [`PgEventStoreBuilder::subscription_page`] events, whichever comes
    /// first, and holds at least one event. With payloads of at most
    /// [`es_core::MAX_PAYLOAD_BYTES`], a subscriber holds at most this
    /// budget plus one event.
    pub fn subscription_page_bytes(mut self, bytes: usize) -> Self {
        self.subscription_page_bytes = bytes.max(1);
        self
    }

    /// How long `read_all` waits for this handle's own appends to become
    /// readable (default 5 s) before it returns what is readable. It waits
    /// once per append: a later read does not wait again for the same
    /// positions.
    pub fn read_your_writes_timeout(mut self, timeout: Duration) -> Self {
        self.read_your_writes_timeout = timeout;
        self
    }

    /// Adds an inline projection: a read model updated in the same
    /// transaction as every append of this store handle (`append`,
    /// `append_atomic`, `append_in`), so it is never behind the log. A
    /// failing handler fails the append, and nothing is stored. A retried
    /// append that was already stored is not applied again.
    pub fn inline_projection<P>(mut self, projection: P) -> Self
    where
        P: es_core::projection::Projection<Sink = PgConnection>,
    {
        self.inline.push(Arc::new(projection::Inline(projection)));
        self
    }

    /// Turns on group commit with `committers` connections: concurrent
    /// `append`s of this handle (without a command record or inline
    /// projections) are batched into one statement and one transaction per
    /// committer round, each stream's expected version still checked on its
    /// own, so a conflict fails only that append. Worth it with many
    /// concurrent writers; 0 (the default) sends each append on its own.
    ///
    /// Each append is checked before it joins a batch, so a bad one fails
    /// alone with the error the direct path gives; appends of more than
    /// 4 MiB of payloads go on their own. A batch the server refuses as a
    /// whole is sent again append by append, and an append whose outcome
    /// cannot be read from the batch's rows is sent again alone (a stored
    /// one then returns its events as stored): no caller is told that
    /// events failed when they committed.
    pub fn group_commit(mut self, committers: usize) -> Self {
        self.group_committers = committers;
        self
    }

    /// Whether this handle's appends wake subscribers with NOTIFY (default
    /// on). A NOTIFY inside a transaction takes a database-wide lock at its
    /// commit, held through the WAL flush, which would make concurrent
    /// appends commit one at a time; so the store sends it after the
    /// commit instead, from a notifier task that coalesces the appends of a
    /// moment into one NOTIFY. With it off, subscriptions (of any handle)
    /// wake by polling, so lower their `poll_interval`. A pool given to
    /// [`PgEventStoreBuilder::with_pool`] should run `SET es.notify = 'off'`
    /// after connecting to get the same (else its appends NOTIFY in their
    /// transaction).
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Whether connecting creates and upgrades the schema (default on).
    /// Off, for a service whose database role may not run DDL: connecting
    /// only checks that the schema has every migration of this build, and
    /// fails with [`SetupError::SchemaMissing`] or
    /// [`SetupError::SchemaBehind`] otherwise. Run the migrations in a
    /// deploy step with [`PgEventStoreBuilder::migrate_only`].
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Runs the migrations of the schema and nothing else (for a deploy
    /// step, with a role that may run DDL): connects one connection,
    /// creates or upgrades the schema (adopting one created before
    /// migration checksums), and disconnects.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), es_postgres::SetupError> {
    /// let report = es_postgres::PgEventStore::builder()
    ///     .schema("billing")
    ///     .migrate_only("postgres://migrator@127.0.0.1:5432/prod")
    ///     .await?;
    /// println!("applied {:?}", report.applied);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn migrate_only(self, url: &str) -> Result<MigrationReport, SetupError> {
        setup::check_schema_name(&self.schema)?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(SetupError::Connect)?;
        let report = setup::migrate(&pool, &self.schema).await;
        pool.close().await;
        report
    }

    /// Repairs a schema restored from a logical dump of another cluster
    /// (see [`SetupError::RestoredFromAnotherCluster`]): renumbers its
    /// events' positions, in log order, below this cluster's transaction
    /// ids, with the streams' last positions, the projections' checkpoints
    /// and the parked events, in one transaction that locks the schema's
    /// tables. Run it once after the restore, before any writer; a schema
    /// that needs no repair is left as it is. Positions change, so a
    /// consumer that keeps its checkpoint outside the database must start
    /// again from 0 (or from the new position of its last event).
    pub async fn rebase_after_restore(self, url: &str) -> Result<RebaseReport, SetupError> {
        setup::check_schema_name(&self.schema)?;
        restore::rebase(url, &self.schema).await
    }

    /// Connects a pool to `url`, creates or upgrades the schema, and returns
    /// the store.
    pub async fn connect(self, url: &str) -> Result<PgEventStore, SetupError> {
        setup::check_schema_name(&self.schema)?;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // Appends on these connections never NOTIFY inside their
                    // transaction: the store's notifier sends one after the
                    // commit (see `PgEventStoreBuilder::notify`).
                    sqlx::Executor::execute(&mut *conn, "SET es.notify = 'off'").await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(SetupError::Connect)?;
        self.with_pool(pool).await
    }

    /// Uses an existing pool (shared with the service's own queries), then
    /// creates or upgrades the schema.
    pub async fn with_pool(self, pool: PgPool) -> Result<PgEventStore, SetupError> {
        setup::check_schema_name(&self.schema)?;
        if self.migrate {
            setup::migrate(&pool, &self.schema).await?;
        } else {
            setup::check(&pool, &self.schema).await?;
        }
        restore::check(&pool, &self.schema).await?;
        let committers = self.group_committers;
        let notifier = self
            .notify
            .then(|| notifier::start(pool.clone(), setup::channel(&self.schema)));
        let inner = Arc::new_cyclic(|weak| Inner {
            channel: setup::channel(&self.schema),
            queries: Queries::new(&self.schema),
            schema: self.schema,
            pool,
            options: Options {
                poll_interval: self.poll_interval,
                subscription_page: self.subscription_page,
                subscription_page_bytes: self.subscription_page_bytes,
                read_your_writes_timeout: self.read_your_writes_timeout,
            },
            last_appended: AtomicU64::new(0),
            own_readable: AtomicU64::new(0),
            wakeups: Arc::new(tokio::sync::watch::Sender::new(0)),
            listener_started: std::sync::Mutex::new(false),
            inline: self.inline,
            group: (committers > 0).then(|| group::start(weak.clone(), committers)),
            notifier,
        });
        Ok(PgEventStore { inner })
    }
}

/// Why the global log's readers wait, from [`PgEventStore::status`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogStatus {
    /// Readers of the global log can read every position below this.
    pub readable_bound: u64,
    /// The last position readers can read (0 when none).
    pub readable_head: u64,
    /// Events committed at or above the bound: stored, but not yet readable
    /// because an older transaction is still running.
    pub waiting_events: u64,
    /// The oldest running transaction that has written (the one holding
    /// readers back when `waiting_events > 0`).
    pub oldest_transaction: Option<RunningTransaction>,
}

/// A running transaction, as `pg_stat_activity` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningTransaction {
    /// The backend's process id (`pg_terminate_backend(pid)` ends it).
    pub pid: i32,
    /// Its database.
    pub database: Option<String>,
    /// Its `application_name`.
    pub application_name: Option<String>,
    /// `active`, `idle in transaction`, …
    pub state: Option<String>,
    /// When its transaction started.
    pub transaction_started: Option<DateTime<Utc>>,
    /// The start of its latest statement.
    pub query: Option<String>,
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
        &self.inner.schema
    }

    /// The channel on which appends NOTIFY subscribers (`"{schema}_events"`),
    /// for tools that LISTEN themselves.
    pub fn notify_channel(&self) -> &str {
        &self.inner.channel
    }

    /// Runs the migrations again (they are idempotent); `connect` already did.
    pub async fn migrate(&self) -> Result<(), SetupError> {
        setup::migrate(&self.inner.pool, &self.inner.schema)
            .await
            .map(|_| ())
    }

    /// Appends inside the caller's transaction: the events and the caller's
    /// own writes commit together or not at all. Versions and positions
    /// are final when the caller commits; subscribers see the events then.
    ///
    /// ```no_run
    /// # async fn run(store: es_postgres::PgEventStore, events: Vec<es_core::NewEvent>) -> Result<(), Box<dyn std::error::Error>> {
    /// use es_core::{ExpectedVersion, StreamId};
    ///
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO outbox (note) VALUES ('sent')").execute(&mut *tx).await?;
    /// store.append_in(&mut tx, &StreamId::from("order-7"), ExpectedVersion::Any, events).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        check_batch(stream_id, &events)?;
        let recorded = self
            .append_on(&mut *conn, stream_id, expected, events, None)
            .await?;
        self.announce_in(conn, &recorded).await?;
        Ok(recorded)
    }

    /// After an append inside the caller's transaction: subscribers must
    /// wake when that transaction commits — not before (they would read
    /// nothing and sleep through the commit), and not never. A NOTIFY sent
    /// in the transaction is delivered by PostgreSQL at its commit, and
    /// dropped with a rollback. (It takes the database-wide NOTIFY lock at
    /// that commit, which the handle's own appends avoid by announcing
    /// after theirs.) The handle's reads of the global log then wait for
    /// those positions as for its own appends.
    async fn announce_in(
        &self,
        conn: &mut PgConnection,
        recorded: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let Some(last) = recorded.iter().map(|e| e.global_position).max() else {
            return Ok(());
        };
        if self.inner.notifier.is_some() {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(&self.inner.channel)
                .execute(&mut *conn)
                .await
                .map_err(unavailable_or_backend)?;
        }
        self.inner.last_appended.fetch_max(last, Ordering::Relaxed);
        Ok(())
    }

    /// [`EventStore::append_atomic`] inside the caller's transaction.
    pub async fn append_atomic_in(
        &self,
        conn: &mut PgConnection,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        let results = self.append_atomic_on(&mut *conn, appends).await?;
        self.announce_in(conn, &results.concat()).await?;
        Ok(results)
    }

    /// The atomic append's statements on `conn`, without announcing them.
    async fn append_atomic_on(
        &self,
        conn: &mut PgConnection,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        check_atomic(&appends)?;
        // Lock streams in one order everywhere (that of their lock keys, in
        // `lock_streams()`), so two transfers in opposite directions cannot
        // deadlock; and lock them all before the first write, which gives
        // the transaction its id (and so its positions) only once no other
        // append to these streams can run.
        let mut order: Vec<usize> = (0..appends.len()).collect();
        order.sort_by(|&a, &b| appends[a].stream_id.cmp(&appends[b].stream_id));
        let sorted: Vec<&str> = order
            .iter()
            .map(|&i| appends[i].stream_id.as_str())
            .collect();
        sqlx::query(&format!(
            "SELECT \"{}\".lock_streams($1::text[])",
            self.inner.schema
        ))
        .bind(&sorted)
        .execute(&mut *conn)
        .await
        .map_err(unavailable_or_backend)?;
        let mut results: Vec<Option<Vec<RecordedEvent>>> = vec![None; appends.len()];
        let mut appends: Vec<Option<StreamAppend>> = appends.into_iter().map(Some).collect();
        for i in order {
            let Some(write) = appends[i].take() else {
                continue;
            };
            let recorded = self
                .append_on(
                    &mut *conn,
                    &write.stream_id,
                    write.expected,
                    write.events,
                    None,
                )
                .await?;
            results[i] = Some(recorded);
        }
        Ok(results.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// What the global log's readers can read, and what holds them back.
    pub async fn status(&self) -> Result<LogStatus, StoreError> {
        let s = format!("\"{}\"", self.inner.schema);
        let row = sqlx::query(&format!(
            "SELECT b.bound, \
                    (SELECT coalesce(max(position), 0) FROM {s}.events WHERE position < b.bound), \
                    (SELECT count(*) FROM {s}.events WHERE position >= b.bound) \
             FROM (SELECT {s}.readable_bound() AS bound) b"
        ))
        .fetch_one(&self.inner.pool)
        .await
        .map_err(unavailable_or_backend)?;
        let oldest = sqlx::query(
            "SELECT pid, datname::text, application_name, state, xact_start, left(query, 200) \
             FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
             ORDER BY age(backend_xid) DESC LIMIT 1",
        )
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(unavailable_or_backend)?;
        let oldest_transaction = oldest
            .map(|r| -> Result<RunningTransaction, sqlx::Error> {
                Ok(RunningTransaction {
                    pid: r.try_get(0)?,
                    database: r.try_get(1)?,
                    application_name: r.try_get(2)?,
                    state: r.try_get(3)?,
                    transaction_started: r.try_get(4)?,
                    query: r.try_get(5)?,
                })
            })
            .transpose()
            .map_err(unavailable_or_backend)?;
        Ok(LogStatus {
            readable_bound: row.try_get::<i64, _>(0).map_err(unavailable_or_backend)? as u64,
            readable_head: row.try_get::<i64, _>(1).map_err(unavailable_or_backend)? as u64,
            waiting_events: row.try_get::<i64, _>(2).map_err(unavailable_or_backend)? as u64,
            oldest_transaction,
        })
    }

    async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command: Option<&CommandRecord>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let args = AppendArgs::new(stream_id, expected, &events)?.with_command(command)?;
        let rows = args
            .query(&self.inner.queries)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| append_error(e, stream_id, expected, command))?;
        let (recorded, replayed) = recorded_from_append(stream_id, events, rows)?;
        if !replayed {
            self.apply_inline(conn, &recorded).await?;
        }
        Ok(recorded)
    }

    /// Applies the inline projections to freshly appended events, in the
    /// append's transaction.
    async fn apply_inline(
        &self,
        conn: &mut PgConnection,
        recorded: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        for projection in &self.inner.inline {
            projection.apply(conn, recorded).await.map_err(|error| {
                StoreError::InlineProjectionFailed {
                    projection: projection.name().to_owned(),
                    reason: error.to_string(),
                }
            })?;
        }
        Ok(())
    }

    async fn append_pooled(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command: Option<&CommandRecord>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        check_batch(stream_id, &events)?;
        if !self.inner.inline.is_empty() {
            // Inline projections write in the append's transaction.
            let mut tx = self
                .inner
                .pool
                .begin()
                .await
                .map_err(unavailable_or_backend)?;
            let recorded = self
                .append_on(&mut tx, stream_id, expected, events, command)
                .await?;
            tx.commit().await.map_err(unavailable_or_backend)?;
            self.note_appended(&recorded);
            return Ok(recorded);
        }
        let grouped =
            events.iter().map(|e| e.payload.len()).sum::<usize>() <= group::MAX_GROUPED_BYTES;
        if let (Some(queue), None, true) = (&self.inner.group, command, grouped) {
            // Described here, so a bad append fails alone, before it joins
            // a batch, with the error the direct path gives.
            let (described, bytes) = group::describe(stream_id, expected, &events)?;
            let (reply, answer) = tokio::sync::oneshot::channel();
            let pending = group::Pending {
                stream_id: stream_id.clone(),
                expected,
                events,
                described,
                bytes,
                reply,
            };
            queue
                .send(pending)
                .await
                .map_err(|_| StoreError::unavailable("the group-commit queue is closed"))?;
            let recorded = answer.await.map_err(|_| {
                StoreError::unavailable("the group committer stopped before answering")
            })??;
            self.note_appended(&recorded);
            return Ok(recorded);
        }
        self.append_direct_checked(stream_id, expected, events, command)
            .await
    }

    /// Appends on its own (no group commit): one statement.
    pub(crate) async fn append_direct(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.append_direct_checked(stream_id, expected, events, None)
            .await
    }

    async fn append_direct_checked(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command: Option<&CommandRecord>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let args = AppendArgs::new(stream_id, expected, &events)?.with_command(command)?;
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            match args
                .query(&self.inner.queries)
                .fetch_all(&self.inner.pool)
                .await
            {
                // Another append stored one of these event ids (or this
                // command id) concurrently: run again, and the function
                // tells a retry from a reuse.
                Err(e)
                    if attempt < 3
                        && (is_unique_violation(&e, "events_event_id_key")
                            || is_unique_violation(&e, "commands_accepted_key")) => {}
                other => break other.map_err(|e| append_error(e, stream_id, expected, command))?,
            }
        };
        let (recorded, _replayed) = recorded_from_append(stream_id, events, rows)?;
        self.note_appended(&recorded);
        Ok(recorded)
    }

    fn note_appended(&self, recorded: &[RecordedEvent]) {
        if let Some(last) = recorded.iter().map(|e| e.global_position).max() {
            self.inner.last_appended.fetch_max(last, Ordering::Relaxed);
            if let Some(notifier) = &self.inner.notifier {
                notifier.notify_one();
            }
        }
    }

    /// Reads the readable part of the global log, without waiting.
    pub(crate) async fn read_log(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (events, bad) = self.read_log_until_bad(from_position, limit).await?;
        match bad {
            Some(bad) => Err(bad.error),
            None => Ok(events),
        }
    }

    /// Reads the readable part of the global log, without waiting: the
    /// events before the first row that cannot be read, and that row.
    pub(crate) async fn read_log_until_bad(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<es_core::UnreadableEvent>), StoreError> {
        let rows = sqlx::query(&self.inner.queries.read_all)
            .bind(to_i64(from_position))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            match recorded_from_row(row) {
                Ok(event) => events.push(event),
                Err(error) => return Ok((events, Some(unreadable_from_row(row, error)?))),
            }
        }
        Ok((events, None))
    }

    /// [`PgEventStore::read_log_until_bad`] for subscriptions: at most
    /// `limit` events and about `max_bytes` of payloads and metadata (at
    /// least one event), so a page of large events stays small. The server
    /// sends about that many (by stored size); the client stops reading at
    /// the budget.
    pub(crate) async fn read_page_until_bad(
        &self,
        from_position: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<es_core::UnreadableEvent>), StoreError> {
        use futures::TryStreamExt;
        let mut rows = sqlx::query(&self.inner.queries.read_page)
            .bind(to_i64(from_position))
            .bind(to_i64(limit as u64))
            .bind(to_i64(max_bytes as u64))
            .fetch(&self.inner.pool);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await.map_err(unavailable_or_backend)? {
            match recorded_from_row(&row) {
                Ok(event) => {
                    bytes += event.data.len()
                        + row
                            .try_get_raw(7)
                            .map_or(0, |v| v.as_bytes().map_or(0, <[u8]>::len));
                    events.push(event);
                    if bytes >= max_bytes {
                        break;
                    }
                }
                Err(error) => return Ok((events, Some(unreadable_from_row(&row, error)?))),
            }
        }
        Ok((events, None))
    }

    /// Waits until this handle's own appends are readable (bounded). Asks
    /// the server only while an own append has not yet been seen readable,
    /// and then with back-off (2 ms, doubling to 100 ms): a transaction
    /// left open elsewhere costs a waiting read a few dozen queries, not
    /// thousands, and later reads none.
    async fn await_own_writes(&self) -> Result<(), StoreError> {
        let own = self.inner.last_appended.load(Ordering::Relaxed);
        if own <= self.inner.own_readable.load(Ordering::Relaxed) {
            return Ok(());
        }
        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let bound: i64 = sqlx::query_scalar(&self.inner.queries.readable_bound)
                .fetch_one(&self.inner.pool)
                .await
                .map_err(unavailable_or_backend)?;
            if bound as u64 > own {
                self.inner.own_readable.fetch_max(own, Ordering::Relaxed);
                return Ok(());
            }
            if started.elapsed() >= self.inner.options.read_your_writes_timeout {
                tracing::warn!(
                    schema = %self.inner.schema,
                    own_position = own,
                    "own appends are still not readable: an older transaction is open \
                     (see PgEventStore::status); reading what is readable"
                );
                // Waited once: later reads do not wait again for the same
                // appends, so one transaction left open elsewhere does not
                // make every read of this handle slow.
                self.inner.own_readable.fetch_max(own, Ordering::Relaxed);
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.append_pooled(stream_id, expected, events, None).await
    }

    async fn append_for_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        es_core::limits::check_command(stream_id, command, None)?;
        self.append_pooled(stream_id, expected, events, Some(command))
            .await
    }

    async fn record_rejected_command(
        &self,
        command: &CommandRecord,
        stream_id: &StreamId,
        error: &str,
    ) -> Result<(), StoreError> {
        es_core::limits::check_command(stream_id, command, Some(error))?;
        journal::record_rejected(self, command, stream_id, error).await
    }

    async fn find_command(
        &self,
        command_id: uuid::Uuid,
    ) -> Result<Option<JournalEntry>, StoreError> {
        journal::find(self, command_id).await
    }

    async fn command_journal(&self, stream_id: &StreamId) -> Result<Vec<JournalEntry>, StoreError> {
        check_stream_id(stream_id)?;
        journal::of_stream(self, stream_id).await
    }

    async fn read_correlation(
        &self,
        correlation_id: uuid::Uuid,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.await_own_writes().await?;
        let rows = sqlx::query(&self.inner.queries.read_correlation)
            .bind(correlation_id.to_string())
            .bind(to_i64(from_position))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        rows.iter().map(recorded_from_row).collect()
    }

    async fn close_stream(&self, stream_id: &StreamId) -> Result<(), StoreError> {
        check_stream_id(stream_id)?;
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(unavailable_or_backend)?;
        journal::close(self, stream_id, &mut conn).await
    }

    async fn erase_stream(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        check_stream_id(stream_id)?;
        journal::erase(self, stream_id).await
    }

    async fn append_atomic(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        check_atomic(&appends)?;
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(unavailable_or_backend)?;
        let results = self.append_atomic_on(&mut tx, appends).await?;
        tx.commit().await.map_err(unavailable_or_backend)?;
        for recorded in &results {
            self.note_appended(recorded);
        }
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        check_stream_id(stream_id)?;
        let rows = sqlx::query(&self.inner.queries.read_stream)
            .bind(stream_id.as_str())
            .bind(to_i64(from_version))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        // Every row carries the stream's version; with no event read, one
        // row carries only that (no row: no stream).
        let head: Option<i64> = match rows.first() {
            Some(row) => row.try_get(9).map_err(unavailable_or_backend)?,
            None => None,
        };
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            if row
                .try_get::<Option<i64>, _>(0)
                .map_err(unavailable_or_backend)?
                .is_some()
            {
                events.push(recorded_from_row(row)?);
            }
        }
        es_core::limits::check_versions(
            stream_id,
            from_version,
            limit,
            &events,
            head.map(|v| v as u64),
        )?;
        Ok(events)
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.await_own_writes().await?;
        self.read_log(from_position, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        check_stream_id(stream_id)?;
        let version: Option<i64> = sqlx::query_scalar(&self.inner.queries.stream_version)
            .bind(stream_id.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        Ok(version.unwrap_or(0) as u64)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.await_own_writes().await?;
        let head: i64 = sqlx::query_scalar(&self.inner.queries.head_position)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        Ok(head as u64)
    }

    fn subscribe(&self, from_position: u64) -> EventStream {
        subscription::subscribe(self.clone(), from_position)
    }

    fn subscribe_rows(&self, from_position: u64) -> es_core::LogStream {
        subscription::subscribe_rows(self.clone(), from_position)
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        check_stream_id(stream_id)?;
        let row = sqlx::query(&self.inner.queries.load_snapshot)
            .bind(stream_id.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        let Some(row) = row else { return Ok(None) };
        let corrupt = |e: sqlx::Error| StoreError::Corrupt {
            stream_id: stream_id.clone(),
            stream_version: 0,
            reason: format!("unreadable snapshot row: {e}"),
        };
        let version: i64 = row.try_get(0).map_err(corrupt)?;
        let schema_version: i32 = row.try_get(1).map_err(corrupt)?;
        let state: String = row.try_get(2).map_err(corrupt)?;
        Ok(Some(Snapshot {
            version: version as u64,
            schema_version: schema_version as u32,
            state: Payload::from_json_unchecked(state),
            taken_at: row.try_get(3).map_err(corrupt)?,
        }))
    }

    async fn save_snapshot(
        &self,
        stream_id: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        es_core::limits::check_snapshot(stream_id, &snapshot)?;
        sqlx::query(&self.inner.queries.save_snapshot)
            .bind(stream_id.as_str())
            .bind(to_i64(snapshot.version))
            .bind(snapshot.schema_version as i32)
            .bind(snapshot.state.as_str())
            .bind(snapshot.taken_at)
            .execute(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        Ok(())
    }
}

/// The arguments of `append_events(...)`, as arrays.
struct AppendArgs<'a> {
    stream_id: &'a str,
    kind: i16,
    expected: i64,
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    payloads: Vec<&'a str>,
    metadata: Vec<String>,
    command: Option<CommandArgs<'a>>,
}

/// The command recorded with an append.
struct CommandArgs<'a> {
    id: uuid::Uuid,
    command_type: &'a str,
    payload: Option<&'a str>,
    metadata: String,
}

impl<'a> AppendArgs<'a> {
    fn new(
        stream_id: &'a StreamId,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> Result<Self, StoreError> {
        let (kind, version) = expected_arg(expected);
        let invalid = |reason: String| StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason,
        };
        let mut args = AppendArgs {
            stream_id: stream_id.as_str(),
            kind,
            expected: version,
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
            command: None,
        };
        for e in events {
            args.ids.push(e.event_id);
            args.types.push(&e.event_type);
            args.versions
                .push(i32::try_from(e.schema_version).map_err(|_| {
                    invalid(format!(
                        "schema version {} is above {}",
                        e.schema_version,
                        i32::MAX
                    ))
                })?);
            args.payloads.push(e.payload.as_str());
            args.metadata.push(
                serde_json::to_string(&e.metadata)
                    .map_err(|err| invalid(format!("metadata does not serialize: {err}")))?,
            );
        }
        Ok(args)
    }

    fn with_command(mut self, command: Option<&'a CommandRecord>) -> Result<Self, StoreError> {
        if let Some(c) = command {
            self.command = Some(CommandArgs {
                id: c.command_id,
                command_type: &c.command_type,
                payload: c.payload.as_ref().map(Payload::as_str),
                metadata: serde_json::to_string(&c.metadata)
                    .map_err(|e| StoreError::Backend(Box::new(e)))?,
            });
        }
        Ok(self)
    }

    fn query<'q>(
        &'q self,
        queries: &'q Queries,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let sql = match self.command {
            Some(_) => &queries.append_command,
            None => &queries.append,
        };
        let query = sqlx::query(sql)
            .bind(self.stream_id)
            .bind(self.kind)
            .bind(self.expected)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(&self.metadata);
        match &self.command {
            Some(c) => query
                .bind(c.id)
                .bind(c.command_type)
                .bind(c.payload)
                .bind(&c.metadata),
            None => query,
        }
    }
}

/// The longest stream id the store takes, in bytes (its btree indexes
/// hold at most about 2,700 bytes per entry). Every store takes the same:
/// see [`es_core::limits`].
pub use es_core::MAX_STREAM_ID_BYTES;

use es_core::check_stream_id;

fn check_batch(stream_id: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    es_core::check_events(stream_id, events)
}

fn check_atomic(appends: &[StreamAppend]) -> Result<(), StoreError> {
    es_core::check_appends(appends)
}

/// The expected version as `append_events()` reads it: a version above
/// `i64::MAX` can never match, so it becomes -1 (which never matches
/// either) rather than a number out of range.
pub(crate) fn expected_arg(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(v) => (3, i64::try_from(v).unwrap_or(-1)),
    }
}

/// The recorded events, and whether the append was a retry of a stored one.
fn recorded_from_append(
    stream_id: &StreamId,
    events: Vec<NewEvent>,
    rows: Vec<PgRow>,
) -> Result<(Vec<RecordedEvent>, bool), StoreError> {
    if rows.len() != events.len() {
        return Err(StoreError::Backend(
            format!(
                "append_events returned {} rows for {} events",
                rows.len(),
                events.len()
            )
            .into(),
        ));
    }
    let replayed = match rows.first() {
        Some(row) => row.try_get::<bool, _>(3).map_err(unavailable_or_backend)?,
        None => false,
    };
    let recorded = events
        .into_iter()
        .zip(rows)
        .map(|(e, row)| {
            let position: i64 = row.try_get(0).map_err(unavailable_or_backend)?;
            let version: i64 = row.try_get(1).map_err(unavailable_or_backend)?;
            Ok(RecordedEvent {
                event_id: e.event_id,
                stream_id: stream_id.clone(),
                stream_version: version as u64,
                global_position: position as u64,
                event_type: e.event_type,
                schema_version: e.schema_version,
                data: e.payload,
                metadata: e.metadata,
                recorded_at: row.try_get(2).map_err(unavailable_or_backend)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((recorded, replayed))
}

/// Reads one row of the events table; a row that cannot be read is a
/// `Corrupt` error naming its stream and version.
pub(crate) fn recorded_from_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let stream_id: String = row.try_get(2).map_err(unavailable_or_backend)?;
    let stream_id = StreamId::from(stream_id);
    let stream_version: i64 = row.try_get(3).map_err(unavailable_or_backend)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        stream_id: stream_id.clone(),
        stream_version: stream_version as u64,
        reason,
    };
    let position: i64 = row.try_get(0).map_err(|e| corrupt(e.to_string()))?;
    let schema_version: i32 = row.try_get(5).map_err(|e| corrupt(e.to_string()))?;
    let payload: String = row.try_get(6).map_err(|e| corrupt(e.to_string()))?;
    let metadata: String = row.try_get(7).map_err(|e| corrupt(e.to_string()))?;
    let metadata: Metadata = serde_json::from_str(&metadata)
        .map_err(|e| corrupt(format!("metadata does not decode: {e}")))?;
    let event_type: String = row.try_get(4).map_err(|e| corrupt(e.to_string()))?;
    Ok(RecordedEvent {
        event_id: row.try_get(1).map_err(|e| corrupt(e.to_string()))?,
        stream_version: stream_version as u64,
        global_position: position as u64,
        event_type: event_type.into(),
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(format!("negative schema version {schema_version}")))?,
        data: Payload::from_json_unchecked(payload),
        metadata,
        recorded_at: row.try_get(8).map_err(|e| corrupt(e.to_string()))?,
        stream_id,
    })
}

/// What can be read of a row of the events table that `recorded_from_row`
/// refused with `error`; the error itself when not even its position reads.
fn unreadable_from_row(
    row: &PgRow,
    error: StoreError,
) -> Result<es_core::UnreadableEvent, StoreError> {
    let (Ok(position), Ok(stream_id), Ok(stream_version)) = (
        row.try_get::<i64, _>(0),
        row.try_get::<String, _>(2),
        row.try_get::<i64, _>(3),
    ) else {
        return Err(error);
    };
    Ok(es_core::UnreadableEvent {
        global_position: position as u64,
        stream_id: StreamId::from(stream_id),
        stream_version: stream_version as u64,
        event_id: row.try_get(1).ok(),
        event_type: row.try_get(4).ok(),
        schema_version: row
            .try_get::<i32, _>(5)
            .ok()
            .and_then(|v| u32::try_from(v).ok()),
        error,
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint))
}

/// Maps an error of `append_events(...)` to the store's typed errors.
/// The typed error for a refusal `append_events()` raised (by SQLSTATE,
/// with its detail and message), if it is one.
pub(crate) fn append_refusal(
    code: &str,
    detail: &str,
    message: &str,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    command: Option<&CommandRecord>,
) -> Option<StoreError> {
    // A refusal whose detail does not parse is no refusal we know: `None`,
    // so the caller keeps the database's own error (with its text) rather
    // than a typed error with invented ids or versions.
    let json = || serde_json::from_str::<serde_json::Value>(detail).ok();
    let stream = |d: &serde_json::Value| d["stream_id"].as_str().map(StreamId::from);
    Some(match code {
        "ESWEV" => StoreError::WrongExpectedVersion {
            stream_id: stream_id.clone(),
            expected,
            actual: detail.parse().ok()?,
        },
        "ESDUP" => {
            let d = json()?;
            StoreError::DuplicateEventId {
                event_id: d["event_id"].as_str()?.parse().ok()?,
                stored_in: stream(&d)?,
                stored_version: d["stream_version"].as_u64()?,
                reason: d["reason"].as_str()?.to_owned(),
            }
        }
        "ESCMD" => {
            let d = json()?;
            StoreError::CommandAlreadyExecuted {
                command_id: command?.command_id,
                stream_id: stream(&d)?,
                first_version: d["first_version"].as_u64()?,
                last_version: d["last_version"].as_u64()?,
            }
        }
        "ESCLS" => StoreError::StreamClosed {
            stream_id: stream_id.clone(),
        },
        "ESINV" => StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: message.to_owned(),
        },
        // The checks of `es_core::limits` refuse these before they reach
        // the server; a refusal that still arrives says what it is.
        "22003" => StoreError::VersionOverflow {
            stream_id: stream_id.clone(),
            version: 0,
            events: 0,
        },
        "22021" | "22P05" => StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: format!("PostgreSQL cannot store a character of this append: {message}"),
        },
        "22P02" => StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: format!("a payload or the metadata is not valid JSON: {message}"),
        },
        "54000" => StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: format!("a value of this append is larger than PostgreSQL takes: {message}"),
        },
        _ => return None,
    })
}

fn append_error(
    error: sqlx::Error,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    command: Option<&CommandRecord>,
) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        let detail = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.detail())
            .unwrap_or_default();
        if let Some(code) = db.code() {
            if let Some(refused) =
                append_refusal(&code, detail, db.message(), stream_id, expected, command)
            {
                return refused;
            }
        }
        if is_unique_violation(&error, "events_event_id_key") {
            // Another append stored one of these ids while this one ran,
            // more than once in a row: sending the same append again tells
            // a retry (the first result) from a reuse (`DuplicateEventId`
            // naming the stored event).
            return StoreError::Unavailable {
                reason: format!(
                    "an event id of this append to `{stream_id}` was stored concurrently; \
                     send the same append again"
                ),
                source: Some(Box::new(error)),
            };
        }
    }
    unavailable_or_backend(error)
}

/// Connection trouble is `Unavailable` (retry may succeed); the rest is
/// `Backend`.
pub(crate) fn unavailable_or_backend(error: sqlx::Error) -> StoreError {
    if is_transient(&error) {
        StoreError::unavailable_from(error)
    } else {
        StoreError::Backend(Box::new(error))
    }
}

/// Connection trouble (an I/O error, no connection free in time), a
/// server shutting down or a terminated backend, a serialization failure
/// or a deadlock: trying again may succeed. A closed pool, a protocol
/// error, a TLS failure, a dropped database or a refused value are not:
/// retrying them fails the same way, forever.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "57P05")
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_keeps_the_drivers_error_as_its_source() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        ));
        let error = unavailable_or_backend(io);
        assert!(error.is_transient());
        let source = std::error::Error::source(&error).expect("a source");
        assert!(matches!(
            source.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset
        ));
    }

    #[test]
    fn a_refusal_whose_detail_does_not_parse_invents_nothing() {
        let stream = StreamId::from("s-1");
        let refused = |code: &str, detail: &str| {
            append_refusal(
                code,
                detail,
                "refused",
                &stream,
                ExpectedVersion::Exact(3),
                None,
            )
        };
        assert!(refused("ESWEV", "not a number").is_none());
        assert!(refused("ESDUP", "{}").is_none());
        assert!(refused(
            "ESDUP",
            r#"{"event_id": "nil", "stream_id": "s", "stream_version": 1, "reason": "r"}"#
        )
        .is_none());
        assert!(
            refused(
                "ESCMD",
                r#"{"stream_id": "s", "first_version": 1, "last_version": 2}"#
            )
            .is_none(),
            "no command given"
        );
        assert!(matches!(
            refused("ESWEV", "7"),
            Some(StoreError::WrongExpectedVersion { actual: 7, .. })
        ));
        let id = uuid::Uuid::now_v7();
        let detail = format!(
            r#"{{"event_id": "{id}", "stream_id": "s-9", "stream_version": 4, "reason": "other content"}}"#
        );
        assert!(matches!(
            refused("ESDUP", &detail),
            Some(StoreError::DuplicateEventId { event_id, stored_version: 4, .. }) if event_id == id
        ));
    }

    #[test]
    fn only_connection_trouble_is_transient() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(is_transient(&io));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        assert!(!is_transient(&sqlx::Error::Protocol("garbled".into())));
        assert!(!is_transient(&sqlx::Error::WorkerCrashed));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!unavailable_or_backend(sqlx::Error::PoolClosed).is_transient());
    }
}
