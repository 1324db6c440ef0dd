//! The workloads, through the framework: `Repository` over evently-memory (W1) or
//! evently-postgres (W2–W7), and the PostgreSQL projection runner (W6). Each run
//! works in a fresh schema (`es_bench_w2`, …) and checks its result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use evently::projection::{HandlerError, Projection, ProjectionOptions};
use evently::{
    Aggregate, CommandContext, CommandError, EventStore, ExpectedVersion, NewEvent, RecordedEvent,
    Repository, RetryPolicy, StreamId,
};
use evently_memory::MemoryStore;
use evently_postgres::sqlx::{self, Executor, PgConnection};
use evently_postgres::PgEventStore;

use crate::domain::{amount, Account, AccountCommand, AccountEvent};
use crate::floors::{catch_up_event, expected_balance, with_windows};
use crate::report::{round, Measurement};
use crate::support::{
    fresh_store, peak_rss_kib, reset_peak_rss, rss_kib, vacuum, with_cache, BoxError, Setup,
};

/// Capacity of the live-aggregate cache (more than any workload's accounts).
const CACHE_CAPACITY: usize = 1_024;

fn open(id: &str) -> AccountCommand {
    AccountCommand::Open {
        id: id.to_owned(),
        owner: format!("owner of {id}"),
    }
}

fn deposit(id: &str, amount: u64) -> AccountCommand {
    AccountCommand::Deposit {
        id: id.to_owned(),
        amount,
    }
}

/// Checks an account's stored state with an uncached repository.
async fn check_account(
    store: &PgEventStore,
    id: &str,
    version: u64,
    balance: u64,
) -> Result<(), BoxError> {
    let loaded = Repository::<Account, _>::new(store.clone())
        .load(id)
        .await?;
    if loaded.version != version || loaded.state.balance != balance {
        return Err(format!(
            "account {id}: stored version {} and balance {}, expected {version} and {balance}",
            loaded.version, loaded.state.balance
        )
        .into());
    }
    Ok(())
}

/// W1: `accounts` × (open + `deposits` deposits) on evently-memory, one task
/// (without the cache unless `cache`).
pub async fn w1(accounts: usize, deposits: usize, cache: bool) -> Result<Measurement, BoxError> {
    let store = MemoryStore::new();
    let repository = with_cache(
        Repository::<Account, _>::new(store.clone()),
        CACHE_CAPACITY,
        cache,
    );
    let started = Instant::now();
    for a in 0..accounts {
        let id = format!("bench-{a}");
        repository.execute(open(&id)).await?;
        for d in 0..deposits {
            repository.execute(deposit(&id, amount(d))).await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = (accounts * (1 + deposits)) as u64;
    if store.event_count() as u64 != ops {
        return Err(format!("W1: {} events for {ops} commands", store.event_count()).into());
    }
    Ok(Measurement::new("W1", "memory", ops, seconds).with("cache", cache))
}

/// W2: `deposits` deposits to one account, one after the other, pool 1;
/// the latency of every command is kept for the first and last 100.
pub async fn w2(url: &str, deposits: usize, setup: Setup) -> Result<Measurement, BoxError> {
    let store = fresh_store(url, "es_bench_w2", 1, setup).await?;
    let repository = with_cache(
        Repository::<Account, _>::new(store.clone()),
        CACHE_CAPACITY,
        setup.cache,
    );
    repository.execute(open("w2")).await?;
    let mut latencies = Vec::with_capacity(deposits);
    let started = Instant::now();
    for d in 0..deposits {
        let t = Instant::now();
        repository.execute(deposit("w2", amount(d))).await?;
        latencies.push(t.elapsed().as_secs_f64());
    }
    let seconds = started.elapsed().as_secs_f64();
    let expected: u64 = (0..deposits).map(amount).sum();
    check_account(&store, "w2", 1 + deposits as u64, expected).await?;
    store.pool().close().await;
    Ok(with_windows(
        setup
            .describe(Measurement::new("W2", "postgres", deposits as u64, seconds).with("pool", 1)),
        &latencies,
    ))
}

/// W3 and W7: `accounts` accounts opened first (untimed), then `deposits`
/// deposits to each from `tasks` tasks (task `t` owns the accounts
/// `a % tasks == t` and goes round robin over them), on a pool of `pool`.
#[allow(clippy::too_many_arguments)]
pub async fn concurrent(
    url: &str,
    name: &str,
    schema: &str,
    accounts: usize,
    deposits: usize,
    tasks: usize,
    pool: u32,
    setup: Setup,
) -> Result<Measurement, BoxError> {
    let store = fresh_store(url, schema, pool, setup).await?;
    let repository = Arc::new(with_cache(
        Repository::<Account, _>::new(store.clone()),
        CACHE_CAPACITY,
        setup.cache,
    ));
    for a in 0..accounts {
        repository.execute(open(&format!("{name}-{a}"))).await?;
    }
    let rss_before = rss_kib();
    let reset = reset_peak_rss();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let repository = Arc::clone(&repository);
        let mine: Vec<String> = (task..accounts)
            .step_by(tasks)
            .map(|a| format!("{name}-{a}"))
            .collect();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for d in 0..deposits {
                for id in &mine {
                    let outcome = repository.execute(deposit(id, amount(d))).await?;
                    conflicts += u64::from(outcome.attempts - 1);
                }
            }
            Ok::<_, BoxError>(conflicts)
        }));
    }
    let mut conflicts = 0;
    for handle in handles {
        conflicts += handle.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    let expected: u64 = (0..deposits).map(amount).sum();
    for a in 0..accounts {
        check_account(
            &store,
            &format!("{name}-{a}"),
            1 + deposits as u64,
            expected,
        )
        .await?;
    }
    store.pool().close().await;
    Ok(setup
        .describe(Measurement::new(
            name,
            "postgres",
            (accounts * deposits) as u64,
            seconds,
        ))
        .with("tasks", tasks)
        .with("pool", pool)
        .with("accounts", accounts)
        .with("conflicts", conflicts)
        .with("rss_before_kib", rss_before)
        .with("peak_rss_kib", if reset { peak } else { 0 }))
}

