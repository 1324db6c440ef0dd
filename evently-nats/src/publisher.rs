//! The publisher: follows a store's global log and publishes every event to
//! a JetStream stream, once, in log order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Context};
use evently_core::{EventStore, RecordedEvent, StoreError};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;

use crate::headers;
use crate::subject::subject_for;

/// How a [`Publisher`] publishes.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The JetStream stream that holds the log (created if absent by
    /// [`Publisher::ensure_stream`]). It must hold nothing but this
    /// publisher's messages.
    pub stream: String,
    /// The subject prefix: events go to `<prefix>.<aggregate type>.<stream id>`.
    /// Keep it apart from command subjects (a [`crate::CommandService`]
    /// named `accounts` answers on `accounts.<aggregate type>`): the
    /// stream stores every message published under `<prefix>.>`, requests
    /// included, and acknowledges them to the requester.
    pub prefix: String,
    /// At most this many publishes wait for their acknowledgement at once.
    /// A slow or stopped broker slows the publisher down to this; memory
    /// never grows past it.
    pub max_in_flight: usize,
    /// How long to wait before re-synchronising after a failure (broker
    /// down, time-out, another publisher ahead), doubled on each failure in
    /// a row up to `max_backoff`.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl PublisherConfig {
    /// Publishes to the JetStream stream `stream`, on subjects under `prefix`;
    /// 256 publishes in flight.
    pub fn new(stream: impl Into<String>, prefix: impl Into<String>) -> Self {
        PublisherConfig {
            stream: stream.into(),
            prefix: prefix.into(),
            max_in_flight: 256,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// Sets how many publishes may wait for their acknowledgement at once
    /// (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

/// Why publishing stopped or had to start over.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event is larger than the broker accepts: the publisher stops
    /// here rather than skip it (the stream holds the log, all of it).
    /// Raise the server's `max_payload`, or keep large data out of events.
    #[error(
        "event {event_id} (stream {stream_id}, position {position}) is {size} bytes with its \
         headers; the broker takes at most {limit}"
    )]
    TooLarge {
        /// The event's id.
        event_id: uuid::Uuid,
        /// Its stream.
        stream_id: String,
        /// Its global position.
        position: u64,
        /// Its payload and headers, in bytes.
        size: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
    /// The event's subject is longer than a NATS server takes in a
    /// message's control line (4 KiB by default): its stream id, encoded,
    /// is too long. The publisher stops here rather than skip it.
    #[error(
        "event {event_id} (stream {stream_id}, position {position}): its subject is {length} \
         bytes, more than the {limit} a NATS control line holds; use shorter stream ids"
    )]
    SubjectTooLong {
        /// The event's id.
        event_id: uuid::Uuid,
        /// Its stream.
        stream_id: String,
        /// Its global position.
        position: u64,
        /// The subject's length in bytes.
        length: usize,
        /// The longest subject published.
        limit: usize,
    },
    /// The JetStream stream's last message was not written by a publisher
    /// (it has no position header): something else publishes to it.
    #[error(
        "message {sequence} of JetStream stream `{stream}` carries no `{header}` header: the \
         stream must hold nothing but this publisher's events"
    )]
    ForeignMessage {
        /// The stream.
        stream: String,
        /// The message's sequence.
        sequence: u64,
        /// The header it lacks.
        header: &'static str,
    },
    /// An event that cannot be written as headers (an event type with a
    /// line break).
    #[error(transparent)]
    Header(#[from] crate::headers::HeaderError),
    /// The store could not be read.
    #[error("reading the log: {0}")]
    Store(#[from] StoreError),
    /// The broker refused or did not answer; the publisher retries.
    #[error("JetStream: {0}")]
    Broker(String),
    /// Another publisher, or an earlier attempt of this one, stored the
    /// message first; the publisher re-synchronises from the stream.
    #[error("the stream moved on (another publisher, or an earlier attempt): {0}")]
    Fenced(String),
}

impl PublishError {
    /// Whether going on cannot help: the publisher stops on these.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PublishError::TooLarge { .. }
                | PublishError::SubjectTooLong { .. }
                | PublishError::ForeignMessage { .. }
                | PublishError::Header(_)
        )
    }
}

/// What a publisher has done, for dashboards and health checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublisherStats {
    /// The global position of the last event the stream is known to hold.
    pub last_position: u64,
    /// Events this publisher had acknowledged since it started.
    pub published: u64,
    /// `published` per second since it started.
    pub events_per_s: f64,
}

