//! Projections into PostgreSQL read models: catch-up then live, crashes at
//! random points (no event counted twice or lost), one active instance and
//! takeover when it dies, back-pressure, the stop and park policies,
//! waiting for projections, and skipped types never decoded.
//!
//! The read model is a table in the test's own schema, `totals`, written by
//! the handler through the runner's transaction (`&mut PgConnection`): per
//! stream, the sum of its credits and how many there were. Each test
//! compares it with the same totals computed in Rust from a full replay of
//! the log: a credit applied twice or lost changes a sum and a count.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use evently_core::prelude::*;
use evently_core::projection::{
    HandlerError, OnFailure, Projection, ProjectionHandle, ProjectionOptions, ProjectionState,
    WaitError,
};
use evently_core::Payload;
use evently_postgres::sqlx::{self, PgConnection};
use evently_postgres::PgEventStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum LedgerEvent {
    Credited { amount: u64 },
    Noted { text: String },
}

/// Per stream: (sum of the credits, number of credits).
type Totals = BTreeMap<String, (i64, i64)>;

/// Sums credits per stream into `"<schema>".totals`. Optionally sleeps on
/// some events, fails on the amounts in `poison`, fails the first few
/// times it sees one amount, or panics on one amount.
struct TotalsProjection {
    name: String,
    upsert: String,
    poison: Vec<u64>,
    fail_first: Option<(u64, Arc<AtomicU32>)>,
    panics_on: Option<u64>,
    /// Sleep this long on credits whose amount is a multiple of `.0`.
    delay: Option<(u64, Duration)>,
    /// Handler calls (shared, so the test can read it).
    calls: Arc<AtomicU64>,
}

impl TotalsProjection {
    fn new(store: &PgEventStore, name: &str) -> Self {
        TotalsProjection {
            name: name.to_owned(),
            upsert: format!(
                "INSERT INTO \"{}\".totals AS t (stream_id, total, events) VALUES ($1, $2, 1) \
                 ON CONFLICT (stream_id) DO UPDATE \
                 SET total = t.total + excluded.total, events = t.events + 1",
                store.schema()
            ),
            poison: Vec::new(),
            fail_first: None,
            panics_on: None,
            delay: None,
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    fn poison(mut self, amounts: &[u64]) -> Self {
        self.poison = amounts.to_vec();
        self
    }

    fn fail_first(mut self, amount: u64, times: u32) -> Self {
        self.fail_first = Some((amount, Arc::new(AtomicU32::new(times))));
        self
    }

    fn panics_on(mut self, amount: u64) -> Self {
        self.panics_on = Some(amount);
        self
    }

    fn delay(mut self, every: u64, pause: Duration) -> Self {
        self.delay = Some((every, pause));
        self
    }

    fn calls(mut self, calls: &Arc<AtomicU64>) -> Self {
        self.calls = Arc::clone(calls);
        self
    }
}

impl Projection for TotalsProjection {
    type Event = LedgerEvent;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self) -> &[&str] {
        &["Credited"]
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<LedgerEvent>,
    ) -> Result<(), HandlerError> {
        let LedgerEvent::Credited { amount } = event.data else {
            return Err("only credits are handled".into());
        };
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some((every, pause)) = self.delay {
            if amount % every == 0 {
                tokio::time::sleep(pause).await;
            }
        }
        if self.panics_on == Some(amount) {
            panic!("cannot bear {amount}");
        }
        if self.poison.contains(&amount) {
            return Err(format!("cannot credit {amount}").into());
        }
        if let Some((failing, left)) = &self.fail_first {
            if *failing == amount
                && left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err("temporarily unavailable".into());
            }
        }
        sqlx::query(&self.upsert)
            .bind(event.stream_id.as_str())
            .bind(amount as i64)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

fn credit(amount: u64) -> NewEvent {
    NewEvent::from_event(&LedgerEvent::Credited { amount }, Metadata::new()).unwrap()
}

async fn credits(store: &PgEventStore, stream: &str, amounts: &[u64]) -> Vec<RecordedEvent> {
    store
        .append(
            &StreamId::from(stream),
            ExpectedVersion::Any,
            amounts.iter().map(|&a| credit(a)).collect(),
        )
        .await
        .unwrap()
}

/// Appends credits; returns the position of the last.
async fn credit_to(store: &PgEventStore, stream: &str, amounts: &[u64]) -> u64 {
    credits(store, stream, amounts)
        .await
        .last()
        .unwrap()
        .global_position
}

async fn totals_table(store: &PgEventStore) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{}\".totals \
         (stream_id text PRIMARY KEY, total bigint NOT NULL, events bigint NOT NULL)",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
}

async fn read_totals(store: &PgEventStore) -> Totals {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT stream_id, total, events FROM \"{}\".totals",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter().map(|(s, t, n)| (s, (t, n))).collect()
}

/// The totals from a full replay of the log, computed in Rust.
async fn replayed_totals(store: &PgEventStore) -> Totals {
    replay(&read_whole_log(store).await, u64::MAX)
}

/// The totals of the credits in `log` up to position `upto`.
fn replay(log: &[RecordedEvent], upto: u64) -> Totals {
    let mut totals = Totals::new();
    for event in log.iter().take_while(|e| e.global_position <= upto) {
        if &*event.event_type != "Credited" {
            continue;
        }
        let LedgerEvent::Credited { amount } = event.decode::<LedgerEvent>().unwrap().data else {
            unreachable!()
        };
        let entry = totals.entry(event.stream_id.to_string()).or_default();
        entry.0 += amount as i64;
        entry.1 += 1;
    }
    totals
}

/// The checkpoint and the read model, read in one snapshot.
async fn checkpoint_and_totals(store: &PgEventStore, name: &str) -> (u64, Totals) {
    // A connection of its own: pooled ones may just have been left by an
    // aborted runner, and sqlx may still owe them a rollback.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&common::database_url())
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .unwrap();
    let checkpoint: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT position FROM \"{}\".projections WHERE name = $1",
        store.schema()
    ))
    .bind(name)
    .fetch_optional(&mut *tx)
    .await
    .unwrap();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT stream_id, total, events FROM \"{}\".totals",
        store.schema()
    ))
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (
        checkpoint.unwrap_or(0) as u64,
        rows.into_iter().map(|(s, t, n)| (s, (t, n))).collect(),
    )
}

