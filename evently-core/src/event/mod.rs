//! Events as the domain sees them ([`Event`]), as they go into a store
//! ([`NewEvent`]) and as they come out of it ([`RecordedEvent`]), with the
//! JSON [`Payload`] between them.
//!
//! An event enum is stored one variant at a time: the variant's name (or its
//! `#[event(name = "...")]`) is the stored event type, and the payload holds
//! only the variant's fields. Decoding picks the variant from the stored type
//! and reads the fields straight from the payload text, with no intermediate
//! JSON tree.
//!
//! This module holds the traits; [`Payload`] is in `payload.rs`, [`NewEvent`]
//! and [`RecordedEvent`] in `recorded.rs`, and the variant-by-variant
//! serde codec the derive uses in `codec.rs`.

use crate::error::{DecodeErrorKind, EncodeError};

mod codec;
mod payload;
mod recorded;

pub use codec::{decode_struct, decode_variant, encode_struct, encode_variant};
pub use payload::Payload;
pub use recorded::{EventData, NewEvent, RecordedEvent};

/// A domain event: a fact that happened, stored in a stream.
///
/// Derive it with `#[derive(Event)]` on an enum (one stored event type per
/// variant) or a struct (one event type). The derive needs `serde`'s
/// `Serialize` and `Deserialize` on the same type.
///
/// | attribute | where | meaning | default |
/// |---|---|---|---|
/// | `#[event(name = "...")]` | variant or struct | the stored event type name | the variant's (or struct's) name |
/// | `#[event(version = N)]` | enum, variant or struct | the schema version, `N >= 1` | 1 (a variant inherits the enum's) |
/// | `#[event(upcaster = function)]` | enum or struct | upgrades events of older versions or former names, see [`crate::upcast`] | none |
///
/// ```
/// use evently_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
/// #[event(version = 2)]
/// enum AccountEvent {
///     #[event(name = "account.opened")]
///     Opened { owner: String },
///     #[event(version = 3)]
///     Deposited { amount: u64 },
/// }
///
/// let event = AccountEvent::Deposited { amount: 5 };
/// assert_eq!(event.event_type(), "Deposited");
/// assert_eq!(event.schema_version(), 3);
/// assert_eq!(AccountEvent::EVENT_TYPES, &["account.opened", "Deposited"]);
/// assert_eq!(AccountEvent::event_type_of_variant("Opened"), Some("account.opened"));
///
/// let payload = event.encode().unwrap();
/// assert_eq!(payload.as_str(), r#"{"amount":5}"#);
/// assert_eq!(AccountEvent::decode("Deposited", 3, &payload).unwrap(), event);
/// ```
pub trait Event: Sized + Send + Sync + 'static {
    /// Every stored event type name this type reads and writes.
    const EVENT_TYPES: &'static [&'static str];

    /// The stored event type name of this value.
    fn event_type(&self) -> &'static str;

    /// The schema version of this value's event type.
    fn schema_version(&self) -> u32;

    /// The payload to store: the event's fields as JSON.
    fn encode(&self) -> Result<Payload, EncodeError>;

    /// Reads an event back from its stored type, schema version and payload.
    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: &Payload,
    ) -> Result<Self, DecodeErrorKind>;

    /// The stored event type name of the enum variant called `variant` (its
    /// Rust name, without `r#`), or `None` if there is no such variant.
    ///
    /// `#[derive(Event)]` implements it for an enum; a struct event and a
    /// hand-written impl answer `None` unless they override it. The
    /// `Projection` derive uses it to turn the variants it handles into the
    /// stored names it asks the runner for.
    fn event_type_of_variant(variant: &str) -> Option<&'static str> {
        let _ = variant;
        None
    }

    /// The schema version this code reads for the stored type `event_type`,
    /// or `None` if it reads no such type (a former name, say).
    /// `#[derive(Event)]` implements it; a hand-written impl that answers
    /// `None` decodes every version itself.
    fn current_version(event_type: &str) -> Option<u32> {
        let _ = event_type;
        None
    }

    /// One upcasting step for a stored event of an older schema version or a
    /// former type name: the event at a later version, renamed, split into
    /// several, or none at all; `None` when there is no step for it.
    /// `#[event(upcaster = function)]` sets it; see [`crate::upcast`].
    fn upcast(old: crate::upcast::OldEvent) -> Option<Vec<crate::upcast::OldEvent>> {
        let _ = old;
        None
    }

    /// The aggregate type whose streams hold events of this type, if one
    /// claims it ([`AggregateEvent`]). A projection over this event type
    /// takes events from that aggregate's streams only, so two aggregates
    /// whose events share a type name (`Opened` on an account and on a
    /// loan) never mix. `#[derive(Event)]` answers
    /// `Some(<Self as AggregateEvent>::AGGREGATE_TYPE)` when the type
    /// implements [`AggregateEvent`] (`#[derive(Aggregate)]` does that for
    /// its event type), else `None`: then events are matched by their type
    /// name alone, from any stream.
    fn aggregate_type() -> Option<&'static str> {
        None
    }
}

/// Binds an event type to the one aggregate type that appends it.
///
/// `#[derive(Aggregate)]` implements it for the aggregate's `event` type,
/// so a second aggregate declaring the same event type is a compile error
/// (conflicting implementations) instead of a silent mix in projections.
/// Implement it by hand for an event type appended without an aggregate,
/// or received from another service, to give it the same protection:
///
/// ```
/// use evently_core::{AggregateEvent, Event};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Event)]
/// enum LoanEvent { Opened { amount: u64 } }
///
/// impl AggregateEvent for LoanEvent {
///     const AGGREGATE_TYPE: &'static str = "loan";
/// }
///
/// assert_eq!(LoanEvent::aggregate_type(), Some("loan"));
/// ```
pub trait AggregateEvent {
    /// The aggregate type: the part of its streams' ids before the first
    /// `-`.
    const AGGREGATE_TYPE: &'static str;
}

/// Compile-time lookup of an event type's [`AggregateEvent`] impl, for
/// `#[derive(Event)]`: method resolution on `&&Probe<T>` picks [`Owned`](owner::Owned)
/// when `T: AggregateEvent` and falls back to [`Unowned`](owner::Unowned) otherwise.
#[doc(hidden)]
pub mod owner {
    use std::marker::PhantomData;

    /// A value standing for the type `T`.
    pub struct Probe<T>(PhantomData<T>);

    impl<T> Probe<T> {
        /// The probe.
        pub const NEW: Self = Probe(PhantomData);
    }

    /// Chosen when `T` implements [`super::AggregateEvent`].
    pub trait Owned {
        /// `T`'s aggregate type.
        fn aggregate_type(&self) -> Option<&'static str>;
    }

    impl<T: super::AggregateEvent> Owned for &Probe<T> {
        fn aggregate_type(&self) -> Option<&'static str> {
            Some(T::AGGREGATE_TYPE)
        }
    }

    /// The fallback: no aggregate claims `T`.
    pub trait Unowned {
        /// `None`.
        fn aggregate_type(&self) -> Option<&'static str>;
    }

    impl<T> Unowned for Probe<T> {
        fn aggregate_type(&self) -> Option<&'static str> {
            None
        }
    }
}

/// The stored event type names of the variants of `E` called `variants`:
/// each variant's [`Event::event_type_of_variant`], else its Rust name.
/// Used by the `Projection` derive.
#[doc(hidden)]
pub fn handled_event_types<E: Event>(variants: &[&'static str]) -> Vec<&'static str> {
    variants
        .iter()
        .map(|&variant| E::event_type_of_variant(variant).unwrap_or(variant))
        .collect()
}
