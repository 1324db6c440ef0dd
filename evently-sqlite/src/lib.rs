//! The SQLite event store: a durable log in one file, no server.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = evently_sqlite::SqliteEventStore::open("bank.db").await?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! The file is created and migrated on open (versioned migrations embedded
//! in the crate), in write-ahead-log mode, with `synchronous=FULL`: an
//! append that returned is on disk, whatever happens to the process or the
//! machine. [`Synchronous::Normal`] is faster and still never corrupts the
//! file, but the last appends before a power cut or an OS crash (not a
//! process crash) may be lost although they were acknowledged.
//!
//! # Writers and positions
//!
//! SQLite lets one writer at a time change a file. In a process, appends
//! queue for the store's one write connection, so they never fail with
//! `SQLITE_BUSY`; another process appending to the same file waits for the
//! file's lock up to the busy time-out (5 s by default), then gets
//! [`evently_core::StoreError::Unavailable`]. Each append takes the log's
//! last position + 1 inside its transaction, under that lock: global
//! positions are gap-free by construction, and a reader never sees a
//! position before the ones below it.
//!
//! Appends queued while the writer is busy commit together in one
//! transaction (one sync to disk for all of them); a refused one fails
//! alone.
//!
//! Subscribers in the process are woken by each append; a subscriber in
//! another process on the same file polls (every 100 ms by default).
//!
//! # Read models
//!
//! Projections write into tables in the same file, their checkpoint moved
//! in the same transaction ([`SqliteEventStore::run_projection`]); views
//! keep documents without SQL; inline projections are written in the
//! append's own transaction ([`SqliteEventStoreBuilder::inline_projection`]);
//! a read model is rebuilt into new tables or in place
//! ([`SqliteEventStore::rebuild_projection`],
//! [`SqliteEventStore::rebuild_projection_in_place`],
//! [`SqliteEventStore::rebuild_view`]). Process managers run on it too.

#![warn(missing_docs)]

mod capabilities;
mod deadlines;
mod error;
mod inline;
mod projection;
mod read;
mod rebuild;
mod view;
mod write;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use evently_core::{
    EventStore, EventStream, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamAppend,
    StreamId,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{watch, Mutex};
use uuid::Uuid;

pub use error::SetupError;
pub use rebuild::RebuildError;
/// The sqlx this store is built on (its SQLite driver), for your own
/// queries on [`SqliteEventStore::pool`].
pub use sqlx;

/// The migrations, in order: (version, description, SQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "events, streams, commands, snapshots",
        include_str!("schema.sql"),
    ),
    (
        2,
        "projection checkpoints, parked events, leases",
        include_str!("projections.sql"),
    ),
    (3, "deadlines", include_str!("deadlines.sql")),
];

/// How many events a subscriber reads at a time.
const SUBSCRIPTION_PAGE: usize = 256;

/// When an append's effect on disk is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is synced to disk before the append returns (the
    /// default): nothing acknowledged is ever lost.
    #[default]
    Full,
    /// Commits are synced at checkpoints: the file is never corrupted, but
    /// the last acknowledged appends may be lost in a power cut or an OS
    /// crash.
    Normal,
}

/// Configures and opens a [`SqliteEventStore`].
#[derive(Debug, Clone)]
pub struct SqliteEventStoreBuilder {
    synchronous: Synchronous,
    busy_timeout: Duration,
    poll_interval: Duration,
    readers: u32,
    inline: inline::Inlines,
}

impl Default for SqliteEventStoreBuilder {
    fn default() -> Self {
        SqliteEventStoreBuilder {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(100),
            readers: 4,
            inline: inline::Inlines::default(),
        }
    }
}

impl SqliteEventStoreBuilder {
    /// The durability of a commit (default [`Synchronous::Full`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// How long an append waits for another process's write lock (default
    /// 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How often a caught-up subscriber looks for appends by other
    /// processes (default 100 ms; appends in this process wake it at once).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Adds an inline projection: a read model in the file updated in the
    /// same transaction as every append of this store, so it is never
    /// behind the log. A failing handler fails the append
    /// ([`StoreError::InlineProjectionFailed`]), and nothing of it is
    /// stored; a retried append that was already stored is not applied
    /// again. Appends then always take the checked path (a savepoint per
    /// append of a group, so a failing one fails alone).
    pub fn inline_projection<P>(mut self, projection: P) -> Self
    where
        P: evently_core::projection::Projection<Sink = SqliteConnection>,
    {
        self.inline.push(projection);
        self
    }

    /// Read connections (default 4).
    pub fn readers(mut self, n: u32) -> Self {
        self.readers = n.max(1);
        self
    }