fn totals(entries: &[(&str, i64, i64)]) -> Totals {
    entries
        .iter()
        .map(|&(s, t, n)| (s.to_owned(), (t, n)))
        .collect()
}

fn fast() -> ProjectionOptions {
    ProjectionOptions::default().retries(2, Duration::from_millis(1))
}

/// The backend holding the projection's advisory lock, if any. Relies on
/// the runner's lock key, `hashtextextended('es-projection <schema>
/// <name>', 0)` (a bigint key: high half in `classid`, low in `objid`).
async fn lock_holder(store: &PgEventStore, name: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)",
    )
    .bind(format!("es-projection {} {}", store.schema(), name))
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

async fn terminate(store: &PgEventStore, pid: i32) -> bool {
    sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Polls until `check` holds, failing the test after `within`.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn state(handle: &ProjectionHandle) -> ProjectionState {
    handle.status().state
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn catches_up_then_follows_live() {
    let store = fresh_store().await;
    totals_table(&store).await;
    let caught_up = credit_to(&store, "a", &[1, 2, 3]).await;
    let handle = store.run_projection(TotalsProjection::new(&store, "totals"), fast());
    handle.wait_for(caught_up, PATIENCE).await.unwrap();
    assert_eq!(state(&handle), ProjectionState::Running);
    assert_eq!(read_totals(&store).await, totals(&[("a", 6, 3)]));
    assert_eq!(store.checkpoint("totals").await.unwrap(), caught_up);

    // Live: appended while the runner waits at the head.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let last = credit_to(&store, "b", &[10]).await;
    handle.wait_for(last, PATIENCE).await.unwrap();
    assert_eq!(state(&handle), ProjectionState::Running);
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 6, 3), ("b", 10, 1)])
    );

    let status = handle.stop().await;
    assert_eq!(status.state, ProjectionState::Stopped);
    assert_eq!((status.position, status.processed), (last, 4));
    assert_eq!(store.checkpoint("totals").await.unwrap(), last);
    assert_eq!(
        lock_holder(&store, "totals").await,
        None,
        "stopping releases the lock"
    );

    // Stopped means stopped: a later event is not applied.
    credit_to(&store, "b", &[100]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.checkpoint("totals").await.unwrap(), last);
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 6, 3), ("b", 10, 1)])
    );
}

