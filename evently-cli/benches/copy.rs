//! What `es export`, `es import` and `es verify` cost: N events (default
//! 100,000) over 1,000 streams, appended in rounds so that neighbouring
//! events belong to different streams (the worst case for import, which
//! writes one statement per run of a stream), then, in the same run:
//!
//! - export to a file (the library call `es export` makes), timed;
//! - import of that file into a fresh schema (`es import`), timed;
//! - a second import of the same file (every event already there);
//! - verify of the copy against the file (`es verify`).
//!
//! Prints events/s for each, and the file's size.
//!
//! `cargo bench -p evently-cli --bench copy [-- N]` (`DATABASE_URL` as for
//! the tests).

use std::time::Instant;

use evently_cli::{export, import, verify, ExportFilter, ProgressBar};
use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamAppend, StreamId,
};
use evently_postgres::PgEventStore;

const SOURCE: &str = "es_bench_copy_src";
const TARGET: &str = "es_bench_copy_dst";
const STREAMS: usize = 1_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::PgPool::connect(&url).await?;
    for s in [SOURCE, TARGET] {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
            .execute(&pool)
            .await?;
    }
    let source = PgEventStore::builder().schema(SOURCE).connect(&url).await?;
    let started = Instant::now();
    for round in 0..n.div_ceil(STREAMS) {
        let appends: Vec<StreamAppend> = (0..STREAMS.min(n - round * STREAMS))
            .map(|s| {
                let payload = Payload::from_json(format!(
                    r#"{{"account":"acct-{s:04}","amount":{},"currency":"EUR","note":"round {round}"}}"#,
                    round * 7 + s
                ))
                .expect("JSON");
                let metadata = Metadata::new().with_correlation_id(uuid::Uuid::now_v7());
                StreamAppend::new(
                    StreamId::from(format!("account-{s:04}").as_str()),
                    ExpectedVersion::Exact(round as u64),
                    vec![NewEvent::raw("Deposited", 1, payload, metadata)],
                )
            })
            .collect();
        source.append_atomic(appends).await?;
    }
    println!(
        "{n} events over {STREAMS} streams appended in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    sqlx::query(&format!("ANALYZE {SOURCE}.events"))
        .execute(&pool)
        .await?;

    let file = std::env::temp_dir().join(format!("es-bench-copy-{}.jsonl", std::process::id()));
    let hidden = ProgressBar::hidden();

    let t = Instant::now();
    let mut out = std::fs::File::create(&file)?;
    let written = export(
        &source,
        "bench",
        &ExportFilter::default(),
        &mut out,
        &hidden,
    )
    .await?;
    out.sync_all()?;
    let export_s = t.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file)?.len();

    let target = PgEventStore::builder().schema(TARGET).connect(&url).await?;
    let t = Instant::now();
    let first = import(&target, &file, &hidden).await?;
    let import_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let again = import(&target, &file, &hidden).await?;
    let again_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let checked = verify(&target, Some(&file), &hidden).await?;
    let verify_s = t.elapsed().as_secs_f64();
    assert_eq!(written as usize, n);
    assert_eq!(first.imported as usize, n);
    assert_eq!(again.skipped as usize, n);
    assert!(checked.differences.is_empty(), "{:?}", checked.differences);

    println!("| step | events | seconds | events/s |");
    println!("|---|---:|---:|---:|");
    for (step, s) in [
        ("export (PostgreSQL → file)", export_s),
        ("import (file → fresh schema)", import_s),
        ("import again (all already there)", again_s),
        ("verify (schema against file)", verify_s),
    ] {
        println!("| {step} | {n} | {s:.2} | {:.0} |", n as f64 / s);
    }
    println!(
        "file: {:.1} MB, {:.0} bytes an event",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
    std::fs::remove_file(&file)?;
    for s in [SOURCE, TARGET] {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
            .execute(&pool)
            .await?;
    }
    Ok(())
}
