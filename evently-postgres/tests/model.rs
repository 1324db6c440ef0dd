//! A randomised model test: random sequences of appends (right and wrong
//! expectations), atomic appends, bursts of concurrent appends at one
//! version and — on PostgreSQL — transactions that commit late, roll back,
//! or lose their connection, run against a store while live subscribers
//! follow the log. The outcome is compared with a simple model (the
//! committed events of each stream): every subscriber receives exactly what
//! committed from its start on, in the one global order, each once.
//!
//! The same generic code runs on the memory store (there a "transaction" is
//! an append held back until its commit) and on PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Payload, RecordedEvent, StoreError,
    StreamAppend, StreamId,
};
use evently_memory::MemoryStore;
use evently_postgres::sqlx::{self, Connection, PgConnection};
use evently_postgres::PgEventStore;
use futures::StreamExt;
use proptest::prelude::*;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Shared streams that plain, atomic and burst appends use.
const STREAMS: u8 = 3;

/// The longest a subscriber may take to deliver what committed.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    /// `Exact` of the stream's version: accepted.
    Right,
    /// `Exact` of another version: refused, nothing written.
    Wrong,
}

#[derive(Debug, Clone)]
enum Op {
    /// One append to a shared stream.
    Append { stream: u8, expect: Expect, n: u8 },
    /// An atomic append to two shared streams; stored only if both
    /// expectations hold.
    Atomic {
        a: u8,
        b: u8,
        right_a: bool,
        right_b: bool,
    },
    /// `tasks` concurrent appends at the stream's version: one wins.
    Burst { stream: u8, tasks: u8 },
    /// Opens a transaction that appends `n` events to a stream of its own
    /// and stays open (PostgreSQL: uncommitted, holding readers back).
    Begin { n: u8 },
    /// Commits one of the open transactions (chosen by index modulo).
    Commit { which: u8 },
    /// Rolls one back.
    Rollback { which: u8 },
    /// Its connection is terminated by the server (`pg_terminate_backend`).
    Kill { which: u8 },
    /// Its connection is dropped by the client.
    Drop { which: u8 },
    /// Starts a subscriber from the position after the current head.
    Subscribe,
}

fn op() -> impl Strategy<Value = Op> {
    let stream = 0..STREAMS;
    let expect = prop_oneof![Just(Expect::Any), Just(Expect::Right), Just(Expect::Wrong)];
    prop_oneof![
        4 => (stream.clone(), expect, 1..4u8).prop_map(|(stream, expect, n)| Op::Append { stream, expect, n }),
        2 => (stream.clone(), 1..STREAMS, any::<bool>(), any::<bool>()).prop_map(|(a, d, right_a, right_b)| Op::Atomic {
            a,
            b: (a + d) % STREAMS,
            right_a,
            right_b,
        }),
        2 => (stream, 2..6u8).prop_map(|(stream, tasks)| Op::Burst { stream, tasks }),
        2 => (1..4u8).prop_map(|n| Op::Begin { n }),
        1 => any::<u8>().prop_map(|which| Op::Commit { which }),
        1 => any::<u8>().prop_map(|which| Op::Rollback { which }),
        1 => any::<u8>().prop_map(|which| Op::Kill { which }),
        1 => any::<u8>().prop_map(|which| Op::Drop { which }),
        1 => Just(Op::Subscribe),
    ]
}

/// An open transaction.
struct Pending {
    stream: StreamId,
    events: Vec<NewEvent>,
    /// PostgreSQL: the connection whose transaction holds the append, and
    /// its backend's pid. Memory: nothing is written before the commit.
    conn: Option<(PgConnection, i32)>,
}

/// What the generic driver needs beyond `EventStore`: transactions.
trait Transactions {
    /// Opens a transaction that appends `events` to `stream`.
    async fn begin(&self, stream: StreamId, events: Vec<NewEvent>) -> Pending;
    /// Commits it: returns the events now stored.
    async fn commit(&self, pending: Pending) -> Vec<NewEvent>;
    /// Ends it without storing anything; `how` says how.
    async fn abort(&self, pending: Pending, how: Abort);
}

#[derive(Debug, Clone, Copy)]
enum Abort {
    Rollback,
    Kill,
    Drop,
}