/// The issue's "done when": a projection killed at random points, mid-batch
/// included, and restarted each time, counts every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_at_random_points_and_restarted_it_counts_every_event_once() {
    const STREAMS: u64 = 6;
    const ROUNDS: u64 = 100;
    const PER_APPEND: u64 = 10;
    const ABORTS: usize = 40;
    const BATCH: usize = 50;

    let store = fresh_store().await;
    totals_table(&store).await;
    let mut amount = 0;
    for _ in 0..ROUNDS {
        for s in 0..STREAMS {
            let amounts: Vec<u64> = (amount + 1..=amount + PER_APPEND).collect();
            amount += PER_APPEND;
            credit_to(&store, &format!("s{s}"), &amounts).await;
        }
    }
    let total_events = STREAMS * ROUNDS * PER_APPEND;
    let head = store.head_position().await.unwrap();
    let log = read_whole_log(&store).await;
    let expected = replay(&log, u64::MAX);
    assert_eq!(
        expected.values().map(|&(_, n)| n as u64).sum::<u64>(),
        total_events
    );

    // Small batches, and a handler that sleeps on every 10th credit, so a
    // batch spends a while inside its transaction.
    let options = ProjectionOptions::default().batch_size(BATCH);
    let projection = |calls: &Arc<AtomicU64>| {
        TotalsProjection::new(&store, "totals")
            .delay(10, Duration::from_millis(1))
            .calls(calls)
    };
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let (mut mid_run, mut mid_batch) = (0, 0);
    let mut checkpoints = Vec::new();
    for _ in 0..ABORTS {
        let calls = Arc::new(AtomicU64::new(0));
        let handle = store.run_projection(projection(&calls), options.clone());
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // A random point: after 0 to 3 committed batches, then 0 to 20 ms
        // more (a batch takes several ms: its handlers sleep on some events).
        let batches = (seed >> 32) % 4;
        let mut status = handle.watch();
        let committed = tokio::time::timeout(
            PATIENCE,
            status.wait_for(|s| s.processed >= batches * BATCH as u64),
        )
        .await
        .is_ok();
        assert!(committed, "{batches} batches committed in time");
        tokio::time::sleep(Duration::from_micros(seed % 20_000)).await;
        handle.abort();
        eventually(PATIENCE, "the aborted runner ends", || handle.is_finished()).await;
        // Handler calls beyond the events of the batches it reported
        // committed: the abort landed inside a batch (in a handler, or
        // before its commit answered).
        if calls.load(Ordering::SeqCst) > handle.status().processed {
            mid_batch += 1;
        }
        // Whatever was cut short, the read model is exactly the events up
        // to the checkpoint.
        let (checkpoint, model) = checkpoint_and_totals(&store, "totals").await;
        assert_eq!(
            model,
            replay(&log, checkpoint),
            "after abort {}: the read model is the replay up to the checkpoint",
            checkpoints.len() + 1
        );
        if checkpoint > 0 && checkpoint < head {
            mid_run += 1;
        }
        checkpoints.push(checkpoint);
        // The dropped lock connection closes; wait for the server to see
        // it, so the next runner takes the lock at once.
        let started = Instant::now();
        while lock_holder(&store, "totals").await.is_some() {
            assert!(started.elapsed() < PATIENCE, "the lock is never released");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(
        checkpoints.windows(2).all(|w| w[0] <= w[1]),
        "the checkpoint never moves back: {checkpoints:?}"
    );
    let applied = log
        .iter()
        .take_while(|e| e.global_position <= *checkpoints.last().unwrap())
        .count();
    println!(
        "crash test: {ABORTS} aborts, {mid_run} with the checkpoint strictly between 0 and the head, \
         {mid_batch} inside a batch; {applied} of {total_events} events applied before the final run"
    );
    assert!(mid_run >= 5, "only {mid_run} aborts landed mid-run");
    assert!(
        mid_batch >= 5,
        "only {mid_batch} aborts landed inside a batch"
    );

    let calls = Arc::new(AtomicU64::new(0));
    let handle = store.run_projection(projection(&calls), options);
    handle
        .wait_for(head, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        read_totals(&store).await,
        expected,
        "every event counted once"
    );
    assert_eq!(store.checkpoint("totals").await.unwrap(), head);
    assert!(store.parked("totals").await.unwrap().is_empty());
    handle.stop().await;
}

/// Two store handles (two pools, as two processes would have) run the same
/// projection: one runs, the other stands by. Its lock backend is killed
/// under it (a zombie: it goes on for up to a second, fenced by the
/// checkpoint), then its runner is aborted and its lock backend
/// terminated (a crash): the other takes over from the checkpoint. Writers
/// append all along; at the end the read model equals a full replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_runs_and_another_takes_over_when_it_dies() {
    let first = fresh_store().await;
    totals_table(&first).await;
    let second = PgEventStore::builder()
        .schema(first.schema())
        .connect(&database_url())
        .await
        .unwrap();
    credit_to(&first, "a", &[1, 2, 3]).await;
    let stores = [first.clone(), second.clone()];
    let handles = [
        first.run_projection(
            TotalsProjection::new(&first, "totals"),
            ProjectionOptions::default(),
        ),
        second.run_projection(
            TotalsProjection::new(&second, "totals"),
            ProjectionOptions::default(),
        ),
    ];

    // A writer on a third handle, appending all along.
    let writer_store = second_handle(&first).await;
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let store = writer_store.clone();
        let writing = Arc::clone(&writing);
        async move {
            let mut amount = 100;
            while writing.load(Ordering::SeqCst) {
                amount += 1;
                credit_to(&store, &format!("w{}", amount % 4), &[amount]).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            amount - 100
        }
    });

    // Exactly one runs; the other stands by (and stays so).
    let active = settle(&handles, "at start").await;
    let standby = 1 - active;
    println!("takeover: instance {active} runs, {standby} stands by");

    // 1. A zombie: the active instance's lock backend dies, the runner
    // does not. It notices within about a second; meanwhile the fence
    // (`WHERE position = $from`) keeps the two from applying a batch twice.
    let pid = lock_holder(&first, "totals").await.expect("a lock holder");
    let sampling = Arc::new(AtomicBool::new(true));
    let both_running = tokio::spawn({
        let watches = [handles[0].watch(), handles[1].watch()];
        let sampling = Arc::clone(&sampling);
        async move {
            let mut overlap = Duration::ZERO;
            while sampling.load(Ordering::SeqCst) {
                let running = |i: usize| watches[i].borrow().state == ProjectionState::Running;
                if running(0) && running(1) {
                    overlap += Duration::from_millis(2);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            overlap
        }
    });
    assert!(terminate(&first, pid).await);
    let started = Instant::now();
    let mut new_pid = None;
    while new_pid.is_none() || new_pid == Some(pid) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nobody retakes the lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        new_pid = lock_holder(&first, "totals").await;
    }
    let relocked = started.elapsed();
    let active = settle(&handles, "after the lock backend was killed").await;
    sampling.store(false, Ordering::SeqCst);
    println!(
        "takeover: lock backend {pid} killed; backend {} holds the lock after {relocked:?}; \
         instance {active} runs alone after {:?}; both ran for about {:?}",
        new_pid.unwrap(),
        started.elapsed(),
        both_running.await.unwrap()
    );
    let head = writer_store.head_position().await.unwrap();
    handles[active].wait_for(head, PATIENCE).await.unwrap();

    // 2. A crash: the active runner is aborted (its lock connection
    // dropped) and its lock backend terminated.
    let pid = lock_holder(&first, "totals").await.expect("a lock holder");
    let checkpoint = stores[active].checkpoint("totals").await.unwrap();
    handles[active].abort();
    terminate(&first, pid).await;
    let survivor = 1 - active;
    let started = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the other instance takes over",
        || state(&handles[survivor]) == ProjectionState::Running,
    )
    .await;
    let took_over = started.elapsed();
    assert!(handles[active].is_finished());
    assert!(
        handles[survivor].status().position >= checkpoint,
        "it continues from the checkpoint {checkpoint}, not before"
    );
    println!("takeover: instance {survivor} took over in {took_over:?}");
    let head = writer_store.head_position().await.unwrap();
    handles[survivor].wait_for(head, PATIENCE).await.unwrap();

    // Done writing: the survivor reaches the head, and every event was
    // applied exactly once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    writing.store(false, Ordering::SeqCst);
    let written = writer.await.unwrap();
    let head = writer_store.head_position().await.unwrap();
    handles[survivor].wait_for(head, PATIENCE).await.unwrap();
    assert_eq!(
        read_totals(&first).await,
        replayed_totals(&writer_store).await,
        "no event applied twice or lost"
    );
    assert!(written > 20, "the writer appended during the takeover");
    let [a, b] = handles;
    for handle in [a, b] {
        handle.stop().await;
    }
}

