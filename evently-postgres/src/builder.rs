//! Configuring and connecting a store: the builder, the pool, the
//! migrations (or their check), and the handle's background tasks.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use crate::queries::{Queries, SchemaName, NOTIFY_OFF};
use crate::{
    group, notifier, projection, restore, setup, Inner, MigrationReport, Options, PgEventStore,
    RebaseReport, SetupError,
};

/// Configures and connects a [`PgEventStore`].
///
/// ```no_run
/// # async fn run() -> Result<(), evently_postgres::SetupError> {
/// use std::time::Duration;
///
/// let store = evently_postgres::PgEventStore::builder()
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
            subscription_page: 4096,
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
    /// The PostgreSQL schema that holds the store's tables (default `evently`).
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

    /// Events a subscription reads and holds at a time (default 4,096; the
    /// byte budget below caps a page of large events). A subscription far
    /// behind (a projection catching up, the NATS publisher) reads the log
    /// in pages of this size: 512 made the publisher of 20,000 events 15 %
    /// slower (evently-bench W8).
    pub fn subscription_page(mut self, events: usize) -> Self {
        self.subscription_page = events.max(1);
        self
    }

    /// Bytes of payloads and metadata a subscription reads and holds at a
    /// time (default 8 MiB): a page ends at this size or at
    /// [`PgEventStoreBuilder::subscription_page`] events, whichever comes
    /// first, and holds at least one event. With payloads of at most
    /// [`evently_core::limits::MAX_PAYLOAD_BYTES`], a subscriber holds at most this
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
        P: evently_core::projection::Projection<Sink = PgConnection>,
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
    /// # async fn run() -> Result<(), evently_postgres::SetupError> {
    /// let report = evently_postgres::PgEventStore::builder()
    ///     .schema("billing")
    ///     .migrate_only("postgres://migrator@127.0.0.1:5432/prod")
    ///     .await?;
    /// println!("applied {:?}", report.applied);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn migrate_only(self, url: &str) -> Result<MigrationReport, SetupError> {
        let queries = Queries::new(&SchemaName::new(&self.schema)?);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(SetupError::Connect)?;
        let report = setup::migrate(&pool, &queries).await;
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
        let queries = Queries::new(&SchemaName::new(&self.schema)?);
        restore::rebase(url, &queries).await
    }

    /// Connects a pool to `url`, creates or upgrades the schema, and returns
    /// the store.
    pub async fn connect(self, url: &str) -> Result<PgEventStore, SetupError> {
        SchemaName::new(&self.schema)?;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // Appends on these connections never NOTIFY inside their
                    // transaction: the store's notifier sends one after the
                    // commit (see `PgEventStoreBuilder::notify`).
                    sqlx::Executor::execute(&mut *conn, NOTIFY_OFF).await?;
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
        let schema = SchemaName::new(&self.schema)?;
        let queries = Queries::new(&schema);
        if self.migrate {
            setup::migrate(&pool, &queries).await?;
        } else {
            setup::check(&pool, &queries).await?;
        }
        restore::check(&pool, &queries).await?;
        let committers = self.group_committers;
        let notifier = self
            .notify
            .then(|| notifier::start(pool.clone(), schema.channel()));
        let inner = Arc::new_cyclic(|weak| Inner {
            channel: schema.channel(),
            queries,
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
