//! Model checks (shuttle) of the algorithms a lost or doubled event would
//! come from: a subscription's switch from catch-up to live, on the
//! PostgreSQL store and on the memory store, and the projection runner's
//! checkpoint. Each is reproduced on a small abstraction of its store, step
//! for step as implemented, and shuttle searches thread schedules for one
//! where a subscriber or a read model gets an event twice, skips one, or
//! waits forever for one (a lost wake-up shows up as a deadlock).
//!
//! To show the search has teeth, each check also runs on a deliberately
//! broken variant and asserts that the checker reports a failure.
//!
//! What is modelled, from the code:
//! - `evently-postgres/src/subscription.rs`: mark the wake-ups seen, then read a
//!   page below the readable bound; a non-empty page moves the resume
//!   position past its last event; an empty page waits for the next wake-up
//!   (`stalled == 0`) or, once woken with nothing readable, polls again
//!   (`stalled > 0`). The periodic poll (`poll_interval`) is a clock
//!   thread, left out of the scenarios where every event must arrive on
//!   wake-ups alone: there a wake-up the subscriber misses is a deadlock.
//! - PostgreSQL: a transaction takes its positions when it first writes
//!   (`xid8 << 20 | index`) and commits or rolls back later, in any order;
//!   readers see committed events below the oldest running transaction
//!   (`readable_bound()`); an append wakes subscribers after it commits
//!   (`append_in` too: its NOTIFY is sent in the caller's transaction, and
//!   PostgreSQL delivers it at the commit); a rollback wakes nobody.
//!
//! Found and fixed: the memory store could set its published head back
//! (two appends publishing out of order), leaving a subscriber asleep until
//! the next append. Found and left as asserted findings (latency, never a
//! lost event): on PostgreSQL, events committed behind a transaction that
//! rolls back can wait for the periodic poll. Found and fixed: `append_in`
//! woke subscribers when it returned, before the caller's commit, and its
//! events waited for the poll (`NotifyBeforeCommit`, kept as a broken
//! variant the checker must catch).
//! - `evently-memory/src/lib.rs`: an append stores its events under the log's
//!   lock, then publishes the head on a watch channel; a subscriber reads
//!   a page, and when there is none waits until the head reaches its next
//!   position (`watch::Receiver::wait_for`).
//! - `evently-core/src/projection.rs`: a runner loads the checkpoint, subscribes
//!   after it, takes a batch (the next event and whatever is buffered),
//!   handles it on a copy and commits it with the checkpoint moving from the
//!   position it read (`apply_batch(from, to)`, refused as fenced out when
//!   the stored checkpoint moved); on a crash or a fence it starts over
//!   from the stored checkpoint.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use shuttle::sync::{Condvar, Mutex};
use shuttle::thread;

/// Schedules tried per check.
const ITERATIONS: usize = 3_000;
/// Events a subscriber reads at a time: small, so pages split transactions.
const PAGE: usize = 2;

// ---------------------------------------------------------------------------
// PostgreSQL: positions taken at first write, commits in any order.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tx {
    Running,
    Committed,
    RolledBack,
}

struct PgLog {
    state: Mutex<PgState>,
    /// The listener's wake-up counter changed.
    changed: Condvar,
}

#[derive(Default)]
struct PgState {
    /// Transactions in the order they took their ids, with their events.
    txs: Vec<(Tx, Vec<u32>)>,
    /// The wake-up counter subscriptions watch.
    wakeups: u64,
    /// Poll intervals elapsed (the clock thread, where there is one).
    ticks: u64,
    /// The scenario is over: the clock stops.
    done: bool,
}

