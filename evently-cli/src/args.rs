//! The command line, with clap.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `es`: look at an evently log, its projections and its audit trails.
#[derive(Debug, Parser)]
#[command(name = "es", version, about, long_about = None)]
pub struct Cli {
    /// The store: `postgres://user@host:port/database`.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub url: Option<String>,
    /// The store's schema (PostgreSQL).
    #[arg(long, env = "ES_SCHEMA", default_value = "es", global = true)]
    pub schema: String,
    /// Machine-readable output: one JSON document (or one per line for
    /// `tail`).
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lists streams with their versions and last activity.
    Streams(StreamsArgs),
    /// Shows one stream's events with their metadata.
    Show(ShowArgs),
    /// Follows the global log, from a position or from its end.
    Tail(TailArgs),
    /// Every event and command of one request, as a causation tree.
    Audit(AuditArgs),
    /// The projections: position, lag in events and seconds, parked events.
    Projections,
    /// Rebuilds a projection from the start of the log, with a progress bar.
    Rebuild(RebuildArgs),
    /// Lists a projection's parked events.
    Parked(ParkedArgs),
    /// Applies a projection's parked events again.
    Retry(RetryArgs),
    /// Writes the log (or some streams) to a JSON-lines file.
    Export(ExportArgs),
    /// Reads a JSON-lines export into this store; safe to run again.
    Import(ImportArgs),
    /// Checks the store against an export, event by event, and that every
    /// stream's versions are contiguous.
    Verify(VerifyArgs),
    /// The store's health, and what holds the log's readers back.
    Status,
    /// Serves the log browser page (read-only).
    Serve(ServeArgs),
}

/// `es streams`.
#[derive(Debug, Args)]
pub struct StreamsArgs {
    /// Only streams whose id starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only streams of this aggregate type (ids `<type>-<id>`).
    #[arg(long = "type")]
    pub aggregate_type: Option<String>,
    /// At most this many streams, in id order.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// `es show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The stream's id.
    pub stream: String,
    /// Only the events up to a version (`12`) or a time (RFC 3339,
    /// `2026-12-01T10:00:00Z`): the aggregate's stored events as of then.
    #[arg(long)]
    pub as_of: Option<String>,
}

/// `es tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start after this global position (0: the whole log); default: the
    /// log's end, so only new events show.
    #[arg(long)]
    pub from: Option<u64>,
    /// Only events of these types.
    #[arg(long = "type")]
    pub event_types: Vec<String>,
    /// Only streams whose id starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
}

/// `es audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The request's correlation id.
    pub correlation_id: String,
}

/// `es rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection (or view) to rebuild; it must be stopped.
    pub name: String,
    /// What to do with an event its handler fails on: stop the rebuild
    /// there, or park the event (list it with `es parked`) and go on.
    #[arg(long, value_enum, default_value_t = OnFailureArg::Stop)]
    pub on_failure: OnFailureArg,
}

/// `--on-failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFailureArg {
    /// Stop at the failing event; nothing after it is applied.
    Stop,
    /// Park the failing event and go on.
    Park,
}

/// `es parked`.
#[derive(Debug, Args)]
pub struct ParkedArgs {
    /// The projection.
    pub name: String,
}

/// `es retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The projection (or view).
    pub name: String,
    /// Only the parked event at this position (default: all, in log order).
    #[arg(long)]
    pub position: Option<u64>,
}

/// `es export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The file to write (`-` for standard output).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Only these streams (repeat the flag); default: the whole log.
    #[arg(long = "stream")]
    pub streams: Vec<String>,
    /// Only streams whose id starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
}

/// `es import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The export to read.
    pub file: PathBuf,
}

/// `es verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The export to compare the store with; without it, only the streams'
    /// contiguity is checked.
    pub file: Option<PathBuf>,
}

/// `es serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen. Loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub bind: SocketAddr,
    /// A token every request must carry (`Authorization: Bearer …`, or
    /// `?token=…` once, which sets a cookie).
    #[arg(long, env = "ES_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where to write the address it listens on, once it does (for scripts
    /// that bind port 0).
    #[arg(long)]
    pub address_file: Option<PathBuf>,
}
