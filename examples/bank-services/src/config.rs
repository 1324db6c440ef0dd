//! Configuration from the environment, with documented defaults.

use std::net::SocketAddr;

/// What every service reads from its environment.
///
/// | variable | default | used by |
/// |---|---|---|
/// | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/test` | accounts, reporting |
/// | `NATS_URL` | `127.0.0.1:4222` | all |
/// | `ACCOUNTS_SCHEMA` | `bank_accounts` | accounts |
/// | `REPORTING_SCHEMA` | `bank_reporting` | reporting |
/// | `ACCOUNTS_SERVICE` | `bank_accounts` | accounts, gateway (the virtual address) |
/// | `REPORTING_SERVICE` | `bank_reporting` | reporting, gateway |
/// | `EVENTS_STREAM` | `BANK_ACCOUNTS` | accounts (publishes), reporting (consumes) |
/// | `EVENTS_PREFIX` | `bank-events` | the subjects of the published events |
/// | `HTTP_ADDR` | gateway `127.0.0.1:8080`, accounts `127.0.0.1:9101`, reporting `127.0.0.1:9102` | `/healthz`, `/readyz`, `/metrics` (and the gateway's routes) |
/// | `REQUEST_TIMEOUT_MS` | `5000` | gateway: a command's or a query's time-out |
/// | `MAX_LAG_EVENTS` | `1000` | reporting's `/readyz`: the lag it still calls ready |
/// | `LOG_FORMAT` | `text` | `json` for one JSON object per line |
/// | `LOG_SPANS` | unset | `1` logs each span as it closes, with its fields |
/// | `RUST_LOG` | `info` | the log filter |
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL.
    pub database_url: String,
    /// NATS with JetStream.
    pub nats_url: String,
    /// The accounts service's schema.
    pub accounts_schema: String,
    /// The reporting service's schema.
    pub reporting_schema: String,
    /// The accounts service's name: its virtual address.
    pub accounts_service: String,
    /// The reporting service's name.
    pub reporting_service: String,
    /// The JetStream stream of the accounts log.
    pub events_stream: String,
    /// The subject prefix of the published events.
    pub events_prefix: String,
    /// Where this process serves HTTP.
    pub http_addr: SocketAddr,
    /// A request's time-out.
    pub request_timeout: std::time::Duration,
    /// The reporting lag (events) `/readyz` still accepts.
    pub max_lag_events: u64,
}

impl Config {
    /// Reads the environment; `default_http` is this binary's default
    /// `HTTP_ADDR`.
    pub fn from_env(default_http: &str) -> Result<Self, String> {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match std::env::var(name) {
                Ok(text) => text
                    .parse()
                    .map_err(|_| format!("{name}={text:?} is not a whole number")),
                Err(_) => Ok(default),
            }
        };
        let http = var("HTTP_ADDR", default_http);
        Ok(Config {
            database_url: var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
            nats_url: var("NATS_URL", "127.0.0.1:4222"),
            accounts_schema: var("ACCOUNTS_SCHEMA", "bank_accounts"),
            reporting_schema: var("REPORTING_SCHEMA", "bank_reporting"),
            accounts_service: var("ACCOUNTS_SERVICE", "bank_accounts"),
            reporting_service: var("REPORTING_SERVICE", "bank_reporting"),
            events_stream: var("EVENTS_STREAM", "BANK_ACCOUNTS"),
            events_prefix: var("EVENTS_PREFIX", "bank-events"),
            http_addr: http.parse().map_err(|_| {
                format!("HTTP_ADDR={http:?} is not an address such as 127.0.0.1:8080")
            })?,
            request_timeout: std::time::Duration::from_millis(number("REQUEST_TIMEOUT_MS", 5_000)?),
            max_lag_events: number("MAX_LAG_EVENTS", 1_000)?,
        })
    }
}
