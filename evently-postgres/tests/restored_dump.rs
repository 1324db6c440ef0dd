//! A schema restored from a logical dump into a cluster whose transaction
//! ids are younger than its positions: refused at connect with a typed
//! error, then repaired by `rebase_after_restore`. Runs a private cluster
//! (initdb + pg_ctl on a free loopback port), stopped at the end, also on
//! failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use evently_core::{EventStore, ExpectedVersion, StreamAppend, StreamId};
use evently_postgres::sqlx::{self, Connection};
use evently_postgres::{PgEventStore, SetupError};

/// The directory of the newest PostgreSQL server binaries (`initdb`,
/// `pg_ctl`, `pg_dump`, `psql`), or none to use the PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn tool(name: &str) -> PathBuf {
    match bin_dir() {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A server tool, run as the `postgres` OS user when we are root (initdb
/// and the server refuse to run as root).
fn server_command(name: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(tool(name));
        command
    } else {
        Command::new(tool(name))
    }
}

fn run(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private PostgreSQL cluster; dropping it stops it and removes its files.
struct PrivateCluster {
    dir: PathBuf,
    port: u16,
}

impl PrivateCluster {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("es-private-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(&dir);
                    c
                },
                "chown",
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // From here on, dropping the guard stops and removes the cluster.
        let cluster = PrivateCluster { dir, port };
        run(
            {
                let mut c = server_command("initdb");
                c.arg("-D").arg(cluster.data()).args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "-N",
                ]);
                c
            },
            "initdb",
        );
        run(
            {
                let mut c = server_command("pg_ctl");
                c.arg("-D")
                    .arg(cluster.data())
                    .arg("-l")
                    .arg(cluster.dir.join("log"))
                    .arg("-w")
                    .arg("-o")
                    .arg(format!(
                        "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                        cluster.port,
                        cluster.dir.display()
                    ))
                    .arg("start");
                c
            },
            "pg_ctl start",
        );
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if Path::new(&self.data()).join("postmaster.pid").exists() {
            let _ = server_command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next transaction id of the cluster at `url`.
async fn next_xid(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let xid = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    xid
}

/// `pg_dump --schema=schema source | psql target`.
fn dump_and_restore(schema: &str, source: &str, target: &str) {
    let mut dump = Command::new(tool("pg_dump"))
        .args(["--no-owner", "--no-privileges", "--schema", schema, source])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run pg_dump");
    let restore = Command::new(tool("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", target])
        .stdin(dump.stdout.take().unwrap())
        .output()
        .expect("run psql");
    assert!(dump.wait().unwrap().success(), "pg_dump failed");
    assert!(
        restore.status.success(),
        "the restore failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_restored_into_a_younger_cluster_is_refused_then_rebased() {
    let cluster = PrivateCluster::start();
    let target = cluster.url();

    // The source's transaction ids must be older than the restored
    // cluster's: burn some if the source cluster is young too.
    let wanted = next_xid(&target).await + 500;
    let mut control = control_connection().await;
    for _ in 0..2_000 {
        let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&mut control)
            .await
            .unwrap();
        if xid > wanted {
            break;
        }
    }
    assert!(
        next_xid(&database_url()).await > wanted,
        "could not age the source cluster"
    );

    // The source: events in several transactions, an atomic append, a
    // projection checkpoint and a parked event.
    let source = fresh_store().await;
    let schema = source.schema().to_owned();
    let a = StreamId::from("account-a");
    let b = StreamId::from("account-b");
    source
        .append(&a, ExpectedVersion::NoStream, numbered_batch(0, 3))
        .await
        .unwrap();
    source
        .append(&b, ExpectedVersion::NoStream, numbered_batch(10, 2))
        .await
        .unwrap();
    source
        .append_atomic(vec![
            StreamAppend::new(a.clone(), ExpectedVersion::Exact(3), vec![numbered(3)]),
            StreamAppend::new(
                StreamId::from("account-c"),
                ExpectedVersion::Any,
                vec![numbered(20)],
            ),
        ])
        .await
        .unwrap();
    let log = read_log_until(&second_handle(&source).await, PATIENCE, |log| {
        log.len() == 7
    })
    .await;
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".projections (name, position) VALUES ('accounts', $1)"
    ))
    .bind(log[2].global_position as i64)
    .execute(&mut control)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".parked_events \
             (projection, position, event_id, stream_id, stream_version, event_type, error) \
         SELECT 'accounts', position, event_id, stream_id, stream_version, event_type, 'boom' \
         FROM \"{schema}\".events WHERE position = $1"
    ))
    .bind(log[1].global_position as i64)
    .execute(&mut control)
    .await
    .unwrap();

    dump_and_restore(&schema, &database_url(), &target);

    // Connecting refuses, naming the schema, the position and the cluster.
    let builder = || PgEventStore::builder().schema(&schema);
    match builder().connect(&target).await {
        Err(error @ SetupError::RestoredFromAnotherCluster { .. }) => {
            let SetupError::RestoredFromAnotherCluster {
                schema: named,
                highest_position,
                next_transaction_id,
            } = &error
            else {
                unreachable!()
            };
            assert_eq!(named, &schema);
            assert_eq!(*highest_position, log[6].global_position);
            assert!(*next_transaction_id <= highest_position >> 20);
            assert!(
                error.to_string().contains("rebase_after_restore"),
                "{error}"
            );
        }
        other => panic!(
            "expected RestoredFromAnotherCluster, got {:?}",
            other.map(|_| ())
        ),
    }

    // The repair, once.
    let report = builder().rebase_after_restore(&target).await.unwrap();
    assert_eq!(report.events, 7);
    assert_eq!(report.highest_before, log[6].global_position);
    assert!(report.highest_after < report.highest_before);
    let store = builder()
        .connect(&target)
        .await
        .expect("connect after the rebase");

    // The restored events, readable, in their order, with new positions.
    let restored = read_whole_log(&store).await;
    assert_eq!(
        restored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        log.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    assert!(restored
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    assert_eq!(
        store.checkpoint("accounts").await.unwrap(),
        restored[2].global_position
    );
    let parked = store.parked("accounts").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].position, restored[1].global_position);
    assert_eq!(parked[0].event_id, restored[1].event_id);

    // Appends to a restored stream work, above the restored events.
    let more = store
        .append(&a, ExpectedVersion::Exact(4), vec![numbered(4)])
        .await
        .unwrap();
    assert_eq!(more[0].stream_version, 5);
    assert!(more[0].global_position > restored[6].global_position);

    // A subscription delivers all of them, in order.
    let mut subscription = store.subscribe(0);
    let delivered = receive(&mut subscription, 8, PATIENCE).await;
    let mut expected: Vec<_> = restored.iter().map(|e| e.event_id).collect();
    expected.push(more[0].event_id);
    assert_eq!(
        delivered.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        expected
    );

    // A second repair finds nothing to do.
    let again = builder().rebase_after_restore(&target).await.unwrap();
    assert_eq!(again.events, 0);
    drop(subscription);
    drop(store);
    drop(cluster);
}
