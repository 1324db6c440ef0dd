//! Views on SQLite: each view's documents live in a table the store
//! creates in the file, `view_<name>` (`key` in byte order, `doc` as JSON
//! text, `position`, `version`), written by the projection runner in the
//! transaction that moves the view's checkpoint (its projection is named
//! `view_<name>`).

use std::sync::Arc;

use evently_core::projection::{HandlerError, ProjectionOptions};
use evently_core::view::{
    StoredDocument, View, ViewError, ViewProjection, ViewReader, ViewSink, ViewStore, Views,
};
use evently_core::StoreError;
use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::Row;

use crate::error;
use crate::SqliteEventStore;

/// The sink of views on SQLite: documents are read and written through
/// the runner's transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteDocuments;

fn stored(row: &SqliteRow) -> Result<StoredDocument, sqlx::Error> {
    let text: String = row.try_get("doc")?;
    let doc = serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(StoredDocument {
        doc,
        position: row.try_get::<i64, _>("position")? as u64,
        version: row.try_get::<i64, _>("version")? as u64,
    })
}

impl ViewSink for SqliteDocuments {
    type Sink = SqliteConnection;

    async fn load<'a>(
        conn: &'a mut SqliteConnection,
        table: &'a str,
        key: &'a str,
    ) -> Result<Option<StoredDocument>, HandlerError> {
        let row = sqlx::query(&format!(
            "SELECT doc, position, version FROM {table} WHERE key = ?"
        ))
        .bind(key)
        .fetch_optional(conn)
        .await?;
        Ok(row.as_ref().map(stored).transpose()?)
    }

    async fn save<'a>(
        conn: &'a mut SqliteConnection,
        table: &'a str,
        key: &'a str,
        document: StoredDocument,
    ) -> Result<(), HandlerError> {
        sqlx::query(&format!(
            "INSERT INTO {table} (key, doc, position, version) VALUES (?, ?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET doc = excluded.doc, position = excluded.position, version = excluded.version"
        ))
        .bind(key)
        .bind(document.doc.to_string())
        .bind(i64::try_from(document.position)?)
        .bind(i64::try_from(document.version)?)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn delete<'a>(
        conn: &'a mut SqliteConnection,
        table: &'a str,
        key: &'a str,
    ) -> Result<(), HandlerError> {
        sqlx::query(&format!("DELETE FROM {table} WHERE key = ?"))
            .bind(key)
            .execute(conn)
            .await?;
        Ok(())
    }
}

struct SqliteReader {
    pool: SqlitePool,
    table: String,
}

impl ViewReader for SqliteReader {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDocument>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "SELECT doc, position, version FROM {} WHERE key = ?",
                self.table
            ))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(error::store)?;
            row.as_ref().map(stored).transpose().map_err(error::store)
        })
    }

    fn list<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, StoredDocument)>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT key, doc, position, version FROM {} WHERE ? IS NULL OR key > ? ORDER BY key LIMIT ?",
                self.table
            ))
            .bind(after)
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(error::store)?;
            rows.iter()
                .map(|row| Ok((row.try_get("key")?, stored(row)?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(error::store)
        })
    }
}

impl SqliteEventStore {
    /// Creates the table of the view `name` if needed; its quoted name.
    pub(crate) async fn create_view_table(&self, name: &str) -> Result<String, ViewError> {
        evently_core::view::check_view_name(name)?;
        let table = format!("\"view_{name}\"");
        let mut conn = self.inner.writer.lock().await;
        sqlx::Executor::execute(
            &mut *conn,
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, doc TEXT NOT NULL, \
                 position INTEGER NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID"
            )
            .as_str(),
        )
        .await
        .map_err(error::store)?;
        Ok(table)
    }

    /// Starts the view `name` of type `V`: creates its table `view_<name>`
    /// in the file if needed and runs its projection `view_<name>` from its
    /// checkpoint.
    pub async fn run_view<V: View>(
        &self,
        name: &str,
        options: ProjectionOptions,
    ) -> Result<Views<V>, ViewError> {
        let table = self.create_view_table(name).await?;
        let projection = ViewProjection::<V, SqliteDocuments>::with_table(name, &table);
        let handle = self.run_projection(projection, options);
        let reader = SqliteReader {
            pool: self.pool().clone(),
            table,
        };
        Ok(Views::new(name, handle, Arc::new(reader)))
    }
}

impl ViewStore for SqliteEventStore {
    async fn run_view<V: View>(
        &self,
        name: &str,
        options: ProjectionOptions,
    ) -> Result<Views<V>, ViewError> {
        SqliteEventStore::run_view(self, name, options).await
    }
}
