//! `streams`, `show`, `tail` and `audit`: reading the log.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use chrono::{DateTime, Utc};
use evently_core::EventStore;
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::args::{AuditArgs, ShowArgs, StreamsArgs, TailArgs};
use crate::error::CliError;
use crate::output::{self, clip, Table};
use crate::store::{CommandView, EventView, Inspector, StreamRow};

/// `es streams`.
pub(crate) async fn streams(
    inspector: &Inspector,
    args: &StreamsArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let type_prefix = args.aggregate_type.as_ref().map(|t| format!("{t}-"));
    let prefix = match (&args.prefix, &type_prefix) {
        (Some(p), Some(t)) if !p.starts_with(t.as_str()) && !t.starts_with(p.as_str()) => {
            return Err(CliError::usage(format!(
                "--prefix {p:?} and --type {:?} select no stream together",
                args.aggregate_type.as_deref().unwrap_or_default()
            )))
        }
        (Some(p), Some(t)) => {
            if p.len() > t.len() {
                p.clone()
            } else {
                t.clone()
            }
        }
        (Some(p), None) => p.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => String::new(),
    };
    let rows = inspector.streams(&prefix, args.limit).await?;
    if json {
        return output::json(out, &rows);
    }
    let mut table = Table::new(&[
        "STREAM",
        "TYPE",
        "VERSION",
        "LAST POSITION",
        "LAST ACTIVITY",
        "CLOSED",
    ]);
    for s in &rows {
        table.row(vec![
            s.stream_id.clone(),
            s.aggregate_type.clone().unwrap_or_default(),
            s.version.to_string(),
            s.last_position.to_string(),
            s.last_activity
                .as_ref()
                .map(output::time)
                .unwrap_or_default(),
            if s.closed {
                "closed".into()
            } else {
                String::new()
            },
        ]);
    }
    table.print(out)?;
    writeln!(out, "{} stream(s)", rows.len())?;
    Ok(())
}

/// What `--as-of` names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AsOf {
    /// Up to this version.
    Version(u64),
    /// Up to this time (recorded at or before).
    Time(DateTime<Utc>),
}

impl AsOf {
    pub(crate) fn parse(text: &str) -> Result<AsOf, CliError> {
        if let Ok(v) = text.parse::<u64>() {
            return Ok(AsOf::Version(v));
        }
        DateTime::parse_from_rfc3339(text)
            .map(|t| AsOf::Time(t.with_timezone(&Utc)))
            .map_err(|_| {
                CliError::usage(format!(
                    "--as-of {text:?}: give a version (12) or an RFC 3339 time (2026-12-01T10:00:00Z)"
                ))
            })
    }

    pub(crate) fn includes(&self, e: &EventView) -> bool {
        match self {
            AsOf::Version(v) => e.stream_version <= *v,
            AsOf::Time(t) => e.recorded_at <= *t,
        }
    }
}

/// A stream and its events, as `es show --json` prints them.
#[derive(Debug, Serialize)]
pub(crate) struct Shown {
    pub(crate) stream: StreamRow,
    pub(crate) as_of: Option<AsOf>,
    /// The version the shown events reach.
    pub(crate) version: u64,
    pub(crate) events: Vec<EventView>,
}

/// Reads one stream (up to `as_of`), or says it does not exist.
pub(crate) async fn read_shown(
    inspector: &Inspector,
    stream_id: &str,
    as_of: Option<AsOf>,
) -> Result<Shown, CliError> {
    let stream = inspector.stream(stream_id).await?.ok_or_else(|| {
        CliError::not_found(format!(
            "stream {stream_id:?} not found in schema {:?}; `es streams --prefix <start of its id>` lists the streams there",
            inspector.store().schema()
        ))
    })?;
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = inspector.read_stream(stream_id, from, 1000).await?;
        let Some(last) = page.last() else { break };
        from = last.stream_version + 1;
        let full = page.len() == 1000;
        let mut done = false;
        for e in page {
            if as_of.is_none_or(|a| a.includes(&e)) {
                events.push(e);
            } else {
                done = true;
                break;
            }
        }
        if done || !full {
            break;
        }
    }
    Ok(Shown {
        version: events.last().map_or(0, |e| e.stream_version),
        stream,
        as_of,
        events,
    })
}

