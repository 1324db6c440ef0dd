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
/// use evently_core::Metadata;
/// use uuid::Uuid;
///
/// let correlation = Uuid::now_v7();
/// let metadata = Metadata::new()
///     .with_correlation_id(correlation)
///     .with("tenant", "acme");
/// assert_eq!(metadata.correlation_id, Some(correlation));
/// assert_eq!(metadata.get("tenant"), Some(&serde_json::json!("acme")));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// The business transaction this event belongs to.
    pub correlation_id: Option<Uuid>,
    /// The command or event that directly caused this event.
    pub causation_id: Option<Uuid>,
    /// The command that produced this event.
    pub command_id: Option<Uuid>,
    /// Who asked: a user, a service, a process manager.
    pub actor: Option<String>,
    /// When the event's personal data was erased (its payload is then `{}`).
    pub erased_at: Option<DateTime<Utc>>,
    /// When the event was produced (the command's time, not the store's).
    pub timestamp: DateTime<Utc>,
    /// Free user keys (actor, tenant, request id, …).
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    /// Empty metadata stamped with the current time.
    pub fn new() -> Self {
        Metadata {
            correlation_id: None,
            causation_id: None,
            command_id: None,
            actor: None,
            erased_at: None,
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

    /// The names of the known fields, stored beside the user keys in one
    /// JSON object: a user key cannot take one of them (it would be stored
    /// twice, or read back as that field — `erased_at` would mark the event
    /// erased), so every store refuses such an append with
    /// [`crate::StoreError::InvalidAppend`].
    pub const RESERVED_KEYS: &'static [&'static str] = &[
        "correlation_id",
        "causation_id",
        "command_id",
        "actor",
        "erased_at",
        "timestamp",
    ];

    /// The first user key that takes a reserved name
    /// ([`Metadata::RESERVED_KEYS`]), if any.
    ///
    /// ```
    /// use evently_core::Metadata;
    ///
    /// assert_eq!(Metadata::new().with("tenant", 1).reserved_user_key(), None);
    /// assert_eq!(Metadata::new().with("timestamp", 1).reserved_user_key(), Some("timestamp"));
    /// ```
    pub fn reserved_user_key(&self) -> Option<&str> {
        self.extra
            .keys()
            .map(String::as_str)
            .find(|key| Self::RESERVED_KEYS.contains(key))
    }

    /// Adds a user key. The names in [`Metadata::RESERVED_KEYS`] are
    /// reserved: an event whose metadata uses one is refused at append.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Reads a user key.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.extra.get(key)
    }
}

// Written by hand rather than derived: `#[serde(flatten)]` buffers every
// field of the object into an intermediate tree before deciding where it
// goes, and metadata is decoded for every event a subscription, a
// projection or a publisher reads. The JSON is the derive's: the known
// fields that are set, in this order, then the user keys.
impl Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let known = usize::from(self.correlation_id.is_some())
            + usize::from(self.causation_id.is_some())
            + usize::from(self.command_id.is_some())
            + usize::from(self.actor.is_some())
            + usize::from(self.erased_at.is_some())
            + 1;
        let mut map = serializer.serialize_map(Some(known + self.extra.len()))?;
        if let Some(id) = &self.correlation_id {
            map.serialize_entry("correlation_id", id)?;
        }
        if let Some(id) = &self.causation_id {
            map.serialize_entry("causation_id", id)?;
        }
        if let Some(id) = &self.command_id {
            map.serialize_entry("command_id", id)?;
        }
        if let Some(actor) = &self.actor {
            map.serialize_entry("actor", actor)?;
        }
        if let Some(at) = &self.erased_at {
            map.serialize_entry("erased_at", at)?;
        }
        map.serialize_entry("timestamp", &self.timestamp)?;
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A key of the metadata object: one of the known fields, or a user key.
enum Key<'de> {
    Correlation,
    Causation,
    Command,
    Actor,
    ErasedAt,
    Timestamp,
    User(std::borrow::Cow<'de, str>),
}

