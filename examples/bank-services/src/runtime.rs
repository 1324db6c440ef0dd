//! What every service process does the same way: logs, metrics, health
//! routes and shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Structured logs to standard error: text, or one JSON object per line
/// with `LOG_FORMAT=json`; the filter from `RUST_LOG` (default `info`);
/// each span's close too with `LOG_SPANS=1`.
pub fn init_logs(service: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // LOG_SPANS=1 also logs each span as it closes, with its fields and
    // timings: a request followed across processes by its correlation id.
    let spans = if std::env::var("LOG_SPANS").is_ok_and(|v| v == "1") {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_writer(std::io::stderr);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.with_ansi(false).init();
    }
    tracing::info!(service, "starting");
}

/// Installs the Prometheus recorder every metric goes to.
pub fn init_metrics() -> PrometheusHandle {
    PrometheusBuilder::new()
        .install_recorder()
        .expect("the metrics recorder is installed once, at start")
}

/// Whether the process can serve: `Ok` or what is wrong.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// `/healthz` (the process answers), `/readyz` (`ready` says it can
/// serve: 200, or 503 with the reason) and `/metrics` (Prometheus text).
pub fn health_routes<S: Clone + Send + Sync + 'static>(
    metrics: PrometheusHandle,
    ready: Readiness,
) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = Arc::clone(&ready);
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready".to_owned()).into_response(),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(axum::body::Body::from(metrics.render()))
                        .expect("a static header")
                }
            }),
        )
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Serves `router` on `addr` until a shutdown signal, finishing requests
/// in flight; logs the address bound (port 0 picks a free one).
pub async fn serve_http(addr: std::net::SocketAddr, router: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "listening");
    // On standard output too, for whoever started the process.
    println!("listening on http://{bound}");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
}
