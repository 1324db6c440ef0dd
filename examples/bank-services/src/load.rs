//! A bounded load driver: opens some accounts, then sends deposits from
//! concurrent clients through the gateway, each with an idempotency key of
//! its own, retrying a request that got no 2xx (a time-out, no instance,
//! a dropped connection) with the same key, so each deposit has one
//! effect. Loopback only; stops after its requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

/// What to send.
#[derive(Debug, Clone)]
pub struct Load {
    /// The gateway, `http://127.0.0.1:8080`; only loopback addresses.
    pub gateway: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Deposits in all.
    pub requests: usize,
    /// Accounts the deposits spread over (opened first).
    pub accounts: usize,
    /// Tries per deposit before giving up on it.
    pub attempts: u32,
    /// A prefix for account ids and keys, so runs do not meet.
    pub run: String,
}

impl Load {
    /// 32 clients, 5,000 deposits over 50 accounts, 60 tries each.
    pub fn new(gateway: impl Into<String>) -> Self {
        Load {
            gateway: gateway.into(),
            clients: 32,
            requests: 5_000,
            accounts: 50,
            attempts: 60,
            run: uuid::Uuid::now_v7().simple().to_string()[20..].to_owned(),
        }
    }

    /// The account id of account `n`.
    pub fn account(&self, n: usize) -> String {
        format!("{}-{n}", self.run)
    }
}

/// One deposit that got its 2xx.
#[derive(Debug, Clone, Serialize)]
pub struct Acknowledged {
    /// Its idempotency key.
    pub key: String,
    /// The account.
    pub account: String,
    /// The amount.
    pub amount: u64,
    /// The account's version the gateway answered with.
    pub version: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Deposits sent (each counted once, however often retried).
    pub requests: u64,
    /// Deposits that got a 2xx.
    pub acknowledged: u64,
    /// Deposits that never got one.
    pub failed: u64,
    /// Retries, all deposits together.
    pub retries: u64,
    /// Non-2xx answers and transport errors seen, by status (0: transport).
    pub errors: std::collections::BTreeMap<u16, u64>,
    /// Acknowledged deposits per second over the run.
    pub per_second: f64,
    /// Latency of an acknowledged deposit (retries included), p50, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Each acknowledged deposit.
    #[serde(skip)]
    pub deposits: Vec<Acknowledged>,
}

/// Whether `url` points at this machine.
pub fn is_loopback(url: &str) -> bool {
    let host = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// Runs `load`; `done` counts deposits finished (acknowledged or given up)
/// as they finish.
pub async fn run(load: &Load, done: Arc<AtomicU64>) -> Result<Report, String> {
    if !is_loopback(&load.gateway) {
        return Err(format!("{} is not a loopback address", load.gateway));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    for n in 0..load.accounts {
        let body = json!({"id": load.account(n), "owner": format!("owner {n}")});
        let key = format!("{}-open-{n}", load.run);
        send(&http, load, "/accounts", &key, &body).await?;
    }
    let next = Arc::new(AtomicU64::new(0));
    let report = Arc::new(Mutex::new(Report::default()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..load.clients)
        .map(|_| {
            let (http, load, next, report, latencies, done) = (
                http.clone(),
                load.clone(),
                Arc::clone(&next),
                Arc::clone(&report),
                Arc::clone(&latencies),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= load.requests {
                        return;
                    }
                    let account = load.account(n % load.accounts);
                    let amount = 1 + (n as u64 * 7919) % 100;
                    let key = format!("{}-deposit-{n}", load.run);
                    let path = format!("/accounts/{account}/deposits");
                    let began = Instant::now();
                    let outcome = deposit(&http, &load, &path, &key, amount, &report).await;
                    let mut report = report.lock().unwrap();
                    report.requests += 1;
                    match outcome {
                        Some(version) => {
                            report.acknowledged += 1;
                            report.deposits.push(Acknowledged {
                                key,
                                account,
                                amount,
                                version,
                            });
                            latencies.lock().unwrap().push(began.elapsed());
                        }
                        None => report.failed += 1,
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.map_err(|e| e.to_string())?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut report = Arc::try_unwrap(report)
        .map_err(|_| "a client still runs")?
        .into_inner()
        .unwrap();
    let mut latencies = latencies.lock().unwrap().clone();
    report.per_second = report.acknowledged as f64 / seconds;
    (report.p50_ms, report.p99_ms) = percentiles(&mut latencies);
    Ok(report)
}

/// One deposit, retried with its key until a 2xx or the tries run out;
/// the account's version on success.
async fn deposit(
    http: &reqwest::Client,
    load: &Load,
    path: &str,
    key: &str,
    amount: u64,
    report: &Mutex<Report>,
) -> Option<u64> {
    let body = json!({ "amount": amount });
    for attempt in 0..load.attempts {
        if attempt > 0 {
            report.lock().unwrap().retries += 1;
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10)))).await;
        }
        let sent = http
            .post(format!("{}{path}", load.gateway))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await;
        let status = match sent {
            Ok(response) if response.status().is_success() => {
                let reply: serde_json::Value = response.json().await.ok()?;
                return reply["version"].as_u64();
            }
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        };
        *report.lock().unwrap().errors.entry(status).or_default() += 1;
        // A refusal by the aggregate will not change on a retry.
        if status == 422 || status == 400 {
            return None;
        }
    }
    None
}

/// Sends one command with its key until a 2xx (the accounts opened first).
async fn send(
    http: &reqwest::Client,
    load: &Load,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    for attempt in 0..load.attempts {
        let sent = http
            .post(format!("{}{path}", load.gateway))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().as_u16() == 422 => {
                return Err(format!("{path}: {}", r.text().await.unwrap_or_default()))
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10) + 1))).await
            }
        }
    }
    Err(format!("{path}: no 2xx after {} tries", load.attempts))
}

/// What a query run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryReport {
    /// Queries answered 200.
    pub answered: u64,
    /// Other answers and transport errors.
    pub failed: u64,
    /// Answered queries per second.
    pub per_second: f64,
    /// Latency p50, ms.
    pub p50_ms: f64,
    /// Latency p99, ms.
    pub p99_ms: f64,
}

/// `requests` balance reads (`GET /accounts/{id}`) from `load.clients`
/// clients over the accounts `load` opened.
pub async fn queries(load: &Load, requests: usize) -> Result<QueryReport, String> {
    if !is_loopback(&load.gateway) {
        return Err(format!("{} is not a loopback address", load.gateway));
    }
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..load.clients)
        .map(|_| {
            let (http, load, next, latencies, failed) = (
                http.clone(),
                load.clone(),
                Arc::clone(&next),
                Arc::clone(&latencies),
                Arc::clone(&failed),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= requests {
                        return;
                    }
                    let url = format!(
                        "{}/accounts/{}",
                        load.gateway,
                        load.account(n % load.accounts)
                    );
                    let began = Instant::now();
                    let answered = match http.get(url).send().await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    };
                    if answered {
                        latencies.lock().unwrap().push(began.elapsed());
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.map_err(|e| e.to_string())?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = latencies.lock().unwrap().clone();
    let (p50_ms, p99_ms) = percentiles(&mut latencies);
    Ok(QueryReport {
        answered: latencies.len() as u64,
        failed: failed.load(Ordering::Relaxed),
        per_second: latencies.len() as f64 / seconds,
        p50_ms,
        p99_ms,
    })
}

/// p50 and p99 of `latencies`, in ms (sorts them).
pub fn percentiles(latencies: &mut [Duration]) -> (f64, f64) {
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.5), at(0.99))
}