impl<'de> Key<'de> {
    fn of(key: std::borrow::Cow<'de, str>) -> Self {
        match &*key {
            "correlation_id" => Key::Correlation,
            "causation_id" => Key::Causation,
            "command_id" => Key::Command,
            "actor" => Key::Actor,
            "erased_at" => Key::ErasedAt,
            "timestamp" => Key::Timestamp,
            _ => Key::User(key),
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a metadata key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::of(std::borrow::Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key::of(std::borrow::Cow::Owned(key.to_owned())))
            }
            fn visit_string<E>(self, key: String) -> Result<Key<'de>, E> {
                Ok(Key::of(std::borrow::Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Metadata;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event's metadata (a JSON object with a timestamp)")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Metadata, M::Error> {
                use serde::de::Error;
                fn once<T, E: Error>(
                    slot: &mut Option<T>,
                    value: T,
                    name: &'static str,
                ) -> Result<(), E> {
                    if slot.is_some() {
                        return Err(E::duplicate_field(name));
                    }
                    *slot = Some(value);
                    Ok(())
                }
                let (mut correlation_id, mut causation_id, mut command_id) = (None, None, None);
                let (mut actor, mut erased_at, mut timestamp) = (None, None, None);
                let mut extra = BTreeMap::new();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key {
                        Key::Correlation => once(
                            &mut correlation_id,
                            map.next_value::<Option<Uuid>>()?,
                            "correlation_id",
                        )?,
                        Key::Causation => once(
                            &mut causation_id,
                            map.next_value::<Option<Uuid>>()?,
                            "causation_id",
                        )?,
                        Key::Command => once(
                            &mut command_id,
                            map.next_value::<Option<Uuid>>()?,
                            "command_id",
                        )?,
                        Key::Actor => {
                            once(&mut actor, map.next_value::<Option<String>>()?, "actor")?
                        }
                        Key::ErasedAt => once(
                            &mut erased_at,
                            map.next_value::<Option<DateTime<Utc>>>()?,
                            "erased_at",
                        )?,
                        Key::Timestamp => once(
                            &mut timestamp,
                            map.next_value::<DateTime<Utc>>()?,
                            "timestamp",
                        )?,
                        Key::User(key) => {
                            extra.insert(key.into_owned(), map.next_value::<serde_json::Value>()?);
                        }
                    }
                }
                Ok(Metadata {
                    correlation_id: correlation_id.flatten(),
                    causation_id: causation_id.flatten(),
                    command_id: command_id.flatten(),
                    actor: actor.flatten(),
                    erased_at: erased_at.flatten(),
                    timestamp: timestamp.ok_or_else(|| M::Error::missing_field("timestamp"))?,
                    extra,
                })
            }
        }
        deserializer.deserialize_map(Visitor)
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
/// Each event records the command id. Its causation id is the event that
/// caused the command (a process manager or projection reacting to an
/// event: [`CommandContext::caused_by`]), or else the command itself. Its
/// correlation id is the given one, or the command id when the command
/// starts a new business transaction.
///
/// A command id given by the client makes the command idempotent: a command
/// id that already produced events returns that first outcome and appends
/// nothing.
///
/// ```
/// use evently_core::CommandContext;
///
/// let ctx = CommandContext::new().with_actor("alice").with("tenant", 7);
/// let metadata = ctx.event_metadata();
/// assert_eq!(metadata.command_id, Some(ctx.command_id));
/// assert_eq!(metadata.causation_id, Some(ctx.command_id));
/// assert_eq!(metadata.correlation_id, Some(ctx.command_id));
/// assert_eq!(metadata.actor.as_deref(), Some("alice"));
/// assert_eq!(metadata.get("tenant"), Some(&serde_json::json!(7)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CommandContext {
    /// This command's id (UUID v7 unless given).
    pub command_id: Uuid,
    /// The business transaction the command belongs to, if it continues one.
    pub correlation_id: Option<Uuid>,
    /// The event that caused this command, if one did.
    pub causation_id: Option<Uuid>,
    /// Who asked.
    pub actor: Option<String>,
    /// Free user keys copied onto every event (tenant, request id, …).
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Whether the store records the command id, so that a repeat returns
    /// the first outcome (set by [`CommandContext::with_command_id`]; always
    /// on for aggregates that keep a journal).
    pub idempotent: bool,
}

impl CommandContext {
    /// A context with a fresh command id and nothing else.
    pub fn new() -> Self {
        CommandContext {
            command_id: Uuid::now_v7(),
            correlation_id: None,
            causation_id: None,
            actor: None,
            extra: BTreeMap::new(),
            idempotent: false,
        }
    }

    /// The context of a command issued in reaction to `event` (by a process
    /// manager, a projection, a consumer of another service's stream): it
    /// continues the event's business transaction, and the event is the
    /// cause of what the command produces.
    ///
    /// Its command id is derived from the event id (a UUID v5), and the
    /// command is idempotent: when the event is delivered again (a consumer
    /// restarted before its checkpoint moved, a redelivery), the reaction
    /// gets the same id and the store runs it once, returning the first
    /// outcome to the repeat. A handler that issues several commands for
    /// one event names each with [`CommandContext::caused_by_as`].
    ///
    /// ```
    /// # use evently_core::{CommandContext, Metadata, Payload, RecordedEvent, StreamId};
    /// # let event = RecordedEvent { event_id: uuid::Uuid::now_v7(), stream_id: StreamId::from("order-1"),
    /// #     stream_version: 1, global_position: 1, event_type: "Placed".into(), schema_version: 1,
    /// #     data: Payload::from_json("{}").unwrap(), metadata: Metadata::new(), recorded_at: chrono::Utc::now() };
    /// let first = CommandContext::caused_by(&event);
    /// let redelivered = CommandContext::caused_by(&event);
    /// assert_eq!(first.command_id, redelivered.command_id);
    /// assert_eq!(first.causation_id, Some(event.event_id));
    /// assert_ne!(CommandContext::caused_by_as(&event, "ship").command_id, first.command_id);
    /// ```
    pub fn caused_by<T>(event: &crate::event::RecordedEvent<T>) -> Self {
        Self::caused_by_as(event, "")
    }

