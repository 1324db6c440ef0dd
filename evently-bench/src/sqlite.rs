//! The workloads on evently-sqlite (S-W2, S-W3, S-W4, S-W5, S-W6), each beside
//! a raw floor: hand-written sqlx inserts of the same rows (the event and
//! its stream's version, one transaction per append, on one connection:
//! SQLite's one writer), with the same durability (WAL,
//! `synchronous=FULL`), in the same run; S-F3, the same stream read and
//! decoded by hand; S-F4, the catch-up of a read model by hand. Each run
//! works in a fresh file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use evently::projection::{HandlerError, Projection, ProjectionOptions};
use evently::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, Repository, StreamId};
use evently_sqlite::sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous,
};
use evently_sqlite::sqlx::{self, ConnectOptions};
use evently_sqlite::SqliteEventStore;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::domain::{amount, Account, AccountCommand, AccountEvent};
use crate::floors::catch_up_event;
use crate::report::Measurement;
use crate::support::BoxError;
use crate::workloads::TotalsView;

/// A fresh file for one run.
fn fresh_file(name: &str) -> Result<PathBuf, BoxError> {
    let dir = std::env::temp_dir().join(format!("evently-bench-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(path)
}

/// Removes a run's file.
fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

async fn open_store(name: &str) -> Result<(SqliteEventStore, PathBuf), BoxError> {
    let path = fresh_file(name)?;
    Ok((SqliteEventStore::open(&path).await?, path))
}

/// The floor's connection: the store's schema (created by opening a store
/// once), the same pragmas.
async fn floor_connection(name: &str) -> Result<(SqliteConnection, PathBuf), BoxError> {
    let path = fresh_file(name)?;
    drop(SqliteEventStore::open(&path).await?);
    let conn = SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .disable_statement_logging()
        .connect()
        .await?;
    Ok((conn, path))
}

fn metadata_json() -> String {
    serde_json::to_string(&evently::Metadata::new()).expect("metadata serializes")
}

/// One append by hand: the event row and the stream's version, in one
/// write transaction.
async fn insert_one(
    conn: &mut SqliteConnection,
    stream: &str,
    version: u64,
    amount: u64,
) -> Result<(), BoxError> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, payload, \
         metadata, correlation_id, recorded_at) VALUES ((SELECT COALESCE(MAX(position), 0) + 1 FROM events), \
         ?, ?, ?, 'Deposited', 1, ?, ?, NULL, ?)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(stream)
    .bind(version as i64)
    .bind(format!(r#"{{"amount":{amount}}}"#))
    .bind(metadata_json())
    .bind(chrono::Utc::now().timestamp_micros())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO streams (stream_id, version) VALUES (?, ?) ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
    )
    .bind(stream)
    .bind(version as i64)
    .execute(&mut *conn)
    .await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

/// SF@W2 / SF@W3: `tasks` tasks, each appending `per_stream` events to
/// each of its `streams_per_task` streams round robin, one connection.
pub async fn floor_distinct(
    name: &str,
    tasks: usize,
    streams_per_task: usize,
    per_stream: usize,
) -> Result<Measurement, BoxError> {
    let (conn, path) = floor_connection(name).await?;
    let conn = Arc::new(Mutex::new(conn));
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let conn = conn.clone();
        handles.push(tokio::spawn(async move {
            for v in 1..=per_stream {
                for s in 0..streams_per_task {
                    let stream = format!("account-f{t}-{s}");
                    insert_one(&mut *conn.lock().await, &stream, v as u64, amount(v)).await?;
                }
            }
            Ok::<_, BoxError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    remove(&path);
    Ok(Measurement::new(
        name,
        "sqlite",
        (tasks * streams_per_task * per_stream) as u64,
        seconds,
    ))
}

/// SF@W5: `tasks` tasks appending to one stream, serialised by the lock
/// that holds its version.
pub async fn floor_shared(
    name: &str,
    tasks: usize,
    per_task: usize,
) -> Result<Measurement, BoxError> {
    let (conn, path) = floor_connection(name).await?;
    let state = Arc::new(Mutex::new((conn, 0u64)));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let state = state.clone();
        handles.push(tokio::spawn(async move {
            for d in 0..per_task {
                let mut guard = state.lock().await;
                let (conn, version) = &mut *guard;
                *version += 1;
                let v = *version;
                insert_one(conn, "account-shared", v, amount(d)).await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    remove(&path);
    Ok(Measurement::new(
        name,
        "sqlite",
        (tasks * per_task) as u64,
        seconds,
    ))
}

fn deposit(id: &str, amount: u64) -> AccountCommand {
    AccountCommand::Deposit {
        id: id.to_owned(),
        amount,
    }
}

fn open(id: &str) -> AccountCommand {
    AccountCommand::Open {
        id: id.to_owned(),
        owner: format!("owner of {id}"),
    }
}

/// S-W2: deposits to one account, one after the other.
pub async fn w2(deposits: usize) -> Result<Measurement, BoxError> {
    let (store, path) = open_store("s-w2").await?;
    let repository = Repository::<Account, _>::new(store.clone());
    repository.execute(open("w2")).await?;
    let started = Instant::now();
    for d in 0..deposits {
        repository.execute(deposit("w2", amount(d))).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let loaded = Repository::<Account, _>::new(store)
        .without_cache()
        .load("w2")
        .await?;
    let expected: u64 = (0..deposits).map(amount).sum();
    if loaded.state.balance != expected {
        return Err(format!("S-W2: balance {} for {expected}", loaded.state.balance).into());
    }
    remove(&path);
    Ok(Measurement::new("S-W2", "sqlite", deposits as u64, seconds))
}

/// S-W3: `accounts` accounts, `deposits` each, from `tasks` tasks.
pub async fn w3(accounts: usize, deposits: usize, tasks: usize) -> Result<Measurement, BoxError> {
    let (store, path) = open_store("s-w3").await?;
    let repository = Arc::new(Repository::<Account, _>::new(store.clone()));
    for a in 0..accounts {
        repository.execute(open(&format!("w3-{a}"))).await?;
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let repository = repository.clone();
        handles.push(tokio::spawn(async move {
            let mine: Vec<String> = (0..accounts)
                .filter(|a| a % tasks == t)
                .map(|a| format!("w3-{a}"))
                .collect();
            for d in 0..deposits {
                for id in &mine {
                    repository.execute(deposit(id, amount(d))).await?;
                }
            }
            Ok::<_, BoxError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let head = store.head_position().await?;
    if head != (accounts * (1 + deposits)) as u64 {
        return Err(format!("S-W3: {head} events").into());
    }
    remove(&path);
    Ok(Measurement::new(
        "S-W3",
        "sqlite",
        (accounts * deposits) as u64,
        seconds,
    ))
}

/// S-W5: `tasks` tasks depositing to one account.
pub async fn w5(tasks: usize, deposits: usize) -> Result<Measurement, BoxError> {
    let (store, path) = open_store("s-w5").await?;
    let repository = Arc::new(Repository::<Account, _>::new(store.clone()));
    repository.execute(open("w5")).await?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let repository = repository.clone();
        handles.push(tokio::spawn(async move {
            for d in 0..deposits {
                repository.execute(deposit("w5", amount(d))).await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let version = store.stream_version(&StreamId::from("account-w5")).await?;
    if version != (1 + tasks * deposits) as u64 {
        return Err(format!("S-W5: version {version}").into());
    }
    remove(&path);
    Ok(Measurement::new(
        "S-W5",
        "sqlite",
        (tasks * deposits) as u64,
        seconds,
    ))
}

/// One account of `events` events (an open, then deposits), written in
/// appends of a thousand.
async fn long_account(store: &SqliteEventStore, events: usize) -> Result<(), BoxError> {
    let stream = StreamId::from("account-w4");
    let mut version = 0u64;
    let mut batch = vec![NewEvent::from_event(
        &AccountEvent::Opened { owner: "w4".into() },
        evently::Metadata::new(),
    )?];
    for d in 1..events {
        batch.push(NewEvent::from_event(
            &AccountEvent::Deposited { amount: amount(d) },
            evently::Metadata::new(),
        )?);
        if batch.len() == 1000 {
            let n = batch.len() as u64;
            store
                .append(
                    &stream,
                    ExpectedVersion::Exact(version),
                    std::mem::take(&mut batch),
                )
                .await?;
            version += n;
        }
    }
    if !batch.is_empty() {
        store
            .append(&stream, ExpectedVersion::Exact(version), batch)
            .await?;
    }
    Ok(())
}

/// S-W4: full loads of one account of `events` events, no cache; ops are
/// events loaded.
pub async fn w4(events: usize, loads: usize) -> Result<Measurement, BoxError> {
    let (store, path) = open_store("s-w4").await?;
    long_account(&store, events).await?;
    let repository = Repository::<Account, _>::new(store).without_cache();
    repository.load("w4").await?;
    let started = Instant::now();
    for _ in 0..loads {
        let loaded = repository.load("w4").await?;
        if loaded.version != events as u64 {
            return Err(format!("S-W4: version {}", loaded.version).into());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    remove(&path);
    Ok(
        Measurement::new("S-W4", "sqlite", (events * loads) as u64, seconds)
            .with("ms_per_load", seconds * 1000.0 / loads as f64),
    )
}

/// The payload of a deposit or a withdrawal, as the floor decodes it.
#[derive(Deserialize)]
struct Amount {
    amount: u64,
}

/// S-F3: the same account read and decoded by hand (one query, serde on
/// each payload, the balance folded).
pub async fn f3(events: usize, loads: usize) -> Result<Measurement, BoxError> {
    let (store, path) = open_store("s-f3").await?;
    long_account(&store, events).await?;
    let pool = store.pool().clone();
    load_by_hand(&pool).await?;
    let started = Instant::now();
    for _ in 0..loads {
        let (n, _) = load_by_hand(&pool).await?;
        if n != events {
            return Err(format!("S-F3: {n} events").into());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    remove(&path);
    Ok(
        Measurement::new("S-F3", "sqlite", (events * loads) as u64, seconds)
            .with("ms_per_load", seconds * 1000.0 / loads as f64),
    )
}

/// S-F3's load: one query, serde on each payload, the balance folded.
async fn load_by_hand(pool: &evently_sqlite::sqlx::SqlitePool) -> Result<(usize, u64), BoxError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, payload FROM events WHERE stream_id = ? ORDER BY stream_version",
    )
    .bind("account-w4")
    .fetch_all(pool)
    .await?;
    let mut balance = 0u64;
    for (event_type, payload) in &rows {
        match event_type.as_str() {
            "Deposited" => balance += serde_json::from_str::<Amount>(payload)?.amount,
            "Withdrew" => balance -= serde_json::from_str::<Amount>(payload)?.amount,
            _ => {}
        }
    }
    Ok((rows.len(), balance))
}

/// The catch-up log (untimed): `events` deposits over 1,000 accounts, 100
/// per append, W6's layout; the store and its head.
async fn catch_up_log(
    name: &str,
    events: usize,
) -> Result<(SqliteEventStore, PathBuf, u64), BoxError> {
    let (store, path) = open_store(name).await?;
    for from in (0..events).step_by(100) {
        let (stream, _) = catch_up_event(from);
        let batch = (from..(from + 100).min(events))
            .map(|i| {
                NewEvent::from_event(
                    &AccountEvent::Deposited { amount: amount(i) },
                    evently::Metadata::new(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        store
            .append(&StreamId::from(stream), ExpectedVersion::Any, batch)
            .await?;
    }
    let head = store.head_position().await?;
    Ok((store, path, head))
}

const TOTALS: &str = "CREATE TABLE totals (stream_id TEXT PRIMARY KEY, total INTEGER NOT NULL, \
     events INTEGER NOT NULL) WITHOUT ROWID";
const ADD_TO_TOTAL: &str = "INSERT INTO totals (stream_id, total, events) VALUES (?, ?, 1) \
     ON CONFLICT (stream_id) DO UPDATE SET total = total + excluded.total, events = events + 1";

/// S-W6's projection: W6's totals table, in the store's file, written
/// through the runner's transaction.
struct Totals;

impl Projection for Totals {
    type Event = AccountEvent;
    type Sink = SqliteConnection;

    fn name(&self) -> &str {
        "bench_totals"
    }

    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<(), HandlerError> {
        let delta = match event.data {
            AccountEvent::Deposited { amount } => i64::try_from(amount)?,
            AccountEvent::Withdrew { amount } => -i64::try_from(amount)?,
            AccountEvent::Opened { .. } => 0,
        };
        sqlx::query(ADD_TO_TOTAL)
            .bind(event.stream_id.as_str())
            .bind(delta)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// The events counted into the totals table.
async fn counted(store: &SqliteEventStore) -> Result<i64, BoxError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(SUM(events), 0) FROM totals")
            .fetch_one(store.pool())
            .await?,
    )
}

/// S-W6 and S-W6-view: the catch-up of `events` events from position 0,
/// timed until the checkpoint reaches the head, into a table through a
/// `Projection` and into a view (a document per account).
pub async fn w6(events: usize) -> Result<Vec<Measurement>, BoxError> {
    let (store, path, head) = catch_up_log("s-w6", events).await?;
    sqlx::query(TOTALS).execute(store.pool()).await?;
    let started = Instant::now();
    let handle = store.run_projection(Totals, ProjectionOptions::default());
    handle
        .wait_for(head, std::time::Duration::from_secs(3_600))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let status = handle.stop().await;
    let counted = counted(&store).await?;
    if status.processed != events as u64 || counted != events as i64 {
        return Err(format!(
            "S-W6: processed {}, counted {counted}, of {events}",
            status.processed
        )
        .into());
    }
    let started = Instant::now();
    let view = store
        .run_view::<TotalsView>("totals", ProjectionOptions::default())
        .await?;
    view.wait_for(head, std::time::Duration::from_secs(3_600))
        .await?;
    let view_seconds = started.elapsed().as_secs_f64();
    let mut documents = 0;
    let mut in_view = 0;
    let mut after = None;
    loop {
        let page = view.list(after.as_deref(), 500).await?;
        documents += page.documents.len();
        in_view += page.documents.iter().map(|d| d.doc.events).sum::<u64>();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    view.stop().await;
    if in_view != events as u64 {
        return Err(format!("S-W6-view: counted {in_view} of {events} events").into());
    }
    remove(&path);
    Ok(vec![
        Measurement::new("S-W6", "sqlite", events as u64, seconds)
            .with("batch_size", ProjectionOptions::DEFAULT_BATCH_SIZE),
        Measurement::new("S-W6-view", "sqlite", events as u64, view_seconds)
            .with("keys", documents),
    ])
}

/// S-F4: the same catch-up by hand: the log read in pages of 1,000 (the
/// columns the totals need), each page's totals upserted and a checkpoint
/// row moved in one transaction, on one connection.
pub async fn f4(events: usize) -> Result<Measurement, BoxError> {
    let (store, path, head) = catch_up_log("s-f4", events).await?;
    drop(store);
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .disable_statement_logging()
        .connect()
        .await?;
    sqlx::query(TOTALS).execute(&mut conn).await?;
    sqlx::query("CREATE TABLE floor_checkpoint (position INTEGER NOT NULL)")
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO floor_checkpoint VALUES (0)")
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    let mut position = 0i64;
    while (position as u64) < head {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT position, stream_id, event_type, payload FROM events \
             WHERE position > ? ORDER BY position LIMIT 1000",
        )
        .bind(position)
        .fetch_all(&mut conn)
        .await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
        for (at, stream, event_type, payload) in &rows {
            let delta = match event_type.as_str() {
                "Deposited" => serde_json::from_str::<Amount>(payload)?.amount as i64,
                "Withdrew" => -(serde_json::from_str::<Amount>(payload)?.amount as i64),
                _ => 0,
            };
            sqlx::query(ADD_TO_TOTAL)
                .bind(stream)
                .bind(delta)
                .execute(&mut conn)
                .await?;
            position = *at;
        }
        sqlx::query("UPDATE floor_checkpoint SET position = ?")
            .bind(position)
            .execute(&mut conn)
            .await?;
        sqlx::query("COMMIT").execute(&mut conn).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let counted: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(events), 0) FROM totals")
        .fetch_one(&mut conn)
        .await?;
    if counted != events as i64 {
        return Err(format!("S-F4: counted {counted} of {events}").into());
    }
    remove(&path);
    Ok(Measurement::new("S-F4", "sqlite", events as u64, seconds))
}
