//! `export` and `import`: the log as a JSON-lines file (`verify`, in its own
//! module, reads it the same way).
//!
//! The file: a header line, one line per event in log order, and an end
//! line.
//!
//! ```text
//! {"evently_export":1,"exported_at":"…","schema":"es","streams":[],"prefix":null}
//! {"event":{"position":…,"event_id":"…","stream_id":"…","stream_version":1,…,"payload":{…}},"check":"<16 hex>"}
//! {"end":{"events":2,"digest":"<64 hex>"}}
//! ```
//!
//! `check` is the first 16 hex digits of the SHA-256 of the event's bytes
//! as written, so a changed line is found with its number; the end line's
//! `digest` is the SHA-256 of every check in order, so a dropped, doubled
//! or reordered line is found too; a file without its end line is
//! truncated. A file is checked whole before `import` writes anything.
//!
//! Every field is kept: ids, streams, versions, types, schema versions,
//! payloads, metadata, the recording time, and the source's positions (in
//! the file). A store assigns positions its own way (PostgreSQL's come
//! from transaction ids), so a copy keeps the log's order, not the numbers:
//! `verify` compares the events in log order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use evently_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamAppend, StreamId,
};
use evently_postgres::PgEventStore;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::error::CliError;
use crate::store::EventView;

/// The format's version, in the header line.
pub const FORMAT: u32 = 1;

/// Events per page read, and per transaction written.
pub(crate) const PAGE: usize = 1000;

/// Which events an export holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExportFilter {
    /// Only these streams (none: every stream).
    #[serde(default)]
    pub streams: Vec<String>,
    /// Only streams whose id starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
}

impl ExportFilter {
    pub(crate) fn matches(&self, stream_id: &str) -> bool {
        (self.streams.is_empty() || self.streams.iter().any(|s| s == stream_id))
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| stream_id.starts_with(p.as_str()))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    evently_export: u32,
    exported_at: DateTime<Utc>,
    #[serde(default)]
    source: String,
    #[serde(flatten)]
    filter: ExportFilter,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    check: Option<String>,
    end: Option<End>,
}

#[derive(Debug, Serialize, Deserialize)]
struct End {
    events: u64,
    digest: String,
}

fn check_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the events of `store` that `filter` selects to `out`, in log
/// order, advancing `bar` by one per event. Returns the number written.
pub async fn export<S: EventStore>(
    store: &S,
    source: &str,
    filter: &ExportFilter,
    out: &mut dyn Write,
    bar: &ProgressBar,
) -> Result<u64, CliError> {
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let header = Header {
        evently_export: FORMAT,
        exported_at: Utc::now(),
        source: source.to_owned(),
        filter: filter.clone(),
    };
    serde_json::to_writer(&mut out, &header).map_err(|e| CliError::failed(e.to_string()))?;
    out.write_all(b"\n")?;
    let head = store.head_position().await?;
    let mut digest = Sha256::new();
    let mut written = 0u64;
    let mut from = 0u64;
    'pages: loop {
        let page = store.read_all(from, PAGE).await?;
        let Some(last) = page.last() else { break };
        from = last.global_position + 1;
        for e in &page {
            if e.global_position > head {
                // Written after the export started: the next export's.
                break 'pages;
            }
            bar.inc(1);
            if !filter.matches(e.stream_id.as_str()) {
                continue;
            }
            let view = EventView::from_recorded(e);
            let text =
                serde_json::to_string(&view).map_err(|err| CliError::failed(err.to_string()))?;
            let check = check_of(text.as_bytes());
            digest.update(check.as_bytes());
            out.write_all(b"{\"event\":")?;
            out.write_all(text.as_bytes())?;
            out.write_all(b",\"check\":\"")?;
            out.write_all(check.as_bytes())?;
            out.write_all(b"\"}\n")?;
            written += 1;
        }
        if page.len() < PAGE {
            break;
        }
    }
    let end =
        serde_json::json!({ "end": End { events: written, digest: hex(&digest.finalize()) } });
    serde_json::to_writer(&mut out, &end).map_err(|e| CliError::failed(e.to_string()))?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(written)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An export file, checked: its filter and how many events it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportFile {
    /// The streams it holds.
    pub filter: ExportFilter,
    /// Its events.
    pub events: u64,
    /// Its streams.
    pub streams: u64,
}

fn open_file(path: &Path) -> Result<BufReader<File>, CliError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 16, f))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CliError::not_found(format!("{}: no such file", path.display()))
            } else {
                CliError::failed(format!("{}: cannot read it: {e}", path.display()))
            }
        })
}