    /// As [`CommandContext::caused_by`], for one of several commands a
    /// handler issues for the same event: `reaction` (a name unique among
    /// them, stable across deliveries) goes into the derived command id.
    pub fn caused_by_as<T>(event: &crate::event::RecordedEvent<T>, reaction: &str) -> Self {
        let mut name = Vec::with_capacity(16 + reaction.len());
        name.extend_from_slice(event.event_id.as_bytes());
        name.extend_from_slice(reaction.as_bytes());
        CommandContext {
            command_id: Uuid::new_v5(&REACTION_NAMESPACE, &name),
            correlation_id: Some(event.metadata.correlation_id.unwrap_or(event.event_id)),
            causation_id: Some(event.event_id),
            idempotent: true,
            ..CommandContext::new()
        }
    }

    /// Sets who asked.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Uses a given command id, and makes the command idempotent: if this
    /// id already produced events, executing it again returns that first
    /// outcome and appends nothing (the store enforces it, so concurrent
    /// repeats are safe too).
    pub fn with_command_id(mut self, id: Uuid) -> Self {
        self.command_id = id;
        self.idempotent = true;
        self
    }

    /// Continues a business transaction.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Adds a user key. The names in [`Metadata::RESERVED_KEYS`] are
    /// reserved: a command whose context uses one fails at append with
    /// [`crate::StoreError::InvalidAppend`].
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The metadata each event of this command carries.
    pub fn event_metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id.unwrap_or(self.command_id)),
            causation_id: Some(self.causation_id.unwrap_or(self.command_id)),
            command_id: Some(self.command_id),
            actor: self.actor.clone(),
            erased_at: None,
            timestamp: chrono::Utc::now(),
            extra: self.extra.clone(),
        }
    }
}

/// The UUID v5 namespace of the command ids derived from events
/// ([`CommandContext::caused_by`]).
const REACTION_NAMESPACE: Uuid = Uuid::from_u128(0x6576_656e_746c_7952_6561_6374_696f_6e73);

impl Default for CommandContext {
    fn default() -> Self {
        CommandContext::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_is_one_object_of_the_set_fields_then_the_user_keys() {
        let id = Uuid::from_u128(7);
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let full = Metadata {
            correlation_id: Some(id),
            causation_id: Some(id),
            command_id: Some(id),
            actor: Some("alice".into()),
            erased_at: Some(at),
            timestamp: at,
            extra: BTreeMap::from([("tenant".to_owned(), json!({"id": 3}))]),
        };
        let text = serde_json::to_string(&full).unwrap();
        let u = id.to_string();
        assert_eq!(
            text,
            format!(
                r#"{{"correlation_id":"{u}","causation_id":"{u}","command_id":"{u}","actor":"alice","erased_at":"2026-12-01T10:00:00Z","timestamp":"2026-12-01T10:00:00Z","tenant":{{"id":3}}}}"#
            )
        );
        assert_eq!(serde_json::from_str::<Metadata>(&text).unwrap(), full);

        let bare = Metadata {
            timestamp: at,
            ..Metadata::new()
        };
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"timestamp":"2026-12-01T10:00:00Z"}"#
        );
        // Nulls read as absent, keys in any order, escaped user keys kept.
        let read: Metadata = serde_json::from_str(
            r#"{"t\u00e9nant":1,"actor":null,"timestamp":"2026-12-01T10:00:00Z","erased_at":null}"#,
        )
        .unwrap();
        assert_eq!(
            read,
            Metadata {
                timestamp: at,
                ..Metadata::new()
            }
            .with("ténant", 1)
        );
    }

    #[test]
    fn metadata_without_a_timestamp_or_with_a_field_twice_does_not_decode() {
        let missing = serde_json::from_str::<Metadata>(r#"{"actor":"a"}"#).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `timestamp`"),
            "{missing}"
        );
        let twice = serde_json::from_str::<Metadata>(
            r#"{"timestamp":"2026-12-01T10:00:00Z","actor":"a","actor":"b"}"#,
        )
        .unwrap_err();
        assert!(
            twice.to_string().contains("duplicate field `actor`"),
            "{twice}"
        );
        let wrong = serde_json::from_str::<Metadata>(
            r#"{"timestamp":"2026-12-01T10:00:00Z","causation_id":"not a uuid"}"#,
        )
        .unwrap_err();
        assert!(wrong.to_string().contains("UUID"), "{wrong}");
        assert!(serde_json::from_str::<Metadata>("[]").is_err());
    }
}
