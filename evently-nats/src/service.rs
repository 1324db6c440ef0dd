//! Commands by virtual address: a [`Repository`] served on NATS, and a
//! typed client that reaches it by service name, however many instances
//! run and wherever they are.
//!
//! **Addresses.** [`CommandService::start`] registers a NATS service
//! (`$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer for it) and
//! [`CommandService::serve`] adds one endpoint per aggregate type, on the
//! subject `<service>.<aggregate type>`, in the queue group `q`: each
//! request goes to one instance. Any instance serves any aggregate id;
//! the store's optimistic concurrency keeps them correct, and each
//! instance's cache of live aggregates is checked against the store's
//! version on every append, so copies held by several instances are safe.
//!
//! **The wire.** A request is JSON: the command (its serde form), its id,
//! correlation, causation, actor and user keys. A success reply is the
//! outcome: the stream, its version, the attempts and the events as
//! stored. A failure reply is a NATS service error (the
//! `Nats-Service-Error` and `Nats-Service-Error-Code` headers, counted in
//! `$SRV.STATS`) with the detail in an `Evently-Error` header:
//! code 400 for a request that does not decode, 404 for an aggregate type
//! this service does not serve, 409 for a conflict that retries did not
//! resolve, 422 for the aggregate's own rejection (its error, as JSON),
//! 500 and 503 for store failures.
//!
//! **What it asks of your types.** The command must be `Serialize` and
//! `Deserialize`, and the aggregate's error too, so that a rejection
//! reaches the caller as the aggregate's own error value (its `Display`
//! text travels as well, for other languages' clients).
//!
//! **Exactly once.** Every command goes out with a command id and as an
//! idempotent command, so the store runs it once however often it
//! arrives. A time-out (the reply lost, or the instance gone mid-command)
//! is retried with the same id: with a store that keeps command records
//! (memory, PostgreSQL) a retried command returns the first outcome.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use async_nats::service::{self, ServiceExt};
use async_nats::HeaderMap;
use bytes::Bytes;
use evently_core::{
    Aggregate, CommandContext, CommandError, CommandOutcome, CommandStore, Event, EventStore,
    Metadata, Payload, RecordedEvent, Repository, RoutedCommand, StreamId,
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The header that carries a failure's detail.
pub const ERROR_HEADER: &str = "Evently-Error";
/// The queue group every instance's endpoints join.
pub const QUEUE_GROUP: &str = "q";

/// A command as it travels.
#[derive(Serialize, Deserialize)]
struct WireRequest {
    command: serde_json::Value,
    command_id: uuid::Uuid,
    #[serde(default)]
    correlation_id: Option<uuid::Uuid>,
    #[serde(default)]
    causation_id: Option<uuid::Uuid>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    extra: BTreeMap<String, serde_json::Value>,
}

/// An outcome as it travels.
#[derive(Serialize, Deserialize)]
struct WireOutcome {
    stream_id: String,
    version: u64,
    attempts: u32,
    events: Vec<WireEvent>,
}

#[derive(Serialize, Deserialize)]
struct WireEvent {
    event_id: uuid::Uuid,
    stream_version: u64,
    global_position: u64,
    event_type: String,
    schema_version: u32,
    data: Box<serde_json::value::RawValue>,
    metadata: Metadata,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

/// A failure as it travels (the `Evently-Error` header).
#[derive(Serialize, Deserialize)]
struct WireError {
    /// The aggregate's error as JSON, for a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejection: Option<serde_json::Value>,
    /// What happened, in words.
    message: String,
}

/// Why a service could not start or serve.
#[derive(Debug, thiserror::Error)]
#[error("NATS service: {0}")]
pub struct ServeError(String);

/// A NATS service that serves repositories' commands: one per process (or
/// more), several processes per service name.
pub struct CommandService {
    service: service::Service,
    name: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CommandService {
    /// Registers the service `name` (letters, digits, `-`, `_`) at
    /// `version` (semver) on `client`'s connection.
    pub async fn start(
        client: &async_nats::Client,
        name: &str,
        version: &str,
    ) -> Result<Self, ServeError> {
        let service = client
            .service_builder()
            .description(format!("evently command service {name}"))
            .queue_group(QUEUE_GROUP)
            .start(name, version)
            .await
            .map_err(|e| ServeError(e.to_string()))?;
        Ok(CommandService {
            service,
            name: name.to_owned(),
            tasks: Vec::new(),
        })
    }

    /// This instance's id, as `$SRV.PING` and [`discover`] report it.
    pub async fn id(&self) -> String {
        self.service.info().await.id
    }

    /// Serves `repository`'s commands on `<service>.<aggregate type>`,
    /// at most `concurrency` at a time on this instance (more wait in the
    /// connection's buffer: back-pressure, not unbounded tasks).
    pub async fn serve<A, S>(
        &mut self,
        repository: Repository<A, S>,
        concurrency: usize,
    ) -> Result<(), ServeError>
    where
        A: Aggregate,
        A::Command: RoutedCommand + DeserializeOwned,
        A::Error: Serialize,
        S: EventStore + CommandStore,
    {
        let endpoint = self
            .service
            .endpoint_builder()
            .name(A::TYPE)
            .add(format!("{}.{}", self.name, A::TYPE))
            .await
            .map_err(|e| ServeError(e.to_string()))?;
        self.tasks.push(tokio::spawn(async move {
            endpoint
                .for_each_concurrent(concurrency.max(1), |request| {
                    let repository = repository.clone();
                    async move {
                        let (reply, headers) = handle(&repository, &request.message.payload).await;
                        if let Err(e) = request.respond_with_headers(reply, headers).await {
                            tracing::warn!(error = %e, "cannot send a command's reply");
                        }
                    }
                })
                .await;
        }));
        Ok(())
    }

    /// Stops taking requests (they go to the other instances) and
    /// unregisters; commands being executed are abandoned, and their
    /// callers retry them elsewhere with the same id.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.service.stop().await;
    }
}

fn failure(
    code: usize,
    message: String,
    rejection: Option<serde_json::Value>,
) -> (Result<Bytes, service::error::Error>, HeaderMap) {
    let mut headers = HeaderMap::new();
    let detail = serde_json::to_string(&WireError {
        rejection,
        message: message.clone(),
    })
    .unwrap_or_else(|_| "{}".to_owned());
    if let Ok(value) = detail.parse::<async_nats::HeaderValue>() {
        headers.insert(ERROR_HEADER, value);
    }
    // The status line cannot hold a line break.
    let status = message.replace(['\r', '\n'], " ");
    (Err(service::error::Error { status, code }), headers)
}

/// Executes one request; returns the reply and its headers.
async fn handle<A, S>(
    repository: &Repository<A, S>,
    body: &[u8],
) -> (Result<Bytes, service::error::Error>, HeaderMap)
where
    A: Aggregate,
    A::Command: RoutedCommand + DeserializeOwned,
    A::Error: Serialize,
    S: EventStore + CommandStore,
{
    let request: WireRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return failure(
                400,
                format!("the request is not a command request: {e}"),
                None,
            )
        }
    };
    let command: A::Command = match serde_json::from_value(request.command) {
        Ok(c) => c,
        Err(e) => {
            return failure(
                400,
                format!("the request holds no `{}` command: {e}", A::TYPE),
                None,
            )
        }
    };
    let mut context = CommandContext::new().with_command_id(request.command_id);
    context.correlation_id = request.correlation_id;
    context.causation_id = request.causation_id;
    context.actor = request.actor;
    context.extra = request.extra;
    match repository.execute_with(command, context).await {
        Ok(outcome) => match encode_outcome::<A>(outcome) {
            Ok(bytes) => (Ok(bytes), HeaderMap::new()),
            Err(e) => failure(500, format!("cannot encode the outcome: {e}"), None),
        },
        Err(CommandError::Rejected(error)) => {
            let message = error.to_string();
            failure(422, message, serde_json::to_value(&error).ok())
        }
        Err(e @ CommandError::Conflict { .. }) => failure(409, e.to_string(), None),
        Err(CommandError::Store(e)) if e.is_transient() => failure(503, e.to_string(), None),
        Err(e) => failure(500, e.to_string(), None),
    }
}