/// Waits until exactly one of the instances runs and the other stands by,
/// and stays so for half a second; returns the running one.
async fn settle(handles: &[ProjectionHandle; 2], when: &str) -> usize {
    let started = Instant::now();
    let mut stable_since: Option<(usize, Instant)> = None;
    loop {
        let states = [state(&handles[0]), state(&handles[1])];
        let active = match &states {
            [ProjectionState::Running, ProjectionState::Standby] => Some(0),
            [ProjectionState::Standby, ProjectionState::Running] => Some(1),
            _ => None,
        };
        match (active, stable_since) {
            (Some(a), Some((b, since))) if a == b => {
                if since.elapsed() >= Duration::from_millis(500) {
                    return a;
                }
            }
            (Some(a), _) => stable_since = Some((a, Instant::now())),
            (None, _) => stable_since = None,
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{when}: not exactly one instance running: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A slow projection (2 ms per event) reads at its own pace: 8 writers
/// append 2,400 events (3 per append) in far less time than it needs to
/// apply them, and it catches up later. Its memory is bounded by
/// construction: the subscription holds at most one page (4,096 events by
/// default) and the runner one batch (256 by default), however far behind
/// it is. (Appends never wait for it; readers of the global log do wait
/// while one of its batch transactions is open, see the store's docs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_projection_never_slows_the_writers() {
    const WRITERS: u64 = 8;
    const PER_WRITER: u64 = 300;
    const PER_EVENT: Duration = Duration::from_millis(2);
    let total = WRITERS * PER_WRITER;

    let store = fresh_store().await;
    totals_table(&store).await;
    let handle = store.run_projection(
        TotalsProjection::new(&store, "slow").delay(1, PER_EVENT),
        ProjectionOptions::default(),
    );
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in (0..PER_WRITER).step_by(3) {
                credit_to(&store, &format!("w{w}"), &[i + 1, i + 2, i + 3]).await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let writing = started.elapsed();
    let processed = handle.status().processed;
    // What the projection needs at least: its handler's sleeps alone.
    let needs = PER_EVENT * total as u32;
    println!(
        "back-pressure: {total} events written in {writing:?}; the projection had processed \
         {processed} by then and needs at least {needs:?}"
    );
    assert!(
        writing < needs,
        "the writers took {writing:?}, as long as the projection needs ({needs:?})"
    );
    assert!(
        processed < total / 2,
        "the projection is far behind when the writers are done ({processed} of {total})"
    );

    let head = store.head_position().await.unwrap();
    handle
        .wait_for(head, Duration::from_secs(90))
        .await
        .unwrap();
    println!(
        "back-pressure: caught up after {:?} in total",
        started.elapsed()
    );
    assert_eq!(read_totals(&store).await, replayed_totals(&store).await);
    assert_eq!(handle.status().processed, total);
    handle.stop().await;
}

#[tokio::test]
async fn under_the_stop_policy_a_failing_event_stops_the_projection_before_it() {
    let store = fresh_store().await;
    totals_table(&store).await;
    credit_to(&store, "b", &[5, 6]).await;
    let events = credits(&store, "a", &[1, 13, 2]).await;
    let (before, failing) = (&events[0], &events[1]);
    let handle = store.run_projection(
        TotalsProjection::new(&store, "totals").poison(&[13]),
        fast().on_failure(OnFailure::Stop),
    );
    let error = handle
        .wait_for(events[2].global_position, PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(error, WaitError::NotRunning { .. }), "{error:?}");
    let status = handle.status();
    let ProjectionState::Failed(reason) = &status.state else {
        panic!("expected a failed projection, got {status:?} ({error})");
    };
    assert_eq!(
        reason,
        &format!(
            "event `Credited` at position {} (stream `a` version 2) failed 3 times: cannot credit 13",
            failing.global_position
        )
    );
    assert_eq!(status.position, before.global_position);
    assert_eq!(
        store.checkpoint("totals").await.unwrap(),
        before.global_position
    );
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 1, 1), ("b", 11, 2)]),
        "exactly the events before the failing one"
    );
    assert!(store.parked("totals").await.unwrap().is_empty());
    assert!(handle.is_finished());
}

