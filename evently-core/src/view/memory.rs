//! Views in memory, for any store: [`MemoryViews`] keeps the documents of
//! each view name in a [`MemoryReadModel`], in their serde form.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::*;

/// The documents of every view of one name, in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryDocuments {
    docs: BTreeMap<String, StoredDocument>,
}

impl ViewSink for MemoryDocuments {
    type Sink = MemoryDocuments;

    async fn load<'a>(
        sink: &'a mut Self,
        _table: &'a str,
        key: &'a str,
    ) -> Result<Option<StoredDocument>, HandlerError> {
        Ok(sink.docs.get(key).cloned())
    }

    async fn save<'a>(
        sink: &'a mut Self,
        _table: &'a str,
        key: &'a str,
        document: StoredDocument,
    ) -> Result<(), HandlerError> {
        sink.docs.insert(key.to_owned(), document);
        Ok(())
    }

    async fn delete<'a>(
        sink: &'a mut Self,
        _table: &'a str,
        key: &'a str,
    ) -> Result<(), HandlerError> {
        sink.docs.remove(key);
        Ok(())
    }
}

struct MemoryReader(MemoryReadModel<MemoryDocuments>);

impl ViewReader for MemoryReader {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDocument>, StoreError>> {
        let doc = self.0.read(|m| m.docs.get(key).cloned());
        Box::pin(async move { Ok(doc) })
    }

    fn list<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, StoredDocument)>, StoreError>> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let rows = self.0.read(|m| {
            m.docs
                .range::<str, _>((from, Bound::Unbounded))
                .take(limit)
                .map(|(k, d)| (k.clone(), d.clone()))
                .collect()
        });
        Box::pin(async move { Ok(rows) })
    }
}

/// Views kept in memory, for any store: the documents of each view name
/// live as long as this value (clones share them), so a view started
/// again under the same name goes on from its checkpoint. Documents are
/// kept in their serde form, as on PostgreSQL, so a view type that does
/// not round-trip through JSON fails in tests too.
#[derive(Clone, Default)]
pub struct MemoryViews {
    models: Arc<Mutex<HashMap<String, MemoryReadModel<MemoryDocuments>>>>,
}

impl std::fmt::Debug for MemoryViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryViews").finish_non_exhaustive()
    }
}

impl MemoryViews {
    /// Starts the view `name` of type `V` on `store`'s log, from its
    /// checkpoint.
    pub fn run<V: View, S: EventStore>(
        &self,
        store: S,
        name: &str,
        options: ProjectionOptions,
    ) -> Result<Views<V>, ViewError> {
        check_view_name(name)?;
        let model = self
            .models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone();
        let projection = ViewProjection::<V, MemoryDocuments>::new(name);
        let handle = run_projection(store, projection, model.clone(), options);
        Ok(Views::new(name, handle, Arc::new(MemoryReader(model))))
    }
}
