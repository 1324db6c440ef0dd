//! [`MemoryReadModel`]: an in-memory read model, with its checkpoint and
//! parked events, for any store.

use super::{ParkedEvent, Projection};
use crate::backend::{BatchError, ProjectionTarget};
use crate::error::StoreError;
use crate::event::{Payload, RecordedEvent};

/// An in-memory read model with its checkpoint and parked events, for any
/// store: handlers write into a `T`. A batch is applied to a copy and
/// swapped in whole, so a failing batch leaves nothing behind (each event is
/// applied exactly once). Clones share one read model; one runner at a time
/// holds its lease, and the next takes over when that runner ends.
///
/// ```
/// use evently_core::projection::MemoryReadModel;
/// use std::collections::HashMap;
///
/// let balances: MemoryReadModel<HashMap<String, u64>> = MemoryReadModel::default();
/// assert_eq!(balances.read(|b| b.len()), 0);
/// assert_eq!(balances.checkpoint(), 0);
/// ```
pub struct MemoryReadModel<T> {
    shared: std::sync::Arc<MemoryShared<T>>,
    lease: Option<tokio::sync::OwnedMutexGuard<()>>,
}

struct MemoryShared<T> {
    model: std::sync::Mutex<MemoryModel<T>>,
    lease: std::sync::Arc<tokio::sync::Mutex<()>>,
}

struct MemoryModel<T> {
    state: T,
    checkpoint: u64,
    /// Each parked event with its payload, to apply again.
    parked: Vec<(RecordedEvent, ParkedEvent)>,
}

impl<T: Default> Default for MemoryReadModel<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> Clone for MemoryReadModel<T> {
    fn clone(&self) -> Self {
        MemoryReadModel {
            shared: std::sync::Arc::clone(&self.shared),
            lease: None,
        }
    }
}

impl<T> MemoryReadModel<T> {
    /// A read model starting from `state`, at checkpoint 0.
    pub fn new(state: T) -> Self {
        MemoryReadModel {
            shared: std::sync::Arc::new(MemoryShared {
                model: std::sync::Mutex::new(MemoryModel {
                    state,
                    checkpoint: 0,
                    parked: Vec::new(),
                }),
                lease: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            }),
            lease: None,
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, MemoryModel<T>> {
        self.shared
            .model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the model.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.model().state)
    }

    /// The checkpoint: the position of the last event processed.
    pub fn checkpoint(&self) -> u64 {
        self.model().checkpoint
    }

    /// The parked events, oldest first.
    pub fn parked(&self) -> Vec<ParkedEvent> {
        self.model().parked.iter().map(|(_, p)| p.clone()).collect()
    }

    /// Applies the parked event at `position` again with `projection`'s
    /// handler (fixed since, or the failure was passing) and, if that
    /// succeeds, removes it from the parked list. Returns `false` when no
    /// event is parked there. A handler that fails again leaves the event
    /// parked and the model as it was.
    pub async fn retry_parked<P>(&self, projection: &P, position: u64) -> Result<bool, StoreError>
    where
        P: Projection<Sink = T>,
        T: Clone,
    {
        let (raw, mut copy) = {
            let model = self.model();
            let Some((raw, _)) = model
                .parked
                .iter()
                .find(|(raw, _)| raw.global_position == position)
            else {
                return Ok(false);
            };
            (raw.clone(), model.state.clone())
        };
        let events = crate::backend::decode_handled::<P::Event>(projection.handles(), &raw)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        projection
            .apply_batch(&mut copy, &events)
            .await
            .map_err(|(_, error)| StoreError::Backend(error))?;
        let mut model = self.model();
        let before = model.parked.len();
        model
            .parked
            .retain(|(raw, _)| raw.global_position != position);
        if model.parked.len() == before {
            // Retried concurrently: the other retry applied it.
            return Ok(false);
        }
        model.state = copy;
        Ok(true)
    }
}

impl<P, T> ProjectionTarget<P> for MemoryReadModel<T>
where
    P: Projection<Sink = T>,
    T: Clone + Send + 'static,
{
    async fn acquire(&mut self, _projection: &P) -> Result<(), StoreError> {
        if self.lease.is_none() {
            let lease = std::sync::Arc::clone(&self.shared.lease);
            self.lease = Some(lease.lock_owned().await);
        }
        Ok(())
    }

    async fn checkpoint(&mut self, _projection: &P) -> Result<u64, StoreError> {
        Ok(self.model().checkpoint)
    }

    async fn apply_batch(
        &mut self,
        projection: &P,
        events: &[RecordedEvent<P::Event>],
        from: u64,
        to: u64,
    ) -> Result<(), BatchError> {
        let mut copy = {
            let model = self.model();
            if model.checkpoint != from {
                return Err(BatchError::FencedOut);
            }
            model.state.clone()
        };
        projection
            .apply_batch(&mut copy, events)
            .await
            .map_err(|(index, error)| BatchError::Handler { index, error })?;
        let mut model = self.model();
        if model.checkpoint != from {
            return Err(BatchError::FencedOut);
        }
        model.state = copy;
        model.checkpoint = to;
        Ok(())
    }

    async fn park(
        &mut self,
        _projection: &P,
        event: &RecordedEvent<Payload>,
        error: &str,
        from: u64,
    ) -> Result<(), BatchError> {
        let mut model = self.model();
        if model.checkpoint != from {
            return Err(BatchError::FencedOut);
        }
        model
            .parked
            .push((event.clone(), ParkedEvent::new(event, error)));
        model.checkpoint = event.global_position;
        Ok(())
    }
}