#[tokio::test]
async fn under_the_park_policy_a_failing_event_is_parked_the_rest_applied_and_it_can_be_retried() {
    let store = fresh_store().await;
    totals_table(&store).await;
    let events = credits(&store, "a", &[1, 13, 2]).await;
    let last = credit_to(&store, "b", &[7]).await;
    let failing = &events[1];
    let handle = store.run_projection(
        TotalsProjection::new(&store, "totals").poison(&[13]),
        fast().on_failure(OnFailure::Park),
    );
    handle.wait_for(last, PATIENCE).await.unwrap();
    assert_eq!(state(&handle), ProjectionState::Running);
    assert_eq!(handle.status().parked, 1);
    assert_eq!(store.checkpoint("totals").await.unwrap(), last);
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 3, 2), ("b", 7, 1)])
    );

    let parked = store.parked("totals").await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let row = &parked[0];
    assert_eq!(
        (
            row.position,
            row.event_id,
            row.stream_id.as_str(),
            row.stream_version,
            row.event_type.as_str()
        ),
        (
            failing.global_position,
            failing.event_id,
            "a",
            2,
            "Credited"
        )
    );
    assert_eq!(
        row.error,
        format!(
            "event `Credited` at position {} (stream `a` version 2) failed 3 times: cannot credit 13",
            failing.global_position
        )
    );
    assert!(store.parked("another").await.unwrap().is_empty());

    // Retrying with the same broken handler fails and keeps it parked.
    let broken = TotalsProjection::new(&store, "totals").poison(&[13]);
    assert!(store
        .retry_parked(&broken, failing.global_position)
        .await
        .is_err());
    assert_eq!(store.parked("totals").await.unwrap().len(), 1);
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 3, 2), ("b", 7, 1)])
    );

    // The fixed handler applies it and removes it, once.
    let fixed = TotalsProjection::new(&store, "totals");
    assert!(store
        .retry_parked(&fixed, failing.global_position)
        .await
        .unwrap());
    assert!(store.parked("totals").await.unwrap().is_empty());
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 16, 3), ("b", 7, 1)])
    );
    assert!(!store
        .retry_parked(&fixed, failing.global_position)
        .await
        .unwrap());
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 16, 3), ("b", 7, 1)])
    );
    handle.stop().await;
}

