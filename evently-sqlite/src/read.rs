//! The lean read a fold loads with: the columns folding needs, borrowed
//! from each row as it arrives.

use evently_core::{EventData, StoreError, StreamId};
use futures::TryStreamExt;
use sqlx::Row;

use crate::{error, SqliteEventStore};

/// A stream's events from a version on, with what a fold needs; the last
/// column (the stream's version, the same on every row: SQLite evaluates
/// the uncorrelated sub-query once) finds a hole at the end. Only an event
/// whose payload is `{}` can be erased, so only its metadata is parsed.
const FOLD: &str = "SELECT stream_version, position, event_type, schema_version, payload, \
     CASE WHEN payload = '{}' THEN json_extract(metadata, '$.erased_at') IS NOT NULL ELSE 0 END, \
     (SELECT version FROM streams WHERE stream_id = ?1) \
     FROM events WHERE stream_id = ?1 AND stream_version >= ?2 ORDER BY stream_version";

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
            {
                let mut rows = sqlx::query(FOLD)
                    .bind(stream_id.as_str())
                    .bind(first.min(i64::MAX as u64) as i64)
                    .fetch(self.pool());
                while let Some(row) = rows.try_next().await.map_err(error::store)? {
                    let version = row.try_get_unchecked::<i64, _>(0).map_err(error::store)? as u64;
                    if version != expected {
                        return Err(StoreError::MissingVersion {
                            stream_id: stream_id.clone(),
                            missing: expected,
                            found: Some(version),
                        }
                        .into());
                    }
                    expected += 1;
                    let corrupt = |e: sqlx::Error| StoreError::Corrupt {
                        stream_id: stream_id.clone(),
                        stream_version: version,
                        reason: e.to_string(),
                    };
                    let position: i64 = row.try_get_unchecked(1).map_err(corrupt)?;
                    let event_type: &str = row.try_get_unchecked(2).map_err(corrupt)?;
                    let schema_version: i64 = row.try_get_unchecked(3).map_err(corrupt)?;
                    let payload: &str = row.try_get_unchecked(4).map_err(corrupt)?;
                    let erased: bool = row.try_get_unchecked(5).map_err(corrupt)?;
                    head = row
                        .try_get_unchecked::<Option<i64>, _>(6)
                        .map_err(error::store)?;
                    let schema_version =
                        u32::try_from(schema_version).map_err(|_| StoreError::Corrupt {
                            stream_id: stream_id.clone(),
                            stream_version: version,
                            reason: format!("schema version {schema_version} out of range"),
                        })?;
                    f(EventData::new(
                        version,
                        position as u64,
                        event_type,
                        schema_version,
                        payload,
                    )
                    .with_erased(erased))?;
                }
            }
            // No row: the stream is empty from there, unless its version (read
            // now, after the rows) says events should be there. One statement
            // is one snapshot, so a stream whose first append committed after
            // it is read again once rather than reported as missing events.
            let head = match head {
                Some(head) => head as u64,
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