    /// Opens (creating and migrating) the store in the file `path`;
    /// `:memory:` or `sqlite::memory:` opens one in memory
    /// ([`SqliteEventStoreBuilder::open_in_memory`]).
    pub async fn open(self, path: impl AsRef<Path>) -> Result<SqliteEventStore, SetupError> {
        let path = path.as_ref().to_owned();
        if path.as_os_str() == ":memory:" || path.as_os_str() == "sqlite::memory:" {
            return self.open_in_memory().await;
        }
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                return Err(SetupError::MissingDirectory { path });
            }
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        self.open_with(path, options).await
    }

    /// Opens a store that lives in memory for as long as the store (its
    /// clones) does: for tests that want SQLite's behaviour without a file.
    pub async fn open_in_memory(self) -> Result<SqliteEventStore, SetupError> {
        let name = format!("file:evently-{}?mode=memory&cache=shared", Uuid::now_v7());
        let options = SqliteConnectOptions::from_str(&format!("sqlite:{name}"))
            .map_err(|e| SetupError::Open {
                path: PathBuf::from(":memory:"),
                source: e,
            })?
            .journal_mode(SqliteJournalMode::Memory);
        self.open_with(PathBuf::from(":memory:"), options).await
    }

    async fn open_with(
        self,
        path: PathBuf,
        options: SqliteConnectOptions,
    ) -> Result<SqliteEventStore, SetupError> {
        let options = options
            .synchronous(match self.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(self.busy_timeout)
            .disable_statement_logging();
        let busy = self.busy_timeout;
        let fail = |e| error::setup(&path, busy, e);
        let mut writer = options.connect().await.map_err(fail)?;
        migrate(&mut writer).await.map_err(|e| match e {
            Migrate::Sql(e) => fail(e),
            Migrate::Newer(found) => SetupError::SchemaNewer {
                path: path.clone(),
                found,
                known: MIGRATIONS.last().map_or(0, |m| m.0),
            },
        })?;
        let readers = SqlitePoolOptions::new()
            .max_connections(self.readers)
            .connect_with(options.clone())
            .await
            .map_err(fail)?;
        let head = head_of(&readers).await.map_err(fail)?;
        Ok(SqliteEventStore {
            inner: Arc::new(Inner {
                path,
                writer: Arc::new(Mutex::new(writer)),
                queue: Default::default(),
                readers,
                options,
                inline: self.inline,
                head: watch::Sender::new(head),
                poll_interval: self.poll_interval,
            }),
        })
    }
}

enum Migrate {
    Sql(sqlx::Error),
    Newer(i64),
}

impl From<sqlx::Error> for Migrate {
    fn from(e: sqlx::Error) -> Self {
        Migrate::Sql(e)
    }
}

/// Applies the migrations the file lacks, each in a write transaction.
async fn migrate(conn: &mut SqliteConnection) -> Result<(), Migrate> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result = migrate_in(conn).await;
    match result {
        Ok(()) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(())
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

async fn head_of(conn: &SqlitePool) -> Result<u64, sqlx::Error> {
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(conn)
        .await?;
    Ok(head as u64)
}

/// The migrations' statements, inside the write transaction (a function
/// of its own rather than an async block, so the open future stays `Send`).
async fn migrate_in(conn: &mut SqliteConnection) -> Result<(), Migrate> {
    sqlx::Executor::execute(
        &mut *conn,
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&mut *conn)
            .await?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(Migrate::Newer(current));
    }
    for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        sqlx::Executor::execute(&mut *conn, *sql).await?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
        )
        .bind(version)
        .bind(description)
        .bind(Utc::now().timestamp_micros())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The SQLite event store. Clones share the file's connections.
#[derive(Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The one write connection: appends queue here.
    writer: Arc<Mutex<SqliteConnection>>,
    /// Appends waiting for the write connection (group commit).
    queue: std::sync::Mutex<Vec<write::Pending>>,
    readers: SqlitePool,
    /// How its connections open (for a connection of a runner's own).
    options: SqliteConnectOptions,
    /// Projections written in every append's transaction.
    inline: inline::Inlines,
    /// The last position this process appended or saw.
    head: watch::Sender<u64>,
    poll_interval: Duration,
}

impl std::fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteEventStore {
    /// A builder: durability, busy time-out, polling, readers.
    pub fn builder() -> SqliteEventStoreBuilder {
        SqliteEventStoreBuilder::default()
    }