/// Reads an export's lines, checking each, calling `each` with every event
/// and its line number; fails on the first bad line, and on a missing or
/// wrong end line.
pub(crate) fn read_events(
    path: &Path,
    mut each: impl FnMut(EventView, usize) -> Result<(), CliError>,
) -> Result<ExportFile, CliError> {
    let name = path.display().to_string();
    let bad = |n: usize, what: String| CliError::mismatch(format!("{name} line {n}: {what}"));
    let mut reader = open_file(path)?;
    let mut line = String::new();
    let mut n = 0usize;
    let mut header: Option<Header> = None;
    let mut digest = Sha256::new();
    let mut events = 0u64;
    let mut versions: HashMap<String, u64> = HashMap::new();
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| CliError::failed(format!("{name}: cannot read it: {e}")))?;
        if read == 0 {
            return Err(CliError::mismatch(format!(
                "{name} is truncated: it ends after line {n} without its end line; export again, or copy the whole file"
            )));
        }
        n += 1;
        if !line.ends_with('\n') {
            return Err(CliError::mismatch(format!(
                "{name} is truncated: line {n} stops in the middle; export again, or copy the whole file"
            )));
        }
        if header.is_none() {
            let h: Header = serde_json::from_str(&line).map_err(|e| {
                bad(
                    n,
                    format!("not an evently export header ({e}); was it written by `es export`?"),
                )
            })?;
            if h.evently_export != FORMAT {
                return Err(bad(
                    n,
                    format!(
                        "export format {} (this es reads {FORMAT})",
                        h.evently_export
                    ),
                ));
            }
            header = Some(h);
            continue;
        }
        let parsed: Line =
            serde_json::from_str(&line).map_err(|e| bad(n, format!("not an export line: {e}")))?;
        match (parsed.event, parsed.check, parsed.end) {
            (Some(raw), Some(check), None) => {
                if check_of(raw.get().as_bytes()) != check {
                    return Err(bad(
                        n,
                        "its check does not match its content: the line was changed or corrupted"
                            .into(),
                    ));
                }
                digest.update(check.as_bytes());
                let event: EventView = serde_json::from_str(raw.get())
                    .map_err(|e| bad(n, format!("not an event: {e}")))?;
                let last = versions.entry(event.stream_id.clone()).or_insert(0);
                if event.stream_version != *last + 1 {
                    return Err(bad(
                        n,
                        format!(
                            "stream {:?} goes from version {} to {}: the file lost events",
                            event.stream_id, last, event.stream_version
                        ),
                    ));
                }
                *last = event.stream_version;
                events += 1;
                each(event, n)?;
            }
            (None, None, Some(end)) => {
                if end.events != events || end.digest != hex(&digest.clone().finalize()) {
                    return Err(bad(
                        n,
                        format!(
                            "the end line says {} events and digest {}, the file holds {events} others: lines were dropped, doubled or reordered",
                            end.events,
                            &end.digest[..end.digest.len().min(16)]
                        ),
                    ));
                }
                line.clear();
                if reader
                    .read_line(&mut line)
                    .map_err(|e| CliError::failed(e.to_string()))?
                    > 0
                {
                    return Err(bad(n + 1, "text after the end line".into()));
                }
                let header = header.expect("read first");
                return Ok(ExportFile {
                    filter: header.filter,
                    events,
                    streams: versions.len() as u64,
                });
            }
            _ => return Err(bad(n, "neither an event line nor the end line".into())),
        }
    }
}

/// Checks an export file whole: every line's check, the end line, every
/// stream's versions contiguous from 1.
pub fn check_export(path: &Path) -> Result<ExportFile, CliError> {
    read_events(path, |_, _| Ok(()))
}

/// What `import` did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImportReport {
    /// Events in the file.
    pub events: u64,
    /// Events written now.
    pub imported: u64,
    /// Events already there (an earlier, interrupted run wrote them).
    pub skipped: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// Imports a checked export into `store`, in log order: one statement and
