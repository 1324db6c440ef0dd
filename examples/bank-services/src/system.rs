//! The system as real processes (this crate's binaries) on the machine's
//! PostgreSQL and NATS, in schemas, service names and a JetStream stream
//! of its own, talked to over HTTP: what the tests and the benchmark
//! start.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One running process and what it wrote to standard error.
pub struct Process {
    /// Which binary.
    pub name: &'static str,
    /// The process.
    pub child: Child,
    /// Its standard error, line by line.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Where it serves HTTP.
    pub http: String,
}

impl Process {
    /// Kills it (SIGKILL: a crash, nothing flushed).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM and waits (10 s at most) for it to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running");
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 10 s of SIGTERM", self.name))
            .expect("its exit status")
    }

    /// Its log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

/// A running system.
pub struct System {
    /// The environment every process gets.
    pub env: Vec<(String, String)>,
    /// The processes, in the order started.
    pub processes: Vec<Process>,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// The gateway's base URL.
    pub gateway: String,
}

/// The binary `name` of this crate: next to the running executable, or
/// one directory up (a test binary runs from `target/<profile>/deps`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("a directory");
    let beside = dir.join(name);
    if beside.exists() {
        return beside;
    }
    dir.parent().map(|d| d.join(name)).unwrap_or(beside)
}

impl System {
    /// Starts `accounts` accounts instances, `reporting` reporting
    /// instances and one gateway, and waits until the gateway is ready.
    /// Each logs JSON, spans included, at `info,evently=debug`; `extra`
    /// variables come last, so they override any of these.
    pub async fn start(accounts: usize, reporting: usize, extra: &[(&str, &str)]) -> System {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("ACCOUNTS_SCHEMA".into(), format!("es_test_acc_{id}")),
            ("REPORTING_SCHEMA".into(), format!("es_test_rep_{id}")),
            ("ACCOUNTS_SERVICE".into(), format!("acc_{id}")),
            ("REPORTING_SERVICE".into(), format!("rep_{id}")),
            ("EVENTS_STREAM".into(), format!("BANK_{id}")),
            ("EVENTS_PREFIX".into(), format!("ev-{id}")),
            ("LOG_FORMAT".into(), "json".into()),
            ("LOG_SPANS".into(), "1".into()),
            ("RUST_LOG".into(), "info,evently=debug".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut system = System {
            env,
            processes: Vec::new(),
            http: reqwest::Client::new(),
            gateway: String::new(),
        };
        for _ in 0..accounts {
            system.spawn("accounts").await;
        }
        for _ in 0..reporting {
            system.spawn("reporting").await;
        }
        let gateway = system.spawn("gateway").await;
        system.gateway = gateway;
        system.wait_ready().await;
        system
    }

    /// Starts one more `name` process; returns its HTTP address.
    pub async fn spawn(&mut self, name: &'static str) -> String {
        let mut command = Command::new(binary(name));
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HTTP_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", binary(name).display()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let kept = Arc::clone(&logs);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        // The first line on standard output says where it listens.
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{name} did not start listening in 30 s: {:?}",
                    logs.lock().unwrap()
                )
            })
            .expect("its standard output")
            .unwrap_or_else(|| panic!("{name} exited: {:?}", logs.lock().unwrap()));
        let http = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name} said {first:?}"))
            .to_owned();
        self.processes.push(Process {
            name,
            child,
            logs,
            http: http.clone(),
        });
        http
    }

    /// Waits until the gateway's `/readyz` says ready (30 s at most).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .http
                .get(format!("{}/readyz", self.gateway))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if ready.is_some() {
                return;
            }
            if Instant::now() > deadline {
                let why = match self
                    .http
                    .get(format!("{}/readyz", self.gateway))
                    .send()
                    .await
                {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                panic!("the system is not ready after 30 s: {why}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST path` with an idempotency key and a JSON body.
    pub async fn post(&self, path: &str, key: &str, body: serde_json::Value) -> Reply {
        let response = self
            .http
            .post(format!("{}{path}", self.gateway))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("the gateway answers");
        Reply::of(response).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .http
            .get(format!("{}{path}", self.gateway))
            .send()
            .await
            .expect("the gateway answers");
        Reply::of(response).await
    }

    /// The first process named `name`.
    pub fn process(&mut self, name: &str) -> &mut Process {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {name} process"))
    }

    /// Every process's log lines that mention `text`, with the process's
    /// name.
    pub fn logs_mentioning(&self, text: &str) -> Vec<(&'static str, String)> {
        self.processes
            .iter()
            .flat_map(|p| p.logs().into_iter().map(move |l| (p.name, l)))
            .filter(|(_, l)| l.contains(text))
            .collect()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // The processes die with their handles (kill_on_drop); the stream
        // is removed so the broker does not keep it.
        let stream = self
            .env
            .iter()
            .find(|(k, _)| k == "EVENTS_STREAM")
            .map(|(_, v)| v.clone());
        if let Some(stream) = stream {
            let url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    if let Ok(client) = evently::nats::async_nats::connect(&url).await {
                        let js = evently::nats::async_nats::jetstream::new(client);
                        let _ = js.delete_stream(&stream).await;
                    }
                });
            })
            .join()
            .ok();
        }
    }
}

/// An HTTP answer: status, content type and JSON body.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The content type.
    pub content_type: String,
    /// The `X-Correlation-Id` header.
    pub correlation: Option<String>,
    /// The body, as JSON (a string when it is not JSON).
    pub body: serde_json::Value,
}

impl Reply {
    /// Reads a response.
    pub async fn of(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let correlation = header("x-correlation-id");
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Reply {
            status,
            content_type,
            correlation,
            body,
        }
    }
}
