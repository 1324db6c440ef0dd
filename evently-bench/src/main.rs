//! `evently-bench`: the benchmark harness of the `evently` framework.
//!
//! It runs bank-account workloads through the framework (W1 on evently-memory,
//! W2–W7 on evently-postgres) and, in the same process and run, the raw floors
//! written by hand with no framework in between (plain sqlx against an
//! equivalent table in the schema `es_bench_floor`, or a plain `HashMap`),
//! then prints one JSON line per workload and floor (the median of
//! `--runs` runs) and a Markdown table of framework ÷ floor ratios against
//! the targets of issue 6.
//!
//! ```text
//! cargo run --release -p evently-bench -- [--quick] [--runs N] [--only W2,F1,...]
//!     [--database-url URL] [--cache on|off] [--w2-deposits N ...]
//! ```
//!
//! `--quick` divides every size by 20 (concurrency and pools stay) and runs
//! once: it checks that the harness works, in seconds; its figures mean
//! nothing, and neither do those of a debug build. See `BENCHMARKS.md`.

mod domain;
mod floors;
mod nats;
mod report;
mod sqlite;
mod support;
mod transfers;
mod workloads;

use std::collections::BTreeMap;

use clap::{Parser, ValueEnum};

use crate::floors::Layout;
use crate::report::Measurement;
use crate::support::{BoxError, Setup, CACHE_AVAILABLE};

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "evently-bench",
    about = "Workloads of the evently framework beside raw floors"
)]
struct Cli {
    /// Every size divided by 20 and one run: checks the harness, in seconds.
    #[arg(long)]
    quick: bool,
    /// Runs of each workload and floor; the median is reported (default 3,
    /// 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Only these, comma-separated: W1…W8, F1…F5, or one F1 variant such
    /// as F1@W3.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// PostgreSQL (default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/test).
    #[arg(long)]
    database_url: Option<String>,
    /// NATS with JetStream, for W8 and F5 (default: $NATS_URL, else
    /// 127.0.0.1:4222).
    #[arg(long)]
    nats_url: Option<String>,
    /// The repository's cache of live aggregates for W2, W3, W5 and W7
    /// (default on).
    #[arg(long, value_enum)]
    cache: Option<Switch>,
    /// The store's group commit for W2, W3, W5 and W7: 0 (the store's
    /// default) sends each append on its own, N batches concurrent appends
    /// with N committers.
    #[arg(long, default_value_t = 0)]
    group_commit: usize,
    /// Whether the store's appends NOTIFY subscribers, for W2, W3, W5 and
    /// W7 (default on, the store's default).
    #[arg(long, value_enum, default_value = "on")]
    notify: Switch,
    /// The cache for W1 (default on, as in the runtime; off measures the
    /// plain load-decide-append path in memory).
    #[arg(long, value_enum, default_value = "on")]
    w1_cache: Switch,
    #[command(flatten)]
    sizes: SizeArgs,
}

/// Sizes; each defaults to the issue's (÷ 20 with --quick).
#[derive(Debug, clap::Args)]
struct SizeArgs {
    /// W1 accounts [1000].
    #[arg(long)]
    w1_accounts: Option<usize>,
    /// W1 deposits per account [50].
    #[arg(long)]
    w1_deposits: Option<usize>,
    /// W2 deposits to the one account [2000].
    #[arg(long)]
    w2_deposits: Option<usize>,
    /// W3 accounts [64].
    #[arg(long)]
    w3_accounts: Option<usize>,
    /// W3 deposits per account [100].
    #[arg(long)]
    w3_deposits: Option<usize>,
    /// W3 tasks [8].
    #[arg(long)]
    w3_tasks: Option<usize>,
    /// W3 pool [8].
    #[arg(long)]
    w3_pool: Option<u32>,
    /// W4 and F3 events in the stream [10000].
    #[arg(long)]
    w4_events: Option<usize>,
    /// W5 tasks [8].
    #[arg(long)]
    w5_tasks: Option<usize>,
    /// W5 deposits per task [100].
    #[arg(long)]
    w5_deposits: Option<usize>,
    /// W6 and F4 events [100000].
    #[arg(long)]
    w6_events: Option<usize>,
    /// W7 clients, one account each [64].
    #[arg(long)]
    w7_clients: Option<usize>,
    /// W7 deposits per client [50].
    #[arg(long)]
    w7_deposits: Option<usize>,
    /// W7 pool [16].
    #[arg(long)]
    w7_pool: Option<u32>,
    /// F2 transactions of 100 events [100].
    #[arg(long)]
    f2_transactions: Option<usize>,
    /// W8 and F5 events published [20000].
    #[arg(long)]
    w8_events: Option<usize>,
    /// W9 events, one a millisecond [5000].
    #[arg(long)]
    w9_events: Option<usize>,
    /// W10 commands from 8 clients [4000].
    #[arg(long)]
    w10_commands: Option<usize>,
    /// W11 transfers through the process manager [2000].
    #[arg(long)]
    w11_transfers: Option<usize>,
}

