//! For store authors: what an [`EventStore`](crate::EventStore)
//! implementation calls and provides beyond the trait itself. An
//! application never needs this module.
//!
//! - the checks every store runs before it writes, so that every store
//!   refuses the same input with the same typed errors: [`check_events`],
//!   [`check_appends`], [`check_stream_id`] and the rest of
//!   [`crate::limits`] (whose constants are repeated here);
//! - the rows of the global log as the projection runner reads them
//!   ([`LogItem`], [`UnreadableEvent`], [`LogStream`], for
//!   [`EventStore::subscribe_rows`](crate::EventStore::subscribe_rows));
//! - what a store gives the projection runner ([`ProjectionTarget`],
//!   [`BatchError`]) and how it decodes what a projection handles
//!   ([`decode_handled`]).
//!
//! A store is only a store when it passes the conformance suite
//! (`testing::conformance`, feature `testing`).

use futures::stream::BoxStream;
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{NewEvent, RecordedEvent};
use crate::store::StreamAppend;
use crate::version::StreamId;

mod projection;

pub use crate::limits::{
    check_stream_id, MAX_APPEND_BYTES, MAX_EVENT_TYPE_BYTES, MAX_PAYLOAD_BYTES, MAX_SNAPSHOT_BYTES,
    MAX_STREAM_ID_BYTES,
};
pub use projection::{
    decode_handled, follow_rebuild, unreadable_placeholder, BatchError, FollowError,
    ProjectionTarget,
};

/// Checks one append before it reaches a store: the stream id and every
/// event within the limits of [`crate::limits`], and an event id once.
/// Stores call it, so every store refuses the same shapes.
pub fn check_events(stream_id: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    check_metadata(stream_id, events)?;
    crate::limits::check_append(stream_id, events)?;
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    match events.iter().find(|e| !seen.insert(e.event_id)) {
        Some(dup) => Err(StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: format!("event id {} appears twice in one append", dup.event_id),
        }),
        None => Ok(()),
    }
}

/// Refuses user metadata keys that take a known field's name: stored beside
/// the known fields in one JSON object, they would be stored twice (no
/// longer decodable on PostgreSQL) or read back as that field.
fn check_metadata(stream_id: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    match events
        .iter()
        .find_map(|e| e.metadata.reserved_user_key().map(|key| (e, key)))
    {
        Some((event, key)) => Err(StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason: format!(
                "event {}: the metadata user key `{key}` is reserved for the field of that \
                 name; choose another key",
                event.event_id
            ),
        }),
        None => Ok(()),
    }
}

/// Checks an atomic append before it reaches a store: each stream's part
/// as [`check_events`] does, a stream once, an event id once across all
/// streams.
pub fn check_appends(appends: &[StreamAppend]) -> Result<(), StoreError> {
    // The common append (one stream, a few events) is checked by
    // comparing pairs: building hash sets cost 5 % of an in-memory command.
    const SMALL: usize = 16;
    let events: usize = appends.iter().map(|w| w.events.len()).sum();
    let mut streams =
        (appends.len() > SMALL).then(|| std::collections::HashSet::with_capacity(appends.len()));
    let mut ids = (events > SMALL).then(|| std::collections::HashSet::with_capacity(events));
    for (i, write) in appends.iter().enumerate() {
        crate::limits::check_append(&write.stream_id, &write.events)?;
        let repeated = match &mut streams {
            Some(seen) => !seen.insert(&write.stream_id),
            None => appends[..i].iter().any(|w| w.stream_id == write.stream_id),
        };
        if repeated {
            return Err(StoreError::InvalidAppend {
                stream_id: write.stream_id.clone(),
                reason: "the stream appears twice in one atomic append".into(),
            });
        }
        check_metadata(&write.stream_id, &write.events)?;
        let dup = match &mut ids {
            Some(seen) => write.events.iter().find(|e| !seen.insert(e.event_id)),
            None => write
                .events
                .iter()
                .enumerate()
                .find(|(j, e)| {
                    appends[..i]
                        .iter()
                        .flat_map(|w| &w.events)
                        .chain(&write.events[..*j])
                        .any(|earlier| earlier.event_id == e.event_id)
                })
                .map(|(_, e)| e),
        };
        if let Some(dup) = dup {
            return Err(StoreError::InvalidAppend {
                stream_id: write.stream_id.clone(),
                reason: format!("event id {} appears twice in one append", dup.event_id),
            });
        }
    }
    Ok(())
}

/// One row of the global log, as [`EventStore::subscribe_rows`](crate::EventStore::subscribe_rows) yields it.
#[derive(Debug)]
pub enum LogItem {
    /// An event.
    Event(RecordedEvent),
    /// A row that cannot be read.
    Unreadable(UnreadableEvent),
}

/// A stored row of the global log that cannot be read back (bad metadata,
/// impossible values): where it is, what of it could be read, and why the
/// rest cannot.
#[derive(Debug)]
pub struct UnreadableEvent {
    /// Its global position.
    pub global_position: u64,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version there.
    pub stream_version: u64,
    /// Its event id, if that could be read.
    pub event_id: Option<Uuid>,
    /// Its stored type name, if that could be read.
    pub event_type: Option<String>,
    /// Its schema version, if that could be read.
    pub schema_version: Option<u32>,
    /// Why it cannot be read (usually [`StoreError::Corrupt`]).
    pub error: StoreError,
}

/// A subscription yielding the rows of the global log: see
/// [`EventStore::subscribe_rows`](crate::EventStore::subscribe_rows).
pub type LogStream = BoxStream<'static, Result<LogItem, StoreError>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, Metadata, NewEvent, Payload};

    fn event() -> NewEvent {
        NewEvent::raw(
            "Tested",
            1,
            Payload::from_value(&serde_json::json!({})),
            Metadata::new(),
        )
    }

    fn append(stream: &str, events: Vec<NewEvent>) -> StreamAppend {
        StreamAppend {
            stream_id: StreamId::new(stream),
            expected: ExpectedVersion::Any,
            events,
        }
    }

    fn reason(appends: &[StreamAppend]) -> Option<String> {
        match check_appends(appends) {
            Ok(()) => None,
            Err(StoreError::InvalidAppend { reason, .. }) => Some(reason),
            Err(other) => panic!("expected InvalidAppend, got {other:?}"),
        }
    }

    /// Small appends are checked pair by pair, large ones with hash sets:
    /// both refuse a repeated stream and a repeated event id, within a
    /// stream's events or across streams, and pass distinct ones.
    #[test]
    fn a_stream_or_an_event_id_twice_is_refused_at_every_size() {
        for streams in [1, 2, 3, 17, 40] {
            for per_stream in [1, 2, 9, 20] {
                let distinct: Vec<StreamAppend> = (0..streams)
                    .map(|s| {
                        append(
                            &format!("s-{s}"),
                            (0..per_stream).map(|_| event()).collect(),
                        )
                    })
                    .collect();
                assert_eq!(reason(&distinct), None, "{streams} × {per_stream}");

                let mut same_id = distinct.clone();
                let first = same_id[0].events[0].clone();
                same_id.last_mut().unwrap().events.push(first.clone());
                let said = reason(&same_id).expect("a repeated event id is refused");
                assert!(said.contains(&first.event_id.to_string()), "{said}");

                if streams > 1 {
                    let mut same_stream = distinct.clone();
                    same_stream.last_mut().unwrap().stream_id = StreamId::new("s-0");
                    assert_eq!(
                        reason(&same_stream).as_deref(),
                        Some("the stream appears twice in one atomic append")
                    );
                }
            }
        }
    }
}
