//! What the projection runner costs when it catches up: N events appended
//! into a fresh schema, then, in the same run,
//!
//! (a) the runner (`PgEventStore::run_projection`, default options) from
//!     position 0 into a read-model table, one upsert per event in the
//!     runner's transaction, timed until its checkpoint reaches the head;
//! (b) the same work by hand, no framework in between: the events read in
//!     pages of 1,000 (`SELECT … FROM events ORDER BY position`), the same
//!     upsert per event in transactions of the same batch size, each also
//!     moving a checkpoint row (as any consumer that can resume must).
//!
//! Prints one JSON line, a Markdown table, and the process's peak RSS
//! (VmHWM, which only grows) after each phase.
//!
//! `cargo bench -p evently-postgres --bench catch_up [-- N]` (default 100,000
//! events; `DATABASE_URL` as for the tests).

use std::time::{Duration, Instant};

use evently_core::projection::{HandlerError, Projection, ProjectionOptions};
use evently_core::{
    Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId,
};
use evently_postgres::sqlx::{self, Connection, PgConnection};
use evently_postgres::PgEventStore;
use serde::{Deserialize, Serialize};

const SCHEMA: &str = "es_bench_catchup";
const STREAMS: usize = 1_000;
const PER_APPEND: usize = 100;
const APPEND_TASKS: usize = 4;
const PAGE: i64 = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum BenchEvent {
    Credited { amount: i64 },
}

/// The payload as a hand-written consumer reads it.
#[derive(Deserialize)]
struct Credit {
    amount: i64,
}

struct RunnerTotals {
    upsert: String,
}

impl Projection for RunnerTotals {
    type Event = BenchEvent;
    type Sink = PgConnection;

