//! Deadlines in the store's schema (table `deadlines`, migration 4):
//! claimed with `FOR UPDATE SKIP LOCKED` and a lease, so runners in
//! several processes never hold one deadline at the same time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use evently_core::deadline::{Claimed, Deadline, DeadlineStore};
use evently_core::StoreError;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::unavailable_or_backend;
use crate::PgEventStore;

const COLUMNS: &str = "owner, name, id, due, payload::text";

fn deadline(row: &PgRow) -> Result<Deadline, StoreError> {
    let payload: String = row.try_get(4).map_err(unavailable_or_backend)?;
    Ok(Deadline {
        owner: row.try_get(0).map_err(unavailable_or_backend)?,
        name: row.try_get(1).map_err(unavailable_or_backend)?,
        id: row.try_get(2).map_err(unavailable_or_backend)?,
        due: row.try_get(3).map_err(unavailable_or_backend)?,
        payload: serde_json::from_str(&payload).map_err(|e| {
            StoreError::Backend(format!("a stored deadline's payload does not decode: {e}").into())
        })?,
    })
}

impl PgEventStore {
    fn deadlines_table(&self) -> String {
        format!("{}.deadlines", self.inner.queries.schema.quoted())
    }
}

impl DeadlineStore for PgEventStore {
    async fn schedule(&self, deadline: Deadline) -> Result<(), StoreError> {
        let table = self.deadlines_table();
        sqlx::query(&format!(
            "INSERT INTO {table} AS d (owner, name, id, due, payload) VALUES ($1, $2, $3, $4, $5::jsonb) \
             ON CONFLICT (owner, name) DO UPDATE SET id = excluded.id, due = excluded.due, \
             payload = excluded.payload, claim = NULL, claimed_until = NULL WHERE d.id <> excluded.id"
        ))
        .bind(&deadline.owner)
        .bind(&deadline.name)
        .bind(deadline.id)
        .bind(deadline.due)
        .bind(deadline.payload.to_string())
        .execute(self.pool())
        .await
        .map_err(unavailable_or_backend)?;
        Ok(())
    }

    async fn cancel(&self, owner: &str, name: &str) -> Result<bool, StoreError> {
        let table = self.deadlines_table();
        let done = sqlx::query(&format!(
            "DELETE FROM {table} WHERE owner = $1 AND name = $2"
        ))
        .bind(owner)
        .bind(name)
        .execute(self.pool())
        .await
        .map_err(unavailable_or_backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn claim_due(
        &self,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let table = self.deadlines_table();
        let claim = Uuid::now_v7();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let rows = sqlx::query(&format!(
            "WITH due AS (SELECT owner, name FROM {table} \
                 WHERE due <= $1 AND (claimed_until IS NULL OR claimed_until <= $1) \
                   AND starts_with(owner, $5) \
                 ORDER BY due, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE {table} d SET claim = $3, claimed_until = $4 FROM due \
             WHERE d.owner = due.owner AND d.name = due.name \
             RETURNING d.owner, d.name, d.id, d.due, d.payload::text"
        ))
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(claim)
        .bind(until)
        .bind(prefix)
        .fetch_all(self.pool())
        .await
        .map_err(unavailable_or_backend)?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(Claimed {
                    deadline: deadline(row)?,
                    claim,
                    until,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by_key(|c| (c.deadline.due, c.deadline.id));
        Ok(claimed)
    }

    async fn complete(&self, id: Uuid, claim: Uuid) -> Result<bool, StoreError> {
        let table = self.deadlines_table();
        let done = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1 AND claim = $2"))
            .bind(id)
            .bind(claim)
            .execute(self.pool())
            .await
            .map_err(unavailable_or_backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn pending(&self, owner: &str) -> Result<Vec<Deadline>, StoreError> {
        let table = self.deadlines_table();
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE owner = $1 ORDER BY due, id"
        ))
        .bind(owner)
        .fetch_all(self.pool())
        .await
        .map_err(unavailable_or_backend)?;
        rows.iter().map(deadline).collect()
    }

    async fn next_due(&self, prefix: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let table = self.deadlines_table();
        sqlx::query_scalar(&format!(
            "SELECT min(due) FROM {table} WHERE starts_with(owner, $1)"
        ))
        .bind(prefix)
        .fetch_one(self.pool())
        .await
        .map_err(unavailable_or_backend)
    }
}
