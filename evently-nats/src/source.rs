//! Consuming a published stream: another service's log as an
//! [`EventSource`] for projections.

use std::str::FromStr;

use async_nats::jetstream::consumer::pull::{OrderedConfig, OrderedErrorKind};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use evently_core::backend::{LogItem, LogStream, UnreadableEvent};
use evently_core::{EventSource, Metadata, Payload, RecordedEvent, StoreError, StreamId};
use futures::StreamExt;

use crate::headers;
use crate::subject::decode_token;

/// A JetStream stream written by a [`crate::Publisher`], read as an
/// [`EventSource`]: run a projection on it with, for example,
/// `PgEventStore::run_projection_from(source, projection, options)`, and
/// its checkpoint, failure policy, upcasting and skipping of unhandled
/// event types work as on a local log.
///
/// **Positions are the JetStream stream's sequence numbers** (the
/// origin's global position is in each message's
/// `Evently-Global-Position` header): the checkpoint a projection stores
/// is the sequence of the last message it applied, so after a restart or
/// a redelivery it resumes after it and applies nothing twice. With a
/// [`filter`](Self::filter) the sequences it sees have gaps; they still
/// increase.
///
/// It reads with an ordered consumer (ephemeral, no acknowledgements, in
/// stream order, recreated by the client after a gap or a missed
/// heartbeat), from the checkpoint on.
///
/// A message that is not a well-formed event (no or bad headers, a body
/// that is not JSON) is yielded as [`LogItem::Unreadable`] with a
/// [`StoreError::Corrupt`] naming the subject and the sequence, so the
/// projection's failure policy (retry, park, stop) decides.
#[derive(Clone)]
pub struct JetStreamSource {
    js: Context,
    stream: String,
    filter: Option<String>,
}

impl JetStreamSource {
    /// Reads the JetStream stream `stream` over `client`'s connection.
    pub fn new(client: async_nats::Client, stream: impl Into<String>) -> Self {
        JetStreamSource {
            js: jetstream::new(client),
            stream: stream.into(),
            filter: None,
        }
    }

    /// Reads only the messages on `subject` (wildcards allowed): one
    /// aggregate type's events, `bank.account.>`, say.
    pub fn filter(mut self, subject: impl Into<String>) -> Self {
        self.filter = Some(subject.into());
        self
    }

    async fn open(self, from: u64) -> Result<LogStream, StoreError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(unavailable)?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: self.filter.clone().unwrap_or_default(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let messages = consumer.messages().await.map_err(unavailable)?;
        Ok(messages
            .filter_map(|message| async move {
                match message {
                    Ok(message) => Some(decode(&message)),
                    // The client recreates the consumer and goes on.
                    Err(e) if e.kind() == OrderedErrorKind::MissingHeartbeat => {
                        tracing::debug!(error = %e, "JetStream heartbeat missed");
                        None
                    }
                    Err(e) => Some(Err(unavailable(e))),
                }
            })
            .boxed())
    }
}

impl EventSource for JetStreamSource {
    fn rows_from(&self, from_position: u64) -> LogStream {
        futures::stream::once(self.clone().open(from_position))
            .flat_map(|opened| match opened {
                Ok(rows) => rows,
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .boxed()
    }

    /// The messages after sequence `position`, from the stream's last
    /// sequence (with a [`filter`](Self::filter), an upper bound: other
    /// subjects' messages count too).
    async fn events_after(&self, position: u64, cap: u64) -> Result<u64, StoreError> {
        let mut stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(unavailable)?;
        let last = stream
            .info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence;
        Ok(last.saturating_sub(position).min(cap))
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        reason: format!("JetStream: {e}"),
        source: None,
    }
}

/// One message as a row: the event, or what could be read of it and why
/// the rest cannot.
fn decode(message: &jetstream::Message) -> Result<LogItem, StoreError> {
    let sequence = message
        .info()
        .map_err(|e| unavailable(format!("a message without its stream sequence: {e}")))?
        .stream_sequence;
    let subject = message.subject.as_str();
    let empty = HeaderMap::new();
    let headers = message.headers.as_ref().unwrap_or(&empty);
    let text = |name: &str| headers.get(name).map(|v| v.as_str());
    let event_id = text(headers::MESSAGE_ID).and_then(|v| uuid::Uuid::from_str(v).ok());
    let event_type = text(headers::EVENT_TYPE).map(str::to_owned);
    let schema_version = text(headers::SCHEMA_VERSION).and_then(|v| v.parse::<u32>().ok());
    let stream_id = text(headers::STREAM).and_then(|v| decode_token(v).ok());
    let stream_version = text(headers::STREAM_VERSION).and_then(|v| v.parse::<u64>().ok());

    let read = || -> Result<RecordedEvent, String> {
        let missing = |name: &str| format!("no valid `{name}` header");
        let metadata: Metadata = match text(headers::METADATA) {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| format!("`{}` header: {e}", headers::METADATA))?,
            None => return Err(missing(headers::METADATA)),
        };
        let recorded_at = text(headers::RECORDED_AT)
            .and_then(chrono_parse)
            .ok_or_else(|| missing(headers::RECORDED_AT))?;
        let body = std::str::from_utf8(&message.payload)
            .map_err(|_| "the body is not UTF-8".to_owned())?;
        let data = Payload::from_json(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        Ok(RecordedEvent {
            event_id: event_id.ok_or_else(|| missing(headers::MESSAGE_ID))?,
            stream_id: StreamId::new(stream_id.clone().ok_or_else(|| missing(headers::STREAM))?),
            stream_version: stream_version.ok_or_else(|| missing(headers::STREAM_VERSION))?,
            global_position: sequence,
            event_type: event_type
                .clone()
                .ok_or_else(|| missing(headers::EVENT_TYPE))?
                .into(),
            schema_version: schema_version.ok_or_else(|| missing(headers::SCHEMA_VERSION))?,
            data,
            metadata,
            recorded_at,
        })
    };
    Ok(match read() {
        Ok(event) => LogItem::Event(event),
        Err(reason) => {
            let stream_id = StreamId::new(stream_id.unwrap_or_else(|| subject.to_owned()));
            LogItem::Unreadable(UnreadableEvent {
                global_position: sequence,
                stream_id: stream_id.clone(),
                stream_version: stream_version.unwrap_or(0),
                event_id,
                event_type,
                schema_version,
                error: StoreError::Corrupt {
                    stream_id,
                    stream_version: stream_version.unwrap_or(0),
                    reason: format!("message {sequence} on subject `{subject}`: {reason}"),
                },
            })
        }
    })
}

fn chrono_parse(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}