struct Shared {
    /// The last position the stream is known to hold, updated on every
    /// acknowledgement.
    confirmed: AtomicU64,
    /// The same, announced to waiters every [`ANNOUNCE_EVERY`]
    /// acknowledgements, whenever nothing is in flight, and at the end of
    /// a pass: waking a waiter per event would cost more than publishing.
    last_position: watch::Sender<u64>,
    published: AtomicU64,
    /// `published` as last added to the [`PUBLISHED_EVENTS`] counter.
    counted: AtomicU64,
    started: Instant,
}

/// Publishes a store's log to a JetStream stream, each event once, in log
/// order, and resumes after any crash from what the stream holds.
///
/// **How "exactly once" holds without the dedup window.** The JetStream
/// stream is the publisher's checkpoint: on start and after any failure it
/// reads the stream's last message, takes the global position from its
/// `Evently-Global-Position` header and follows the log from the next
/// position. Every publish carries `Nats-Expected-Last-Sequence`: the
/// stream's sequence before it. JetStream stores a message only if the
/// stream's last sequence is the expected one, so a message can only
/// follow the event before it in the log: a re-sent publish after a
/// time-out, a publish that was still in flight when a publisher crashed,
/// and a second publisher running at the same time all fail that check
/// (or are recognised as duplicates by `Nats-Msg-Id`, the event id, inside
/// the window) instead of storing an event twice or out of order. The
/// publisher that failed reads the stream's tail again and goes on from
/// there. Nothing depends on how long the broker remembers message ids.
///
/// The one limit: JetStream treats an expected last sequence of 0 as "no
/// expectation", so the first publish into an empty stream is fenced by
/// `Nats-Msg-Id` only (two publishers starting on an empty stream within
/// the dedup window, 2 minutes by default, store its first event once).
#[derive(Clone)]
pub struct Publisher<S> {
    store: S,
    js: Context,
    client: async_nats::Client,
    config: PublisherConfig,
    shared: Arc<Shared>,
}

impl<S: EventStore> Publisher<S> {
    /// A publisher of `store`'s log over `client`'s connection.
    pub fn new(store: S, client: async_nats::Client, config: PublisherConfig) -> Self {
        let js = jetstream::new(client.clone());
        Publisher {
            store,
            js,
            client,
            config,
            shared: Arc::new(Shared {
                confirmed: AtomicU64::new(0),
                last_position: watch::Sender::new(0),
                published: AtomicU64::new(0),
                counted: AtomicU64::new(0),
                started: Instant::now(),
            }),
        }
    }

