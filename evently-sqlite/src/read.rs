//! The lean read a fold loads with: what folding needs, borrowed from
//! each row as it arrives.

use evently_core::{EventData, StoreError, StreamId};
use futures::TryStreamExt;
use sqlx::Row;

use crate::{error, SqliteEventStore};

/// A stream's events from a version on, with what a fold needs, in one
/// text column per row: `"<version> <position> <schema version> <type's
/// length in bytes> <type><payload>"`. sqlx copies each value of a row on
/// its own, and on a long read that copy, not SQLite, is the cost: the
/// five columns this replaced read half as fast as this one (10,000
/// events: 28.5 ms against 13.1 ms a load, median of twelve, interleaved).
/// The second column, on the first row only, is the stream's version (to
/// find a hole at the end) times two, plus one if the stream was erased
/// (erasure is of a whole stream and closes it, so its first event tells).
const FOLD: &str = "SELECT stream_version || ' ' || position || ' ' || schema_version || ' ' || \
     length(CAST(event_type AS BLOB)) || ' ' || event_type || payload, \
     CASE WHEN stream_version = ?2 THEN \
       (SELECT version FROM streams WHERE stream_id = ?1) * 2 \
       + (json_extract(metadata, '$.erased_at') IS NOT NULL) END \
     FROM events WHERE stream_id = ?1 AND stream_version >= ?2 ORDER BY stream_version";

/// One row of [`FOLD`]: version, position, schema version, type, payload.
fn unpack(packed: &str) -> Option<(u64, u64, u32, &str, &str)> {
    let mut parts = packed.splitn(5, ' ');
    let version = parts.next()?.parse().ok()?;
    let position = parts.next()?.parse().ok()?;
    let schema_version = parts.next()?.parse().ok()?;
    let type_length: usize = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    if !rest.is_char_boundary(type_length) {
        return None;
    }
    let (event_type, payload) = rest.split_at(type_length);
    Some((version, position, schema_version, event_type, payload))
}

impl SqliteEventStore {
    /// [`evently_core::EventStore::fold_stream`]: one query for the rest of
    /// the stream, no id, no metadata, no copy of the payload; a hole in
    /// the middle or at the end is `MissingVersion`.
    pub(crate) async fn fold_rows<E, F>(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        mut f: F,
    ) -> Result<(), E>
    where
        E: From<StoreError> + Send,
        F: FnMut(EventData<'_>) -> Result<(), E> + Send,
    {
        evently_core::backend::check_stream_id(stream_id)?;
        let first = from_version.max(1);
        let mut looked_again = false;
        loop {
            let mut expected = first;
            let mut head = None;
            let mut erased = false;
            {
                let mut rows = sqlx::query(FOLD)
                    .bind(stream_id.as_str())
                    .bind(first.min(i64::MAX as u64) as i64)
                    .fetch(self.pool());
                while let Some(row) = rows.try_next().await.map_err(error::store)? {
                    let packed: &str = row.try_get_unchecked(0).map_err(error::store)?;
                    let Some((version, position, schema_version, event_type, payload)) =
                        unpack(packed)
                    else {
                        return Err(StoreError::Corrupt {
                            stream_id: stream_id.clone(),
                            stream_version: expected,
                            reason: format!(
                                "a row of the stream does not read: {:?}",
                                packed.chars().take(80).collect::<String>()
                            ),
                        }
                        .into());
                    };
                    if version != expected {
                        return Err(StoreError::MissingVersion {
                            stream_id: stream_id.clone(),
                            missing: expected,
                            found: Some(version),
                        }
                        .into());
                    }
                    expected += 1;
                    if let Some(first_row) = row
                        .try_get_unchecked::<Option<i64>, _>(1)
                        .map_err(error::store)?
                    {
                        head = Some((first_row >> 1) as u64);
                        erased = first_row & 1 == 1;
                    }
                    f(
                        EventData::new(version, position, event_type, schema_version, payload)
                            .with_erased(erased),
                    )?;
                }
            }
            // No row: the stream is empty from there, unless its version
            // (read now, after the rows) says events should be there. One
            // statement is one snapshot, so a stream whose first append
            // committed after it is read again once rather than reported
            // as missing events.
            let head = match head {
                Some(head) => head,
                None if expected == first => {
                    let version = self.stream_version_of(stream_id).await?;
                    if version >= first && !looked_again {
                        looked_again = true;
                        continue;
                    }
                    version
                }
                None => 0,
            };
            if expected <= head {
                return Err(StoreError::MissingVersion {
                    stream_id: stream_id.clone(),
                    missing: expected,
                    found: None,
                }
                .into());
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unpack;

    #[test]
    fn a_packed_row_unpacks_with_spaces_and_unicode_in_type_and_payload() {
        assert_eq!(
            unpack(r#"7 42 2 9 Ünit typ{"a":"b c"}"#),
            Some((7, 42, 2, "Ünit typ", r#"{"a":"b c"}"#))
        );
        assert_eq!(unpack("7 42 2 99 short{}"), None);
        assert_eq!(unpack("7 x 2 1 E{}"), None);
        assert_eq!(unpack("7 42 2 1 Ü{}"), None, "a length inside a character");
    }
}
