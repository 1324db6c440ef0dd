//! Views: read models without SQL. A [`View`] is a serde type folded from
//! events, one document per key (the aggregate id by default); the
//! framework stores the documents — in memory, or in a `jsonb` table on
//! PostgreSQL — and serves them by key and in pages.
//!
//! A view runs on the projection runner ([`run_projection`]) as a
//! [`ViewProjection`]: its documents are written in the runner's batch with
//! its checkpoint, so each event is applied once, and retries, the
//! [`OnFailure`](crate::projection::OnFailure) policy, parking and status
//! come with it. The same view type runs on every store that implements
//! [`ViewStore`] (`MemoryStore`, `PgEventStore`), so tests on memory run the
//! code production runs on PostgreSQL.
//!
//! ```
//! use evently_core::prelude::*;
//! use evently_core::projection::ProjectionOptions;
//! use evently_core::view::{View, ViewStore};
//! use evently_memory::MemoryStore;
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
//! enum AccountEvent {
//!     Opened { owner: String },
//!     Deposited { amount: u64 },
//!     Closed,
//! }
//!
//! // The read model: one document per account.
//! #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
//! struct AccountView {
//!     owner: String,
//!     balance: u64,
//! }
//!
//! impl View for AccountView {
//!     type Event = AccountEvent;
//!
//!     fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
//!         match &event.data {
//!             AccountEvent::Opened { owner } => self.owner = owner.clone(),
//!             AccountEvent::Deposited { amount } => self.balance += amount,
//!             AccountEvent::Closed => {}
//!         }
//!     }
//!
//!     // A closed account's document is deleted.
//!     fn delete_on(event: &RecordedEvent<AccountEvent>) -> bool {
//!         matches!(event.data, AccountEvent::Closed)
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new(); // or a PgEventStore: the same code
//! let views = store.run_view::<AccountView>("accounts", ProjectionOptions::default()).await?;
//! let stored = store
//!     .append(
//!         &StreamId::new("account-alice"),
//!         ExpectedVersion::Any,
//!         vec![
//!             NewEvent::from_event(&AccountEvent::Opened { owner: "Alice".into() }, Metadata::new())?,
//!             NewEvent::from_event(&AccountEvent::Deposited { amount: 5 }, Metadata::new())?,
//!         ],
//!     )
//!     .await?;
//! // Read your writes: wait for the position of the last event written.
//! views.wait_for(stored.last().unwrap().global_position, Duration::from_secs(5)).await?;
//! assert_eq!(
//!     views.get("alice").await?,
//!     Some(AccountView { owner: "Alice".into(), balance: 5 })
//! );
//! let page = views.list(None, 10).await?;
//! assert_eq!(page.documents[0].key, "alice");
//! assert_eq!(page.next, None);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::{Event, RecordedEvent};
use crate::projection::{
    run_projection, HandlerError, MemoryReadModel, Projection, ProjectionHandle, ProjectionOptions,
    ProjectionStatus, WaitError,
};
use crate::store::EventStore;
use crate::StoreError;

mod memory;

pub use memory::{MemoryDocuments, MemoryViews};

/// A read model kept as one serde document per key, folded from events.
///
/// Implement [`View::apply`]; [`View::key`] (the aggregate id by default)
/// and [`View::delete_on`] (never by default) are optional. A key without
/// a document starts from `Default`. Run it with
/// [`ViewStore::run_view`] on any store, or [`MemoryViews::run`].
pub trait View: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event type it folds.
    type Event: Event;

    /// Folds one event into the document of its key.
    fn apply(&mut self, event: &RecordedEvent<Self::Event>);

    /// The key of the document `event` goes to, or `None` to leave the
    /// view untouched. The aggregate id of the event's stream by default
    /// (the whole stream id for a stream not named by an aggregate).
    ///
    /// Keys and documents cannot hold U+0000: PostgreSQL cannot store it,
    /// so it is refused on every store, as a handler error (the runner's
    /// failure policy applies).
    fn key(event: &RecordedEvent<Self::Event>) -> Option<String> {
        Some(
            event
                .aggregate_id()
                .unwrap_or(event.stream_id.as_str())
                .to_owned(),
        )
    }

    /// Whether `event` deletes its key's document (instead of being
    /// applied to it). Never by default. A later event of that key starts
    /// a new document from `Default`.
    fn delete_on(event: &RecordedEvent<Self::Event>) -> bool {
        let _ = event;
        false
    }

    /// The stored event types it folds; the others are skipped without
    /// being decoded. All of the event type's by default.
    fn handles() -> &'static [&'static str] {
        <Self::Event as Event>::EVENT_TYPES
    }
}

