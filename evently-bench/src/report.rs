//! Measurements, their medians, the JSON lines and the Markdown table.

use std::collections::BTreeMap;

use serde_json::Value;

/// One timed run of a workload or a floor.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// `W1`…`W7`, `W4-snapshot`, `F1@W2`, `F2`…
    pub name: String,
    /// `memory`, `hashmap`, `postgres` (framework) or `sqlx` (floor).
    pub store: &'static str,
    /// Commands, events or loads done in `seconds`.
    pub ops: u64,
    /// Wall time of the timed part.
    pub seconds: f64,
    /// Workload-specific fields, in print order.
    pub extra: Vec<(&'static str, Value)>,
}

impl Measurement {
    /// A measurement without extra fields.
    pub fn new(name: impl Into<String>, store: &'static str, ops: u64, seconds: f64) -> Self {
        Measurement {
            name: name.into(),
            store,
            ops,
            seconds,
            extra: Vec::new(),
        }
    }

    /// Adds an extra field.
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.extra.push((key, value.into()));
        self
    }

    /// Operations per second.
    pub fn ops_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Sets an extra field, replacing it if present.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        match self.extra.iter_mut().find(|(k, _)| *k == key) {
            Some(field) => field.1 = value,
            None => self.extra.push((key, value)),
        }
    }

    /// An extra field as an integer (0 when absent).
    pub fn integer(&self, key: &str) -> u64 {
        self.extra
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(0)
    }

    /// An extra field as a number.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.extra
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_f64())
    }
}

/// The run with the median time (the upper median for an even count), with
/// every run's time added as `seconds_all`.
pub fn median(mut runs: Vec<Measurement>) -> Option<Measurement> {
    if runs.is_empty() {
        return None;
    }
    let all: Vec<Value> = runs.iter().map(|m| round(m.seconds, 6).into()).collect();
    // Ratios measured inside a run: the median over the runs, not the
    // value of the run with the median time.
    let mut per_run = Vec::new();
    for &(key, all_key) in MEDIAN_FIELDS {
        let values: Vec<f64> = runs.iter().filter_map(|m| m.number(key)).collect();
        if values.len() == runs.len() {
            per_run.push((key, all_key, values));
        }
    }
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let middle = runs.len() / 2;
    let mut chosen = runs.swap_remove(middle);
    chosen.extra.push(("seconds_all", Value::Array(all)));
    for (key, all_key, values) in per_run {
        chosen.set(key, round(median_of(&values), 3));
        let all: Vec<Value> = values.iter().map(|v| round(*v, 3).into()).collect();
        chosen.extra.push((all_key, Value::Array(all)));
    }
    Some(chosen)
}

/// Fields that are ratios inside one run, reported as their median over
/// the runs (with every run's value under the second name).
const MEDIAN_FIELDS: &[(&str, &str)] = &[("flat_ratio", "flat_ratios_all")];

