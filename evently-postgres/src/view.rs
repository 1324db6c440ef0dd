//! Views on PostgreSQL: each view's documents live in a `jsonb` table the
//! framework creates, `"<schema>".view_<name>` (`key text` in byte order,
//! `doc jsonb`, `position` and `version bigint`, `updated_at`), written by
//! the projection runner in the transaction that moves the view's
//! checkpoint (its projection is named `view_<name>`), so each event is
//! applied exactly once. Reads go through the pool.

use std::sync::Arc;

use evently_core::projection::{HandlerError, ProjectionOptions};
use evently_core::view::{
    StoredDocument, View, ViewError, ViewProjection, ViewReader, ViewSink, ViewStore, Views,
};
use evently_core::StoreError;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{PgPool, Row};

use crate::error::unavailable_or_backend;
use crate::queries::{view_sink, ViewTable};
use crate::PgEventStore;

/// The sink of views on PostgreSQL: documents are read and written through
/// the runner's transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgDocuments;

fn stored(row: &PgRow) -> Result<StoredDocument, sqlx::Error> {
    let text: String = row.try_get("doc")?;
    let doc = serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(StoredDocument {
        doc,
        position: row.try_get::<i64, _>("position")? as u64,
        version: row.try_get::<i64, _>("version")? as u64,
    })
}

/// The table the sink is given is the qualified `"<schema>".view_<name>`
/// (see [`PgEventStore::run_view`]).
impl ViewSink for PgDocuments {
    type Sink = PgConnection;

    async fn load<'a>(
        tx: &'a mut PgConnection,
        table: &'a str,
        key: &'a str,
    ) -> Result<Option<StoredDocument>, HandlerError> {
        let row = sqlx::query(&view_sink::load(table))
            .bind(key)
            .fetch_optional(tx)
            .await?;
        Ok(row.as_ref().map(stored).transpose()?)
    }

    async fn save<'a>(
        tx: &'a mut PgConnection,
        table: &'a str,
        key: &'a str,
        document: StoredDocument,
    ) -> Result<(), HandlerError> {
        sqlx::query(&view_sink::save(table))
            .bind(key)
            .bind(document.doc.to_string())
            .bind(i64::try_from(document.position)?)
            .bind(i64::try_from(document.version)?)
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn delete<'a>(
        tx: &'a mut PgConnection,
        table: &'a str,
        key: &'a str,
    ) -> Result<(), HandlerError> {
        sqlx::query(&view_sink::delete(table))
            .bind(key)
            .execute(tx)
            .await?;
        Ok(())
    }
}

struct PgReader {
    pool: PgPool,
    /// Reads one document (`view_sink::load`).
    get: String,
    /// Reads a page of documents (`ViewTable::list`).
    list: String,
}

impl ViewReader for PgReader {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDocument>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(&self.get)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable_or_backend)?;
            row.as_ref()
                .map(stored)
                .transpose()
                .map_err(unavailable_or_backend)
        })
    }

    fn list<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, StoredDocument)>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(&self.list)
                .bind(after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable_or_backend)?;
            rows.iter()
                .map(|row| Ok((row.try_get("key")?, stored(row)?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(unavailable_or_backend)
        })
    }
}

impl PgEventStore {
    /// Starts the view `name` of type `V`: creates its table
    /// `"<schema>".view_<name>` if it does not exist, and runs its
    /// projection `view_<name>` from its checkpoint. A name other than 1 to
    /// 58 characters of `a`-`z`, `0`-`9`, `_` is refused with
    /// [`ViewError::InvalidName`].
    ///
    /// Read-your-writes from another process:
    /// `store.wait_for(&["view_<name>"], position, timeout)`.
    pub async fn run_view<V: View>(
        &self,
        name: &str,
        options: ProjectionOptions,
    ) -> Result<Views<V>, ViewError> {
        self.start_view(name, |projection| self.run_projection(projection, options))
            .await
    }

    /// [`PgEventStore::run_view`] on another source: a stream another
    /// service publishes (`evently-nats`'s `JetStreamSource`), say. The
    /// documents and the checkpoint (the source's position) live in this
    /// store's schema, written in one transaction.
    pub async fn run_view_from<V: View, Src: evently_core::EventSource>(
        &self,
        source: Src,
        name: &str,
        options: ProjectionOptions,
    ) -> Result<Views<V>, ViewError> {
        self.start_view(name, |projection| {
            self.run_projection_from(source, projection, options)
        })
        .await
    }

    /// Creates the view's table if needed and starts its projection with
    /// `run`.
    async fn start_view<V: View>(
        &self,
        name: &str,
        run: impl FnOnce(ViewProjection<V, PgDocuments>) -> evently_core::projection::ProjectionHandle,
    ) -> Result<Views<V>, ViewError> {
        let table = ViewTable::new(&self.inner.queries.schema, name)?;
        self.create_view_table(&table).await?;
        let projection = ViewProjection::<V, PgDocuments>::with_table(name, table.as_str());
        let handle = run(projection);
        let reader = PgReader {
            pool: self.pool().clone(),
            get: view_sink::load(table.as_str()),
            list: table.list(),
        };
        Ok(Views::new(name, handle, Arc::new(reader)))
    }

    /// Creates a view's table if it does not exist.
    pub(crate) async fn create_view_table(&self, table: &ViewTable) -> Result<(), StoreError> {
        sqlx::query(&table.create())
            .execute(self.pool())
            .await
            .map(|_| ())
            .or_else(|e| match &e {
                // Another process created it at the same moment.
                sqlx::Error::Database(db)
                    if matches!(db.code().as_deref(), Some("23505" | "42P07")) =>
                {
                    Ok(())
                }
                _ => Err(unavailable_or_backend(e)),
            })
    }

    /// Applies a parked event of the view `name` again with the view type
    /// `V` (fixed since), and removes it from the parked events, in one
    /// transaction ([`PgEventStore::retry_parked`]). Returns `false` when
    /// the event is not (or no longer) parked.
    pub async fn retry_parked_view<V: View>(
        &self,
        name: &str,
        position: u64,
    ) -> Result<bool, ViewError> {
        let table = ViewTable::new(&self.inner.queries.schema, name)?;
        let projection = ViewProjection::<V, PgDocuments>::with_table(name, table.as_str());
        Ok(self.retry_parked(&projection, position).await?)
    }
}

impl ViewStore for PgEventStore {
    async fn run_view<V: View>(
        &self,
        name: &str,
        options: ProjectionOptions,
    ) -> Result<Views<V>, ViewError> {
        PgEventStore::run_view(self, name, options).await
    }
}
