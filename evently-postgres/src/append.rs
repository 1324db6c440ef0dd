//! Appends. Every append goes through one core, [`PgEventStore::write`]:
//! it validates the append's arguments, runs `append_events(...)` on a
//! connection, reads the recorded events and applies the inline
//! projections (in the append's transaction). What follows depends only on
//! who commits:
//!
//! - the store commits (`append`, `append_for_command`, `append_atomic`,
//!   group commit): then [`PgEventStore::after_commit`] records the last
//!   position (for read-your-writes) and wakes the notifier;
//! - the caller commits (`append_in`, `append_atomic_in`): then
//!   [`PgEventStore::announce_in`] queues a NOTIFY in the caller's
//!   transaction and records the last position.

use std::sync::atomic::Ordering;

use evently_core::{
    CommandRecord, ExpectedVersion, NewEvent, Payload, RecordedEvent, StoreError, StreamAppend,
    StreamId,
};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use crate::error::{append_error, is_transient, is_unique_violation, unavailable_or_backend};
use crate::queries::{Queries, NOTIFY};
use crate::{group, PgEventStore};

/// Whether [`PgEventStore::write`] may send its statement again after a
/// concurrent append stored one of its ids: only outside a transaction,
/// where a failed statement aborts nothing else.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The statement runs in an implicit transaction of its own.
    Alone,
    /// The statement runs inside a transaction.
    InTransaction,
}

