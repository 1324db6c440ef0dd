//! What group commit buys concurrent writers: appends per second from
//! `TASKS` tasks on a pool of `TASKS`, each appending one event at a time
//! to its own streams with an exact expected version, with group commit
//! off and on, and beside them the raw floor (one INSERT per transaction,
//! the version enforced by a unique constraint), all in one run.
//!
//! `cargo bench -p evently-postgres --bench group_commit [-- APPENDS TASKS]`
//! (defaults 4000 appends, 8 tasks).

use std::time::Instant;

mod support;

use evently_postgres::{sqlx, PgEventStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let appends = args.first().copied().unwrap_or(4000);
    let tasks = args.get(1).copied().unwrap_or(8);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sqlx::PgPool::connect(&url).await?;
    println!("{appends} appends of 1 event, {tasks} tasks, pool of {tasks}");
    let mut rows = Vec::new();
    let variants = [
        ("group commit off", 0, true),
        ("group commit, 2 committers", 2, true),
        ("group commit, 4 committers", 4, true),
        ("group commit off, NOTIFY off", 0, false),
        ("group commit, 2 committers, NOTIFY off", 2, false),
    ];
    for (label, committers, notify) in variants {
        let schema = format!("es_bench_group_{committers}_{notify}");
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&admin)
            .await?;
        let store = PgEventStore::builder()
            .schema(schema)
            .max_connections(tasks as u32 + committers as u32)
            .group_commit(committers)
            .notify(notify)
            .connect(&url)
            .await?;
        let rate = support::concurrent_appends(&store, "bench", appends, tasks).await?;
        rows.push((label.to_owned(), rate));
    }
    let floor = floor(&admin, &url, appends, tasks).await?;
    rows.push(("raw floor F1 (INSERT per transaction)".to_owned(), floor));
    println!("| appends | per second | vs floor |\n|---|---|---|");
    for (label, rate) in &rows {
        println!("| {label} | {rate:.0} | {:.2} |", rate / floor);
        println!("{{\"bench\":\"group_commit\",\"variant\":\"{label}\",\"per_s\":{rate:.0},\"ratio_to_floor\":{:.3}}}", rate / floor);
    }
    Ok(())
}

async fn floor(
    admin: &sqlx::PgPool,
    url: &str,
    appends: usize,
    tasks: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    sqlx::raw_sql(
        "DROP SCHEMA IF EXISTS es_bench_group_floor CASCADE; CREATE SCHEMA es_bench_group_floor;
         CREATE TABLE es_bench_group_floor.events (position bigserial PRIMARY KEY, stream_id text NOT NULL,
           version bigint NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL, metadata jsonb NOT NULL,
           UNIQUE (stream_id, version));",
    )
    .execute(admin)
    .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(tasks as u32)
        .connect(url)
        .await?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            for n in 0..appends / tasks {
                sqlx::query("INSERT INTO es_bench_group_floor.events (stream_id, version, event_type, payload, metadata) VALUES ($1, $2, 'Deposited', $3::jsonb, '{}')")
                    .bind(format!("bench-{task}"))
                    .bind(n as i64 + 1)
                    .bind(format!("{{\"amount\":{n}}}"))
                    .execute(&pool)
                    .await
                    .expect("insert");
            }
        }));
    }
    for handle in handles {
        handle.await?;
    }
    Ok((appends / tasks * tasks) as f64 / started.elapsed().as_secs_f64())
}
