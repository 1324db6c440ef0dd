//! The raw floors: the same work written by hand, with no framework in
//! between. On PostgreSQL plain sqlx against an equivalent `events` table in
//! the schema `es_bench_floor` (dropped and created again for every run); in
//! memory a plain `HashMap<String, Vec<AccountEvent>>`.
//!
//! - F1: one event per transaction, a single `INSERT`; the expected version
//!   is enforced by the unique `(stream_id, stream_version)` constraint, and
//!   nothing is read first. Run at each workload's concurrency and pool.
//! - F2: 100 events per transaction, one `INSERT … SELECT FROM UNNEST`.
//! - F3: one stream of N events read in one query, each payload decoded
//!   into `AccountEvent` from the row's text and folded into the state.
//! - F4: N events read in global order (pages of 1,000), one upsert per
//!   event into a totals table, transactions of 256 events (the projection
//!   runner's default batch) that also move a checkpoint row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use evently::projection::ProjectionOptions;
use evently_postgres::sqlx::postgres::PgPool;
use evently_postgres::sqlx::{self, Executor, Row};
use futures::TryStreamExt;
use uuid::Uuid;

use crate::domain::{amount, decode_by_hand, Account, AccountEvent, AmountPayload, OpenedPayload};
use crate::report::Measurement;
use crate::support::{
    drop_schema, peak_rss_kib, plain_pool, reset_peak_rss, rss_kib, vacuum, BoxError,
};

/// The floors' schema.
pub const SCHEMA: &str = "es_bench_floor";

const CREATE: &str = "CREATE SCHEMA es_bench_floor;
CREATE TABLE es_bench_floor.events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    stream_id text NOT NULL,
    stream_version bigint NOT NULL,
    event_type text NOT NULL,
    schema_version integer NOT NULL,
    payload jsonb NOT NULL,
    metadata jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, stream_version)
);";

const INSERT_ONE: &str = "INSERT INTO es_bench_floor.events \
    (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
    VALUES ($1, $2, $3, $4, 1, $5::jsonb, $6::jsonb)";

const INSERT_MANY: &str = "INSERT INTO es_bench_floor.events \
    (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
    SELECT u.id, u.s, u.v, u.t, 1, u.p::jsonb, u.m::jsonb \
    FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) \
         AS u(id, s, v, t, p, m)";

/// A fresh floor schema and a pool of `size` open connections to it.
async fn fresh(url: &str, size: u32) -> Result<PgPool, BoxError> {
    drop_schema(url, SCHEMA).await?;
    let pool = plain_pool(url, size).await?;
    // `Executor::execute` on plain text runs several statements, and its
    // future is `Send` (that of `sqlx::raw_sql` is not).
    (&pool).execute(CREATE).await?;
    Ok(pool)
}