impl PgEventStore {
    /// Appends inside the caller's transaction: the events and the caller's
    /// own writes commit together or not at all. Versions and positions
    /// are final when the caller commits; subscribers see the events then.
    ///
    /// ```no_run
    /// # async fn run(store: evently_postgres::PgEventStore, events: Vec<evently_core::NewEvent>) -> Result<(), Box<dyn std::error::Error>> {
    /// use evently_core::{ExpectedVersion, StreamId};
    ///
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO outbox (note) VALUES ('sent')").execute(&mut *tx).await?;
    /// store.append_in(&mut tx, &StreamId::from("order-7"), ExpectedVersion::Any, events).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::backend::check_events(stream_id, &events)?;
        let recorded = self
            .write(
                &mut *conn,
                stream_id,
                expected,
                events,
                None,
                Retry::InTransaction,
            )
            .await?;
        self.announce_in(conn, &recorded).await?;
        Ok(recorded)
    }

    /// [`EventStore::append_atomic`](evently_core::EventStore::append_atomic)
    /// inside the caller's transaction.
    pub async fn append_atomic_in(
        &self,
        conn: &mut PgConnection,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        let results = self.write_atomic(&mut *conn, appends).await?;
        self.announce_in(conn, &results.concat()).await?;
        Ok(results)
    }

    /// `append` and `append_for_command` (their command checked): through
    /// the group-commit queue when it takes the append, else on its own.
    pub(crate) async fn append_pooled(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command: Option<&CommandRecord>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        evently_core::backend::check_events(stream_id, &events)?;
        match &self.inner.group {
            // Inline projections write in the append's transaction, and a
            // command record goes with its append: neither joins a batch.
            Some(queue)
                if self.inner.inline.is_empty()
                    && command.is_none()
                    && events.iter().map(|e| e.payload.len()).sum::<usize>()
                        <= group::MAX_GROUPED_BYTES =>
            {
                group::append(queue, stream_id, expected, events).await
            }
            _ => {
                self.append_alone(stream_id, expected, events, command)
                    .await
            }
        }
    }

    /// One append in a transaction of its own, committed, then the
    /// after-commit step. Without inline projections it is one statement
    /// in an implicit transaction (one round trip), sent again when a
    /// concurrent append stored one of its ids; with them, the projections
    /// write in an explicit transaction around it.
    pub(crate) async fn append_alone(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command: Option<&CommandRecord>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let recorded = if self.inner.inline.is_empty() {
            let mut conn = self
                .inner
                .pool
                .acquire()
                .await
                .map_err(unavailable_or_backend)?;
            self.write(
                &mut conn,
                stream_id,
                expected,
                events,
                command,
                Retry::Alone,
            )
            .await?
        } else {
            let mut tx = self
                .inner
                .pool
                .begin()
                .await
                .map_err(unavailable_or_backend)?;
            let recorded = self
                .write(
                    &mut tx,
                    stream_id,
                    expected,
                    events,
                    command,
                    Retry::InTransaction,
                )
                .await?;
            tx.commit().await.map_err(unavailable_or_backend)?;
            recorded
        };
        self.after_commit(&recorded);
        Ok(recorded)
    }

    /// [`EventStore::append_atomic`](evently_core::EventStore::append_atomic):
    /// all the appends in one transaction, committed, then the
    /// after-commit step.
    pub(crate) async fn append_atomic_alone(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        evently_core::backend::check_appends(&appends)?;
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(unavailable_or_backend)?;
        let results = self.write_atomic(&mut tx, appends).await?;
        tx.commit().await.map_err(unavailable_or_backend)?;
        self.after_commit(&results.concat());
        Ok(results)
    }

    /// The atomic append's statements on `conn`, in its transaction.
    async fn write_atomic(
        &self,
        conn: &mut PgConnection,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        evently_core::backend::check_appends(&appends)?;
        // Lock streams in one order everywhere (that of their lock keys, in
        // `lock_streams()`), so two transfers in opposite directions cannot
        // deadlock; and lock them all before the first write, which gives
        // the transaction its id (and so its positions) only once no other
        // append to these streams can run.
        let mut order: Vec<usize> = (0..appends.len()).collect();
        order.sort_by(|&a, &b| appends[a].stream_id.cmp(&appends[b].stream_id));
        let sorted: Vec<&str> = order
            .iter()
            .map(|&i| appends[i].stream_id.as_str())
            .collect();
        sqlx::query(&self.inner.queries.lock_streams)
            .bind(&sorted)
            .execute(&mut *conn)
            .await
            .map_err(unavailable_or_backend)?;
        let mut results: Vec<Option<Vec<RecordedEvent>>> = vec![None; appends.len()];
        let mut appends: Vec<Option<StreamAppend>> = appends.into_iter().map(Some).collect();
        for i in order {
            let Some(append) = appends[i].take() else {
                continue;
            };
            let recorded = self
                .write(
                    &mut *conn,
                    &append.stream_id,
                    append.expected,
                    append.events,
                    None,
                    Retry::InTransaction,
                )
                .await?;
            results[i] = Some(recorded);
        }
        Ok(results.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The core of every append but group commit's batches: validates the
    /// arguments, runs `append_events(...)` on `conn`, and applies the
    /// inline projections to the events it stored (not to a retry of
    /// events stored before). Commits nothing itself.
    async fn write(
        &self,
        conn: &mut PgConnection,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command: Option<&CommandRecord>,
        retry: Retry,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let args = AppendArgs::new(stream_id, expected, &events)?.with_command(command)?;
        if retry == Retry::Alone {
            if let Some(rows) = args.single_statement(&self.inner.queries, conn).await? {
                let (recorded, _) = recorded_from_append(stream_id, events, rows, false)?;
                return Ok(recorded);
            }
        }
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            match args.query(&self.inner.queries).fetch_all(&mut *conn).await {
                // Another append stored one of these event ids (or this
                // command id) concurrently: run again, and the function
                // tells a retry from a reuse.
                Err(e)
                    if retry == Retry::Alone
                        && attempt < 3
                        && (is_unique_violation(&e, "events_event_id_key")
                            || is_unique_violation(&e, "commands_accepted_key")) => {}
                other => break other.map_err(|e| append_error(e, stream_id, expected, command))?,
            }
        };
        let (recorded, replayed) = recorded_from_append(stream_id, events, rows, true)?;
        if !replayed {
            self.apply_inline(conn, &recorded).await?;
        }
        Ok(recorded)
    }

    /// Applies the inline projections to freshly appended events, in the
    /// append's transaction.
    async fn apply_inline(
        &self,
        conn: &mut PgConnection,
        recorded: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        for projection in &self.inner.inline {
            projection.apply(conn, recorded).await.map_err(|error| {
                StoreError::InlineProjectionFailed {
                    projection: projection.name().to_owned(),
                    reason: error.to_string(),
                }
            })?;
        }
        Ok(())
    }

    /// After the store committed appends: this handle's reads of the
    /// global log wait for their positions, and the notifier wakes
    /// subscribers (after the commit, so no NOTIFY lock in the append's
    /// transaction).
    pub(crate) fn after_commit(&self, recorded: &[RecordedEvent]) {
        if let Some(last) = recorded.iter().map(|e| e.global_position).max() {
            self.inner.last_appended.fetch_max(last, Ordering::Relaxed);
            if let Some(notifier) = &self.inner.notifier {
                notifier.notify_one();
            }
        }
    }

    /// After an append inside the caller's transaction: subscribers must
    /// wake when that transaction commits — not before (they would read
    /// nothing and sleep through the commit), and not never. A NOTIFY sent
    /// in the transaction is delivered by PostgreSQL at its commit, and
    /// dropped with a rollback. (It takes the database-wide NOTIFY lock at
    /// that commit, which the handle's own appends avoid by announcing
    /// after theirs.) The handle's reads of the global log then wait for
    /// those positions as for its own appends.
    pub(crate) async fn announce_in(
        &self,
        conn: &mut PgConnection,
        recorded: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let Some(last) = recorded.iter().map(|e| e.global_position).max() else {
            return Ok(());
        };
        if self.inner.notifier.is_some() {
            sqlx::query(NOTIFY)
                .bind(&self.inner.channel)
                .execute(&mut *conn)
                .await
                .map_err(unavailable_or_backend)?;
        }
        self.inner.last_appended.fetch_max(last, Ordering::Relaxed);
        Ok(())
    }
}

