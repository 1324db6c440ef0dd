//! The headers of a published event.
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | the event id (JetStream's de-duplication key) |
//! | `Evently-Event-Type` | the stored event type name |
//! | `Evently-Schema-Version` | its schema version |
//! | `Evently-Stream` | the stream id, encoded as a subject token ([`crate::subject::encode_token`]: a header value cannot hold a line break, a stream id can) |
//! | `Evently-Stream-Version` | the event's version in its stream |
//! | `Evently-Global-Position` | its position in the global log |
//! | `Evently-Correlation-Id`, `Evently-Causation-Id` | when the metadata has them |
//! | `Evently-Recorded-At` | when the store recorded it (RFC 3339) |
//! | `Evently-Metadata` | the whole metadata as JSON (actor, user keys, …) |
//! | `Content-Type` | `application/json` |
//!
//! The body is the payload, the event's JSON as stored.

use async_nats::header::HeaderName;
use async_nats::{HeaderMap, HeaderValue};
use evently_core::RecordedEvent;

use crate::subject::encode_token;

/// The event id: JetStream de-duplicates on it within its window.
pub const MESSAGE_ID: &str = "Nats-Msg-Id";
/// The stored event type name.
pub const EVENT_TYPE: &str = "Evently-Event-Type";
/// The event type's schema version.
pub const SCHEMA_VERSION: &str = "Evently-Schema-Version";
/// The stream id, encoded as a subject token.
pub const STREAM: &str = "Evently-Stream";
/// The event's version in its stream.
pub const STREAM_VERSION: &str = "Evently-Stream-Version";
/// The event's position in the global log; the publisher resumes from the
/// last message's.
pub const GLOBAL_POSITION: &str = "Evently-Global-Position";
/// The correlation id, when there is one.
pub const CORRELATION_ID: &str = "Evently-Correlation-Id";
/// The causation id, when there is one.
pub const CAUSATION_ID: &str = "Evently-Causation-Id";
/// When the store recorded the event (RFC 3339).
pub const RECORDED_AT: &str = "Evently-Recorded-At";
/// The whole metadata as JSON.
pub const METADATA: &str = "Evently-Metadata";
/// `application/json`.
pub const CONTENT_TYPE: &str = "Content-Type";

/// A value that cannot go in a header.
#[derive(Debug, thiserror::Error)]
#[error("event {event_id}: header {name} cannot hold {value:?}")]
pub struct HeaderError {
    /// The event.
    pub event_id: uuid::Uuid,
    /// The header.
    pub name: &'static str,
    /// The value it cannot hold.
    pub value: String,
}

/// The headers of `event`, and their size on the wire.
pub fn for_event(event: &RecordedEvent) -> Result<(HeaderMap, usize), HeaderError> {
    let metadata = serde_json::to_string(&event.metadata).map_err(|e| HeaderError {
        event_id: event.event_id,
        name: METADATA,
        value: e.to_string(),
    })?;
    let mut pairs: Vec<(&'static str, String)> = vec![
        (MESSAGE_ID, event.event_id.to_string()),
        (EVENT_TYPE, event.event_type.to_string()),
        (SCHEMA_VERSION, event.schema_version.to_string()),
        (STREAM, encode_token(event.stream_id.as_str())),
        (STREAM_VERSION, event.stream_version.to_string()),
        (GLOBAL_POSITION, event.global_position.to_string()),
        (RECORDED_AT, event.recorded_at.to_rfc3339()),
        (METADATA, metadata),
        (CONTENT_TYPE, "application/json".to_owned()),
    ];
    if let Some(id) = event.metadata.correlation_id {
        pairs.push((CORRELATION_ID, id.to_string()));
    }
    if let Some(id) = event.metadata.causation_id {
        pairs.push((CAUSATION_ID, id.to_string()));
    }
    // As the client writes them: "NATS/1.0\r\n", "<name>: <value>\r\n"
    // each, "\r\n".
    let mut size = "NATS/1.0\r\n".len() + 2;
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        size += name.len() + 2 + value.len() + 2;
        // Checked here, so the value moves in without a copy (the client's
        // `From<String>` would panic on a line break).
        if value.contains(['\r', '\n']) {
            return Err(HeaderError {
                event_id: event.event_id,
                name,
                value,
            });
        }
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    Ok((headers, size))
}
