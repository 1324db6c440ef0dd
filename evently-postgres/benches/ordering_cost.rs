//! What the gap-free global order costs writers: appends per second through
//! `append_events()` with positions from the transaction id (what the store
//! does) and, in the same run, with positions from a plain sequence (the
//! naive scheme whose readers skip late commits). Everything else — the
//! function, the stream lock, the idempotency check, NOTIFY, the client
//! path — is identical.
//!
//! `cargo bench -p evently-postgres --bench ordering_cost [-- APPENDS TASKS ROUNDS]`
//! (defaults 4000 appends, 8 tasks, 3 rounds; `DATABASE_URL` as for tests).

mod support;

use evently_postgres::PgEventStore;

const XID_POSITION: &str = "    v_base := (pg_current_xact_id()::text::bigint) << 20;
    SELECT coalesce(max(e.position) + 1, v_base) INTO v_next
        FROM __SCHEMA__.events e
        WHERE e.position >= v_base AND e.position < v_base + 1048576;";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let appends = args.first().copied().unwrap_or(4000);
    let tasks = args.get(1).copied().unwrap_or(8);
    let rounds = args.get(2).copied().unwrap_or(3);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());

    let xid = fresh(&url, "es_bench_xid", tasks).await?;
    let seq = fresh(&url, "es_bench_seq", tasks).await?;
    // Swap the position scheme of the second schema for a sequence.
    let sql = include_str!("../src/schema.sql");
    assert!(
        sql.contains(XID_POSITION),
        "schema.sql changed: update the bench"
    );
    let naive = sql
        .replace(
            XID_POSITION,
            "    v_base := 0;
    v_next := nextval('__SCHEMA__.naive_position');",
        )
        .replace(
            "v_next + u.ord - 1, u.id",
            "CASE WHEN u.ord = 1 THEN v_next ELSE nextval('__SCHEMA__.naive_position') END, u.id",
        )
        .replace("IF v_next + n > v_base + 1048576 THEN", "IF false THEN")
        .replace(
            "IF v_last_position >= v_base + 1048576 THEN",
            "IF false THEN",
        )
        .replace("__SCHEMA__", "\"es_bench_seq\"")
        .replace("__CHANNEL__", "es_bench_seq_events");
    evently_postgres::sqlx::raw_sql(&format!(
        "CREATE SEQUENCE IF NOT EXISTS es_bench_seq.naive_position; {naive}"
    ))
    .execute(seq.pool())
    .await?;

    println!(
        "appends of 1 event, {appends} per round, {tasks} tasks, pool of {tasks}, {rounds} rounds"
    );
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        with.push(
            support::concurrent_appends(&xid, &format!("bench-{round}"), appends, tasks).await?,
        );
        without.push(
            support::concurrent_appends(&seq, &format!("bench-{round}"), appends, tasks).await?,
        );
    }
    let (with, without) = (median(with), median(without));
    println!(
        "{{\"bench\":\"ordering_cost\",\"appends\":{appends},\"tasks\":{tasks},\"xid_order_per_s\":{with:.0},\"sequence_per_s\":{without:.0},\"ratio\":{:.3}}}",
        with / without
    );
    println!("| positions | appends/s (median of {rounds}) |\n|---|---|\n| transaction id (gap-free, this store) | {with:.0} |\n| plain sequence (skips late commits) | {without:.0} |\n| ratio | {:.3} |", with / without);
    Ok(())
}

async fn fresh(
    url: &str,
    schema: &str,
    tasks: usize,
) -> Result<PgEventStore, Box<dyn std::error::Error>> {
    let pool = evently_postgres::sqlx::PgPool::connect(url).await?;
    evently_postgres::sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await?;
    Ok(PgEventStore::builder()
        .schema(schema)
        .max_connections(tasks as u32)
        .connect(url)
        .await?)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}