    fn name(&self) -> &str {
        "bench_totals"
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent<BenchEvent>,
    ) -> Result<(), HandlerError> {
        let BenchEvent::Credited { amount } = event.data;
        sqlx::query(&self.upsert)
            .bind(event.stream_id.as_str())
            .bind(amount)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

fn upsert(table: &str) -> String {
    format!(
        "INSERT INTO {SCHEMA}.{table} AS t (stream_id, total, events) VALUES ($1, $2, 1) \
         ON CONFLICT (stream_id) DO UPDATE \
         SET total = t.total + excluded.total, events = t.events + 1"
    )
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let batch_size = ProjectionOptions::DEFAULT_BATCH_SIZE;

    // A fresh schema.
    let mut admin = PgConnection::connect(&url).await?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&mut admin)
        .await?;
    let store = PgEventStore::builder().schema(SCHEMA).connect(&url).await?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE {SCHEMA}.runner_totals \
             (stream_id text PRIMARY KEY, total bigint NOT NULL, events bigint NOT NULL);
         CREATE TABLE {SCHEMA}.plain_totals (LIKE {SCHEMA}.runner_totals INCLUDING ALL);
         CREATE TABLE {SCHEMA}.plain_checkpoint (position bigint NOT NULL);
         INSERT INTO {SCHEMA}.plain_checkpoint VALUES (0);"
    ))
    .execute(&mut admin)
    .await?;

    // Append N events: 1,000 streams, 100 events per append.
    let started = Instant::now();
    let appends: Vec<(usize, usize)> = (0..n)
        .step_by(PER_APPEND)
        .map(|from| (from, (from + PER_APPEND).min(n)))
        .collect();
    let mut tasks = Vec::new();
    for t in 0..APPEND_TASKS {
        let store = store.clone();
        let mine: Vec<(usize, usize)> = appends
            .iter()
            .copied()
            .skip(t)
            .step_by(APPEND_TASKS)
            .collect();
        tasks.push(tokio::spawn(async move {
            for (from, to) in mine {
                let events = (from..to)
                    .map(|i| {
                        let amount = (i % 97) as i64 + 1;
                        NewEvent::from_event(&BenchEvent::Credited { amount }, Metadata::new())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let stream = StreamId::from(format!("s{}", (from / PER_APPEND) % STREAMS));
                store.append(&stream, ExpectedVersion::Any, events).await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await?.map_err(|e| e as Box<dyn std::error::Error>)?;
    }
    let appended_in = started.elapsed();
    // Hint bits and statistics set now, so neither reader pays for them.
    sqlx::raw_sql(&format!("VACUUM ANALYZE {SCHEMA}.events"))
        .execute(&mut admin)
        .await?;
    let head = store.head_position().await?;
    let rss_appended = peak_rss_kib();
    println!(
        "appended {n} events in {:.1}s ({:.0} events/s); peak RSS {rss_appended} KiB",
        appended_in.as_secs_f64(),
        n as f64 / appended_in.as_secs_f64()
    );

    // (a) The runner, from position 0, default options.
    let started = Instant::now();
    let handle = store.run_projection(
        RunnerTotals {
            upsert: upsert("runner_totals"),
        },
        ProjectionOptions::default(),
    );
    handle.wait_for(head, Duration::from_secs(3_600)).await?;
    let runner_time = started.elapsed();
    let status = handle.stop().await;
    assert_eq!(store.checkpoint("bench_totals").await?, head);
    assert_eq!(status.processed, n as u64);
    let rss_runner = peak_rss_kib();
    let runner_rate = n as f64 / runner_time.as_secs_f64();
    println!(
        "(a) runner: {n} events in {:.2}s ({runner_rate:.0} events/s); peak RSS {rss_runner} KiB",
        runner_time.as_secs_f64()
    );

    // (b) By hand: pages of 1,000, transactions of `batch_size` events.
    let plain_upsert = upsert("plain_totals");
    let read = format!(
        "SELECT position, stream_id, payload::text FROM {SCHEMA}.events \
         WHERE position > $1 ORDER BY position LIMIT $2"
    );
    let checkpoint = format!("UPDATE {SCHEMA}.plain_checkpoint SET position = $1");
    let started = Instant::now();
    let (mut after, mut applied) = (0i64, 0usize);
    loop {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(&read)
            .bind(after)
            .bind(PAGE)
            .fetch_all(store.pool())
            .await?;
        if rows.is_empty() {
            break;
        }
        for chunk in rows.chunks(batch_size) {
            let mut tx = store.pool().begin().await?;
            for (_, stream_id, payload) in chunk {
                let credit: Credit = serde_json::from_str(payload)?;
                sqlx::query(&plain_upsert)
                    .bind(stream_id)
                    .bind(credit.amount)
                    .execute(&mut *tx)
                    .await?;
            }
            let last = chunk.last().map_or(after, |r| r.0);
            sqlx::query(&checkpoint)
                .bind(last)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            after = last;
            applied += chunk.len();
        }
    }
    let plain_time = started.elapsed();
    assert_eq!(applied, n);
    let rss_plain = peak_rss_kib();
    let plain_rate = n as f64 / plain_time.as_secs_f64();
    println!(
        "(b) by hand: {n} events in {:.2}s ({plain_rate:.0} events/s); peak RSS {rss_plain} KiB",
        plain_time.as_secs_f64()
    );

    // Both read models agree, and hold every event once.
    let differing: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {SCHEMA}.runner_totals r FULL JOIN {SCHEMA}.plain_totals p \
         USING (stream_id) \
         WHERE r.total IS DISTINCT FROM p.total OR r.events IS DISTINCT FROM p.events"
    ))
    .fetch_one(&mut admin)
    .await?;
    let counted: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(events), 0)::bigint FROM {SCHEMA}.runner_totals"
    ))
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(
        (differing, counted),
        (0, n as i64),
        "the read models differ"
    );

    let ratio = runner_rate / plain_rate;
    println!(
        "{{\"bench\":\"catch_up\",\"events\":{n},\"streams\":{STREAMS},\"batch_size\":{batch_size},\
         \"runner_events_per_s\":{runner_rate:.0},\"plain_events_per_s\":{plain_rate:.0},\
         \"ratio\":{ratio:.3},\"runner_s\":{:.3},\"plain_s\":{:.3},\
         \"peak_rss_kib_after_append\":{rss_appended},\"peak_rss_kib_after_runner\":{rss_runner},\
         \"peak_rss_kib_after_plain\":{rss_plain}}}",
        runner_time.as_secs_f64(),
        plain_time.as_secs_f64()
    );
    println!(
        "| catch-up of {n} events (upsert per event, batches of {batch_size}) | events/s | time | peak RSS after |\n\
         |---|---|---|---|\n\
         | (a) projection runner | {runner_rate:.0} | {:.2}s | {rss_runner} KiB |\n\
         | (b) by hand, no framework | {plain_rate:.0} | {:.2}s | {rss_plain} KiB |\n\
         | ratio (a)/(b) | {ratio:.3} | | |",
        runner_time.as_secs_f64(),
        plain_time.as_secs_f64()
    );
    Ok(())
}
