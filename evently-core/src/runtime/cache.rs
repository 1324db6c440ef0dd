//! The aggregate cache: live aggregates kept between commands.

use std::sync::Arc;

use super::Loaded;
use crate::version::StreamId;

/// Live aggregates kept between commands, one slot per stream; a slot's
/// lock also serialises the commands to its aggregate in this process.
pub(super) struct AggregateCache<A> {
    capacity: usize,
    slots: std::sync::Mutex<CacheSlots<A>>,
}

pub(super) type Slot<A> = Arc<tokio::sync::Mutex<Option<Loaded<A>>>>;

pub(super) struct CacheSlots<A> {
    map: std::collections::HashMap<StreamId, (Slot<A>, u64)>,
    clock: u64,
}

impl<A> AggregateCache<A> {
    pub(super) fn new(capacity: usize) -> Self {
        AggregateCache {
            capacity: capacity.max(1),
            slots: std::sync::Mutex::new(CacheSlots {
                map: std::collections::HashMap::new(),
                clock: 0,
            }),
        }
    }

    /// The slot of a stream, marked as just used. Over capacity, the least
    /// recently used idle slots go (an eighth at a time).
    pub(super) fn slot(&self, stream_id: &StreamId) -> Slot<A> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.clock += 1;
        let now = slots.clock;
        let slot = {
            let entry = slots
                .map
                .entry(stream_id.clone())
                .or_insert_with(|| (Arc::new(tokio::sync::Mutex::new(None)), now));
            entry.1 = now;
            Arc::clone(&entry.0)
        };
        self.trim(&mut slots);
        slot
    }

    /// Gives back a slot after a command. Slots in use cannot be evicted,
    /// so a burst of commands to more aggregates than the capacity fills
    /// the cache past it; the last of them to finish bring it back under.
    pub(super) fn release(&self, slot: Slot<A>) {
        drop(slot);
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.trim(&mut slots);
    }

    /// Over capacity, the least recently used idle slots go (an eighth of
    /// the capacity more than needed, so trimming is not paid on every
    /// command).
    fn trim(&self, slots: &mut CacheSlots<A>) {
        if slots.map.len() <= self.capacity {
            return;
        }
        let mut idle: Vec<(u64, StreamId)> = slots
            .map
            .iter()
            .filter(|(_, (slot, _))| Arc::strong_count(slot) == 1)
            .map(|(id, (_, used))| (*used, id.clone()))
            .collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        let excess = slots.map.len() - self.capacity + self.capacity / 8;
        for (_, id) in idle.into_iter().take(excess) {
            slots.map.remove(&id);
        }
    }

    /// How many aggregates the cache holds.
    pub(super) fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map
            .len()
    }
}
