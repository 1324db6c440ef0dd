//! Opening a store by URL, and the reads the tools need beyond the store
//! traits (stream lists, checkpoints, the command journal by request),
//! on PostgreSQL.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use evently_core::{EventStore, RecordedEvent, StreamId};
use evently_postgres::PgEventStore;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::Row;
use uuid::Uuid;

use crate::error::CliError;

/// Opens the store at `url` in `schema`. Only `create` migrates: the
/// other commands never create a schema by mistake.
pub(crate) async fn open(
    url: Option<&str>,
    schema: &str,
    create: bool,
) -> Result<PgEventStore, CliError> {
    let url = url.ok_or_else(|| {
        CliError::usage(
            "no store given: pass --url postgres://user@host:port/database or set DATABASE_URL",
        )
    })?;
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(CliError::usage(format!(
            "unsupported store URL {:?}: expected postgres://user@host:port/database",
            redact(url)
        )));
    }
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| CliError::usage(format!("malformed store URL {:?}: {e}", redact(url))))?;
    // One connection first: a server that is down says why at once
    // (refused, unknown host, bad password) instead of a pool time-out.
    let unreachable = |cause: String| {
        CliError::new(
            crate::Exit::Unavailable,
            format!(
                "cannot connect to PostgreSQL at {}:{}: {cause}; is it running (`pg_isready -h {} -p {}`), and is --url right?",
                options.get_host(),
                options.get_port(),
                options.get_host(),
                options.get_port()
            ),
        )
    };
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        <sqlx::postgres::PgConnection as sqlx::Connection>::connect_with(&options),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
        }
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("no answer within 10 s".into())),
    }
    let store = PgEventStore::builder()
        .schema(schema)
        .max_connections(4)
        .migrate(create)
        .connect(url)
        .await
        .map_err(|e| match e {
            evently_postgres::SetupError::Connect(source) => unreachable(source.to_string()),
            other => other.into(),
        })?;
    Ok(store)
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// One event as the tools show it (and as `es export` writes it).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EventView {
    /// Its global position in the store it was read from.
    pub position: u64,
    /// Its id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: String,
    /// Its version within the stream.
    pub stream_version: u64,
    /// Its type.
    pub event_type: String,
    /// Its payload's schema version.
    pub schema_version: u32,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// Its metadata (correlation, causation, command, actor, time, extra).
    pub metadata: serde_json::Value,
    /// Its payload, as stored.
    pub payload: Box<RawValue>,
}

impl EventView {
    pub(crate) fn from_recorded(e: &RecordedEvent) -> Self {
        EventView {
            position: e.global_position,
            event_id: e.event_id,
            stream_id: e.stream_id.as_str().to_owned(),
            stream_version: e.stream_version,
            event_type: e.event_type.to_string(),
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            metadata: serde_json::to_value(&e.metadata).unwrap_or(serde_json::Value::Null),
            payload: RawValue::from_string(e.data.as_str().to_owned())
                .unwrap_or_else(|_| raw_string(e.data.as_str())),
        }
    }

    pub(crate) fn causation_id(&self) -> Option<Uuid> {
        id_field(&self.metadata, "causation_id")
    }

    pub(crate) fn correlation_id(&self) -> Option<Uuid> {
        id_field(&self.metadata, "correlation_id")
    }
}

pub(crate) fn id_field(metadata: &serde_json::Value, key: &str) -> Option<Uuid> {
    metadata.get(key)?.as_str()?.parse().ok()
}

/// A payload that is not JSON, shown as a JSON string.
fn raw_string(text: &str) -> Box<RawValue> {
    RawValue::from_string(serde_json::Value::String(text.to_owned()).to_string())
        .expect("a JSON string is valid JSON")
}

