//! Upcasting: reading events that older code wrote. A stored event whose
//! schema version is older than the one its type reads today — or whose
//! type name no longer exists — is upgraded on read, one step at a time
//! (v1 → v2 → v3), by the upcaster registered next to the event type with
//! `#[event(upcaster = function)]` (or by overriding [`Event::upcast`]).
//! A step can change the payload, rename the event (a renamed variant),
//! split it into several events, or drop it. Nothing is rewritten in the
//! store: the log keeps what was written.
//!
//! ```
//! use evently_core::upcast::OldEvent;
//! use evently_core::Event;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
//! #[event(upcaster = upcast_account)]
//! enum AccountEvent {
//!     // v1 stored `{"cents": 1050}`; v2 stores `{"amount": 10.5}`.
//!     #[event(version = 2)]
//!     Deposited { amount: f64 },
//! }
//!
//! fn upcast_account(old: OldEvent) -> Option<Vec<OldEvent>> {
//!     match (old.event_type.as_str(), old.schema_version) {
//!         ("Deposited", 1) => Some(vec![old.upgraded(2, |p| {
//!             let cents = p["cents"].as_f64().unwrap_or(0.0);
//!             *p = serde_json::json!({ "amount": cents / 100.0 });
//!         })]),
//!         // A variant renamed from `Credited` (v1) to `Deposited`.
//!         ("Credited", 1) => Some(vec![old.renamed("Deposited", 1)]),
//!         _ => None,
//!     }
//! }
//!
//! let stored = evently_core::Payload::from_json(r#"{"cents": 1050}"#).unwrap();
//! let mut events = Vec::new();
//! evently_core::upcast::decode_upcasting::<AccountEvent>("Credited", 1, &stored, |e| events.push(e))
//!     .unwrap();
//! assert_eq!(events, [AccountEvent::Deposited { amount: 10.5 }]);
//! ```

use std::collections::VecDeque;

use crate::error::DecodeErrorKind;
use crate::event::{Event, Payload};

/// Steps after which an upcaster is taken to loop.
const MAX_STEPS: usize = 64;

/// A stored event on its way to today's types: its type name, schema
/// version and payload as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct OldEvent {
    /// The type name it carries at this step.
    pub event_type: String,
    /// The schema version it has at this step.
    pub schema_version: u32,
    /// Its payload at this step.
    pub payload: serde_json::Value,
}

impl OldEvent {
    /// An event at some step.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Self {
        OldEvent {
            event_type: event_type.into(),
            schema_version,
            payload,
        }
    }

    /// The same event at schema version `to`, its payload changed by
    /// `change`.
    pub fn upgraded(mut self, to: u32, change: impl FnOnce(&mut serde_json::Value)) -> Self {
        change(&mut self.payload);
        self.schema_version = to;
        self
    }

    /// The same event under another type name and schema version (a
    /// renamed variant).
    pub fn renamed(mut self, event_type: impl Into<String>, schema_version: u32) -> Self {
        self.event_type = event_type.into();
        self.schema_version = schema_version;
        self
    }
}

/// Decodes a stored event into today's events, handing each to `f`:
/// directly when it is current (no list, no JSON tree), else through the
/// event type's upcaster, step by step. A split gives several events, a
/// dropped event none.
pub fn decode_upcasting<E: Event>(
    event_type: &str,
    schema_version: u32,
    payload: &Payload,
    mut f: impl FnMut(E),
) -> Result<(), DecodeErrorKind> {
    match E::current_version(event_type) {
        Some(current) if current == schema_version => {
            f(E::decode(event_type, schema_version, payload)?);
            return Ok(());
        }
        Some(current) if schema_version > current => {
            return Err(DecodeErrorKind::UnsupportedSchemaVersion {
                found: schema_version,
                current,
            })
        }
        // A hand-written `Event` that does not say its versions decodes
        // what it knows itself.
        None if E::EVENT_TYPES.contains(&event_type) => {
            f(E::decode(event_type, schema_version, payload)?);
            return Ok(());
        }
        _ => {}
    }
    let start = OldEvent::new(
        event_type,
        schema_version,
        serde_json::from_str(payload.as_str()).map_err(DecodeErrorKind::Payload)?,
    );
    let mut pending = VecDeque::from([start]);
    let mut steps = 0;
    while let Some(old) = pending.pop_front() {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(DecodeErrorKind::UpcasterLoop {
                event_type: event_type.to_owned(),
                schema_version,
                steps: MAX_STEPS,
            });
        }
        if E::current_version(&old.event_type) == Some(old.schema_version) {
            let payload = Payload::from_value(&old.payload);
            f(E::decode(&old.event_type, old.schema_version, &payload)?);
            continue;
        }
        let current = E::current_version(&old.event_type);
        if old.schema_version > current.unwrap_or(u32::MAX) {
            return Err(DecodeErrorKind::UnsupportedSchemaVersion {
                found: old.schema_version,
                current: current.unwrap_or(0),
            });
        }
        let (missing_type, missing_version) = (old.event_type.clone(), old.schema_version);
        let Some(next) = E::upcast(old) else {
            // A stored name that neither the type nor its upcaster knows is
            // an unknown event type; a known one without a step is a
            // missing upcaster.
            if steps == 1 && current.is_none() {
                return Err(DecodeErrorKind::unknown_event_type(E::EVENT_TYPES));
            }
            return Err(DecodeErrorKind::MissingUpcaster {
                event_type: missing_type,
                found: missing_version,
                current,
            });
        };
        for event in next.into_iter().rev() {
            pending.push_front(event);
        }
    }
    Ok(())
}
