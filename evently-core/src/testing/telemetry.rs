//! Capturing what code under test reports: its `tracing` spans and its
//! `metrics`, without installing anything process-wide, so tests that
//! capture run in parallel.
//!
//! ```
//! use evently_core::testing::telemetry::capture;
//!
//! let (answer, seen) = capture(async {
//!     let _span = tracing::info_span!("work", job = 7).entered();
//!     metrics::counter!("jobs_total", "kind" => "demo").increment(2);
//!     42
//! });
//! assert_eq!(answer, 42);
//! assert_eq!(seen.spans_named("work")[0].field("job"), Some("7"));
//! assert_eq!(seen.counter("jobs_total", &[("kind", "demo")]), Some(2));
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as it closed: its name, its fields (as displayed) and its
/// parent's name.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedSpan {
    /// The span's name.
    pub name: String,
    /// Its fields, recorded at creation or later, as text.
    pub fields: BTreeMap<String, String>,
    /// The name of the span it ran in, if any.
    pub parent: Option<String>,
}

impl CapturedSpan {
    /// A field's value as text.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// One metric's value: a counter's total, a gauge's last value, or a
/// histogram's samples.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// A counter.
    Counter(u64),
    /// A gauge.
    Gauge(f64),
    /// A histogram's samples.
    Histogram(Vec<f64>),
}

/// A metric: name, labels (sorted) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedMetric {
    /// The metric's name.
    pub name: String,
    /// Its labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: MetricValue,
}

/// What a [`capture`] saw.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// The spans, in the order they closed.
    pub spans: Vec<CapturedSpan>,
    /// The metrics.
    pub metrics: Vec<CapturedMetric>,
}

impl Captured {
    /// The spans named `name`, in the order they closed.
    pub fn spans_named(&self, name: &str) -> Vec<&CapturedSpan> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    /// The metric `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<&MetricValue> {
        self.metrics
            .iter()
            .find(|m| {
                m.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| m.labels.iter().any(|(mk, mv)| mk == k && mv == v))
            })
            .map(|m| &m.value)
    }

    /// A counter's total.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        match self.metric(name, labels)? {
            MetricValue::Counter(n) => Some(*n),
            _ => None,
        }
    }

    /// A gauge's last value.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.metric(name, labels)? {
            MetricValue::Gauge(v) => Some(*v),
            _ => None,
        }
    }

    /// A histogram's samples.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<&[f64]> {
        match self.metric(name, labels)? {
            MetricValue::Histogram(samples) => Some(samples),
            _ => None,
        }
    }
}

/// Runs `future` to completion on a runtime of its own (one thread, so
/// that tasks it spawns report too) with a span collector and a metrics
/// recorder installed for that thread only; returns its output and what
/// it reported.
///
/// Keep tests that capture in a test binary (a file under `tests/`) where
/// every test captures: `tracing` caches per call site whether any
/// collector listens, and a test without one, running at the same moment
/// on another thread, can leave that cache saying none does.
pub fn capture<F: Future>(future: F) -> (F::Output, Captured) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Collector {
        spans: Arc::clone(&spans),
    });
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let output = tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || runtime.block_on(future))
    });
    // Tasks still running end here, closing their spans.
    tracing::subscriber::with_default(
        tracing_subscriber::registry().with(Collector {
            spans: Arc::clone(&spans),
        }),
        || drop(runtime),
    );
    let metrics = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            CapturedMetric {
                name: key.name().to_owned(),
                labels,
                value: match value {
                    DebugValue::Counter(n) => MetricValue::Counter(n),
                    DebugValue::Gauge(v) => MetricValue::Gauge(v.into_inner()),
                    DebugValue::Histogram(samples) => MetricValue::Histogram(
                        samples.into_iter().map(|s| s.into_inner()).collect(),
                    ),
                },
            }
        })
        .collect();
    let spans = std::mem::take(&mut *spans.lock().unwrap_or_else(|e| e.into_inner()));
    (output, Captured { spans, metrics })
}

/// Keeps each span's fields in its extensions, and the span when it
/// closes.
struct Collector {
    spans: Arc<Mutex<Vec<CapturedSpan>>>,
}

struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collector {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let fields = span
            .extensions_mut()
            .remove::<Fields>()
            .map(|f| f.0)
            .unwrap_or_default();
        let captured = CapturedSpan {
            name: span.name().to_owned(),
            fields,
            parent: span.parent().map(|p| p.name().to_owned()),
        };
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(captured);
    }
}