/// One stream in `es streams`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamRow {
    /// Its id.
    pub stream_id: String,
    /// The aggregate type (the id before its first `-`), when it has one.
    pub aggregate_type: Option<String>,
    /// Its version (its number of events).
    pub version: u64,
    /// Whether it was closed.
    pub closed: bool,
    /// The global position of its last event.
    pub last_position: u64,
    /// When its last event was recorded.
    pub last_activity: Option<DateTime<Utc>>,
}

/// One projection's state in `es projections`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProjectionRow {
    /// Its name (a view `accounts` runs as `view_accounts`).
    pub name: String,
    /// The position of the last event it processed.
    pub position: u64,
    /// The log's readable head.
    pub head: u64,
    /// Events in the log after its position.
    pub behind_events: u64,
    /// How long the oldest event it has not processed has waited, in
    /// seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Its parked events.
    pub parked: u64,
    /// Whether an instance runs it now (holds its lock).
    pub running: bool,
    /// When its checkpoint last moved.
    pub updated_at: DateTime<Utc>,
}

/// One command of the journal, as `es audit` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommandView {
    /// Its id.
    pub command_id: Uuid,
    /// Its type.
    pub command_type: String,
    /// The aggregate's stream.
    pub stream_id: String,
    /// `accepted` or `rejected`.
    pub outcome: String,
    /// The domain error of a rejected command.
    pub error: Option<String>,
    /// Its metadata.
    pub metadata: serde_json::Value,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl CommandView {
    pub(crate) fn causation_id(&self) -> Option<Uuid> {
        id_field(&self.metadata, "causation_id")
    }
}

/// The reads beyond the store traits.
#[derive(Clone)]
pub struct Inspector {
    store: PgEventStore,
    schema: String,
}

const EVENT_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, schema_version, recorded_at, metadata::text, payload::text";

impl Inspector {
    /// The reads of `store`.
    pub fn new(store: PgEventStore) -> Self {
        let schema = format!("\"{}\"", store.schema());
        Inspector { store, schema }
    }

