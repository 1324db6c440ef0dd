//! `es serve`: the log browser page. Read-only: every route is a GET.
//!
//! Safe to expose on a private network: it binds to loopback unless told
//! otherwise; every value it shows goes through maud, which escapes it
//! (payloads are user data); the pages forbid inline scripts and
//! everything from other origins (`Content-Security-Policy`), so even an
//! unescaped value could not run; and with `--token` every request must
//! carry the token (`Authorization: Bearer …`, or `?token=…` once, which
//! sets an `HttpOnly`, `SameSite=Strict` cookie).

mod pages;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use evently_core::EventStore;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use uuid::Uuid;

use crate::args::ServeArgs;
use crate::error::CliError;
use crate::store::{EventView, Inspector};

/// How long the lag history reaches back.
const HISTORY: Duration = Duration::from_secs(10 * 60);
/// How often the projections' lag is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// One sample of every projection's lag.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) at: DateTime<Utc>,
    /// (projection, events behind, lag in seconds)
    pub(crate) lags: Vec<(String, u64, f64)>,
}

#[derive(Clone)]
struct App {
    inspector: Inspector,
    token: Option<Arc<str>>,
    history: Arc<Mutex<VecDeque<Sample>>>,
}

/// Serves the page until interrupted (Ctrl-C or SIGTERM).
pub(crate) async fn serve(
    inspector: Inspector,
    args: &ServeArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let app = App {
        inspector,
        token: args
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(Arc::from),
        history: Arc::default(),
    };
    let sampler = tokio::spawn(sample(app.inspector.clone(), app.history.clone()));
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", args.bind)))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::failed(format!("cannot read the address it listens on: {e}")))?;
    writeln!(
        out,
        "es serve: the log browser of schema {} at http://{address}/{}",
        app.inspector.store().schema(),
        if app.token.is_some() {
            " (token required)"
        } else {
            ""
        }
    )?;
    out.flush()?;
    if let Some(path) = &args.address_file {
        std::fs::write(path, address.to_string())
            .map_err(|e| CliError::failed(format!("{}: cannot write it: {e}", path.display())))?;
    }
    let router = router(app);
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|e| CliError::failed(format!("the server failed: {e}")));
    sampler.abort();
    result
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn sample(inspector: Inspector, history: Arc<Mutex<VecDeque<Sample>>>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let Ok(rows) = inspector.projections().await else {
            continue;
        };
        let now = Utc::now();
        let mut h = history.lock().expect("not poisoned");
        h.push_back(Sample {
            at: now,
            lags: rows
                .into_iter()
                .map(|p| (p.name, p.behind_events, p.lag_seconds))
                .collect(),
        });
        while h
            .front()
            .is_some_and(|s| now - s.at > chrono::Duration::from_std(HISTORY).expect("fits"))
        {
            h.pop_front();
        }
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/streams") }))
        .route("/streams", get(streams))
        .route("/streams/{id}", get(stream))
        .route("/events/{id}", get(event))
        .route("/commands/{id}", get(command))
        .route("/audit/{id}", get(audit))
        .route("/tail", get(tail_page))
        .route("/tail/events", get(tail_events))
        .route("/projections", get(projections))
        .route("/static/tail.js", get(tail_js))
        .route("/static/style.css", get(style))
        .fallback(|| async { pages::problem(StatusCode::NOT_FOUND, "No such page.") })
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// The token check and the security headers.
async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let query_token = request.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::to_owned)
        });
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let cookie = request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("es_token=").map(str::to_owned));
        let matches = |t: &Option<String>| {
            t.as_deref()
                .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
        };
        if matches(&query_token) {
            // Trade the token in the address for a cookie, and drop it from
            // the address (and from the history and logs).
            let path = request.uri().path().to_owned();
            let mut response = Redirect::to(&path).into_response();
            let cookie = format!("es_token={token}; Path=/; HttpOnly; SameSite=Strict");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            return secured(response);
        }
        if !matches(&bearer) && !matches(&cookie) {
            return secured(pages::problem(
                StatusCode::UNAUTHORIZED,
                "This log browser needs its access token: open it once with ?token=… (or send Authorization: Bearer …).",
            ));
        }
    }
    secured(next.run(request).await)
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secured(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn failure(e: CliError) -> Response {
    let status = match e.exit {
        crate::Exit::NotFound => StatusCode::NOT_FOUND,
        crate::Exit::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        crate::Exit::Usage => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    pages::problem(status, &e.message)
}

#[derive(Deserialize)]
struct Search {
    q: Option<String>,
}

async fn streams(State(app): State<App>, Query(search): Query<Search>) -> Response {
    let q = search.q.unwrap_or_default();
    match app.inspector.search_streams(&q, 200).await {
        Ok(rows) => pages::streams(&q, &rows),
        Err(e) => failure(e),
    }
}

async fn stream(State(app): State<App>, Path(id): Path<String>) -> Response {
    match crate::log::read_shown(&app.inspector, &id, None).await {
        Ok(shown) => pages::stream(&shown),
        Err(e) => failure(e),
    }
}

fn parse_id(id: &str) -> Result<Uuid, CliError> {
    id.parse()
        .map_err(|_| CliError::usage(format!("{id:?} is not an id.")))
}

/// A link in a causation chain.
pub(crate) enum Cause {
    Event(EventView),
    Command(crate::store::CommandView),
    /// An id the store has no event or journaled command for.
    Unknown(Uuid),
}

/// What caused `id`, nearest first, up to the request's start.
async fn causes(inspector: &Inspector, mut next: Option<Uuid>) -> Result<Vec<Cause>, CliError> {
    let mut chain = Vec::new();
    while let Some(id) = next.take() {
        if chain.len() >= 50
            || chain
                .iter()
                .any(|c| matches!(c, Cause::Event(e) if e.event_id == id))
        {
            break;
        }
        if let Some(e) = inspector.event(id).await? {
            next = e.causation_id().filter(|c| *c != id);
            chain.push(Cause::Event(e));
        } else if let Some(c) = inspector.command(id).await? {
            next = c.causation_id().filter(|x| *x != id);
            chain.push(Cause::Command(c));
        } else {
            chain.push(Cause::Unknown(id));
        }
    }
    Ok(chain)
}

async fn event(State(app): State<App>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return failure(e),
    };
    let result = async {
        let event = app
            .inspector
            .event(id)
            .await?
            .ok_or_else(|| CliError::not_found(format!("No event has the id {id}.")))?;
        let chain = causes(&app.inspector, event.causation_id()).await?;
        let caused_events = app
            .inspector
            .events_caused_by(id, event.correlation_id())
            .await?;
        let mut caused_commands = Vec::new();
        for c in app.inspector.commands_caused_by(id).await? {
            let events = app
                .inspector
                .events_caused_by(c.command_id, event.correlation_id())
                .await?;
            caused_commands.push((c, events));
        }
        Ok::<_, CliError>(pages::event(
            &event,
            &chain,
            &caused_events,
            &caused_commands,
        ))
    }
    .await;
    result.unwrap_or_else(failure)
}

async fn command(State(app): State<App>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return failure(e),
    };
    let result = async {
        let command =
            app.inspector.command(id).await?.ok_or_else(|| {
                CliError::not_found(format!("No journaled command has the id {id}."))
            })?;
        let chain = causes(&app.inspector, command.causation_id()).await?;
        let correlation = crate::store::id_field(&command.metadata, "correlation_id");
        let events = app.inspector.events_caused_by(id, correlation).await?;
        Ok::<_, CliError>(pages::command(&command, &chain, &events))
    }
    .await;
    result.unwrap_or_else(failure)
}