/// Why a view could not be started or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// A view's name must be 1 to 58 characters of `a`-`z`, `0`-`9` and
    /// `_` (it names its table, `view_<name>`, on PostgreSQL).
    #[error("`{name}` cannot name a view: use 1 to 58 characters of a-z, 0-9 and _")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// A stored document does not decode as the view type (the type
    /// changed without its documents being rebuilt, or the row was edited).
    #[error("the document `{key}` of view `{view}` does not decode: {reason}")]
    Malformed {
        /// The view's name.
        view: String,
        /// The document's key.
        key: String,
        /// The decoding error.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Waiting for the runner to reach a position timed out, or it stopped
    /// first ([`Views::get_after`]).
    #[error(transparent)]
    Wait(#[from] WaitError),
}

/// Checks a view's name: 1 to 58 characters of `a`-`z`, `0`-`9`, `_`.
pub fn check_view_name(name: &str) -> Result<(), ViewError> {
    let valid = !name.is_empty()
        && name.len() <= 58
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ViewError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// The projection name (and, on PostgreSQL, the table name) of the view
/// named `name`: `view_<name>`.
pub fn view_projection_name(name: &str) -> String {
    format!("view_{name}")
}

/// A stored document: the view's serde form with its bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    /// The document as JSON.
    pub doc: serde_json::Value,
    /// The global position of the last event applied to it.
    pub position: u64,
    /// How many events have been applied to it (1 after the first).
    pub version: u64,
}

/// A document of a view, decoded, with its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Document<V> {
    /// Its key.
    pub key: String,
    /// The document.
    pub doc: V,
    /// The global position of the last event applied to it: a reader
    /// that wrote at a position sees its write once this reaches it.
    pub position: u64,
    /// How many events have been applied to it.
    pub version: u64,
}

/// A page of a view's documents, ordered by key.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentPage<V> {
    /// The documents, at most the limit asked for.
    pub documents: Vec<Document<V>>,
    /// The key to pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// Where a view's documents are written by its runner: each store's
/// implementation reads and writes the documents through the runner's
/// transaction (its `Sink`), so they commit with the checkpoint.
pub trait ViewSink: Send + Sync + 'static {
    /// The projection sink the documents are written through.
    type Sink: Send;

    /// The document stored under `key` in `table` (where the view's
    /// documents live, as the store named it), if any.
    fn load<'a>(
        sink: &'a mut Self::Sink,
        table: &'a str,
        key: &'a str,
    ) -> impl Future<Output = Result<Option<StoredDocument>, HandlerError>> + Send + 'a;

    /// Stores (inserts or replaces) the document under `key`.
    fn save<'a>(
        sink: &'a mut Self::Sink,
        table: &'a str,
        key: &'a str,
        document: StoredDocument,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;

    /// Deletes the document under `key`, if any.
    fn delete<'a>(
        sink: &'a mut Self::Sink,
        table: &'a str,
        key: &'a str,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// Where a view's documents are read from, outside the runner.
pub trait ViewReader: Send + Sync + 'static {
    /// The document under `key`, if any.
    fn get<'a>(&'a self, key: &'a str)
        -> BoxFuture<'a, Result<Option<StoredDocument>, StoreError>>;

    /// Up to `limit` documents with keys after `after` (from the first
    /// without), ordered by key.
    fn list<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, StoredDocument)>, StoreError>>;
}

/// The projection that keeps a view: for each handled event, the
/// document of its key is loaded (or `Default`), the event applied, and the
/// document saved — or deleted — through the sink `S`.
pub struct ViewProjection<V, S> {
    name: String,
    view: String,
    table: String,
    _types: PhantomData<fn() -> (V, S)>,
}