/// The events of W4's stream (and F3's): opened, then deposits.
fn w4_event(version: usize) -> AccountEvent {
    if version == 1 {
        AccountEvent::Opened {
            owner: "Owner".into(),
        }
    } else {
        AccountEvent::Deposited {
            amount: amount(version),
        }
    }
}

/// W4: an account of `events` events loaded `loads` times by replaying
/// every event, then `snapshot_loads` times from a snapshot taken at its
/// last event. One untimed warm-up load before each.
pub async fn w4(
    url: &str,
    events: usize,
    loads: usize,
    snapshot_loads: usize,
) -> Result<Vec<Measurement>, BoxError> {
    let store = fresh_store(url, "es_bench_w4", 1, Setup::STORE_DEFAULTS).await?;
    let stream = Account::stream_id("w4");
    let mut version = 0usize;
    while version + 1 < events {
        let to = (version + 1_000).min(events - 1);
        let batch = (version + 1..=to)
            .map(|v| NewEvent::from_event(&w4_event(v), CommandContext::new().event_metadata()))
            .collect::<Result<Vec<_>, _>>()?;
        store
            .append(&stream, ExpectedVersion::at(version as u64), batch)
            .await?;
        version = to;
    }
    // The last event through a repository that snapshots at `events`.
    let snapshotting = Repository::<Account, _>::new(store.clone())
        .with_snapshots(evently::Snapshots::every(events as u64));
    let last = snapshotting.execute(deposit("w4", amount(events))).await?;
    if last.version != events as u64 {
        return Err(format!("W4: the stream is at {}, not {events}", last.version).into());
    }
    // The first load right after the bulk append, before VACUUM and
    // ANALYZE (peers measured 220–460 ms for theirs).
    let replaying = Repository::<Account, _>::new(store.clone());
    let started = Instant::now();
    check_w4(&replaying.load("w4").await?, events, events as u64)?;
    let first_load_ms = started.elapsed().as_secs_f64() * 1e3;
    vacuum(store.pool(), "es_bench_w4.events").await?;

    check_w4(&replaying.load("w4").await?, events, events as u64)?;
    let started = Instant::now();
    for _ in 0..loads {
        check_w4(&replaying.load("w4").await?, events, events as u64)?;
    }
    let full = started.elapsed().as_secs_f64();

    check_w4(&snapshotting.load("w4").await?, events, 0)?;
    let started = Instant::now();
    for _ in 0..snapshot_loads {
        check_w4(&snapshotting.load("w4").await?, events, 0)?;
    }
    let from_snapshot = started.elapsed().as_secs_f64();
    store.pool().close().await;
    Ok(vec![
        Measurement::new("W4", "postgres", (events * loads) as u64, full)
            .with("events", events)
            .with("loads", loads)
            .with("ms_per_load", round(full * 1e3 / loads as f64, 3))
            .with("first_load_ms", round(first_load_ms, 3)),
        Measurement::new(
            "W4-snapshot",
            "postgres",
            snapshot_loads as u64,
            from_snapshot,
        )
        .with("events", events)
        .with("loads", snapshot_loads)
        .with(
            "ms_per_load",
            round(from_snapshot * 1e3 / snapshot_loads as f64, 4),
        ),
    ])
}