/// The resolved sizes.
#[derive(Debug, Clone)]
struct Sizes {
    w1_accounts: usize,
    w1_deposits: usize,
    w2_deposits: usize,
    w3_accounts: usize,
    w3_deposits: usize,
    w3_tasks: usize,
    w3_pool: u32,
    w4_events: usize,
    w5_tasks: usize,
    w5_deposits: usize,
    w6_events: usize,
    w7_clients: usize,
    w7_deposits: usize,
    w7_pool: u32,
    f2_transactions: usize,
    w8_events: usize,
    w9_events: usize,
    w10_commands: usize,
    w11_transfers: usize,
}

impl Sizes {
    fn resolve(args: &SizeArgs, quick: bool) -> Self {
        // Counts shrink in quick mode; concurrency and pools do not.
        let count = |given: Option<usize>, full: usize, min: usize| {
            given.unwrap_or(if quick { (full / 20).max(min) } else { full })
        };
        Sizes {
            w1_accounts: count(args.w1_accounts, 1_000, 1),
            w1_deposits: args.w1_deposits.unwrap_or(50),
            w2_deposits: count(args.w2_deposits, 2_000, 2),
            w3_accounts: args.w3_accounts.unwrap_or(64),
            w3_deposits: count(args.w3_deposits, 100, 1),
            w3_tasks: args.w3_tasks.unwrap_or(8).max(1),
            w3_pool: args.w3_pool.unwrap_or(8).max(1),
            w4_events: count(args.w4_events, 10_000, 2),
            w5_tasks: args.w5_tasks.unwrap_or(8).max(1),
            w5_deposits: count(args.w5_deposits, 100, 1),
            w6_events: count(args.w6_events, 100_000, 100),
            w7_clients: args.w7_clients.unwrap_or(64).max(1),
            w7_deposits: count(args.w7_deposits, 50, 1),
            w7_pool: args.w7_pool.unwrap_or(16).max(1),
            f2_transactions: count(args.f2_transactions, 100, 1),
            w8_events: count(args.w8_events, 20_000, 100),
            w9_events: count(args.w9_events, 5_000, 100),
            w10_commands: count(args.w10_commands, 4_000, 80),
            w11_transfers: count(args.w11_transfers, 2_000, 40),
        }
    }
}

/// What can run, in groups whose members alternate run by run (floor, then
/// framework), so drift on the machine hits both alike.
const GROUPS: &[&[&str]] = &[
    &["F1@W1", "W1"],
    &["F1@W2", "W2"],
    &["F1@W3", "W3"],
    &["F3", "W4"],
    &["F1@W5", "W5"],
    &["F4", "W6"],
    &["F1@W7", "W7"],
    &["F2"],
    &["F5", "W8"],
    &["W9"],
    &["W10-local", "W10-1", "W10-2", "W10-3"],
    &["W11"],
    &["SF@W2", "S-W2"],
    &["SF@W3", "S-W3"],
    &["S-F3", "S-W4"],
    &["SF@W5", "S-W5"],
    &["S-F4", "S-W6"],
];