/// `es show`.
pub(crate) async fn show(
    inspector: &Inspector,
    args: &ShowArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let as_of = args.as_of.as_deref().map(AsOf::parse).transpose()?;
    let shown = read_shown(inspector, &args.stream, as_of).await?;
    if json {
        return output::json(out, &shown);
    }
    writeln!(
        out,
        "{}  version {}{}",
        shown.stream.stream_id,
        shown.stream.version,
        match as_of {
            Some(_) => format!(" (as of version {})", shown.version),
            None => String::new(),
        }
    )?;
    let mut table = Table::new(&[
        "VERSION",
        "POSITION",
        "TYPE",
        "RECORDED",
        "CORRELATION",
        "CAUSATION",
        "PAYLOAD",
    ]);
    for e in &shown.events {
        table.row(event_cells(e));
    }
    table.print(out)?;
    Ok(())
}

fn short(id: Option<Uuid>) -> String {
    id.map(|u| u.to_string()[..8].to_owned())
        .unwrap_or_default()
}

fn event_cells(e: &EventView) -> Vec<String> {
    vec![
        e.stream_version.to_string(),
        e.position.to_string(),
        e.event_type.clone(),
        output::time(&e.recorded_at),
        short(e.correlation_id()),
        short(e.causation_id()),
        clip(e.payload.get(), 60),
    ]
}

/// `es tail`.
pub(crate) async fn tail(
    inspector: &Inspector,
    args: &TailArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let store = inspector.store();
    let after = match args.from {
        Some(p) => p,
        None => store.head_position().await?,
    };
    let mut events = store.subscribe(after + 1);
    // On stderr, so scripts reading stdout see events only; a script that
    // appends once this line shows knows the tail will see it.
    eprintln!("es tail: following the log after position {after} (Ctrl-C stops)");
    let mut shown = 0u64;
    if args.count == Some(0) {
        return Ok(());
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = &mut ctrl_c => return Ok(()),
        };
        let Some(next) = next else {
            return Err(CliError::failed("the store ended the subscription"));
        };
        let e = EventView::from_recorded(&next?);
        if !args.event_types.is_empty() && !args.event_types.contains(&e.event_type) {
            continue;
        }
        if args
            .prefix
            .as_ref()
            .is_some_and(|p| !e.stream_id.starts_with(p.as_str()))
        {
            continue;
        }
        if json {
            serde_json::to_writer(&mut *out, &e)
                .map_err(|err| CliError::failed(format!("cannot write JSON: {err}")))?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{:>10}  {}  {}@{}  {}  {}",
                e.position,
                output::time(&e.recorded_at),
                e.stream_id,
                e.stream_version,
                e.event_type,
                clip(e.payload.get(), 80)
            )?;
        }
        out.flush()?;
        shown += 1;
        if args.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
    }
}

/// One node of an audit tree: a command or an event, with what it caused.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Node {
    /// A journaled command.
    Command {
        #[serde(flatten)]
        command: CommandView,
        caused: Vec<Node>,
    },
    /// An event.
    Event {
        #[serde(flatten)]
        event: EventView,
        caused: Vec<Node>,
    },
}

/// The causation tree of one request.
#[derive(Debug, Serialize)]
pub(crate) struct Audit {
    pub(crate) correlation_id: Uuid,
    pub(crate) events: usize,
    pub(crate) commands: usize,
    /// What started the request (and anything whose cause is not in it).
    pub(crate) roots: Vec<Node>,
}