impl<V, S> ViewProjection<V, S> {
    /// The projection of the view named `name` (already checked); its
    /// projection name is `view_<name>`, and so is the table name its sink
    /// is given.
    pub fn new(name: &str) -> Self {
        Self::with_table(name, &view_projection_name(name))
    }

    /// The projection of the view named `name` whose sink is given `table`
    /// as where the documents live (a qualified table name on PostgreSQL).
    pub fn with_table(name: &str, table: &str) -> Self {
        ViewProjection {
            name: view_projection_name(name),
            view: name.to_owned(),
            table: table.to_owned(),
            _types: PhantomData,
        }
    }
}

impl<V: View, S: ViewSink> Projection for ViewProjection<V, S> {
    type Event = V::Event;
    type Sink = S::Sink;

    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self) -> &[&str] {
        V::handles()
    }

    async fn apply(
        &self,
        sink: &mut S::Sink,
        event: &RecordedEvent<V::Event>,
    ) -> Result<(), HandlerError> {
        self.apply_batch(sink, std::slice::from_ref(event))
            .await
            .map_err(|(_, error)| error)
    }

    /// Folds the batch in memory, one document per key touched: each is
    /// read once, takes its events in log order, and is written (or
    /// deleted) once at the end, so a catch-up costs two statements per
    /// key and batch instead of two per event. Each applied event counts
    /// one version, a deletion starts the key again from version 0 and the
    /// default document, as event by event.
    async fn apply_batch(
        &self,
        sink: &mut S::Sink,
        events: &[RecordedEvent<V::Event>],
    ) -> Result<(), (usize, HandlerError)> {
        let mut touched: HashMap<String, Touched<V>> = HashMap::new();
        // Keys in the order first touched, so writes follow the log.
        let mut order: Vec<String> = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let Some(key) = V::key(event) else {
                continue;
            };
            if key.contains('\0') {
                let error = format!("view `{}`: a key cannot contain U+0000: {key:?}", self.view);
                return Err((index, error.into()));
            }
            let delete = V::delete_on(event);
            let entry = match touched.entry(key) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    // A deletion needs nothing stored; any other event
                    // starts from the stored document.
                    let key = vacant.key();
                    let stored = if delete {
                        None
                    } else {
                        match S::load(sink, &self.table, key).await {
                            Ok(Some(stored)) => Some((
                                decode::<V>(&self.view, key, stored.doc)
                                    .map_err(|e| (index, Box::new(e) as HandlerError))?,
                                stored.version,
                                stored.position,
                            )),
                            Ok(None) => None,
                            Err(error) => return Err((index, error)),
                        }
                    };
                    order.push(key.clone());
                    vacant.insert(Touched {
                        first: index,
                        doc: stored,
                        deleted: false,
                    })
                }
            };
            if delete {
                entry.doc = None;
                entry.deleted = true;
                continue;
            }
            let (doc, version, position) = entry.doc.get_or_insert_with(|| (V::default(), 0, 0));
            crate::projection::event_span(event).in_scope(|| doc.apply(event));
            *version += 1;
            *position = event.global_position;
        }
        for key in order {
            let Some(entry) = touched.remove(&key) else {
                continue;
            };
            let written = match entry.doc {
                Some((doc, version, position)) => {
                    self.save(sink, &key, &doc, version, position).await
                }
                None if entry.deleted => S::delete(sink, &self.table, &key).await,
                None => Ok(()),
            };
            written.map_err(|error| (entry.first, error))?;
        }
        Ok(())
    }
}

/// A document as a batch leaves it: from the batch's first event that
/// touched the key (for errors), the document with its version and the
/// position of its last event (none after a deletion), and whether it was
/// deleted.
struct Touched<V> {
    first: usize,
    doc: Option<(V, u64, u64)>,
    deleted: bool,
}

impl<V: View, S: ViewSink> ViewProjection<V, S> {
    /// Writes a document, refused if it holds what jsonb cannot store.
    async fn save(
        &self,
        sink: &mut S::Sink,
        key: &str,
        doc: &V,
        version: u64,
        position: u64,
    ) -> Result<(), HandlerError> {
        let doc = serde_json::to_value(doc)?;
        if holds_nul(&doc) {
            // PostgreSQL's jsonb cannot store it: refused on every store,
            // so a test in memory fails as production would.
            return Err(format!(
                "view `{}`: the document `{key}` holds U+0000 in a string, which jsonb cannot store",
                self.view
            )
            .into());
        }
        let document = StoredDocument {
            doc,
            position,
            version,
        };
        S::save(sink, &self.table, key, document).await
    }
}

