//! Durable deadlines: "if nothing happens by then, do this", stored so
//! that it survives a restart and fires once however many runners race for
//! it (the process managers' timers).
//!
//! A [`Deadline`] belongs to an owner (a process instance, say
//! `transfer-42`) and has a name (`credit-timeout`); scheduling the same
//! owner and name again moves it, and [`DeadlineStore::cancel`] removes it.
//! Runners [`claim`](DeadlineStore::claim_due) the due ones for a lease: a
//! claimed deadline is not handed to another runner until the lease runs
//! out, so a runner that dies mid-way is replaced, never doubled while it
//! lives. A handler's effect should be idempotent under the deadline's id
//! (a command with a command id derived from it), so that a deadline
//! handled and then re-claimed after a crash before
//! [`complete`](DeadlineStore::complete) still acts once.
//!
//! Time comes from a [`Clock`]: [`SystemClock`] in production,
//! [`ManualClock`] in tests, which never sleep.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StoreError;

/// A deadline: when `due` comes, `owner`'s `name` fires with `payload`.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadline {
    /// Its id: derive it from what set it (the event), so that setting it
    /// again is recognised.
    pub id: Uuid,
    /// Whose it is: a process instance.
    pub owner: String,
    /// Which of the owner's deadlines.
    pub name: String,
    /// When it fires.
    pub due: DateTime<Utc>,
    /// What the handler needs (JSON).
    pub payload: serde_json::Value,
}

/// A deadline a runner holds until `until`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The deadline.
    pub deadline: Deadline,
    /// This claim: [`DeadlineStore::complete`] takes it, so a runner whose
    /// lease ran out (and whose deadline another runner took) cannot
    /// complete it.
    pub claim: Uuid,
    /// When the claim lapses.
    pub until: DateTime<Utc>,
}

/// Where deadlines are kept: the memory store and PostgreSQL (a table in
/// the store's schema) implement it.
pub trait DeadlineStore: Clone + Send + Sync + 'static {
    /// Stores a deadline. The same id again changes nothing (a retry); the
    /// same owner and name with another id replaces the earlier deadline
    /// (it moves).
    fn schedule(&self, deadline: Deadline) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the owner's deadline `name`; returns whether there was one.
    fn cancel(
        &self,
        owner: &str,
        name: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Claims up to `limit` deadlines of owners starting with `prefix`,
    /// due at `now` (earliest first), that no live claim holds, each until
    /// `now + lease`.
    fn claim_due(
        &self,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send;

    /// Removes a fired deadline, if `claim` still holds it; returns whether
    /// it did.
    fn complete(
        &self,
        id: Uuid,
        claim: Uuid,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The owner's pending deadlines, earliest first: what a process
    /// instance waits for.
    fn pending(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<Vec<Deadline>, StoreError>> + Send;

    /// The earliest due time of the deadlines of owners starting with
    /// `prefix`, claimed or not (a runner sleeps until then).
    fn next_due(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, StoreError>> + Send;
}

/// Where the time comes from.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves after `duration` of this clock's time (a [`ManualClock`]
    /// resolves when it is advanced that far).
    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that moves only when told: tests set a deadline, advance the
/// clock past it and see it fire, without sleeping.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    moved: Arc<tokio::sync::watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            moved: Arc::new(tokio::sync::watch::Sender::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.moved.send_replace(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let until =
            self.now() + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            let _ = moved.wait_for(|now| *now >= until).await;
        })
    }
}

/// How a deadline runner works.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadlineOptions {
    /// Deadlines claimed at a time.
    pub batch: usize,
    /// How long a claim holds: longer than a handler takes.
    pub lease: Duration,
    /// The longest wait between two looks (another process may have set
    /// an earlier deadline).
    pub poll: Duration,
}

impl Default for DeadlineOptions {
    /// 100 at a time, leases of 30 s, a look at least every second.
    fn default() -> Self {
        DeadlineOptions {
            batch: 100,
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

/// Runs the due deadlines of owners starting with `prefix` through
/// `handler` until the returned task is aborted: claims what is due by
/// `clock`, hands each to `handler`, and
/// removes it when the handler succeeds; a deadline whose handler fails is
/// left to its lease and tried again after it.
pub fn run_deadlines<S, C, H, F>(
    store: S,
    clock: C,
    prefix: String,
    options: DeadlineOptions,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    S: DeadlineStore,
    C: Clock,
    H: Fn(Deadline) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), String>> + Send,
{
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let now = clock.now();
            match store
                .claim_due(&prefix, now, options.batch, options.lease)
                .await
            {
                Ok(claimed) => {
                    failures = 0;
                    let full = claimed.len() == options.batch;
                    for Claimed {
                        deadline, claim, ..
                    } in claimed
                    {
                        let (id, owner, name) =
                            (deadline.id, deadline.owner.clone(), deadline.name.clone());
                        match handler(deadline).await {
                            Ok(()) => {
                                if let Err(e) = store.complete(id, claim).await {
                                    tracing::warn!(%owner, %name, error = %e, "a fired deadline stays until its lease ends");
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%owner, %name, %error, "deadline handler failed; retried after its lease");
                            }
                        }
                    }
                    if full {
                        continue;
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "cannot claim deadlines");
                }
            }
            let wait = match store.next_due(&prefix).await {
                Ok(Some(due)) if due > now => (due - now).to_std().unwrap_or(options.poll),
                Ok(Some(_)) => options.poll.min(Duration::from_millis(50) * (failures + 1)),
                _ => options.poll,
            };
            tokio::select! {
                _ = clock.sleep(wait.min(options.poll)) => {}
                _ = tokio::time::sleep(options.poll) => {}
            }
        }
    })
}
