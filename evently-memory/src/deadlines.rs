//! Deadlines kept in the store: as durable as the store itself (the
//! process), with the same claim semantics as PostgreSQL's.

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::Duration;

use chrono::{DateTime, Utc};
use evently_core::deadline::{Claimed, Deadline, DeadlineStore};
use evently_core::StoreError;
use uuid::Uuid;

use crate::MemoryStore;

/// A deadline and its claim (id, until), if one holds it.
type Entry = (Deadline, Option<(Uuid, DateTime<Utc>)>);

/// The deadlines by owner and name.
#[derive(Default)]
pub(crate) struct Deadlines(BTreeMap<(String, String), Entry>);

impl MemoryStore {
    fn deadlines(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.inner
            .deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl DeadlineStore for MemoryStore {
    async fn schedule(&self, deadline: Deadline) -> Result<(), StoreError> {
        let mut deadlines = self.deadlines();
        let key = (deadline.owner.clone(), deadline.name.clone());
        if deadlines
            .0
            .get(&key)
            .is_some_and(|(d, _)| d.id == deadline.id)
        {
            return Ok(());
        }
        deadlines.0.insert(key, (deadline, None));
        Ok(())
    }

    async fn cancel(&self, owner: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .deadlines()
            .0
            .remove(&(owner.to_owned(), name.to_owned()))
            .is_some())
    }

    async fn claim_due(
        &self,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let mut deadlines = self.deadlines();
        let mut due: Vec<&mut Entry> = deadlines
            .0
            .values_mut()
            .filter(|(d, claim)| {
                d.owner.starts_with(prefix)
                    && d.due <= now
                    && claim.is_none_or(|(_, until)| until <= now)
            })
            .collect();
        due.sort_by_key(|(d, _)| (d.due, d.id));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|(deadline, claim)| {
                let id = Uuid::now_v7();
                *claim = Some((id, until));
                Claimed {
                    deadline: deadline.clone(),
                    claim: id,
                    until,
                }
            })
            .collect())
    }

    async fn complete(&self, id: Uuid, claim: Uuid) -> Result<bool, StoreError> {
        let mut deadlines = self.deadlines();
        let key = deadlines
            .0
            .iter()
            .find(|(_, (d, held))| d.id == id && held.is_some_and(|(c, _)| c == claim))
            .map(|(key, _)| key.clone());
        Ok(key.is_some_and(|key| deadlines.0.remove(&key).is_some()))
    }

    async fn pending(&self, owner: &str) -> Result<Vec<Deadline>, StoreError> {
        let mut pending: Vec<Deadline> = self
            .deadlines()
            .0
            .range((owner.to_owned(), String::new())..)
            .take_while(|((o, _), _)| o == owner)
            .map(|(_, (d, _))| d.clone())
            .collect();
        pending.sort_by_key(|d| d.due);
        Ok(pending)
    }

    async fn next_due(&self, prefix: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .deadlines()
            .0
            .values()
            .filter(|(d, _)| d.owner.starts_with(prefix))
            .map(|(d, _)| d.due)
            .min())
    }
}
