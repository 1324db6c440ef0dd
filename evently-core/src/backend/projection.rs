//! What a store gives the projection runner ([`ProjectionTarget`]): where
//! the checkpoint lives, what a transaction is, and who may run; and what
//! it needs to feed a projection ([`decode_handled`]).

use std::future::Future;

use crate::error::StoreError;
use crate::event::{Event, Payload, RecordedEvent};
use crate::projection::{HandlerError, Projection};

use super::UnreadableEvent;

/// Decodes what a projection handling the stored types `handles` wants of
/// one event of the global log, without decoding what it does not:
///
/// - an erased event, an event from a stream of another aggregate than the
///   one that claims `E` ([`Event::aggregate_type`]), or a current event of
///   a type it does not handle: nothing, undecoded;
/// - a current event of a handled type: that event;
/// - an older schema version, or a name the event type no longer has: the
///   upcasted events of handled types (a former name of another aggregate's
///   event, that no upcaster knows, is nothing).
pub fn decode_handled<E: Event>(
    handles: &[&str],
    event: &RecordedEvent,
) -> Result<Vec<RecordedEvent<E>>, crate::DecodeError> {
    if event.metadata.erased_at.is_some() {
        return Ok(Vec::new());
    }
    // An event type an aggregate claims comes from that aggregate's streams
    // only: another aggregate's `Opened` is not this one's.
    if let Some(owner) = E::aggregate_type() {
        if event.stream_id.aggregate_type() != Some(owner) {
            return Ok(Vec::new());
        }
    }
    let current = E::current_version(&event.event_type);
    let known = current.is_some() || E::EVENT_TYPES.contains(&&*event.event_type);
    let is_current = current.is_none_or(|v| v == event.schema_version);
    if known && is_current && !handles.contains(&&*event.event_type) {
        return Ok(Vec::new());
    }
    match event.decode_all::<E>() {
        Ok(events) => Ok(events
            .into_iter()
            .filter(|e| handles.contains(&e.data.event_type()))
            .collect()),
        Err(error) => match &error.kind {
            crate::DecodeErrorKind::MissingUpcaster {
                event_type,
                current: None,
                ..
            } if !known && *event_type == *event.event_type => Ok(Vec::new()),
            crate::DecodeErrorKind::UnknownEventType { .. } if !known => Ok(Vec::new()),
            _ => Err(error),
        },
    }
}

/// Why a batch was not applied.
#[derive(Debug)]
pub enum BatchError {
    /// A handler failed at the event with this index in the batch; nothing
    /// of the batch is kept.
    Handler {
        /// The index of the failing event in the batch.
        index: usize,
        /// The handler's error.
        error: HandlerError,
    },
    /// Another instance moved the checkpoint: this one is no longer the
    /// active one and must start over.
    FencedOut,
    /// The store failed; nothing of the batch is kept.
    Store(StoreError),
}

impl From<StoreError> for BatchError {
    fn from(e: StoreError) -> Self {
        BatchError::Store(e)
    }
}

/// What a store gives the runner: the checkpoint, atomic batches, parking,
/// and who may run.
pub trait ProjectionTarget<P: Projection>: Send {
    /// Waits until this instance is the one active instance of the
    /// projection (a lease or lock), or returns at once where only one can
    /// exist.
    fn acquire(&mut self, projection: &P) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives up what [`ProjectionTarget::acquire`] took, when the runner
    /// ends (stopped or failed), so that another instance or a rebuild can
    /// take it at once rather than when a dropped connection is noticed.
    /// The default does nothing.
    fn release(&mut self, projection: &P) -> impl Future<Output = ()> + Send {
        let _ = projection;
        async {}
    }