    /// Opens (creating and migrating) the store in the file `path`, with
    /// the defaults.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, SetupError> {
        Self::builder().open(path).await
    }

    /// The file (`:memory:` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A stream's version (0: no stream).
    pub(crate) async fn stream_version_of(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = ?")
                .bind(stream_id.as_str())
                .fetch_optional(&self.inner.readers)
                .await
                .map_err(error::store)?;
        Ok(version.unwrap_or(0) as u64)
    }

    /// The read connections.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.readers
    }

    /// Tells this process's subscribers the log moved to `head`.
    fn publish(&self, head: u64) {
        self.inner.head.send_if_modified(|h| {
            let moved = head > *h;
            if moved {
                *h = head;
            }
            moved
        });
    }

    async fn read_log(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT ?"
        ))
        .bind(from_position as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.inner.readers)
        .await
        .map_err(error::store)?;
        rows.iter().map(recorded).collect()
    }
}

/// The columns [`recorded`] reads, in its order.
pub(crate) const COLUMNS: &str =
    "position, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata, recorded_at";

/// A microsecond timestamp as a time.
pub(crate) fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Now, to the microsecond (what the file keeps).
pub(crate) fn now() -> DateTime<Utc> {
    time(Utc::now().timestamp_micros())
}

/// A row of [`COLUMNS`] as an event.
pub(crate) fn recorded(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let stream_id: String = row.try_get(2).map_err(error::store)?;
    let version: i64 = row.try_get(3).map_err(error::store)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        stream_id: StreamId::from(stream_id.as_str()),
        stream_version: version as u64,
        reason,
    };
    let id: String = row.try_get(1).map_err(error::store)?;
    let payload: String = row.try_get(6).map_err(error::store)?;
    let metadata: String = row.try_get(7).map_err(error::store)?;
    Ok(RecordedEvent {
        event_id: id
            .parse()
            .map_err(|e| corrupt(format!("event id {id:?}: {e}")))?,
        stream_id: StreamId::from(stream_id.as_str()),
        stream_version: version as u64,
        global_position: row.try_get::<i64, _>(0).map_err(error::store)? as u64,
        event_type: row.try_get::<String, _>(4).map_err(error::store)?.into(),
        schema_version: row.try_get::<i64, _>(5).map_err(error::store)? as u32,
        data: evently_core::Payload::from_json(payload)
            .map_err(|e| corrupt(format!("payload is not JSON: {e}")))?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| corrupt(format!("metadata does not read: {e}")))?,
        recorded_at: time(row.try_get(8).map_err(error::store)?),
    })
}

impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let write = StreamAppend::new(stream_id.clone(), expected, events);
        Ok(self
            .append_now(vec![write], None)
            .await?
            .pop()
            .unwrap_or_default())
    }

    async fn append_atomic(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        self.append_now(appends, None).await
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version LIMIT ?"
        ))
        .bind(stream_id.as_str())
        .bind(from_version.min(i64::MAX as u64) as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.inner.readers)
        .await
        .map_err(error::store)?;
        rows.iter().map(recorded).collect()
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_log(from_position.max(1), limit).await
    }

    async fn fold_stream<E, F>(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        f: F,
    ) -> Result<(), E>
    where
        E: From<StoreError> + Send,
        F: FnMut(evently_core::EventData<'_>) -> Result<(), E> + Send,
    {
        self.fold_rows(stream_id, from_version, f).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        evently_core::backend::check_stream_id(stream_id)?;
        self.stream_version_of(stream_id).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        head_of(&self.inner.readers).await.map_err(error::store)
    }

    async fn events_after(&self, position: u64, cap: u64) -> Result<u64, StoreError> {
        // Positions are dense: the head says how many follow.
        Ok(self
            .head_position()
            .await?
            .saturating_sub(position)
            .min(cap))
    }

    fn subscribe(&self, from_position: u64) -> EventStream {
        let state = Subscription {
            store: self.clone(),
            head: self.inner.head.subscribe(),
            next: from_position.max(1),
            buffer: Default::default(),
        };
        Box::pin(futures::stream::unfold(state, |mut sub| async move {
            loop {
                if let Some(event) = sub.buffer.pop_front() {
                    return Some((Ok(event), sub));
                }
                match sub.store.read_log(sub.next, SUBSCRIPTION_PAGE).await {
                    Ok(page) if !page.is_empty() => {
                        sub.next = page.last().map_or(sub.next, |e| e.global_position + 1);
                        sub.buffer.extend(page);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => return Some((Err(e), sub)),
                }
                // Woken by this process's appends at once; another
                // process's are found by polling.
                let next = sub.next;
                let poll = sub.store.inner.poll_interval;
                let _ = tokio::time::timeout(poll, sub.head.wait_for(|head| *head >= next)).await;
            }
        }))
    }
}

struct Subscription {
    store: SqliteEventStore,
    head: watch::Receiver<u64>,
    next: u64,
    buffer: std::collections::VecDeque<RecordedEvent>,
}

/// An event id as the file keeps it.
pub(crate) fn id_text(id: Uuid) -> String {
    id.hyphenated().to_string()
}