/// Each framework workload and the floor it is measured against; their
/// ratio is taken run by run (the floor runs just before), then the median.
const PAIRS: &[(&str, &str)] = &[
    ("W1", "F1@W1"),
    ("W2", "F1@W2"),
    ("W3", "F1@W3"),
    ("W4", "F3"),
    ("W5", "F1@W5"),
    ("W6", "F4"),
    ("W6-view", "F4"),
    ("W7", "F1@W7"),
    ("W8", "F5"),
    ("W10-1", "W10-local"),
    ("W10-2", "W10-local"),
    ("W10-3", "W10-local"),
    ("S-W2", "SF@W2"),
    ("S-W3", "SF@W3"),
    ("S-W4", "S-F3"),
    ("S-W5", "SF@W5"),
    ("S-W6", "S-F4"),
    ("S-W6-view", "S-F4"),
];

/// Loads timed per run in W4 and F3 (after one warm-up load).
const REPLAY_LOADS: usize = 3;
/// Loads per SQLite replay run: a load takes 15–30 ms, so three would
/// measure mostly noise.
const SQLITE_REPLAY_LOADS: usize = 20;
/// Loads from a snapshot timed per run in W4.
const SNAPSHOT_LOADS: usize = 100;

/// Whether `--only` selects `item`: by its name, or `F1` for all F1@…
fn selected(only: &[String], item: &str) -> bool {
    only.is_empty()
        || only.iter().any(|o| {
            let o = o.trim();
            o.eq_ignore_ascii_case(item)
                || item
                    .split_once(['@', '-'])
                    .is_some_and(|(family, _)| o.eq_ignore_ascii_case(family))
        })
}

#[derive(Clone)]
struct Context {
    url: String,
    nats_url: String,
    sizes: Sizes,
    setup: Setup,
    w1_cache: bool,
}

/// One measurement, as a run's result.
fn one(m: Measurement) -> Result<Vec<Measurement>, BoxError> {
    Ok(vec![m])
}

/// One run of one item; W4 gives two measurements.
async fn run_item(ctx: Context, item: String) -> Result<Vec<Measurement>, BoxError> {
    let item = item.as_str();
    let url = ctx.url.as_str();
    let s = &ctx.sizes;
    match item {
        "F1@W1" => one(floors::f1_hashmap(s.w1_accounts, s.w1_deposits)?),
        "W1" => one(workloads::w1(s.w1_accounts, s.w1_deposits, ctx.w1_cache).await?),
        "F1@W2" => {
            let layout = Layout::Distinct {
                streams_per_task: 1,
                per_stream: s.w2_deposits,
            };
            one(floors::f1(url, item, 1, 1, layout).await?)
        }
        "W2" => one(workloads::w2(url, s.w2_deposits, ctx.setup).await?),
        "F1@W3" => {
            let layout = Layout::Distinct {
                streams_per_task: s.w3_accounts.div_ceil(s.w3_tasks),
                per_stream: s.w3_deposits,
            };
            one(floors::f1(url, item, s.w3_tasks, s.w3_pool, layout).await?)
        }
        "W3" => one(workloads::concurrent(
            url,
            "W3",
            "es_bench_w3",
            s.w3_accounts,
            s.w3_deposits,
            s.w3_tasks,
            s.w3_pool,
            ctx.setup,
        )
        .await?),
        "F3" => one(floors::f3(url, s.w4_events, REPLAY_LOADS).await?),
        "W4" => workloads::w4(url, s.w4_events, REPLAY_LOADS, SNAPSHOT_LOADS).await,
        "F1@W5" => {
            let layout = Layout::Shared {
                per_task: s.w5_deposits,
            };
            one(floors::f1(url, item, s.w5_tasks, 1, layout).await?)
        }
        "W5" => one(workloads::w5(url, s.w5_tasks, s.w5_deposits, ctx.setup).await?),
        "F4" => one(floors::f4(url, s.w6_events).await?),
        "W6" => workloads::w6(url, s.w6_events).await,
        "F1@W7" => {
            let layout = Layout::Distinct {
                streams_per_task: 1,
                per_stream: s.w7_deposits,
            };
            one(floors::f1(url, item, s.w7_clients, s.w7_pool, layout).await?)
        }
        "W7" => one(workloads::concurrent(
            url,
            "W7",
            "es_bench_w7",
            s.w7_clients,
            s.w7_deposits,
            s.w7_clients,
            s.w7_pool,
            ctx.setup,
        )
        .await?),
        "F2" => one(floors::f2(url, s.f2_transactions, 100).await?),
        "F5" => one(nats::f5(&ctx.nats_url, s.w8_events).await?),
        "W8" => one(nats::w8(url, &ctx.nats_url, s.w8_events, ctx.setup).await?),
        "W9" => one(nats::w9(url, &ctx.nats_url, s.w9_events, ctx.setup).await?),
        "W10-local" => one(nats::w10(url, &ctx.nats_url, s.w10_commands, 0, ctx.setup).await?),
        "W10-1" => one(nats::w10(url, &ctx.nats_url, s.w10_commands, 1, ctx.setup).await?),
        "W10-2" => one(nats::w10(url, &ctx.nats_url, s.w10_commands, 2, ctx.setup).await?),
        "W10-3" => one(nats::w10(url, &ctx.nats_url, s.w10_commands, 3, ctx.setup).await?),
        "W11" => one(transfers::w11(url, s.w11_transfers, ctx.setup).await?),
        "SF@W2" => one(sqlite::floor_distinct(item, 1, 1, s.w2_deposits).await?),
        "S-W2" => one(sqlite::w2(s.w2_deposits).await?),
        "SF@W3" => one(sqlite::floor_distinct(
            item,
            s.w3_tasks,
            s.w3_accounts.div_ceil(s.w3_tasks),
            s.w3_deposits,
        )
        .await?),
        "S-W3" => one(sqlite::w3(s.w3_accounts, s.w3_deposits, s.w3_tasks).await?),
        "S-F3" => one(sqlite::f3(s.w4_events, SQLITE_REPLAY_LOADS).await?),
        "S-W4" => one(sqlite::w4(s.w4_events, SQLITE_REPLAY_LOADS).await?),
        "SF@W5" => one(sqlite::floor_shared(item, s.w5_tasks, s.w5_deposits).await?),
        "S-W5" => one(sqlite::w5(s.w5_tasks, s.w5_deposits).await?),
        "S-F4" => one(sqlite::f4(s.w6_events).await?),
        "S-W6" => sqlite::w6(s.w6_events).await,
        other => Err(format!("no such workload or floor: {other}").into()),
    }
}

