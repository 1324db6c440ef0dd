//! A reference system built on evently: two services that own their state
//! and talk through an event stream, and an HTTP gateway in front.
//!
//! - `accounts` owns the account aggregate (PostgreSQL schema
//!   `ACCOUNTS_SCHEMA`), serves its commands by virtual address over NATS
//!   (`<ACCOUNTS_SERVICE>.account`, any number of instances), answers
//!   history queries (`<ACCOUNTS_SERVICE>.history`) from its log, and
//!   publishes that log to JetStream.
//! - `reporting` owns other tables (schema `REPORTING_SCHEMA`): views of
//!   balances, ledgers and daily totals, kept from the JetStream stream,
//!   never from the accounts tables; answers queries over NATS.
//! - `gateway` is the one HTTP entry point (axum).
//! - `bank` starts one of each for a demo.
//!
//! Each binary reads its configuration from the environment
//! ([`Config::from_env`]), logs structured lines (JSON with
//! `LOG_FORMAT=json`), exports Prometheus metrics at `/metrics` and stops
//! gracefully on SIGTERM or Ctrl-C.

pub mod config;
pub mod domain;
pub mod load;
pub mod queries;
pub mod runtime;
pub mod system;
pub mod transfer;

pub use config::Config;

/// The namespace of the command ids the gateway derives from idempotency
/// keys (UUID v5 of the key), and of request fingerprints.
pub const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b61_6e6b_2d67_6174_6577_6179_2d6b_6579);