impl Transactions for MemoryStore {
    async fn begin(&self, stream: StreamId, events: Vec<NewEvent>) -> Pending {
        Pending {
            stream,
            events,
            conn: None,
        }
    }

    async fn commit(&self, pending: Pending) -> Vec<NewEvent> {
        self.append(
            &pending.stream,
            ExpectedVersion::NoStream,
            pending.events.clone(),
        )
        .await
        .expect("commit");
        pending.events
    }

    async fn abort(&self, _pending: Pending, _how: Abort) {}
}

impl Transactions for PgEventStore {
    async fn begin(&self, stream: StreamId, events: Vec<NewEvent>) -> Pending {
        let mut conn = PgConnection::connect(&common::database_url())
            .await
            .expect("a connection for a transaction");
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("pid");
        sqlx::query("BEGIN")
            .execute(&mut conn)
            .await
            .expect("BEGIN");
        self.append_in(
            &mut conn,
            &stream,
            ExpectedVersion::NoStream,
            events.clone(),
        )
        .await
        .expect("append_in");
        Pending {
            stream,
            events,
            conn: Some((conn, pid)),
        }
    }

    async fn commit(&self, pending: Pending) -> Vec<NewEvent> {
        let (mut conn, _) = pending.conn.expect("a PostgreSQL transaction");
        sqlx::query("COMMIT")
            .execute(&mut conn)
            .await
            .expect("COMMIT");
        conn.close().await.expect("close");
        pending.events
    }

    async fn abort(&self, pending: Pending, how: Abort) {
        let (mut conn, pid) = pending.conn.expect("a PostgreSQL transaction");
        match how {
            Abort::Rollback => {
                sqlx::query("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("ROLLBACK");
                conn.close().await.expect("close");
            }
            Abort::Kill => {
                let mut control = common::control_connection().await;
                let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .fetch_one(&mut control)
                    .await
                    .expect("pg_terminate_backend");
                assert!(killed, "the transaction's backend is terminated");
                // The client learns of it at its next use.
                let after = sqlx::query("SELECT 1").execute(&mut conn).await;
                assert!(after.is_err(), "a terminated session cannot run a query");
                drop(conn);
            }
            Abort::Drop => drop(conn),
        }
    }
}

fn new_event(n: u64) -> NewEvent {
    NewEvent::raw(
        "Modelled",
        1,
        Payload::from_value(&serde_json::json!({ "n": n })),
        Metadata::new(),
    )
}

/// The model: each stream's committed event ids, in stream order.
#[derive(Default)]
struct Model {
    streams: BTreeMap<StreamId, Vec<Uuid>>,
}

impl Model {
    fn version(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(0, Vec::len) as u64
    }

    fn commit(&mut self, stream: &StreamId, events: &[NewEvent]) {
        self.streams
            .entry(stream.clone())
            .or_default()
            .extend(events.iter().map(|e| e.event_id));
    }

