//! The set-based append: several streams in one statement (one row per
//! stream in the `streams` upsert, every event in one insert), used by
//! group commit's batches and by `append_ordered_in` / `append_copy_in`,
//! which keep the order they are given.

use evently_core::{ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamAppend, StreamId};
use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::query::Query;
use sqlx::{Postgres, Row};

use crate::append::{expected_arg, recorded};
use crate::error::unavailable_or_backend;
use crate::PgEventStore;

/// The arrays `Queries::append_set` takes: one entry per append (stream,
/// expectation, count) and one per event (its append, its index in it, its
/// columns).
pub(crate) struct SetArgs<'a> {
    streams: Vec<&'a str>,
    kinds: Vec<i16>,
    expected: Vec<i64>,
    counts: Vec<i32>,
    owners: Vec<i32>,
    ks: Vec<i32>,
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    payloads: Vec<&'a str>,
    metadata: Vec<&'a str>,
}

impl<'a> SetArgs<'a> {
    pub(crate) fn with_capacity(appends: usize, events: usize) -> Self {
        SetArgs {
            streams: Vec::with_capacity(appends),
            kinds: Vec::with_capacity(appends),
            expected: Vec::with_capacity(appends),
            counts: Vec::with_capacity(appends),
            owners: Vec::with_capacity(events),
            ks: Vec::with_capacity(events),
            ids: Vec::with_capacity(events),
            types: Vec::with_capacity(events),
            versions: Vec::with_capacity(events),
            payloads: Vec::with_capacity(events),
            metadata: Vec::with_capacity(events),
        }
    }

    /// Adds one append, its events' metadata already serialized.
    pub(crate) fn push(
        &mut self,
        stream_id: &'a StreamId,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
        metadata: &'a [String],
    ) {
        let (kind, version) = expected_arg(expected);
        self.streams.push(stream_id.as_str());
        self.kinds.push(kind);
        self.expected.push(version);
        self.counts.push(events.len() as i32);
        let owner = self.streams.len() as i32;
        for (k, (e, m)) in events.iter().zip(metadata).enumerate() {
            self.owners.push(owner);
            self.ks.push(k as i32 + 1);
            self.ids.push(e.event_id);
            self.types.push(&e.event_type);
            // Checked by `check_events` before the append got here.
            self.versions
                .push(i32::try_from(e.schema_version).unwrap_or(i32::MAX));
            self.payloads.push(e.payload.as_str());
            self.metadata.push(m.as_str());
        }
    }

    /// Binds the eleven arrays, in the statement's order.
    pub(crate) fn bind(
        &'a self,
        query: Query<'a, Postgres, PgArguments>,
    ) -> Query<'a, Postgres, PgArguments> {
        query
            .bind(&self.streams)
            .bind(&self.kinds)
            .bind(&self.expected)
            .bind(&self.counts)
            .bind(&self.owners)
            .bind(&self.ks)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
    }
}

impl PgEventStore {
    /// Appends to several streams in one statement inside the caller's
    /// transaction, with global positions in the order the appends are
    /// given (`append_atomic_in` writes its streams in lock order). For
    /// copying a log in its order (`es import`) and other bulk writes:
    /// each stream at most once, and one call per transaction (its
    /// positions start at the transaction's base). When an append's
    /// expectation fails, it returns [`StoreError::WrongExpectedVersion`]
    /// for the first such append, and the caller must roll back (the
    /// appends that held are written in its transaction). Inline
    /// projections do not run on these events.
    pub async fn append_ordered_in(
        &self,
        conn: &mut PgConnection,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.write_ordered(conn, appends, None).await
    }

    /// [`PgEventStore::append_ordered_in`] for a copy of another log: each
    /// event keeps its recording time, `recorded_at[i]` for the `i`-th
    /// event of the appends in order (instead of the transaction's time).
    pub async fn append_copy_in(
        &self,
        conn: &mut PgConnection,
        appends: Vec<StreamAppend>,
        recorded_at: &[chrono::DateTime<chrono::Utc>],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events: usize = appends.iter().map(|a| a.events.len()).sum();
        if recorded_at.len() != events {
            return Err(StoreError::InvalidAppend {
                stream_id: appends
                    .first()
                    .map(|a| a.stream_id.clone())
                    .unwrap_or_else(|| StreamId::from("")),
                reason: format!("{} recording times for {events} events", recorded_at.len()),
            });
        }
        self.write_ordered(conn, appends, Some(recorded_at)).await
    }

    async fn write_ordered(
        &self,
        conn: &mut PgConnection,
        appends: Vec<StreamAppend>,
        recorded_at: Option<&[chrono::DateTime<chrono::Utc>]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::backend::check_appends(&appends)?;
        let total: usize = appends.iter().map(|a| a.events.len()).sum();
        let metadata = appends
            .iter()
            .map(|a| {
                a.events
                    .iter()
                    .map(|e| {
                        serde_json::to_string(&e.metadata).map_err(|err| {
                            StoreError::InvalidAppend {
                                stream_id: a.stream_id.clone(),
                                reason: format!("metadata does not serialize: {err}"),
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut args = SetArgs::with_capacity(appends.len(), total);
        for (a, m) in appends.iter().zip(&metadata) {
            args.push(&a.stream_id, a.expected, &a.events, m);
        }
        let query = args.bind(match recorded_at {
            None => sqlx::query(&self.inner.queries.append_set),
            Some(_) => sqlx::query(&self.inner.queries.append_set_at),
        });
        let query = match recorded_at {
            None => query,
            Some(times) => query.bind(times),
        };
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable_or_backend)?;
        let mut stored: Vec<Vec<(i64, i64, chrono::DateTime<chrono::Utc>)>> =
            vec![Vec::new(); appends.len()];
        for row in &rows {
            let index: i32 = row.try_get(0).map_err(unavailable_or_backend)?;
            let slot = usize::try_from(index - 1)
                .ok()
                .and_then(|i| stored.get_mut(i))
                .ok_or_else(|| {
                    StoreError::Backend(format!("a row names no append: {index}").into())
                })?;
            slot.push((
                row.try_get(1).map_err(unavailable_or_backend)?,
                row.try_get(2).map_err(unavailable_or_backend)?,
                row.try_get(3).map_err(unavailable_or_backend)?,
            ));
        }
        let mut recorded = Vec::with_capacity(total);
        for (append, rows) in appends.into_iter().zip(stored) {
            if rows.len() != append.events.len() {
                let actual: Option<i64> = sqlx::query_scalar(&self.inner.queries.stream_version)
                    .bind(append.stream_id.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable_or_backend)?;
                let actual = actual.unwrap_or(0) as u64;
                let held = match append.expected {
                    ExpectedVersion::Any => true,
                    ExpectedVersion::NoStream => actual == 0,
                    ExpectedVersion::StreamExists => actual > 0,
                    ExpectedVersion::Exact(v) => actual == v,
                };
                return Err(if held {
                    StoreError::InvalidAppend {
                        stream_id: append.stream_id,
                        reason:
                            "an event id of this append is already stored, or the stream is closed"
                                .into(),
                    }
                } else {
                    StoreError::WrongExpectedVersion {
                        stream_id: append.stream_id,
                        expected: append.expected,
                        actual,
                    }
                });
            }
            for (e, (position, version, at)) in append.events.into_iter().zip(rows) {
                recorded.push(self::recorded(&append.stream_id, e, position, version, at));
            }
        }
        recorded.sort_by_key(|e| e.global_position);
        self.announce_in(conn, &recorded).await?;
        Ok(recorded)
    }
}
