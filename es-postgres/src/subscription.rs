//! Live subscriptions to the global log: read pages up to the readable
//! bound, then wait for a NOTIFY or the poll interval; reconnect with
//! back-off after any failure and resume after the last delivered event.

use std::collections::VecDeque;
use std::time::Duration;

use es_core::{EventStream, RecordedEvent, StoreError};
use futures::StreamExt;
use sqlx::postgres::PgListener;

use crate::PgEventStore;

struct Subscription {
    store: PgEventStore,
    next: u64,
    buffer: VecDeque<RecordedEvent>,
    listener: Option<PgListener>,
    failures: u32,
}

pub(crate) fn subscribe(store: PgEventStore, from_position: u64) -> EventStream {
    let state = Subscription {
        store,
        next: from_position,
        buffer: VecDeque::new(),
        listener: None,
        failures: 0,
    };
    // The state is `None` after an error that retrying cannot fix: the
    // stream yields that error, then ends.
    futures::stream::unfold(Some(state), |sub| async move {
        let mut sub = sub?;
        loop {
            if let Some(event) = sub.buffer.pop_front() {
                return Some((Ok(event), Some(sub)));
            }
            // Listen before reading, so a NOTIFY sent after the read wakes
            // the wait below.
            if sub.listener.is_none() {
                sub.listener = listen(&sub.store).await;
            }
            let page = sub.store.inner.options.subscription_page;
            match sub.store.read_log(sub.next, page).await {
                Ok(events) => {
                    sub.failures = 0;
                    if let Some(last) = events.last() {
                        sub.next = last.global_position + 1;
                        sub.buffer.extend(events);
                    } else {
                        wait(&mut sub).await;
                    }
                }
                Err(error) if error.is_transient() => {
                    sub.failures += 1;
                    sub.listener = None;
                    let pause = backoff(sub.failures);
                    tracing::warn!(%error, failures = sub.failures, ?pause, "subscription read failed; reconnecting");
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Some((Err::<RecordedEvent, StoreError>(error), None)),
            }
        }
    })
    .boxed()
}

async fn listen(store: &PgEventStore) -> Option<PgListener> {
    let mut listener = match PgListener::connect_with(&store.inner.pool).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::debug!(%error, "cannot LISTEN; polling");
            return None;
        }
    };
    match listener.listen(&store.inner.channel).await {
        Ok(()) => Some(listener),
        Err(error) => {
            tracing::debug!(%error, "cannot LISTEN; polling");
            None
        }
    }
}

async fn wait(sub: &mut Subscription) {
    let poll = sub.store.inner.options.poll_interval;
    match &mut sub.listener {
        Some(listener) => {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => {}
                    // The connection dropped (or failed): listen again, and
                    // read meanwhile, since notifications may be lost.
                    Ok(None) | Err(_) => sub.listener = None,
                },
                _ = tokio::time::sleep(poll) => {}
            }
        }
        None => tokio::time::sleep(poll).await,
    }
}

fn backoff(failures: u32) -> Duration {
    let ms = 10u64.saturating_mul(1 << failures.min(10)).min(2_000);
    Duration::from_millis(ms)
}