    /// The store.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    fn event_row(row: &PgRow) -> Result<EventView, sqlx::Error> {
        let metadata: String = row.try_get(7)?;
        let payload: String = row.try_get(8)?;
        Ok(EventView {
            position: row.try_get::<i64, _>(0)? as u64,
            event_id: row.try_get(1)?,
            stream_id: row.try_get(2)?,
            stream_version: row.try_get::<i64, _>(3)? as u64,
            event_type: row.try_get(4)?,
            schema_version: row.try_get::<i32, _>(5)? as u32,
            recorded_at: row.try_get(6)?,
            metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
            payload: RawValue::from_string(payload.clone())
                .unwrap_or_else(|_| raw_string(&payload)),
        })
    }

    /// Streams whose id starts with `prefix`, in id order.
    pub async fn streams(&self, prefix: &str, limit: u32) -> Result<Vec<StreamRow>, CliError> {
        self.streams_where("starts_with(s.stream_id, $1)", prefix, limit)
            .await
    }

    /// Streams whose id contains `text`, in id order.
    pub async fn search_streams(&self, text: &str, limit: u32) -> Result<Vec<StreamRow>, CliError> {
        self.streams_where("strpos(s.stream_id, $1) > 0", text, limit)
            .await
    }

    /// Streams matching `condition` on `$1` = `text`, in id order.
    async fn streams_where(
        &self,
        condition: &str,
        text: &str,
        limit: u32,
    ) -> Result<Vec<StreamRow>, CliError> {
        let sql = format!(
            "SELECT s.stream_id, s.version, s.closed, s.last_position, e.recorded_at \
             FROM {s}.streams s LEFT JOIN {s}.events e ON e.position = s.last_position \
             WHERE {condition} ORDER BY s.stream_id LIMIT $2",
            s = self.schema
        );
        let rows = sqlx::query(&sql)
            .bind(text)
            .bind(i64::from(limit))
            .fetch_all(self.store.pool())
            .await?;
        rows.iter()
            .map(Self::stream_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    fn stream_row(r: &PgRow) -> Result<StreamRow, sqlx::Error> {
        let stream_id: String = r.try_get(0)?;
        Ok(StreamRow {
            aggregate_type: stream_id.split_once('-').map(|(t, _)| t.to_owned()),
            stream_id,
            version: r.try_get::<i64, _>(1)? as u64,
            closed: r.try_get(2)?,
            last_position: r.try_get::<i64, _>(3)? as u64,
            last_activity: r.try_get(4)?,
        })
    }

    /// One stream's row, if it exists.
    pub async fn stream(&self, stream_id: &str) -> Result<Option<StreamRow>, CliError> {
        Ok(self
            .streams(stream_id, 1)
            .await?
            .into_iter()
            .find(|s| s.stream_id == stream_id))
    }

    /// One stream's events from `from_version` on, up to `limit`.
    pub async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventView>, CliError> {
        let events = self
            .store
            .read_stream(&StreamId::from(stream_id), from_version, limit)
            .await?;
        Ok(events.iter().map(EventView::from_recorded).collect())
    }

    /// The event with this id.
    pub async fn event(&self, event_id: Uuid) -> Result<Option<EventView>, CliError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM {}.events WHERE event_id = $1",
            self.schema
        );
        let row = sqlx::query(&sql)
            .bind(event_id)
            .fetch_optional(self.store.pool())
            .await?;
        Ok(row.as_ref().map(Self::event_row).transpose()?)
    }

    /// The events whose causation is `id` (an event or a command). Uses the
    /// correlation index when the request is known.
    pub async fn events_caused_by(
        &self,
        id: Uuid,
        correlation: Option<Uuid>,
    ) -> Result<Vec<EventView>, CliError> {
        let rows = match correlation {
            Some(c) => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM {}.events WHERE metadata ? 'correlation_id' \
                     AND metadata->>'correlation_id' = $1 AND metadata->>'causation_id' = $2 ORDER BY position",
                    self.schema
                );
                sqlx::query(&sql)
                    .bind(c.to_string())
                    .bind(id.to_string())
                    .fetch_all(self.store.pool())
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM {}.events WHERE metadata->>'causation_id' = $1 ORDER BY position",
                    self.schema
                );
                sqlx::query(&sql)
                    .bind(id.to_string())
                    .fetch_all(self.store.pool())
                    .await?
            }
        };
        Ok(rows.iter().map(Self::event_row).collect::<Result<_, _>>()?)
    }

    /// The events of one request (correlation id), in log order.
    pub async fn correlation(&self, correlation_id: Uuid) -> Result<Vec<EventView>, CliError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM {}.events WHERE metadata ? 'correlation_id' \
             AND metadata->>'correlation_id' = $1 ORDER BY position",
            self.schema
        );
        let rows = sqlx::query(&sql)
            .bind(correlation_id.to_string())
            .fetch_all(self.store.pool())
            .await?;
        Ok(rows.iter().map(Self::event_row).collect::<Result<_, _>>()?)
    }

    fn command_row(row: &PgRow) -> Result<CommandView, sqlx::Error> {
        let metadata: String = row.try_get(5)?;
        Ok(CommandView {
            command_id: row.try_get(0)?,
            command_type: row.try_get(1)?,
            stream_id: row.try_get(2)?,
            outcome: row.try_get(3)?,
            error: row.try_get(4)?,
            metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
            recorded_at: row.try_get(6)?,
        })
    }

    /// The journaled commands of one request, in journal order.
    pub async fn commands_of_request(
        &self,
        correlation_id: Uuid,
    ) -> Result<Vec<CommandView>, CliError> {
        let sql = format!(
            "SELECT command_id, command_type, stream_id, outcome, error, metadata::text, recorded_at \
             FROM {}.commands WHERE metadata->>'correlation_id' = $1 OR command_id = $2 ORDER BY seq",
            self.schema
        );
        let rows = sqlx::query(&sql)
            .bind(correlation_id.to_string())
            .bind(correlation_id)
            .fetch_all(self.store.pool())
            .await?;
        Ok(rows
            .iter()
            .map(Self::command_row)
            .collect::<Result<_, _>>()?)
    }

    /// The journaled command with this id (its accepted execution, else
    /// its latest refusal).
    pub async fn command(&self, command_id: Uuid) -> Result<Option<CommandView>, CliError> {
        let sql = format!(
            "SELECT command_id, command_type, stream_id, outcome, error, metadata::text, recorded_at \
             FROM {}.commands WHERE command_id = $1 ORDER BY outcome = 'accepted' DESC, seq DESC LIMIT 1",
            self.schema
        );
        let row = sqlx::query(&sql)
            .bind(command_id)
            .fetch_optional(self.store.pool())
            .await?;
        Ok(row.as_ref().map(Self::command_row).transpose()?)
    }

    /// The journaled commands whose causation is the event `event_id`.
    pub async fn commands_caused_by(&self, event_id: Uuid) -> Result<Vec<CommandView>, CliError> {
        let sql = format!(
            "SELECT command_id, command_type, stream_id, outcome, error, metadata::text, recorded_at \
             FROM {}.commands WHERE metadata->>'causation_id' = $1 ORDER BY seq",
            self.schema
        );
        let rows = sqlx::query(&sql)
            .bind(event_id.to_string())
            .fetch_all(self.store.pool())
            .await?;
        Ok(rows
            .iter()
            .map(Self::command_row)
            .collect::<Result<_, _>>()?)
    }

    /// Every projection with a checkpoint: position, lag, parked events.
    pub async fn projections(&self) -> Result<Vec<ProjectionRow>, CliError> {
        let head = self.store.head_position().await?;
        let sql = format!(
            "SELECT p.name, p.position, p.updated_at, \
               (SELECT count(*) FROM {s}.events e WHERE e.position > p.position AND e.position <= $1), \
               (SELECT extract(epoch FROM now() - min(e.recorded_at))::float8 FROM \
                  (SELECT recorded_at FROM {s}.events e WHERE e.position > p.position AND e.position <= $1 \
                   ORDER BY e.position LIMIT 1) e), \
               (SELECT count(*) FROM {s}.parked_events k WHERE k.projection = p.name) \
             FROM {s}.projections p ORDER BY p.name",
            s = self.schema
        );
        let rows = sqlx::query(&sql)
            .bind(head as i64)
            .fetch_all(self.store.pool())
            .await?;
        let mut rows = rows
            .iter()
            .map(|r| {
                Ok(ProjectionRow {
                    name: r.try_get(0)?,
                    position: r.try_get::<i64, _>(1)? as u64,
                    updated_at: r.try_get(2)?,
                    head,
                    behind_events: r.try_get::<i64, _>(3)? as u64,
                    lag_seconds: r.try_get::<Option<f64>, _>(4)?.unwrap_or(0.0).max(0.0),
                    parked: r.try_get::<i64, _>(5)? as u64,
                    running: false,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        for row in &mut rows {
            row.running = self.store.projection_running(&row.name).await?;
        }
        Ok(rows)
    }

    /// Whether a projection of that name has a checkpoint.
    pub async fn projection(&self, name: &str) -> Result<Option<ProjectionRow>, CliError> {
        Ok(self
            .projections()
            .await?
            .into_iter()
            .find(|p| p.name == name))
    }

    /// Counts for `es status`: streams, events.
    pub async fn counts(&self) -> Result<(u64, u64), CliError> {
        let sql = format!(
            "SELECT (SELECT count(*) FROM {s}.streams), (SELECT count(*) FROM {s}.events)",
            s = self.schema
        );
        let (streams, events): (i64, i64) =
            sqlx::query_as(&sql).fetch_one(self.store.pool()).await?;
        Ok((streams as u64, events as u64))
    }
}
