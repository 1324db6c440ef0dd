//! Rebuilding a read model in the file from position zero: into new
//! tables while the old ones keep serving (then a switch-over in one
//! transaction), or in place; and a projection's progress.

use evently_core::backend::FollowError;
use evently_core::projection::{
    Projection, ProjectionHandle, ProjectionOptions, ProjectionProgress, ProjectionStatus,
};
use evently_core::{EventStore, StoreError};
use sqlx::sqlite::SqliteConnection;

use crate::write::{begin, finish};
use crate::{error, now, SqliteEventStore};

pub use evently_core::projection::RebuildError;

/// What a reset found in the way.
enum Refusal {
    Running,
    Checkpoint(u64),
}

impl SqliteEventStore {
    /// Where a projection stands: its checkpoint, the log's head, and the
    /// events between (positions are gap-free: the difference).
    pub async fn progress(&self, name: &str) -> Result<ProjectionProgress, StoreError> {
        let position = self.checkpoint(name).await?;
        let head = self.head_position().await?;
        let mut progress = ProjectionProgress::new(name);
        progress.position = position;
        progress.head = head.max(position);
        progress.behind = head.saturating_sub(position);
        Ok(progress)
    }

    /// Whether an instance of the projection `name` runs now, in any
    /// process (it holds an unexpired lease).
    pub async fn projection_running(&self, name: &str) -> Result<bool, StoreError> {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM projection_leases WHERE name = ? AND expires_at >= ?",
        )
        .bind(name)
        .bind(now().timestamp_micros())
        .fetch_optional(self.pool())
        .await
        .map_err(error::store)?;
        Ok(held.is_some())
    }

    /// Rebuilds a read model from position zero while the old one keeps
    /// serving queries: runs `projection` (a new name, writing into new
    /// tables the caller created) from the start of the log, reports
    /// progress every 200 ms, and once it has caught up with the head (as
    /// the previous report saw it) runs `switch_sql` in one transaction,
    /// typically `DROP VIEW IF EXISTS accounts; CREATE VIEW accounts AS
    /// SELECT * FROM accounts_v2`. Returns the new projection, running
    /// live; stop the old one afterwards.
    ///
    /// A name that already has a checkpoint past zero is refused with
    /// [`RebuildError::CheckpointExists`], and a name whose projection is
    /// running with [`RebuildError::Running`]; nothing is changed then.
    pub async fn rebuild_projection<P>(
        &self,
        projection: P,
        options: ProjectionOptions,
        switch_sql: &str,
        on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError>
    where
        P: Projection<Sink = SqliteConnection>,
    {
        self.rebuild(projection, options, switch_sql, on_progress, false)
            .await
    }

    /// [`SqliteEventStore::rebuild_projection`] under a name that already
    /// has a checkpoint: drops its checkpoint and its parked events and
    /// replays the log from zero into its tables, which the caller has
    /// emptied. Still refused while a projection of that name runs.
    pub async fn force_rebuild_projection<P>(
        &self,
        projection: P,
        options: ProjectionOptions,
        switch_sql: &str,
        on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError>
    where
        P: Projection<Sink = SqliteConnection>,
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
        P: Projection<Sink = SqliteConnection>,
    {
        let name = projection.name().to_owned();
        self.reset_for_rebuild(&name, force, None).await?;
        let handle = self.run_projection(projection, options);
        self.follow(name, handle, switch_sql, &mut on_progress)
            .await
    }

    /// Rebuilds a projection in place: with it stopped everywhere, runs
    /// `reset_sql` (emptying its tables), drops its checkpoint and its
    /// parked events, in one transaction; then replays the log from the
    /// start until it has caught up with the head, reporting progress.
    /// Returns the running projection's handle.
    pub async fn rebuild_projection_in_place<P>(
        &self,
        projection: P,
        options: ProjectionOptions,
        reset_sql: &str,
        mut on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError>
    where
        P: Projection<Sink = SqliteConnection>,
    {
        let name = projection.name().to_owned();
        let reset = (!reset_sql.trim().is_empty()).then_some(reset_sql);
        self.reset_for_rebuild(&name, true, reset).await?;
        let handle = self.run_projection(projection, options);
        self.follow(name, handle, "", &mut on_progress).await
    }

    /// Rebuilds the view `name` (of type `V`) in place: with the view
    /// stopped everywhere, deletes its documents, its checkpoint and its
    /// parked events in one transaction, then runs it from the start of
    /// the log until it has caught up, reporting progress. Returns the
    /// running view's handle. Readers see the view empty, then filling.
    pub async fn rebuild_view<V: evently_core::view::View>(
        &self,
        name: &str,
        options: ProjectionOptions,
        mut on_progress: impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError> {
        let table = self.create_view_table(name).await?;
        let projection_name = format!("view_{name}");
        self.reset_for_rebuild(
            &projection_name,
            true,
            Some(&format!("DELETE FROM {table}")),
        )
        .await?;
        let views = self.run_view::<V>(name, options).await?;
        self.follow(
            projection_name,
            views.into_projection(),
            "",
            &mut on_progress,
        )
        .await
    }

    /// Waits for a rebuilding projection to catch up, reporting progress,
    /// then runs the switch-over statements in one transaction.
    async fn follow(
        &self,
        name: String,
        handle: ProjectionHandle,
        switch_sql: &str,
        on_progress: &mut impl FnMut(&ProjectionProgress, &ProjectionStatus),
    ) -> Result<ProjectionHandle, RebuildError> {
        let head = self.head_position().await?;
        evently_core::backend::follow_rebuild(&handle, head, || self.progress(&name), on_progress)
            .await
            .map_err(|e| match e {
                FollowError::Stopped(state) => RebuildError::Stopped {
                    name: name.clone(),
                    state,
                },
                FollowError::Store(e) => RebuildError::Store(e),
            })?;
        if switch_sql.trim().is_empty() {
            return Ok(handle);
        }
        let mut conn = self.inner.writer.lock().await;
        begin(&mut conn).await?;
        if let Err(source) = sqlx::Executor::execute(&mut *conn, switch_sql).await {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(RebuildError::Switch {
                name,
                source: Box::new(source),
            });
        }
        finish(&mut conn, Ok(())).await?;
        Ok(handle)
    }

    /// In one write transaction: refuses a running projection (an
    /// unexpired lease) and, unless `force`, one with a checkpoint past
    /// zero; else drops its checkpoint (and, forced, its parked events),
    /// then runs `also`.
    async fn reset_for_rebuild(
        &self,
        name: &str,
        force: bool,
        also: Option<&str>,
    ) -> Result<(), RebuildError> {
        let refused = {
            let mut conn = self.inner.writer.lock().await;
            begin(&mut conn).await?;
            let reset = reset_in(&mut conn, name, force, also).await;
            match reset {
                Ok(None) => finish(&mut conn, Ok(None)).await?,
                Ok(Some(refusal)) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    Some(refusal)
                }
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(RebuildError::Store(error::store(e)));
                }
            }
        };
        match refused {
            None => Ok(()),
            Some(Refusal::Running) => Err(RebuildError::Running {
                name: name.to_owned(),
            }),
            Some(Refusal::Checkpoint(position)) => Err(RebuildError::CheckpointExists {
                name: name.to_owned(),
                position,
            }),
        }
    }
}

/// The statements of a reset, inside the write transaction.
async fn reset_in(
    conn: &mut SqliteConnection,
    name: &str,
    force: bool,
    also: Option<&str>,
) -> Result<Option<Refusal>, sqlx::Error> {
    let running: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM projection_leases WHERE name = ? AND expires_at >= ?")
            .bind(name)
            .bind(now().timestamp_micros())
            .fetch_optional(&mut *conn)
            .await?;
    if running.is_some() {
        return Ok(Some(Refusal::Running));
    }
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projections WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    let position = position.unwrap_or(0) as u64;
    if position > 0 && !force {
        return Ok(Some(Refusal::Checkpoint(position)));
    }
    sqlx::query("DELETE FROM projections WHERE name = ?")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    if force {
        sqlx::query("DELETE FROM parked_events WHERE projection = ?")
            .bind(name)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(sql) = also {
        sqlx::Executor::execute(&mut *conn, sql).await?;
    }
    Ok(None)
}