/// `xid8 << 20 | index`, with the transaction's index as its id.
fn position(tx: usize, index: usize) -> u64 {
    ((tx as u64 + 1) << 20) | index as u64
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum PgVariant {
    /// As implemented.
    AsImplemented,
    /// Broken: readers read every committed event, ignoring the readable
    /// bound (a sequence-like order): a late commit lands behind them.
    NoReadableBound,
    /// Broken: the wake-ups are marked seen after the read, not before.
    MarkAfterRead,
    /// Broken, as `append_in` was: the wake-up is sent when the append
    /// returns, before the caller's transaction commits, and none after.
    NotifyBeforeCommit,
}

impl PgLog {
    fn new() -> Arc<Self> {
        Arc::new(PgLog {
            state: Mutex::new(PgState::default()),
            changed: Condvar::new(),
        })
    }

    /// The append's first write: the transaction gets its id.
    fn begin(&self, events: Vec<u32>) -> usize {
        let mut state = self.state.lock().unwrap();
        state.txs.push((Tx::Running, events));
        state.txs.len() - 1
    }

    fn end(&self, tx: usize, outcome: Tx) {
        self.state.lock().unwrap().txs[tx].0 = outcome;
    }

    fn notify(&self) {
        self.state.lock().unwrap().wakeups += 1;
        self.changed.notify_all();
    }

    fn wakeups(&self) -> u64 {
        self.state.lock().unwrap().wakeups
    }

    /// Waits until the counter differs from `seen`, or the poll interval
    /// elapses (a tick of the clock, where the scenario has one).
    fn wait_changed(&self, seen: u64) {
        let mut state = self.state.lock().unwrap();
        let ticks = state.ticks;
        while state.wakeups == seen && state.ticks == ticks {
            state = self.changed.wait(state).unwrap();
        }
    }

    /// The periodic poll: ticks until the scenario is over.
    fn clock(log: &Arc<Self>) -> thread::JoinHandle<()> {
        let log = Arc::clone(log);
        thread::spawn(move || loop {
            {
                let mut state = log.state.lock().unwrap();
                if state.done {
                    return;
                }
                state.ticks += 1;
            }
            log.changed.notify_all();
            thread::yield_now();
        })
    }

    fn stop_clock(&self, clock: Option<thread::JoinHandle<()>>) {
        self.state.lock().unwrap().done = true;
        if let Some(clock) = clock {
            clock.join().unwrap();
        }
    }

    /// One `read_all` statement: one snapshot.
    fn read(&self, from: u64, limit: usize, bounded: bool) -> Vec<(u64, u32)> {
        let state = self.state.lock().unwrap();
        let bound = if bounded {
            state
                .txs
                .iter()
                .position(|(tx, _)| *tx == Tx::Running)
                .unwrap_or(state.txs.len())
        } else {
            state.txs.len()
        };
        state.txs[..bound]
            .iter()
            .enumerate()
            .filter(|(_, (tx, _))| *tx == Tx::Committed)
            .flat_map(|(t, (_, events))| {
                events
                    .iter()
                    .enumerate()
                    .map(move |(i, &e)| (position(t, i), e))
            })
            .filter(|&(p, _)| p >= from)
            .take(limit)
            .collect()
    }

    /// Every committed event, in position order.
    fn committed(&self) -> Vec<(u64, u32)> {
        self.read(0, usize::MAX, false)
    }

    /// An append of `events` in one transaction, ending with `outcome`.
    fn append(&self, events: Vec<u32>, outcome: Tx, variant: PgVariant) {
        let tx = self.begin(events);
        if variant == PgVariant::NotifyBeforeCommit {
            self.notify();
            self.end(tx, outcome);
        } else {
            self.end(tx, outcome);
            if outcome == Tx::Committed {
                self.notify();
            }
        }
    }
}

/// `evently-postgres/src/subscription.rs`, without the periodic poll.
struct PgSubscription {
    log: Arc<PgLog>,
    variant: PgVariant,
    next: u64,
    buffer: VecDeque<(u64, u32)>,
    stalled: u32,
}

impl PgSubscription {
    fn new(log: Arc<PgLog>, from: u64, variant: PgVariant) -> Self {
        PgSubscription {
            log,
            variant,
            next: from,
            buffer: VecDeque::new(),
            stalled: 0,
        }
    }

    /// The next event, waiting for it.
    fn next(&mut self) -> (u64, u32) {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return event;
            }
            let mut seen = 0;
            if self.variant != PgVariant::MarkAfterRead {
                seen = self.log.wakeups();
            }
            let bounded = self.variant != PgVariant::NoReadableBound;
            let page = self.log.read(self.next, PAGE, bounded);
            if self.variant == PgVariant::MarkAfterRead {
                seen = self.log.wakeups();
            }
            if let Some(&(last, _)) = page.last() {
                self.next = last + 1;
                self.stalled = 0;
                self.buffer.extend(page);
            } else if self.stalled > 0 {
                // Woken, yet nothing readable: an older transaction runs;
                // look again after a short pause.
                thread::yield_now();
                self.stalled += 1;
            } else {
                self.log.wait_changed(seen);
                self.stalled = 1;
            }
        }
    }

    /// An event already buffered (`now_or_never` on the stream: a read is
    /// a round trip, so only the buffer answers at once).
    fn ready(&mut self) -> Option<(u64, u32)> {
        self.buffer.pop_front()
    }
}

