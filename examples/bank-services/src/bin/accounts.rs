//! The accounts service: owns the account aggregate in its own schema,
//! serves its commands by virtual address over NATS, answers history
//! queries from its log, and publishes the log to JetStream.
//!
//! Every instance publishes: the publisher fences itself on the stream's
//! last sequence, so two running instances store each event once, and
//! losing one leaves the other publishing.

use std::process::ExitCode;
use std::sync::Arc;

use bank_services::domain::Account;
use bank_services::queries::{
    self, HistoryEvent, HistoryQuery, QueryError, TransferQuery, TransferStatus,
};
use bank_services::transfer::Transfer;
use bank_services::{runtime, Config};
use evently::deadline::SystemClock;
use evently::nats::async_nats;
use evently::nats::{CommandService, Publisher, PublisherConfig};
use evently::postgres::PgEventStore;
use evently::prelude::*;
use evently::process::{process_status, run_process, ProcessOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_logs("accounts");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "accounts stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let metrics = runtime::init_metrics();
    let config = Config::from_env("127.0.0.1:9101")?;
    let store = PgEventStore::builder()
        .schema(&config.accounts_schema)
        .connect(&config.database_url)
        .await?;
    let client = async_nats::connect(&config.nats_url).await?;

    let mut commands = CommandService::start(&client, &config.accounts_service, "1.0.0").await?;
    commands
        .serve(Repository::<Account, _>::new(store.clone()), 64)
        .await?;

    let history_store = store.clone();
    queries::serve(
        client.clone(),
        &config.accounts_service,
        "history",
        16,
        move |query: HistoryQuery| history(history_store.clone(), query),
    )
    .await?;

    // Transfers: the process manager runs beside the accounts it moves
    // money between (with several instances, one holds its runners'
    // leases; any answers status queries).
    let transfers = Repository::<Transfer, _>::new(store.clone());
    let process = run_process(
        transfers.clone(),
        store.clone(),
        Repository::<Account, _>::new(store.clone()),
        SystemClock,
        ProcessOptions::default(),
    );
    queries::serve(
        client.clone(),
        &config.accounts_service,
        "transfer",
        16,
        move |query: TransferQuery| transfer_status(transfers.clone(), query),
    )
    .await?;

    let publisher = Publisher::new(
        store.clone(),
        client.clone(),
        PublisherConfig::new(&config.events_stream, &config.events_prefix),
    );
    publisher.ensure_stream().await?;
    let publishing = publisher.spawn();

    let ready: runtime::Readiness = {
        let (store, client) = (store.clone(), client.clone());
        Arc::new(move || {
            let (store, client) = (store.clone(), client.clone());
            Box::pin(async move {
                store
                    .head_position()
                    .await
                    .map_err(|e| format!("PostgreSQL: {e}"))?;
                match client.connection_state() {
                    async_nats::connection::State::Connected => Ok(()),
                    state => Err(format!("NATS: {state:?}")),
                }
            })
        })
    };
    runtime::serve_http(config.http_addr, runtime::health_routes(metrics, ready)).await?;

    // Requests stop coming (the other instances take them), the publisher
    // stops where the stream says, and what is buffered goes out.
    commands.stop().await;
    process.stop().await;
    publishing.abort();
    client.drain().await?;
    store.pool().close().await;
    tracing::info!("stopped");
    Ok(())
}

/// An account's events with their metadata, from the log.
async fn history(
    store: PgEventStore,
    query: HistoryQuery,
) -> Result<Vec<HistoryEvent>, QueryError> {
    let stream = Account::stream_id(&query.id);
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = store
            .read_stream(&stream, from, 500)
            .await
            .map_err(|e| QueryError::new(503, e.to_string()))?;
        let full = page.len() == 500;
        for event in page {
            from = event.stream_version + 1;
            events.push(HistoryEvent {
                event_id: event.event_id,
                version: event.stream_version,
                position: event.global_position,
                event_type: event.event_type.to_string(),
                data: event
                    .data
                    .to_value()
                    .map_err(|e| QueryError::new(500, e.to_string()))?,
                metadata: event.metadata,
                recorded_at: event.recorded_at,
            });
        }
        if !full {
            break;
        }
    }
    if events.is_empty() {
        return Err(QueryError::new(404, format!("no account {:?}", query.id)));
    }
    Ok(events)
}

/// A transfer's stage, amount and the deadlines it waits for.
async fn transfer_status(
    transfers: Repository<Transfer, PgEventStore>,
    query: TransferQuery,
) -> Result<TransferStatus, QueryError> {
    let status = process_status(&transfers, &query.id)
        .await
        .map_err(|e| QueryError::new(503, e.to_string()))?;
    if status.version == 0 {
        return Err(QueryError::new(404, format!("no transfer {:?}", query.id)));
    }
    Ok(TransferStatus {
        id: query.id,
        stage: status.state.stage,
        from: status.state.from,
        amount: status.state.amount,
        version: status.version,
        waiting: status
            .waiting
            .into_iter()
            .map(|d| (d.name, d.due))
            .collect(),
    })
}
