//! The reporting service: keeps balances, ledgers and daily totals in its
//! own schema from the accounts stream on JetStream (never from the
//! accounts tables), and answers queries over NATS. A query may ask for a
//! document once it has reached a version (the caller's own write): it
//! waits for the view to get there, up to a time-out.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_services::domain::{Balance, DailyTotals, Ledger};
use bank_services::queries::{self, DocumentQuery, DocumentReply, QueryError};
use bank_services::{runtime, Config};
use evently::nats::async_nats;
use evently::nats::JetStreamSource;
use evently::postgres::PgEventStore;
use evently::prelude::*;
use evently::projection::{ProjectionOptions, ProjectionState};
use evently::view::{View, Views};
use evently::EventSource;
use serde::Serialize;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_logs("reporting");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "reporting stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let metrics = runtime::init_metrics();
    let config = Config::from_env("127.0.0.1:9102")?;
    let store = PgEventStore::builder()
        .schema(&config.reporting_schema)
        .connect(&config.database_url)
        .await?;
    let client = async_nats::connect(&config.nats_url).await?;
    let source = JetStreamSource::new(client.clone(), &config.events_stream);
    let options = ProjectionOptions::default();

    let balances: Arc<Views<Balance>> = Arc::new(
        store
            .run_view_from(source.clone(), "balances", options.clone())
            .await?,
    );
    let ledgers: Arc<Views<Ledger>> = Arc::new(
        store
            .run_view_from(source.clone(), "ledgers", options.clone())
            .await?,
    );
    let daily: Arc<Views<DailyTotals>> = Arc::new(
        store
            .run_view_from(source.clone(), "daily_totals", options)
            .await?,
    );

    let service = config.reporting_service.clone();
    serve_view(&client, &service, "balance", &balances).await?;
    serve_view(&client, &service, "ledger", &ledgers).await?;
    serve_view(&client, &service, "daily", &daily).await?;

    let ready: runtime::Readiness = {
        let (store, client, source) = (store.clone(), client.clone(), source.clone());
        let (balances, ledgers, daily) = (balances.clone(), ledgers.clone(), daily.clone());
        let max_lag = config.max_lag_events;
        Arc::new(move || {
            let (store, client, source) = (store.clone(), client.clone(), source.clone());
            let views = [balances.status(), ledgers.status(), daily.status()];
            Box::pin(async move {
                store
                    .head_position()
                    .await
                    .map_err(|e| format!("PostgreSQL: {e}"))?;
                if client.connection_state() != async_nats::connection::State::Connected {
                    return Err(format!("NATS: {:?}", client.connection_state()));
                }
                for status in views {
                    if status.state != ProjectionState::Running {
                        return Err(format!("view {} is {:?}", status.name, status.state));
                    }
                    let lag = source
                        .events_after(status.position, max_lag + 1)
                        .await
                        .map_err(|e| format!("JetStream: {e}"))?;
                    if lag > max_lag {
                        return Err(format!("view {} is {lag} events behind", status.name));
                    }
                }
                Ok(())
            })
        })
    };
    runtime::serve_http(config.http_addr, runtime::health_routes(metrics, ready)).await?;

    // The views stop after their current batch, at a checkpoint; then
    // NATS drains.
    for views in [balances.status(), ledgers.status(), daily.status()] {
        tracing::info!(view = %views.name, position = views.position, "stopping");
    }
    drop((balances, ledgers, daily));
    client.drain().await?;
    store.pool().close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Answers `<service>.<query>` with a document of `views`.
async fn serve_view<V: View + Serialize + Clone>(
    client: &async_nats::Client,
    service: &str,
    query: &str,
    views: &Arc<Views<V>>,
) -> Result<(), BoxError> {
    let views = Arc::clone(views);
    queries::serve(
        client.clone(),
        service,
        query,
        32,
        move |q: DocumentQuery| {
            let views = Arc::clone(&views);
            async move { document(&views, q).await }
        },
    )
    .await?;
    Ok(())
}

/// The document under the query's key, once it has reached the version
/// asked for (404 when there is none, 504 when it does not get there in
/// time).
async fn document<V: View + Clone>(
    views: &Views<V>,
    query: DocumentQuery,
) -> Result<DocumentReply<V>, QueryError> {
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(2_000).min(30_000));
    let deadline = Instant::now() + timeout;
    let wanted = query.min_version.unwrap_or(0);
    loop {
        let found = views
            .document(&query.key)
            .await
            .map_err(|e| QueryError::new(503, e.to_string()))?;
        match found {
            Some(doc) if doc.version >= wanted => {
                return Ok(DocumentReply {
                    key: doc.key,
                    version: doc.version,
                    document: doc.doc,
                })
            }
            found if wanted == 0 || Instant::now() >= deadline => {
                return Err(match found {
                    None if wanted == 0 => QueryError::new(404, format!("no {:?}", query.key)),
                    _ => QueryError::new(
                        504,
                        format!(
                            "{:?} has not reached version {wanted} within {timeout:?}",
                            query.key
                        ),
                    ),
                });
            }
            _ => {
                // Wait for the view to move, then look again: on this
                // instance's runner when it is the one running the view;
                // an instance on standby (another holds the view's lease)
                // sees the other's writes only by reading again.
                let status = views.status();
                let left = deadline.saturating_duration_since(Instant::now());
                if status.state == ProjectionState::Running {
                    let _ = views.wait_for(status.position + 1, left).await;
                } else {
                    tokio::time::sleep(left.min(Duration::from_millis(10))).await;
                }
            }
        }
    }
}
