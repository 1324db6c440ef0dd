//! What every store takes and refuses, checked in one place so the
//! in-memory store refuses exactly what PostgreSQL refuses, with the same
//! typed errors, on every operation.
//!
//! | what | limit |
//! |---|---|
//! | stream id | 1 to [`MAX_STREAM_ID_BYTES`] bytes, no NUL character |
//! | event type | 1 to [`MAX_EVENT_TYPE_BYTES`] bytes, no NUL character |
//! | schema version | at most `i32::MAX` |
//! | payload, metadata | at most [`MAX_PAYLOAD_BYTES`] of JSON text each, no NUL character (raw or as `\u0000`) |
//! | one append | at most [`MAX_APPEND_BYTES`] of payloads and metadata |
//! | snapshot state | at most [`MAX_SNAPSHOT_BYTES`], no NUL character |

use crate::error::StoreError;
use crate::event::NewEvent;
use crate::store::{CommandRecord, Snapshot};
use crate::version::StreamId;

/// The longest stream id a store takes, in bytes (PostgreSQL's btree
/// indexes hold at most about 2,700 bytes per entry).
pub const MAX_STREAM_ID_BYTES: usize = 2048;

/// The longest event type name a store takes, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 1024;

/// The largest payload (its JSON text) of one event a store takes, and the
/// largest metadata: 32 MiB. A subscriber holds at most about one page
/// budget plus one such event in memory.
pub const MAX_PAYLOAD_BYTES: usize = 32 * 1024 * 1024;

/// The most payload and metadata bytes one append may hold: 256 MiB
/// (PostgreSQL takes at most 1 GB in one statement).
pub const MAX_APPEND_BYTES: usize = 256 * 1024 * 1024;

/// The largest snapshot state a store takes: 128 MiB (PostgreSQL's `jsonb`
/// holds at most 255 MiB).
pub const MAX_SNAPSHOT_BYTES: usize = 128 * 1024 * 1024;

/// A stream id as error messages show it: quoted, escaped, and cut after
/// 60 characters.
pub(crate) fn shown(id: &str) -> String {
    let mut chars = id.chars();
    let head: String = chars.by_ref().take(60).collect();
    let escaped = head.escape_debug();
    if chars.next().is_some() {
        format!("`{escaped}…` ({} bytes)", id.len())
    } else {
        format!("`{escaped}`")
    }
}

/// Checks a stream id: not empty, no NUL character, at most
/// [`MAX_STREAM_ID_BYTES`] bytes. Stores call it on every operation that
/// names a stream.
pub fn check_stream_id(stream_id: &StreamId) -> Result<(), StoreError> {
    let id = stream_id.as_str();
    let reason = if id.is_empty() {
        "a stream id may not be empty".to_owned()
    } else if id.len() > MAX_STREAM_ID_BYTES {
        format!(
            "a stream id may have at most {MAX_STREAM_ID_BYTES} bytes; this one has {}",
            id.len()
        )
    } else if let Some(at) = id.find('\0') {
        format!("a stream id may not contain a NUL character (one is at byte {at})")
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidStreamId {
        stream_id: stream_id.clone(),
        reason,
    })
}

/// Whether JSON text holds a NUL character, raw or escaped as `\u0000`
/// (PostgreSQL's `jsonb` refuses both).
pub fn json_has_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => return true,
            b'\\' => {
                if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                    return true;
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    false
}

/// Checks one event of an append to `stream_id` (the `index`th, from 0)
/// and returns its size in bytes (payload and metadata).
pub fn check_event(
    stream_id: &StreamId,
    index: usize,
    event: &NewEvent,
) -> Result<usize, StoreError> {
    let invalid = |reason: String| StoreError::InvalidAppend {
        stream_id: stream_id.clone(),
        reason: format!("event {index} ({}): {reason}", event.event_id),
    };
    let event_type = &*event.event_type;
    if event_type.is_empty() {
        return Err(invalid("the event type is empty".into()));
    }
    if event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(invalid(format!(
            "the event type has {} bytes; the limit is {MAX_EVENT_TYPE_BYTES}",
            event_type.len()
        )));
    }
    if event_type.contains('\0') {
        return Err(invalid(format!(
            "the event type {} contains a NUL character",
            shown(event_type)
        )));
    }
    if event.schema_version > i32::MAX as u32 {
        return Err(invalid(format!(
            "schema version {} is above {}",
            event.schema_version,
            i32::MAX
        )));
    }
    let payload = event.payload.as_str();
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(StoreError::PayloadTooLarge {
            stream_id: stream_id.clone(),
            size: payload.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    if json_has_nul(payload) {
        return Err(invalid(
            "the payload contains a NUL character (\\u0000), which stores cannot hold".into(),
        ));
    }
    let metadata = metadata_size(event).map_err(invalid)?;
    Ok(payload.len() + metadata)
}

/// The metadata's size as stored (an upper bound, without serializing it,
/// when it holds no user keys: ids and times have bounded sizes, and the
/// actor at most six bytes per byte once escaped), after checking that it
/// fits and holds no NUL.
fn metadata_size(event: &NewEvent) -> Result<usize, String> {
    let metadata = &event.metadata;
    let actor = metadata.actor.as_deref().unwrap_or("");
    let text;
    let (size, nul) = if metadata.extra.is_empty() {
        // Four ids of 36 characters, two RFC 3339 times, keys and quotes.
        const FIXED: usize = 512;
        (FIXED + 6 * actor.len(), actor.contains('\0'))
    } else {
        text = serde_json::to_string(metadata)
            .map_err(|e| format!("the metadata does not serialize: {e}"))?;
        (text.len(), json_has_nul(&text))
    };
    if size > MAX_PAYLOAD_BYTES {
        // The bound may overstate a long actor: measure before refusing.
        let exact = serde_json::to_string(metadata)
            .map_err(|e| format!("the metadata does not serialize: {e}"))?
            .len();
        if exact > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "the metadata has {exact} bytes; the limit is {MAX_PAYLOAD_BYTES}"
            ));
        }
        return Ok(exact);
    }
    if nul {
        return Err("the metadata contains a NUL character, which stores cannot hold".into());
    }
    Ok(size)
}

