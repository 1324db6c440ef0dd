//! `projections`, `parked`, `retry` and `rebuild`.
//!
//! Listing needs no Rust types. Retrying and rebuilding run the
//! projection's handlers, so they need its code: a service registers its
//! views and projections with [`crate::Cli`] and carries the commands in
//! its own binary (as Marten's and Akka's users do); the plain `es` binary
//! says so and exits with [`crate::Exit::Refused`].

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use evently_core::projection::{
    OnFailure, Projection, ProjectionOptions, ProjectionProgress, ProjectionStatus,
};
use evently_core::view::View;
use evently_postgres::{PgEventStore, RebuildError};
use futures::future::LocalBoxFuture;
use serde::Serialize;
use sqlx::postgres::PgConnection;

use crate::args::{ParkedArgs, RebuildArgs, RetryArgs};
use crate::error::{CliError, Exit};
use crate::output::{self, clip, Table};
use crate::store::Inspector;

// Local futures: the store's rebuild futures are `Send`, but rustc cannot
// prove it for every lifetime inside this type-erased, generic closure
// (the higher-ranked `Executor` bound of sqlx); the command runs them on
// its own task, so nothing needs them `Send`.
type Progress = Box<dyn FnMut(&ProjectionProgress, &ProjectionStatus) + Send>;
type RebuildFn = Arc<
    dyn Fn(
            PgEventStore,
            ProjectionOptions,
            Progress,
        ) -> LocalBoxFuture<'static, Result<ProjectionStatus, RebuildError>>
        + Send
        + Sync,
>;
type RetryFn =
    Arc<dyn Fn(PgEventStore, u64) -> LocalBoxFuture<'static, Result<bool, CliError>> + Send + Sync>;

/// A view or projection whose code this binary carries.
#[derive(Clone)]
pub(crate) struct Registered {
    /// What the operator types: the view's name, or the projection's.
    pub(crate) name: String,
    /// Its checkpoint's name (`view_<name>` for a view).
    pub(crate) checkpoint: String,
    rebuild: RebuildFn,
    retry: RetryFn,
}

/// The registered views and projections.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    entries: Vec<Registered>,
}

impl Registry {
    pub(crate) fn view<V: View>(&mut self, name: &str) {
        let owned = name.to_owned();
        let rebuild_name = owned.clone();
        let retry_name = owned.clone();
        self.entries.push(Registered {
            name: owned.clone(),
            checkpoint: format!("view_{owned}"),
            rebuild: Arc::new(move |store, options, progress| {
                let name = rebuild_name.clone();
                Box::pin(async move {
                    let handle = store.rebuild_view::<V>(&name, options, progress).await?;
                    Ok(handle.stop().await)
                })
            }),
            retry: Arc::new(move |store, position| {
                let name = retry_name.clone();
                Box::pin(async move {
                    store
                        .retry_parked_view::<V>(&name, position)
                        .await
                        .map_err(|e| CliError::failed(e.to_string()))
                })
            }),
        });
    }

    pub(crate) fn projection<P, F>(&mut self, make: F, reset_sql: String)
    where
        P: Projection<Sink = PgConnection>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let name = make().name().to_owned();
        let for_retry = make.clone();
        self.entries.push(Registered {
            name: name.clone(),
            checkpoint: name,
            rebuild: Arc::new(move |store, options, progress| {
                let projection = make();
                let reset_sql = reset_sql.clone();
                Box::pin(async move {
                    let handle = store
                        .rebuild_projection_in_place(projection, options, &reset_sql, progress)
                        .await?;
                    Ok(handle.stop().await)
                })
            }),
            retry: Arc::new(move |store, position| {
                let projection = for_retry();
                Box::pin(async move {
                    store
                        .retry_parked(&projection, position)
                        .await
                        .map_err(CliError::from)
                })
            }),
        });
    }

    fn find(&self, name: &str) -> Option<&Registered> {
        self.entries
            .iter()
            .find(|r| r.name == name || r.checkpoint == name)
    }

    fn not_registered(&self, name: &str, what: &str) -> CliError {
        let known: Vec<&str> = self.entries.iter().map(|r| r.name.as_str()).collect();
        CliError::refused(format!(
            "{what} `{name}` runs its handlers, and this binary does not carry its code{}; \
             run your service's own `es` (evently_cli::Cli::new().view::<YourView>(\"{name}\")) — see evently-cli's docs",
            if known.is_empty() {
                String::new()
            } else {
                format!(" (it carries: {})", known.join(", "))
            }
        ))
    }
}

/// `es projections`.
pub(crate) async fn list(
    inspector: &Inspector,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let rows = inspector.projections().await?;
    if json {
        return output::json(out, &rows);
    }
    let mut table = Table::new(&[
        "PROJECTION",
        "POSITION",
        "BEHIND",
        "LAG",
        "PARKED",
        "UPDATED",
    ]);
    for p in &rows {
        table.row(vec![
            p.name.clone(),
            if p.running {
                "running".into()
            } else {
                "stopped".into()
            },
            p.position.to_string(),
            p.behind_events.to_string(),
            format!("{:.1}s", p.lag_seconds),
            p.parked.to_string(),
            output::time(&p.updated_at),
        ]);
    }
    table.print(out)?;
    Ok(())
}

/// The checkpoint name `name` refers to: itself, or `view_<name>`.
async fn checkpoint_name(inspector: &Inspector, name: &str) -> Result<String, CliError> {
    let rows = inspector.projections().await?;
    if rows.iter().any(|p| p.name == name) {
        return Ok(name.to_owned());
    }
    let view = format!("view_{name}");
    if rows.iter().any(|p| p.name == view) {
        return Ok(view);
    }
    Err(CliError::not_found(format!(
        "no projection named `{name}` (nor `{view}`) has a checkpoint in schema {:?}; `es projections` lists them",
        inspector.store().schema()
    )))
}

