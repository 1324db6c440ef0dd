//! Event sourcing and CQRS for Rust in one dependency: the model and derives
//! (`Event`, `Command`, `Aggregate`), the [`EventStore`] trait and the
//! command runtime ([`Repository`]) from `es-core`, and, with the default
//! `memory` feature, the in-memory store as [`memory`]; with the `postgres`
//! feature, the PostgreSQL store as `postgres` (`es::postgres::PgEventStore`).

#![warn(missing_docs)]

// Lets the derives name this crate as `::es` from inside it too.
extern crate self as es;

pub use es_core::*;

#[cfg(feature = "memory")]
pub use es_memory as memory;

/// The PostgreSQL store (feature `postgres`): `es::postgres::PgEventStore`.
#[cfg(feature = "postgres")]
pub use es_postgres as postgres;
