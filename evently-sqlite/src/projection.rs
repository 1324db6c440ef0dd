//! Projections on SQLite: the checkpoint moves in the transaction that
//! writes the read model (tables in the same file), so each event is
//! applied exactly once; one instance runs at a time under a lease.

use std::time::Duration;

use evently_core::backend::{BatchError, ProjectionTarget};
use evently_core::projection::{ParkedEvent, Projection, ProjectionHandle, ProjectionOptions};
use evently_core::{EventSource, Payload, RecordedEvent, StoreError};
use sqlx::sqlite::SqliteConnection;
use sqlx::{ConnectOptions, Row};

use crate::error;
use crate::write::{begin, finish};
use crate::{id_text, now, SqliteEventStore};

tokio::task_local! {
    /// Set while a projection's handlers run inside a batch: the batch
    /// holds the file's one writer, so an append from there would wait for
    /// itself.
    pub(crate) static IN_BATCH: ();
}

/// How long a lease lasts without a batch renewing it.
const LEASE: Duration = Duration::from_secs(10);

impl evently_core::ProjectionStore for SqliteEventStore {
    type Sink = SqliteConnection;

    fn run_projection_on<P, Src>(
        &self,
        source: Src,
        projection: P,
        options: ProjectionOptions,
    ) -> ProjectionHandle
    where
        P: Projection<Sink = SqliteConnection>,
        Src: EventSource,
    {
        let target = SqliteProjectionTarget {
            store: self.clone(),
            holder: uuid::Uuid::now_v7().to_string(),
            detached: None,
        };
        evently_core::projection::run_projection(source, projection, target, options)
    }
}

impl SqliteEventStore {
    /// Runs `projection` on this store's log from its checkpoint: its
    /// handlers write into the file through the runner's transaction
    /// (`Sink = SqliteConnection`), which also moves the checkpoint.
    pub fn run_projection<P>(&self, projection: P, options: ProjectionOptions) -> ProjectionHandle
    where
        P: Projection<Sink = SqliteConnection>,
    {
        evently_core::ProjectionStore::run_projection_on(self, self.clone(), projection, options)
    }

    /// A projection's checkpoint (0 before its first event).
    pub async fn checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM projections WHERE name = ?")
                .bind(name)
                .fetch_optional(self.pool())
                .await
                .map_err(error::store)?;
        Ok(position.unwrap_or(0) as u64)
    }

    /// A projection's parked events, in log order.
    pub async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, event_id, stream_id, stream_version, event_type, error FROM parked_events \
             WHERE projection = ? ORDER BY position",
        )
        .bind(projection)
        .fetch_all(self.pool())
        .await
        .map_err(error::store)?;
        rows.iter()
            .map(|r| {
                let mut parked = ParkedEvent::default();
                parked.position = r.try_get::<i64, _>(0)? as u64;
                parked.event_id = r.try_get::<String, _>(1)?.parse().unwrap_or_default();
                parked.stream_id = r.try_get(2)?;
                parked.stream_version = r.try_get::<i64, _>(3)? as u64;
                parked.event_type = r.try_get(4)?;
                parked.error = r.try_get(5)?;
                Ok(parked)
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(error::store)
    }
}

struct SqliteProjectionTarget {
    store: SqliteEventStore,
    /// This instance's name on the lease.
    holder: String,
    /// The sink of a projection that does not use it (opened at its first
    /// batch).
    detached: Option<SqliteConnection>,
}

/// A runner dropped without `release` (aborted in this process) gives its
/// lease back at once; a process that dies holds it until it expires.
impl Drop for SqliteProjectionTarget {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, holder) = (self.store.clone(), std::mem::take(&mut self.holder));
        runtime.spawn(async move {
            let mut conn = store.inner.writer.lock().await;
            if begin(&mut conn).await.is_ok() {
                let deleted = sqlx::query("DELETE FROM projection_leases WHERE holder = ?")
                    .bind(&holder)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())
                    .map_err(error::store);
                let _ = finish(&mut conn, deleted).await;
            }
        });
    }
}