/// one transaction for each run of the file in which every stream appears
/// once (at most a thousand events). Safe to run again after an interruption: events already
/// there (same id at the same stream and version) are skipped, so nothing
/// is written twice and nothing is missed; a target that holds other
/// events at those places is refused before anything is written.
pub async fn import(
    store: &PgEventStore,
    path: &Path,
    bar: &ProgressBar,
) -> Result<ImportReport, CliError> {
    let started = Instant::now();
    let file = check_export(path)?;
    bar.set_length(file.events);
    let mut report = ImportReport {
        events: file.events,
        ..ImportReport::default()
    };
    // The file was checked whole; read it again, a page at a time.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<EventView>, CliError>>(4);
    let owned = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        let mut page = Vec::with_capacity(PAGE);
        let result = read_events(&owned, |event, _| {
            page.push(event);
            if page.len() == PAGE {
                let full = std::mem::replace(&mut page, Vec::with_capacity(PAGE));
                tx.blocking_send(Ok(full))
                    .map_err(|_| CliError::failed("import stopped"))?;
            }
            Ok(())
        });
        match result {
            Ok(_) if !page.is_empty() => {
                let _ = tx.blocking_send(Ok(page));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    while let Some(page) = rx.recv().await {
        let page = page?;
        let n = page.len() as u64;
        let written = import_page(store, page).await?;
        report.imported += written;
        report.skipped += n - written;
        bar.inc(n);
    }
    reader
        .await
        .map_err(|e| CliError::failed(format!("the file reader failed: {e}")))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes one page: in segments where each stream appears once (one
/// statement and one transaction each, positions in the file's order).
/// Returns how many events were new.
async fn import_page(store: &PgEventStore, page: Vec<EventView>) -> Result<u64, CliError> {
    let mut written = 0;
    let mut segment: Vec<EventView> = Vec::new();
    let mut in_segment: std::collections::HashSet<String> = Default::default();
    for e in page {
        let continues = segment.last().is_some_and(|l| l.stream_id == e.stream_id);
        if !continues && in_segment.contains(&e.stream_id) {
            written += import_segment(store, std::mem::take(&mut segment)).await?;
            in_segment.clear();
        }
        in_segment.insert(e.stream_id.clone());
        segment.push(e);
    }
    if !segment.is_empty() {
        written += import_segment(store, segment).await?;
    }
    Ok(written)
}

/// Writes one segment in one transaction, skipping the events an earlier
/// run wrote; returns how many were new.
async fn import_segment(store: &PgEventStore, events: Vec<EventView>) -> Result<u64, CliError> {
    let schema = format!("\"{}\"", store.schema());
    let mut tx = store.pool().begin().await?;
    // Which of these are already there (an earlier run's)?
    let streams: Vec<String> = events.iter().map(|e| e.stream_id.clone()).collect();
    let versions: Vec<i64> = events.iter().map(|e| e.stream_version as i64).collect();
    let rows = sqlx::query(&format!(
        "SELECT e.stream_id, e.stream_version, e.event_id FROM {schema}.events e \
         JOIN unnest($1::text[], $2::bigint[]) AS t(s, v) ON e.stream_id = t.s AND e.stream_version = t.v"
    ))
    .bind(&streams)
    .bind(&versions)
    .fetch_all(&mut *tx)
    .await?;
    let mut present: HashMap<(String, u64), Uuid> = HashMap::new();
    for r in &rows {
        present.insert(
            (r.try_get(0)?, r.try_get::<i64, _>(1)? as u64),
            r.try_get(2)?,
        );
    }
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    let mut appends: Vec<StreamAppend> = Vec::new();
    for e in events {
        match present.get(&(e.stream_id.clone(), e.stream_version)) {
            Some(id) if *id == e.event_id => continue,
            Some(id) => {
                return Err(CliError::refused(format!(
                    "the target diverges from the file: stream {:?} version {} holds event {id}, the file has {}; import into an empty schema",
                    e.stream_id, e.stream_version, e.event_id
                )))
            }
            None => {}
        }
        times.push(e.recorded_at);
        let metadata: Metadata = serde_json::from_value(e.metadata.clone()).map_err(|err| {
            CliError::mismatch(format!(
                "event {}: its metadata does not read: {err}",
                e.event_id
            ))
        })?;
        let event = NewEvent::raw(
            e.event_type.clone(),
            e.schema_version,
            Payload::from_json_unchecked(e.payload.get()),
            metadata,
        )
        .with_id(e.event_id);
        match appends.last_mut() {
            Some(a) if a.stream_id.as_str() == e.stream_id => a.events.push(event),
            _ => appends.push(StreamAppend::new(
                StreamId::from(e.stream_id.as_str()),
                if e.stream_version == 1 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(e.stream_version - 1)
                },
                vec![event],
            )),
        }
    }
    if appends.is_empty() {
        return Ok(0);
    }
    let written = store
        .append_copy_in(&mut tx, appends, &times).await.map_err(|e| match e {
        evently_core::StoreError::WrongExpectedVersion { .. }
        | evently_core::StoreError::DuplicateEventId { .. }
        | evently_core::StoreError::InvalidAppend { .. } => CliError::refused(format!(
            "the target diverges from the file ({e}); import into an empty schema, or into one an earlier import of this file wrote"
        )),
        other => other.into(),
    })?;
    tx.commit().await?;
    Ok(written.len() as u64)
}
