//! Event sourcing and CQRS for Rust in one dependency: the model and derives
//! (`Event`, `Command`, `Aggregate`), the [`EventStore`] trait and the
//! command runtime ([`Repository`]) from `es-core`, and, with the default
//! `memory` feature, the in-memory store as [`memory`]; with the `postgres`
//! feature, the PostgreSQL store as `postgres` (`es::postgres::PgEventStore`).
//!
//! `use es::prelude::*;` brings what the README's snippets use; store
//! authors find their helpers in [`backend`].

#![warn(missing_docs)]

// Lets the derives name this crate as `::es` from inside it too.
extern crate self as es;

// The user API of `es-core`, named one by one: what only a store author
// needs stays in `es::backend` instead of the crate root.
pub use es_core::{
    Aggregate, AggregateEvent, AsOf, Command, CommandContext, CommandError, CommandOutcome,
    CommandRecord, DecodeError, DecodeErrorKind, EncodeError, Event, EventStore, EventStream,
    ExpectedVersion, Journal, JournalEntry, JournalOutcome, Loaded, Metadata, NewEvent, Payload,
    RecordedEvent, Repository, RetryPolicy, RoutedCommand, Snapshot, Snapshots, StoreError,
    StreamAppend, StreamId,
};
// `#[derive(Projection)]` (the trait is `es::projection::Projection`).
pub use es_core::Projection;
pub use es_core::{backend, limits, prelude, projection, upcast, view};

// The test kit, the fault-injecting store and the store conformance suite
// (`es::testing`, `es::conformance_suite!`), where `es-core`'s feature
// `testing` is on (the feature `testing` of this crate, or a dev-dependency).
pub use es_core::__features::*;

/// Not public API: the paths the derive macros expand to.
#[doc(hidden)]
pub use es_core::__private;

#[cfg(feature = "memory")]
pub use es_memory as memory;

/// The PostgreSQL store (feature `postgres`): `es::postgres::PgEventStore`.
#[cfg(feature = "postgres")]
pub use es_postgres as postgres;