#[tokio::main]
async fn main() {
    if let Err(error) = run(Cli::parse()).await {
        eprintln!("evently-bench: {error}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let known: Vec<&str> = GROUPS.iter().flat_map(|g| g.iter().copied()).collect();
    for o in &cli.only {
        let o = o.trim();
        if !known
            .iter()
            .any(|k| selected(std::slice::from_ref(&o.to_owned()), k))
        {
            return Err(format!("--only {o}: not one of {}", known.join(", ")).into());
        }
    }
    let cache = match cli.cache {
        Some(Switch::On) if !CACHE_AVAILABLE => {
            return Err("--cache on: this build has no Repository::with_cache".into())
        }
        Some(switch) => switch == Switch::On,
        None => CACHE_AVAILABLE,
    };
    let runs = cli.runs.unwrap_or(if cli.quick { 1 } else { 3 }).max(1);
    let url = cli
        .database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let ctx = Context {
        url,
        nats_url: cli
            .nats_url
            .or_else(|| std::env::var("NATS_URL").ok())
            .unwrap_or_else(|| "127.0.0.1:4222".into()),
        sizes: Sizes::resolve(&cli.sizes, cli.quick),
        setup: Setup {
            cache,
            group_commit: cli.group_commit,
            notify: cli.notify == Switch::On,
        },
        w1_cache: cli.w1_cache == Switch::On,
    };
    if ctx.w1_cache && !CACHE_AVAILABLE {
        return Err("--w1-cache on: this build has no Repository::with_cache".into());
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "evently-bench: {profile} build, {runs} run(s), {:?}, {}sizes {:?}",
        ctx.setup,
        if cli.quick { "quick, " } else { "" },
        ctx.sizes
    );
    if profile == "debug" || cli.quick {
        eprintln!("evently-bench: figures of a debug build or of --quick mean nothing; only a full release run is a measurement");
    }

    let (load_before, others_before) = (
        support::load_average(),
        support::other_active_sessions(&ctx.url).await?,
    );
    let mut results: BTreeMap<String, Measurement> = BTreeMap::new();
    for group in GROUPS {
        let items: Vec<&str> = group
            .iter()
            .copied()
            .filter(|item| selected(&cli.only, item))
            .collect();
        if items.is_empty() {
            continue;
        }
        let mut samples: BTreeMap<String, Vec<Measurement>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for r in 0..runs {
            for item in &items {
                eprintln!("evently-bench: {item}, run {}/{runs}", r + 1);
                // On a worker thread of the runtime, like the tasks the
                // workloads spawn: `block_on`'s thread would add a thread
                // hop to every reply of a workload that runs inline.
                let (task_ctx, task_item) = (ctx.clone(), item.to_string());
                let measured = tokio::spawn(run_item(task_ctx, task_item)).await??;
                for mut m in measured {
                    m.extra.push(("loadavg_1m", support::load_average().into()));
                    if !order.contains(&m.name) {
                        order.push(m.name.clone());
                    }
                    samples.entry(m.name.clone()).or_default().push(m);
                }
            }
        }
        let mut paired: BTreeMap<&str, (&str, Vec<f64>)> = BTreeMap::new();
        for &(framework, floor) in PAIRS {
            if let (Some(fw), Some(fl)) = (samples.get(framework), samples.get(floor)) {
                let ratios: Vec<f64> = fw
                    .iter()
                    .zip(fl)
                    .map(|(fw, fl)| fw.ops_per_s() / fl.ops_per_s())
                    .collect();
                paired.insert(framework, (floor, ratios));
            }
        }
        for name in order {
            let runs_of = samples.remove(&name).unwrap_or_default();
            let n = runs_of.len();
            if let Some(mut m) = report::median(runs_of) {
                if let Some((floor, ratios)) = paired.remove(m.name.as_str()) {
                    let all: Vec<serde_json::Value> =
                        ratios.iter().map(|r| report::round(*r, 3).into()).collect();
                    m = m
                        .with("floor", floor)
                        .with("ratio", report::round(report::median_of(&ratios), 3))
                        .with("ratios_all", all);
                }
                if m.name == "W6" {
                    // Memory flat in the number of events: the same
                    // catch-up at a tenth of the size, once.
                    let tenth = (ctx.sizes.w6_events / 10).max(100);
                    eprintln!("evently-bench: W6 at {tenth} events, for its peak RSS");
                    let small = workloads::w6(&ctx.url, tenth).await?.swap_remove(0);
                    m = m
                        .with("events_tenth", tenth)
                        .with("rss_before_kib_tenth", small.integer("rss_before_kib"))
                        .with("peak_rss_kib_tenth", small.integer("peak_rss_kib"));
                }
                println!("{}", report::json_line(&m, n));
                results.insert(m.name.clone(), m);
            }
        }
    }
    let (load_after, others_after) = (
        support::load_average(),
        support::other_active_sessions(&ctx.url).await?,
    );
    println!();
    println!(
        "{profile} build, {runs} run(s){}; W2, W3, W5, W7 with cache {}, group commit {}, \
         NOTIFY {}; load average {load_before:.2} before, {load_after:.2} after; \
         other active PostgreSQL sessions {others_before} before, {others_after} after",
        if cli.quick { ", --quick" } else { "" },
        if cache { "on" } else { "off" },
        match cli.group_commit {
            0 => "off".to_owned(),
            n => format!("{n} committers"),
        },
        if cli.notify == Switch::On {
            "on"
        } else {
            "off"
        },
    );
    println!();
    println!("{}", report::table(&results));
    // The schemas of the last runs go (each run starts by dropping its own).
    for schema in SCHEMAS {
        support::drop_schema(&ctx.url, schema).await?;
    }
    Ok(())
}

/// Every schema the harness creates.
const SCHEMAS: &[&str] = &[
    floors::SCHEMA,
    "es_bench_w2",
    "es_bench_w3",
    "es_bench_w4",
    "es_bench_w5",
    "es_bench_w6",
    "es_bench_w7",
];
