//! Commands by virtual address: a [`Repository`](evently_core::Repository) served on NATS, and a
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

mod client;
mod discovery;
mod server;

use std::collections::BTreeMap;

use evently_core::Metadata;
use serde::{Deserialize, Serialize};

pub use client::{RemoteError, RemoteRepository};
pub use discovery::{discover, Instance};
pub use server::{CommandService, ServeError};

/// Metric: commands sent to another service, by subject and outcome
/// (`accepted`, `rejected`, `conflict`, `no_responders`, `timed_out`,
/// `failed`).
pub const REMOTE_COMMANDS: &str = "evently_remote_commands_total";
/// Metric: a remote command's duration, retries included, in seconds.
pub const REMOTE_COMMAND_SECONDS: &str = "evently_remote_command_seconds";

/// The header that carries a failure's detail.
pub const ERROR_HEADER: &str = "Evently-Error";
/// The queue group every instance's endpoints join.
pub const QUEUE_GROUP: &str = "q";

/// A command as it travels.
#[derive(Serialize, Deserialize)]
pub(crate) struct WireRequest {
    pub(crate) command: serde_json::Value,
    pub(crate) command_id: uuid::Uuid,
    #[serde(default)]
    pub(crate) correlation_id: Option<uuid::Uuid>,
    #[serde(default)]
    pub(crate) causation_id: Option<uuid::Uuid>,
    #[serde(default)]
    pub(crate) actor: Option<String>,
    #[serde(default)]
    pub(crate) extra: BTreeMap<String, serde_json::Value>,
}

/// An outcome as it travels.
#[derive(Serialize, Deserialize)]
pub(crate) struct WireOutcome {
    pub(crate) stream_id: String,
    pub(crate) version: u64,
    pub(crate) attempts: u32,
    pub(crate) events: Vec<WireEvent>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WireEvent {
    pub(crate) event_id: uuid::Uuid,
    pub(crate) stream_version: u64,
    pub(crate) global_position: u64,
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    pub(crate) data: Box<serde_json::value::RawValue>,
    pub(crate) metadata: Metadata,
    pub(crate) recorded_at: chrono::DateTime<chrono::Utc>,
}

/// A failure as it travels (the `Evently-Error` header).
#[derive(Serialize, Deserialize)]
pub(crate) struct WireError {
    /// The aggregate's error as JSON, for a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rejection: Option<serde_json::Value>,
    /// What happened, in words.
    pub(crate) message: String,
}
