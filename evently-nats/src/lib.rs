//! The evently event log on NATS JetStream, and commands by virtual
//! address: the system between services.
//!
//! - [`Publisher`]: a service's log published as a JetStream stream.
//! - [`JetStreamSource`]: another service's stream as an
//!   [`evently_core::EventSource`] for the ordinary projection runner.
//! - [`CommandService`] and [`RemoteRepository`]: a repository served on
//!   NATS and its typed client, by service name ([`service`] says what
//!   travels and what it asks of your types); [`discover`] lists a
//!   service's instances.
//!
//! `examples/nats_services.rs` (in the workspace) runs all of them.
//!
//! A service publishes what happened as a stream that other services
//! consume at their own pace. [`Publisher`] follows any store's global log
//! ([`evently_core::EventStore`]: in memory, PostgreSQL) and publishes
//! every event to a JetStream stream, once, in log order, on the subject
//! `<prefix>.<aggregate type>.<stream id>` ([`subject`]), with the headers
//! of [`headers`] and the payload as the body.
//!
//! ```no_run
//! # async fn run(store: evently_memory::MemoryStore) -> Result<(), Box<dyn std::error::Error>> {
//! use evently_nats::{Publisher, PublisherConfig};
//!
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let publisher = Publisher::new(store, client, PublisherConfig::new("BANK", "bank"));
//! publisher.ensure_stream().await?;
//! // Runs until a fatal error; restarts resume from what the stream holds.
//! let fatal = publisher.spawn();
//! println!("{:?}, lag {}", publisher.stats(), publisher.lag().await?);
//! # drop(fatal); Ok(()) }
//! ```
//!
//! **Exactly once.** Each publish expects the stream's last sequence, so
//! a message can only follow the event before it in the log; after any
//! failure or restart the publisher reads the stream's last message and
//! goes on from its position. See [`Publisher`] for why this does not
//! depend on JetStream's de-duplication window.
//!
//! **Back-pressure.** At most [`PublisherConfig::max_in_flight`]
//! publishes wait for their acknowledgement; the log is read as the
//! broker acknowledges, so a slow or stopped broker slows the publisher
//! and its memory stays bounded. [`Publisher::stats`] and
//! [`Publisher::lag`] report what it has done and how far behind it is.
//!
//! **An event larger than the broker's `max_payload`** stops the publisher
//! with [`PublishError::TooLarge`], naming the event and the limit: it
//! cannot be skipped without the stream no longer being the log.
//!
//! **Servers.** Works with nats-server 2.9 and later (CI runs 2.9.10). It
//! uses no key-value bucket and no account-info call: async-nats 0.51's
//! fail on 2.9 servers. 2.10 or later is recommended in production.

pub mod headers;
mod publisher;
pub mod service;
mod source;
pub mod subject;

/// The NATS client this crate is built on, so a service needs no second
/// dependency to connect: `evently_nats::async_nats::connect(url)`.
pub use async_nats;
pub use publisher::{
    PublishError, Publisher, PublisherConfig, PublisherStats, MAX_SUBJECT, PUBLISHED_EVENTS,
    PUBLISHER_LAG_EVENTS,
};
pub use service::{discover, CommandService, Instance, RemoteError, RemoteRepository};
pub use source::JetStreamSource;