/// One event committed before the subscriber starts; then writers at
/// once (with `rollback`, one of them rolls back); the subscriber, from the
/// start, must receive exactly the committed events in position order.
/// Without `poll` there is no periodic poll: a wake-up the subscriber
/// misses leaves it waiting forever, which the checker reports.
fn pg_subscription_scenario(variant: PgVariant, rollback: bool, poll: bool) {
    let log = PgLog::new();
    log.append(vec![1], Tx::Committed, variant);
    let clock = poll.then(|| PgLog::clock(&log));
    let second = if rollback {
        Tx::RolledBack
    } else {
        Tx::Committed
    };
    let plan = [
        (vec![2, 3], Tx::Committed),
        (vec![4], second),
        (vec![5], Tx::Committed),
        (vec![6], Tx::Committed),
    ];
    let total = 1 + plan
        .iter()
        .filter(|(_, outcome)| *outcome == Tx::Committed)
        .map(|(events, _)| events.len())
        .sum::<usize>();
    let writers: Vec<_> = plan
        .into_iter()
        .map(|(events, outcome)| {
            let log = Arc::clone(&log);
            thread::spawn(move || log.append(events, outcome, variant))
        })
        .collect();
    let subscriber = {
        let log = Arc::clone(&log);
        thread::spawn(move || {
            let mut subscription = PgSubscription::new(log, 0, variant);
            (0..total).map(|_| subscription.next()).collect::<Vec<_>>()
        })
    };
    for writer in writers {
        writer.join().unwrap();
    }
    let received = subscriber.join().unwrap();
    log.stop_clock(clock);
    assert_eq!(
        received,
        log.committed(),
        "the subscriber receives every committed event once, in order"
    );
}

// ---------------------------------------------------------------------------
// Memory: appends under one lock, the head published after it.

#[derive(Clone, Copy, PartialEq, Debug)]
enum MemVariant {
    /// As implemented before the fix: the head is set to what this append
    /// saw, even if a later append already published a higher one.
    HeadSetToOwn,
    /// As implemented now: the head only moves forward.
    HeadOnlyForward,
}

struct MemLog {
    events: Mutex<Vec<u32>>,
    head: Mutex<u64>,
    head_changed: Condvar,
    variant: MemVariant,
}

impl MemLog {
    fn append(&self, new: &[u32]) {
        let head = {
            let mut events = self.events.lock().unwrap();
            events.extend_from_slice(new);
            events.len() as u64
        };
        // `send_if_modified`, after the log's lock is released.
        let mut published = self.head.lock().unwrap();
        let moved = match self.variant {
            MemVariant::HeadSetToOwn => *published != head,
            MemVariant::HeadOnlyForward => head > *published,
        };
        if moved {
            *published = head;
            self.head_changed.notify_all();
        }
    }

    fn read(&self, from: u64, limit: usize) -> Vec<(u64, u32)> {
        let events = self.events.lock().unwrap();
        let start = from.max(1) as usize - 1;
        events
            .iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .map(|(i, &e)| (i as u64 + 1, e))
            .collect()
    }

    /// `watch::Receiver::wait_for(|head| *head >= next)`.
    fn wait_for_head(&self, next: u64) {
        let mut head = self.head.lock().unwrap();
        while *head < next {
            head = self.head_changed.wait(head).unwrap();
        }
    }
}

