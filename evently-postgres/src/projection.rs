//! Projections into PostgreSQL read models: the handlers write through the
//! runner's transaction, and the checkpoint moves in that same transaction,
//! so every event is applied exactly once, whatever crashes. One instance of
//! a projection runs at a time: it holds a session advisory lock on a
//! connection of its own, and another instance (in this process or
//! another) takes over when that connection closes.

use std::time::{Duration, Instant};

use evently_core::backend::{BatchError, ProjectionTarget};
use evently_core::projection::{
    run_projection, ParkedEvent, Projection, ProjectionHandle, ProjectionOptions,
    ProjectionProgress,
};
use evently_core::{Payload, RecordedEvent, StoreError};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use crate::error::{is_transient, unavailable_or_backend};
use crate::queries::TRY_ADVISORY_LOCK;
use crate::PgEventStore;

impl PgEventStore {
    /// Starts a projection whose handlers write to this database (its sink
    /// is the runner's transaction). Its checkpoint lives in the
    /// `projections` table under the projection's name.
    ///
    /// ```no_run
    /// # use evently_core::projection::{HandlerError, Projection, ProjectionOptions};
    /// # use evently_core::RecordedEvent;
    /// # use evently_postgres::sqlx::PgConnection;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, evently_core::Event)]
    /// # enum AccountEvent { Deposited { amount: i64 } }
    /// struct Balances;
    ///
    /// impl Projection for Balances {
    ///     type Event = AccountEvent;
    ///     type Sink = PgConnection;
    ///     fn name(&self) -> &str { "balances" }
    ///     async fn apply(&self, tx: &mut PgConnection, e: &RecordedEvent<AccountEvent>) -> Result<(), HandlerError> {
    ///         let AccountEvent::Deposited { amount } = &e.data;
    ///         sqlx::query("INSERT INTO balances (account, balance) VALUES ($1, $2)
    ///                      ON CONFLICT (account) DO UPDATE SET balance = balances.balance + $2")
    ///             .bind(e.stream_id.as_str()).bind(amount).execute(tx).await?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # async fn run(store: evently_postgres::PgEventStore) {
    /// let handle = store.run_projection(Balances, ProjectionOptions::default());
    /// println!("{:?}", handle.status());
    /// # }
    /// ```
    pub fn run_projection<P>(&self, projection: P, options: ProjectionOptions) -> ProjectionHandle
    where
        P: Projection<Sink = PgConnection>,
    {
        let target = PgProjectionTarget {
            store: self.clone(),
            own_log: true,
            lock: None,
            lock_checked: Instant::now(),
        };
        run_projection(self.clone(), projection, target, options)
    }

    /// Runs a projection into this database that reads its events from
    /// `source` instead of this store's log: another service's stream
    /// consumed over NATS JetStream, say. Everything else is as
    /// [`PgEventStore::run_projection`]: one instance at a time, the
    /// checkpoint (the source's position) moved in the read model's own
    /// transaction, so a redelivered event is applied once.
    pub fn run_projection_from<P, Src>(
        &self,
        source: Src,
        projection: P,
        options: ProjectionOptions,
    ) -> ProjectionHandle
    where
        P: Projection<Sink = PgConnection>,
        Src: evently_core::EventSource,
    {
        let target = PgProjectionTarget {
            store: self.clone(),
            own_log: false,
            lock: None,
            lock_checked: Instant::now(),
        };
        run_projection(source, projection, target, options)
    }
}

impl evently_core::ProjectionStore for PgEventStore {
    type Sink = PgConnection;

    fn run_projection_on<P, Src>(
        &self,
        source: Src,
        projection: P,
        options: ProjectionOptions,
    ) -> ProjectionHandle
    where
        P: Projection<Sink = PgConnection>,
        Src: evently_core::EventSource,
    {
        self.run_projection_from(source, projection, options)
    }
}