async fn audit(State(app): State<App>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return failure(e),
    };
    let result = async {
        let events = app.inspector.correlation(id).await?;
        let commands = app.inspector.commands_of_request(id).await?;
        if events.is_empty() && commands.is_empty() {
            return Err(CliError::not_found(format!(
                "No event or command carries the correlation id {id}."
            )));
        }
        Ok(pages::audit(&crate::log::audit_tree(id, events, commands)))
    }
    .await;
    result.unwrap_or_else(failure)
}

async fn tail_page() -> Response {
    pages::tail()
}

#[derive(Deserialize)]
struct TailQuery {
    from: Option<u64>,
}

async fn tail_events(
    State(app): State<App>,
    Query(q): Query<TailQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Response> {
    let store = app.inspector.store().clone();
    let after = match q.from {
        Some(p) => p,
        None => store.head_position().await.map_err(|e| failure(e.into()))?,
    };
    let events = store
        .subscribe(after + 1)
        .take_while(|r| std::future::ready(r.is_ok()))
        .filter_map(|r| async move {
            let e = EventView::from_recorded(&r.ok()?);
            let data = serde_json::to_string(&e).ok()?;
            Some(Ok(SseEvent::default()
                .event("event")
                .id(e.position.to_string())
                .data(data)))
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn projections(State(app): State<App>) -> Response {
    match app.inspector.projections().await {
        Ok(rows) => {
            let history: Vec<Sample> = app
                .history
                .lock()
                .expect("not poisoned")
                .iter()
                .cloned()
                .collect();
            pages::projections(&rows, &history)
        }
        Err(e) => failure(e),
    }
}

async fn tail_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("tail.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
        .into_response()
}
