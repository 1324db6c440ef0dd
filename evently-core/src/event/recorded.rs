//! [`NewEvent`], an event going into a store, and [`RecordedEvent`], an
//! event as a store gives it back.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{DecodeError, DecodeErrorKind, EncodeError};
use crate::metadata::Metadata;
use crate::version::StreamId;

use super::{Event, Payload};

/// An event ready to append: its id, type, schema version, payload and
/// metadata. The store assigns the stream version and global position.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event's id (UUID v7). Appending an id again stores nothing twice.
    pub event_id: Uuid,
    /// The stored event type name.
    pub event_type: Cow<'static, str>,
    /// The schema version of the event type.
    pub schema_version: u32,
    /// The event's fields as JSON.
    pub payload: Payload,
    /// Correlation, causation, timestamp and user keys.
    pub metadata: Metadata,
}

impl NewEvent {
    /// Encodes a domain event with a fresh UUID v7 id.
    ///
    /// ```
    /// use evently_core::{Event, Metadata, NewEvent};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize, Event)]
    /// # enum E { Happened { n: u8 } }
    ///
    /// let new = NewEvent::from_event(&E::Happened { n: 1 }, Metadata::new()).unwrap();
    /// assert_eq!(new.event_type, "Happened");
    /// assert_eq!(new.event_id.get_version_num(), 7);
    /// ```
    pub fn from_event<E: Event>(event: &E, metadata: Metadata) -> Result<Self, EncodeError> {
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            event_type: Cow::Borrowed(event.event_type()),
            schema_version: event.schema_version(),
            payload: event.encode()?,
            metadata,
        })
    }

    /// Builds an event from its raw parts (for tools, tests and bridges).
    pub fn raw(
        event_type: impl Into<Cow<'static, str>>,
        schema_version: u32,
        payload: Payload,
        metadata: Metadata,
    ) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata,
        }
    }

    /// Replaces the event id (a retry of a known append reuses its ids).
    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }
}

/// An event as stored: where it sits in its stream and in the global log,
/// and its data — a raw [`Payload`] by default, or a decoded event after
/// [`RecordedEvent::decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent<T = Payload> {
    /// The event's id (UUID v7).
    pub event_id: Uuid,
    /// The stream that holds the event.
    pub stream_id: StreamId,
    /// The event's version in its stream: 1, 2, 3, … without gaps.
    pub stream_version: u64,
    /// The event's position in the global log: increasing, starting at 1.
    pub global_position: u64,
    /// The stored event type name.
    pub event_type: Cow<'static, str>,
    /// The schema version the payload was written with.
    pub schema_version: u32,
    /// The payload, or the decoded event.
    pub data: T,
    /// Correlation, causation, timestamp and user keys.
    pub metadata: Metadata,
    /// When the store recorded the event.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent<Payload> {
    /// Decodes the payload into a domain event; the error names the stream,
    /// version and event type.
    ///
    /// An older schema version goes through the event type's upcaster; an
    /// upcaster that splits the event into several is an error here (use
    /// [`RecordedEvent::decode_all`]).
    pub fn decode<E: Event>(&self) -> Result<RecordedEvent<E>, DecodeError> {
        let mut events = self.decode_all::<E>()?;
        if events.len() != 1 {
            return Err(DecodeError::new(
                self,
                DecodeErrorKind::NotOneEvent {
                    count: events.len(),
                },
            ));
        }
        Ok(events.remove(0))
    }

    /// Decodes the payload into today's domain events: one for a current
    /// event, and for an older one whatever its upcaster makes of it (one,
    /// several after a split, none after a drop). The errors name the
    /// stream, version and event type.
    pub fn decode_all<E: Event>(&self) -> Result<Vec<RecordedEvent<E>>, DecodeError> {
        let mut events = Vec::new();
        EventData::of(self).decode_each(&self.stream_id, |e| events.push(self.with_data(e)))?;
        Ok(events)
    }
}

impl<T> RecordedEvent<T> {
    /// The aggregate type of the event's stream (the part of its id before
    /// the first `-`), or `None` for a stream not named by an aggregate.
    pub fn aggregate_type(&self) -> Option<&str> {
        self.stream_id.aggregate_type()
    }

    /// The aggregate id of the event's stream (the part of its id after the
    /// first `-`), or `None` for a stream not named by an aggregate.
    pub fn aggregate_id(&self) -> Option<&str> {
        self.stream_id.aggregate_id()
    }

    /// The same envelope around other data.
    pub fn with_data<U>(&self, data: U) -> RecordedEvent<U> {
        RecordedEvent {
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            global_position: self.global_position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            data,
            metadata: self.metadata.clone(),
            recorded_at: self.recorded_at,
        }
    }
}

/// One stored event as folding it into an aggregate needs it, borrowed
/// from what the store read (a row, the memory log): its place, type,
/// schema version and payload text, without id, metadata or time, which a
/// store then need not read or parse ([`crate::EventStore::fold_stream`],
/// what `Repository` loads with).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct EventData<'a> {
    /// The event's version in its stream.
    pub stream_version: u64,
    /// Its global position (for errors).
    pub global_position: u64,
    /// The stored event type name.
    pub event_type: &'a str,
    /// The schema version of the event type.
    pub schema_version: u32,
    /// The payload's JSON text.
    pub payload: &'a str,
    /// Whether the stream was erased (the payload is then `{}`).
    pub erased: bool,
}

impl<'a> EventData<'a> {
    /// The fold data of a whole stored event.
    pub fn of(event: &'a RecordedEvent) -> Self {
        EventData {
            stream_version: event.stream_version,
            global_position: event.global_position,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            payload: event.data.as_str(),
            erased: event.metadata.erased_at.is_some(),
        }
    }

    /// The fold data of an event at `stream_version` and `global_position`
    /// (what a store's lean read gives), not erased;
    /// [`EventData::with_erased`] marks an erased one.
    pub fn new(
        stream_version: u64,
        global_position: u64,
        event_type: &'a str,
        schema_version: u32,
        payload: &'a str,
    ) -> Self {
        EventData {
            stream_version,
            global_position,
            event_type,
            schema_version,
            payload,
            erased: false,
        }
    }

    /// Marks the event erased (or not).
    pub fn with_erased(mut self, erased: bool) -> Self {
        self.erased = erased;
        self
    }

    /// Decodes the payload as [`RecordedEvent::decode_all`] does (upcasting
    /// an older version, refusing an erased event) and hands each event to
    /// `f`: one, or several after a split, or none after a drop.
    pub fn decode_each<E: Event>(
        &self,
        stream_id: &StreamId,
        f: impl FnMut(E),
    ) -> Result<(), DecodeError> {
        let error = |kind| DecodeError {
            stream_id: stream_id.clone(),
            stream_version: self.stream_version,
            global_position: self.global_position,
            event_type: Cow::Owned(self.event_type.to_owned()),
            schema_version: self.schema_version,
            kind,
        };
        if self.erased {
            return Err(error(DecodeErrorKind::Erased));
        }
        let payload = Payload::from_json_unchecked(self.payload);
        crate::upcast::decode_upcasting::<E>(self.event_type, self.schema_version, &payload, f)
            .map_err(error)
    }
}
