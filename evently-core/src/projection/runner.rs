//! The projection runner: follows the log from the target's checkpoint,
//! in batches, with retries, back-off and the failure policy.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tracing::Instrument;

use super::{
    HandlerError, OnFailure, Projection, ProjectionHandle, ProjectionOptions, ProjectionState,
    ProjectionStatus,
};
use crate::backend::{decode_handled, BatchError, LogItem, ProjectionTarget, UnreadableEvent};
use crate::error::StoreError;
use crate::event::{Event, RecordedEvent};
use crate::store::EventSource;

/// Starts a projection on a tokio task: the runner follows `store` (a
/// store's log, or any other [`EventSource`]) from `target`'s checkpoint. A panic in the projection stops this
/// projection only, marked failed.
pub fn run_projection<P, S, T>(
    store: S,
    projection: P,
    target: T,
    options: ProjectionOptions,
) -> ProjectionHandle
where
    P: Projection,
    S: EventSource,
    T: ProjectionTarget<P> + 'static,
{
    let initial = ProjectionStatus {
        name: projection.name().to_owned(),
        state: ProjectionState::Standby,
        position: 0,
        processed: 0,
        parked: 0,
        events_per_second: 0.0,
    };
    let (status_tx, status_rx) = watch::channel(initial);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut runner = Runner {
            store,
            projection,
            target,
            options,
            status: status_tx,
            stop: stop_rx,
            lag: Lag::default(),
        };
        let outcome = AssertUnwindSafe(runner.run()).catch_unwind().await;
        // Before the state says stopped: whoever waits for that may take
        // the lease next.
        runner.target.release(&runner.projection).await;
        let state = match outcome {
            Ok(Ok(())) => ProjectionState::Stopped,
            Ok(Err(reason)) => ProjectionState::Failed(reason),
            Err(panic) => ProjectionState::Failed(format!(
                "the projection panicked: {}",
                panic_message(&*panic)
            )),
        };
        if let ProjectionState::Failed(reason) = &state {
            tracing::error!(projection = %runner.status.borrow().name, %reason, "projection stopped");
        }
        runner.status.send_modify(|s| s.state = state);
    });
    ProjectionHandle {
        status: status_rx,
        stop: stop_tx,
        task,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

struct Runner<P, S, T> {
    store: S,
    projection: P,
    target: T,
    options: ProjectionOptions,
    status: watch::Sender<ProjectionStatus>,
    stop: watch::Receiver<bool>,
    lag: Lag,
}

/// The last count of the events behind the checkpoint.
#[derive(Default)]
struct Lag {
    /// When it was counted (never yet: `None`).
    counted: Option<Instant>,
    /// How many events were behind then.
    behind: u64,
    /// The events processed by then.
    processed: u64,
}

/// Lag in events is counted no further than this.
const LAG_CAP: u64 = 10_000_000;

/// How a run of the loop ended.
enum Restart {
    /// Stop was asked.
    Stop,
    /// Fenced out or the store failed: take the lease again and reload.
    Again,
}

impl<P, S, T> Runner<P, S, T>
where
    P: Projection,
    S: EventSource,
    T: ProjectionTarget<P>,
{
    /// Runs until stopped (Ok) or failed (Err with the reason).
    async fn run(&mut self) -> Result<(), String> {
        let mut failures = 0u32;
        loop {
            self.set_state(ProjectionState::Standby);
            let acquired = tokio::select! {
                acquired = self.target.acquire(&self.projection) => acquired,
                _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
            };
            match acquired {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    failures += 1;
                    tokio::time::sleep(self.backoff(failures)).await;
                    continue;
                }
                Err(e) => return Err(format!("cannot take the projection's lease: {e}")),
            }
            match self.follow().await {
                Ok(Restart::Stop) => return Ok(()),
                Ok(Restart::Again) => failures = 0,
                Err(StoreOrReason::Store(e)) if e.is_transient() => {
                    failures += 1;
                    tracing::warn!(projection = self.projection.name(), error = %e, "store unavailable; restarting from the checkpoint");
                    tokio::time::sleep(self.backoff(failures)).await;
                }
                Err(StoreOrReason::Store(e)) => return Err(e.to_string()),
                Err(StoreOrReason::Reason(reason)) => return Err(reason),
            }
        }
    }

    /// Follows the log from the checkpoint while this instance is active.
    async fn follow(&mut self) -> Result<Restart, StoreOrReason> {
        let mut checkpoint = self.target.checkpoint(&self.projection).await?;
        self.status.send_modify(|s| {
            s.position = checkpoint;
            s.state = ProjectionState::Running;
        });
        let mut log = self.store.rows_from(checkpoint + 1);
        let mut limit = self.options.batch_size;
        loop {
            // A batch: the next event, and whatever else is ready now, up to
            // a row that cannot be read or an error (handled after the
            // events before it are applied).
            let first = tokio::select! {
                next = log.next() => next,
                _ = self.stop.wait_for(|stop| *stop) => return Ok(Restart::Stop),
            };
            let Some(first) = first else {
                return Ok(Restart::Again);
            };
            let mut batch = Vec::new();
            let mut after: Option<Result<UnreadableEvent, StoreError>> = None;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Ok(LogItem::Event(event)) => batch.push(event),
                    Ok(LogItem::Unreadable(row)) => after = Some(Ok(row)),
                    Err(error) => after = Some(Err(error)),
                }
                if after.is_none() && batch.len() < limit {
                    next = log.next().now_or_never().flatten();
                }
            }
            if !batch.is_empty() {
                let started = Instant::now();
                let span = tracing::info_span!(
                    "evently.projection.batch",
                    projection = self.projection.name(),
                    first = batch[0].global_position,
                    last = batch[batch.len() - 1].global_position,
                    events = batch.len(),
                );
                match self.process(&batch, checkpoint).instrument(span).await? {
                    Some(new_checkpoint) => {
                        let n = batch.len() as u64;
                        self.report_lag(new_checkpoint, &batch[batch.len() - 1], n)
                            .await;
                        let elapsed = started.elapsed();
                        let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
                        limit = if elapsed > self.options.max_batch_time {
                            let fits = self.options.max_batch_time.as_secs_f64() * rate;
                            (fits as usize).clamp(1, self.options.batch_size)
                        } else {
                            limit.saturating_mul(2).min(self.options.batch_size)
                        };
                        checkpoint = new_checkpoint;
                        self.status.send_modify(|s| {
                            s.position = checkpoint;
                            s.processed += n;
                            s.events_per_second = rate;
                        });
                    }
                    None => return Ok(Restart::Again),
                }
            }
            match after {
                None => {}
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(row)) => match self.unreadable(&row, checkpoint).await? {
                    Some(new_checkpoint) => {
                        checkpoint = new_checkpoint;
                        self.status.send_modify(|s| {
                            s.position = checkpoint;
                            s.processed += 1;
                        });
                    }
                    None => return Ok(Restart::Again),
                },
            }
        }
    }

    /// A row of the log that cannot be read: skipped when it is of a type
    /// the projection does not handle, else parked or the projection
    /// stopped before it, as the policy says. Returns the new checkpoint,
    /// or None when fenced out.
    async fn unreadable(
        &mut self,
        row: &UnreadableEvent,
        checkpoint: u64,
    ) -> Result<Option<u64>, StoreOrReason> {
        // As `decode_handled` skips a current event of a type not handled.
        let skipped = row.event_type.as_deref().is_some_and(|event_type| {
            let current = <P::Event as Event>::current_version(event_type);
            current.is_some()
                && current == row.schema_version
                && !self.projection.handles().contains(&event_type)
        });
        let outcome = if skipped {
            self.target
                .apply_batch(&self.projection, &[], checkpoint, row.global_position)
                .await
        } else {
            let reason = format!(
                "the row at position {} (stream `{}` version {}) cannot be read: {}",
                row.global_position, row.stream_id, row.stream_version, row.error
            );
            if self.options.on_failure == OnFailure::Stop {
                return Err(StoreOrReason::Reason(reason));
            }
            let parked = self
                .target
                .park_unreadable(&self.projection, row, &reason, checkpoint)
                .await;
            if parked.is_ok() {
                tracing::warn!(projection = self.projection.name(), %reason, "unreadable row parked");
                self.count_parked();
            }
            parked
        };
        match outcome {
            Ok(()) => Ok(Some(row.global_position)),
            Err(BatchError::FencedOut) => Ok(None),
            Err(BatchError::Store(e)) => Err(e.into()),
            Err(BatchError::Handler { error, .. }) => Err(StoreOrReason::Reason(format!(
                "cannot move past the unreadable row at position {}: {error}",
                row.global_position
            ))),
        }
    }

    /// Applies a batch; on a handler error, goes through it one event at a
    /// time with retries, then the policy. Returns the new checkpoint, or
    /// None when fenced out.
    async fn process(
        &mut self,
        batch: &[RecordedEvent],
        checkpoint: u64,
    ) -> Result<Option<u64>, StoreOrReason> {
        let last = batch.last().map_or(checkpoint, |e| e.global_position);
        let decoded = self.decode(batch);
        if let Ok(events) = &decoded {
            match self
                .target
                .apply_batch(&self.projection, events, checkpoint, last)
                .await
            {
                Ok(()) => return Ok(Some(last)),
                Err(BatchError::FencedOut) => return Ok(None),
                Err(BatchError::Store(e)) => return Err(e.into()),
                Err(BatchError::Handler { .. }) => {}
            }
        }
        // Something failed: isolate it, one event per transaction.
        let mut checkpoint = checkpoint;
        for event in batch {
            let mut attempt = 0;
            loop {
                let result = match self.decode(std::slice::from_ref(event)) {
                    Ok(one) => {
                        self.target
                            .apply_batch(&self.projection, &one, checkpoint, event.global_position)
                            .await
                    }
                    Err(error) => Err(BatchError::Handler { index: 0, error }),
                };
                let error = match result {
                    Ok(()) => break,
                    Err(BatchError::FencedOut) => return Ok(None),
                    Err(BatchError::Store(e)) => return Err(e.into()),
                    Err(BatchError::Handler { error, .. }) => error,
                };
                attempt += 1;
                if attempt <= self.options.max_retries {
                    tracing::warn!(projection = self.projection.name(), position = event.global_position, attempt, %error, "handler failed; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
                let reason = format!(
                    "event `{}` at position {} (stream `{}` version {}) failed {} times: {error}",
                    event.event_type,
                    event.global_position,
                    event.stream_id,
                    event.stream_version,
                    attempt
                );
                match self.options.on_failure {
                    OnFailure::Stop => return Err(StoreOrReason::Reason(reason)),
                    OnFailure::Park => {
                        match self
                            .target
                            .park(&self.projection, event, &reason, checkpoint)
                            .await
                        {
                            Ok(()) => {}
                            Err(BatchError::FencedOut) => return Ok(None),
                            Err(BatchError::Store(e)) => return Err(e.into()),
                            Err(BatchError::Handler { error, .. }) => {
                                return Err(StoreOrReason::Reason(format!("cannot park: {error}")))
                            }
                        }
                        tracing::warn!(projection = self.projection.name(), %reason, "event parked");
                        self.count_parked();
                        break;
                    }
                }
            }
            checkpoint = event.global_position;
            self.status.send_modify(|s| s.position = checkpoint);
        }
        Ok(Some(checkpoint))
    }

    /// Decodes the events the projection handles; skips the others.
    fn decode(
        &self,
        batch: &[RecordedEvent],
    ) -> Result<Vec<RecordedEvent<P::Event>>, HandlerError> {
        let handles = self.projection.handles();
        let mut decoded = Vec::with_capacity(batch.len());
        for event in batch {
            decoded.extend(decode_handled::<P::Event>(handles, event).map_err(Box::new)?);
        }
        Ok(decoded)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.options
            .initial_backoff
            .saturating_mul(factor)
            .min(self.options.max_backoff)
    }

    /// Counts a batch applied up to `checkpoint`, whose last event is
    /// `last`, and reports the lag ([`crate::telemetry`]): in seconds, the
    /// age of `last`; in events, what follows the checkpoint, counted at
    /// most once a second (and at once when the checkpoint passes the
    /// last count's head).
    async fn report_lag(&mut self, checkpoint: u64, last: &RecordedEvent, applied: u64) {
        let name = self.projection.name().to_owned();
        metrics::counter!(crate::telemetry::PROJECTION_EVENTS, "projection" => name.clone())
            .increment(applied);
        let age = (chrono::Utc::now() - last.recorded_at)
            .to_std()
            .unwrap_or_default();
        metrics::gauge!(crate::telemetry::PROJECTION_LAG_SECONDS, "projection" => name.clone())
            .set(age.as_secs_f64());
        let processed = self.status.borrow().processed + applied;
        let due = self
            .lag
            .counted
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        let behind = if due {
            match self.store.events_after(checkpoint, LAG_CAP).await {
                Ok(behind) => {
                    self.lag = Lag {
                        counted: Some(Instant::now()),
                        behind,
                        processed,
                    };
                    behind
                }
                Err(_) => return,
            }
        } else {
            // Between counts: what was behind then, less what was applied
            // since.
            let applied_since = processed - self.lag.processed;
            self.lag.behind.saturating_sub(applied_since)
        };
        metrics::gauge!(crate::telemetry::PROJECTION_LAG_EVENTS, "projection" => name)
            .set(behind as f64);
    }

    fn count_parked(&self) {
        self.status.send_modify(|s| s.parked += 1);
        metrics::counter!(crate::telemetry::PARKED_EVENTS, "projection" => self.projection.name().to_owned())
            .increment(1);
    }

    fn set_state(&self, state: ProjectionState) {
        self.status.send_modify(|s| s.state = state);
    }
}

enum StoreOrReason {
    Store(StoreError),
    Reason(String),
}

impl From<StoreError> for StoreOrReason {
    fn from(e: StoreError) -> Self {
        StoreOrReason::Store(e)
    }
}
