//! Reads: one stream, the global log (waiting for this handle's own
//! appends first), pages for subscriptions, correlations, snapshots; and
//! the rows of the events table as recorded events.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use evently_core::{EventData, Metadata, Payload, RecordedEvent, Snapshot, StoreError, StreamId};
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::error::unavailable_or_backend;
use crate::PgEventStore;

impl PgEventStore {
    /// Reads the readable part of the global log, without waiting.
    pub(crate) async fn read_log(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (events, bad) = self.read_log_until_bad(from_position, limit).await?;
        match bad {
            Some(bad) => Err(bad.error),
            None => Ok(events),
        }
    }

    /// Reads the readable part of the global log, without waiting: the
    /// events before the first row that cannot be read, and that row.
    pub(crate) async fn read_log_until_bad(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<
        (
            Vec<RecordedEvent>,
            Option<evently_core::backend::UnreadableEvent>,
        ),
        StoreError,
    > {
        let rows = sqlx::query(&self.inner.queries.read_all)
            .bind(to_i64(from_position))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            match recorded_from_row(row) {
                Ok(event) => events.push(event),
                Err(error) => return Ok((events, Some(unreadable_from_row(row, error)?))),
            }
        }
        Ok((events, None))
    }

    /// [`PgEventStore::read_log_until_bad`] for subscriptions: at most
    /// `limit` events and about `max_bytes` of payloads and metadata (at
    /// least one event), so a page of large events stays small. The server
    /// sends about that many (by stored size); the client stops reading at
    /// the budget.
    pub(crate) async fn read_page_until_bad(
        &self,
        from_position: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<
        (
            Vec<RecordedEvent>,
            Option<evently_core::backend::UnreadableEvent>,
        ),
        StoreError,
    > {
        use futures::TryStreamExt;
        let mut rows = sqlx::query(&self.inner.queries.read_page)
            .bind(to_i64(from_position))
            .bind(to_i64(limit as u64))
            .bind(to_i64(max_bytes as u64))
            .fetch(&self.inner.pool);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await.map_err(unavailable_or_backend)? {
            match recorded_from_row(&row) {
                Ok(event) => {
                    bytes += event.data.len()
                        + row
                            .try_get_raw(7)
                            .map_or(0, |v| v.as_bytes().map_or(0, <[u8]>::len));
                    events.push(event);
                    if bytes >= max_bytes {
                        break;
                    }
                }
                Err(error) => return Ok((events, Some(unreadable_from_row(&row, error)?))),
            }
        }
        Ok((events, None))
    }

    /// Waits until this handle's own appends are readable (bounded). Asks
    /// the server only while an own append has not yet been seen readable,
    /// and then with back-off (2 ms, doubling to 100 ms): a transaction
    /// left open elsewhere costs a waiting read a few dozen queries, not
    /// thousands, and later reads none.
    pub(crate) async fn await_own_writes(&self) -> Result<(), StoreError> {
        let own = self.inner.last_appended.load(Ordering::Relaxed);
        if own <= self.inner.own_readable.load(Ordering::Relaxed) {
            return Ok(());
        }
        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let bound: i64 = sqlx::query_scalar(&self.inner.queries.readable_bound)
                .fetch_one(&self.inner.pool)
                .await
                .map_err(unavailable_or_backend)?;
            if bound as u64 > own {
                self.inner.own_readable.fetch_max(own, Ordering::Relaxed);
                return Ok(());
            }
            if started.elapsed() >= self.inner.options.read_your_writes_timeout {
                tracing::warn!(
                    schema = %self.inner.queries.schema,
                    own_position = own,
                    "own appends are still not readable: an older transaction is open \
                     (see PgEventStore::status); reading what is readable"
                );
                // Waited once: later reads do not wait again for the same
                // appends, so one transaction left open elsewhere does not
                // make every read of this handle slow.
                self.inner.own_readable.fetch_max(own, Ordering::Relaxed);
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// [`evently_core::EventStore::read_stream`], its stream id checked.
    pub(crate) async fn fetch_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&self.inner.queries.read_stream)
            .bind(stream_id.as_str())
            .bind(to_i64(from_version))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        // Every row carries the stream's version; with no event read, one
        // row carries only that (no row: no stream).
        let head: Option<i64> = match rows.first() {
            Some(row) => row.try_get(9).map_err(unavailable_or_backend)?,
            None => None,
        };
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            if row
                .try_get::<Option<i64>, _>(0)
                .map_err(unavailable_or_backend)?
                .is_some()
            {
                events.push(recorded_from_row(row)?);
            }
        }
        evently_core::limits::check_versions(
            stream_id,
            from_version,
            limit,
            events.iter().map(|e| e.stream_version),
            head.map(|v| v as u64),
        )?;
        Ok(events)
    }

