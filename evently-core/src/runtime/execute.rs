//! Running a command: in its span, after the check for an earlier run of
//! the same command id, in the aggregate's cache slot; decide, append with
//! the loaded version as the expectation, retry on conflicts, re-send on
//! lost replies, journal and snapshot.

use crate::aggregate::{Aggregate, Command};
use crate::error::{CommandError, StoreError};
use crate::event::Payload;
use crate::event::{NewEvent, RecordedEvent};
use crate::metadata::CommandContext;
use crate::store::{CommandRecord, EventStore, JournalEntry, JournalOutcome, Snapshot};
use crate::version::{ExpectedVersion, StreamId};

use tracing::Instrument;

use super::{CommandOutcome, JournalPolicy, Loaded, Repository, SnapshotPolicy};

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// Runs a command on the aggregate whose stream is `stream_id`, in its
    /// span, and counts it ([`crate::telemetry`]).
    pub(super) async fn execute_in(
        &self,
        stream_id: StreamId,
        command: A::Command,
        context: CommandContext,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "evently.command",
            aggregate = A::TYPE,
            stream = %stream_id,
            command = command.command_type(),
            command_id = %context.command_id,
            correlation_id = %context.correlation_id.unwrap_or(context.command_id),
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        // Unobserved, the span costs nothing more than this check.
        let result = if span.is_disabled() {
            self.execute_traced(stream_id, command, context).await
        } else {
            self.execute_traced(stream_id, command, context)
                .instrument(span.clone())
                .await
        };
        let outcome = crate::telemetry::outcome_label(&result);
        span.record("outcome", outcome);
        if let Ok(done) = &result {
            span.record("attempts", done.attempts);
        }
        metrics::counter!(crate::telemetry::COMMANDS, "aggregate" => A::TYPE, "outcome" => outcome)
            .increment(1);
        metrics::histogram!(crate::telemetry::COMMAND_SECONDS, "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn execute_traced(
        &self,
        stream_id: StreamId,
        command: A::Command,
        context: CommandContext,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let record = self.command_record(&command, &context)?;
        if let (Some(record), Some(commands)) = (&record, &self.commands) {
            if let Some(entry) = (commands.find)(&self.store, record.command_id).await? {
                if let JournalOutcome::Accepted {
                    first_version,
                    last_version,
                } = entry.outcome
                {
                    return self
                        .first_outcome(entry.stream_id, first_version, last_version, 0)
                        .await;
                }
            }
        }
        match &self.cache {
            Some(cache) => {
                // One command at a time per aggregate in this process: the
                // others wait here instead of racing into conflicts.
                let slot = cache.slot(&stream_id);
                let mut cached = slot.lock().await;
                let outcome = self
                    .run(command, &context, record.as_ref(), stream_id, &mut cached)
                    .await;
                drop(cached);
                cache.release(slot);
                outcome
            }
            None => {
                self.run(command, &context, record.as_ref(), stream_id, &mut None)
                    .await
            }
        }
    }

    /// Decides and appends, retrying on conflicts. `cached` is the live
    /// aggregate kept between commands (when the cache is on): it is taken
    /// for the command and put back only when it is known to be current.
    pub(super) async fn run(
        &self,
        command: A::Command,
        context: &CommandContext,
        record: Option<&CommandRecord>,
        stream_id: StreamId,
        cached: &mut Option<Loaded<A>>,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut loaded, from_cache) = match cached.take() {
                Some(loaded) => (loaded, true),
                None => (
                    traced(
                        self.load_stream(&stream_id),
                        tracing::debug_span!("evently.load"),
                    )
                    .await?,
                    false,
                ),
            };
            let decided = traced(
                loaded.state.decide(command.clone(), &self.services),
                tracing::debug_span!("evently.decide", from_cache),
            )
            .await;
            let decided = match decided {
                Ok(decided) => decided,
                Err(error) => {
                    // A refusal appends nothing, so no expected version
                    // guards it: make sure a cached state was current.
                    if from_cache && self.moved_on(&stream_id, loaded.version).await? {
                        attempts -= 1;
                        continue;
                    }
                    if let (
                        Some(record),
                        Some(JournalPolicy {
                            rejections: true, ..
                        }),
                        Some(commands),
                    ) = (record, &self.journal, &self.commands)
                    {
                        let reason = error.to_string();
                        if let Err(e) =
                            (commands.reject)(&self.store, record, &stream_id, &reason).await
                        {
                            tracing::warn!(stream = %stream_id, error = %e, "cannot journal a rejected command");
                        }
                    }
                    *cached = Some(loaded);
                    return Err(CommandError::Rejected(error));
                }
            };
            if decided.is_empty() {
                if from_cache && self.moved_on(&stream_id, loaded.version).await? {
                    attempts -= 1;
                    continue;
                }
                let version = loaded.version;
                *cached = Some(loaded);
                return Ok(CommandOutcome {
                    stream_id,
                    events: Vec::new(),
                    version,
                    attempts,
                });
            }
            let metadata = context.event_metadata();
            let new_events = decided
                .iter()
                .map(|event| NewEvent::from_event(event, metadata.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let expected = ExpectedVersion::at(loaded.version);
            let started = std::time::Instant::now();
            let appended = traced(
                self.append_resending(record, &stream_id, expected, new_events),
                tracing::debug_span!("evently.append", expected = loaded.version),
            )
            .await;
            metrics::histogram!(crate::telemetry::APPEND_SECONDS, "aggregate" => A::TYPE)
                .record(started.elapsed().as_secs_f64());
            match appended {
                Ok(recorded) => {
                    let version = recorded.last().map_or(loaded.version, |e| e.stream_version);
                    let snapshot = self
                        .snapshots
                        .as_ref()
                        .filter(|policy| version / policy.every > loaded.version / policy.every);
                    if snapshot.is_some() || self.cache.is_some() {
                        decided.iter().for_each(|e| loaded.state.apply(e));
                        loaded.replayed += decided.len() as u64;
                        loaded.version = version;
                    }
                    if let Some(policy) = snapshot {
                        self.save_snapshot(policy, &stream_id, &loaded.state, version)
                            .await;
                    }
                    if self.cache.is_some() {
                        *cached = Some(loaded);
                    }
                    let events = recorded
                        .iter()
                        .zip(decided)
                        .map(|(recorded, event)| recorded.with_data(event))
                        .collect();
                    return Ok(CommandOutcome {
                        stream_id,
                        events,
                        version,
                        attempts,
                    });
                }
                Err(conflict) if conflict.is_conflict() => {
                    // The state was stale: it stays out of the cache, and
                    // the next attempt reloads.
                    tracing::debug!(stream = %stream_id, attempts, "conflict; reloading");
                    metrics::counter!(crate::telemetry::CONFLICTS, "aggregate" => A::TYPE)
                        .increment(1);
                    // The writer that got there first may be this very
                    // command (a retry sent while the first attempt ran,
                    // by a client that timed out): then its outcome is
                    // the answer, not a decision on the state it made.
                    if let Some(outcome) = self.executed_meanwhile(record, attempts).await? {
                        return Ok(outcome);
                    }
                    if attempts >= self.retry.max_attempts {
                        return Err(CommandError::Conflict {
                            stream_id,
                            attempts,
                            source: conflict,
                        });
                    }
                }
                Err(StoreError::CommandAlreadyExecuted {
                    stream_id,
                    first_version,
                    last_version,
                    ..
                }) => {
                    return self
                        .first_outcome(stream_id, first_version, last_version, attempts)
                        .await
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// The first outcome of an idempotent command that another attempt of
    /// it executed while this one ran, if one did.
    async fn executed_meanwhile(
        &self,
        record: Option<&CommandRecord>,
        attempts: u32,
    ) -> Result<Option<CommandOutcome<A::Event>>, CommandError<A::Error>> {
        let (Some(record), Some(commands)) = (record, &self.commands) else {
            return Ok(None);
        };
        match (commands.find)(&self.store, record.command_id).await? {
            Some(JournalEntry {
                stream_id,
                outcome:
                    JournalOutcome::Accepted {
                        first_version,
                        last_version,
                    },
                ..
            }) => Ok(Some(
                self.first_outcome(stream_id, first_version, last_version, attempts)
                    .await?,
            )),
            _ => Ok(None),
        }
    }

    /// Whether the stream moved past `version` (another writer appended).
    pub(super) async fn moved_on(
        &self,
        stream_id: &StreamId,
        version: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.store.stream_version(stream_id).await? != version)
    }

    /// What the store records of this command, if anything.
    pub(super) fn command_record(
        &self,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Option<CommandRecord>, CommandError<A::Error>> {
        if self.journal.is_none() && !context.idempotent {
            return Ok(None);
        }
        if self.commands.is_none() {
            // Nothing could remember the command id: say so rather than
            // run it twice on a repeat.
            return Err(CommandError::Store(StoreError::Unsupported {
                operation: "idempotent commands (the store keeps no command records)",
            }));
        }
        let payload = match &self.journal {
            Some(journal) => Some(Payload::from_json_unchecked(
                (journal.encode)(command).map_err(crate::error::EncodeError::from)?,
            )),
            None => None,
        };
        Ok(Some(CommandRecord {
            command_id: context.command_id,
            command_type: command.command_type().to_owned(),
            payload,
            metadata: context.event_metadata(),
        }))
    }

    /// The outcome of a command executed before: its events, read back.
    pub(super) async fn first_outcome(
        &self,
        stream_id: StreamId,
        first_version: u64,
        last_version: u64,
        attempts: u32,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let count = (last_version + 1).saturating_sub(first_version) as usize;
        let stored = self
            .store
            .read_stream(&stream_id, first_version, count)
            .await?;
        let mut events = Vec::with_capacity(stored.len());
        for e in &stored {
            events.extend(e.decode_all::<A::Event>()?);
        }
        Ok(CommandOutcome {
            stream_id,
            events,
            version: last_version,
            attempts,
        })
    }

    /// Saves a snapshot; a failure only costs a longer load later.
    pub(super) async fn save_snapshot(
        &self,
        policy: &SnapshotPolicy<A, S>,
        stream_id: &StreamId,
        state: &A,
        version: u64,
    ) {
        let state = match (policy.encode)(state) {
            Ok(text) => Payload::from_json_unchecked(text),
            Err(error) => {
                tracing::warn!(stream = %stream_id, %error, "cannot encode a snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            version,
            schema_version: policy.schema_version,
            state,
            taken_at: chrono::Utc::now(),
        };
        if let Err(error) = (policy.ops.save)(&self.store, stream_id, snapshot).await {
            tracing::warn!(stream = %stream_id, %error, "cannot save a snapshot");
        }
    }

    /// Appends, re-sending the same events (same ids) when the store was
    /// unavailable or the reply was lost: the store's idempotency makes a
    /// re-sent append that had in fact succeeded return the first result.
    pub(super) async fn append_resending(
        &self,
        command: Option<&CommandRecord>,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut backoff = self.retry.initial_backoff;
        let mut retries = 0;
        loop {
            let sent = match (command, &self.commands) {
                (Some(command), Some(commands)) => {
                    (commands.append)(&self.store, command, stream_id, expected, events.clone())
                        .await
                }
                // A command record exists only with a command store.
                _ => self.store.append(stream_id, expected, events.clone()).await,
            };
            match sent {
                Err(e) if e.is_transient() && retries < self.retry.max_transient_retries => {
                    retries += 1;
                    tracing::warn!(stream = %stream_id, retries, error = %e, "append failed; re-sending");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                result => return result,
            }
        }
    }
}

/// Runs `future` in `span`, or as it is when nothing records the span.
async fn traced<F: std::future::Future>(future: F, span: tracing::Span) -> F::Output {
    if span.is_disabled() {
        future.await
    } else {
        future.instrument(span).await
    }
}
