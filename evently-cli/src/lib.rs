//! The operator's tools for evently: the `es` command and the log browser
//! page it serves.
//!
//! `es` reads any evently schema on PostgreSQL, with no Rust types for its
//! events (payloads show as JSON):
//!
//! ```text
//! es streams [--prefix P] [--type T]      streams, versions, last activity
//! es show STREAM [--as-of VERSION|TIME]   a stream's events with metadata
//! es tail [--from POS] [--type T]         the live global log
//! es audit CORRELATION_ID                 one request's events and commands, as a causation tree
//! es projections                          positions, lag in events and seconds, parked events
//! es parked NAME | retry NAME | rebuild NAME
//! es export -o FILE | import FILE | verify [FILE]
//! es status                               health, and what holds the log's readers back
//! es serve [--bind ADDR] [--token T]      the log browser page
//! ```
//!
//! Every command takes `--json` for scripts; exit codes are [`Exit`]'s.
//!
//! Retrying a parked event and rebuilding a projection run the
//! projection's handlers, so they need its code. A service carries the
//! commands in a binary of its own, with its views and projections
//! registered:
//!
//! ```no_run
//! use evently_core::{Event, RecordedEvent};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! enum AccountEvent {
//!     Deposited { amount: u64 },
//! }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Balance {
//!     total: u64,
//! }
//!
//! impl evently_core::view::View for Balance {
//!     type Event = AccountEvent;
//!     fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
//!         let AccountEvent::Deposited { amount } = &event.data;
//!         self.total += amount;
//!     }
//! }
//!
//! // `my-tool rebuild balances`, `my-tool retry balances`, and every other
//! // `es` command, with this service's view.
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     evently_cli::Cli::new().view::<Balance>("balances").run().await
//! }
//! ```

#![warn(missing_docs)]

pub mod args;
mod copy;
mod error;
mod log;
mod output;
mod projections;
mod store;
mod verify;
mod web;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use evently_core::projection::Projection;
use evently_core::view::View;
use serde::Serialize;
use sqlx::postgres::PgConnection;

pub use copy::{check_export, export, import, ExportFile, ExportFilter, ImportReport, FORMAT};
pub use error::{CliError, Exit};
/// The progress bar [`export`], [`import`] and [`verify`] advance
/// (`ProgressBar::hidden()` for none).
pub use indicatif::ProgressBar;
pub use store::{CommandView, EventView, Inspector, ProjectionRow, StreamRow};
pub use verify::{verify, VerifyReport};

use args::Command;

/// The `es` command, with the views and projections this binary carries.
#[derive(Clone, Default)]
pub struct Cli {
    registry: projections::Registry,
}

impl Cli {
    /// The command with no views or projections registered (`es` itself).
    pub fn new() -> Self {
        Cli::default()
    }

    /// Registers the view `name` of type `V`, so `retry` and `rebuild` can
    /// run it. A rebuild empties its documents and replays the log.
    pub fn view<V: View>(mut self, name: &str) -> Self {
        self.registry.view::<V>(name);
        self
    }

