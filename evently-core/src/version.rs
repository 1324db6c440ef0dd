//! Stream identity and the optimistic-concurrency expectation an append
//! carries.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The id of a stream: the events of one aggregate instance.
///
/// Aggregates name their streams `"{aggregate type}-{aggregate id}"`. Any
/// string is a valid stream id, stored and read back literally.
///
/// ```
/// use evently_core::StreamId;
///
/// let id = StreamId::for_aggregate("account", "42");
/// assert_eq!(id.as_str(), "account-42");
/// assert_eq!(id, StreamId::from("account-42"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Wraps any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        StreamId(Arc::from(id.as_ref()))
    }

    /// The stream of one aggregate instance: `"{aggregate_type}-{id}"`.
    /// The aggregate type must not contain `-` (the derive refuses such a
    /// name), so [`StreamId::aggregate_type`] reads it back.
    pub fn for_aggregate(aggregate_type: &str, id: &str) -> Self {
        let mut s = String::with_capacity(aggregate_type.len() + 1 + id.len());
        s.push_str(aggregate_type);
        s.push('-');
        s.push_str(id);
        StreamId(s.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The aggregate type of a stream named `"{aggregate type}-{id}"`: the
    /// text before the first `-` (aggregate type names cannot contain one),
    /// or `None` when there is no `-`.
    ///
    /// ```
    /// use evently_core::StreamId;
    ///
    /// let id = StreamId::for_aggregate("account", "eu-42");
    /// assert_eq!(id.aggregate_type(), Some("account"));
    /// assert_eq!(id.aggregate_id(), Some("eu-42"));
    /// assert_eq!(StreamId::from("settings").aggregate_type(), None);
    /// ```
    pub fn aggregate_type(&self) -> Option<&str> {
        self.0.split_once('-').map(|(ty, _)| ty)
    }

    /// The aggregate id of a stream named `"{aggregate type}-{id}"`: the
    /// text after the first `-`, or `None` when there is no `-`.
    pub fn aggregate_id(&self) -> Option<&str> {
        self.0.split_once('-').map(|(_, id)| id)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StreamId {
    fn from(id: &str) -> Self {
        StreamId::new(id)
    }
}

impl From<String> for StreamId {
    fn from(id: String) -> Self {
        StreamId(id.into())
    }
}

impl Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What an append expects of its stream's current version. A wrong
/// expectation fails the whole append and writes nothing.
///
/// Versions count events: a stream with 3 events is at version 3, and a
/// stream that does not exist is at version 0.
///
/// ```
/// use evently_core::ExpectedVersion;
///
/// assert!(ExpectedVersion::Any.matches(7));
/// assert!(ExpectedVersion::NoStream.matches(0));
/// assert!(!ExpectedVersion::StreamExists.matches(0));
/// assert!(ExpectedVersion::Exact(3).matches(3));
/// assert_eq!(ExpectedVersion::Exact(3).to_string(), "version 3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must hold at least one event.
    StreamExists,
    /// The stream must be exactly at this version (0 means no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` version (0 = no stream) meets this
    /// expectation.
    pub fn matches(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }

    /// The expectation that a stream is at `version`, where 0 means no stream.
    pub fn at(version: u64) -> Self {
        if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}
