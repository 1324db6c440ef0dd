//! The gateway: the one HTTP entry point. Commands go to the accounts
//! service by its virtual address, queries to the reporting service,
//! histories to the accounts service's log; errors are
//! `application/problem+json` (RFC 9457).
//!
//! Routes (also in `GET /openapi.json`):
//!
//! | route | what |
//! |---|---|
//! | `POST /accounts` `{"id", "owner"}` | open an account (201) |
//! | `POST /accounts/{id}/deposits` `{"amount"}` | deposit |
//! | `POST /accounts/{id}/withdrawals` `{"amount"}` | withdraw |
//! | `POST /transfers` `{"from", "to", "amount"}` | send money to another account (202; a process manager in the accounts service credits the target, or returns the money when the target refuses or does not answer in 30 s) |
//! | `GET /transfers/{id}` | where a transfer stands (`Crediting`, `Completed`, `Reversing`, `Reversed`) |
//! | `GET /accounts/{id}` | the balance, from reporting |
//! | `GET /accounts/{id}/ledger` | the movements, from reporting |
//! | `GET /accounts/{id}/history` | the events with their metadata, from the log |
//! | `GET /reports/daily/{date}` | a day's totals, from reporting |
//! | `GET /events` | the accounts events live, as Server-Sent Events (`id` = the JetStream sequence; resume with `Last-Event-ID`, or start at `?from=SEQ`; without either, from now) |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | alive; NATS and both services answer; Prometheus text |
//!
//! Every `POST` needs an `Idempotency-Key` header: it becomes the command
//! id, so a retried request has one effect and gets the first answer; the
//! same key with another request is refused (422). A command answers with
//! the account's `version`; a `GET` with `?min_version=N` waits (up to
//! `timeout_ms`, default 2,000) until reporting has seen that version:
//! read-your-writes. `X-Correlation-Id` (a UUID) joins a request to a
//! business transaction; without it the command id starts one; it is
//! echoed in the response and carried by every span and event.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bank_services::domain::{Account, AccountCommand, Balance, DailyTotals, Ledger};
use bank_services::queries::{
    self, DocumentQuery, DocumentReply, HistoryEvent, HistoryQuery, TransferQuery, TransferStatus,
};
use bank_services::{runtime, Config};
use evently::nats::async_nats;
use evently::nats::{discover, RemoteRepository};
use evently::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

mod openapi;
mod problem;

use openapi::openapi;
use problem::Problem;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies above this are refused with 413.
const BODY_LIMIT: usize = 16 * 1024;

use bank_services::IDEMPOTENCY_NAMESPACE as KEYS;

#[derive(Clone)]
struct Gateway {
    client: async_nats::Client,
    accounts: RemoteRepository<Account>,
    config: Arc<Config>,
}

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_logs("gateway");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let metrics = runtime::init_metrics();
    let config = Config::from_env("127.0.0.1:8080")?;
    let client = async_nats::connect(&config.nats_url).await?;
    let gateway = Gateway {
        accounts: RemoteRepository::new(client.clone(), &config.accounts_service)
            .timeout(config.request_timeout),
        client: client.clone(),
        config: Arc::new(config.clone()),
    };
    let ready: runtime::Readiness = {
        let gateway = gateway.clone();
        Arc::new(move || {
            let gateway = gateway.clone();
            Box::pin(async move { gateway.ready().await })
        })
    };
    let router = routes(gateway).merge(runtime::health_routes(metrics, ready));
    runtime::serve_http(config.http_addr, router).await?;
    client.drain().await?;
    tracing::info!("stopped");
    Ok(())
}

fn routes(gateway: Gateway) -> Router {
    Router::new()
        .route("/accounts", post(open))
        .route("/transfers", post(transfer))
        .route("/transfers/{id}", get(transfer_status))
        .route("/accounts/{id}/deposits", post(deposit))
        .route("/accounts/{id}/withdrawals", post(withdraw))
        .route("/accounts/{id}", get(balance))
        .route("/accounts/{id}/ledger", get(ledger))
        .route("/accounts/{id}/history", get(history))
        .route("/reports/daily/{date}", get(daily))
        .route("/events", get(events))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(gateway)
}