    /// Registers a projection into your own tables, made by `make`, so
    /// `retry` and `rebuild` can run it. A rebuild runs `reset_sql` (one
    /// statement that empties its tables, for example `TRUNCATE balances`)
    /// in the transaction that drops its checkpoint, then replays the log.
    pub fn projection<P, F>(mut self, make: F, reset_sql: &str) -> Self
    where
        P: Projection<Sink = PgConnection>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        self.registry.projection(make, reset_sql.to_owned());
        self
    }

    /// Parses the process's arguments, runs the command, prints its output
    /// on stdout and its error on stderr, and returns the exit code.
    pub async fn run(self) -> ExitCode {
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        self.run_with(std::env::args_os(), &mut stdout, &mut stderr)
            .await
    }

    /// [`Cli::run`] with the arguments and the outputs given (tests, and
    /// tools that embed it).
    pub async fn run_with<I, T>(
        self,
        args: I,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
    ) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = match args::Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = write!(err, "{}", e.render());
                return if e.use_stderr() {
                    Exit::Usage.into()
                } else {
                    Exit::Ok.into()
                };
            }
        };
        match self.execute(&cli, out).await {
            Ok(()) => Exit::Ok.into(),
            Err(e) => {
                let _ = writeln!(err, "error: {}", e.message);
                e.exit.into()
            }
        }
    }

    async fn execute(&self, cli: &args::Cli, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
        let create = matches!(cli.command, Command::Import(_));
        let pg = store::open(cli.url.as_deref(), &cli.schema, create).await?;
        let inspector = Inspector::new(pg);
        let json = cli.json;
        match &cli.command {
            Command::Streams(a) => log::streams(&inspector, a, json, out).await,
            Command::Show(a) => log::show(&inspector, a, json, out).await,
            Command::Tail(a) => log::tail(&inspector, a, json, out).await,
            Command::Audit(a) => log::audit(&inspector, a, json, out).await,
            Command::Projections => projections::list(&inspector, json, out).await,
            Command::Parked(a) => projections::parked(&inspector, a, json, out).await,
            Command::Retry(a) => projections::retry(&inspector, &self.registry, a, json, out).await,
            Command::Rebuild(a) => {
                projections::rebuild(&inspector, &self.registry, a, json, out).await
            }
            Command::Export(a) => export_command(&inspector, a, json, out).await,
            Command::Import(a) => import_command(&inspector, a, json, out).await,
            Command::Verify(a) => verify_command(&inspector, a, json, out).await,
            Command::Status => status(&inspector, json, out).await,
            Command::Serve(a) => web::serve(inspector, a, out).await,
        }
    }
}

fn bar(json: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(len)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} events, {per_sec}, {eta} left",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

async fn export_command(
    inspector: &Inspector,
    args: &args::ExportArgs,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let (_, total) = inspector.counts().await?;
    let filter = ExportFilter {
        streams: args.streams.clone(),
        prefix: args.prefix.clone(),
    };
    let to_stdout = args.output.as_os_str() == "-";
    let bar = bar(json || to_stdout, total, "exporting");
    let started = std::time::Instant::now();
    let source = format!("schema {}", inspector.store().schema());
    let written = if to_stdout {
        export(inspector.store(), &source, &filter, out, &bar).await?
    } else {
        let mut file = std::fs::File::create(&args.output).map_err(|e| {
            CliError::failed(format!("{}: cannot create it: {e}", args.output.display()))
        })?;
        let n = export(inspector.store(), &source, &filter, &mut file, &bar).await?;
        file.sync_all().map_err(|e| {
            CliError::failed(format!("{}: cannot write it: {e}", args.output.display()))
        })?;
        n
    };
    bar.finish_and_clear();
    if to_stdout {
        return Ok(());
    }
    let seconds = started.elapsed().as_secs_f64();
    if json {
        output::json(
            out,
            &serde_json::json!({ "file": args.output, "events": written, "seconds": seconds, "events_per_second": written as f64 / seconds.max(1e-9) }),
        )
    } else {
        writeln!(
            out,
            "exported {written} events to {} in {seconds:.2}s ({:.0} events/s)",
            args.output.display(),
            written as f64 / seconds.max(1e-9)
        )?;
        Ok(())
    }
}

async fn import_command(
    inspector: &Inspector,
    args: &args::ImportArgs,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let bar = bar(json, 0, "importing");
    let report = import(inspector.store(), &args.file, &bar).await?;
    bar.finish_and_clear();
    if json {
        output::json(out, &report)
    } else {
        writeln!(
            out,
            "imported {} of {} events ({} already there) in {:.2}s ({:.0} events/s)",
            report.imported,
            report.events,
            report.skipped,
            report.seconds,
            report.events as f64 / report.seconds.max(1e-9)
        )?;
        Ok(())
    }
}