/// `es parked`.
pub(crate) async fn parked(
    inspector: &Inspector,
    args: &ParkedArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let name = checkpoint_name(inspector, &args.name).await?;
    let parked = inspector.store().parked(&name).await?;
    if json {
        #[derive(Serialize)]
        struct Row<'a> {
            position: u64,
            event_id: uuid::Uuid,
            stream_id: &'a str,
            stream_version: u64,
            event_type: &'a str,
            error: &'a str,
        }
        let rows: Vec<Row> = parked
            .iter()
            .map(|p| Row {
                position: p.position,
                event_id: p.event_id,
                stream_id: &p.stream_id,
                stream_version: p.stream_version,
                event_type: &p.event_type,
                error: &p.error,
            })
            .collect();
        return output::json(out, &rows);
    }
    let mut table = Table::new(&["POSITION", "STREAM", "VERSION", "TYPE", "ERROR"]);
    for p in &parked {
        table.row(vec![
            p.position.to_string(),
            p.stream_id.clone(),
            p.stream_version.to_string(),
            p.event_type.clone(),
            clip(&p.error, 80),
        ]);
    }
    table.print(out)?;
    writeln!(out, "{} parked event(s) in `{name}`", parked.len())?;
    Ok(())
}

/// `es retry`.
pub(crate) async fn retry(
    inspector: &Inspector,
    registry: &Registry,
    args: &RetryArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let entry = registry
        .find(&args.name)
        .ok_or_else(|| registry.not_registered(&args.name, "retrying a parked event of"))?;
    let parked = inspector.store().parked(&entry.checkpoint).await?;
    let positions: Vec<u64> = match args.position {
        Some(p) if parked.iter().any(|e| e.position == p) => vec![p],
        Some(p) => {
            return Err(CliError::not_found(format!(
                "`{}` has no parked event at position {p}; `es parked {}` lists them",
                entry.name, entry.name
            )))
        }
        None => parked.iter().map(|e| e.position).collect(),
    };
    let (mut applied, mut errors) = (Vec::new(), Vec::new());
    for position in positions {
        match (entry.retry)(inspector.store().clone(), position).await {
            Ok(true) => applied.push(position),
            // Retried meanwhile by someone else.
            Ok(false) => {}
            // The handler failed again: the event stays parked.
            Err(e) if e.exit == Exit::Unavailable => return Err(e),
            Err(e) => errors.push(serde_json::json!({ "position": position, "error": e.message })),
        }
    }
    // An event that failed again is still parked.
    let still: Vec<u64> = inspector
        .store()
        .parked(&entry.checkpoint)
        .await?
        .iter()
        .map(|e| e.position)
        .collect();
    applied.retain(|p| !still.contains(p));
    if json {
        output::json(
            out,
            &serde_json::json!({ "projection": entry.name, "applied": applied, "still_parked": still, "errors": errors }),
        )?;
    } else {
        writeln!(
            out,
            "`{}`: {} event(s) applied, {} still parked",
            entry.name,
            applied.len(),
            still.len()
        )?;
        for e in &errors {
            writeln!(
                out,
                "  position {}: {}",
                e["position"],
                e["error"].as_str().unwrap_or_default()
            )?;
        }
    }
    if still.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(
            Exit::Failed,
            format!(
                "{} event(s) of `{}` are still parked: `es parked {}` shows why",
                still.len(),
                entry.name,
                entry.name
            ),
        ))
    }
}

/// `es rebuild`.
pub(crate) async fn rebuild(
    inspector: &Inspector,
    registry: &Registry,
    args: &RebuildArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let entry = registry
        .find(&args.name)
        .ok_or_else(|| registry.not_registered(&args.name, "rebuilding"))?;
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} events, {per_sec}, {eta} left",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {}", entry.name));
    let started = Instant::now();
    let shown = bar.clone();
    let report = move |progress: &ProjectionProgress, status: &ProjectionStatus| {
        // The head may move during the rebuild: the total is what is done
        // plus what is behind, now.
        shown.set_length(status.processed + progress.behind);
        shown.set_position(status.processed);
    };
    let status = (entry.rebuild)(
        inspector.store().clone(),
        ProjectionOptions::default().on_failure(match args.on_failure {
            crate::args::OnFailureArg::Stop => OnFailure::Stop,
            crate::args::OnFailureArg::Park => OnFailure::Park,
        }),
        Box::new(report),
    )
    .await
    .map_err(|e| match e {
        RebuildError::Running { .. } => {
            CliError::refused(format!("{e}; stop every instance of it first"))
        }
        RebuildError::Store(s) => s.into(),
        other => CliError::failed(other.to_string()),
    })?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().max(Duration::from_millis(1));
    let rate = status.processed as f64 / elapsed.as_secs_f64();
    if json {
        output::json(
            out,
            &serde_json::json!({
                "projection": entry.name,
                "events": status.processed,
                "position": status.position,
                "parked": status.parked,
                "seconds": elapsed.as_secs_f64(),
                "events_per_second": rate,
            }),
        )?;
    } else {
        writeln!(
            out,
            "rebuilt `{}`: {} events in {:.2}s ({:.0} events/s), position {}, {} parked",
            entry.name,
            status.processed,
            elapsed.as_secs_f64(),
            rate,
            status.position,
            status.parked
        )?;
    }
    Ok(())
}