    /// Creates the JetStream stream if it does not exist: file storage,
    /// subjects `<prefix>.>`, deletes and purges refused (the stream is the
    /// published log; removing a message from it would break the order).
    pub async fn ensure_stream(&self) -> Result<(), PublishError> {
        self.js
            .get_or_create_stream(StreamConfig {
                name: self.config.stream.clone(),
                subjects: vec![format!("{}.>", self.config.prefix)],
                storage: StorageType::File,
                deny_delete: true,
                ..Default::default()
            })
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))?;
        Ok(())
    }

    /// What it has done so far.
    pub fn stats(&self) -> PublisherStats {
        let published = self.shared.published.load(Ordering::Relaxed);
        let seconds = self.shared.started.elapsed().as_secs_f64();
        PublisherStats {
            last_position: self.shared.confirmed.load(Ordering::Acquire),
            published,
            events_per_s: if seconds > 0.0 {
                published as f64 / seconds
            } else {
                0.0
            },
        }
    }

    /// How far the stream is behind the log: the events of the log after
    /// the last published position (counted up to 10 million).
    pub async fn lag(&self) -> Result<u64, StoreError> {
        let confirmed = self.shared.confirmed.load(Ordering::Acquire);
        EventStore::events_after(&self.store, confirmed, 10_000_000).await
    }

    /// Waits until the stream holds the event at `position` (or a later
    /// one), or `timeout` passes; returns whether it does.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut last = self.shared.last_position.subscribe();
        tokio::time::timeout(timeout, last.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes until a fatal error ([`PublishError::is_fatal`]); every
    /// other failure (the broker down, a time-out, another publisher ahead)
    /// is retried after a back-off, from what the stream holds. Run it in a
    /// task of its own; abort the task to stop.
    pub async fn run(&self) -> PublishError {
        let span = tracing::info_span!("evently.publish", stream = %self.config.stream, prefix = %self.config.prefix);
        // The lag gauge, counted once a second while the publisher runs.
        let gauge = async {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Ok(lag) = self.lag().await {
                    metrics::gauge!(PUBLISHER_LAG_EVENTS, "stream" => self.config.stream.clone())
                        .set(lag as f64);
                }
            }
        };
        tokio::select! {
            error = self.run_passes().instrument(span) => error,
            never = gauge => never,
        }
    }

    async fn run_passes(&self) -> PublishError {
        let mut backoff = self.config.backoff;
        loop {
            let published_before = self.shared.published.load(Ordering::Relaxed);
            let error = self.publish_from_stream_tail().await;
            self.announce();
            if error.is_fatal() {
                tracing::error!(stream = %self.config.stream, %error, "publisher stopped");
                return error;
            }
            if self.shared.published.load(Ordering::Relaxed) > published_before {
                backoff = self.config.backoff;
            }
            tracing::debug!(stream = %self.config.stream, %error, ?backoff, "publisher re-synchronises");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// Runs [`Publisher::run`] on a task of its own; abort the handle to
    /// stop, or await it for the fatal error.
    pub fn spawn(&self) -> tokio::task::JoinHandle<PublishError> {
        let publisher = self.clone();
        tokio::spawn(async move { publisher.run().await })
    }

    /// The stream's last sequence and the global position of its last
    /// message (0 and 0 for an empty stream).
    async fn tail(&self) -> Result<(u64, u64), PublishError> {
        let broker = |e: &dyn std::fmt::Display| PublishError::Broker(e.to_string());
        let mut stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| broker(&e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| broker(&e))?
            .state
            .last_sequence;
        if last == 0 {
            return Ok((0, 0));
        }
        let message = stream.get_raw_message(last).await.map_err(|e| broker(&e))?;
        let position = message
            .headers
            .get(headers::GLOBAL_POSITION)
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| PublishError::ForeignMessage {
                stream: self.config.stream.clone(),
                sequence: last,
                header: headers::GLOBAL_POSITION,
            })?;
        Ok((last, position))
    }

    /// One pass: from the stream's tail, publish the log until something
    /// fails; returns what failed.
    async fn publish_from_stream_tail(&self) -> PublishError {
        let (mut sequence, position) = match self.tail().await {
            Ok(tail) => tail,
            Err(e) => return e,
        };
        self.confirm(position, 0);
        self.announce();
        // The log is read ahead, and each event made into its message
        // (subject, headers, payload), on a task of its own, into a channel
        // as deep as the window or 1,024 events, whichever is more: the next
        // page is fetched and the next messages built while publishes are
        // in flight, and memory stays bounded.
        let (prepared, mut log) = tokio::sync::mpsc::channel(self.config.max_in_flight.max(1024));
        let mut subscription = self.store.subscribe(position + 1);
        let (prefix, limit) = (self.config.prefix.clone(), self.client.max_payload());
        let _reader = AbortOnDrop(tokio::spawn(async move {
            while let Some(item) = subscription.next().await {
                let item = item
                    .map_err(PublishError::Store)
                    .and_then(|event| Prepared::new(&prefix, limit, event));
                let failed = item.is_err();
                if prepared.send(item).await.is_err() || failed {
                    break;
                }
            }
        }));
        // Acknowledgements, oldest first, each with the position it confirms.
        let mut in_flight: VecDeque<(PublishAckFuture, u64, u64)> = VecDeque::new();
        let mut since_announced = 0;
        loop {
            // Take the oldest acknowledgement when the window is full, or
            // when no event is waiting.
            let next = if in_flight.len() >= self.config.max_in_flight {
                None
            } else if in_flight.is_empty() {
                Some(log.recv().await)
            } else {
                // Take what the reader has without waiting: if nothing is
                // there, settle the oldest acknowledgement first.
                match log.try_recv() {
                    Ok(item) => Some(Some(item)),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(None),
                }
            };
            match next {
                Some(Some(Ok(next))) => {
                    let publish = next.message.expected_last_sequence(sequence);
                    match self.js.send_publish(next.subject, publish).await {
                        Ok(ack) => {
                            sequence += 1;
                            in_flight.push_back((ack, sequence, next.event.global_position));
                        }
                        Err(e) => return self.refused(e.kind(), e.to_string(), &next.event),
                    }
                }
                Some(Some(Err(e))) => {
                    if e.is_fatal() {
                        // Stopping here: settle what was sent before it, so
                        // the stats say where the stream ends.
                        self.settle(in_flight).await;
                    }
                    return e;
                }
                Some(None) => {
                    return PublishError::Store(StoreError::Unavailable {
                        reason: "the store's subscription ended".into(),
                        source: None,
                    })
                }
                None => {
                    let Some((ack, expected, position)) = in_flight.pop_front() else {
                        continue;
                    };
                    match ack.await {
                        Ok(ack) if ack.duplicate || ack.sequence != expected => {
                            return PublishError::Fenced(format!(
                                "position {position} was stored as message {} (duplicate: {}), \
                                 expected {expected}",
                                ack.sequence, ack.duplicate
                            ));
                        }
                        Ok(_) => {
                            self.confirm(position, 1);
                            since_announced += 1;
                            if in_flight.is_empty() || since_announced >= ANNOUNCE_EVERY {
                                self.announce();
                                since_announced = 0;
                            }
                        }
                        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                            return PublishError::Fenced(e.to_string())
                        }
                        Err(e) => return PublishError::Broker(e.to_string()),
                    }
                }
            }
        }
    }

    /// Waits for the acknowledgements still in flight, in order, and
    /// counts those that stored their event where expected.
    async fn settle(&self, in_flight: VecDeque<(PublishAckFuture, u64, u64)>) {
        for (ack, expected, position) in in_flight {
            match ack.await {
                Ok(ack) if !ack.duplicate && ack.sequence == expected => self.confirm(position, 1),
                _ => break,
            }
        }
    }

    fn confirm(&self, position: u64, published: u64) {
        self.shared
            .published
            .fetch_add(published, Ordering::Relaxed);

        self.shared.confirmed.fetch_max(position, Ordering::AcqRel);
    }

    /// Tells waiters ([`Publisher::wait_for`]) where the stream is.
    fn announce(&self) {
        let published = self.shared.published.load(Ordering::Relaxed);
        let counted = self.shared.counted.swap(published, Ordering::Relaxed);
        if published > counted {
            metrics::counter!(PUBLISHED_EVENTS, "stream" => self.config.stream.clone())
                .increment(published - counted);
        }
        let position = self.shared.confirmed.load(Ordering::Acquire);
        self.shared.last_position.send_if_modified(|p| {
            let moved = position > *p;
            if moved {
                *p = position;
            }
            moved
        });
    }

    fn refused(&self, kind: PublishErrorKind, text: String, event: &RecordedEvent) -> PublishError {
        match kind {
            PublishErrorKind::MaxPayloadExceeded => {
                too_large(event, event.data.as_str().len(), self.client.max_payload())
            }
            PublishErrorKind::WrongLastSequence => PublishError::Fenced(text),
            _ => PublishError::Broker(text),
        }
    }
}

