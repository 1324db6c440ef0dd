//! Live subscriptions to the global log: read pages up to the readable
//! bound, then wait for a wake-up or the poll interval; after a failure,
//! back off and resume after the last delivered event.
//!
//! One listener task per store handle LISTENs on the schema's channel and
//! turns notifications into a counter that every subscription of the handle
//! watches, so subscriptions hold no connection of their own while they
//! wait.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use evently_core::backend::{LogItem, LogStream, UnreadableEvent};
use evently_core::{EventStream, RecordedEvent, StoreError};
use futures::{FutureExt, StreamExt};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

use crate::PgEventStore;

struct Subscription {
    store: PgEventStore,
    next: u64,
    buffer: VecDeque<RecordedEvent>,
    wake: watch::Receiver<u64>,
    failures: u32,
    /// An unreadable row reached: yielded after the events before it.
    failed: Option<UnreadableEvent>,
    /// Yield an unreadable row and go on after it (`subscribe_rows`), or
    /// yield its error and end (`subscribe`).
    past_unreadable: bool,
    /// Reads since a wake-up that found nothing readable (0: not waiting
    /// for a stalled transaction).
    stalled: u32,
    /// Events to ask for in the next page: fewer after a page that
    /// reached its byte budget, so the server sends few rows past it.
    limit: usize,
}

pub(crate) fn subscribe(store: PgEventStore, from_position: u64) -> EventStream {
    follow(store, from_position, false)
        .map(|item| match item {
            Ok(LogItem::Event(event)) => Ok(event),
            Ok(LogItem::Unreadable(row)) => Err(row.error),
            Err(error) => Err(error),
        })
        .boxed()
}

/// Like `subscribe`, but an unreadable row is yielded as such, and the
/// subscription goes on after it.
pub(crate) fn subscribe_rows(store: PgEventStore, from_position: u64) -> LogStream {
    follow(store, from_position, true)
}

fn follow(store: PgEventStore, from_position: u64, past_unreadable: bool) -> LogStream {
    let wake = store.inner.wakeups.subscribe();
    ensure_listener(&store);
    let state = Subscription {
        store,
        next: from_position,
        buffer: VecDeque::new(),
        wake,
        failures: 0,
        failed: None,
        past_unreadable,
        stalled: 0,
        limit: usize::MAX,
    };
    // The state is `None` after an error that retrying cannot fix: the
    // stream yields that error, then ends.
    futures::stream::unfold(Some(state), |sub| async move {
        let mut sub = sub?;
        loop {
            if let Some(event) = sub.buffer.pop_front() {
                return Some((Ok(LogItem::Event(event)), Some(sub)));
            }
            if let Some(row) = sub.failed.take() {
                if !sub.past_unreadable {
                    return Some((Err(row.error), None));
                }
                sub.next = row.global_position + 1;
                return Some((Ok(LogItem::Unreadable(row)), Some(sub)));
            }
            // Mark the wake-ups so far as seen before reading: one that
            // arrives after the read ends the wait below.
            sub.wake.borrow_and_update();
            let page = sub.store.inner.options.subscription_page;
            let bytes = sub.store.inner.options.subscription_page_bytes;
            let limit = sub.limit.min(page);
            let read = sub.store.read_page_until_bad(sub.next, limit, bytes).await;
            if let Ok((events, _)) = &read {
                // Large events: ask for about twice what fit this time.
                let size: usize = events.iter().map(|e| e.data.len()).sum();
                sub.limit = if size >= bytes {
                    (events.len() * 2).max(1)
                } else {
                    limit.saturating_mul(2)
                };
            }
            match read {
                Ok((events, Some(bad))) => {
                    // Deliver what precedes the unreadable row, then its error.
                    sub.buffer.extend(events);
                    sub.failed = Some(bad);
                }
                Ok((events, None)) => {
                    sub.failures = 0;
                    if let Some(last) = events.last() {
                        sub.next = last.global_position + 1;
                        sub.stalled = 0;
                        sub.buffer.extend(events);
                    } else {
                        // Woken by an append, yet nothing readable: an older
                        // transaction still runs. Look again soon (and more
                        // slowly each time) rather than at the next wake-up,
                        // which that transaction's end does not send.
                        let poll = sub.store.inner.options.poll_interval;
                        let pause = match sub.stalled {
                            0 => poll,
                            n => Duration::from_millis(5u64 << n.min(7)).min(poll),
                        };
                        tokio::select! {
                            _ = sub.wake.changed() => sub.stalled = 1,
                            _ = tokio::time::sleep(pause) => {
                                if sub.stalled > 0 {
                                    sub.stalled += 1;
                                }
                            }
                        }
                    }
                }
                Err(error) if error.is_transient() => {
                    sub.failures += 1;
                    let pause = backoff(sub.failures);
                    tracing::warn!(%error, failures = sub.failures, ?pause, "subscription read failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Some((Err::<LogItem, StoreError>(error), None)),
            }
        }
    })
    .boxed()
}

/// Starts the handle's listener task unless it runs.
fn ensure_listener(store: &PgEventStore) {
    let mut started = store
        .inner
        .listener_started
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *started {
        return;
    }
    // Outside a tokio runtime there is nothing to run it on: the
    // subscriptions then rely on polling alone.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    *started = true;
    let pool = store.inner.pool.clone();
    let channel = store.inner.channel.clone();
    let wakeups = Arc::clone(&store.inner.wakeups);
    runtime.spawn(listen(pool, channel, wakeups));
}

/// LISTENs and counts notifications until the store handle is gone.
/// Reconnects with back-off; the subscriptions' polling covers the gaps.
///
/// The listener holds its connection for as long as it runs, so it takes
/// one of its own, outside the store's pool: with a pool of one
/// connection it would otherwise starve every append and read.
async fn listen(pool: PgPool, channel: String, wakeups: Arc<watch::Sender<u64>>) {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone());
    drop(pool);
    let pool = own;
    let mut failures = 0;
    // The store holds the other reference: when it is dropped, stop.
    while Arc::strong_count(&wakeups) > 1 {
        let mut listener = match connect(&pool, &channel).await {
            Ok(listener) => listener,
            Err(error) => {
                failures += 1;
                tracing::debug!(%error, "cannot LISTEN; subscriptions poll meanwhile");
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        failures = 0;
        // Everything committed while not listening is found by a read.
        wakeups.send_modify(|n| *n += 1);
        while Arc::strong_count(&wakeups) > 1 {
            let received = tokio::time::timeout(Duration::from_secs(1), listener.try_recv()).await;
            match received {
                Err(_elapsed) => {}
                Ok(Ok(Some(_))) => {
                    // One read catches up on every append so far.
                    while let Some(Ok(Some(_))) = listener.try_recv().now_or_never() {}
                    wakeups.send_modify(|n| *n += 1);
                }
                // The connection dropped: listen again.
                Ok(Ok(None)) | Ok(Err(_)) => break,
            }
        }
    }
}

async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

fn backoff(failures: u32) -> Duration {
    let ms = 10u64.saturating_mul(1 << failures.min(10)).min(2_000);
    Duration::from_millis(ms)
}