    /// [`evently_core::EventStore::fold_stream`]: one query for the whole rest
    /// of the stream, its rows handed to `f` as they arrive (memory stays
    /// one row, whatever the stream's length), with the columns a fold
    /// needs borrowed from the row: no id, no metadata parse (only whether
    /// the stream was erased). Each row also carries the stream's version,
    /// so a hole in the middle or at the end is `MissingVersion`.
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
        // A stream created between the read that found no row and the
        // version read after it (its first append committing in between)
        // is read once more, not reported as missing its events.
        let mut looked_again = false;
        'read: loop {
            let mut expected = first;
            let mut head = None;
            let mut rows = sqlx::query(&self.inner.queries.fold_stream)
                .bind(stream_id.as_str())
                .bind(to_i64(first))
                .bind(i64::MAX)
                .fetch(&self.inner.pool);
            while let Some(row) = rows.try_next().await.map_err(unavailable_or_backend)? {
                // The columns' types are this module's own query's: read
                // without sqlx's per-value type check (a wrong value is still
                // an error, not undefined behaviour).
                let version: i64 = row.try_get_unchecked(0).map_err(unavailable_or_backend)?;
                let version = version as u64;
                if version != expected {
                    return Err(StoreError::MissingVersion {
                        stream_id: stream_id.clone(),
                        missing: expected,
                        found: Some(version),
                    }
                    .into());
                }
                expected += 1;
                let corrupt = |reason: String| StoreError::Corrupt {
                    stream_id: stream_id.clone(),
                    stream_version: version,
                    reason,
                };
                let position: i64 = row
                    .try_get_unchecked(1)
                    .map_err(|e| corrupt(e.to_string()))?;
                let event_type: &str = row
                    .try_get_unchecked(2)
                    .map_err(|e| corrupt(e.to_string()))?;
                let schema_version: i32 = row
                    .try_get_unchecked(3)
                    .map_err(|e| corrupt(e.to_string()))?;
                let payload: &str = row
                    .try_get_unchecked(4)
                    .map_err(|e| corrupt(e.to_string()))?;
                let erased: bool = row
                    .try_get_unchecked(5)
                    .map_err(|e| corrupt(e.to_string()))?;
                head = row
                    .try_get_unchecked::<Option<i64>, _>(6)
                    .map_err(unavailable_or_backend)?;
                let schema_version = u32::try_from(schema_version)
                    .map_err(|_| corrupt(format!("negative schema version {schema_version}")))?;
                f(EventData::new(
                    version,
                    position as u64,
                    event_type,
                    schema_version,
                    payload,
                )
                .with_erased(erased))?;
            }
            drop(rows);
            // No row: the stream is empty from there, unless its version says
            // events should be there.
            let head = match head {
                Some(head) => Some(head as u64),
                None if expected == first => {
                    let version = self.fetch_stream_version(stream_id).await?;
                    if version >= first && !looked_again {
                        looked_again = true;
                        continue 'read;
                    }
                    Some(version)
                }
                None => None,
            };
            if let Some(head) = head {
                if expected <= head {
                    return Err(StoreError::MissingVersion {
                        stream_id: stream_id.clone(),
                        missing: expected,
                        found: None,
                    }
                    .into());
                }
            }
            return Ok(());
        }
    }

    /// [`evently_core::EventStore::read_correlation`].
    pub(crate) async fn fetch_correlation(
        &self,
        correlation_id: uuid::Uuid,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.await_own_writes().await?;
        let rows = sqlx::query(&self.inner.queries.read_correlation)
            .bind(correlation_id.to_string())
            .bind(to_i64(from_position))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        rows.iter().map(recorded_from_row).collect()
    }

    /// [`evently_core::EventStore::stream_version`], its stream id checked.
    pub(crate) async fn fetch_stream_version(
        &self,
        stream_id: &StreamId,
    ) -> Result<u64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(&self.inner.queries.stream_version)
            .bind(stream_id.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        Ok(version.unwrap_or(0) as u64)
    }

    /// [`evently_core::EventStore::head_position`].
    pub(crate) async fn fetch_head(&self) -> Result<u64, StoreError> {
        self.await_own_writes().await?;
        let head: i64 = sqlx::query_scalar(&self.inner.queries.head_position)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        Ok(head as u64)
    }

    /// [`evently_core::EventStore::load_snapshot`], its stream id checked.
    pub(crate) async fn fetch_snapshot(
        &self,
        stream_id: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(&self.inner.queries.load_snapshot)
            .bind(stream_id.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        let Some(row) = row else { return Ok(None) };
        let corrupt = |e: sqlx::Error| StoreError::Corrupt {
            stream_id: stream_id.clone(),
            stream_version: 0,
            reason: format!("unreadable snapshot row: {e}"),
        };
        let version: i64 = row.try_get(0).map_err(corrupt)?;
        let schema_version: i32 = row.try_get(1).map_err(corrupt)?;
        let state: String = row.try_get(2).map_err(corrupt)?;
        Ok(Some(Snapshot {
            version: version as u64,
            schema_version: schema_version as u32,
            state: Payload::from_json_unchecked(state),
            taken_at: row.try_get(3).map_err(corrupt)?,
        }))
    }

    /// [`evently_core::EventStore::save_snapshot`], the snapshot checked.
    pub(crate) async fn store_snapshot(
        &self,
        stream_id: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        sqlx::query(&self.inner.queries.save_snapshot)
            .bind(stream_id.as_str())
            .bind(to_i64(snapshot.version))
            .bind(snapshot.schema_version as i32)
            .bind(snapshot.state.as_str())
            .bind(snapshot.taken_at)
            .execute(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        Ok(())
    }
}

/// Reads one row of the events table; a row that cannot be read is a
/// `Corrupt` error naming its stream and version.
pub(crate) fn recorded_from_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let stream_id: String = row.try_get(2).map_err(unavailable_or_backend)?;
    let stream_id = StreamId::from(stream_id);
    let stream_version: i64 = row.try_get(3).map_err(unavailable_or_backend)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        stream_id: stream_id.clone(),
        stream_version: stream_version as u64,
        reason,
    };
    let position: i64 = row.try_get(0).map_err(|e| corrupt(e.to_string()))?;
    let schema_version: i32 = row.try_get(5).map_err(|e| corrupt(e.to_string()))?;
    let payload: String = row.try_get(6).map_err(|e| corrupt(e.to_string()))?;
    let metadata: String = row.try_get(7).map_err(|e| corrupt(e.to_string()))?;
    let metadata: Metadata = serde_json::from_str(&metadata)
        .map_err(|e| corrupt(format!("metadata does not decode: {e}")))?;
    let event_type: String = row.try_get(4).map_err(|e| corrupt(e.to_string()))?;
    Ok(RecordedEvent {
        event_id: row.try_get(1).map_err(|e| corrupt(e.to_string()))?,
        stream_version: stream_version as u64,
        global_position: position as u64,
        event_type: event_type.into(),
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(format!("negative schema version {schema_version}")))?,
        data: Payload::from_json_unchecked(payload),
        metadata,
        recorded_at: row.try_get(8).map_err(|e| corrupt(e.to_string()))?,
        stream_id,
    })
}

/// What can be read of a row of the events table that `recorded_from_row`
/// refused with `error`; the error itself when not even its position reads.
fn unreadable_from_row(
    row: &PgRow,
    error: StoreError,
) -> Result<evently_core::backend::UnreadableEvent, StoreError> {
    let (Ok(position), Ok(stream_id), Ok(stream_version)) = (
        row.try_get::<i64, _>(0),
        row.try_get::<String, _>(2),
        row.try_get::<i64, _>(3),
    ) else {
        return Err(error);
    };
    Ok(evently_core::backend::UnreadableEvent {
        global_position: position as u64,
        stream_id: StreamId::from(stream_id),
        stream_version: stream_version as u64,
        event_id: row.try_get(1).ok(),
        event_type: row.try_get(4).ok(),
        schema_version: row
            .try_get::<i32, _>(5)
            .ok()
            .and_then(|v| u32::try_from(v).ok()),
        error,
    })
}

/// A count or position as PostgreSQL's `bigint`, saturating.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