fn mem_subscription_scenario(variant: MemVariant) {
    let log = Arc::new(MemLog {
        events: Mutex::new(Vec::new()),
        head: Mutex::new(0),
        head_changed: Condvar::new(),
        variant,
    });
    log.append(&[1]);
    let writers: Vec<_> = [vec![2, 3], vec![4], vec![5]]
        .into_iter()
        .map(|events| {
            let log = Arc::clone(&log);
            thread::spawn(move || log.append(&events))
        })
        .collect();
    let subscriber = {
        let log = Arc::clone(&log);
        thread::spawn(move || {
            // `MemoryStore::subscribe`.
            let mut next = 1;
            let mut buffer = VecDeque::new();
            let mut received = Vec::new();
            while received.len() < 5 {
                if let Some(event) = buffer.pop_front() {
                    received.push(event);
                    continue;
                }
                let page = log.read(next, PAGE);
                if let Some(&(last, _)) = page.last() {
                    next = last + 1;
                    buffer.extend(page);
                    continue;
                }
                log.wait_for_head(next);
            }
            received
        })
    };
    for writer in writers {
        writer.join().unwrap();
    }
    let received = subscriber.join().unwrap();
    assert_eq!(received, log.read(1, usize::MAX));
}

// ---------------------------------------------------------------------------
// The projection runner's checkpoint, over the PostgreSQL model.

#[derive(Clone, Copy, PartialEq, Debug)]
enum RunnerVariant {
    /// As implemented: `apply_batch` moves the checkpoint only from the
    /// position the runner read.
    AsImplemented,
    /// Broken: the batch is applied whatever the stored checkpoint is.
    NoFence,
}

/// The read model and its checkpoint, committed together.
#[derive(Default)]
struct Target {
    applied: Vec<u32>,
    checkpoint: u64,
}

/// `Runner::follow`, restarted from the stored checkpoint after a fence or
/// a crash, until the read model holds `total` events.
fn runner(
    log: Arc<PgLog>,
    target: Arc<Mutex<Target>>,
    total: usize,
    batch_size: usize,
    crash_after: Option<usize>,
    variant: RunnerVariant,
) {
    let mut batches = 0;
    'restart: loop {
        let mut checkpoint = {
            let target = target.lock().unwrap();
            if target.applied.len() >= total {
                return;
            }
            target.checkpoint
        };
        let mut subscription =
            PgSubscription::new(Arc::clone(&log), checkpoint + 1, PgVariant::AsImplemented);
        loop {
            if target.lock().unwrap().applied.len() >= total {
                return;
            }
            let mut batch = vec![subscription.next()];
            while batch.len() < batch_size {
                match subscription.ready() {
                    Some(event) => batch.push(event),
                    None => break,
                }
            }
            // The handlers write into the batch's transaction (a copy).
            let mut written = Vec::new();
            for &(_, event) in &batch {
                written.push(event);
                thread::yield_now();
            }
            batches += 1;
            if crash_after == Some(batches) {
                // Aborted mid-batch: the transaction rolls back.
                continue 'restart;
            }
            let last = batch.last().unwrap().0;
            let mut stored = target.lock().unwrap();
            if variant == RunnerVariant::AsImplemented && stored.checkpoint != checkpoint {
                // Fenced out: another instance moved the checkpoint.
                continue 'restart;
            }
            stored.applied.extend(written);
            stored.checkpoint = last;
            checkpoint = last;
        }
    }
}

