//! The README follows: each of its code
//! blocks is a doc test of this crate, compiled by `cargo test` (blocks that
//! need a PostgreSQL server are compiled, not run; `tests/readme.rs` runs
//! the in-memory ones).
//!
//! `use evently::prelude::*;` brings what the README's snippets use; store
//! authors find their helpers in [`backend`].
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// Lets the derives name this crate as `::evently` from inside it too.
extern crate self as evently;

// The user API of `evently-core`, named one by one: what only a store author
// needs stays in `evently::backend` instead of the crate root.
pub use evently_core::{
    Aggregate, AggregateEvent, AsOf, Command, CommandContext, CommandError, CommandOutcome,
    CommandRecord, DecodeError, DecodeErrorKind, EncodeError, Event, EventSource, EventStore,
    EventStream, ExpectedVersion, Journal, JournalEntry, JournalOutcome, Loaded, Metadata,
    NewEvent, Payload, ProjectionStore, RecordedEvent, Repository, RetryPolicy, RoutedCommand,
    Snapshot, Snapshots, StoreError, StreamAppend, StreamId,
};
// `#[derive(Projection)]` (the trait is `evently::projection::Projection`).
pub use evently_core::Projection;
pub use evently_core::{
    backend, deadline, limits, prelude, process, projection, telemetry, upcast, view,
};

// The test kit, the fault-injecting store and the store conformance suite
// (`evently::testing`, `evently::conformance_suite!`), where `evently-core`'s feature
// `testing` is on (the feature `testing` of this crate, or a dev-dependency).
#[allow(unused_imports)] // empty without the feature
pub use evently_core::__features::*;

/// Not public API: the paths the derive macros expand to.
#[doc(hidden)]
pub use evently_core::__private;

#[cfg(feature = "memory")]
pub use evently_memory as memory;

/// The PostgreSQL store (feature `postgres`): `evently::postgres::PgEventStore`.
#[cfg(feature = "postgres")]
pub use evently_postgres as postgres;

/// The SQLite store (feature `sqlite`): `evently::sqlite::SqliteEventStore`,
/// a durable log in one file.
#[cfg(feature = "sqlite")]
pub use evently_sqlite as sqlite;

/// The log on NATS JetStream (feature `nats`): `evently::nats::Publisher`.
#[cfg(feature = "nats")]
pub use evently_nats as nats;