/// Builds the causation tree of a request's events and commands.
pub(crate) fn audit_tree(
    correlation_id: Uuid,
    events: Vec<EventView>,
    commands: Vec<CommandView>,
) -> Audit {
    let (n_events, n_commands) = (events.len(), commands.len());
    let mut ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    ids.extend(commands.iter().map(|c| c.command_id));
    // Children by causation id, in log (journal) order; commands first.
    let mut children: HashMap<Option<Uuid>, Vec<Item>> = HashMap::new();
    for c in commands {
        let parent = c
            .causation_id()
            .filter(|p| ids.contains(p) && *p != c.command_id);
        children.entry(parent).or_default().push(Item::Command(c));
    }
    for e in events {
        let parent = e
            .causation_id()
            .filter(|p| ids.contains(p) && *p != e.event_id);
        children.entry(parent).or_default().push(Item::Event(e));
    }
    let mut seen = HashSet::new();
    let roots = build(None, &mut children, &mut seen);
    Audit {
        correlation_id,
        events: n_events,
        commands: n_commands,
        roots,
    }
}

enum Item {
    Command(CommandView),
    Event(EventView),
}

fn build(
    parent: Option<Uuid>,
    children: &mut HashMap<Option<Uuid>, Vec<Item>>,
    seen: &mut HashSet<Uuid>,
) -> Vec<Node> {
    let Some(items) = children.remove(&parent) else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for item in items {
        match item {
            Item::Command(command) => {
                if !seen.insert(command.command_id) {
                    continue;
                }
                let caused = build(Some(command.command_id), children, seen);
                nodes.push(Node::Command { command, caused });
            }
            Item::Event(event) => {
                if !seen.insert(event.event_id) {
                    continue;
                }
                let caused = build(Some(event.event_id), children, seen);
                nodes.push(Node::Event { event, caused });
            }
        }
    }
    nodes
}

/// `es audit`.
pub(crate) async fn audit(
    inspector: &Inspector,
    args: &AuditArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let id: Uuid = args.correlation_id.parse().map_err(|_| {
        CliError::usage(format!(
            "{:?} is not a correlation id (a UUID such as 0193a4f2-7c1e-7b52-9a0e-2f5c8d3e4b61)",
            args.correlation_id
        ))
    })?;
    let events = inspector.correlation(id).await?;
    let commands = inspector.commands_of_request(id).await?;
    if events.is_empty() && commands.is_empty() {
        return Err(CliError::not_found(format!(
            "no event or command carries the correlation id {id} in schema {:?}",
            inspector.store().schema()
        )));
    }
    let tree = audit_tree(id, events, commands);
    if json {
        return output::json(out, &tree);
    }
    writeln!(
        out,
        "request {id}: {} event(s), {} command(s)",
        tree.events, tree.commands
    )?;
    print_nodes(out, &tree.roots, "")?;
    Ok(())
}

fn print_nodes(out: &mut dyn Write, nodes: &[Node], indent: &str) -> std::io::Result<()> {
    for (i, node) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        let (branch, more) = if indent.is_empty() && nodes.len() == 1 {
            ("", "")
        } else if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let caused = match node {
            Node::Command { command: c, caused } => {
                writeln!(
                    out,
                    "{indent}{branch}command {} {} on {} ({}{}) {}",
                    c.command_id,
                    c.command_type,
                    c.stream_id,
                    c.outcome,
                    c.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default(),
                    output::time(&c.recorded_at)
                )?;
                caused
            }
            Node::Event { event: e, caused } => {
                writeln!(
                    out,
                    "{indent}{branch}event {} {}@{} {} {} {}",
                    e.event_id,
                    e.stream_id,
                    e.stream_version,
                    e.event_type,
                    clip(e.payload.get(), 60),
                    output::time(&e.recorded_at)
                )?;
                caused
            }
        };
        print_nodes(out, caused, &format!("{indent}{more}"))?;
    }
    Ok(())
}
