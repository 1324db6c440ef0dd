//! The bank-account workloads of `evently-bench` (W1–W5), run on evently
//! and on its peers in one process against one PostgreSQL, interleaved run
//! by run: cqrs-es 0.5 with postgres-es (its default event store, and its
//! snapshot store), esrs 0.18 and disintegrate 4.
//!
//! Each framework is used the way its documentation shows, with its
//! defaults: the code a user would write. What each one does on a
//! conflict is what its users have to write too (cqrs-es, esrs and
//! disintegrate leave the retry to the caller; evently retries itself).

mod cqrs;
mod disintegrate_bank;
mod esrs_bank;
mod evently_bank;

use std::future::Future;
use std::time::{Duration, Instant};

use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One framework's bank: open, deposit (retrying conflicts as its users
/// must), and a full load of an account's balance.
pub trait Bank: Clone + Send + Sync + Sized + 'static {
    /// The framework's name in the table.
    const NAME: &'static str;

    /// A bank over a fresh, empty schema, with a pool of `pool` connections
    /// (all open before the clock starts).
    fn setup(
        url: &str,
        schema: &str,
        pool: u32,
    ) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// Opens an account.
    fn open(&self, id: &str) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Deposits into an account; returns the attempts it took.
    fn deposit(&self, id: &str, amount: u64) -> impl Future<Output = Result<u32, BoxError>> + Send;

    /// Loads the account from its events (no cache, no snapshot) and
    /// returns its balance.
    fn balance(&self, id: &str) -> impl Future<Output = Result<u64, BoxError>> + Send;

    /// Stores `deposits` deposits after an open, as fast as the framework
    /// allows (W4's setup, untimed).
    fn seed(&self, id: &str, deposits: usize) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The amount of the `i`-th deposit (as in `evently-bench`).
pub fn amount(i: usize) -> u64 {
    (i % 97) as u64 + 1
}

#[derive(Parser, Debug)]
#[command(about = "evently beside cqrs-es, esrs and disintegrate on the same workloads")]
struct Cli {
    /// PostgreSQL (default: DATABASE_URL or postgres://postgres@127.0.0.1:5432/test).
    #[arg(long)]
    database_url: Option<String>,
    /// Runs of each workload per framework.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Every count ÷ 20, one run: checks that the harness works.
    #[arg(long)]
    quick: bool,
    /// Only these workloads (W1,…,W5).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Clone, Copy)]
struct Sizes {
    w1_accounts: usize,
    w1_deposits: usize,
    w2_deposits: usize,
    w3_accounts: usize,
    w3_deposits: usize,
    w3_tasks: usize,
    w4_events: usize,
    w5_tasks: usize,
    w5_deposits: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        let d = if quick { 20 } else { 1 };
        Sizes {
            w1_accounts: 1_000 / d,
            w1_deposits: 50,
            w2_deposits: 2_000 / d,
            w3_accounts: 64,
            w3_deposits: 100 / d,
            w3_tasks: 8,
            w4_events: 10_000 / d,
            w5_tasks: 8,
            w5_deposits: 100 / d,
        }
    }
}

/// One figure: a framework on a workload, ops/s (W4: ms per load).
struct Figure {
    workload: &'static str,
    framework: &'static str,
    runs: Vec<f64>,
    unit: &'static str,
}

impl Figure {
    fn median(&self) -> f64 {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let url = cli
        .database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let runs = if cli.quick { 1 } else { cli.runs.max(1) };
    let sizes = Sizes::new(cli.quick);
    let wanted = |w: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == w);
    let mut figures: Vec<Figure> = Vec::new();
    let mut record = |workload, framework, unit, value: f64| {
        match figures
            .iter_mut()
            .find(|f| f.workload == workload && f.framework == framework)
        {
            Some(f) => f.runs.push(value),
            None => figures.push(Figure {
                workload,
                framework,
                runs: vec![value],
                unit,
            }),
        }
        println!(
            "{{\"workload\":\"{workload}\",\"framework\":\"{framework}\",\"{unit}\":{value:.3}}}"
        );
    };

