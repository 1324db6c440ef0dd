//! The system end to end, as real processes on the real PostgreSQL and
//! NATS, through HTTP on loopback.

use bank_services::system::{self as harness, System};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_session_through_the_gateway() {
    let system = System::start(1, 1, &[]).await;

    let opened = system
        .post(
            "/accounts",
            "open-ann",
            json!({"id": "ann", "owner": "Ann"}),
        )
        .await;
    assert_eq!(opened.status, 201, "{opened:?}");
    assert_eq!(opened.body["version"], 1);
    let deposited = system
        .post("/accounts/ann/deposits", "dep-1", json!({"amount": 120}))
        .await;
    assert_eq!(
        (deposited.status, &deposited.body["version"]),
        (200, &json!(2))
    );
    let withdrew = system
        .post("/accounts/ann/withdrawals", "wd-1", json!({"amount": 20}))
        .await;
    assert_eq!(
        (withdrew.status, &withdrew.body["version"]),
        (200, &json!(3))
    );

    // Refused by the aggregate: 422 with its own message and value.
    let refused = system
        .post("/accounts/ann/withdrawals", "wd-2", json!({"amount": 500}))
        .await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.content_type, "application/problem+json");
    assert_eq!(
        refused.body["detail"],
        "insufficient funds: balance 100, requested 500"
    );
    assert_eq!(
        refused.body["error"],
        json!({"InsufficientFunds": {"balance": 100, "requested": 500}})
    );

    // The same key again: the first answer, and no second deposit.
    let replayed = system
        .post("/accounts/ann/deposits", "dep-1", json!({"amount": 120}))
        .await;
    assert_eq!(replayed.status, 200);
    assert_eq!(replayed.body, deposited.body);

    // Read-your-writes: reporting answers once it has seen version 3.
    let balance = system.get("/accounts/ann?min_version=3").await;
    assert_eq!(balance.status, 200, "{balance:?}");
    assert_eq!(balance.body["version"], 3);
    assert_eq!(
        balance.body["document"],
        json!({"owner": "Ann", "balance": 100})
    );
    let ledger = system.get("/accounts/ann/ledger?min_version=3").await;
    let entries = ledger.body["document"]["entries"]
        .as_array()
        .unwrap()
        .clone();
    let kinds: Vec<(&str, u64, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["amount"].as_u64().unwrap(),
                e["balance"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("deposit", 120, 120), ("withdrawal", 20, 100)]);
    let today = chrono::Utc::now().date_naive().to_string();
    let daily = system.get(&format!("/reports/daily/{today}")).await;
    assert_eq!(
        daily.body["document"],
        json!({"deposited": 120, "withdrawn": 20, "movements": 2})
    );

    // The audit trail from the log: three events, each with its command.
    let history = system.get("/accounts/ann/history").await;
    let events = history.body.as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Opened", "Deposited", "Withdrew"]);
    assert_eq!(
        events[1]["metadata"]["correlation_id"].as_str(),
        deposited.correlation.as_deref()
    );

    // The routes are described.
    let openapi = system.get("/openapi.json").await;
    let paths = openapi.body["paths"].as_object().unwrap();
    for path in [
        "/accounts",
        "/accounts/{id}/deposits",
        "/accounts/{id}/history",
        "/events",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} in {paths:?}");
    }

    // Each process exports its metrics in the Prometheus text format (the
    // replayed deposit answered with its first outcome: accepted).
    for (process, metric) in [
        (
            "accounts",
            "evently_commands_total{aggregate=\"account\",outcome=\"accepted\"} 4",
        ),
        (
            "accounts",
            "evently_commands_total{aggregate=\"account\",outcome=\"rejected\"} 1",
        ),
        (
            "reporting",
            "evently_projection_events_total{projection=\"view_balances\"} 3",
        ),
        ("gateway", "evently_remote_commands_total{"),
    ] {
        let http = &system
            .processes
            .iter()
            .find(|p| p.name == process)
            .unwrap()
            .http;
        let text = system
            .http
            .get(format!("{http}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains(metric),
            "{process} /metrics lacks {metric}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_problems_with_the_right_status() {
    let system = System::start(1, 1, &[]).await;
    let url = |path: &str| format!("{}{path}", system.gateway);
    let problem = |reply: &harness::Reply, status: u16| {
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.content_type, "application/problem+json", "{reply:?}");
        assert_eq!(reply.body["status"], status, "{reply:?}");
    };
    system
        .post("/accounts", "open-bo", json!({"id": "bo", "owner": "Bo"}))
        .await;

    let send = |request: reqwest::RequestBuilder| async move {
        harness::Reply::of(request.send().await.unwrap()).await
    };
    // Malformed JSON, wrong types, a missing field.
    let malformed = send(
        system
            .http
            .post(url("/accounts/bo/deposits"))
            .header("Idempotency-Key", "m1")
            .body("{\"amount\": "),
    )
    .await;
    problem(&malformed, 400);
    let wrong = system
        .post("/accounts/bo/deposits", "m2", json!({"amount": "ten"}))
        .await;
    problem(&wrong, 400);
    let negative = system
        .post("/accounts/bo/deposits", "m3", json!({"amount": -5}))
        .await;
    problem(&negative, 400);
    // A body over the limit. On a client of its own: the gateway answers
    // 413 before reading the whole body and closes the connection, which a
    // shared client's pool could otherwise hand to the next request.
    let huge = send(
        reqwest::Client::new()
            .post(url("/accounts"))
            .header("Idempotency-Key", "m4")
            .body(format!(
                "{{\"id\": \"x\", \"owner\": \"{}\"}}",
                "a".repeat(64 * 1024)
            )),
    )
    .await;
    problem(&huge, 413);
    // No idempotency key where one is required.
    let keyless = send(
        system
            .http
            .post(url("/accounts/bo/deposits"))
            .json(&json!({"amount": 1})),
    )
    .await;
    problem(&keyless, 400);
    // The same key with another body: refused, not replayed.
    let first = system
        .post("/accounts/bo/deposits", "k", json!({"amount": 5}))
        .await;
    assert_eq!(first.status, 200);
    let other = system
        .post("/accounts/bo/deposits", "k", json!({"amount": 6}))
        .await;
    problem(&other, 422);
    // Unknown route, unknown account, a command the aggregate refuses.
    problem(&system.get("/nowhere").await, 404);
    problem(&system.get("/accounts/nobody").await, 404);
    problem(&system.get("/accounts/nobody/history").await, 404);
    problem(
        &system
            .post("/accounts/nobody/deposits", "n1", json!({"amount": 1}))
            .await,
        422,
    );
    problem(&system.get("/reports/daily/yesterday").await, 400);
    // A version reporting will not reach in time: 504.
    problem(
        &system
            .get("/accounts/bo?min_version=99&timeout_ms=100")
            .await,
        504,
    );
    // Only one deposit of 5 happened.
    let balance = system.get("/accounts/bo?min_version=2").await;
    assert_eq!(balance.body["document"]["balance"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_serving_is_503_and_the_gateway_says_it_is_not_ready() {
    let mut system = System::start(1, 1, &[("REQUEST_TIMEOUT_MS", "300")]).await;
    system.process("accounts").kill().await;
    let reply = system
        .post("/accounts", "lonely", json!({"id": "z", "owner": "Z"}))
        .await;
    assert_eq!(reply.status, 503, "{reply:?}");
    let ready = system
        .http
        .get(format!("{}/readyz", system.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.text().await.unwrap().contains("accounts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_followed_across_the_services_by_its_correlation_id() {
    let system = System::start(1, 1, &[]).await;
    system
        .post("/accounts", "open-cy", json!({"id": "cy", "owner": "Cy"}))
        .await;
    let correlation = uuid::Uuid::now_v7().to_string();
    let deposit = system
        .http
        .post(format!("{}/accounts/cy/deposits", system.gateway))
        .header("Idempotency-Key", "cy-1")
        .header("X-Correlation-Id", &correlation)
        .json(&json!({"amount": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(deposit.status().as_u16(), 200);
    let read = system
        .http
        .get(format!("{}/accounts/cy?min_version=2", system.gateway))
        .header("X-Correlation-Id", &correlation)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    // Each process logs its spans as JSON lines when they close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let spans_of = |process: &str| -> Vec<String> {
        system
            .logs_mentioning(&correlation)
            .into_iter()
            .filter(|(p, _)| *p == process)
            .filter_map(|(_, line)| {
                let json: serde_json::Value = serde_json::from_str(&line).ok()?;
                Some(json["span"]["name"].as_str()?.to_owned())
            })
            .collect()
    };
    loop {
        let (gateway, accounts, reporting) = (
            spans_of("gateway"),
            spans_of("accounts"),
            spans_of("reporting"),
        );
        let seen = gateway.contains(&"evently.remote_command".to_owned())
            && gateway.contains(&"bank.http".to_owned())
            && accounts.contains(&"evently.serve_command".to_owned())
            && accounts.contains(&"evently.command".to_owned())
            && reporting.contains(&"evently.projection.event".to_owned())
            && reporting.contains(&"bank.query".to_owned());
        if seen {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans with correlation id {correlation}: gateway {gateway:?}, accounts {accounts:?}, reporting {reporting:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Two accounts and two reporting instances; 5,000 deposits from 32
/// clients while one accounts instance is killed (SIGKILL) and a new one
/// started. Every acknowledged deposit is in the log exactly once, nothing
/// else is, and reporting equals a replay of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_an_accounts_instance_under_load_loses_and_repeats_nothing() {
    use bank_services::load::{run, Load};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let mut system = System::start(2, 2, &[("REQUEST_TIMEOUT_MS", "1000")]).await;
    let load = Load::new(system.gateway.clone());
    let done = Arc::new(AtomicU64::new(0));
    let driver = tokio::spawn({
        let (load, done) = (load.clone(), Arc::clone(&done));
        async move { run(&load, done).await }
    });
    let reach = |n: u64| {
        let done = Arc::clone(&done);
        async move {
            while done.load(Ordering::Relaxed) < n {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    reach(1_000).await;
    system.process("accounts").kill().await;
    reach(2_500).await;
    system.spawn("accounts").await;
    let report = driver.await.unwrap().unwrap();
    eprintln!(
        "kill test: {} acknowledged, {} failed, {} retries, errors {:?}, {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
        report.acknowledged, report.failed, report.retries, report.errors, report.per_second, report.p50_ms, report.p99_ms
    );
    assert_eq!((report.acknowledged, report.failed), (5_000, 0));

    // What each account should hold: the acknowledged deposits, by command id.
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for deposit in &report.deposits {
        let id = uuid::Uuid::new_v5(
            &bank_services::IDEMPOTENCY_NAMESPACE,
            deposit.key.as_bytes(),
        );
        expected
            .entry(deposit.account.clone())
            .or_default()
            .insert(id.to_string());
        *sums.entry(deposit.account.clone()).or_default() += deposit.amount;
    }
    for n in 0..load.accounts {
        let account = load.account(n);
        let history = system.get(&format!("/accounts/{account}/history")).await;
        let events = history.body.as_array().unwrap();
        let deposits: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["event_type"] == "Deposited")
            .collect();
        let commands: BTreeSet<String> = deposits
            .iter()
            .map(|e| e["metadata"]["command_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(commands.len(), deposits.len(), "{account}: a command twice");
        assert_eq!(
            commands, expected[&account],
            "{account}: the log is the acknowledged deposits"
        );
        let logged: u64 = deposits
            .iter()
            .map(|e| e["data"]["amount"].as_u64().unwrap())
            .sum();
        assert_eq!(logged, sums[&account]);
        // Reporting equals a replay of the log.
        let version = events.len();
        let balance = system
            .get(&format!(
                "/accounts/{account}?min_version={version}&timeout_ms=10000"
            ))
            .await;
        assert_eq!(balance.status, 200, "{balance:?}");
        assert_eq!(balance.body["version"], version);
        assert_eq!(balance.body["document"]["balance"], logged);
        let ledger = system
            .get(&format!(
                "/accounts/{account}/ledger?min_version={version}&timeout_ms=10000"
            ))
            .await;
        assert_eq!(
            ledger.body["document"]["entries"].as_array().unwrap().len(),
            deposits.len()
        );
    }
}

/// Reads Server-Sent Events from `response` until `n` have come: each
/// as (id, event type, data).
async fn read_events(
    response: &mut reqwest::Response,
    buffer: &mut String,
    n: usize,
) -> Vec<(u64, String, serde_json::Value)> {
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while events.len() < n {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::new(), serde_json::Value::Null);
            for line in block.lines() {
                let Some((field, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim_start();
                match field {
                    "id" => id = value.parse().ok(),
                    "event" => kind = value.to_owned(),
                    "data" => data = serde_json::from_str(value).unwrap(),
                    _ => {}
                }
            }
            if let Some(id) = id {
                events.push((id, kind, data));
            }
        }
        if events.len() >= n {
            break;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} events in 10 s: {events:?}", events.len()))
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_event_stream_resumes_after_a_disconnect_with_nothing_missed_or_repeated() {
    let system = System::start(1, 1, &[]).await;
    system
        .post(
            "/accounts",
            "open-eve",
            json!({"id": "eve", "owner": "Eve"}),
        )
        .await;
    let mut live = system
        .http
        .get(format!("{}/events?from=1", system.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    assert!(live.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    for (n, amount) in [(1, 10), (2, 20)] {
        system
            .post(
                "/accounts/eve/deposits",
                &format!("eve-{n}"),
                json!({"amount": amount}),
            )
            .await;
    }
    let mut buffer = String::new();
    let first = read_events(&mut live, &mut buffer, 3).await;
    let kinds: Vec<&str> = first.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["Opened", "Deposited", "Deposited"]);
    assert_eq!(first[2].2["data"], json!({"amount": 20}));
    assert_eq!(
        (first[2].2["account"].as_str(), &first[2].2["version"]),
        (Some("eve"), &json!(3))
    );
    drop(live);

    // While disconnected: two more, and a withdrawal.
    for (n, amount) in [(3, 30), (4, 40)] {
        system
            .post(
                "/accounts/eve/deposits",
                &format!("eve-{n}"),
                json!({"amount": amount}),
            )
            .await;
    }
    system
        .post("/accounts/eve/withdrawals", "eve-5", json!({"amount": 5}))
        .await;
    let last_seen = first[2].0;
    let mut resumed = system
        .http
        .get(format!("{}/events", system.gateway))
        .header("Last-Event-ID", last_seen.to_string())
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    let rest = read_events(&mut resumed, &mut buffer, 3).await;
    let ids: Vec<u64> = rest.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, [last_seen + 1, last_seen + 2, last_seen + 3]);
    let versions: Vec<&serde_json::Value> = rest.iter().map(|(_, _, d)| &d["version"]).collect();
    assert_eq!(versions, [&json!(4), &json!(5), &json!(6)]);
    assert_eq!(rest[2].1, "Withdrew");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_stops_cleanly() {
    let mut system = System::start(1, 1, &[]).await;
    system
        .post(
            "/accounts",
            "open-flo",
            json!({"id": "flo", "owner": "Flo"}),
        )
        .await;
    // A read that waits 1.5 s for a version that will not come.
    let slow = tokio::spawn({
        let (http, url) = (
            system.http.clone(),
            format!(
                "{}/accounts/flo?min_version=9&timeout_ms=1500",
                system.gateway
            ),
        );
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    // Let it reach the gateway; then ask the gateway to stop.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let gateway = system.process("gateway");
    let stopped = gateway.terminate().await;
    assert!(stopped.success(), "gateway: {stopped:?}");
    // The request in flight got its answer (the time-out it asked for),
    // not a dropped connection.
    assert_eq!(slow.await.unwrap().unwrap(), 504);
    assert!(system
        .http
        .get(format!("{}/healthz", system.gateway))
        .send()
        .await
        .is_err());
    // Reporting stops its views at a checkpoint and drains NATS.
    let reporting = system.process("reporting");
    let stopped = reporting.terminate().await;
    assert!(stopped.success(), "reporting: {stopped:?}");
    let logs = reporting.logs();
    assert!(logs.iter().any(|l| l.contains("\"stopped\"")), "{logs:?}");
    let accounts = system.process("accounts");
    assert!(accounts.terminate().await.success());
}

/// A transfer's stage, polled until it is `wanted` (10 s at most).
async fn transfer_reaches(system: &System, location: &str, wanted: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = system.get(location).await;
        if status.status == 200 && status.body["stage"] == wanted {
            return status.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{location}: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_complete_or_are_reversed_by_the_process_manager() {
    let system = System::start(1, 1, &[]).await;
    for (id, key) in [("ann", "open-ann"), ("bob", "open-bob")] {
        system
            .post("/accounts", key, json!({"id": id, "owner": id}))
            .await;
    }
    system
        .post("/accounts/ann/deposits", "ann-1", json!({"amount": 100}))
        .await;
    let send = |key: &'static str, to: &'static str, amount: u64| {
        let (http, url) = (system.http.clone(), format!("{}/transfers", system.gateway));
        async move {
            let response = http
                .post(url)
                .header("Idempotency-Key", key)
                .json(&json!({"from": "ann", "to": to, "amount": amount}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 202);
            response.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    let to_bob = send("tr-1", "bob", 30).await;
    let done = transfer_reaches(&system, &to_bob, "Completed").await;
    assert_eq!(
        (done["from"].as_str(), &done["amount"]),
        (Some("ann"), &json!(30))
    );
    // Its deadline is cancelled once the process's sender has handled the
    // completion (just after the stage shows it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while system.get(&to_bob).await.body["waiting"] != json!([]) {
        assert!(std::time::Instant::now() < deadline, "the deadline stays");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // To an account that was never opened: refused, and the money returns.
    let to_nobody = send("tr-2", "nobody", 20).await;
    transfer_reaches(&system, &to_nobody, "Reversed").await;
    // Retrying a transfer's request starts nothing new.
    assert_eq!(send("tr-1", "bob", 30).await, to_bob);

    let history = system.get("/accounts/ann/history").await;
    let types: Vec<&str> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "Opened",
            "Deposited",
            "TransferSent",
            "TransferSent",
            "TransferReturned"
        ]
    );
    let ann = system.get("/accounts/ann?min_version=5").await;
    assert_eq!(ann.body["document"]["balance"], 70);
    let bob = system.get("/accounts/bob?min_version=2").await;
    assert_eq!(bob.body["document"]["balance"], 30);
    assert_eq!(system.get("/transfers/unknown").await.status, 404);
}