    fn count(&self) -> usize {
        self.streams.values().map(Vec::len).sum()
    }
}

/// A subscriber running in a task of its own, forwarding what it receives.
struct Subscriber {
    from: u64,
    received: mpsc::UnboundedReceiver<Result<RecordedEvent, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

fn start_subscriber<S: EventStore>(store: &S, from: u64) -> Subscriber {
    let (tx, received) = mpsc::unbounded_channel();
    let mut subscription = store.subscribe(from);
    let task = tokio::spawn(async move {
        while let Some(item) = subscription.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    Subscriber {
        from,
        received,
        task,
    }
}

impl Subscriber {
    async fn receive(&mut self, count: usize, what: &str) -> Vec<RecordedEvent> {
        let mut got = Vec::with_capacity(count);
        let outcome = tokio::time::timeout(PATIENCE, async {
            while got.len() < count {
                match self.received.recv().await {
                    Some(Ok(event)) => got.push(event),
                    Some(Err(error)) => panic!("{what}: the subscription failed: {error}"),
                    None => panic!("{what}: the subscription ended"),
                }
            }
        })
        .await;
        assert!(
            outcome.is_ok(),
            "{what}: received {} of {count} events within {PATIENCE:?}: {:?}",
            got.len(),
            got.iter().map(|e| e.global_position).collect::<Vec<_>>()
        );
        got
    }
}

async fn whole_log<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    let mut log = Vec::new();
    let mut from = 0;
    loop {
        let page = store.read_all(from, 100).await.expect("read_all");
        let Some(last) = page.last() else { break };
        from = last.global_position + 1;
        log.extend(page);
    }
    log
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

/// Runs `ops` against `store` and checks the store, the log and every
/// subscriber against the model.
///
/// `reader` is a handle on the same log that never appends (`head_position`
/// on a handle waits, bounded, for its own appends to become readable, and
/// an open transaction holds them back on purpose); `transactions` opens
/// the transactions.
async fn run_case<S: EventStore, T: Transactions>(
    store: S,
    reader: S,
    transactions: T,
    ops: Vec<Op>,
) {
    let shared = |i: u8| StreamId::new(format!("shared-{i}"));
    let mut model = Model::default();
    let mut open: Vec<Pending> = Vec::new();
    let mut counter = 0u64;
    let mut fresh = |n: u8| -> Vec<NewEvent> {
        (0..n)
            .map(|_| {
                counter += 1;
                new_event(counter)
            })
            .collect()
    };
    let mut begun = 0;
    let mut subscribers = vec![start_subscriber(&store, 0)];

    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { stream, expect, n } => {
                let stream = shared(stream);
                let version = model.version(&stream);
                let events = fresh(n);
                let expected = match expect {
                    Expect::Any => ExpectedVersion::Any,
                    Expect::Right => ExpectedVersion::Exact(version),
                    Expect::Wrong => ExpectedVersion::Exact(version + 1 + step as u64 % 3),
                };
                let result = store.append(&stream, expected, events.clone()).await;
                match expect {
                    Expect::Wrong => match result {
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                            assert_eq!(
                                actual, version,
                                "step {step}: the conflict names the version"
                            )
                        }
                        other => panic!("step {step}: expected a conflict, got {other:?}"),
                    },
                    _ => {
                        let recorded = result.unwrap_or_else(|e| panic!("step {step}: {e}"));
                        assert_eq!(
                            recorded
                                .iter()
                                .map(|e| e.stream_version)
                                .collect::<Vec<_>>(),
                            (version + 1..=version + n as u64).collect::<Vec<_>>()
                        );
                        model.commit(&stream, &events);
                    }
                }
            }
            Op::Atomic {
                a,
                b,
                right_a,
                right_b,
            } => {
                let (a, b) = (shared(a), shared(b));
                let (va, vb) = (model.version(&a), model.version(&b));
                let expectation =
                    |v: u64, right: bool| ExpectedVersion::Exact(if right { v } else { v + 2 });
                let (ea, eb) = (fresh(1), fresh(2));
                let result = store
                    .append_atomic(vec![
                        StreamAppend::new(a.clone(), expectation(va, right_a), ea.clone()),
                        StreamAppend::new(b.clone(), expectation(vb, right_b), eb.clone()),
                    ])
                    .await;
                if right_a && right_b {
                    result.unwrap_or_else(|e| panic!("step {step}: {e}"));
                    model.commit(&a, &ea);
                    model.commit(&b, &eb);
                } else {
                    assert!(
                        matches!(result, Err(StoreError::WrongExpectedVersion { .. })),
                        "step {step}: expected a conflict, got {result:?}"
                    );
                }
            }
            Op::Burst { stream, tasks } => {
                let stream = shared(stream);
                let version = model.version(&stream);
                let mut running = Vec::new();
                for _ in 0..tasks {
                    let store = store.clone();
                    let stream = stream.clone();
                    let events = fresh(1);
                    running.push(tokio::spawn(async move {
                        let result = store
                            .append(&stream, ExpectedVersion::Exact(version), events.clone())
                            .await;
                        (events, result)
                    }));
                }
                let mut winners = Vec::new();
                for task in running {
                    match task.await.expect("burst task") {
                        (events, Ok(_)) => winners.push(events),
                        (_, Err(StoreError::WrongExpectedVersion { actual, .. })) => {
                            assert_eq!(
                                actual,
                                version + 1,
                                "step {step}: the conflict names the winner's version"
                            )
                        }
                        (_, Err(other)) => panic!("step {step}: {other}"),
                    }
                }
                assert_eq!(
                    winners.len(),
                    1,
                    "step {step}: exactly one append of a burst wins"
                );
                model.commit(&stream, &winners[0]);
            }
            Op::Begin { n } => {
                begun += 1;
                let stream = StreamId::new(format!("tx-{begun}"));
                open.push(transactions.begin(stream, fresh(n)).await);
            }
            Op::Commit { which } if !open.is_empty() => {
                let pending = open.remove(which as usize % open.len());
                let stream = pending.stream.clone();
                let events = transactions.commit(pending).await;
                model.commit(&stream, &events);
            }
            Op::Rollback { which } | Op::Kill { which } | Op::Drop { which }
                if !open.is_empty() =>
            {
                let how = match op {
                    Op::Rollback { .. } => Abort::Rollback,
                    Op::Kill { .. } => Abort::Kill,
                    _ => Abort::Drop,
                };
                let pending = open.remove(which as usize % open.len());
                transactions.abort(pending, how).await;
            }
            Op::Commit { .. } | Op::Rollback { .. } | Op::Kill { .. } | Op::Drop { .. } => {}
            Op::Subscribe => {
                let head = reader.head_position().await.expect("head_position");
                subscribers.push(start_subscriber(&store, head + 1));
            }
        }
    }
    // Transactions still open end: alternately committed and rolled back.
    for (i, pending) in open.into_iter().enumerate() {
        if i % 2 == 0 {
            let stream = pending.stream.clone();
            let events = transactions.commit(pending).await;
            model.commit(&stream, &events);
        } else {
            transactions.abort(pending, Abort::Rollback).await;
        }
    }
    // The store holds what the model committed.
    for (stream, expected) in &model.streams {
        let stored = store
            .read_stream(stream, 1, usize::MAX)
            .await
            .expect("read_stream");
        assert_eq!(
            &ids(&stored),
            expected,
            "stream {stream} holds what committed"
        );
        assert!(stored
            .iter()
            .enumerate()
            .all(|(i, e)| e.stream_version == i as u64 + 1));
    }
    let log = whole_log(&store).await;
    assert_eq!(
        log.len(),
        model.count(),
        "the log holds what committed, nothing else"
    );
    assert!(
        log.windows(2)
            .all(|w| w[0].global_position < w[1].global_position),
        "positions increase"
    );
    for (stream, expected) in &model.streams {
        let in_log: Vec<Uuid> = log
            .iter()
            .filter(|e| e.stream_id == *stream)
            .map(|e| e.event_id)
            .collect();
        assert_eq!(&in_log, expected, "the log keeps stream {stream}'s order");
    }

