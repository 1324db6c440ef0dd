//! Queries between services over NATS: a request and a reply in JSON on
//! `<service>.<query>`, in a queue group (any instance answers), with the
//! caller's correlation id in a header so its spans join the request's
//! trace.

use std::future::Future;
use std::time::Duration;

use evently::nats::async_nats::{self, HeaderMap};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

/// The header carrying the caller's correlation id.
pub const CORRELATION_HEADER: &str = "Evently-Correlation-Id";
/// The header carrying a failure's status code (404, 504, ...).
pub const STATUS_HEADER: &str = "Query-Status";

/// A query for one document of a view, optionally once it has seen the
/// caller's own write: the account's version that write produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentQuery {
    /// The document's key (an account id, a date).
    pub key: String,
    /// Answer only once the document has reached this version.
    #[serde(default)]
    pub min_version: Option<u64>,
    /// How long to wait for it, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A view's document with its version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentReply<T> {
    /// The key.
    pub key: String,
    /// Events applied to it: for an account, its stream version.
    pub version: u64,
    /// The document.
    pub document: T,
}

/// A query for an account's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// The account id.
    pub id: String,
}

/// One event of an account's history, with its metadata: the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// The event id.
    pub event_id: uuid::Uuid,
    /// Its version in the account's stream.
    pub version: u64,
    /// Its position in the accounts log.
    pub position: u64,
    /// Its type.
    pub event_type: String,
    /// Its payload.
    pub data: serde_json::Value,
    /// Its metadata: correlation, causation, command, actor, user keys.
    pub metadata: evently::Metadata,
    /// When it was recorded.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// A query for a transfer's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferQuery {
    /// The transfer id.
    pub id: String,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferStatus {
    /// The transfer id.
    pub id: String,
    /// `Crediting`, `Completed`, `Reversing` or `Reversed`.
    pub stage: crate::transfer::Stage,
    /// The source account.
    pub from: String,
    /// The amount, in cents.
    pub amount: u64,
    /// The process instance's version.
    pub version: u64,
    /// The deadlines it waits for, by name, with when they come.
    pub waiting: Vec<(String, chrono::DateTime<chrono::Utc>)>,
}

/// A query that failed: its status (404, 504, 500) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct QueryError {
    /// An HTTP-like status.
    pub status: u16,
    /// What went wrong.
    pub detail: String,
}

impl QueryError {
    /// A failure with `status`.
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        QueryError {
            status,
            detail: detail.into(),
        }
    }
}

/// Serves the query `<service>.<name>` with `handler` until the
/// connection closes, `concurrency` at a time.
pub async fn serve<Q, R, H, F>(
    client: async_nats::Client,
    service: &str,
    name: &str,
    concurrency: usize,
    handler: H,
) -> Result<(), async_nats::SubscribeError>
where
    Q: DeserializeOwned + Send,
    R: Serialize,
    H: Fn(Q) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<R, QueryError>> + Send,
{
    let subject = format!("{service}.{name}");
    let requests = client.queue_subscribe(subject.clone(), "q".into()).await?;
    tokio::spawn(async move {
        requests
            .for_each_concurrent(concurrency, |message| {
                let (client, handler, subject) = (client.clone(), handler.clone(), subject.clone());
                async move {
                    let Some(reply) = message.reply.clone() else {
                        return;
                    };
                    let correlation = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(CORRELATION_HEADER))
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    let span =
                        tracing::info_span!("bank.query", %subject, correlation_id = %correlation);
                    let answer = async {
                        match serde_json::from_slice::<Q>(&message.payload) {
                            Ok(query) => handler(query).await,
                            Err(e) => {
                                Err(QueryError::new(400, format!("not a {subject} query: {e}")))
                            }
                        }
                    }
                    .instrument(span)
                    .await;
                    let (headers, body) = match answer.and_then(|r| {
                        serde_json::to_vec(&r).map_err(|e| QueryError::new(500, e.to_string()))
                    }) {
                        Ok(body) => (HeaderMap::new(), body),
                        Err(e) => {
                            let mut headers = HeaderMap::new();
                            headers.insert(STATUS_HEADER, e.status.to_string().as_str());
                            (headers, e.detail.into_bytes())
                        }
                    };
                    if let Err(e) = client
                        .publish_with_headers(reply, headers, body.into())
                        .await
                    {
                        tracing::warn!(error = %e, "cannot answer a query");
                    }
                }
            })
            .await;
    });
    Ok(())
}

/// Asks `<service>.<name>`; a reply is `R`, a failure a [`QueryError`]
/// (503 when no instance serves, 504 on a time-out).
pub async fn ask<Q: Serialize, R: DeserializeOwned>(
    client: &async_nats::Client,
    service: &str,
    name: &str,
    query: &Q,
    correlation: uuid::Uuid,
    timeout: Duration,
) -> Result<R, QueryError> {
    let subject = format!("{service}.{name}");
    let body = serde_json::to_vec(query).map_err(|e| QueryError::new(500, e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(CORRELATION_HEADER, correlation.to_string().as_str());
    let request = async_nats::Request::new()
        .payload(body.into())
        .headers(headers)
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject.clone(), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                QueryError::new(503, format!("no instance of {service} serves {subject}"))
            }
            async_nats::RequestErrorKind::TimedOut => {
                QueryError::new(504, format!("{subject} did not answer in {timeout:?}"))
            }
            _ => QueryError::new(503, format!("{subject}: {e}")),
        })?;
    if let Some(status) = reply.headers.as_ref().and_then(|h| h.get(STATUS_HEADER)) {
        let status = status.as_str().parse().unwrap_or(500);
        return Err(QueryError::new(
            status,
            String::from_utf8_lossy(&reply.payload).into_owned(),
        ));
    }
    serde_json::from_slice(&reply.payload)
        .map_err(|e| QueryError::new(502, format!("{subject} answered something unreadable: {e}")))
}