impl Gateway {
    /// NATS connected, an accounts instance registered, reporting answers.
    async fn ready(&self) -> Result<(), String> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(format!("NATS: {:?}", self.client.connection_state()));
        }
        let instances = discover(
            &self.client,
            &self.config.accounts_service,
            Duration::from_millis(200),
        )
        .await
        .map_err(|e| format!("accounts: {e}"))?;
        if instances.is_empty() {
            return Err("no accounts instance".into());
        }
        let probe = DocumentQuery {
            key: String::new(),
            min_version: None,
            timeout_ms: None,
        };
        match queries::ask::<_, serde_json::Value>(
            &self.client,
            &self.config.reporting_service,
            "balance",
            &probe,
            uuid::Uuid::now_v7(),
            Duration::from_secs(1),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status == 404 => Ok(()),
            Err(e) => Err(format!("reporting: {e}")),
        }
    }
}

// ---- commands ----

#[derive(Deserialize)]
struct OpenBody {
    id: String,
    owner: String,
}

#[derive(Deserialize)]
struct AmountBody {
    amount: u64,
}

/// What a command answers.
#[derive(Serialize)]
struct CommandReply {
    account: String,
    /// The account's version after the command: ask a query for at least
    /// it to read this write.
    version: u64,
    /// The accounts log's position of its last event.
    position: u64,
    events: Vec<serde_json::Value>,
}

async fn open(State(gateway): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    let handled = async {
        let body = body.map_err(too_large)?;
        let parsed: OpenBody = parse(&body)?;
        if parsed.id.is_empty() || parsed.id.len() > 64 {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "`id` must be 1 to 64 characters",
            ));
        }
        let id = parsed.id.clone();
        let command = AccountCommand::Open {
            id: parsed.id,
            owner: parsed.owner,
        };
        gateway
            .command(
                &headers,
                "POST /accounts",
                &body,
                &id,
                command,
                StatusCode::CREATED,
            )
            .await
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

async fn deposit(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let command = |id, amount| AccountCommand::Deposit { id, amount };
    movement(&gateway, id, "deposits", command, &headers, body).await
}

async fn withdraw(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let command = |id, amount| AccountCommand::Withdraw { id, amount };
    movement(&gateway, id, "withdrawals", command, &headers, body).await
}

/// A deposit or a withdrawal: `{"amount": N}` posted to
/// `/accounts/{id}/<route>`.
async fn movement(
    gateway: &Gateway,
    id: String,
    route: &str,
    command: impl FnOnce(String, u64) -> AccountCommand,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let handled = async {
        let body = body.map_err(too_large)?;
        let AmountBody { amount } = parse(&body)?;
        let route = format!("POST /accounts/{id}/{route}");
        let command = command(id.clone(), amount);
        gateway
            .command(headers, &route, &body, &id, command, StatusCode::OK)
            .await
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
struct TransferBody {
    from: String,
    to: String,
    amount: u64,
}

/// Starts a transfer: the debit on the source, under the request's
/// idempotency key; the transfer's id is that command's id. Answers 202
/// with the id: the rest happens in the accounts service's process
/// manager (`GET /transfers/{id}`).
async fn transfer(State(gateway): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    let handled = async {
        let body = body.map_err(too_large)?;
        let TransferBody { from, to, amount } = parse(&body)?;
        if from == to {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "`from` and `to` are the same account",
            ));
        }
        let key = idempotency_key(&headers)?;
        let transfer = uuid::Uuid::new_v5(&KEYS, key.as_bytes()).to_string();
        let command = AccountCommand::Transfer {
            id: from.clone(),
            to,
            amount,
            transfer: transfer.clone(),
        };
        let mut response = gateway
            .command(
                &headers,
                "POST /transfers",
                &body,
                &from,
                command,
                StatusCode::ACCEPTED,
            )
            .await?;
        if let Ok(location) = HeaderValue::from_str(&format!("/transfers/{transfer}")) {
            response
                .headers_mut()
                .insert(axum::http::header::LOCATION, location);
        }
        Ok::<_, Problem>(response)
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

async fn transfer_status(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TransferStatus>, Problem> {
    let correlation = correlation(&headers)?.unwrap_or_else(uuid::Uuid::now_v7);
    let status = queries::ask(
        &gateway.client,
        &gateway.config.accounts_service,
        "transfer",
        &TransferQuery { id },
        correlation,
        gateway.config.request_timeout,
    )
    .await?;
    Ok(Json(status))
}

/// The request's `Idempotency-Key`, required.
fn idempotency_key(headers: &HeaderMap) -> Result<&str, Problem> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "an Idempotency-Key header (1 to 255 characters) is required",
            )
        })
}

