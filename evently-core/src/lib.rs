//! The core of the `evently` event-sourcing framework: the model (aggregates,
//! events, commands, envelopes, metadata, expected versions), the
//! [`EventStore`] trait every store implements, and the command runtime
//! ([`Repository`]) that loads an aggregate, decides, appends and retries on
//! conflict.
//!
//! The derives [`Event`](macro@Event), [`Command`](macro@Command),
//! [`Aggregate`](macro@Aggregate) and [`Projection`](macro@Projection) are
//! re-exported here (`Projection` also in [`projection`], beside its
//! trait), so a user needs one dependency. With the `testing` feature,
//! `testing` adds the given/when/then test kit, a fault-injecting store
//! wrapper and the store conformance suite. What only a store implementer
//! needs (the input checks, the rows of the log, the projection runner's
//! target) is in [`backend`].
//!
//! ```
//! use evently_core::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
//! enum CounterEvent {
//!     Incremented { by: u32 },
//! }
//!
//! #[derive(Debug, Clone, Command)]
//! enum CounterCommand {
//!     Increment { id: String, by: u32 },
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("counter would overflow")]
//! struct Overflow;
//!
//! #[derive(Debug, Default, Aggregate)]
//! #[aggregate(name = "counter", event = CounterEvent, command = CounterCommand, error = Overflow)]
//! struct Counter {
//!     value: u32,
//! }
//!
//! impl Counter {
//!     fn decide(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, Overflow> {
//!         match command {
//!             CounterCommand::Increment { by, .. } => {
//!                 self.value.checked_add(by).ok_or(Overflow)?;
//!                 Ok(vec![CounterEvent::Incremented { by }])
//!             }
//!         }
//!     }
//!
//!     fn apply(&mut self, event: &CounterEvent) {
//!         match event {
//!             CounterEvent::Incremented { by } => self.value += by,
//!         }
//!     }
//! }
//!
//! assert_eq!(<Counter as Aggregate>::TYPE, "counter");
//! assert_eq!(Counter::stream_id("c-1").as_str(), "counter-c-1");
//! ```

#![warn(missing_docs)]

// Lets the derives name this crate as `::evently_core` from inside it too.
extern crate self as evently_core;

mod aggregate;
pub mod backend;
pub mod deadline;
mod error;
mod event;
pub mod limits;
mod metadata;
pub mod process;
pub mod projection;
mod runtime;
mod store;
pub mod telemetry;
pub mod upcast;
mod version;
pub mod view;

#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::{Aggregate, Command, RoutedCommand};
pub use error::{CommandError, DecodeError, DecodeErrorKind, EncodeError, StoreError};
pub use event::{AggregateEvent, Event, EventData, NewEvent, Payload, RecordedEvent};
pub use metadata::{CommandContext, Metadata};
pub use runtime::{AsOf, CommandOutcome, Journal, Loaded, Repository, RetryPolicy, Snapshots};
pub use store::{
    CommandRecord, CommandStore, CorrelationStore, EventSource, EventStore, EventStream,
    JournalEntry, JournalOutcome, ProjectionStore, Snapshot, SnapshotStore, StreamAppend,
    StreamLifecycle,
};
pub use version::{ExpectedVersion, StreamId};

pub use evently_macros::{Aggregate, Command, Event, Projection};

/// Everything a user of the framework usually needs, in one import: what
/// the README's snippets use (the model and its derives, the runtime,
/// projections, views, upcasting).
pub mod prelude {
    pub use crate::projection::{HandlerError, Projection, ProjectionOptions};
    pub use crate::upcast::OldEvent;
    pub use crate::view::{View, ViewStore};
    pub use crate::{
        Aggregate, AggregateEvent, AsOf, Command, CommandContext, CommandError, CommandOutcome,
        CommandStore, CorrelationStore, Event, EventStore, ExpectedVersion, Journal, Metadata,
        NewEvent, RecordedEvent, Repository, RoutedCommand, SnapshotStore, Snapshots, StoreError,
        StreamAppend, StreamId, StreamLifecycle,
    };
}

/// Not public API: what the facade `evently` re-exports when this crate's
/// features have it (the facade cannot test a dependency's feature).
#[doc(hidden)]
pub mod __features {
    #[cfg(feature = "testing")]
    pub use crate::{conformance_suite, testing};
}

/// Not public API: the paths the derive macros expand to.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::{
        decode_struct, decode_variant, encode_struct, encode_variant, handled_event_types, owner,
    };
    pub use core::future::{ready, Future};
    pub use core::option::Option;
    pub use core::result::Result;
    pub use serde_json::{from_str as json_from_str, to_string as json_to_string};
    pub use std::string::{String, ToString};
    pub use std::sync::OnceLock;
    pub use std::vec::Vec;
}
