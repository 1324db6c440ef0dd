//! Rebuilding a projection's read model from position zero while the old
//! one keeps serving, and switching over in one transaction.

use evently_core::projection::{Projection, ProjectionHandle, ProjectionOptions};
use sqlx::postgres::PgConnection;
use sqlx::Connection;

use crate::error::unavailable_or_backend;
use crate::projection::lock_key;
use crate::queries::{ADVISORY_UNLOCK, TRY_ADVISORY_LOCK};
use crate::PgEventStore;
use evently_core::projection::{ProjectionProgress, ProjectionStatus};

pub use evently_core::projection::RebuildError;

impl PgEventStore {
    /// Rebuilds a read model from position zero while the old one keeps
    /// serving queries: runs `projection` (a new name, writing into new
    /// tables the caller created) from the start of the log, reports
    /// progress every 200 ms, and once it has caught up with the head (as
    /// the previous report saw it: a log that keeps growing cannot keep the
    /// rebuild from finishing) runs `switch_sql` in one transaction — typically `CREATE OR REPLACE VIEW
    /// accounts AS SELECT * FROM accounts_v2`, so queries read the new
    /// tables from that commit on. Returns the new projection, running
    /// live; stop the old one afterwards.
    ///
    /// A name that already has a checkpoint past zero is refused with
    /// [`RebuildError::CheckpointExists`] (a live projection's name, passed
    /// by mistake, would get the whole log replayed into its tables), and a
    /// name whose projection is running with [`RebuildError::Running`];
    /// nothing is changed then.
    pub async fn rebuild_projection<P>(
        &self,
        projection: P,
        options: ProjectionOptions,
        switch_sql: &str,
        on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError>
    where
        P: Projection<Sink = PgConnection>,
    {
        self.rebuild(projection, options, switch_sql, on_progress, false)
            .await
    }

    /// [`PgEventStore::rebuild_projection`] under a name that already has a
    /// checkpoint: drops its checkpoint and its parked events and replays
    /// the log from zero into its tables, which the caller has emptied (or
    /// whose handlers overwrite). Still refused with
    /// [`RebuildError::Running`] while a projection of that name runs.
    pub async fn force_rebuild_projection<P>(
        &self,
        projection: P,
        options: ProjectionOptions,
        switch_sql: &str,
        on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError>
    where
        P: Projection<Sink = PgConnection>,
    {
        self.rebuild(projection, options, switch_sql, on_progress, true)
            .await
    }

    async fn rebuild<P>(
        &self,
        projection: P,
        options: ProjectionOptions,
        switch_sql: &str,
        mut on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
        force: bool,
    ) -> Result<ProjectionHandle, RebuildError>
    where
        P: Projection<Sink = PgConnection>,
    {
        let name = projection.name().to_owned();
        self.reset_for_rebuild(&name, force, None).await?;
        let handle = self.run_projection(projection, options);
        self.follow_rebuild(name, handle, switch_sql, &mut on_progress)
            .await
    }

    /// Rebuilds a projection in place: with it stopped everywhere (its
    /// lock free), runs `reset_sql` (emptying its tables: one statement),
    /// drops its checkpoint and its parked events, in one transaction; then
    /// replays the log from the start until it has caught up with the head
    /// (which may grow meanwhile), reporting progress. Returns the running
    /// projection's handle.
    pub async fn rebuild_projection_in_place<P>(
        &self,
        projection: P,
        options: ProjectionOptions,
        reset_sql: &str,
        mut on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError>
    where
        P: Projection<Sink = PgConnection>,
    {
        let name = projection.name().to_owned();
        let reset = (!reset_sql.trim().is_empty()).then_some(reset_sql);
        self.reset_for_rebuild(&name, true, reset).await?;
        let handle = self.run_projection(projection, options);
        self.follow_rebuild(name, handle, "", &mut on_progress)
            .await
    }

    /// Rebuilds the view `name` (of type `V`) in place: with the view
    /// stopped everywhere (its lock free), deletes its documents, its
    /// checkpoint and its parked events in one transaction, then runs it
    /// from the start of the log until it has caught up with the head
    /// (which may grow meanwhile), reporting progress. Returns the running
    /// view's handle: stop it, or keep it running. Readers see the view
    /// empty, then filling, during the rebuild.
    pub async fn rebuild_view<V: evently_core::view::View>(
        &self,
        name: &str,
        options: ProjectionOptions,
        mut on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError> {
        let table = crate::queries::ViewTable::new(&self.inner.queries.schema, name)?;
        self.create_view_table(&table).await?;
        let projection_name = format!("view_{name}");
        self.reset_for_rebuild(
            &projection_name,
            true,
            Some(&format!("DELETE FROM {}", table.as_str())),
        )
        .await?;
        let views = self.run_view::<V>(name, options).await?;
        let handle = views.into_projection();
        self.follow_rebuild(projection_name, handle, "", &mut on_progress)
            .await
    }

    /// Waits for a rebuilding projection to catch up, reporting progress,
    /// then runs the switch-over statements.
    async fn follow_rebuild(
        &self,
        name: String,
        handle: ProjectionHandle,
        switch_sql: &str,
        on_progress: &mut impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError> {
        let head = evently_core::EventStore::head_position(self).await?;
        evently_core::backend::follow_rebuild(&handle, head, || self.progress(&name), on_progress)
            .await
            .map_err(|e| match e {
                evently_core::backend::FollowError::Stopped(state) => RebuildError::Stopped {
                    name: name.clone(),
                    state,
                },
                evently_core::backend::FollowError::Store(e) => RebuildError::Store(e),
            })?;
        let mut tx = self.pool().begin().await.map_err(unavailable_or_backend)?;
        sqlx::raw_sql(switch_sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| RebuildError::Switch {
                name: name.clone(),
                source: Box::new(source),
            })?;
        tx.commit().await.map_err(unavailable_or_backend)?;
        Ok(handle)
    }

    /// Checks that no projection of this name runs (holding its lock
    /// while checking) and that it has no checkpoint past zero unless
    /// `force`; then drops its checkpoint (and, forced, its parked events).
    async fn reset_for_rebuild(
        &self,
        name: &str,
        force: bool,
        also: Option<&str>,
    ) -> Result<(), RebuildError> {
        let q = &self.inner.queries;
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(unavailable_or_backend)?;
        let key = lock_key(self, name);
        let locked: bool = sqlx::query_scalar(TRY_ADVISORY_LOCK)
            .bind(&key)
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable_or_backend)?;
        if !locked {
            return Err(RebuildError::Running {
                name: name.to_owned(),
            });
        }
        let reset = reset_in(&mut conn, q, name, force, also).await;
        let unlocked = sqlx::query(ADVISORY_UNLOCK)
            .bind(&key)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // A connection that may still hold the lock must not go back
            // to the pool.
            conn.detach();
        }
        match reset.map_err(unavailable_or_backend)? {
            Some(position) => Err(RebuildError::CheckpointExists {
                name: name.to_owned(),
                position,
            }),
            None => Ok(()),
        }
    }
}

/// Drops a projection's checkpoint (and, when forced, its parked events,
/// then runs `also`) in one transaction; returns the checkpoint it kept
/// when not forced and past zero. A function of its own rather than an
/// async block, so the futures that await it stay `Send`.
async fn reset_in(
    conn: &mut PgConnection,
    q: &crate::queries::Queries,
    name: &str,
    force: bool,
    also: Option<&str>,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let position: Option<i64> = sqlx::query_scalar(&q.delete_checkpoint)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let position = position.unwrap_or(0) as u64;
    if position > 0 && !force {
        // Dropping the transaction rolls the DELETE back.
        return Ok(Some(position));
    }
    if force {
        sqlx::query(&q.delete_parked_of)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(sql) = also {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(None)
}