/// Checks a load of W4's account: its version, balance and how many events
/// were replayed.
fn check_w4(
    loaded: &evently::Loaded<Account>,
    events: usize,
    replayed: u64,
) -> Result<(), BoxError> {
    if loaded.version != events as u64
        || loaded.state.balance != expected_balance(events)
        || loaded.replayed != replayed
    {
        return Err(format!(
            "W4: loaded version {}, balance {}, {} replayed; expected {events}, {}, {replayed}",
            loaded.version,
            loaded.state.balance,
            loaded.replayed,
            expected_balance(events)
        )
        .into());
    }
    Ok(())
}

/// W5: `tasks` tasks × `deposits` deposits into one account, pool 1, with
/// retries on conflict (up to 100,000 attempts per command). Counts the
/// conflicts and checks that the balance is the sum of accepted deposits.
pub async fn w5(
    url: &str,
    tasks: usize,
    deposits: usize,
    setup: Setup,
) -> Result<Measurement, BoxError> {
    let store = fresh_store(url, "es_bench_w5", 1, setup).await?;
    let repository = Arc::new(with_cache(
        Repository::<Account, _>::new(store.clone())
            .retry_policy(RetryPolicy::default().max_attempts(100_000)),
        CACHE_CAPACITY,
        setup.cache,
    ));
    repository.execute(open("w5")).await?;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let repository = Arc::clone(&repository);
        handles.push(tokio::spawn(async move {
            let (mut accepted, mut sum, mut conflicts, mut failed) = (0u64, 0u64, 0u64, 0u64);
            for i in 0..deposits {
                let amount = amount(task * deposits + i);
                match repository.execute(deposit("w5", amount)).await {
                    Ok(outcome) => {
                        accepted += 1;
                        sum += amount;
                        conflicts += u64::from(outcome.attempts - 1);
                    }
                    Err(CommandError::Conflict { attempts, .. }) => {
                        failed += 1;
                        conflicts += u64::from(attempts);
                    }
                    Err(other) => return Err(BoxError::from(other)),
                }
            }
            Ok((accepted, sum, conflicts, failed))
        }));
    }
    let (mut accepted, mut sum, mut conflicts, mut failed) = (0, 0, 0, 0);
    for handle in handles {
        let (a, s, c, f) = handle.await??;
        accepted += a;
        sum += s;
        conflicts += c;
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    // No lost update: the stored balance is the sum of accepted deposits.
    check_account(&store, "w5", 1 + accepted, sum).await?;
    store.pool().close().await;
    Ok(setup
        .describe(Measurement::new("W5", "postgres", accepted, seconds))
        .with("tasks", tasks)
        .with("pool", 1)
        .with("conflicts", conflicts)
        .with("failed", failed)
        .with("balance", sum)
        .with("balance_checked", true))
}

/// W6's read model: a total per account, one upsert per event in the
/// runner's transaction.
struct Totals;

