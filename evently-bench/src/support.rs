//! What every workload needs: fresh schemas, warm pools, the cache switch
//! and the process's memory figures.

use std::time::Duration;

use evently::{EventStore, Repository};
use evently_postgres::sqlx::postgres::{PgPool, PgPoolOptions};
use evently_postgres::sqlx::{self, Connection, Executor, PgConnection};
use evently_postgres::PgEventStore;

use crate::domain::Account;

/// Errors of the harness: any of them ends the run with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Gives a repository the cache of live aggregates (the runtime's default)
/// with `capacity` when `on`, or none: a warm command is then one round
/// trip (the append), and commands to one aggregate run one at a time in
/// this process.
pub fn with_cache<S: EventStore>(
    repository: Repository<Account, S>,
    capacity: usize,
    on: bool,
) -> Repository<Account, S> {
    if on {
        repository.with_cache(capacity)
    } else {
        repository.without_cache()
    }
}

/// Whether this build has `Repository::with_cache` (the `--cache` default).
pub const CACHE_AVAILABLE: bool = true;

/// Drops `schema` (and everything in it).
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), BoxError> {
    let mut admin = PgConnection::connect(url).await?;
    admin
        .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
        .await?;
    admin.close().await?;
    Ok(())
}

/// How the command workloads (W2, W3, W5, W7) set up the framework.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// The repository's cache of live aggregates.
    pub cache: bool,
    /// The store's group commit: 0 for off, else its committers.
    pub group_commit: usize,
    /// Whether the store's appends NOTIFY subscribers.
    pub notify: bool,
}

impl Setup {
    /// The store as it comes (no group commit, NOTIFY on), no cache.
    pub const STORE_DEFAULTS: Setup = Setup {
        cache: false,
        group_commit: 0,
        notify: true,
    };

    /// Adds the setup to a measurement's fields.
    pub fn describe(self, m: crate::report::Measurement) -> crate::report::Measurement {
        m.with("cache", self.cache)
            .with("group_commit", self.group_commit)
            .with("notify", self.notify)
    }
}

/// A store in a fresh schema, its pool of `pool` connections all open.
pub async fn fresh_store(
    url: &str,
    schema: &str,
    pool: u32,
    setup: Setup,
) -> Result<PgEventStore, BoxError> {
    drop_schema(url, schema).await?;
    let store = PgEventStore::builder()
        .schema(schema)
        .max_connections(pool)
        .group_commit(setup.group_commit)
        .notify(setup.notify)
        .connect(url)
        .await?;
    warm(store.pool(), pool).await?;
    Ok(store)
}

/// A plain pool of `size` connections, all open.
pub async fn plain_pool(url: &str, size: u32) -> Result<PgPool, BoxError> {
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await?;
    warm(&pool, size).await?;
    Ok(pool)
}

/// Opens `n` connections of the pool before the clock starts, so no timed
/// part pays for connecting.
pub async fn warm(pool: &PgPool, n: u32) -> Result<(), BoxError> {
    let mut held = Vec::with_capacity(n as usize);
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    drop(held);
    Ok(())
}

/// `VACUUM ANALYZE` a table, so that no timed reader pays for hint bits or
/// guesses without statistics.
pub async fn vacuum(pool: &PgPool, table: &str) -> Result<(), BoxError> {
    let mut conn = pool.acquire().await?;
    conn.execute(format!("VACUUM ANALYZE {table}").as_str())
        .await?;
    Ok(())
}

/// A field of `/proc/self/status` in KiB (0 where there is none).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// The process's peak resident memory since start or the last
/// [`reset_peak_rss`] (VmHWM).
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// The process's resident memory now (VmRSS).
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// Resets VmHWM to the current RSS (Linux: `5` into `/proc/self/clear_refs`),
/// so the next [`peak_rss_kib`] is the peak of what runs in between.
/// Returns whether the kernel allowed it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The 1-minute load average (`/proc/loadavg`), to tell a run disturbed by
/// other work on the machine.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Other sessions of the server that are running a query now (someone
/// else's benchmark or tests disturb every figure).
pub async fn other_active_sessions(url: &str) -> Result<i64, BoxError> {
    let mut conn = PgConnection::connect(url).await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND state <> 'idle' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(n)
}
