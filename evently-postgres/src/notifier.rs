//! Wakes subscribers after appends commit: one NOTIFY on the schema's
//! channel, sent in a transaction of its own, for all the appends of a
//! moment. A NOTIFY inside the append's transaction would take a
//! database-wide lock at its commit, held through the WAL flush, and make
//! concurrent appends commit one at a time.

use std::sync::Arc;

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::ConnectOptions;
use tokio::sync::Notify;

/// How long a NOTIFY waits for more appends to announce.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);

/// Starts the notifier task; appends call `notify_one()` on the result.
pub(crate) fn start(pool: PgPool, channel: String) -> Arc<Notify> {
    let wake = Arc::new(Notify::new());
    tokio::spawn(run(pool, channel, Arc::clone(&wake)));
    wake
}

async fn run(pool: PgPool, channel: String, wake: Arc<Notify>) {
    // A connection of its own, not one of the pool's: with a small pool the
    // NOTIFY would otherwise take turns with the appends it announces.
    let options = pool.connect_options();
    drop(pool);
    let mut conn: Option<PgConnection> = None;
    loop {
        // Appends that happen while a NOTIFY is on its way leave one permit:
        // they are covered by the next one.
        wake.notified().await;
        if Arc::strong_count(&wake) == 1 {
            return; // the store is gone
        }
        // Let the appends of the next moment join this NOTIFY: subscribers
        // wake a little later, writers pay for far fewer NOTIFYs.
        tokio::time::sleep(COALESCE).await;
        if conn.is_none() {
            conn = options
                .connect()
                .await
                .map_err(|error| {
                    tracing::debug!(%error, "cannot connect to NOTIFY subscribers");
                })
                .ok();
        }
        let Some(c) = conn.as_mut() else {
            continue; // subscribers poll meanwhile; the next append tries again
        };
        if let Err(error) = sqlx::query(crate::queries::NOTIFY)
            .bind(&channel)
            .execute(&mut *c)
            .await
        {
            tracing::debug!(%error, "cannot NOTIFY subscribers");
            conn = None;
        }
    }
}