impl PgEventStore {
    /// The checkpoint of a projection (0 if it never ran).
    pub async fn checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let position: Option<i64> = sqlx::query_scalar(&self.inner.queries.projection_position)
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(unavailable_or_backend)?;
        Ok(position.unwrap_or(0) as u64)
    }

    /// Waits until the named projections (running in any process) have
    /// processed `position`: read-your-writes for an API that answers from a
    /// read model after a command. In the process that runs a projection,
    /// its handle's `wait_for` does the same without polling.
    pub async fn wait_for(
        &self,
        names: &[&str],
        position: u64,
        timeout: Duration,
    ) -> Result<(), evently_core::projection::WaitError> {
        let started = Instant::now();
        for name in names {
            loop {
                let reached = self.checkpoint(name).await.unwrap_or(0);
                if reached >= position {
                    break;
                }
                if started.elapsed() >= timeout {
                    return Err(evently_core::projection::WaitError::Timeout {
                        name: (*name).to_owned(),
                        wanted: position,
                        reached,
                        timeout,
                    });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// How far a projection's checkpoint is behind the head of the log.
    pub async fn progress(&self, name: &str) -> Result<ProjectionProgress, StoreError> {
        let position = self.checkpoint(name).await?;
        let row = sqlx::query(&self.inner.queries.projection_progress)
            .bind(position as i64)
            .fetch_one(self.pool())
            .await
            .map_err(unavailable_or_backend)?;
        let head: i64 = row.try_get(0).map_err(unavailable_or_backend)?;
        let behind: i64 = row.try_get(1).map_err(unavailable_or_backend)?;
        let mut progress = ProjectionProgress::new(name);
        progress.position = position;
        progress.head = (head as u64).max(position);
        progress.behind = behind as u64;
        Ok(progress)
    }

    /// Whether an instance of the projection `name` is running now,
    /// anywhere (some session holds its lock), without taking the lock.
    pub async fn projection_running(&self, name: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar(crate::queries::ADVISORY_LOCK_HELD)
            .bind(lock_key(self, name))
            .fetch_one(self.pool())
            .await
            .map_err(unavailable_or_backend)
    }

    /// The parked events of a projection, in log order.
    pub async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        let rows = sqlx::query(&self.inner.queries.parked_events)
            .bind(projection)
            .fetch_all(self.pool())
            .await
            .map_err(unavailable_or_backend)?;
        rows.iter()
            .map(|r| {
                let mut parked = ParkedEvent::default();
                parked.position = r.try_get::<i64, _>(0)? as u64;
                parked.event_id = r.try_get(1)?;
                parked.stream_id = r.try_get(2)?;
                parked.stream_version = r.try_get::<i64, _>(3)? as u64;
                parked.event_type = r.try_get(4)?;
                parked.error = r.try_get(5)?;
                Ok(parked)
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable_or_backend)
    }

    /// Applies a parked event again with `projection`'s handler and, if it
    /// succeeds, removes it from the parked list, in one transaction.
    /// Returns `false` when the event is not (or no longer) parked.
    ///
    /// The parked row is deleted first, in the transaction that applies the
    /// event: a concurrent retry of the same event waits for that
    /// transaction, then finds the row gone (or back, if the handler failed
    /// and it rolled back), so the event is applied once.
    pub async fn retry_parked<P>(&self, projection: &P, position: u64) -> Result<bool, StoreError>
    where
        P: Projection<Sink = PgConnection>,
    {
        let mut tx = self.pool().begin().await.map_err(unavailable_or_backend)?;
        let removed = sqlx::query(&self.inner.queries.delete_parked)
            .bind(projection.name())
            .bind(position as i64)
            .execute(&mut *tx)
            .await
            .map_err(unavailable_or_backend)?;
        if removed.rows_affected() != 1 {
            return Ok(false);
        }
        let row = sqlx::query(&self.inner.queries.read_event_at)
            .bind(position as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable_or_backend)?;
        let Some(row) = row else {
            return Ok(false);
        };
        let raw = crate::read::recorded_from_row(&row)?;
        let events = evently_core::backend::decode_handled::<P::Event>(projection.handles(), &raw)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        projection
            .apply_batch(&mut tx, &events)
            .await
            .map_err(|(_, error)| StoreError::Backend(error))?;
        tx.commit().await.map_err(unavailable_or_backend)?;
        Ok(true)
    }
}

/// The key of a projection's advisory lock (the lock of its instance).
pub(crate) fn lock_key(store: &PgEventStore, name: &str) -> String {
    format!("es-projection {} {}", store.schema(), name)
}

struct PgProjectionTarget {
    store: PgEventStore,
    /// Whether the events come from this store's own log (else from
    /// another source, whose unreadable rows are not in `events`).
    own_log: bool,
    /// The connection holding the advisory lock: the lease.
    lock: Option<PgConnection>,
    lock_checked: Instant,
}

impl PgProjectionTarget {
    /// Parks one event: its parked row and the checkpoint moved past it,
    /// in one transaction.
    async fn park_in_tx(
        &self,
        park: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        name: &str,
        from: u64,
        position: u64,
    ) -> Result<(), BatchError> {
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(unavailable_or_backend)?;
        park.execute(&mut *tx)
            .await
            .map_err(unavailable_or_backend)?;
        self.move_checkpoint(&mut tx, name, from, position).await?;
        tx.commit().await.map_err(unavailable_or_backend)?;
        Ok(())
    }

    /// Moves the checkpoint from `from` to `to` in `tx`, only if it is
    /// still at `from`: another instance that moved it fences this one out.
    async fn move_checkpoint(
        &self,
        tx: &mut PgConnection,
        name: &str,
        from: u64,
        to: u64,
    ) -> Result<(), BatchError> {
        let moved = sqlx::query(&self.store.inner.queries.move_checkpoint)
            .bind(name)
            .bind(from as i64)
            .bind(to as i64)
            .execute(tx)
            .await
            .map_err(unavailable_or_backend)?;
        if moved.rows_affected() != 1 {
            return Err(BatchError::FencedOut);
        }
        Ok(())
    }

    /// Checks, at most once a second, that the lock connection still lives:
    /// when it died, the lock is gone and another instance may run.
    async fn still_leader(&mut self) -> bool {
        if self.lock_checked.elapsed() < Duration::from_secs(1) {
            return self.lock.is_some();
        }
        self.lock_checked = Instant::now();
        let alive = match &mut self.lock {
            Some(conn) => conn.ping().await.is_ok(),
            None => false,
        };
        if !alive {
            self.lock = None;
        }
        alive
    }
}

impl<P> ProjectionTarget<P> for PgProjectionTarget
where
    P: Projection<Sink = PgConnection>,
{
    async fn acquire(&mut self, projection: &P) -> Result<(), StoreError> {
        if self.still_leader().await {
            return Ok(());
        }
        let key = lock_key(&self.store, projection.name());
        // One connection tries the lock until it gets it, and then holds it:
        // a standby does not open a connection per attempt.
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(unavailable_or_backend)?
            .detach();
        loop {
            let locked: bool = sqlx::query_scalar(TRY_ADVISORY_LOCK)
                .bind(&key)
                .fetch_one(&mut conn)
                .await
                .map_err(unavailable_or_backend)?;
            if locked {
                self.lock = Some(conn);
                self.lock_checked = Instant::now();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn release(&mut self, projection: &P) {
        // Unlocked on the server before this returns: dropping the
        // connection alone frees the lock only when the server notices.
        if let Some(mut conn) = self.lock.take() {
            let key = lock_key(&self.store, projection.name());
            if let Err(e) = sqlx::query(crate::queries::ADVISORY_UNLOCK)
                .bind(&key)
                .execute(&mut conn)
                .await
            {
                tracing::debug!(error = %e, "cannot unlock a projection's lease; closing its connection frees it");
            }
            let _ = conn.close().await;
        }
    }

    async fn checkpoint(&mut self, projection: &P) -> Result<u64, StoreError> {
        sqlx::query(&self.store.inner.queries.insert_checkpoint)
            .bind(projection.name())
            .execute(self.store.pool())
            .await
            .map_err(unavailable_or_backend)?;
        self.store.checkpoint(projection.name()).await
    }

    async fn apply_batch(
        &mut self,
        projection: &P,
        events: &[RecordedEvent<P::Event>],
        from: u64,
        to: u64,
    ) -> Result<(), BatchError> {
        if !self.still_leader().await {
            return Err(BatchError::FencedOut);
        }
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(unavailable_or_backend)?;
        if let Err((index, error)) = projection.apply_batch(&mut tx, events).await {
            // Dropping the transaction rolls it back. A lost connection or a
            // deadlock is the database's trouble, not the event's: the
            // runner starts again from the checkpoint, without counting it
            // against the event.
            if let Some(db) = error.downcast_ref::<sqlx::Error>() {
                if is_transient(db) {
                    return Err(BatchError::Store(StoreError::unavailable(db.to_string())));
                }
            }
            return Err(BatchError::Handler { index, error });
        }
        self.move_checkpoint(&mut tx, projection.name(), from, to)
            .await?;
        tx.commit().await.map_err(unavailable_or_backend)?;
        Ok(())
    }

    async fn park(
        &mut self,
        projection: &P,
        event: &RecordedEvent<Payload>,
        error: &str,
        from: u64,
    ) -> Result<(), BatchError> {
        let park = sqlx::query(&self.store.inner.queries.park)
            .bind(projection.name())
            .bind(event.global_position as i64)
            .bind(event.event_id)
            .bind(event.stream_id.as_str())
            .bind(event.stream_version as i64)
            .bind(&*event.event_type)
            .bind(error);
        self.park_in_tx(park, projection.name(), from, event.global_position)
            .await
    }

    async fn park_unreadable(
        &mut self,
        projection: &P,
        row: &evently_core::backend::UnreadableEvent,
        error: &str,
        from: u64,
    ) -> Result<(), BatchError> {
        if !self.own_log {
            // Not a row of this store's `events`: park what the source
            // could read of it.
            let placeholder = evently_core::backend::unreadable_placeholder(row);
            return self.park(projection, &placeholder, error, from).await;
        }
        // The row's identity columns read fine (only the rest of it does
        // not): the statement copies them from the events table.
        let park = sqlx::query(&self.store.inner.queries.park_unreadable)
            .bind(projection.name())
            .bind(row.global_position as i64)
            .bind(error);
        self.park_in_tx(park, projection.name(), from, row.global_position)
            .await
    }
}

/// A projection applied inside the append's transaction.
pub(crate) trait InlineProjection: Send + Sync {
    fn name(&self) -> &str;

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> futures::future::BoxFuture<'a, Result<(), evently_core::projection::HandlerError>>;
}

pub(crate) struct Inline<P>(pub(crate) P);

impl<P> InlineProjection for Inline<P>
where
    P: Projection<Sink = PgConnection>,
{
    fn name(&self) -> &str {
        self.0.name()
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> futures::future::BoxFuture<'a, Result<(), evently_core::projection::HandlerError>> {
        Box::pin(async move {
            let handles = self.0.handles();
            for event in events {
                for decoded in evently_core::backend::decode_handled::<P::Event>(handles, event)? {
                    self.0.apply(tx, &decoded).await?;
                }
            }
            Ok(())
        })
    }
}
