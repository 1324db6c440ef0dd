//! `verify`: a store against an export, event by event in log order, and
//! every stream's versions contiguous.

use std::collections::HashMap;
use std::path::Path;

use evently_core::EventStore;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::copy::{check_export, read_events, PAGE};
use crate::error::CliError;
use crate::store::EventView;

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct VerifyReport {
    /// Events of the store read.
    pub store_events: u64,
    /// Streams seen in the store (those the file's filter selects).
    pub streams: u64,
    /// Events of the file compared (`None` without a file).
    pub file_events: Option<u64>,
    /// The differences found (the first 20).
    pub differences: Vec<String>,
}

fn same_event(a: &EventView, b: &EventView) -> Option<String> {
    let value = |raw: &RawValue| serde_json::from_str::<serde_json::Value>(raw.get()).ok();
    let what = if a.event_id != b.event_id {
        "id"
    } else if a.stream_id != b.stream_id || a.stream_version != b.stream_version {
        "stream or version"
    } else if a.event_type != b.event_type || a.schema_version != b.schema_version {
        "type or schema version"
    } else if value(&a.payload) != value(&b.payload) {
        "payload"
    } else if a.metadata != b.metadata {
        "metadata"
    } else if a.recorded_at.timestamp_micros() != b.recorded_at.timestamp_micros() {
        "recording time"
    } else {
        return None;
    };
    Some(format!(
        "the {}th event differs in its {what}: the store has {}@{} ({}), the file {}@{} ({})",
        0, a.stream_id, a.stream_version, a.event_id, b.stream_id, b.stream_version, b.event_id
    ))
}

/// Checks `store`: every stream's versions contiguous from 1 and, with a
/// file, its events (those the file's filter selects) equal to the file's,
/// one by one, in log order.
pub async fn verify<S: EventStore>(
    store: &S,
    file: Option<&Path>,
    bar: &ProgressBar,
) -> Result<VerifyReport, CliError> {
    let checked = file.map(check_export).transpose()?;
    let filter = checked
        .as_ref()
        .map(|f| f.filter.clone())
        .unwrap_or_default();
    let mut report = VerifyReport {
        file_events: checked.as_ref().map(|f| f.events),
        ..VerifyReport::default()
    };
    if let Some(f) = &checked {
        bar.set_length(f.events);
    }
    // The file's events, a page at a time, from a reading thread.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<EventView>>(4);
    let reader = file.map(|path| {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut page = Vec::with_capacity(PAGE);
            let _ = read_events(&path, |event, _| {
                page.push(event);
                if page.len() == PAGE {
                    let full = std::mem::replace(&mut page, Vec::with_capacity(PAGE));
                    tx.blocking_send(full)
                        .map_err(|_| CliError::failed("stopped"))?;
                }
                Ok(())
            });
            if !page.is_empty() {
                let _ = tx.blocking_send(page);
            }
        })
    });
    let mut pending: std::collections::VecDeque<EventView> = Default::default();
    let mut file_done = reader.is_none();
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut index = 0u64;
    let mut from = 0u64;
    let differ = |report: &mut VerifyReport, text: String| {
        if report.differences.len() < 20 {
            report.differences.push(text);
        }
    };
    loop {
        let page = store.read_all(from, PAGE).await?;
        let Some(last) = page.last() else { break };
        from = last.global_position + 1;
        for e in &page {
            let stream = e.stream_id.as_str();
            let expected = versions.get(stream).copied().unwrap_or(0) + 1;
            if e.stream_version != expected {
                differ(
                    &mut report,
                    format!(
                        "stream {stream:?} goes from version {} to {} in the store",
                        expected - 1,
                        e.stream_version
                    ),
                );
            }
            versions.insert(stream.to_owned(), e.stream_version);
            if !filter.matches(stream) {
                continue;
            }
            report.store_events += 1;
            if checked.is_none() {
                continue;
            }
            if pending.is_empty() && !file_done {
                match rx.recv().await {
                    Some(next) => pending.extend(next),
                    None => file_done = true,
                }
            }
            index += 1;
            match pending.pop_front() {
                Some(theirs) => {
                    bar.inc(1);
                    if let Some(d) = same_event(&EventView::from_recorded(e), &theirs) {
                        differ(&mut report, d.replacen("0th", &ordinal(index), 1));
                    }
                }
                None => differ(
                    &mut report,
                    format!(
                        "the store has more events than the file: {}@{} is not in it",
                        stream, e.stream_version
                    ),
                ),
            }
        }
        if page.len() < PAGE {
            break;
        }
    }
    if checked.is_some() {
        if !pending.is_empty() || (!file_done && rx.recv().await.is_some()) {
            differ(
                &mut report,
                format!(
                    "the file has more events than the store: the store ends after {index} of them"
                ),
            );
        }
        rx.close();
    }
    if let Some(reader) = reader {
        let _ = reader.await;
    }
    report.streams = versions.keys().filter(|s| filter.matches(s)).count() as u64;
    Ok(report)
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, r) if r != 11 => "st",
        (2, r) if r != 12 => "nd",
        (3, r) if r != 13 => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}