async fn verify_command(
    inspector: &Inspector,
    args: &args::VerifyArgs,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let bar = bar(json, 0, "verifying");
    let report = verify(inspector.store(), args.file.as_deref(), &bar).await?;
    bar.finish_and_clear();
    if json {
        output::json(out, &report)?;
    } else {
        match report.file_events {
            Some(n) => writeln!(
                out,
                "{} store events in {} streams against {n} in the file: {}",
                report.store_events,
                report.streams,
                if report.differences.is_empty() {
                    "identical"
                } else {
                    "DIFFERENT"
                }
            )?,
            None => writeln!(
                out,
                "{} events in {} streams: {}",
                report.store_events,
                report.streams,
                if report.differences.is_empty() {
                    "every stream's versions are contiguous"
                } else {
                    "GAPS"
                }
            )?,
        }
        for d in &report.differences {
            writeln!(out, "  {d}")?;
        }
    }
    match report.differences.first() {
        None => Ok(()),
        Some(first) => Err(CliError::mismatch(format!(
            "verification failed: {first}{}",
            if report.differences.len() > 1 {
                format!(" (and {} more)", report.differences.len() - 1)
            } else {
                String::new()
            }
        ))),
    }
}

/// `es status --json`.
#[derive(Debug, Serialize)]
struct Status {
    schema: String,
    streams: u64,
    events: u64,
    readable_head: u64,
    waiting_events: u64,
    holding_readers_back: Option<Holder>,
    projections: Vec<ProjectionRow>,
}

#[derive(Debug, Serialize)]
struct Holder {
    pid: i32,
    application_name: Option<String>,
    state: Option<String>,
    transaction_seconds: Option<f64>,
    query: Option<String>,
}

async fn status(
    inspector: &Inspector,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let log = inspector.store().status().await?;
    let (streams, events) = inspector.counts().await?;
    let projections = inspector.projections().await?;
    let holder = log.oldest_transaction.map(|t| Holder {
        pid: t.pid,
        application_name: t.application_name,
        state: t.state,
        transaction_seconds: t
            .transaction_started
            .map(|s| (chrono::Utc::now() - s).num_milliseconds() as f64 / 1000.0),
        query: t.query,
    });
    let status = Status {
        schema: inspector.store().schema().to_owned(),
        streams,
        events,
        readable_head: log.readable_head,
        waiting_events: log.waiting_events,
        holding_readers_back: holder,
        projections,
    };
    if json {
        return output::json(out, &status);
    }
    writeln!(
        out,
        "schema {}: {} streams, {} events, readable head {}",
        status.schema, streams, events, status.readable_head
    )?;
    match &status.holding_readers_back {
        Some(h) if status.waiting_events > 0 => writeln!(
            out,
            "readers wait: {} committed event(s) sit behind transaction pid {} ({}, {}, open {:.1}s): {}\n  end it with SELECT pg_terminate_backend({}) if it is stuck",
            status.waiting_events,
            h.pid,
            h.application_name.as_deref().filter(|a| !a.is_empty()).unwrap_or("no application name"),
            h.state.as_deref().unwrap_or("?"),
            h.transaction_seconds.unwrap_or(0.0),
            h.query.as_deref().unwrap_or(""),
            h.pid
        )?,
        Some(h) => writeln!(
            out,
            "readers are not held back (the oldest writing transaction, pid {} ({}), has nothing waiting behind it)",
            h.pid,
            h.application_name.as_deref().filter(|a| !a.is_empty()).unwrap_or("no application name")
        )?,
        None => writeln!(out, "readers are not held back: no writing transaction is open")?,
    }
    for p in &status.projections {
        writeln!(
            out,
            "projection {}: {} behind, lag {:.1}s, {} parked",
            p.name, p.behind_events, p.lag_seconds, p.parked
        )?;
    }
    Ok(())
}