/// Whether a string (or an object key) of `doc` holds U+0000.
fn holds_nul(doc: &serde_json::Value) -> bool {
    use serde_json::Value;
    match doc {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn decode<V: View>(view: &str, key: &str, doc: serde_json::Value) -> Result<V, ViewError> {
    serde_json::from_value(doc).map_err(|e| ViewError::Malformed {
        view: view.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A running view: its documents by key and in pages, and its runner.
/// Dropping it stops the runner after its current batch.
pub struct Views<V> {
    name: String,
    handle: ProjectionHandle,
    reader: Arc<dyn ViewReader>,
    _view: PhantomData<fn() -> V>,
}

impl<V: View> Views<V> {
    /// A view named `name` kept by the runner `handle`, read through
    /// `reader` (for stores implementing [`ViewStore`]).
    pub fn new(name: &str, handle: ProjectionHandle, reader: Arc<dyn ViewReader>) -> Self {
        Views {
            name: name.to_owned(),
            handle,
            reader,
            _view: PhantomData,
        }
    }

    /// The view's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The document under `key`, if any. It reflects the events up to the
    /// runner's checkpoint: call [`Views::wait_for`] first to read a write.
    pub async fn get(&self, key: &str) -> Result<Option<V>, ViewError> {
        Ok(self.document(key).await?.map(|d| d.doc))
    }

    /// The document under `key` with its position and version, if any.
    pub async fn document(&self, key: &str) -> Result<Option<Document<V>>, ViewError> {
        match self.reader.get(key).await? {
            None => Ok(None),
            Some(stored) => Ok(Some(self.decoded(key.to_owned(), stored)?)),
        }
    }

    /// [`Views::get`] once the runner has processed `position` (the
    /// position of the last event of a command): read-your-writes.
    pub async fn get_after(
        &self,
        key: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<Option<V>, ViewError> {
        self.wait_for(position, timeout).await?;
        self.get(key).await
    }

    /// Up to `limit` documents ordered by key, starting after the key
    /// `after` (from the first without); pass the page's `next` to get the
    /// following one. A limit of 0 is taken as 1.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DocumentPage<V>, ViewError> {
        let limit = limit.max(1);
        let mut rows = self.reader.list(after, limit.saturating_add(1)).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let documents = rows
            .into_iter()
            .map(|(key, stored)| self.decoded(key, stored))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            documents.last().map(|d| d.key.clone())
        } else {
            None
        };
        Ok(DocumentPage { documents, next })
    }

    fn decoded(&self, key: String, stored: StoredDocument) -> Result<Document<V>, ViewError> {
        Ok(Document {
            doc: decode::<V>(&self.name, &key, stored.doc)?,
            key,
            position: stored.position,
            version: stored.version,
        })
    }

    /// Waits until the runner has processed `position`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), WaitError> {
        self.handle.wait_for(position, timeout).await
    }

    /// The runner's status (its projection is named `view_<name>`).
    pub fn status(&self) -> ProjectionStatus {
        self.handle.status()
    }

    /// The runner.
    pub fn projection(&self) -> &ProjectionHandle {
        &self.handle
    }

    /// Stops the runner after its current batch and waits for it.
    pub async fn stop(self) -> ProjectionStatus {
        self.handle.stop().await
    }

    /// The runner's handle, keeping the view running without its reader.
    pub fn into_projection(self) -> ProjectionHandle {
        self.handle
    }
}

/// A store that keeps views: `store.run_view::<V>(name, options)` starts
/// the view `name` of type `V` and returns it to read from.
pub trait ViewStore: Send + Sync {
    /// Starts the view `name` (see [`check_view_name`]) from its
    /// checkpoint, creating its storage the first time.
    fn run_view<V: View>(
        &self,
        name: &str,
        options: ProjectionOptions,
    ) -> impl Future<Output = Result<Views<V>, ViewError>> + Send;
}