/// Metadata of the same shape and size as the framework's (correlation,
/// causation and command ids, a timestamp).
fn metadata_json() -> String {
    let id = Uuid::now_v7();
    format!(
        r#"{{"correlation_id":"{id}","causation_id":"{id}","command_id":"{id}","timestamp":"{}"}}"#,
        Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

fn deposit_json(amount: u64) -> Result<String, BoxError> {
    Ok(serde_json::to_string(&AmountPayload { amount })?)
}

/// One event in one transaction: a single INSERT.
async fn insert_one(
    pool: &PgPool,
    stream: &str,
    version: u64,
    amount: u64,
) -> Result<(), BoxError> {
    sqlx::query(INSERT_ONE)
        .bind(Uuid::now_v7())
        .bind(stream)
        .bind(version as i64)
        .bind("Deposited")
        .bind(deposit_json(amount)?)
        .bind(metadata_json())
        .execute(pool)
        .await?;
    Ok(())
}

/// Rows for [`insert_many`]: stream, version, type, payload.
type Rows = Vec<(String, i64, &'static str, String)>;

/// Many events in one transaction: one INSERT … SELECT FROM UNNEST.
async fn insert_many(pool: &PgPool, rows: Rows) -> Result<(), BoxError> {
    let n = rows.len();
    let (mut ids, mut streams, mut versions, mut types, mut payloads, mut metas) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (stream, version, event_type, payload) in rows {
        ids.push(Uuid::now_v7());
        streams.push(stream);
        versions.push(version);
        types.push(event_type);
        payloads.push(payload);
        metas.push(metadata_json());
    }
    sqlx::query(INSERT_MANY)
        .bind(ids)
        .bind(streams)
        .bind(versions)
        .bind(types)
        .bind(payloads)
        .bind(metas)
        .execute(pool)
        .await?;
    Ok(())
}

/// How F1 spreads its appends.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// Each task appends to streams of its own, round robin.
    Distinct {
        /// Streams per task.
        streams_per_task: usize,
        /// Events per stream.
        per_stream: usize,
    },
    /// All tasks append to one stream, serialised in-process by a mutex
    /// that holds the stream's version (what the framework's cache does).
    Shared {
        /// Events per task.
        per_task: usize,
    },
}

/// F1 with `tasks` tasks on a pool of `pool` connections.
pub async fn f1(
    url: &str,
    name: &str,
    tasks: usize,
    pool_size: u32,
    layout: Layout,
) -> Result<Measurement, BoxError> {
    let pool = fresh(url, pool_size).await?;
    let shared = Arc::new(tokio::sync::Mutex::new(0u64));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let pool = pool.clone();
        let shared = Arc::clone(&shared);
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            match layout {
                Layout::Distinct {
                    streams_per_task,
                    per_stream,
                } => {
                    let streams: Vec<String> = (0..streams_per_task)
                        .map(|s| format!("account-f1-{task}-{s}"))
                        .collect();
                    for round in 0..per_stream {
                        for stream in &streams {
                            let t = Instant::now();
                            insert_one(&pool, stream, round as u64 + 1, amount(round)).await?;
                            latencies.push(t.elapsed().as_secs_f64());
                        }
                    }
                }
                Layout::Shared { per_task } => {
                    for i in 0..per_task {
                        let mut version = shared.lock().await;
                        insert_one(&pool, "account-f1-shared", *version + 1, amount(i)).await?;
                        *version += 1;
                    }
                }
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        let mine = handle.await??;
        if latencies.is_empty() {
            latencies = mine;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = match layout {
        Layout::Distinct {
            streams_per_task,
            per_stream,
        } => tasks * streams_per_task * per_stream,
        Layout::Shared { per_task } => tasks * per_task,
    } as u64;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM es_bench_floor.events")
        .fetch_one(&pool)
        .await?;
    if stored as u64 != ops {
        return Err(format!("{name}: {stored} events stored, {ops} appended").into());
    }
    pool.close().await;
    let mut m = Measurement::new(name, "sqlx", ops, seconds)
        .with("tasks", tasks)
        .with("pool", pool_size);
    if tasks == 1 && latencies.len() >= 2 {
        m = with_windows(m, &latencies);
    }
    Ok(m)
}

/// Mean and median ms of the first and the last 100 latencies (of the
/// first and last half when there are fewer than 200), as
/// `(first mean, last mean, first median, last median)`.
pub fn windows_ms(latencies: &[f64]) -> (f64, f64, f64, f64) {
    let window = 100.min(latencies.len() / 2).max(1);
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64 * 1e3;
    let first = &latencies[..window];
    let last = &latencies[latencies.len() - window..];
    let ms = |x: f64| crate::report::round(x, 4);
    (
        ms(mean(first)),
        ms(mean(last)),
        ms(crate::report::median_of(first) * 1e3),
        ms(crate::report::median_of(last) * 1e3),
    )
}

/// The latency fields of a sequential workload: the mean ms/command of the
/// first and last 100 commands, their ratio, and the medians.
pub fn with_windows(m: Measurement, latencies: &[f64]) -> Measurement {
    let (first, last, first_p50, last_p50) = windows_ms(latencies);
    m.with("window", 100.min(latencies.len() / 2))
        .with("first100_ms", first)
        .with("last100_ms", last)
        .with("flat_ratio", crate::report::round(last / first, 3))
        .with("first100_p50_ms", first_p50)
        .with("last100_p50_ms", last_p50)
}

/// F1 in memory, the floor of W1: a `HashMap` from account to its events;
/// each command checks the state (open, amount) and pushes its event.
pub fn f1_hashmap(accounts: usize, deposits: usize) -> Result<Measurement, BoxError> {
    let mut log: HashMap<String, Vec<AccountEvent>> = HashMap::new();
    let started = Instant::now();
    for a in 0..accounts {
        let id = format!("bench-{a}");
        let events = log.entry(id).or_default();
        if !events.is_empty() {
            return Err("already open".into());
        }
        events.push(AccountEvent::Opened {
            owner: format!("owner {a}"),
        });
        for d in 0..deposits {
            let id = format!("bench-{a}");
            let amount = amount(d);
            let events = log.get_mut(&id).ok_or("not open")?;
            if events.is_empty() {
                return Err("not open".into());
            }
            if amount == 0 {
                return Err("zero amount".into());
            }
            events.push(AccountEvent::Deposited { amount });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored: usize = std::hint::black_box(&log).values().map(Vec::len).sum();
    let ops = (accounts * (1 + deposits)) as u64;
    if stored as u64 != ops {
        return Err(format!("F1@W1: {stored} events stored, {ops} commands").into());
    }
    Ok(Measurement::new("F1@W1", "hashmap", ops, seconds))
}

/// F2: `transactions` transactions of `batch` events on one connection.
pub async fn f2(url: &str, transactions: usize, batch: usize) -> Result<Measurement, BoxError> {
    let pool = fresh(url, 1).await?;
    let started = Instant::now();
    for t in 0..transactions {
        let stream = format!("account-f2-{t}");
        let mut rows = Vec::with_capacity(batch);
        for i in 0..batch {
            rows.push((
                stream.clone(),
                i as i64 + 1,
                "Deposited",
                deposit_json(amount(i))?,
            ));
        }
        insert_many(&pool, rows).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(
        Measurement::new("F2", "sqlx", (transactions * batch) as u64, seconds)
            .with("events_per_transaction", batch)
            .with("pool", 1),
    )
}

/// Reads one stream by hand: one query, each payload decoded from the row's
/// text, folded into the state. Returns the state and the version.
async fn read_stream_by_hand(pool: &PgPool, stream: &str) -> Result<(Account, u64), BoxError> {
    let mut rows = sqlx::query(
        "SELECT stream_version, event_type, payload::text FROM es_bench_floor.events \
         WHERE stream_id = $1 ORDER BY stream_version",
    )
    .bind(stream)
    .fetch(pool);
    let mut state = Account::default();
    let mut version = 0;
    while let Some(row) = rows.try_next().await? {
        let v: i64 = row.try_get(0)?;
        let event_type: &str = row.try_get(1)?;
        let payload: &str = row.try_get(2)?;
        state.apply(&decode_by_hand(event_type, payload)?);
        version = v as u64;
    }
    Ok((state, version))
}

/// The rows of one account's stream: opened, then deposits up to `events`.
fn account_rows(stream: &str, events: usize) -> Result<Rows, BoxError> {
    let mut rows = Vec::with_capacity(events);
    for v in 1..=events {
        let (event_type, payload) = if v == 1 {
            (
                "Opened",
                serde_json::to_string(&OpenedPayload {
                    owner: "Owner".into(),
                })?,
            )
        } else {
            ("Deposited", deposit_json(amount(v))?)
        };
        rows.push((stream.to_owned(), v as i64, event_type, payload));
    }
    Ok(rows)
}

/// The balance of [`account_rows`] (and of W4's stream).
pub fn expected_balance(events: usize) -> u64 {
    (2..=events).map(amount).sum()
}

/// F3: read and decode one stream of `events` events, `loads` times after
/// one untimed warm-up read.
pub async fn f3(url: &str, events: usize, loads: usize) -> Result<Measurement, BoxError> {
    let pool = fresh(url, 1).await?;
    let stream = "account-f3";
    for chunk in account_rows(stream, events)?.chunks(1_000) {
        insert_many(&pool, chunk.to_vec()).await?;
    }
    vacuum(&pool, "es_bench_floor.events").await?;
    read_stream_by_hand(&pool, stream).await?;
    let started = Instant::now();
    for _ in 0..loads {
        let (state, version) = read_stream_by_hand(&pool, stream).await?;
        if version != events as u64 || state.balance != expected_balance(events) {
            return Err(format!(
                "F3: read version {version}, balance {}; expected {events}, {}",
                state.balance,
                expected_balance(events)
            )
            .into());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(
        Measurement::new("F3", "sqlx", (events * loads) as u64, seconds)
            .with("events", events)
            .with("loads", loads)
            .with(
                "ms_per_load",
                crate::report::round(seconds * 1e3 / loads as f64, 3),
            ),
    )
}

/// The global log of W6 and F4: appends of 100 events, stream `i % 1000`.
pub fn catch_up_event(i: usize) -> (String, u64) {
    let chunk = i / 100;
    let stream = format!("account-c{}", chunk % 1_000);
    let version = (chunk / 1_000 * 100 + i % 100 + 1) as u64;
    (stream, version)
}

/// F4: catch-up of `events` events into a totals table, by hand.
pub async fn f4(url: &str, events: usize) -> Result<Measurement, BoxError> {
    let pool = fresh(url, 2).await?;
    let mut rows = Vec::with_capacity(1_000);
    for i in 0..events {
        let (stream, version) = catch_up_event(i);
        rows.push((
            stream,
            version as i64,
            "Deposited",
            deposit_json(amount(i))?,
        ));
        if rows.len() == 1_000 || i + 1 == events {
            insert_many(&pool, std::mem::take(&mut rows)).await?;
        }
    }
    vacuum(&pool, "es_bench_floor.events").await?;
    (&pool)
        .execute(
            "CREATE TABLE es_bench_floor.totals \
             (stream_id text PRIMARY KEY, total bigint NOT NULL, events bigint NOT NULL);
         CREATE TABLE es_bench_floor.checkpoint (position bigint NOT NULL);
         INSERT INTO es_bench_floor.checkpoint VALUES (0);",
        )
        .await?;
    let batch_size = ProjectionOptions::DEFAULT_BATCH_SIZE;
    let read = "SELECT position, stream_id, event_type, payload::text FROM es_bench_floor.events \
                WHERE position > $1 ORDER BY position LIMIT 1000";
    let upsert = "INSERT INTO es_bench_floor.totals AS t (stream_id, total, events) \
                  VALUES ($1, $2, 1) ON CONFLICT (stream_id) DO UPDATE \
                  SET total = t.total + excluded.total, events = t.events + 1";
    let checkpoint = "UPDATE es_bench_floor.checkpoint SET position = $1";

    let rss_before = rss_kib();
    let reset = reset_peak_rss();
    let started = Instant::now();
    let (mut after, mut applied) = (0i64, 0usize);
    loop {
        let rows: Vec<(i64, String, String, String)> =
            sqlx::query_as(read).bind(after).fetch_all(&pool).await?;
        if rows.is_empty() {
            break;
        }
        for chunk in rows.chunks(batch_size) {
            let mut tx = pool.begin().await?;
            for (_, stream_id, event_type, payload) in chunk {
                let delta = match decode_by_hand(event_type, payload)? {
                    AccountEvent::Deposited { amount } => amount as i64,
                    AccountEvent::Withdrew { amount } => -(amount as i64),
                    AccountEvent::Opened { .. } => 0,
                };
                sqlx::query(upsert)
                    .bind(stream_id)
                    .bind(delta)
                    .execute(&mut *tx)
                    .await?;
            }
            let last = chunk.last().map_or(after, |r| r.0);
            sqlx::query(checkpoint).bind(last).execute(&mut *tx).await?;
            tx.commit().await?;
            after = last;
            applied += chunk.len();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    let counted: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(events), 0)::bigint FROM es_bench_floor.totals")
            .fetch_one(&pool)
            .await?;
    if applied != events || counted != events as i64 {
        return Err(format!("F4: applied {applied}, counted {counted}, of {events}").into());
    }
    pool.close().await;
    let mut m = Measurement::new("F4", "sqlx", events as u64, seconds)
        .with("batch_size", batch_size)
        .with("rss_before_kib", rss_before);
    if reset {
        m = m.with("peak_rss_kib", peak);
    }
    Ok(m)
}
