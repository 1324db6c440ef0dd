//! Inline projections: a read model in the file, written in the same
//! transaction as every append of the store, so it is never behind the log.

use std::sync::Arc;

use evently_core::projection::{HandlerError, Projection};
use evently_core::{RecordedEvent, StoreError};
use futures::future::BoxFuture;
use sqlx::sqlite::SqliteConnection;

/// A projection applied inside the append's transaction.
pub(crate) trait InlineProjection: Send + Sync {
    fn name(&self) -> &str;

    fn apply<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

struct Inline<P>(P);

impl<P> InlineProjection for Inline<P>
where
    P: Projection<Sink = SqliteConnection>,
{
    fn name(&self) -> &str {
        self.0.name()
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let handles = self.0.handles();
            for event in events {
                for decoded in evently_core::backend::decode_handled::<P::Event>(handles, event)? {
                    self.0.apply(conn, &decoded).await?;
                }
            }
            Ok(())
        })
    }
}

/// The inline projections of a store.
#[derive(Clone, Default)]
pub(crate) struct Inlines(Vec<Arc<dyn InlineProjection>>);

impl Inlines {
    pub(crate) fn push<P: Projection<Sink = SqliteConnection>>(&mut self, projection: P) {
        self.0.push(Arc::new(Inline(projection)));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies each to freshly appended events, in the append's
    /// transaction; a handler that writes through the store gets an error
    /// (the transaction holds the file's one writer).
    pub(crate) async fn apply(
        &self,
        conn: &mut SqliteConnection,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        for projection in &self.0 {
            crate::projection::IN_BATCH
                .scope((), projection.apply(conn, events))
                .await
                .map_err(|error| StoreError::InlineProjectionFailed {
                    projection: projection.name().to_owned(),
                    reason: error.to_string(),
                })?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Inlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| p.name()))
            .finish()
    }
}