/// Writers append while two runner instances of one projection run at once
/// (a lease lost while the old holder still works), one of them crashing
/// mid-batch and starting over: the read model holds every committed event
/// once, in log order.
fn projection_scenario(variant: RunnerVariant) {
    let log = PgLog::new();
    log.append(vec![1, 2], Tx::Committed, PgVariant::AsImplemented);
    let writers: Vec<_> = [
        (vec![3], Tx::Committed),
        (vec![4], Tx::RolledBack),
        (vec![5, 6], Tx::Committed),
    ]
    .into_iter()
    .map(|(events, outcome)| {
        let log = Arc::clone(&log);
        thread::spawn(move || log.append(events, outcome, PgVariant::AsImplemented))
    })
    .collect();
    // A rolled-back transaction wakes nobody: the runners' subscriptions
    // rely on the periodic poll for what committed behind it.
    let clock = Some(PgLog::clock(&log));
    let target = Arc::new(Mutex::new(Target::default()));
    let runners: Vec<_> = [(2, Some(1)), (3, None)]
        .into_iter()
        .map(|(batch_size, crash_after)| {
            let (log, target) = (Arc::clone(&log), Arc::clone(&target));
            thread::spawn(move || runner(log, target, 5, batch_size, crash_after, variant))
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    for runner in runners {
        runner.join().unwrap();
    }
    log.stop_clock(clock);
    let committed: Vec<u32> = log.committed().into_iter().map(|(_, e)| e).collect();
    let target = target.lock().unwrap();
    assert_eq!(
        target.applied, committed,
        "the read model holds every committed event once, in order"
    );
    assert_eq!(target.checkpoint, log.committed().last().unwrap().0);
}

// ---------------------------------------------------------------------------

/// Runs the check and tells whether the checker found a failing schedule.
fn finds_a_failure(check: impl Fn() + Send + Sync + 'static) -> bool {
    // Shuttle prints the failing schedule; the panic is the verdict here.
    catch_unwind(AssertUnwindSafe(|| {
        shuttle::check_random(check, ITERATIONS)
    }))
    .is_err()
}

/// Commits only, no periodic poll: every committed event arrives once, in
/// order, on wake-ups alone.
#[test]
fn pg_subscription_delivers_every_committed_event_once_in_order() {
    shuttle::check_random(
        || pg_subscription_scenario(PgVariant::AsImplemented, false, false),
        ITERATIONS,
    );
}

/// A rolled-back transaction among the writers, with the periodic poll.
#[test]
fn pg_subscription_passes_a_rolled_back_transaction() {
    shuttle::check_random(
        || pg_subscription_scenario(PgVariant::AsImplemented, true, true),
        ITERATIONS,
    );
}

/// `append_in` as implemented (its NOTIFY delivered at the caller's
/// commit) is the same as any append: every event arrives on wake-ups
/// alone. And as it was (woken before the commit), the poll still
/// delivered everything, only late.
#[test]
fn pg_subscription_follows_appends_in_callers_transactions() {
    shuttle::check_random(
        || pg_subscription_scenario(PgVariant::AsImplemented, false, false),
        ITERATIONS,
    );
    shuttle::check_random(
        || pg_subscription_scenario(PgVariant::NotifyBeforeCommit, true, true),
        ITERATIONS,
    );
}

#[test]
fn the_checker_finds_a_reader_that_ignores_the_readable_bound() {
    assert!(finds_a_failure(|| pg_subscription_scenario(
        PgVariant::NoReadableBound,
        false,
        false
    )));
}

#[test]
fn the_checker_finds_wakeups_marked_after_the_read() {
    assert!(finds_a_failure(|| pg_subscription_scenario(
        PgVariant::MarkAfterRead,
        false,
        false
    )));
}

/// A finding, not a loss: a rolled-back transaction wakes nobody, so events
/// committed behind it, whose wake-up the subscriber consumed while the
/// rollback was pending, wait for the periodic poll (`poll_interval`).
#[test]
fn a_rollback_leaves_the_events_behind_it_to_the_poll() {
    assert!(finds_a_failure(|| pg_subscription_scenario(
        PgVariant::AsImplemented,
        true,
        false
    )));
}

/// Fixed: `append_in` woke subscribers before the caller committed and
/// never after, so its events waited for the periodic poll; the checker
/// finds that on wake-ups alone (evently-postgres/tests/wakeups.rs checks the
/// real store).
#[test]
fn the_checker_finds_append_in_waking_before_the_commit() {
    assert!(finds_a_failure(|| pg_subscription_scenario(
        PgVariant::NotifyBeforeCommit,
        false,
        false
    )));
}

#[test]
fn memory_subscription_delivers_every_event_once_in_order() {
    shuttle::check_random(
        || mem_subscription_scenario(MemVariant::HeadOnlyForward),
        ITERATIONS,
    );
}

/// The memory store as it was: two appends publishing their heads out of
/// order set the head back, and a subscriber waiting for the newer event
/// sleeps until some later append.
#[test]
fn the_checker_finds_a_head_that_moves_back() {
    assert!(finds_a_failure(|| mem_subscription_scenario(
        MemVariant::HeadSetToOwn
    )));
}

#[test]
fn projection_checkpoint_applies_every_event_once_in_order() {
    shuttle::check_random(
        || projection_scenario(RunnerVariant::AsImplemented),
        ITERATIONS,
    );
}

#[test]
fn the_checker_finds_a_batch_applied_without_the_fence() {
    assert!(finds_a_failure(|| projection_scenario(
        RunnerVariant::NoFence
    )));
}
