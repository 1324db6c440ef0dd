//! Faults and bad input on real files and real processes: a writer killed
//! mid-appends, two writing processes and a following one, and files the
//! store cannot use.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StoreError, StreamId,
};
use evently_sqlite::{SetupError, SqliteEventStore};
use sqlx::{Connection, Executor};

fn dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("sqlite-faults")
        .join(format!("{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The crate's `sqlite_log` example, a real second process. `cargo test`
/// builds examples, but not when it runs one test target alone: build it
/// once here, into this test's target directory.
fn sqlite_log() -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = &*built {
        return path.clone();
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    let status = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .args([
            "build",
            "--quiet",
            "-p",
            "evently-sqlite",
            "--example",
            "sqlite_log",
        ])
        .status()
        .expect("run cargo to build the sqlite_log example");
    assert!(status.success(), "cargo build --example sqlite_log failed");
    let path = profile_dir.join("examples").join("sqlite_log");
    *built = Some(path.clone());
    path
}

async fn integrity(path: &Path) -> String {
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let result: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    result
}

#[tokio::test]
async fn a_writer_killed_mid_appends_loses_no_acknowledged_append_and_tears_none() {
    let path = dir("kill").join("log.db");
    let mut child = Command::new(sqlite_log())
        .args(["append", path.to_str().unwrap(), "ledger", "10000", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = 0u64;
    // Kill it somewhere in the middle: after 300 acknowledged appends
    // (versions count events, two an append).
    for line in lines.by_ref() {
        let line = line.unwrap();
        acked = line.strip_prefix("acked ").unwrap().parse().unwrap();
        if acked >= 600 {
            break;
        }
    }
    child.kill().unwrap();
    // Acknowledgements already written to the pipe count too.
    for line in lines.map_while(Result::ok) {
        if let Some(v) = line.strip_prefix("acked ") {
            acked = v.parse().unwrap();
        }
    }
    child.wait().unwrap();
    assert!((600..20_000).contains(&acked), "killed mid-run: {acked}");

    assert_eq!(integrity(&path).await, "ok");
    let store = SqliteEventStore::open(&path).await.unwrap();
    let version = store
        .stream_version(&StreamId::from("ledger"))
        .await
        .unwrap();
    assert!(
        version >= acked,
        "every acknowledged append is there: {version} < {acked}"
    );
    assert_eq!(version % 2, 0, "no append half-written: version {version}");
    let log = store.read_all(1, usize::MAX).await.unwrap();
    assert_eq!(log.len() as u64, version);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(
            (e.global_position, e.stream_version),
            (i as u64 + 1, i as u64 + 1)
        );
    }
    // And it goes on where it stopped.
    let more = store
        .append(
            &StreamId::from("ledger"),
            ExpectedVersion::Exact(version),
            vec![logged()],
        )
        .await
        .unwrap();
    assert_eq!(more[0].global_position, version + 1);
}

fn logged() -> NewEvent {
    NewEvent::raw(
        "Logged",
        1,
        Payload::from_json(r#"{"by":"test"}"#).unwrap(),
        Metadata::new(),
    )
}

#[tokio::test]
async fn two_processes_append_to_one_file_and_a_third_sees_every_event_once_in_order() {
    let path = dir("three").join("log.db");
    // Created first, so the three processes do not race to create it.
    drop(SqliteEventStore::open(&path).await.unwrap());
    let file = path.to_str().unwrap();
    let mut follower = Command::new(sqlite_log())
        .args(["follow", file, "1200"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follow = BufReader::new(follower.stdout.take().unwrap()).lines();
    assert_eq!(follow.next().unwrap().unwrap(), "following");
    let writers: Vec<_> = ["a", "b"]
        .iter()
        .map(|_| {
            Command::new(sqlite_log())
                .args(["append", file, "shared", "300", "2"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in writers {
        assert!(
            w.wait().unwrap().success(),
            "both writers succeed (one waits for the other)"
        );
    }
    let seen: Vec<(u64, String, u64)> = follow
        .by_ref()
        .map(|l| {
            let l = l.unwrap();
            let mut parts = l.split(' ');
            (
                parts.next().unwrap().parse().unwrap(),
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert!(follower.wait().unwrap().success());
    assert_eq!(seen.len(), 1200, "every event once");
    for (i, (position, stream, version)) in seen.iter().enumerate() {
        assert_eq!(
            (*position, stream.as_str(), *version),
            (i as u64 + 1, "shared", i as u64 + 1)
        );
    }
    let store = SqliteEventStore::open(&path).await.unwrap();
    assert_eq!(
        store
            .stream_version(&StreamId::from("shared"))
            .await
            .unwrap(),
        1200
    );
    assert_eq!(integrity(&path).await, "ok");
}

#[tokio::test]
async fn files_it_cannot_use_get_typed_errors_that_name_them() {
    // A missing directory.
    let missing = dir("bad").join("no-such-dir").join("log.db");
    match SqliteEventStore::open(&missing).await {
        Err(SetupError::MissingDirectory { path }) => assert_eq!(path, missing),
        other => panic!("expected MissingDirectory, got {other:?}"),
    }
    let e = SqliteEventStore::open(&missing)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-dir") && e.contains("directory does not exist"),
        "{e}"
    );

    // Not a database.
    let garbage = dir("bad").join("notes.txt");
    let text = "these are not the pages of a database, just text ".repeat(100);
    std::fs::write(&garbage, &text).unwrap();
    match SqliteEventStore::open(&garbage).await {
        Err(SetupError::NotADatabase { path }) => assert_eq!(path, garbage),
        other => panic!("expected NotADatabase, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&garbage).unwrap(),
        text,
        "the file was left as it was"
    );

    // Locked by another connection for longer than the busy time-out.
    let locked = dir("bad").join("locked.db");
    let store = SqliteEventStore::open(&locked).await.unwrap();
    store
        .append(
            &StreamId::from("s"),
            ExpectedVersion::NoStream,
            vec![logged()],
        )
        .await
        .unwrap();
    let mut holder =
        sqlx::sqlite::SqliteConnection::connect(&format!("sqlite:{}", locked.display()))
            .await
            .unwrap();
    holder.execute("BEGIN IMMEDIATE").await.unwrap();
    let started = std::time::Instant::now();
    match SqliteEventStore::builder()
        .busy_timeout(Duration::from_millis(300))
        .open(&locked)
        .await
    {
        Err(SetupError::Locked { path, waited }) => {
            assert_eq!((path, waited), (locked.clone(), Duration::from_millis(300)));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it waited first"
    );
    // A store already open waits too, then says the file is locked.
    match store
        .append(
            &StreamId::from("s"),
            ExpectedVersion::Exact(1),
            vec![logged()],
        )
        .await
    {
        Err(e @ StoreError::Unavailable { .. }) => {
            assert!(e.to_string().contains("locked by another process"), "{e}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    holder.execute("ROLLBACK").await.unwrap();
    // Once released, the same append goes through.
    store
        .append(
            &StreamId::from("s"),
            ExpectedVersion::Exact(1),
            vec![logged()],
        )
        .await
        .unwrap();

    // A read-only file (immutable for root, mode 0444 for anyone else).
    let ro_dir = dir("bad");
    let read_only = ro_dir.join("ro.db");
    drop(SqliteEventStore::open(&read_only).await.unwrap());
    for extra in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{extra}", read_only.display()));
    }
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&ro_dir)
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        let mut perms = std::fs::metadata(&ro_dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
        std::fs::set_permissions(&ro_dir, perms).unwrap();
    }
    let result = SqliteEventStore::open(&read_only).await;
    if immutable {
        Command::new("chattr")
            .arg("-i")
            .arg(&ro_dir)
            .status()
            .unwrap();
    } else {
        let mut perms = std::fs::metadata(&ro_dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&ro_dir, perms).unwrap();
    }
    match result {
        Err(SetupError::ReadOnly { path, .. }) => assert_eq!(path, read_only),
        other => panic!("expected ReadOnly, got {other:?}"),
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent::raw(
        "Logged",
        1,
        Payload::from_json(format!(r#"{{"n":{n}}}"#)).unwrap(),
        Metadata::new(),
    )
}

/// Appends queued together: the ones refused after part of them was
/// written (an atomic append whose second stream is not at the expected
/// version) are undone alone, a retry in the same group gets the stored
/// events, and the others are stored, with positions gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_and_retried_appends_in_a_group_leave_the_others_whole() {
    let path = dir("groups").join("log.db");
    let store = SqliteEventStore::open(&path).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..60u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            match t % 3 {
                // A plain append to a new stream.
                0 => store
                    .append(
                        &StreamId::from(format!("ok-{t}")),
                        ExpectedVersion::Exact(0),
                        vec![event(t)],
                    )
                    .await
                    .map(|events| events.len()),
                // Its first stream would take the event, its second is not
                // at version 3: all of it refused.
                1 => store
                    .append_atomic(vec![
                        evently_core::StreamAppend::new(
                            format!("a-{t}"),
                            ExpectedVersion::NoStream,
                            vec![event(t)],
                        ),
                        evently_core::StreamAppend::new(
                            format!("missing-{t}"),
                            ExpectedVersion::Exact(3),
                            vec![event(t)],
                        ),
                    ])
                    .await
                    .map(|events| events.len()),
                // The same append twice at once: one event stored, both
                // answered with it.
                _ => {
                    let twice = event(t);
                    let stream = StreamId::from(format!("twice-{t}"));
                    let (a, b) = tokio::join!(
                        store.append(&stream, ExpectedVersion::Exact(0), vec![twice.clone()]),
                        store.append(&stream, ExpectedVersion::Exact(0), vec![twice.clone()]),
                    );
                    let (a, b) = (a.unwrap(), b.unwrap());
                    assert_eq!(a[0].event_id, twice.event_id);
                    assert_eq!(a[0].global_position, b[0].global_position);
                    Ok(a.len())
                }
            }
        }));
    }
    for (t, task) in tasks.into_iter().enumerate() {
        match (t % 3, task.await.unwrap()) {
            (0 | 2, Ok(1)) => {}
            (
                1,
                Err(StoreError::WrongExpectedVersion {
                    stream_id,
                    actual: 0,
                    ..
                }),
            ) => {
                assert_eq!(stream_id.as_str(), format!("missing-{t}"));
                let first = StreamId::from(format!("a-{t}"));
                assert_eq!(
                    store.stream_version(&first).await.unwrap(),
                    0,
                    "a-{t} undone"
                );
            }
            (_, other) => panic!("task {t}: {other:?}"),
        }
    }
    let log = store.read_all(1, 1000).await.unwrap();
    assert_eq!(
        log.len(),
        40,
        "20 plain appends and 20 appended twice, once each"
    );
    let positions: Vec<u64> = log.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=40).collect::<Vec<u64>>());
    assert!(log.iter().all(|e| !e.stream_id.as_str().starts_with("a-")));
}

/// Callers that stop waiting mid-append (time-outs of a few hundred
/// microseconds) cut no write off: every acknowledged append is stored,
/// the log stays gap-free, and the store goes on taking appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_whose_callers_give_up_leave_the_log_whole() {
    let store = SqliteEventStore::open(dir("cancelled").join("log.db"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..200u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::from(format!("c-{t}"));
            let append = store.append(&stream, ExpectedVersion::NoStream, vec![event(t)]);
            // Every other caller waits; the rest give up within a
            // millisecond or so.
            let patience = if t % 2 == 0 {
                Duration::from_secs(30)
            } else {
                Duration::from_micros(200 * (t % 8))
            };
            tokio::time::timeout(patience, append)
                .await
                .ok()
                .map(|r| r.unwrap())
        }));
    }
    let mut acknowledged = Vec::new();
    for (t, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Some(stored) => acknowledged.push((t, stored[0].global_position)),
            None => assert!(t % 2 == 1, "a patient caller {t} got no answer"),
        }
    }
    assert!(acknowledged.len() >= 100);
    let later = store
        .append(
            &StreamId::from("after"),
            ExpectedVersion::NoStream,
            vec![event(999)],
        )
        .await
        .expect("the store still takes appends");
    let log = store.read_all(1, 1_000).await.unwrap();
    let positions: Vec<u64> = log.iter().map(|e| e.global_position).collect();
    assert_eq!(
        positions,
        (1..=later[0].global_position).collect::<Vec<_>>()
    );
    for (t, position) in &acknowledged {
        let stored = &log[*position as usize - 1];
        assert_eq!(stored.stream_id.as_str(), format!("c-{t}"), "append {t}");
    }
    eprintln!(
        "{} of 200 acknowledged, {} stored",
        acknowledged.len(),
        log.len() - 1
    );
}
