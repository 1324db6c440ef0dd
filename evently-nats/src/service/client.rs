//! The calling side: a typed client that reaches a repository by service
//! name.

use std::marker::PhantomData;
use std::time::Duration;

use async_nats::service;
use bytes::Bytes;
use evently_core::{Aggregate, CommandContext, CommandOutcome, Payload, RecordedEvent, StreamId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    WireError, WireOutcome, WireRequest, ERROR_HEADER, REMOTE_COMMANDS, REMOTE_COMMAND_SECONDS,
};

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

/// A typed client of an aggregate type served by a [`CommandService`](super::CommandService):
/// `execute` returns what a local [`Repository`](evently_core::Repository) would.
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
        use tracing::Instrument;
        let span = tracing::info_span!(
            "evently.remote_command",
            subject = %self.subject,
            command_id = %context.command_id,
            correlation_id = %context.correlation_id.unwrap_or(context.command_id),
            outcome = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = self.send(command, context).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(RemoteError::Rejected(_)) => "rejected",
            Err(RemoteError::Conflict(_)) => "conflict",
            Err(RemoteError::NoResponders { .. }) => "no_responders",
            Err(RemoteError::TimedOut { .. }) => "timed_out",
            Err(_) => "failed",
        };
        span.record("outcome", outcome);
        metrics::counter!(REMOTE_COMMANDS, "subject" => self.subject.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(REMOTE_COMMAND_SECONDS, "subject" => self.subject.clone())
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn send(
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

/// A remote repository sends a process manager's commands to another
/// service: its aggregate's refusal comes back as
/// [`Dispatched::Refused`](evently_core::process::Dispatched::Refused);
/// a time-out, no instance or a failure is an error the process's sender
/// retries, under the same command id.
impl<A> evently_core::process::Dispatch<A::Command> for RemoteRepository<A>
where
    A: Aggregate,
    A::Command: serde::Serialize,
    A::Error: serde::de::DeserializeOwned,
{
    async fn send(
        &self,
        command: A::Command,
        context: CommandContext,
    ) -> Result<evently_core::process::Dispatched, String> {
        match self.execute_with(command, context).await {
            Ok(_) => Ok(evently_core::process::Dispatched::Done),
            Err(RemoteError::Rejected(error)) => Ok(evently_core::process::Dispatched::Refused(
                error.to_string(),
            )),
            Err(error) => Err(error.to_string()),
        }
    }
}