fn encode_outcome<A: Aggregate>(outcome: CommandOutcome<A::Event>) -> Result<Bytes, String> {
    let mut events = Vec::with_capacity(outcome.events.len());
    for e in &outcome.events {
        let payload = e.data.encode().map_err(|e| e.to_string())?;
        events.push(WireEvent {
            event_id: e.event_id,
            stream_version: e.stream_version,
            global_position: e.global_position,
            event_type: e.event_type.to_string(),
            schema_version: e.schema_version,
            data: serde_json::value::RawValue::from_string(payload.as_str().to_owned())
                .map_err(|e| e.to_string())?,
            metadata: e.metadata.clone(),
            recorded_at: e.recorded_at,
        });
    }
    serde_json::to_vec(&WireOutcome {
        stream_id: outcome.stream_id.as_str().to_owned(),
        version: outcome.version,
        attempts: outcome.attempts,
        events,
    })
    .map(Bytes::from)
    .map_err(|e| e.to_string())
}

/// Why a remote command did not succeed. Only `Rejected` says the command
/// was refused; after `TimedOut` or `NoResponders` it may still run once
/// (it is idempotent: send it again with the same context to learn its
/// outcome).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError<E> {
    /// The aggregate refused the command: its own error.
    #[error("rejected: {0}")]
    Rejected(E),
    /// Concurrent writers kept conflicting past the server's retries.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The service could not read the request (400) or does not serve
    /// this aggregate type (404).
    #[error("invalid request ({code}): {message}")]
    InvalidRequest {
        /// 400 or 404.
        code: usize,
        /// The service's words.
        message: String,
    },
    /// The service's store failed (500, or 503 when it was unavailable).
    #[error("the service failed ({code}): {message}")]
    Failed {
        /// 500 or 503.
        code: usize,
        /// The service's words.
        message: String,
    },
    /// No instance serves the subject (after the client's retries).
    #[error("no instance serves `{subject}`")]
    NoResponders {
        /// The subject.
        subject: String,
    },
    /// No reply within the time-out, on every attempt.
    #[error("no reply from `{subject}` after {attempts} attempts")]
    TimedOut {
        /// The subject.
        subject: String,
        /// Attempts made, each with the same command id.
        attempts: u32,
    },
    /// A reply that is not one this service writes.
    #[error("unreadable reply: {0}")]
    BadReply(String),
}