/// The median of some numbers (the upper one for an even count; NaN for
/// none).
pub fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Rounds for printing.
pub fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// One JSON object on one line: name, store, ops, seconds, ops_per_s, then
/// the extra fields in their order.
pub fn json_line(m: &Measurement, runs: usize) -> String {
    let mut fields: Vec<(&str, Value)> = vec![
        ("name", m.name.clone().into()),
        ("store", m.store.into()),
        ("ops", m.ops.into()),
        ("seconds", round(m.seconds, 6).into()),
        ("ops_per_s", round(m.ops_per_s(), 1).into()),
        ("runs", runs.into()),
    ];
    fields.extend(m.extra.iter().map(|(k, v)| (*k, v.clone())));
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(*k), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// How a row of the table is judged.
enum Target {
    /// framework ops/s ÷ floor ops/s at least this.
    RatioAtLeast(f64),
    /// An extra field of the framework's measurement at most this.
    FieldAtMost(&'static str, f64),
    /// An extra field of the framework's measurement under this.
    FieldBelow(&'static str, f64),
    /// Nothing to meet: shown for reference.
    None,
}

struct Row {
    label: &'static str,
    framework: Option<&'static str>,
    floor: Option<&'static str>,
    target: Target,
    target_text: &'static str,
}

const ROWS: &[Row] = &[
    Row {
        label: "W1 memory throughput (evently-memory vs HashMap)",
        framework: Some("W1"),
        floor: Some("F1@W1"),
        target: Target::RatioAtLeast(0.1),
        target_text: "≥ 0.1× floor (defaults)",
    },
    Row {
        label: "W2 sequential, one stream, pool 1 (vs F1@W2)",
        framework: Some("W2"),
        floor: Some("F1@W2"),
        target: Target::RatioAtLeast(0.9),
        target_text: "≥ 0.9× F1",
    },
    Row {
        label: "W2 flat: last 100 ÷ first 100 ms/command",
        framework: Some("W2"),
        floor: Some("F1@W2"),
        target: Target::FieldAtMost("flat_ratio", 1.1),
        target_text: "≤ 1.1",
    },
    Row {
        label: "W3 concurrent, 8 tasks, pool 8 (vs F1@W3)",
        framework: Some("W3"),
        floor: Some("F1@W3"),
        target: Target::RatioAtLeast(1.5),
        target_text: "≥ 1.5× F1",
    },
    Row {
        label: "W4 full replay, events/s (vs F3)",
        framework: Some("W4"),
        floor: Some("F3"),
        target: Target::RatioAtLeast(1.0 / 1.2),
        target_text: "time ≤ 1.2× F3",
    },
    Row {
        label: "W4 load from a snapshot, ms",
        framework: Some("W4-snapshot"),
        floor: None,
        target: Target::FieldBelow("ms_per_load", 1.0),
        target_text: "< 1 ms",
    },
    Row {
        label: "W5 contention, 8 tasks on one stream, pool 1 (vs F1@W5)",
        framework: Some("W5"),
        floor: Some("F1@W5"),
        target: Target::RatioAtLeast(0.9),
        target_text: "≥ 0.9× F1, no lost update",
    },
    Row {
        label: "W6 catch-up into a read model, events/s (vs F4)",
        framework: Some("W6"),
        floor: Some("F4"),
        target: Target::RatioAtLeast(0.8),
        target_text: "≥ 0.8× F4, flat memory",
    },
    Row {
        label: "W6 catch-up into a view (1,000 keys), events/s (vs F4)",
        framework: Some("W6-view"),
        floor: Some("F4"),
        target: Target::RatioAtLeast(4.0),
        target_text: "≥ 4× F4, flat memory",
    },
    Row {
        label: "W7 64 clients, pool 16 (vs F1@W7)",
        framework: Some("W7"),
        floor: Some("F1@W7"),
        target: Target::RatioAtLeast(2.0),
        target_text: "≥ 2× F1",
    },
    Row {
        label: "W8 PostgreSQL log → JetStream, events/s (vs F5)",
        framework: Some("W8"),
        floor: Some("F5"),
        target: Target::RatioAtLeast(0.8),
        target_text: "≥ 0.8× F5",
    },
    Row {
        label: "W9 end-to-end at 1,000 events/s: events/s appended (lag p50/p99 in its JSON line)",
        framework: Some("W9"),
        floor: None,
        target: Target::None,
        target_text: "p50, p99 reported",
    },
    Row {
        label: "W10 commands over NATS, 1 instance (vs the same commands local)",
        framework: Some("W10-1"),
        floor: Some("W10-local"),
        target: Target::None,
        target_text: "reported",
    },
    Row {
        label: "W10 commands over NATS, 2 instances (vs local)",
        framework: Some("W10-2"),
        floor: Some("W10-local"),
        target: Target::None,
        target_text: "reported",
    },
    Row {
        label: "W10 commands over NATS, 3 instances (vs local)",
        framework: Some("W10-3"),
        floor: Some("W10-local"),
        target: Target::None,
        target_text: "reported",
    },
    Row {
        label:
            "W11 transfers through a process manager on PostgreSQL, transfers/s (4 commands each)",
        framework: Some("W11"),
        floor: None,
        target: Target::None,
        target_text: "reported",
    },
    Row {
        label: "F2 100 events per transaction, events/s (reference)",
        framework: None,
        floor: Some("F2"),
        target: Target::None,
        target_text: "—",
    },
];

/// The Markdown table of the medians.
pub fn table(results: &BTreeMap<String, Measurement>) -> String {
    let mut out = String::from(
        "| workload | framework ops/s | floor ops/s | ratio | target | met? |\n|---|---:|---:|---:|---|---|\n",
    );
    for row in ROWS {
        let fw = row.framework.and_then(|n| results.get(n));
        let floor = row.floor.and_then(|n| results.get(n));
        if fw.is_none() && floor.is_none() {
            continue;
        }
        let rate = |m: Option<&Measurement>| {
            m.map_or("—".to_owned(), |m| format!("{:.0}", m.ops_per_s()))
        };
        let (ratio, met) = match row.target {
            Target::RatioAtLeast(min) => match (fw, floor) {
                (Some(fw), Some(floor)) if floor.ops_per_s() > 0.0 => {
                    // The median of the ratios of the runs, each framework
                    // run against the floor run just before it.
                    let ratio = fw
                        .number("ratio")
                        .unwrap_or(fw.ops_per_s() / floor.ops_per_s());
                    (format!("{ratio:.2}"), yes_no(ratio >= min))
                }
                _ => ("—".to_owned(), "—"),
            },
            Target::FieldAtMost(key, max) => match fw.and_then(|m| m.number(key)) {
                Some(v) => {
                    let floor_ratio = floor
                        .and_then(|m| m.number(key))
                        .map_or(String::new(), |f| format!(" (floor's own: {f:.2})"));
                    (format!("{v:.2}{floor_ratio}"), yes_no(v <= max))
                }
                None => ("—".to_owned(), "—"),
            },
            Target::FieldBelow(key, max) => match fw.and_then(|m| m.number(key)) {
                Some(v) => (format!("{v:.3} ms"), yes_no(v < max)),
                None => ("—".to_owned(), "—"),
            },
            Target::None => ("—".to_owned(), "—"),
        };
        let windows = |m: Option<&Measurement>| match m {
            Some(m) => format!(
                "first {:.3} ms, last {:.3} ms",
                m.number("first100_ms").unwrap_or(f64::NAN),
                m.number("last100_ms").unwrap_or(f64::NAN)
            ),
            None => "—".to_owned(),
        };
        let (framework, floor_text) = if row.target_is_field() {
            (windows(fw), windows(floor))
        } else {
            (rate(fw), rate(floor))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.label, framework, floor_text, ratio, row.target_text, met
        ));
    }
    out
}

impl Row {
    fn target_is_field(&self) -> bool {
        matches!(self.target, Target::FieldAtMost(..))
    }
}

fn yes_no(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}
