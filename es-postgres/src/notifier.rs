//! Wakes subscribers after appends commit: one NOTIFY on the schema's
//! channel, sent in a transaction of its own, for all the appends of a
//! moment. A NOTIFY inside the append's transaction would take a
//! database-wide lock at its commit, held through the WAL flush, and make
//! concurrent appends commit one at a time.

use std::sync::Arc;

use sqlx::postgres::PgPool;
use tokio::sync::Notify;

/// Starts the notifier task; appends call `notify_one()` on the result.
pub(crate) fn start(pool: PgPool, channel: String) -> Arc<Notify> {
    let wake = Arc::new(Notify::new());
    tokio::spawn(run(pool, channel, Arc::clone(&wake)));
    wake
}

async fn run(pool: PgPool, channel: String, wake: Arc<Notify>) {
    loop {
        // Appends that happen while a NOTIFY is on its way leave one permit:
        // they are covered by the next one.
        wake.notified().await;
        if Arc::strong_count(&wake) == 1 {
            return; // the store is gone
        }
        if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&pool)
            .await
        {
            // Subscribers fall back to polling; the next append tries again.
            tracing::debug!(%error, "cannot NOTIFY subscribers");
        }
    }
}