/// An event made into its message, ready to publish.
struct Prepared {
    subject: String,
    message: PublishMessage,
    event: RecordedEvent,
}

impl Prepared {
    /// The message for an event: subject, headers and payload, checked
    /// against the broker's `max_payload` (`limit`, 0 for none).
    fn new(prefix: &str, limit: usize, event: RecordedEvent) -> Result<Self, PublishError> {
        let (headers, headers_size) = headers::for_event(&event)?;
        let payload = bytes::Bytes::copy_from_slice(event.data.as_str().as_bytes());
        let size = payload.len() + headers_size;
        if limit > 0 && size > limit {
            return Err(too_large(&event, size, limit));
        }
        let subject = subject_for(prefix, &event.stream_id);
        if subject.len() > MAX_SUBJECT {
            return Err(PublishError::SubjectTooLong {
                event_id: event.event_id,
                stream_id: event.stream_id.as_str().to_owned(),
                position: event.global_position,
                length: subject.len(),
                limit: MAX_SUBJECT,
            });
        }
        Ok(Prepared {
            subject,
            message: PublishMessage::build().payload(payload).headers(headers),
            event,
        })
    }
}

fn too_large(event: &RecordedEvent, size: usize, limit: usize) -> PublishError {
    PublishError::TooLarge {
        event_id: event.event_id,
        stream_id: event.stream_id.as_str().to_owned(),
        position: event.global_position,
        size,
        limit,
    }
}

/// The longest subject published: nats-server's default `max_control_line`
/// (4,096 bytes) less room for the rest of the `HPUB` line (reply inbox,
/// sizes).
pub const MAX_SUBJECT: usize = 3_800;

/// Metric: events the stream acknowledged, by JetStream stream
/// (`evently_core::telemetry` lists them all).
pub const PUBLISHED_EVENTS: &str = "evently_published_events_total";
/// Metric: events of the log not yet published, by JetStream stream.
pub const PUBLISHER_LAG_EVENTS: &str = "evently_publisher_lag_events";

/// Acknowledgements between two announcements to waiters.
const ANNOUNCE_EVERY: u32 = 64;

/// Aborts the log reader when a pass ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