    // Every subscriber: exactly the committed events from its start on, in
    // log order, each once — and nothing else: the next event after them is
    // one appended now.
    let mut expected_per_subscriber = Vec::new();
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let expected: Vec<Uuid> = log
            .iter()
            .filter(|e| e.global_position >= subscriber.from)
            .map(|e| e.event_id)
            .collect();
        let got = subscriber
            .receive(
                expected.len(),
                &format!("subscriber {i} from {}", subscriber.from),
            )
            .await;
        assert_eq!(
            ids(&got),
            expected,
            "subscriber {i} from {} receives the log",
            subscriber.from
        );
        expected_per_subscriber.push(expected.len());
    }
    let sentinel = store
        .append(
            &StreamId::from("sentinel"),
            ExpectedVersion::NoStream,
            fresh(1),
        )
        .await
        .expect("sentinel");
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let next = subscriber
            .receive(1, &format!("subscriber {i}, after the log"))
            .await;
        assert_eq!(
            next[0].event_id, sentinel[0].event_id,
            "subscriber {i}: nothing after the log but the next append"
        );
        subscriber.task.abort();
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let store = MemoryStore::new();
        runtime().block_on(run_case(store.clone(), store.clone(), store, ops));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn postgres_store_matches_the_model(ops in proptest::collection::vec(op(), 1..32)) {
        runtime().block_on(async {
            // Small pages, so the subscribers' catch-up crosses pages.
            let store = common::store_builder(PgEventStore::builder().subscription_page(4)).await;
            // Transactions append through a second handle: a handle waits
            // (bounded) for its own appends before it reads, and these stay
            // uncommitted for a while on purpose.
            let transactions = common::second_handle(&store).await;
            let reader = common::second_handle(&store).await;
            run_case(store, reader, transactions, ops).await;
        });
    }
}
