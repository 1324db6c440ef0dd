//! Why the global log's readers wait: the readable bound, the events
//! committed above it, and the oldest running transaction holding it back.

use chrono::{DateTime, Utc};
use evently_core::StoreError;
use sqlx::Row;

use crate::error::unavailable_or_backend;
use crate::queries::OLDEST_TRANSACTION;
use crate::PgEventStore;

/// Why the global log's readers wait, from [`PgEventStore::status`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogStatus {
    /// Readers of the global log can read every position below this.
    pub readable_bound: u64,
    /// The last position readers can read (0 when none).
    pub readable_head: u64,
    /// Events committed at or above the bound: stored, but not yet readable
    /// because an older transaction is still running.
    pub waiting_events: u64,
    /// The oldest running transaction that has written (the one holding
    /// readers back when `waiting_events > 0`).
    pub oldest_transaction: Option<RunningTransaction>,
}

/// A running transaction, as `pg_stat_activity` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningTransaction {
    /// The backend's process id (`pg_terminate_backend(pid)` ends it).
    pub pid: i32,
    /// Its database.
    pub database: Option<String>,
    /// Its `application_name`.
    pub application_name: Option<String>,
    /// `active`, `idle in transaction`, …
    pub state: Option<String>,
    /// When its transaction started.
    pub transaction_started: Option<DateTime<Utc>>,
    /// The start of its latest statement.
    pub query: Option<String>,
}

impl PgEventStore {
    /// What the global log's readers can read, and what holds them back.
    pub async fn status(&self) -> Result<LogStatus, StoreError> {
        let row = sqlx::query(&self.inner.queries.status)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        let oldest = sqlx::query(OLDEST_TRANSACTION)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable_or_backend)?;
        let oldest_transaction = oldest
            .map(|r| -> Result<RunningTransaction, sqlx::Error> {
                Ok(RunningTransaction {
                    pid: r.try_get(0)?,
                    database: r.try_get(1)?,
                    application_name: r.try_get(2)?,
                    state: r.try_get(3)?,
                    transaction_started: r.try_get(4)?,
                    query: r.try_get(5)?,
                })
            })
            .transpose()
            .map_err(unavailable_or_backend)?;
        Ok(LogStatus {
            readable_bound: row.try_get::<i64, _>(0).map_err(unavailable_or_backend)? as u64,
            readable_head: row.try_get::<i64, _>(1).map_err(unavailable_or_backend)? as u64,
            waiting_events: row.try_get::<i64, _>(2).map_err(unavailable_or_backend)? as u64,
            oldest_transaction,
        })
    }
}