impl Projection for Totals {
    type Event = AccountEvent;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        "bench_totals"
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let delta = match event.data {
            AccountEvent::Deposited { amount } => i64::try_from(amount)?,
            AccountEvent::Withdrew { amount } => -i64::try_from(amount)?,
            AccountEvent::Opened { .. } => 0,
        };
        sqlx::query(
            "INSERT INTO es_bench_w6.totals AS t (stream_id, total, events) VALUES ($1, $2, 1) \
             ON CONFLICT (stream_id) DO UPDATE \
             SET total = t.total + excluded.total, events = t.events + 1",
        )
        .bind(event.stream_id.as_str())
        .bind(delta)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// W6: `events` events appended (untimed: 1,000 streams, 100 per append,
/// 4 tasks), then the projection runner from position 0 with the default
/// options, timed until its checkpoint reaches the head. Reports the peak
/// RSS of the catch-up (VmHWM reset before it).
pub async fn w6(url: &str, events: usize) -> Result<Vec<Measurement>, BoxError> {
    let store = fresh_store(url, "es_bench_w6", 10, Setup::STORE_DEFAULTS).await?;
    let starts: Vec<usize> = (0..events).step_by(100).collect();
    let mut handles = Vec::new();
    for t in 0..4 {
        let store = store.clone();
        let mine: Vec<usize> = starts.iter().copied().skip(t).step_by(4).collect();
        handles.push(tokio::spawn(async move {
            for from in mine {
                let (stream, _) = catch_up_event(from);
                let batch = (from..(from + 100).min(events))
                    .map(|i| {
                        NewEvent::from_event(
                            &AccountEvent::Deposited { amount: amount(i) },
                            CommandContext::new().event_metadata(),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                store
                    .append(&StreamId::from(stream), ExpectedVersion::Any, batch)
                    .await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    vacuum(store.pool(), "es_bench_w6.events").await?;
    store
        .pool()
        .execute(
            "CREATE TABLE es_bench_w6.totals \
             (stream_id text PRIMARY KEY, total bigint NOT NULL, events bigint NOT NULL)",
        )
        .await?;
    let head = store.head_position().await?;

    let rss_before = rss_kib();
    let reset = reset_peak_rss();
    let started = Instant::now();
    let handle = store.run_projection(Totals, ProjectionOptions::default());
    handle.wait_for(head, Duration::from_secs(3_600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    let status = handle.stop().await;
    let counted: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(events), 0)::bigint FROM es_bench_w6.totals")
            .fetch_one(store.pool())
            .await?;
    if status.processed != events as u64 || counted != events as i64 {
        return Err(format!(
            "W6: processed {}, counted {counted}, of {events}",
            status.processed
        )
        .into());
    }
    let mut m = Measurement::new("W6", "postgres", events as u64, seconds)
        .with("batch_size", ProjectionOptions::DEFAULT_BATCH_SIZE)
        .with("rss_before_kib", rss_before);
    if reset {
        m = m.with("peak_rss_kib", peak);
    }

    // The same log into a view: a document per account (1,000 keys), no
    // SQL of the user's.
    let reset = reset_peak_rss();
    let started = Instant::now();
    let view = store
        .run_view::<TotalsView>("totals", ProjectionOptions::default())
        .await?;
    view.wait_for(head, Duration::from_secs(3_600)).await?;
    let view_seconds = started.elapsed().as_secs_f64();
    let view_peak = peak_rss_kib();
    let mut documents = 0;
    let mut counted = 0;
    let mut after = None;
    loop {
        let page = view.list(after.as_deref(), 500).await?;
        documents += page.documents.len();
        counted += page.documents.iter().map(|d| d.doc.events).sum::<u64>();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    view.stop().await;
    if counted != events as u64 {
        return Err(format!("W6 view: counted {counted} of {events} events").into());
    }
    store.pool().close().await;
    let mut v = Measurement::new("W6-view", "postgres", events as u64, view_seconds)
        .with("keys", documents)
        .with("batch_size", ProjectionOptions::DEFAULT_BATCH_SIZE);
    if reset {
        v = v.with("peak_rss_kib", view_peak);
    }
    Ok(vec![m, v])
}

/// W6's view: a total per account, kept by the framework in a `jsonb`
/// table.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct TotalsView {
    pub(crate) total: u64,
    pub(crate) events: u64,
}

impl evently::view::View for TotalsView {
    type Event = AccountEvent;

    fn apply(&mut self, event: &evently::RecordedEvent<AccountEvent>) {
        if let AccountEvent::Deposited { amount } = event.data {
            self.total += amount;
            self.events += 1;
        }
    }
}