/// A request body, or why it could not be read (413 over the limit).
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn too_large(rejection: axum::extract::rejection::BytesRejection) -> Problem {
    Problem::new(
        rejection.status(),
        format!("{rejection} (at most {BODY_LIMIT} bytes)"),
    )
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a valid request: {e}"),
        )
    })
}

/// The correlation id the request gives (`X-Correlation-Id`), if valid.
fn correlation(headers: &HeaderMap) -> Result<Option<uuid::Uuid>, Problem> {
    match headers.get("x-correlation-id") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| uuid::Uuid::parse_str(v).ok())
            .map(Some)
            .ok_or_else(|| {
                Problem::new(StatusCode::BAD_REQUEST, "X-Correlation-Id must be a UUID")
            }),
    }
}

impl Gateway {
    /// Sends `command` under the request's idempotency key and answers
    /// with `status` and the outcome.
    async fn command(
        &self,
        headers: &HeaderMap,
        route: &str,
        body: &[u8],
        id: &str,
        command: AccountCommand,
        status: StatusCode,
    ) -> Result<Response, Problem> {
        let key = idempotency_key(headers)?;
        let command_id = uuid::Uuid::new_v5(&KEYS, key.as_bytes());
        // The request's fingerprint travels in the events' metadata: a
        // replay of the key with another request is told apart.
        let canonical = serde_json::from_slice::<serde_json::Value>(body)
            .map(|v| v.to_string())
            .unwrap_or_default();
        let fingerprint =
            uuid::Uuid::new_v5(&KEYS, format!("{route}\n{canonical}").as_bytes()).to_string();
        let mut context = CommandContext::new()
            .with_command_id(command_id)
            .with("request", fingerprint.clone());
        if let Some(correlation) = correlation(headers)? {
            context = context.with_correlation_id(correlation);
        }
        let correlation_id = context.correlation_id.unwrap_or(command_id);
        let span = tracing::info_span!("bank.http", %route, %correlation_id, %command_id);
        let outcome = self
            .accounts
            .execute_with(command, context)
            .instrument(span)
            .await?;
        let first = outcome.events.first();
        if first.is_some_and(|e| e.metadata.get("request") != Some(&json!(fingerprint))) {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was used for another request",
            ));
        }
        let reply = CommandReply {
            account: id.to_owned(),
            version: outcome.version,
            position: outcome.events.last().map_or(0, |e| e.global_position),
            events: outcome
                .events
                .iter()
                .map(|e| {
                    // The payload as stored (and as history and /events show it).
                    let data = e.data.encode().ok().and_then(|p| p.to_value().ok());
                    json!({ "type": &*e.event_type, "version": e.stream_version, "data": data })
                })
                .collect(),
        };
        let mut response = (status, Json(reply)).into_response();
        if let Ok(value) = HeaderValue::from_str(&correlation_id.to_string()) {
            response.headers_mut().insert("x-correlation-id", value);
        }
        Ok(response)
    }

    /// Asks reporting for a document.
    async fn document<T: DeserializeOwned>(
        &self,
        query: &str,
        key: String,
        wait: ReadQuery,
        headers: &HeaderMap,
    ) -> Result<Json<DocumentReply<T>>, Problem> {
        let correlation = correlation(headers)?.unwrap_or_else(uuid::Uuid::now_v7);
        let asked = DocumentQuery {
            key,
            min_version: wait.min_version,
            timeout_ms: wait.timeout_ms,
        };
        // Enough for reporting to wait as asked, then answer.
        let timeout = Duration::from_millis(wait.timeout_ms.unwrap_or(2_000).min(30_000))
            + self.config.request_timeout;
        let span = tracing::info_span!("bank.http", route = %format!("GET {query}"), correlation_id = %correlation);
        let reply = queries::ask(
            &self.client,
            &self.config.reporting_service,
            query,
            &asked,
            correlation,
            timeout,
        )
        .instrument(span)
        .await?;
        Ok(Json(reply))
    }
}