impl<E> RemoteError<E> {
    /// The HTTP status a gateway answers with: 400, 404, 409, 422, 500,
    /// 503 (no instance) or 504 (time-out).
    pub fn status(&self) -> u16 {
        match self {
            RemoteError::Rejected(_) => 422,
            RemoteError::Conflict(_) => 409,
            RemoteError::InvalidRequest { code, .. } | RemoteError::Failed { code, .. } => {
                *code as u16
            }
            RemoteError::NoResponders { .. } => 503,
            RemoteError::TimedOut { .. } => 504,
            RemoteError::BadReply(_) => 502,
        }
    }
}

/// A typed client of an aggregate type served by a [`CommandService`]:
/// `execute` returns what a local [`Repository`] would.
pub struct RemoteRepository<A> {
    client: async_nats::Client,
    subject: String,
    timeout: Duration,
    attempts: u32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for RemoteRepository<A> {
    fn clone(&self) -> Self {
        RemoteRepository {
            client: self.client.clone(),
            subject: self.subject.clone(),
            timeout: self.timeout,
            attempts: self.attempts,
            _aggregate: PhantomData,
        }
    }
}

impl<A> RemoteRepository<A>
where
    A: Aggregate,
    A::Command: Serialize,
    A::Error: DeserializeOwned,
{
    /// The aggregate type `A` of the service `service`; a reply within
    /// 5 s, 5 attempts.
    pub fn new(client: async_nats::Client, service: &str) -> Self {
        RemoteRepository {
            client,
            subject: format!("{service}.{}", A::TYPE),
            timeout: Duration::from_secs(5),
            attempts: 5,
            _aggregate: PhantomData,
        }
    }

    /// How long to wait for each reply.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attempts per command (at least 1), all with the same command id.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Executes a command on some instance of the service.
    pub async fn execute(
        &self,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, RemoteError<A::Error>> {
        self.execute_with(command, CommandContext::new()).await
    }

    /// Executes a command with its context (id, correlation, causation,
    /// actor, user keys). The command is idempotent under its id.
    pub async fn execute_with(
        &self,
        command: A::Command,
        context: CommandContext,
    ) -> Result<CommandOutcome<A::Event>, RemoteError<A::Error>> {
        let body = serde_json::to_vec(&WireRequest {
            command: serde_json::to_value(&command)
                .map_err(|e| RemoteError::BadReply(format!("cannot encode the command: {e}")))?,
            command_id: context.command_id,
            correlation_id: context.correlation_id,
            causation_id: context.causation_id,
            actor: context.actor,
            extra: context.extra,
        })
        .map_err(|e| RemoteError::BadReply(format!("cannot encode the command: {e}")))?;
        let body = Bytes::from(body);
        let mut backoff = Duration::from_millis(20);
        let mut last = None;
        for attempt in 1..=self.attempts {
            let request = async_nats::Request::new()
                .payload(body.clone())
                .timeout(Some(self.timeout));
            match self
                .client
                .send_request(self.subject.clone(), request)
                .await
            {
                Ok(reply) => return self.read_reply(reply),
                Err(e) => {
                    let error = match e.kind() {
                        async_nats::RequestErrorKind::NoResponders => RemoteError::NoResponders {
                            subject: self.subject.clone(),
                        },
                        _ => RemoteError::TimedOut {
                            subject: self.subject.clone(),
                            attempts: attempt,
                        },
                    };
                    last = Some(error);
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        Err(last.unwrap_or(RemoteError::TimedOut {
            subject: self.subject.clone(),
            attempts: self.attempts,
        }))
    }

    fn read_reply(
        &self,
        reply: async_nats::Message,
    ) -> Result<CommandOutcome<A::Event>, RemoteError<A::Error>> {
        let headers = reply.headers.as_ref();
        let code = headers
            .and_then(|h| h.get(service::NATS_SERVICE_ERROR_CODE))
            .and_then(|v| v.as_str().parse::<usize>().ok());
        if let Some(code) = code {
            let detail: Option<WireError> = headers
                .and_then(|h| h.get(ERROR_HEADER))
                .and_then(|v| serde_json::from_str(v.as_str()).ok());
            let message = match &detail {
                Some(d) => d.message.clone(),
                None => headers
                    .and_then(|h| h.get(service::NATS_SERVICE_ERROR))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default(),
            };
            return Err(match code {
                422 => {
                    let rejection = detail.and_then(|d| d.rejection).ok_or_else(|| {
                        RemoteError::BadReply(format!("a rejection without its error: {message}"))
                    })?;
                    RemoteError::Rejected(serde_json::from_value(rejection).map_err(|e| {
                        RemoteError::BadReply(format!(
                            "the rejection is not a `{}` error: {e}",
                            A::TYPE
                        ))
                    })?)
                }
                409 => RemoteError::Conflict(message),
                400 | 404 => RemoteError::InvalidRequest { code, message },
                _ => RemoteError::Failed { code, message },
            });
        }
        let outcome: WireOutcome = serde_json::from_slice(&reply.payload)
            .map_err(|e| RemoteError::BadReply(e.to_string()))?;
        let stream_id = StreamId::new(&outcome.stream_id);
        let mut events = Vec::with_capacity(outcome.events.len());
        for e in outcome.events {
            let recorded = RecordedEvent {
                event_id: e.event_id,
                stream_id: stream_id.clone(),
                stream_version: e.stream_version,
                global_position: e.global_position,
                event_type: e.event_type.into(),
                schema_version: e.schema_version,
                data: Payload::from_json(e.data.get())
                    .map_err(|e| RemoteError::BadReply(e.to_string()))?,
                metadata: e.metadata,
                recorded_at: e.recorded_at,
            };
            events.extend(
                recorded
                    .decode_all::<A::Event>()
                    .map_err(|e| RemoteError::BadReply(e.to_string()))?,
            );
        }
        Ok(CommandOutcome {
            stream_id,
            events,
            version: outcome.version,
            attempts: outcome.attempts,
        })
    }
}

/// One running instance of a service, as discovery finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The instance's id.
    pub id: String,
    /// The service's version on it.
    pub version: String,
    /// Its endpoints: (name, subject).
    pub endpoints: Vec<(String, String)>,
    /// Requests it has handled, over all endpoints.
    pub requests: usize,
    /// Of those, the ones answered with an error.
    pub errors: usize,
    /// Time spent handling them.
    pub processing_time: Duration,
}

/// Finds the running instances of the service `name` and their health
/// (`$SRV.INFO.<name>` and `$SRV.STATS.<name>`, answers collected for
/// `wait`). An empty list: no instance answered.
pub async fn discover(
    client: &async_nats::Client,
    name: &str,
    wait: Duration,
) -> Result<Vec<Instance>, ServeError> {
    let infos: Vec<service::Info> = gather(client, &format!("$SRV.INFO.{name}"), wait).await?;
    let stats: Vec<service::Stats> = gather(client, &format!("$SRV.STATS.{name}"), wait).await?;
    let mut instances: Vec<Instance> = infos
        .into_iter()
        .map(|info| {
            let mine = stats.iter().find(|s| s.id == info.id);
            Instance {
                id: info.id.clone(),
                version: info.version,
                endpoints: info
                    .endpoints
                    .into_iter()
                    .map(|e| (e.name, e.subject))
                    .collect(),
                requests: mine.map_or(0, |s| s.endpoints.iter().map(|e| e.requests).sum()),
                errors: mine.map_or(0, |s| s.endpoints.iter().map(|e| e.errors).sum()),
                processing_time: mine.map_or(Duration::ZERO, |s| {
                    s.endpoints.iter().map(|e| e.processing_time).sum()
                }),
            }
        })
        .collect();
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(instances)
}

/// Sends an empty request to `subject` and decodes every reply that comes
/// within `wait`.
async fn gather<T: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    wait: Duration,
) -> Result<Vec<T>, ServeError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    client
        .publish_with_reply(subject.to_owned(), inbox, Bytes::new())
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        match serde_json::from_slice(&message.payload) {
            Ok(value) => out.push(value),
            Err(e) => tracing::debug!(error = %e, subject, "an unreadable discovery reply"),
        }
    }
    Ok(out)
}