/// Checks what one append to one stream may hold: its stream id, each
/// event, and the append's total size.
pub fn check_append(stream_id: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    check_stream_id(stream_id)?;
    // The payloads alone may be too many already: say so before reading them.
    let payloads = events
        .iter()
        .fold(0usize, |sum, e| sum.saturating_add(e.payload.len()));
    if payloads > MAX_APPEND_BYTES {
        return Err(StoreError::AppendTooLarge {
            stream_id: stream_id.clone(),
            size: payloads,
            limit: MAX_APPEND_BYTES,
        });
    }
    let mut size = 0usize;
    for (index, event) in events.iter().enumerate() {
        size = size.saturating_add(check_event(stream_id, index, event)?);
    }
    if size > MAX_APPEND_BYTES {
        return Err(StoreError::AppendTooLarge {
            stream_id: stream_id.clone(),
            size,
            limit: MAX_APPEND_BYTES,
        });
    }
    Ok(())
}

/// Checks a snapshot before it is stored.
pub fn check_snapshot(stream_id: &StreamId, snapshot: &Snapshot) -> Result<(), StoreError> {
    check_stream_id(stream_id)?;
    let invalid = |reason: String| StoreError::InvalidAppend {
        stream_id: stream_id.clone(),
        reason: format!("snapshot at version {}: {reason}", snapshot.version),
    };
    let state = snapshot.state.as_str();
    if state.len() > MAX_SNAPSHOT_BYTES {
        return Err(StoreError::PayloadTooLarge {
            stream_id: stream_id.clone(),
            size: state.len(),
            limit: MAX_SNAPSHOT_BYTES,
        });
    }
    if json_has_nul(state) {
        return Err(invalid("the state contains a NUL character".into()));
    }
    if snapshot.schema_version > i32::MAX as u32 {
        return Err(invalid(format!(
            "schema version {} is above {}",
            snapshot.schema_version,
            i32::MAX
        )));
    }
    if snapshot.version > i64::MAX as u64 {
        return Err(invalid(format!(
            "version {} is above {}",
            snapshot.version,
            i64::MAX
        )));
    }
    Ok(())
}

/// Checks a command record (and a rejection's error text) before it is
/// stored with an append or in the journal.
pub fn check_command(
    stream_id: &StreamId,
    command: &CommandRecord,
    error: Option<&str>,
) -> Result<(), StoreError> {
    check_stream_id(stream_id)?;
    let invalid = |reason: String| StoreError::InvalidAppend {
        stream_id: stream_id.clone(),
        reason: format!("command {}: {reason}", command.command_id),
    };
    if command.command_type.contains('\0') || error.is_some_and(|e| e.contains('\0')) {
        return Err(invalid(
            "its type or error text contains a NUL character".into(),
        ));
    }
    if let Some(payload) = &command.payload {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(StoreError::PayloadTooLarge {
                stream_id: stream_id.clone(),
                size: payload.len(),
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        if json_has_nul(payload.as_str()) {
            return Err(invalid("its payload contains a NUL character".into()));
        }
    }
    let metadata = serde_json::to_string(&command.metadata)
        .map_err(|e| invalid(format!("its metadata does not serialize: {e}")))?;
    if json_has_nul(&metadata) {
        return Err(invalid("its metadata contains a NUL character".into()));
    }
    Ok(())
}

/// Checks that events read from a stream from `from_version` on are that
/// stream's versions `from_version, from_version + 1, …` without a hole.
/// `versions` are the versions read, in order; `current`, when known, is
/// the stream's version: a read that stops short of it (fewer than `limit`
/// events) is missing its tail.
pub fn check_versions(
    stream_id: &StreamId,
    from_version: u64,
    limit: usize,
    versions: impl IntoIterator<Item = u64>,
    current: Option<u64>,
) -> Result<(), StoreError> {
    let first = from_version.max(1);
    let mut expected = first;
    for version in versions {
        if version != expected {
            return Err(StoreError::MissingVersion {
                stream_id: stream_id.clone(),
                missing: expected,
                found: Some(version),
            });
        }
        expected += 1;
    }
    if let Some(current) = current {
        if ((expected - first) as usize) < limit && expected <= current {
            return Err(StoreError::MissingVersion {
                stream_id: stream_id.clone(),
                missing: expected,
                found: None,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_only_where_they_are_escapes() {
        assert!(json_has_nul(r#"{"a":"\u0000"}"#));
        assert!(json_has_nul("{\"a\":\"\0\"}"));
        assert!(!json_has_nul(r#"{"a":"\\u0000"}"#));
        assert!(json_has_nul(r#"{"a":"\\\u0000"}"#));
        assert!(!json_has_nul(r#"{"a":"\u0001"}"#));
        assert!(!json_has_nul(r#"{"a":"\"u0000"}"#));
    }

    #[test]
    fn long_ids_are_cut_in_messages() {
        assert_eq!(shown("a\0b"), "`a\\0b`");
        let long = "x".repeat(100);
        assert_eq!(shown(&long), format!("`{}…` (100 bytes)", "x".repeat(60)));
    }
}
