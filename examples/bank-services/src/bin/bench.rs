//! The system's benchmark: requests/s and p50/p99 latency through the
//! gateway, for commands and for queries, with 1 and 2 instances of each
//! service; the same commands run in process by a `Repository` on the
//! same PostgreSQL; and the time from a command's 2xx to the reporting
//! read model showing it.
//!
//! `cargo build --release -p bank-services && target/release/bench [COMMANDS] [QUERIES] [FRESHNESS]`
//! (defaults 3000, 5000, 200). Loopback only; each run in schemas and a
//! JetStream stream of its own.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bank_services::domain::{Account, AccountCommand};
use bank_services::load::{self, percentiles, Load};
use bank_services::system::System;
use evently::postgres::PgEventStore;
use evently::prelude::*;
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .map_err(|_| format!("{a:?} is not a whole number"))
        })
        .collect::<Result<_, _>>()?;
    let commands = args.first().copied().unwrap_or(3_000);
    let queries = args.get(1).copied().unwrap_or(5_000);
    let fresh = args.get(2).copied().unwrap_or(200);
    let quiet = [("RUST_LOG", "warn"), ("LOG_SPANS", "0")];

    let local = in_process(commands).await?;
    println!(
        "{}",
        json!({"name": "in-process Repository", "commands_per_s": local.0, "p50_ms": local.1, "p99_ms": local.2})
    );
    let mut rows = Vec::new();
    for instances in [1, 2] {
        let system = System::start(instances, instances, &quiet).await;
        let mut load = Load::new(system.gateway.clone());
        load.requests = commands;
        let written = load::run(&load, Arc::new(AtomicU64::new(0))).await?;
        let read = load::queries(&load, queries).await?;
        let (fresh_p50, fresh_p99) = freshness(&system, &load, fresh).await?;
        println!(
            "{}",
            json!({"instances": instances, "commands": written, "queries": read,
                   "freshness_p50_ms": fresh_p50, "freshness_p99_ms": fresh_p99})
        );
        rows.push((instances, written, read, fresh_p50, fresh_p99));
    }
    println!();
    println!("| through the gateway (32 clients) | commands/s | p50 ms | p99 ms | queries/s | p50 ms | p99 ms | 2xx → read model p50 / p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (instances, w, r, f50, f99) in rows {
        println!(
            "| {instances} accounts + {instances} reporting | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {f50:.1} / {f99:.1} |",
            w.per_second, w.p50_ms, w.p99_ms, r.per_second, r.p50_ms, r.p99_ms
        );
    }
    println!(
        "| in process, `Repository` (32 tasks) | {:.0} | {:.1} | {:.1} | – | – | – | – |",
        local.0, local.1, local.2
    );
    Ok(())
}

/// The same deposits on a `Repository` in this process: commands/s, p50
/// and p99 ms.
async fn in_process(commands: usize) -> Result<(f64, f64, f64), BoxError> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let store = PgEventStore::builder()
        .schema(format!("es_test_bench_{}", uuid::Uuid::now_v7().simple()))
        .connect(&url)
        .await?;
    let accounts = Repository::<Account, _>::new(store);
    let ids: Vec<String> = (0..50).map(|n| format!("local-{n}")).collect();
    for id in &ids {
        accounts
            .execute(AccountCommand::Open {
                id: id.clone(),
                owner: id.clone(),
            })
            .await?;
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (accounts, ids) = (accounts.clone(), ids.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for n in (t..commands).step_by(32) {
                    let began = Instant::now();
                    let command = AccountCommand::Deposit {
                        id: ids[n % ids.len()].clone(),
                        amount: 1 + n as u64 % 100,
                    };
                    // As through the gateway: with a command id, idempotent.
                    let context = CommandContext::new().with_command_id(uuid::Uuid::now_v7());
                    accounts
                        .execute_with(command, context)
                        .await
                        .map_err(|e| e.to_string())?;
                    latencies.push(began.elapsed());
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(&mut latencies);
    Ok((commands as f64 / seconds, p50, p99))
}

/// `n` deposits one after another; for each, from its 2xx to a query that
/// waits for its version answering: p50 and p99 ms.
async fn freshness(system: &System, load: &Load, n: usize) -> Result<(f64, f64), BoxError> {
    let mut waits = Vec::with_capacity(n);
    for i in 0..n {
        let account = load.account(i % load.accounts);
        let key = format!("{}-fresh-{i}", load.run);
        let reply = system
            .post(
                &format!("/accounts/{account}/deposits"),
                &key,
                json!({"amount": 1}),
            )
            .await;
        let version = reply.body["version"]
            .as_u64()
            .ok_or_else(|| format!("no version in {reply:?}"))?;
        let acknowledged = Instant::now();
        let read = system
            .get(&format!(
                "/accounts/{account}?min_version={version}&timeout_ms=5000"
            ))
            .await;
        if read.status != 200 {
            return Err(format!("the read model did not show version {version}: {read:?}").into());
        }
        waits.push(acknowledged.elapsed());
    }
    Ok(percentiles(&mut waits))
}
