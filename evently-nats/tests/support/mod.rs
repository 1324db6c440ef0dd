//! What the NATS tests share: the broker, private brokers they may kill,
//! a log to publish, and reading a JetStream stream back.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Payload, RecordedEvent, StreamId,
};
use evently_nats::headers;
use tokio::process::{Child, Command};

/// The shared broker (NATS_URL, default 127.0.0.1:4222). A test that
/// cannot reach it fails and says so.
pub async fn shared_client() -> async_nats::Client {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned());
    async_nats::connect(&url).await.unwrap_or_else(|e| {
        panic!("cannot reach the NATS server at {url} (the README says how to start it): {e}")
    })
}

/// A JetStream stream name and subject prefix of the test's own.
pub fn unique(test: &str) -> (String, String) {
    let id = uuid::Uuid::now_v7().simple().to_string();
    (
        format!("EVT_{}_{id}", test.to_uppercase()),
        format!("t{id}"),
    )
}

/// A nats-server of the test's own, on a free port with its own store
/// directory: it may be killed and started again.
pub struct PrivateServer {
    pub port: u16,
    dir: PathBuf,
    config: Option<String>,
    child: Option<Child>,
}

impl PrivateServer {
    /// Starts one; `config` is extra server configuration (e.g.
    /// `max_payload: 2048`).
    pub async fn start(config: Option<&str>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("evently-nats-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = PrivateServer {
            port,
            dir,
            config: config.map(str::to_owned),
            child: None,
        };
        server.restart().await;
        server
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it again (after [`kill`](Self::kill)), with the same store.
    pub async fn restart(&mut self) {
        let mut command = Command::new(nats_server());
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(config) = &self.config {
            let file = self.dir.join("server.conf");
            std::fs::write(&file, config).unwrap();
            command.arg("-c").arg(file);
        }
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server())),
        );
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the private nats-server on port {} did not start",
            self.port
        );
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats_server() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned())
}

/// Appends `count` events over `streams` streams (ids that are hostile as
/// subject tokens), `batch` per append, round robin.
pub async fn append_events<S: EventStore>(
    store: &S,
    streams: &[StreamId],
    count: usize,
    batch: usize,
) {
    let mut n = 0;
    while n < count {
        let stream = &streams[(n / batch) % streams.len()];
        let events: Vec<NewEvent> = (n..(n + batch).min(count))
            .map(|i| {
                NewEvent::raw(
                    "Tested",
                    1,
                    Payload::from_value(&serde_json::json!({ "n": i })),
                    Metadata::new().with_correlation_id(uuid::Uuid::from_u128(i as u128 + 1)),
                )
            })
            .collect();
        n += events.len();
        store
            .append(stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
}

/// Stream ids that are not subject tokens as they stand.
pub fn hostile_streams() -> Vec<StreamId> {
    ["account-1", "account-a.b c", "café-ünï", "star-*>", "plain"]
        .into_iter()
        .map(StreamId::from)
        .collect()
}

/// One stored message, as the checks need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub sequence: u64,
    pub subject: String,
    pub position: u64,
    pub event_id: String,
    pub payload: Vec<u8>,
}

/// Every message of a JetStream stream, in stream order.
pub async fn read_stream(client: &async_nats::Client, name: &str) -> Vec<Stored> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(name).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::with_capacity(last as usize);
    for sequence in 1..=last {
        let m = stream.get_raw_message(sequence).await.unwrap();
        out.push(Stored {
            sequence,
            subject: m.subject.to_string(),
            position: m
                .headers
                .get(headers::GLOBAL_POSITION)
                .unwrap()
                .as_str()
                .parse()
                .unwrap(),
            event_id: m
                .headers
                .get(headers::MESSAGE_ID)
                .unwrap()
                .as_str()
                .to_owned(),
            payload: m.payload.to_vec(),
        });
    }
    out
}

/// Asserts that the JetStream stream holds exactly `log`, in log order,
/// each event once, on its subject.
pub fn assert_stream_is_the_log(stored: &[Stored], log: &[RecordedEvent], prefix: &str) {
    assert_eq!(
        stored.len(),
        log.len(),
        "the stream holds {} messages, the log {} events",
        stored.len(),
        log.len()
    );
    for (message, event) in stored.iter().zip(log) {
        assert_eq!(
            message.position, event.global_position,
            "message {}",
            message.sequence
        );
        assert_eq!(
            message.event_id,
            event.event_id.to_string(),
            "message {}",
            message.sequence
        );
        assert_eq!(
            message.subject,
            evently_nats::subject::subject_for(prefix, &event.stream_id)
        );
        assert_eq!(message.payload, event.data.as_str().as_bytes());
    }
}

/// The whole log of a store.
pub async fn whole_log<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store.read_all(1, 10_000_000).await.unwrap()
}

/// Creates the JetStream stream with a de-duplication window of 100 ms, so
/// that a test shows exactly-once publishing without the window's help.
pub async fn short_window_stream(client: &async_nats::Client, name: &str, prefix: &str) {
    jetstream::new(client.clone())
        .create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .unwrap();
}
