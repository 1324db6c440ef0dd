//! What the framework tells an operator: `tracing` spans and `metrics`.
//!
//! **Spans.** Every command runs in a span `evently.command` (level INFO)
//! with the fields `aggregate` (the aggregate type), `stream`, `command`
//! (its type), `command_id` and `correlation_id`, and, when it ends,
//! `outcome` and `attempts`; inside it, `evently.load`, `evently.decide`
//! and `evently.append` (level DEBUG). A projection applies each batch in
//! a span `evently.projection.batch` (`projection`, `first`, `last`,
//! `events`) and each event in it under `evently.projection.event`
//! (DEBUG; `position`, `event_type`, `correlation_id`). The NATS crate
//! adds `evently.publish` for the publisher and `evently.remote_command`
//! and `evently.serve_command` for a command sent to another service, both
//! with the command's `correlation_id`: one request can be followed across
//! services by that field.
//!
//! **Metrics**, through the [`metrics`] facade: nothing is recorded until
//! the application installs a recorder (a Prometheus exporter, say). The
//! names are the constants of this module:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`COMMANDS`] | counter | `aggregate`, `outcome` (`accepted`, `rejected`, `conflict`, `failed`) |
//! | [`COMMAND_SECONDS`] | histogram | `aggregate` |
//! | [`APPEND_SECONDS`] | histogram | `aggregate` |
//! | [`CONFLICTS`] | counter | `aggregate` (each conflict met, retried or not) |
//! | [`PROJECTION_EVENTS`] | counter | `projection` (events applied) |
//! | [`PROJECTION_LAG_EVENTS`] | gauge | `projection` (source head − checkpoint) |
//! | [`PROJECTION_LAG_SECONDS`] | gauge | `projection` (age of the last event applied) |
//! | [`PARKED_EVENTS`] | counter | `projection` |
//!
//! and, from `evently-nats`, `evently_publisher_lag_events`,
//! `evently_published_events_total`, `evently_remote_commands_total` and
//! `evently_remote_command_seconds`.

/// Commands run, by aggregate type and outcome.
pub const COMMANDS: &str = "evently_commands_total";
/// A command's duration from load to answer, in seconds.
pub const COMMAND_SECONDS: &str = "evently_command_seconds";
/// An append's duration, in seconds.
pub const APPEND_SECONDS: &str = "evently_append_seconds";
/// Conflicts met by commands (another writer appended first).
pub const CONFLICTS: &str = "evently_conflicts_total";
/// Events a projection applied.
pub const PROJECTION_EVENTS: &str = "evently_projection_events_total";
/// How many events a projection is behind its source's head.
pub const PROJECTION_LAG_EVENTS: &str = "evently_projection_lag_events";
/// How long ago the last event a projection applied was recorded.
pub const PROJECTION_LAG_SECONDS: &str = "evently_projection_lag_seconds";
/// Events a projection parked.
pub const PARKED_EVENTS: &str = "evently_parked_events_total";

/// The outcome label of a command's result.
pub(crate) fn outcome_label<E, O>(result: &Result<O, crate::CommandError<E>>) -> &'static str {
    match result {
        Ok(_) => "accepted",
        Err(crate::CommandError::Rejected(_)) => "rejected",
        Err(crate::CommandError::Conflict { .. }) => "conflict",
        Err(_) => "failed",
    }
}
