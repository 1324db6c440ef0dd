//! The pages, rendered on the server with maud: every `(value)` is
//! escaped, so a payload shows as text whatever it holds.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::{Cause, Sample};
use crate::log::{Audit, Node, Shown};
use crate::output::{clip, time};
use crate::store::{CommandView, EventView, ProjectionRow, StreamRow};

/// A path segment, percent-encoded (stream ids may hold anything).
fn enc(segment: &str) -> String {
    let mut s = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn page(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · es" }
                link rel="stylesheet" href="/static/style.css";
            }
            body {
                header {
                    strong { "es" }
                    a href="/streams" { "Streams" }
                    a href="/tail" { "Live tail" }
                    a href="/projections" { "Projections" }
                    form action="/streams" method="get" {
                        input type="search" name="q" placeholder="stream id contains…" aria-label="Search streams";
                    }
                }
                main { (body) }
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// An error page.
pub(crate) fn problem(status: StatusCode, message: &str) -> Response {
    let mut response = page(
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.problem { (message) }
        },
    );
    *response.status_mut() = status;
    response
}

fn event_link(e: &EventView) -> Markup {
    html! { a.event-link href={ "/events/" (e.event_id) } { (e.stream_id) "@" (e.stream_version) " " (e.event_type) } }
}

fn command_link(c: &CommandView) -> Markup {
    html! { a.command-link href={ "/commands/" (c.command_id) } { "command " (c.command_type) " on " (c.stream_id) } }
}

pub(crate) fn streams(q: &str, rows: &[StreamRow]) -> Response {
    page(
        "Streams",
        html! {
            h1 { "Streams" }
            @if !q.is_empty() { p.muted { "Streams whose id contains “" (q) "”: " (rows.len()) } }
            table id="streams" {
                thead { tr { th { "Stream" } th { "Type" } th { "Version" } th { "Last position" } th { "Last activity" } } }
                tbody {
                    @for s in rows {
                        tr {
                            td { a.stream-link href={ "/streams/" (enc(&s.stream_id)) } { (s.stream_id) } }
                            td { (s.aggregate_type.as_deref().unwrap_or("")) }
                            td { (s.version) @if s.closed { " (closed)" } }
                            td { (s.last_position) }
                            td { (s.last_activity.as_ref().map(time).unwrap_or_default()) }
                        }
                    }
                }
            }
        },
    )
}

pub(crate) fn stream(shown: &Shown) -> Response {
    page(
        &shown.stream.stream_id,
        html! {
            h1 { (shown.stream.stream_id) }
            p.muted { "version " (shown.stream.version) @if shown.stream.closed { ", closed" } }
            table id="events" {
                thead { tr { th { "Version" } th { "Position" } th { "Type" } th { "Recorded" } th { "Payload" } } }
                tbody {
                    @for e in &shown.events {
                        tr {
                            td { (e.stream_version) }
                            td { (e.position) }
                            td { a.event-link href={ "/events/" (e.event_id) } { (e.event_type) } }
                            td { (time(&e.recorded_at)) }
                            td.payload { (clip(e.payload.get(), 200)) }
                        }
                    }
                }
            }
        },
    )
}

fn cause_item(cause: &Cause) -> Markup {
    match cause {
        Cause::Event(e) => html! { li { "event " (event_link(e)) } },
        Cause::Command(c) => html! { li { (command_link(c)) " (" (c.outcome) ")" } },
        Cause::Unknown(id) => {
            html! { li.muted { (id) " (not in this store: an unjournaled command, or another service's event)" } }
        }
    }
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json.to_owned())
}

pub(crate) fn event(
    e: &EventView,
    chain: &[Cause],
    caused_events: &[EventView],
    caused_commands: &[(CommandView, Vec<EventView>)],
) -> Response {
    page(
        &format!("{} {}@{}", e.event_type, e.stream_id, e.stream_version),
        html! {
            h1 { (e.event_type) }
            dl {
                dt { "Event id" } dd id="event-id" { (e.event_id) }
                dt { "Stream" } dd { a.stream-link href={ "/streams/" (enc(&e.stream_id)) } { (e.stream_id) } " version " (e.stream_version) }
                dt { "Position" } dd { (e.position) }
                dt { "Schema version" } dd { (e.schema_version) }
                dt { "Recorded" } dd { (time(&e.recorded_at)) }
                @if let Some(c) = e.correlation_id() {
                    dt { "Request" } dd { a.audit-link href={ "/audit/" (c) } { (c) } }
                }
            }
            h2 { "Payload" }
            pre id="payload" { (pretty(e.payload.get())) }
            h2 { "Metadata" }
            pre id="metadata" { (serde_json::to_string_pretty(&e.metadata).unwrap_or_default()) }
            h2 { "Caused by" }
            @if chain.is_empty() { p.muted { "Nothing recorded: this event starts its request." } }
            ol id="caused-by" { @for c in chain { (cause_item(c)) } }
            h2 { "Caused" }
            @if caused_events.is_empty() && caused_commands.is_empty() { p.muted { "Nothing recorded." } }
            ul id="caused" {
                @for c in caused_events { li { "event " (event_link(c)) } }
                @for (c, events) in caused_commands {
                    li { (command_link(c)) " (" (c.outcome) ")"
                        ul { @for e in events { li { "event " (event_link(e)) } } }
                    }
                }
            }
        },
    )
}

