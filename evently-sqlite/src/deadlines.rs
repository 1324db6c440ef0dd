//! Deadlines in the file (table `deadlines`, migration 3): claimed in a
//! write transaction with a lease, so runners in several processes never
//! hold one deadline at the same time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use evently_core::deadline::{Claimed, Deadline, DeadlineStore};
use evently_core::StoreError;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use crate::{error, id_text, time, SqliteEventStore};

const COLUMNS: &str = "owner, name, id, due, payload";

fn deadline(row: &SqliteRow) -> Result<Deadline, StoreError> {
    let payload: String = row.try_get(4).map_err(error::store)?;
    let id: String = row.try_get(2).map_err(error::store)?;
    Ok(Deadline {
        owner: row.try_get(0).map_err(error::store)?,
        name: row.try_get(1).map_err(error::store)?,
        id: id.parse().map_err(|e| {
            StoreError::Backend(format!("a stored deadline's id {id:?} does not read: {e}").into())
        })?,
        due: time(row.try_get(3).map_err(error::store)?),
        payload: serde_json::from_str(&payload).map_err(|e| {
            StoreError::Backend(format!("a stored deadline's payload does not decode: {e}").into())
        })?,
    })
}

/// Owners starting with `prefix`: a range on the text, no pattern escaping.
fn after_prefix(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

impl DeadlineStore for SqliteEventStore {
    async fn schedule(&self, deadline: Deadline) -> Result<(), StoreError> {
        self.in_write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO deadlines (owner, name, id, due, payload) VALUES (?, ?, ?, ?, ?) \
                     ON CONFLICT (owner, name) DO UPDATE SET id = excluded.id, due = excluded.due, \
                     payload = excluded.payload, claim = NULL, claimed_until = NULL \
                     WHERE deadlines.id <> excluded.id",
                )
                .bind(&deadline.owner)
                .bind(&deadline.name)
                .bind(id_text(deadline.id))
                .bind(deadline.due.timestamp_micros())
                .bind(deadline.payload.to_string())
                .execute(&mut *conn)
                .await
                .map_err(error::store)?;
                Ok(())
            })
        })
        .await
    }

    async fn cancel(&self, owner: &str, name: &str) -> Result<bool, StoreError> {
        let (owner, name) = (owner.to_owned(), name.to_owned());
        self.in_write(move |conn| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM deadlines WHERE owner = ? AND name = ?")
                    .bind(&owner)
                    .bind(&name)
                    .execute(&mut *conn)
                    .await
                    .map_err(error::store)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn claim_due(
        &self,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let claim = Uuid::now_v7();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let (prefix, end) = (prefix.to_owned(), after_prefix(prefix));
        let rows = self
            .in_write(move |conn| {
                Box::pin(async move {
                    sqlx::query(&format!(
                        "UPDATE deadlines SET claim = ?, claimed_until = ? WHERE (owner, name) IN (SELECT owner, name FROM deadlines \
                         WHERE due <= ? AND (claimed_until IS NULL OR claimed_until <= ?) \
                         AND owner >= ? AND owner < ? ORDER BY due, id LIMIT ?) RETURNING {COLUMNS}"
                    ))
                    .bind(id_text(claim))
                    .bind(until.timestamp_micros())
                    .bind(now.timestamp_micros())
                    .bind(now.timestamp_micros())
                    .bind(&prefix)
                    .bind(&end)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(error::store)
                })
            })
            .await?;
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
        self.in_write(move |conn| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM deadlines WHERE id = ? AND claim = ?")
                    .bind(id_text(id))
                    .bind(id_text(claim))
                    .execute(&mut *conn)
                    .await
                    .map_err(error::store)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn pending(&self, owner: &str) -> Result<Vec<Deadline>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM deadlines WHERE owner = ? ORDER BY due, id"
        ))
        .bind(owner)
        .fetch_all(self.pool())
        .await
        .map_err(error::store)?;
        rows.iter().map(deadline).collect()
    }

    async fn next_due(&self, prefix: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let due: Option<i64> =
            sqlx::query_scalar("SELECT MIN(due) FROM deadlines WHERE owner >= ? AND owner < ?")
                .bind(prefix)
                .bind(after_prefix(prefix))
                .fetch_one(self.pool())
                .await
                .map_err(error::store)?;
        Ok(due.map(time))
    }
}