// ---- queries ----

#[derive(Deserialize)]
struct ReadQuery {
    /// Wait until the document has reached this version.
    min_version: Option<u64>,
    /// How long to wait, in milliseconds (default 2,000, at most 30,000).
    timeout_ms: Option<u64>,
}

async fn balance(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    Query(wait): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Json<DocumentReply<Balance>>, Problem> {
    gateway.document("balance", id, wait, &headers).await
}

async fn ledger(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    Query(wait): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Json<DocumentReply<Ledger>>, Problem> {
    gateway.document("ledger", id, wait, &headers).await
}

async fn daily(
    State(gateway): State<Gateway>,
    Path(date): Path<String>,
    headers: HeaderMap,
) -> Result<Json<DocumentReply<DailyTotals>>, Problem> {
    if chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_err() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "the date must be YYYY-MM-DD",
        ));
    }
    let now = ReadQuery {
        min_version: None,
        timeout_ms: None,
    };
    gateway.document("daily", date, now, &headers).await
}

async fn history(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<HistoryEvent>>, Problem> {
    let correlation = correlation(&headers)?.unwrap_or_else(uuid::Uuid::now_v7);
    let events = queries::ask(
        &gateway.client,
        &gateway.config.accounts_service,
        "history",
        &HistoryQuery { id },
        correlation,
        gateway.config.request_timeout,
    )
    .await?;
    Ok(Json(events))
}

#[derive(Deserialize)]
struct EventsQuery {
    /// The first sequence to send.
    from: Option<u64>,
}

/// The accounts events as Server-Sent Events, from the JetStream stream
/// the accounts service publishes: each with its sequence as `id`, its
/// type as `event`, and the account, version, correlation id and payload
/// as `data`. A client that reconnects with `Last-Event-ID` gets what
/// follows that event, nothing missed and nothing twice.
async fn events(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, Problem> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use evently::backend::LogItem;
    use evently::nats::JetStreamSource;
    use evently::EventSource;
    use futures::StreamExt;

    let source = JetStreamSource::new(gateway.client.clone(), &gateway.config.events_stream);
    let last_seen = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "Last-Event-ID must be a sequence number",
                    )
                })
        })
        .transpose()?;
    let from = match (last_seen, query.from) {
        (Some(seen), _) => seen + 1,
        (None, Some(from)) => from.max(1),
        (None, None) => {
            source
                .events_after(0, u64::MAX)
                .await
                .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
                + 1
        }
    };
    let stream = source.rows_from(from).filter_map(|item| async move {
        match item {
            Ok(LogItem::Event(event)) => {
                let data = json!({
                    "account": event.aggregate_id(),
                    "version": event.stream_version,
                    "correlation_id": event.metadata.correlation_id,
                    "data": event.data.to_value().ok(),
                });
                Some(Ok::<_, std::convert::Infallible>(
                    Event::default()
                        .id(event.global_position.to_string())
                        .event(&*event.event_type)
                        .data(data.to_string()),
                ))
            }
            // Not an event of ours: a comment keeps the place.
            Ok(LogItem::Unreadable(row)) => Some(Ok(
                Event::default().comment(format!("unreadable message {}", row.global_position))
            )),
            Err(e) => {
                tracing::warn!(error = %e, "the event stream failed; the client reconnects");
                None
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