#[tokio::test]
async fn a_failing_batch_is_rolled_back_and_its_events_retried_one_by_one() {
    let store = fresh_store().await;
    totals_table(&store).await;
    // One batch: 1 is written in the transaction, 2 fails, the batch rolls
    // back; then 1, 2 (failing once more, then applied) and 3, one by one.
    let last = credit_to(&store, "a", &[1, 2, 3]).await;
    let projection = TotalsProjection::new(&store, "totals").fail_first(2, 2);
    let handle = store.run_projection(projection, fast());
    handle.wait_for(last, PATIENCE).await.unwrap();
    assert_eq!(read_totals(&store).await, totals(&[("a", 6, 3)]));
    assert!(store.parked("totals").await.unwrap().is_empty());
    assert_eq!(handle.status().processed, 3);
    handle.stop().await;
}

#[tokio::test]
async fn a_panic_stops_that_projection_only_and_its_transaction_rolls_back() {
    let store = fresh_store().await;
    totals_table(&store).await;
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{0}\".healthy (LIKE \"{0}\".totals INCLUDING ALL)",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let last = credit_to(&store, "a", &[1, 666, 2]).await;
    let bad = store.run_projection(TotalsProjection::new(&store, "bad").panics_on(666), fast());
    let mut good = TotalsProjection::new(&store, "good");
    good.upsert = good.upsert.replace(".totals", ".healthy");
    let good = store.run_projection(good, fast());
    good.wait_for(last, PATIENCE).await.unwrap();
    assert!(bad.wait_for(last, PATIENCE).await.is_err());
    assert_eq!(
        state(&bad),
        ProjectionState::Failed("the projection panicked: cannot bear 666".into())
    );
    assert_eq!(store.checkpoint("bad").await.unwrap(), 0);
    assert_eq!(
        read_totals(&store).await,
        Totals::new(),
        "the panicking batch left nothing behind"
    );
    let healthy: i64 = sqlx::query_scalar(&format!(
        "SELECT total FROM \"{}\".healthy WHERE stream_id = 'a'",
        store.schema()
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(healthy, 669);
    assert_eq!(state(&good), ProjectionState::Running);
    good.stop().await;
}

#[tokio::test]
async fn waiting_for_projections_returns_once_processed_and_times_out_naming_the_laggard() {
    let store = fresh_store().await;
    totals_table(&store).await;
    let last = credit_to(&store, "a", &[1, 2]).await;
    let handle = store.run_projection(TotalsProjection::new(&store, "totals"), fast());
    // Waited for from another handle, as another process of the service would.
    let other = second_handle(&store).await;
    other.wait_for(&["totals"], last, PATIENCE).await.unwrap();
    assert_eq!(
        read_totals(&other).await,
        totals(&[("a", 3, 2)]),
        "the read model has the events once the wait returns"
    );
    handle.stop().await;

    let later = credit_to(&store, "a", &[3]).await;
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let error = store
        .wait_for(&["totals"], later, timeout)
        .await
        .unwrap_err();
    assert!(started.elapsed() >= timeout);
    assert_eq!(
        error,
        WaitError::Timeout {
            name: "totals".into(),
            wanted: later,
            reached: last,
            timeout,
        }
    );
    assert_eq!(
        error.to_string(),
        format!("projection `totals` reached position {last}, not {later}, within 200ms")
    );

    // Several names: the one that is not there is named.
    let error = store
        .wait_for(&["totals", "ghost"], last, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, WaitError::Timeout { name, reached: 0, .. } if name == "ghost"),
        "{error:?}"
    );
}

#[tokio::test]
async fn events_it_does_not_handle_are_never_decoded() {
    let store = fresh_store().await;
    totals_table(&store).await;
    credit_to(&store, "a", &[5]).await;
    // A `Noted` whose payload could not decode, and a type the event enum
    // does not even know: skipped, so harmless.
    for (event_type, payload) in [("Noted", "[1,2,3]"), ("Mystery", r#"{"x":"y"}"#)] {
        store
            .append(
                &StreamId::from("a"),
                ExpectedVersion::Any,
                vec![NewEvent::raw(
                    event_type,
                    1,
                    Payload::from_json(payload).unwrap(),
                    Metadata::new(),
                )],
            )
            .await
            .unwrap();
    }
    let last = credit_to(&store, "a", &[7]).await;
    let handle = store.run_projection(TotalsProjection::new(&store, "totals"), fast());
    handle.wait_for(last, PATIENCE).await.unwrap();
    let status = handle.status();
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!((status.processed, status.parked), (4, 0));
    assert_eq!(read_totals(&store).await, totals(&[("a", 12, 2)]));
    assert_eq!(store.checkpoint("totals").await.unwrap(), last);
    assert!(store.parked("totals").await.unwrap().is_empty());
    handle.stop().await;
}

/// Eight retries of one parked event at once (each handler slow enough for
/// them all to be inside it together): exactly one applies it, the others
/// find it no longer parked.
#[tokio::test]
async fn concurrent_retries_of_a_parked_event_apply_it_once() {
    let store = fresh_store().await;
    totals_table(&store).await;
    let events = credits(&store, "a", &[1, 13, 2]).await;
    let failing = events[1].global_position;
    let handle = store.run_projection(
        TotalsProjection::new(&store, "totals").poison(&[13]),
        fast().on_failure(OnFailure::Park),
    );
    handle
        .wait_for(events[2].global_position, PATIENCE)
        .await
        .unwrap();
    handle.stop().await;
    assert_eq!(store.parked("totals").await.unwrap().len(), 1);
    assert_eq!(read_totals(&store).await, totals(&[("a", 3, 2)]));

    let calls = Arc::new(AtomicU64::new(0));
    let retries = (0..8).map(|_| {
        let store = store.clone();
        let fixed = TotalsProjection::new(&store, "totals")
            .delay(13, Duration::from_millis(100))
            .calls(&calls);
        tokio::spawn(async move { store.retry_parked(&fixed, failing).await })
    });
    let outcomes: Vec<bool> = futures::future::join_all(retries)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|applied| **applied).count(),
        1,
        "exactly one retry applies the event: {outcomes:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 16, 3)]),
        "the parked credit counted once"
    );
    assert!(store.parked("totals").await.unwrap().is_empty());
}

