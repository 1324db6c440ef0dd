//! What travels with every event besides its payload, and what a command
//! brings to the events it produces.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event's metadata: correlation id, causation id, timestamp and free
/// user keys.
///
/// Stored as one JSON object; user keys sit beside the known ones.
///
/// ```
/// use es_core::Metadata;
/// use uuid::Uuid;
///
/// let correlation = Uuid::now_v7();
/// let metadata = Metadata::new()
///     .with_correlation_id(correlation)
///     .with("actor", "alice");
/// assert_eq!(metadata.correlation_id, Some(correlation));
/// assert_eq!(metadata.get("actor"), Some(&serde_json::json!("alice")));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The business transaction this event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The command or event that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// When the event was produced (the command's time, not the store's).
    pub timestamp: DateTime<Utc>,
    /// Free user keys (actor, tenant, request id, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    /// Empty metadata stamped with the current time.
    pub fn new() -> Self {
        Metadata {
            correlation_id: None,
            causation_id: None,
            timestamp: Utc::now(),
            extra: BTreeMap::new(),
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Adds a user key.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Reads a user key.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.extra.get(key)
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata::new()
    }
}

/// Who asked, and as part of what: given with a command, copied onto every
/// event the command produces.
///
/// The command id becomes each event's causation id; the correlation id is
/// the given one, or the command id when the command starts a new business
/// transaction.
///
/// ```
/// use es_core::CommandContext;
///
/// let ctx = CommandContext::new().with("actor", "alice");
/// let metadata = ctx.event_metadata();
/// assert_eq!(metadata.causation_id, Some(ctx.command_id));
/// assert_eq!(metadata.correlation_id, Some(ctx.command_id));
/// assert_eq!(metadata.get("actor"), Some(&serde_json::json!("alice")));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CommandContext {
    /// This command's id (UUID v7 unless given).
    pub command_id: Uuid,
    /// The business transaction the command belongs to, if it continues one.
    pub correlation_id: Option<Uuid>,
    /// Free user keys copied onto every event (actor, tenant, …).
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl CommandContext {
    /// A context with a fresh command id and nothing else.
    pub fn new() -> Self {
        CommandContext {
            command_id: Uuid::now_v7(),
            correlation_id: None,
            extra: BTreeMap::new(),
        }
    }

    /// Uses a given command id.
    pub fn with_command_id(mut self, id: Uuid) -> Self {
        self.command_id = id;
        self
    }

    /// Continues a business transaction.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Adds a user key.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The metadata each event of this command carries.
    pub fn event_metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id.unwrap_or(self.command_id)),
            causation_id: Some(self.command_id),
            timestamp: chrono::Utc::now(),
            extra: self.extra.clone(),
        }
    }
}

impl Default for CommandContext {
    fn default() -> Self {
        CommandContext::new()
    }
}
