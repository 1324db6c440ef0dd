//! The framework's errors. Each names what it is about: the stream, the
//! version, the event type.

use std::borrow::Cow;
use std::fmt;

use uuid::Uuid;

use crate::event::RecordedEvent;
use crate::version::{ExpectedVersion, StreamId};

/// An error from an event store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was written.
    #[error("wrong expected version on stream `{stream_id}`: expected {expected}, actual version {actual}")]
    WrongExpectedVersion {
        /// The stream appended to.
        stream_id: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was refused (0 = no stream).
        actual: u64,
    },

    /// An event id is already stored with other content or elsewhere; an
    /// append that repeats a stored append exactly is not an error.
    #[error("event id {event_id} is already stored in stream `{stored_in}` at version {stored_version}, and this append differs from that one: {reason}")]
    DuplicateEventId {
        /// The repeated event id.
        event_id: Uuid,
        /// The stream that holds it.
        stored_in: StreamId,
        /// Its version there.
        stored_version: u64,
        /// How the new append differs.
        reason: String,
    },

    /// The append itself is malformed (for example, one event id twice).
    #[error("invalid append to stream `{stream_id}`: {reason}")]
    InvalidAppend {
        /// The stream appended to.
        stream_id: StreamId,
        /// What is wrong.
        reason: String,
    },

    /// A stored row cannot be read back (bad JSON, impossible values).
    #[error("corrupt event in stream `{stream_id}` at version {stream_version}: {reason}")]
    Corrupt {
        /// The stream that holds the row.
        stream_id: StreamId,
        /// The row's version.
        stream_version: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// An inline projection (a read model written in the append's
    /// transaction) failed; nothing was appended.
    #[error("inline projection `{projection}` failed, so nothing was appended: {reason}")]
    InlineProjectionFailed {
        /// The projection.
        projection: String,
        /// Its handler's error.
        reason: String,
    },

    /// The command id was already executed: nothing was appended; its
    /// events are the stream's versions `first_version..=last_version`.
    #[error("command {command_id} was already executed: it produced versions {first_version} to {last_version} of stream `{stream_id}`")]
    CommandAlreadyExecuted {
        /// The command's id.
        command_id: Uuid,
        /// The stream it changed.
        stream_id: StreamId,
        /// The first version it produced.
        first_version: u64,
        /// The last version it produced.
        last_version: u64,
    },

    /// The stream is closed: it takes no more events.
    #[error("stream `{stream_id}` is closed: it takes no more events")]
    StreamClosed {
        /// The closed stream.
        stream_id: StreamId,
    },

    /// The store does not support this operation.
    #[error("this event store does not support `{operation}`")]
    Unsupported {
        /// The operation.
        operation: &'static str,
    },

    /// The store could not be reached or the reply was lost. The operation
    /// may or may not have taken effect: retry it with the same event ids.
    #[error("event store unavailable: {reason}")]
    Unavailable {
        /// What happened, in words.
        reason: String,
        /// The underlying error (a driver's I/O error, say), when there
        /// is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// Any other failure of the store's backend.
    #[error("event store failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The stream id cannot be stored (empty, a NUL character, longer than
    /// [`crate::limits::MAX_STREAM_ID_BYTES`]); every operation refuses it alike.
    #[error("invalid stream id {}: {reason}", crate::limits::shown(stream_id.as_str()))]
    InvalidStreamId {
        /// The refused id.
        stream_id: StreamId,
        /// What is wrong with it.
        reason: String,
    },

    /// A payload (an event's, or a snapshot's state) is larger than the
    /// store takes; nothing was written.
    #[error("a payload of {size} bytes for stream `{stream_id}` is above the store's limit of {limit} bytes")]
    PayloadTooLarge {
        /// The stream written to.
        stream_id: StreamId,
        /// The payload's size in bytes (its JSON text).
        size: usize,
        /// The largest size the store takes.
        limit: usize,
    },

    /// One append's payloads and metadata together are larger than the
    /// store takes in one append; nothing was written.
    #[error("an append of {size} bytes (payloads and metadata) to stream `{stream_id}` is above the store's limit of {limit} bytes per append")]
    AppendTooLarge {
        /// The stream appended to.
        stream_id: StreamId,
        /// The append's size in bytes.
        size: usize,
        /// The largest append the store takes.
        limit: usize,
    },

    /// The stream's version would pass the largest version the store can
    /// hold; nothing was written.
    #[error("stream `{stream_id}` cannot take {events} more events: its version {version} would pass the largest storable version")]
    VersionOverflow {
        /// The stream appended to.
        stream_id: StreamId,
        /// Its current version, when known (0 otherwise).
        version: u64,
        /// How many events the append held.
        events: usize,
    },

    /// A stored stream has a hole: a version is missing (a row deleted by
    /// hand, say), so its events cannot be folded.
    #[error("stream `{stream_id}` is missing version {missing} (the next stored version is {})", match found { Some(v) => v.to_string(), None => "none".to_owned() })]
    MissingVersion {
        /// The stream.
        stream_id: StreamId,
        /// The first missing version.
        missing: u64,
        /// The version stored after the hole, if any.
        found: Option<u64>,
    },
}

impl StoreError {
    /// Whether retrying the same operation (same event ids) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// An [`StoreError::Unavailable`] with a reason and no underlying error.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        StoreError::Unavailable {
            reason: reason.into(),
            source: None,
        }
    }

    /// An [`StoreError::Unavailable`] caused by `error`, kept as its source.
    pub fn unavailable_from(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable {
            reason: error.to_string(),
            source: Some(Box::new(error)),
        }
    }

    /// Whether this is an optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::WrongExpectedVersion { .. })
    }
}