/// The log of the unreadable-row tests: five credits to `a`, a `Noted`
/// event in `note` whose metadata no longer reads (a type the projection
/// does not handle), five credits to `a`, a credit in `bad` whose metadata
/// no longer reads, two credits to `a`. Returns the positions of the tenth
/// good credit, of the bad credit, and of the last event.
async fn log_with_unreadable_rows(store: &PgEventStore) -> (u64, u64, u64) {
    credit_to(store, "a", &[1, 2, 3, 4, 5]).await;
    let note = NewEvent::from_event(&LedgerEvent::Noted { text: "hi".into() }, Metadata::new());
    store
        .append(
            &StreamId::from("note"),
            ExpectedVersion::Any,
            vec![note.unwrap()],
        )
        .await
        .unwrap();
    let tenth = credit_to(store, "a", &[6, 7, 8, 9, 10]).await;
    let bad = credit_to(store, "bad", &[100]).await;
    let last = credit_to(store, "a", &[11, 12]).await;
    // The readable bound is cluster-wide: wait until no other test's open
    // transaction holds these events back, so the runner reaches them.
    let reader = second_handle(store).await;
    read_log_until(&reader, PATIENCE, |log| log.len() == 14).await;
    let corrupted = sqlx::query(&format!(
        "UPDATE \"{}\".events SET metadata = '[1,2]' WHERE stream_id IN ('note', 'bad')",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(corrupted.rows_affected(), 2);
    (tenth, bad, last)
}

/// Under `Stop`, a row that cannot be read used to fail the projection with
/// the batch being gathered dropped: over ten good events and the row, it
/// ended at position 0 with nothing applied. Now the events before it are
/// applied and it stops at the event before it, naming the position; a
/// row of a type it does not handle is skipped.
#[tokio::test]
async fn under_the_stop_policy_an_unreadable_row_stops_the_projection_after_the_events_before_it() {
    let store = fresh_store().await;
    totals_table(&store).await;
    let (tenth, bad, last) = log_with_unreadable_rows(&store).await;
    let handle = store.run_projection(
        TotalsProjection::new(&store, "totals"),
        fast().on_failure(OnFailure::Stop),
    );
    let error = handle.wait_for(last, PATIENCE).await.unwrap_err();
    let status = handle.status();
    let ProjectionState::Failed(reason) = &status.state else {
        panic!("expected a failed projection, got {status:?} ({error})");
    };
    assert!(
        reason.starts_with(&format!(
            "the row at position {bad} (stream `bad` version 1) cannot be read: \
             corrupt event in stream `bad` at version 1: metadata does not decode"
        )),
        "{reason}"
    );
    assert_eq!(status.position, tenth);
    assert_eq!(store.checkpoint("totals").await.unwrap(), tenth);
    assert_eq!(
        read_totals(&store).await,
        totals(&[("a", 55, 10)]),
        "the ten good credits before the row"
    );
    assert!(store.parked("totals").await.unwrap().is_empty());
}

/// Under `Park`, a row that cannot be read used to fail the projection like
/// under `Stop`. Now it is parked with the reason, like an event whose
/// handler fails, and the projection goes on; retrying it fails while it
/// still cannot be read, and keeps it parked.
#[tokio::test]
async fn under_the_park_policy_an_unreadable_row_is_parked_and_the_projection_goes_on() {
    let store = fresh_store().await;
    totals_table(&store).await;
    let (_, bad, last) = log_with_unreadable_rows(&store).await;
    let handle = store.run_projection(
        TotalsProjection::new(&store, "totals"),
        fast().on_failure(OnFailure::Park),
    );
    handle.wait_for(last, PATIENCE).await.unwrap();
    assert_eq!(state(&handle), ProjectionState::Running);
    assert_eq!(
        handle.status().parked,
        1,
        "the unhandled `Noted` row is skipped"
    );
    assert_eq!(store.checkpoint("totals").await.unwrap(), last);
    assert_eq!(read_totals(&store).await, totals(&[("a", 78, 12)]));

    let parked = store.parked("totals").await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let row = &parked[0];
    assert_eq!(
        (
            row.position,
            row.stream_id.as_str(),
            row.stream_version,
            row.event_type.as_str()
        ),
        (bad, "bad", 1, "Credited")
    );
    assert!(
        row.error.starts_with(&format!(
            "the row at position {bad} (stream `bad` version 1) cannot be read: corrupt event"
        )),
        "{}",
        row.error
    );
    let fixed = TotalsProjection::new(&store, "totals");
    let retried = store.retry_parked(&fixed, bad).await;
    assert!(
        matches!(retried, Err(StoreError::Corrupt { .. })),
        "{retried:?}"
    );
    assert_eq!(store.parked("totals").await.unwrap().len(), 1);

    // It keeps following the log live.
    let more = credit_to(&store, "a", &[13]).await;
    handle.wait_for(more, PATIENCE).await.unwrap();
    assert_eq!(read_totals(&store).await, totals(&[("a", 91, 13)]));
    handle.stop().await;
}