/// The arguments of `append_events(...)`, as arrays.
struct AppendArgs<'a> {
    stream_id: &'a str,
    kind: i16,
    expected: i64,
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    payloads: Vec<&'a str>,
    metadata: Vec<String>,
    command: Option<CommandArgs<'a>>,
}

/// The command recorded with an append.
struct CommandArgs<'a> {
    id: uuid::Uuid,
    command_type: &'a str,
    payload: Option<&'a str>,
    metadata: String,
}

impl<'a> AppendArgs<'a> {
    fn new(
        stream_id: &'a StreamId,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> Result<Self, StoreError> {
        let (kind, version) = expected_arg(expected);
        let invalid = |reason: String| StoreError::InvalidAppend {
            stream_id: stream_id.clone(),
            reason,
        };
        let mut args = AppendArgs {
            stream_id: stream_id.as_str(),
            kind,
            expected: version,
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
            command: None,
        };
        for e in events {
            args.ids.push(e.event_id);
            args.types.push(&e.event_type);
            args.versions
                .push(i32::try_from(e.schema_version).map_err(|_| {
                    invalid(format!(
                        "schema version {} is above {}",
                        e.schema_version,
                        i32::MAX
                    ))
                })?);
            args.payloads.push(e.payload.as_str());
            args.metadata.push(
                serde_json::to_string(&e.metadata)
                    .map_err(|err| invalid(format!("metadata does not serialize: {err}")))?,
            );
        }
        Ok(args)
    }

    fn with_command(mut self, command: Option<&'a CommandRecord>) -> Result<Self, StoreError> {
        if let Some(c) = command {
            self.command = Some(CommandArgs {
                id: c.command_id,
                command_type: &c.command_type,
                payload: c.payload.as_ref().map(Payload::as_str),
                metadata: serde_json::to_string(&c.metadata)
                    .map_err(|e| StoreError::Backend(Box::new(e)))?,
            });
        }
        Ok(self)
    }