    for run in 1..=runs {
        eprintln!("evently-peers: run {run}/{runs}");
        if wanted("W1") {
            record(
                "W1",
                "evently",
                "ops_per_s",
                evently_bank::w1(sizes.w1_accounts, sizes.w1_deposits).await?,
            );
            record(
                "W1",
                "cqrs-es",
                "ops_per_s",
                cqrs::w1(sizes.w1_accounts, sizes.w1_deposits).await?,
            );
        }
        macro_rules! each {
            ($w:literal, $f:ident, $unit:literal) => {
                if wanted($w) {
                    record(
                        $w,
                        evently_bank::EventlyBank::NAME,
                        $unit,
                        $f::<evently_bank::EventlyBank>(&url, sizes).await?,
                    );
                    record(
                        $w,
                        cqrs::CqrsBank::<false>::NAME,
                        $unit,
                        $f::<cqrs::CqrsBank<false>>(&url, sizes).await?,
                    );
                    record(
                        $w,
                        cqrs::CqrsBank::<true>::NAME,
                        $unit,
                        $f::<cqrs::CqrsBank<true>>(&url, sizes).await?,
                    );
                    record(
                        $w,
                        esrs_bank::EsrsBank::NAME,
                        $unit,
                        $f::<esrs_bank::EsrsBank>(&url, sizes).await?,
                    );
                    record(
                        $w,
                        disintegrate_bank::DisintegrateBank::NAME,
                        $unit,
                        $f::<disintegrate_bank::DisintegrateBank>(&url, sizes).await?,
                    );
                }
            };
        }
        each!("W2", w2, "ops_per_s");
        each!("W3", w3, "ops_per_s");
        each!("W4", w4, "ms_per_load");
        each!("W5", w5, "ops_per_s");
    }

    println!();
    println!("Lines of the bank's domain (events, commands, errors, decisions, state; no imports, blank lines or comments):");
    for (framework, source) in SOURCES {
        println!("  {framework}: {}", domain_lines(source));
    }
    println!();
    println!(
        "{runs} run(s), medians; W4 in ms per full load of {} events, the rest commands/s",
        sizes.w4_events + 1
    );
    println!();
    println!("| workload | framework | median | runs |");
    println!("|---|---|---:|---|");
    for f in &figures {
        let all: Vec<String> = f.runs.iter().map(|r| format!("{r:.1}")).collect();
        println!(
            "| {} | {} | {:.1} {} | {} |",
            f.workload,
            f.framework,
            f.median(),
            f.unit,
            all.join(", ")
        );
    }
    Ok(())
}