    /// The stored checkpoint (0 before the first event).
    fn checkpoint(
        &mut self,
        projection: &P,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Applies the handled events of a batch and moves the checkpoint from
    /// `from` to `to`, all or nothing.
    fn apply_batch(
        &mut self,
        projection: &P,
        events: &[RecordedEvent<P::Event>],
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<(), BatchError>> + Send;

    /// Stores `event` as parked with `error` and moves the checkpoint from
    /// `from` past it, all or nothing.
    fn park(
        &mut self,
        projection: &P,
        event: &RecordedEvent<Payload>,
        error: &str,
        from: u64,
    ) -> impl Future<Output = Result<(), BatchError>> + Send;

    /// Stores a row of the log that cannot be read as parked with `error`
    /// and moves the checkpoint from `from` past it, all or nothing.
    ///
    /// The default parks, through [`ProjectionTarget::park`], an event made
    /// of what is known of the row: its position, stream and version, its
    /// id, type and schema version where they could be read (else the nil
    /// id, an empty type, version 0), a `null` payload and fresh metadata.
    fn park_unreadable(
        &mut self,
        projection: &P,
        row: &UnreadableEvent,
        error: &str,
        from: u64,
    ) -> impl Future<Output = Result<(), BatchError>> + Send {
        let placeholder = unreadable_placeholder(row);
        let error = error.to_owned();
        async move { self.park(projection, &placeholder, &error, from).await }
    }
}

/// What [`ProjectionTarget::park_unreadable`] parks by default for a row
/// that cannot be read: an event made of what is known of it (its
/// position, stream and version; its id, type and schema version where
/// they could be read, else the nil id, an empty type, version 0), a
/// `null` payload and fresh metadata.
pub fn unreadable_placeholder(row: &UnreadableEvent) -> RecordedEvent<Payload> {
    RecordedEvent {
        event_id: row.event_id.unwrap_or_default(),
        stream_id: row.stream_id.clone(),
        stream_version: row.stream_version,
        global_position: row.global_position,
        event_type: row.event_type.clone().unwrap_or_default().into(),
        schema_version: row.schema_version.unwrap_or_default(),
        data: Payload::from_value(&serde_json::Value::Null),
        metadata: crate::Metadata::new(),
        recorded_at: chrono::Utc::now(),
    }
}

/// How following a rebuild ended without catching up.
#[derive(Debug)]
pub enum FollowError {
    /// The projection stopped or failed first, in this state.
    Stopped(crate::projection::ProjectionState),
    /// Reading its progress failed.
    Store(StoreError),
}

/// Follows a projection rebuilding from zero until it has caught up,
/// calling `on_progress` every 200 ms with what `progress` reads and the
/// runner's status. Caught up means reaching the head as the previous
/// look saw it: a log that keeps growing cannot keep a rebuild from
/// finishing, and one that stops is followed to its end. `head` is the
/// head when the rebuild started. What every store's rebuild shares.
pub async fn follow_rebuild<F, Fut>(
    handle: &crate::projection::ProjectionHandle,
    head: u64,
    mut progress: F,
    on_progress: &mut impl FnMut(
        &crate::projection::ProjectionProgress,
        &crate::projection::ProjectionStatus,
    ),
) -> Result<(), FollowError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<crate::projection::ProjectionProgress, StoreError>>,
{
    use crate::projection::ProjectionState;
    let mut target = head;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let status = handle.status();
        if matches!(
            status.state,
            ProjectionState::Failed(_) | ProjectionState::Stopped
        ) {
            return Err(FollowError::Stopped(status.state));
        }
        let now = progress().await.map_err(FollowError::Store)?;
        let caught_up =
            (now.behind == 0 || now.position >= target) && status.state == ProjectionState::Running;
        target = now.head;
        let status = if caught_up {
            // The checkpoint commits before the runner counts the batch:
            // let its status catch up, so the last report is complete.
            let _ = handle
                .wait_for(now.position, std::time::Duration::from_secs(10))
                .await;
            handle.status()
        } else {
            status
        };
        on_progress(&now, &status);
        if caught_up {
            return Ok(());
        }
    }
}