    /// The common case in one statement, without the advisory lock and
    /// the row lock `append_events()` takes first: a new batch of events
    /// for one stream at an exact version (or no stream), no command
    /// record, in a transaction of its own. The stream's row moves only if
    /// the expectation holds, the stream is open and no younger
    /// transaction appended to it (`queries::append_exact`); two appends
    /// at one version serialise on that row, and the second finds the
    /// version moved. `None` when the statement stored nothing: an id
    /// stored already (a retry, or a reuse), a wrong expectation, a closed
    /// stream; `append_events()` then tells which, with its typed error.
    async fn single_statement(
        &self,
        queries: &Queries,
        conn: &mut PgConnection,
    ) -> Result<Option<Vec<PgRow>>, StoreError> {
        let sql = match (self.kind, self.expected) {
            _ if self.command.is_some() || self.ids.is_empty() => return Ok(None),
            _ if self.ids.len() >= crate::MAX_EVENTS_PER_TRANSACTION => return Ok(None),
            (1, _) | (3, 0) => &queries.append_new,
            (3, v) if v > 0 => &queries.append_exact,
            _ => return Ok(None),
        };
        let result = sqlx::query(sql)
            .bind(self.stream_id)
            .bind(self.expected)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .fetch_all(&mut *conn)
            .await;
        match result {
            Ok(rows) if rows.is_empty() => Ok(None),
            Ok(rows) => Ok(Some(rows)),
            // Whether it committed is unknown: the caller re-sends.
            Err(e) if is_transient(&e) => Err(unavailable_or_backend(e)),
            // Refused (a stored id, a value the server rejects): it stored
            // nothing, and `append_events()` gives the refusal its type.
            Err(_) => Ok(None),
        }
    }

    fn query<'q>(
        &'q self,
        queries: &'q Queries,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let sql = match self.command {
            Some(_) => &queries.append_command,
            None => &queries.append,
        };
        let query = sqlx::query(sql)
            .bind(self.stream_id)
            .bind(self.kind)
            .bind(self.expected)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(&self.metadata);
        match &self.command {
            Some(c) => query
                .bind(c.id)
                .bind(c.command_type)
                .bind(c.payload)
                .bind(&c.metadata),
            None => query,
        }
    }
}

/// The expected version as `append_events()` reads it: a version above
/// `i64::MAX` can never match, so it becomes -1 (which never matches
/// either) rather than a number out of range.
pub(crate) fn expected_arg(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(v) => (3, i64::try_from(v).unwrap_or(-1)),
    }
}

/// The recorded events, and whether the append was a retry of a stored one
/// (read from the rows' fourth column when `flagged`).
fn recorded_from_append(
    stream_id: &StreamId,
    events: Vec<NewEvent>,
    rows: Vec<PgRow>,
    flagged: bool,
) -> Result<(Vec<RecordedEvent>, bool), StoreError> {
    if rows.len() != events.len() {
        return Err(StoreError::Backend(
            format!(
                "append_events returned {} rows for {} events",
                rows.len(),
                events.len()
            )
            .into(),
        ));
    }
    let replayed = match rows.first() {
        Some(row) if flagged => row.try_get::<bool, _>(3).map_err(unavailable_or_backend)?,
        _ => false,
    };
    let recorded = events
        .into_iter()
        .zip(rows)
        .map(|(e, row)| {
            let position: i64 = row.try_get(0).map_err(unavailable_or_backend)?;
            let version: i64 = row.try_get(1).map_err(unavailable_or_backend)?;
            let recorded_at = row.try_get(2).map_err(unavailable_or_backend)?;
            Ok(recorded(stream_id, e, position, version, recorded_at))
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((recorded, replayed))
}

/// An appended event as stored: where, at which version, when.
pub(crate) fn recorded(
    stream_id: &StreamId,
    e: NewEvent,
    position: i64,
    version: i64,
    recorded_at: chrono::DateTime<chrono::Utc>,
) -> RecordedEvent {
    RecordedEvent {
        event_id: e.event_id,
        stream_id: stream_id.clone(),
        stream_version: version as u64,
        global_position: position as u64,
        event_type: e.event_type,
        schema_version: e.schema_version,
        data: e.payload,
        metadata: e.metadata,
        recorded_at,
    }
}