pub(crate) fn command(c: &CommandView, chain: &[Cause], events: &[EventView]) -> Response {
    page(
        &format!("{} on {}", c.command_type, c.stream_id),
        html! {
            h1 { "Command " (c.command_type) }
            dl {
                dt { "Command id" } dd { (c.command_id) }
                dt { "Stream" } dd { a.stream-link href={ "/streams/" (enc(&c.stream_id)) } { (c.stream_id) } }
                dt { "Outcome" } dd { (c.outcome) @if let Some(err) = &c.error { ": " (err) } }
                dt { "Recorded" } dd { (time(&c.recorded_at)) }
            }
            h2 { "Metadata" }
            pre { (serde_json::to_string_pretty(&c.metadata).unwrap_or_default()) }
            h2 { "Caused by" }
            @if chain.is_empty() { p.muted { "Nothing recorded: this command starts its request." } }
            ol id="caused-by" { @for cause in chain { (cause_item(cause)) } }
            h2 { "Its events" }
            ul id="caused" { @for e in events { li { "event " (event_link(e)) } } }
        },
    )
}

fn node(n: &Node) -> Markup {
    match n {
        Node::Command { command, caused } => html! {
            li { (command_link(command)) " (" (command.outcome) ")" ul { @for c in caused { (node(c)) } } }
        },
        Node::Event { event, caused } => html! {
            li { "event " (event_link(event)) " " span.payload { (clip(event.payload.get(), 120)) } ul { @for c in caused { (node(c)) } } }
        },
    }
}

pub(crate) fn audit(a: &Audit) -> Response {
    page(
        "Request",
        html! {
            h1 { "Request " (a.correlation_id) }
            p.muted { (a.events) " event(s), " (a.commands) " journaled command(s)" }
            ul.tree id="audit" { @for n in &a.roots { (node(n)) } }
        },
    )
}

pub(crate) fn tail() -> Response {
    page(
        "Live tail",
        html! {
            h1 { "Live tail" }
            p.muted id="tail-state" { "connecting…" }
            table id="tail" {
                thead { tr { th { "Position" } th { "Recorded" } th { "Stream" } th { "Type" } th { "Payload" } } }
                tbody id="tail-rows" {}
            }
            script src="/static/tail.js" {}
        },
    )
}

/// One projection's lag over the history, as an SVG polyline (seconds).
fn chart(name: &str, history: &[Sample]) -> Markup {
    let (w, h) = (600.0, 120.0);
    let points: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|s| {
            s.lags
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, lag)| (s.at.timestamp_millis() as f64, *lag))
        })
        .collect();
    let (t0, t1) = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (a.0, b.0.max(a.0 + 1.0)),
        _ => (0.0, 1.0),
    };
    let max = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let line: String = points
        .iter()
        .map(|(t, lag)| {
            format!(
                "{:.1},{:.1}",
                (t - t0) / (t1 - t0) * w,
                h - lag / max * (h - 10.0)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg.lag width="600" height="120" viewBox="0 0 600 120" role="img" aria-label={ "lag of " (name) " over the last minutes" } {
            polyline points=(line) fill="none" stroke="#2f6fde" stroke-width="2" {}
            text x="4" y="12" font-size="10" { "max " (format!("{max:.1}")) " s" }
        }
    }
}

pub(crate) fn projections(rows: &[ProjectionRow], history: &[Sample]) -> Response {
    let mut response = page(
        "Projections",
        html! {
            h1 { "Projections" }
            p.muted { "Lag: how long the oldest event a projection has not processed has waited. Sampled every 2 s; this page reloads every 5 s." }
            table id="projections" {
                thead { tr { th { "Projection" } th { "State" } th { "Position" } th { "Behind" } th { "Lag" } th { "Parked" } th { "Updated" } } }
                tbody {
                    @for p in rows {
                        tr {
                            td { (p.name) }
                            td { @if p.running { "running" } @else { "stopped" } }
                            td { (p.position) }
                            td { (p.behind_events) }
                            td { (format!("{:.1} s", p.lag_seconds)) }
                            td { (p.parked) }
                            td { (time(&p.updated_at)) }
                        }
                    }
                }
            }
            @for p in rows {
                h2 { (p.name) }
                (chart(&p.name, history))
            }
        },
    );
    response
        .headers_mut()
        .insert(header::REFRESH, axum::http::HeaderValue::from_static("5"));
    response
}