/// Why an event could not be decoded (without where: see [`DecodeError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// No variant of the event type has this stored type name.
    #[error("unknown event type (known: {known})")]
    UnknownEventType {
        /// The type names the event type knows, comma-separated.
        known: String,
    },
    /// The stored schema version is not the one the event type reads.
    #[error("unsupported schema version {found} (the event type reads version {current})")]
    UnsupportedSchemaVersion {
        /// The stored version.
        found: u32,
        /// The version the code reads.
        current: u32,
    },
    /// The payload does not match the event's fields.
    #[error("payload does not match the event: {0}")]
    Payload(#[source] serde_json::Error),
    /// The event's personal data was erased; only its shape remains.
    #[error("the event was erased")]
    Erased,
    /// An old event has no upcasting step from this type and version.
    #[error("no upcaster for `{event_type}` from schema version {found} ({})", match current { Some(v) => format!("the event type reads version {v}"), None => "no current event type has that name".to_owned() })]
    MissingUpcaster {
        /// The type name at the step that has no upcaster.
        event_type: String,
        /// Its schema version there.
        found: u32,
        /// The version the code reads for that name, if any.
        current: Option<u32>,
    },
    /// The upcaster kept going without reaching a current event.
    #[error("the upcaster of `{event_type}` (schema version {schema_version}) did not reach a current event in {steps} steps")]
    UpcasterLoop {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// The steps taken.
        steps: usize,
    },
    /// The upcaster made this many events of one stored event, where one
    /// was asked for (`decode_all` takes any number).
    #[error("the upcaster made {count} events of this one (decode it with `decode_all`)")]
    NotOneEvent {
        /// How many.
        count: usize,
    },
}

impl DecodeErrorKind {
    /// The error for a type name none of `known` matches.
    pub fn unknown_event_type(known: &[&str]) -> Self {
        DecodeErrorKind::UnknownEventType {
            known: known.join(", "),
        }
    }
}

/// A stored event that does not decode into the domain event type, with
/// where it is.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode event `{event_type}` (schema version {schema_version}) at version {stream_version} of stream `{stream_id}`: {kind}")]
pub struct DecodeError {
    /// The stream that holds the event.
    pub stream_id: StreamId,
    /// The event's version in it.
    pub stream_version: u64,
    /// The event's global position.
    pub global_position: u64,
    /// The stored type name.
    pub event_type: Cow<'static, str>,
    /// The stored schema version.
    pub schema_version: u32,
    /// What went wrong.
    #[source]
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    pub(crate) fn new<T>(event: &RecordedEvent<T>, kind: DecodeErrorKind) -> Self {
        DecodeError {
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            global_position: event.global_position,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            kind,
        }
    }
}

/// A domain event that could not be serialized.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode event: {message}")]
pub struct EncodeError {
    message: String,
}

impl EncodeError {
    /// An encode error with a message.
    pub fn new(message: impl fmt::Display) -> Self {
        EncodeError {
            message: message.to_string(),
        }
    }
}

impl From<serde_json::Error> for EncodeError {
    fn from(e: serde_json::Error) -> Self {
        EncodeError::new(e)
    }
}

/// Why a command did not produce committed events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command: a domain error. Nothing was written.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),

    /// Other writers kept changing the stream; every attempt conflicted.
    #[error("stream `{stream_id}` kept changing: gave up after {attempts} conflicting attempts")]
    Conflict {
        /// The aggregate's stream.
        stream_id: StreamId,
        /// How many times the command was decided.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: StoreError,
    },

    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// A stored event of the aggregate does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),

    /// A new event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl<E> CommandError<E> {
    /// The domain error, if the aggregate refused the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            CommandError::Rejected(e) => Some(e),
            _ => None,
        }
    }
}
