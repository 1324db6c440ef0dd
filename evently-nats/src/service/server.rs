//! The serving side: a NATS service that runs a repository's commands.

use async_nats::service::{self, ServiceExt};
use async_nats::HeaderMap;
use bytes::Bytes;
use evently_core::{
    Aggregate, CommandContext, CommandError, CommandOutcome, CommandStore, Event, EventStore,
    Repository, RoutedCommand,
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use super::{WireError, WireEvent, WireOutcome, WireRequest, ERROR_HEADER, QUEUE_GROUP};

/// Why a service could not start or serve.
#[derive(Debug, thiserror::Error)]
#[error("NATS service: {0}")]
pub struct ServeError(pub(super) String);

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

    /// This instance's id, as `$SRV.PING` and [`discover`](super::discover) report it.
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
                        let span = tracing::info_span!(
                            "evently.serve_command",
                            aggregate = A::TYPE,
                            command_id = tracing::field::Empty,
                            correlation_id = tracing::field::Empty,
                        );
                        let (reply, headers) = handle(&repository, &request.message.payload)
                            .instrument(span)
                            .await;
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
    let span = tracing::Span::current();
    span.record("command_id", tracing::field::display(request.command_id));
    span.record(
        "correlation_id",
        tracing::field::display(request.correlation_id.unwrap_or(request.command_id)),
    );
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