/// Drops and creates `schema`; returns a pool whose connections work in it.
pub async fn schema_pool(url: &str, schema: &str, size: u32) -> Result<PgPool, BoxError> {
    reset_schema(url, schema, true).await?;
    let path = format!("SET search_path TO {schema}");
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .acquire_timeout(Duration::from_secs(120))
        .after_connect(move |conn, _| {
            let path = path.clone();
            Box::pin(async move {
                conn.execute(path.as_str()).await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    let mut held = Vec::new();
    for _ in 0..size {
        held.push(pool.acquire().await?);
    }
    drop(held);
    Ok(pool)
}

/// Each framework's module, for [`domain_lines`].
const SOURCES: [(&str, &str); 4] = [
    ("evently", include_str!("evently_bank.rs")),
    ("cqrs-es", include_str!("cqrs.rs")),
    ("esrs", include_str!("esrs_bank.rs")),
    ("disintegrate", include_str!("disintegrate_bank.rs")),
];

/// The lines between a module's `// domain: begin` and `// domain: end`
/// markers that are neither blank nor comments (the source is rustfmt's).
fn domain_lines(source: &str) -> usize {
    source
        .lines()
        .skip_while(|l| !l.starts_with("// domain: begin"))
        .take_while(|l| !l.starts_with("// domain: end"))
        .filter(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with("//")
        })
        .count()
}

/// Drops `schema` and, if `create`, creates it empty.
pub async fn reset_schema(url: &str, schema: &str, create: bool) -> Result<(), BoxError> {
    let mut admin = PgConnection::connect(url).await?;
    admin
        .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
        .await?;
    if create {
        admin
            .execute(format!("CREATE SCHEMA {schema}").as_str())
            .await?;
    }
    admin.close().await?;
    Ok(())
}

fn schema_name<B: Bank>(workload: &str) -> String {
    format!(
        "es_peers_{}_{}",
        B::NAME
            .replace(['-', ' ', '(', ')'], "_")
            .replace("__", "_")
            .trim_end_matches('_'),
        workload.to_lowercase()
    )
}

async fn check<B: Bank>(bank: &B, id: &str, expected: u64) -> Result<(), BoxError> {
    let balance = bank.balance(id).await?;
    if balance != expected {
        return Err(format!(
            "{}: account {id} holds {balance}, expected {expected}",
            B::NAME
        )
        .into());
    }
    Ok(())
}

/// W2: deposits to one account, one after the other, pool 1.
async fn w2<B: Bank>(url: &str, s: Sizes) -> Result<f64, BoxError> {
    let bank = B::setup(url, &schema_name::<B>("w2"), 1).await?;
    bank.open("w2").await?;
    let started = Instant::now();
    for d in 0..s.w2_deposits {
        bank.deposit("w2", amount(d)).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    check(&bank, "w2", (0..s.w2_deposits).map(amount).sum()).await?;
    Ok(s.w2_deposits as f64 / seconds)
}

/// W3: 64 accounts × deposits from 8 tasks (each owns 8 accounts, round
/// robin), pool 8.
async fn w3<B: Bank>(url: &str, s: Sizes) -> Result<f64, BoxError> {
    let bank = B::setup(url, &schema_name::<B>("w3"), s.w3_tasks as u32).await?;
    for a in 0..s.w3_accounts {
        bank.open(&format!("w3-{a}")).await?;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..s.w3_tasks {
        let bank = bank.clone();
        tasks.push(tokio::spawn(async move {
            let mine: Vec<String> = (t..s.w3_accounts)
                .step_by(s.w3_tasks)
                .map(|a| format!("w3-{a}"))
                .collect();
            for d in 0..s.w3_deposits {
                for id in &mine {
                    bank.deposit(id, amount(d)).await?;
                }
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let each: u64 = (0..s.w3_deposits).map(amount).sum();
    for a in 0..s.w3_accounts {
        check(&bank, &format!("w3-{a}"), each).await?;
    }
    Ok((s.w3_accounts * s.w3_deposits) as f64 / seconds)
}

/// W4: one account of an open and `w4_events` deposits, loaded in full
/// three times; ms per load (the median of the three).
async fn w4<B: Bank>(url: &str, s: Sizes) -> Result<f64, BoxError> {
    let bank = B::setup(url, &schema_name::<B>("w4"), 1).await?;
    bank.seed("w4", s.w4_events).await?;
    let expected: u64 = (0..s.w4_events).map(amount).sum();
    // One untimed load: the first read after a bulk insert sets hint bits.
    check(&bank, "w4", expected).await?;
    let mut loads = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let balance = bank.balance("w4").await?;
        loads.push(started.elapsed().as_secs_f64() * 1000.0);
        if balance != expected {
            return Err(format!("{}: W4 balance {balance}, expected {expected}", B::NAME).into());
        }
    }
    loads.sort_by(f64::total_cmp);
    Ok(loads[1])
}

/// W5: 8 tasks deposit into one account, pool 1, retrying conflicts; no
/// deposit may be lost.
async fn w5<B: Bank>(url: &str, s: Sizes) -> Result<f64, BoxError> {
    let bank = B::setup(url, &schema_name::<B>("w5"), 1).await?;
    bank.open("w5").await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..s.w5_tasks {
        let bank = bank.clone();
        tasks.push(tokio::spawn(async move {
            for d in 0..s.w5_deposits {
                bank.deposit("w5", amount(d)).await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let each: u64 = (0..s.w5_deposits).map(amount).sum();
    check(&bank, "w5", each * s.w5_tasks as u64).await?;
    Ok((s.w5_tasks * s.w5_deposits) as f64 / seconds)
}

/// Retries `attempt` while `is_conflict` says its error is a conflict, at
/// most 1,000 times (W5's eight writers on one stream).
pub async fn retrying<T, E, F, Fut>(
    mut attempt: F,
    is_conflict: impl Fn(&E) -> bool,
) -> Result<(T, u32), E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Err(e) if is_conflict(&e) && attempts < 1_000 => continue,
            other => return other.map(|v| (v, attempts)),
        }
    }
}