/// Takes or renews the lease if it is free, expired or ours; whether we
/// hold it.
async fn lease(conn: &mut SqliteConnection, name: &str, holder: &str) -> Result<bool, sqlx::Error> {
    let now = now().timestamp_micros();
    let taken = sqlx::query(
        "INSERT INTO projection_leases (name, holder, expires_at) VALUES (?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE projection_leases.holder = excluded.holder OR projection_leases.expires_at < ?",
    )
    .bind(name)
    .bind(holder)
    .bind(now + LEASE.as_micros() as i64)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Moves the checkpoint from `from` to `to`, only if it is still at `from`.
async fn move_checkpoint(
    conn: &mut SqliteConnection,
    name: &str,
    from: u64,
    to: u64,
) -> Result<(), BatchError> {
    let moved = sqlx::query(
        "UPDATE projections SET position = ?, updated_at = ? WHERE name = ? AND position = ?",
    )
    .bind(to as i64)
    .bind(now().timestamp_micros())
    .bind(name)
    .bind(from as i64)
    .execute(&mut *conn)
    .await
    .map_err(error::store)?;
    if moved.rows_affected() != 1 {
        return Err(BatchError::FencedOut);
    }
    Ok(())
}

/// Commits on `Ok`, rolls back on `Err`.
async fn end<T>(
    conn: &mut SqliteConnection,
    result: Result<T, BatchError>,
) -> Result<T, BatchError> {
    match result {
        Ok(value) => finish(conn, Ok(value)).await.map_err(BatchError::Store),
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// Fenced out unless this instance holds the lease (renewed here).
async fn hold(conn: &mut SqliteConnection, name: &str, holder: &str) -> Result<(), BatchError> {
    if lease(conn, name, holder).await.map_err(error::store)? {
        Ok(())
    } else {
        Err(BatchError::FencedOut)
    }
}

async fn apply_in<P: Projection<Sink = SqliteConnection>>(
    conn: &mut SqliteConnection,
    projection: &P,
    holder: &str,
    events: &[RecordedEvent<P::Event>],
    from: u64,
    to: u64,
) -> Result<(), BatchError> {
    hold(conn, projection.name(), holder).await?;
    IN_BATCH
        .scope((), projection.apply_batch(&mut *conn, events))
        .await
        .map_err(|(index, error)| BatchError::Handler { index, error })?;
    move_checkpoint(conn, projection.name(), from, to).await
}

async fn park_in(
    conn: &mut SqliteConnection,
    name: &str,
    holder: &str,
    event: &RecordedEvent<Payload>,
    error: &str,
    from: u64,
) -> Result<(), BatchError> {
    hold(conn, name, holder).await?;
    sqlx::query(
        "INSERT OR REPLACE INTO parked_events (projection, position, event_id, stream_id, stream_version, \
         event_type, error, parked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(name)
    .bind(event.global_position as i64)
    .bind(id_text(event.event_id))
    .bind(event.stream_id.as_str())
    .bind(event.stream_version as i64)
    .bind(&*event.event_type)
    .bind(error)
    .bind(now().timestamp_micros())
    .execute(&mut *conn)
    .await
    .map_err(error::store)?;
    move_checkpoint(conn, name, from, event.global_position).await
}

impl SqliteProjectionTarget {
    /// A batch of a projection that does not write through its sink (a
    /// process manager's runners, which append through the store): its
    /// handlers run without the writer (their sink is a read-only
    /// connection of the runner's own: a write through it fails), then the
    /// checkpoint moves in a transaction of its own.
    async fn apply_outside<P: Projection<Sink = SqliteConnection>>(
        &mut self,
        projection: &P,
        events: &[RecordedEvent<P::Event>],
        from: u64,
        to: u64,
    ) -> Result<(), BatchError> {
        let sink = match &mut self.detached {
            Some(sink) => sink,
            None => self.detached.insert(
                self.store
                    .inner
                    .options
                    .clone()
                    .read_only(true)
                    .connect()
                    .await
                    .map_err(error::store)?,
            ),
        };
        projection
            .apply_batch(sink, events)
            .await
            .map_err(|(index, error)| BatchError::Handler { index, error })?;
        let mut conn = self.store.inner.writer.lock().await;
        begin(&mut conn).await?;
        let result = async {
            hold(&mut conn, projection.name(), &self.holder).await?;
            move_checkpoint(&mut conn, projection.name(), from, to).await
        }
        .await;
        end(&mut conn, result).await
    }
}

impl<P> ProjectionTarget<P> for SqliteProjectionTarget
where
    P: Projection<Sink = SqliteConnection>,
{
    async fn acquire(&mut self, projection: &P) -> Result<(), StoreError> {
        loop {
            let held = {
                let mut conn = self.store.inner.writer.lock().await;
                begin(&mut conn).await?;
                let held = lease(&mut conn, projection.name(), &self.holder)
                    .await
                    .map_err(error::store);
                finish(&mut conn, held).await?
            };
            if held {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn release(&mut self, projection: &P) {
        let mut conn = self.store.inner.writer.lock().await;
        let _ = sqlx::query("DELETE FROM projection_leases WHERE name = ? AND holder = ?")
            .bind(projection.name())
            .bind(&self.holder)
            .execute(&mut *conn)
            .await;
    }

    async fn checkpoint(&mut self, projection: &P) -> Result<u64, StoreError> {
        {
            let mut conn = self.store.inner.writer.lock().await;
            sqlx::query(
                "INSERT OR IGNORE INTO projections (name, position, updated_at) VALUES (?, 0, ?)",
            )
            .bind(projection.name())
            .bind(now().timestamp_micros())
            .execute(&mut *conn)
            .await
            .map_err(error::store)?;
        }
        self.store.checkpoint(projection.name()).await
    }

    async fn apply_batch(
        &mut self,
        projection: &P,
        events: &[RecordedEvent<P::Event>],
        from: u64,
        to: u64,
    ) -> Result<(), BatchError> {
        if !projection.uses_sink() {
            return self.apply_outside(projection, events, from, to).await;
        }
        let mut conn = self.store.inner.writer.lock().await;
        begin(&mut conn).await?;
        let result = apply_in(&mut conn, projection, &self.holder, events, from, to).await;
        end(&mut conn, result).await
    }

    async fn park(
        &mut self,
        projection: &P,
        event: &RecordedEvent<Payload>,
        error: &str,
        from: u64,
    ) -> Result<(), BatchError> {
        let mut conn = self.store.inner.writer.lock().await;
        begin(&mut conn).await?;
        let result = park_in(
            &mut conn,
            projection.name(),
            &self.holder,
            event,
            error,
            from,
        )
        .await;
        end(&mut conn, result).await
    }
}
