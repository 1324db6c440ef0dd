//! The `es` binary against real PostgreSQL schemas: one the bank example
//! filled (`examples/bank_account`, which `cargo test --workspace` builds),
//! and logs written here. Each test works in schemas of its own.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamAppend, StreamId,
};
use evently_postgres::PgEventStore;
use serde_json::Value;

mod support;
use support::{bank_example, drop_schema, schema, url};

/// Runs the bank example into `schema`.
fn fill_with_bank_example(schema: &str) {
    let out = Command::new(bank_example())
        .env("DATABASE_URL", url())
        .env("BANK_SCHEMA", schema)
        .output()
        .expect("run the bank example");
    assert!(
        out.status.success(),
        "the bank example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(program: PathBuf, schema: &str, args: &[&str]) -> Output {
    Command::new(program)
        .env("DATABASE_URL", url())
        .env("ES_SCHEMA", schema)
        .env_remove("ES_TOKEN")
        .args(args)
        .output()
        .expect("run es")
}

fn es(schema: &str, args: &[&str]) -> Output {
    run(PathBuf::from(env!("CARGO_BIN_EXE_es")), schema, args)
}

fn code(out: &Output) -> i32 {
    out.status
        .code()
        .expect("es exited (not killed by a signal)")
}

/// Runs `es --json …`, expects exit 0, returns the parsed output.
fn es_json(schema: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = es(schema, &all);
    assert_eq!(
        code(&out),
        0,
        "es {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "es {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test]
async fn the_commands_read_what_the_bank_example_wrote() {
    let s = schema("bank");
    drop_schema(&s).await;
    fill_with_bank_example(&s);

    // streams: the two accounts and the two transfers, with versions.
    let streams = es_json(&s, &["streams"]);
    let rows: Vec<(String, String, u64)> = streams
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["stream_id"].as_str().unwrap().to_owned(),
                r["aggregate_type"].as_str().unwrap().to_owned(),
                r["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("account-alice".into(), "account".into(), 6),
            ("account-bob".into(), "account".into(), 3),
            ("transfer-t-1".into(), "transfer".into(), 2),
            ("transfer-t-2".into(), "transfer".into(), 3),
        ]
    );
    let transfers = es_json(&s, &["streams", "--type", "transfer"]);
    assert_eq!(transfers.as_array().unwrap().len(), 2);
    let people = es(&s, &["streams", "--prefix", "account-"]);
    let text = String::from_utf8(people.stdout).unwrap();
    assert!(text.starts_with("STREAM"), "a table with a header: {text}");
    assert!(
        text.contains("account-bob") && !text.contains("transfer-t-1"),
        "{text}"
    );

    // show: every event with its metadata; --as-of a version and a time.
    let alice = es_json(&s, &["show", "account-alice"]);
    let events = alice["events"].as_array().unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(events[0]["event_type"], "Opened");
    assert_eq!(events[0]["payload"]["owner"], "Alice");
    assert!(events[0]["metadata"]["correlation_id"].is_string());
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    let as_of_2 = es_json(&s, &["show", "account-alice", "--as-of", "2"]);
    assert_eq!(as_of_2["version"], 2);
    assert_eq!(as_of_2["events"].as_array().unwrap().len(), 2);
    let third_time = events[2]["recorded_at"].as_str().unwrap();
    let as_of_time = es_json(&s, &["show", "account-alice", "--as-of", third_time]);
    assert_eq!(as_of_time["events"].as_array().unwrap().len(), 3);
    assert_eq!(as_of_time["version"], 3);

    // audit: the failed transfer t-2 across the account and the process.
    let t2 = es_json(&s, &["show", "transfer-t-2"]);
    let correlation = t2["events"][0]["metadata"]["correlation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let audit = es_json(&s, &["audit", &correlation]);
    assert_eq!(audit["events"], 5, "{audit:#}");
    assert_eq!(audit["commands"], 4, "{audit:#}");
    let roots = audit["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "one start: {audit:#}");
    assert_eq!(roots[0]["kind"], "event");
    assert_eq!(roots[0]["event_type"], "TransferSent");
    assert_eq!(roots[0]["stream_id"], "account-alice");
    // The tree goes down to the reversal through the process's events.
    let mut types = Vec::new();
    fn walk(node: &Value, types: &mut Vec<String>) {
        if node["kind"] == "event" {
            types.push(node["event_type"].as_str().unwrap().to_owned());
        }
        for c in node["caused"].as_array().unwrap() {
            walk(c, types);
        }
    }
    walk(&roots[0], &mut types);
    assert_eq!(
        types,
        vec![
            "TransferSent",
            "Started",
            "Failed",
            "TransferReturned",
            "Reversed"
        ]
    );
    let tree = String::from_utf8(es(&s, &["audit", &correlation]).stdout).unwrap();
    assert!(
        tree.contains("└─ event") && tree.contains("Reversed"),
        "{tree}"
    );

    // projections and status.
    let projections = es_json(&s, &["projections"]);
    let view = projections
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "view_accounts")
        .expect("the accounts view's checkpoint");
    assert_eq!(view["behind_events"], 0);
    assert_eq!(view["running"], false, "the example has exited");
    assert_eq!(view["parked"], 0);
    assert_eq!(view["lag_seconds"], 0.0);
    let status = es_json(&s, &["status"]);
    assert_eq!(status["streams"], 4);
    assert_eq!(status["events"], 14);
    assert_eq!(status["waiting_events"], 0);

    // tail from the start: the log's first three events, in order.
    let out = es(&s, &["--json", "tail", "--from", "0", "--count", "3"]);
    assert_eq!(code(&out), 0);
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["event_id"], events[0]["event_id"]);
    assert!(lines[0]["position"].as_u64() < lines[1]["position"].as_u64());

    // tail from the end: an event appended while it follows.
    let mut child = Command::new(env!("CARGO_BIN_EXE_es"))
        .env("DATABASE_URL", url())
        .args([
            "--schema", &s, "--json", "tail", "--count", "1", "--type", "Noted",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start es tail");
    let mut ready = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("es tail: following"), "{ready}");
    let store = PgEventStore::builder()
        .schema(&s)
        .connect(&url())
        .await
        .unwrap();
    let appended = store
        .append(
            &StreamId::from("notes-1"),
            ExpectedVersion::Any,
            vec![NewEvent::raw(
                "Noted",
                1,
                Payload::from_json(r#"{"text":"live"}"#).unwrap(),
                Metadata::new(),
            )],
        )
        .await
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(live["event_id"], appended[0].event_id.to_string());
    assert_eq!(live["payload"]["text"], "live");
    drop_schema(&s).await;
}

#[tokio::test]
async fn rebuild_parked_and_retry_run_through_the_service_binary() {
    let s = schema("rebuild");
    drop_schema(&s).await;
    fill_with_bank_example(&s);
    let bank = |args: &[&str]| {
        let mut all = vec!["es"];
        all.extend_from_slice(args);
        run(bank_example(), &s, &all)
    };
    let pool = sqlx::PgPool::connect(&url()).await.unwrap();
    let docs = |pool: sqlx::PgPool, s: String| async move {
        sqlx::query_as::<_, (String, String)>(&format!(
            "SELECT key, doc::text FROM \"{s}\".view_accounts ORDER BY key"
        ))
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let before = docs(pool.clone(), s.clone()).await;
    assert_eq!(before.len(), 2);

    // The plain `es` does not carry the view's code: it says so.
    let plain = es(&s, &["rebuild", "accounts"]);
    assert_eq!(code(&plain), 6);
    assert!(String::from_utf8_lossy(&plain.stderr).contains("does not carry its code"));

    // The bank's binary does: the view is emptied and replayed.
    let out = bank(&["--json", "rebuild", "accounts"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events"], 14);
    assert_eq!(report["parked"], 0);
    assert_eq!(docs(pool.clone(), s.clone()).await, before);

    // The log grows during a rebuild: it goes on until it has caught up
    // with the moving head, and the view matches the log at its position.
    let store = PgEventStore::builder()
        .schema(&s)
        .connect(&url())
        .await
        .unwrap();
    let writer = store.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let deposits = tokio::spawn(async move {
        let mut positions = Vec::new();
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let e = writer
                .append(
                    &StreamId::from("account-bob"),
                    ExpectedVersion::Any,
                    vec![NewEvent::raw(
                        "Deposited",
                        1,
                        Payload::from_json(r#"{"amount":1}"#).unwrap(),
                        Metadata::new(),
                    )],
                )
                .await
                .unwrap();
            positions.push(e[0].global_position);
        }
        positions
    });
    let rebuilt = tokio::task::spawn_blocking({
        let bank = bank_example();
        let s = s.clone();
        move || run(bank, &s, &["es", "--json", "rebuild", "accounts"])
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let positions = deposits.await.unwrap();
    assert_eq!(
        code(&rebuilt),
        0,
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let report: Value = serde_json::from_slice(&rebuilt.stdout).unwrap();
    let at = report["position"].as_u64().unwrap();
    let included = positions.iter().filter(|p| **p <= at).count() as u64;
    assert!(included > 0, "deposits landed during the rebuild: {report}");
    assert_eq!(report["events"].as_u64().unwrap(), 14 + included);
    let bob: (String,) = sqlx::query_as(&format!(
        "SELECT doc::text FROM \"{s}\".view_accounts WHERE key = 'bob'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    let bob: Value = serde_json::from_str(&bob.0).unwrap();
    assert_eq!(bob["balance"].as_u64().unwrap(), 45 + included);
    // Rebuilt again once the writes stopped: every deposit is in.
    let out = bank(&["--json", "rebuild", "accounts"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["events"].as_u64().unwrap(),
        14 + positions.len() as u64
    );
    let before = docs(pool.clone(), s.clone()).await;

    // An event the view cannot read: the rebuild parks it when told to.
    let bad = store
        .append(
            &StreamId::from("account-alice"),
            ExpectedVersion::Exact(6),
            vec![NewEvent::raw(
                "Deposited",
                1,
                Payload::from_json(r#"{"amount":"lots"}"#).unwrap(),
                Metadata::new(),
            )],
        )
        .await
        .unwrap();
    let stopped = bank(&["rebuild", "accounts"]);
    assert_eq!(code(&stopped), 1, "the default stops at it");
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("stopped before it caught up"));
    let out = bank(&["--json", "rebuild", "accounts", "--on-failure", "park"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["parked"], 1);
    assert_eq!(
        docs(pool.clone(), s.clone()).await,
        before,
        "the bad deposit changed nothing"
    );

    let parked = es_json(&s, &["parked", "accounts"]);
    let parked = parked.as_array().unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["position"], bad[0].global_position);
    assert_eq!(parked[0]["stream_id"], "account-alice");
    assert_eq!(parked[0]["event_type"], "Deposited");
    assert!(
        parked[0]["error"].as_str().unwrap().contains("\"lots\""),
        "{parked:?}"
    );
    let listed = es_json(&s, &["projections"]);
    let view = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "view_accounts")
        .unwrap();
    assert_eq!(view["parked"], 1);

    // Retrying runs the same code on the same payload: still parked, said.
    let plain = es(&s, &["retry", "accounts"]);
    assert_eq!(code(&plain), 6);
    let again = bank(&["--json", "retry", "accounts"]);
    assert_eq!(code(&again), 1);
    let report: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        report["still_parked"],
        serde_json::json!([bad[0].global_position])
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("still parked"));
    let missing = bank(&["retry", "accounts", "--position", "1"]);
    assert_eq!(code(&missing), 3);
    drop_schema(&s).await;
}

/// Appends `n` events over `streams` streams, interleaved (each event its
/// own stream's next version), `streams` events per atomic append.
async fn interleaved_log(store: &PgEventStore, n: usize, streams: usize) {
    for round in 0..n / streams {
        let appends = (0..streams)
            .map(|s| {
                let payload = Payload::from_json(format!(
                    r#"{{"round":{round},"stream":{s},"note":"ü \"quoted\" <b>"}}"#
                ))
                .unwrap();
                StreamAppend::new(
                    StreamId::from(format!("item-{s:03}").as_str()),
                    ExpectedVersion::Exact(round as u64),
                    vec![NewEvent::raw(
                        "Counted",
                        2,
                        payload,
                        Metadata::new().with_correlation_id(uuid::Uuid::now_v7()),
                    )],
                )
            })
            .collect();
        store.append_atomic(appends).await.unwrap();
    }
}

#[tokio::test]
async fn export_import_verify_round_trip_survives_a_killed_import() {
    let (source, target) = (schema("src"), schema("dst"));
    drop_schema(&source).await;
    drop_schema(&target).await;
    let store = PgEventStore::builder()
        .schema(&source)
        .connect(&url())
        .await
        .unwrap();
    interleaved_log(&store, 10_000, 100).await;
    let dir = std::env::temp_dir().join(format!("es-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("log.jsonl");
    let file_s = file.to_str().unwrap();

    let exported = es_json(&source, &["export", "-o", file_s]);
    assert_eq!(exported["events"], 10_000);
    // The source against its own export.
    let same = es_json(&source, &["verify", file_s]);
    assert_eq!(same["store_events"], 10_000);
    assert_eq!(same["streams"], 100);
    assert_eq!(same["differences"], serde_json::json!([]));

    // An import killed after its first transactions: a clean prefix.
    let mut child = Command::new(env!("CARGO_BIN_EXE_es"))
        .env("DATABASE_URL", url())
        .args(["--schema", &target, "--json", "import", file_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pool = sqlx::PgPool::connect(&url()).await.unwrap();
    let count = |pool: sqlx::PgPool, t: String| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM \"{t}\".events"))
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    for _ in 0..2_000 {
        if count(pool.clone(), target.clone()).await > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = count(pool.clone(), target.clone()).await;
    assert!(
        partial > 0 && partial < 10_000,
        "killed mid-import: {partial} events"
    );
    // Whole transactions: one per run of the file in which each stream
    // appears once (100 events here, the streams taking turns).
    assert_eq!(partial % 100, 0, "whole transactions: {partial}");
    let interrupted = es(&target, &["verify", file_s]);
    assert_eq!(code(&interrupted), 5, "a partial copy is not the file");

    let resumed = es_json(&target, &["import", file_s]);
    assert_eq!(resumed["skipped"], partial);
    assert_eq!(resumed["imported"], 10_000 - partial);
    let verified = es_json(&target, &["verify", file_s]);
    assert_eq!(verified["store_events"], 10_000);
    assert_eq!(verified["differences"], serde_json::json!([]));
    // Versions, ids, metadata and times came across: one stream compared.
    let a = es_json(&source, &["show", "item-042"]);
    let b = es_json(&target, &["show", "item-042"]);
    for (x, y) in a["events"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["events"].as_array().unwrap())
    {
        for field in [
            "event_id",
            "stream_version",
            "event_type",
            "schema_version",
            "payload",
            "metadata",
            "recorded_at",
        ] {
            assert_eq!(x[field], y[field], "{field}");
        }
    }
    // Once more: nothing to do.
    let again = es_json(&target, &["import", file_s]);
    assert_eq!(again["imported"], 0);
    assert_eq!(again["skipped"], 10_000);

    // A subset: the streams of one prefix.
    let some = dir.join("some.jsonl");
    let part = es_json(
        &source,
        &[
            "export",
            "-o",
            some.to_str().unwrap(),
            "--prefix",
            "item-00",
        ],
    );
    assert_eq!(part["events"], 1_000);
    let checked = es_json(&target, &["verify", some.to_str().unwrap()]);
    assert_eq!(checked["store_events"], 1_000);
    assert_eq!(checked["streams"], 10);

    // A target holding other events is refused, and left as it was.
    let other = schema("other");
    drop_schema(&other).await;
    let other_store = PgEventStore::builder()
        .schema(&other)
        .connect(&url())
        .await
        .unwrap();
    interleaved_log(&other_store, 100, 100).await;
    let refused = es(&other, &["import", file_s]);
    assert_eq!(
        code(&refused),
        6,
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("diverges"));
    assert_eq!(count(pool.clone(), other.clone()).await, 100);

    std::fs::remove_dir_all(&dir).unwrap();
    for s in [&source, &target, &other] {
        drop_schema(s).await;
    }
}

#[tokio::test]
async fn a_memory_store_copies_into_postgres() {
    let memory = evently_memory::MemoryStore::new();
    for i in 0..50u64 {
        memory
            .append(
                &StreamId::from(format!("cart-{}", i % 5).as_str()),
                ExpectedVersion::Exact(i / 5),
                vec![NewEvent::raw(
                    "ItemAdded",
                    1,
                    Payload::from_json(format!(r#"{{"sku":{i}}}"#)).unwrap(),
                    Metadata::new(),
                )],
            )
            .await
            .unwrap();
    }
    let file = std::env::temp_dir().join(format!("es-memory-{}.jsonl", std::process::id()));
    let mut out = std::fs::File::create(&file).unwrap();
    let written = evently_cli::export(
        &memory,
        "memory",
        &evently_cli::ExportFilter::default(),
        &mut out,
        &evently_cli::ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(written, 50);
    let checked = evently_cli::check_export(&file).unwrap();
    assert_eq!((checked.events, checked.streams), (50, 5));

    let target = schema("frommemory");
    drop_schema(&target).await;
    let imported = es_json(&target, &["import", file.to_str().unwrap()]);
    assert_eq!(imported["imported"], 50);
    let verified = es_json(&target, &["verify", file.to_str().unwrap()]);
    assert_eq!(verified["differences"], serde_json::json!([]));
    let cart = es_json(&target, &["show", "cart-3"]);
    let skus: Vec<u64> = cart["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["sku"].as_u64().unwrap())
        .collect();
    assert_eq!(skus, vec![3, 8, 13, 18, 23, 28, 33, 38, 43, 48]);
    // And the memory store verifies against the file it wrote.
    let same = evently_cli::verify(&memory, Some(&file), &evently_cli::ProgressBar::hidden())
        .await
        .unwrap();
    assert_eq!(same.differences, Vec::<String>::new());
    assert_eq!(same.store_events, 50);
    std::fs::remove_file(&file).unwrap();
    drop_schema(&target).await;
}

#[tokio::test]
async fn bad_input_gets_a_message_and_an_exit_code_never_a_panic() {
    let s = schema("bad");
    drop_schema(&s).await;
    let store = PgEventStore::builder()
        .schema(&s)
        .connect(&url())
        .await
        .unwrap();
    interleaved_log(&store, 20, 10).await;
    let dir = std::env::temp_dir().join(format!("es-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.jsonl");
    es_json(&s, &["export", "-o", good.to_str().unwrap()]);
    let text = std::fs::read_to_string(&good).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let write = |name: &str, content: String| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let truncated = write("truncated.jsonl", text[..text.len() / 2].to_owned());
    let cut_at_line = write("cut.jsonl", lines[..5].join("\n") + "\n");
    let changed = write("changed.jsonl", {
        let mut l = lines.clone();
        let edited = l[3].replacen("\"Counted\"", "\"Countex\"", 1);
        assert_ne!(edited, l[3]);
        l[3] = &edited;
        l.join("\n") + "\n"
    });
    let dropped = write("dropped.jsonl", {
        let mut l = lines.clone();
        l.remove(3);
        l.join("\n") + "\n"
    });
    let swapped = write("swapped.jsonl", {
        let mut l = lines.clone();
        l.swap(1, 11);
        l.join("\n") + "\n"
    });
    let garbage = write("garbage.jsonl", "hello\n".into());
    let missing = dir.join("missing.jsonl").to_str().unwrap().to_owned();

    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (vec!["show".into(), "no-such-stream".into()], 3, "not found"),
        (
            vec!["--url".into(), "postgres://x@[::1".into(), "streams".into()],
            2,
            "malformed store URL",
        ),
        (
            vec!["--url".into(), "mysql://x".into(), "streams".into()],
            2,
            "unsupported store URL",
        ),
        (
            vec![
                "--url".into(),
                "postgres://postgres@127.0.0.1:1/test".into(),
                "streams".into(),
            ],
            4,
            "Connection refused",
        ),
        (
            vec![
                "--schema".into(),
                "no_such_schema_here".into(),
                "streams".into(),
            ],
            3,
            "holds no event store",
        ),
        (
            vec!["--schema".into(), "Bad-Name".into(), "streams".into()],
            2,
            "invalid schema name",
        ),
        (
            vec!["audit".into(), "not-a-uuid".into()],
            2,
            "not a correlation id",
        ),
        (
            vec!["audit".into(), uuid::Uuid::now_v7().to_string()],
            3,
            "no event or command",
        ),
        (
            vec![
                "show".into(),
                "item-001".into(),
                "--as-of".into(),
                "yesterday".into(),
            ],
            2,
            "--as-of",
        ),
        (
            vec!["parked".into(), "nothing".into()],
            3,
            "no projection named",
        ),
        (vec!["import".into(), truncated.clone()], 5, "truncated"),
        (
            vec!["verify".into(), cut_at_line.clone()],
            5,
            "without its end line",
        ),
        (
            vec!["import".into(), changed.clone()],
            5,
            "line 4: its check does not match",
        ),
        (vec!["verify".into(), dropped.clone()], 5, "line"),
        (vec!["verify".into(), swapped.clone()], 5, "line"),
        (
            vec!["import".into(), garbage.clone()],
            5,
            "line 1: not an evently export header",
        ),
        (vec!["import".into(), missing.clone()], 3, "no such file"),
        (vec!["no-such-command".into()], 2, "unrecognized subcommand"),
    ];
    for (args, expected, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = es(&s, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), expected, "es {args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "es {args:?} should say {says:?}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "es {args:?} panicked: {stderr}"
        );
    }
    // Nothing was written by the bad imports.
    let status = es_json(&s, &["status"]);
    assert_eq!(status["events"], 20);
    std::fs::remove_dir_all(&dir).unwrap();
    drop_schema(&s).await;
}
