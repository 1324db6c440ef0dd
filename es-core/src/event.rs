//! Events as the domain sees them ([`Event`]), as they go into a store
//! ([`NewEvent`]) and as they come out of it ([`RecordedEvent`]), with the
//! JSON [`Payload`] between them.
//!
//! An event enum is stored one variant at a time: the variant's name (or its
//! `#[event(name = "...")]`) is the stored event type, and the payload holds
//! only the variant's fields. Decoding picks the variant from the stored type
//! and reads the fields straight from the payload text, with no intermediate
//! JSON tree.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Impossible, Serialize};
use serde::{Deserialize as _, Deserializer as _};
use uuid::Uuid;

use crate::error::{DecodeError, DecodeErrorKind, EncodeError};
use crate::metadata::Metadata;
use crate::version::StreamId;

/// A domain event: a fact that happened, stored in a stream.
///
/// Derive it with `#[derive(Event)]` on an enum (one stored event type per
/// variant) or a struct (one event type). The derive needs `serde`'s
/// `Serialize` and `Deserialize` on the same type.
///
/// | attribute | where | meaning | default |
/// |---|---|---|---|
/// | `#[event(name = "...")]` | variant or struct | the stored event type name | the variant's (or struct's) name |
/// | `#[event(version = N)]` | enum, variant or struct | the schema version, `N >= 1` | 1 (a variant inherits the enum's) |
/// | `#[event(upcaster = function)]` | enum or struct | upgrades events of older versions or former names, see [`crate::upcast`] | none |
///
/// ```
/// use es_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
/// #[event(version = 2)]
/// enum AccountEvent {
///     #[event(name = "account.opened")]
///     Opened { owner: String },
///     #[event(version = 3)]
///     Deposited { amount: u64 },
/// }
///
/// let event = AccountEvent::Deposited { amount: 5 };
/// assert_eq!(event.event_type(), "Deposited");
/// assert_eq!(event.schema_version(), 3);
/// assert_eq!(AccountEvent::EVENT_TYPES, &["account.opened", "Deposited"]);
/// assert_eq!(AccountEvent::event_type_of_variant("Opened"), Some("account.opened"));
///
/// let payload = event.encode().unwrap();
/// assert_eq!(payload.as_str(), r#"{"amount":5}"#);
/// assert_eq!(AccountEvent::decode("Deposited", 3, &payload).unwrap(), event);
/// ```
pub trait Event: Sized + Send + Sync + 'static {
    /// Every stored event type name this type reads and writes.
    const EVENT_TYPES: &'static [&'static str];

    /// The stored event type name of this value.
    fn event_type(&self) -> &'static str;

    /// The schema version of this value's event type.
    fn schema_version(&self) -> u32;

    /// The payload to store: the event's fields as JSON.
    fn encode(&self) -> Result<Payload, EncodeError>;

    /// Reads an event back from its stored type, schema version and payload.
    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: &Payload,
    ) -> Result<Self, DecodeErrorKind>;

    /// The stored event type name of the enum variant called `variant` (its
    /// Rust name, without `r#`), or `None` if there is no such variant.
    ///
    /// `#[derive(Event)]` implements it for an enum; a struct event and a
    /// hand-written impl answer `None` unless they override it. The
    /// `Projection` derive uses it to turn the variants it handles into the
    /// stored names it asks the runner for.
    fn event_type_of_variant(variant: &str) -> Option<&'static str> {
        let _ = variant;
        None
    }

    /// The schema version this code reads for the stored type `event_type`,
    /// or `None` if it reads no such type (a former name, say).
    /// `#[derive(Event)]` implements it; a hand-written impl that answers
    /// `None` decodes every version itself.
    fn current_version(event_type: &str) -> Option<u32> {
        let _ = event_type;
        None
    }

    /// One upcasting step for a stored event of an older schema version or a
    /// former type name: the event at a later version, renamed, split into
    /// several, or none at all; `None` when there is no step for it.
    /// `#[event(upcaster = function)]` sets it; see [`crate::upcast`].
    fn upcast(old: crate::upcast::OldEvent) -> Option<Vec<crate::upcast::OldEvent>> {
        let _ = old;
        None
    }

    /// The aggregate type whose streams hold events of this type, if one
    /// claims it ([`AggregateEvent`]). A projection over this event type
    /// takes events from that aggregate's streams only, so two aggregates
    /// whose events share a type name (`Opened` on an account and on a
    /// loan) never mix. `#[derive(Event)]` answers
    /// `Some(<Self as AggregateEvent>::AGGREGATE_TYPE)` when the type
    /// implements [`AggregateEvent`] (`#[derive(Aggregate)]` does that for
    /// its event type), else `None`: then events are matched by their type
    /// name alone, from any stream.
    fn aggregate_type() -> Option<&'static str> {
        None
    }
}

/// Binds an event type to the one aggregate type that appends it.
///
/// `#[derive(Aggregate)]` implements it for the aggregate's `event` type,
/// so a second aggregate declaring the same event type is a compile error
/// (conflicting implementations) instead of a silent mix in projections.
/// Implement it by hand for an event type appended without an aggregate,
/// or received from another service, to give it the same protection:
///
/// ```
/// use es_core::{AggregateEvent, Event};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Event)]
/// enum LoanEvent { Opened { amount: u64 } }
///
/// impl AggregateEvent for LoanEvent {
///     const AGGREGATE_TYPE: &'static str = "loan";
/// }
///
/// assert_eq!(LoanEvent::aggregate_type(), Some("loan"));
/// ```
pub trait AggregateEvent {
    /// The aggregate type: the part of its streams' ids before the first
    /// `-`.
    const AGGREGATE_TYPE: &'static str;
}

/// Compile-time lookup of an event type's [`AggregateEvent`] impl, for
/// `#[derive(Event)]`: method resolution on `&&Probe<T>` picks [`Owned`]
/// when `T: AggregateEvent` and falls back to [`Unowned`] otherwise.
#[doc(hidden)]
pub mod owner {
    use std::marker::PhantomData;

    /// A value standing for the type `T`.
    pub struct Probe<T>(PhantomData<T>);

    impl<T> Probe<T> {
        /// The probe.
        pub const NEW: Self = Probe(PhantomData);
    }

    /// Chosen when `T` implements [`super::AggregateEvent`].
    pub trait Owned {
        /// `T`'s aggregate type.
        fn aggregate_type(&self) -> Option<&'static str>;
    }

    impl<T: super::AggregateEvent> Owned for &Probe<T> {
        fn aggregate_type(&self) -> Option<&'static str> {
            Some(T::AGGREGATE_TYPE)
        }
    }

    /// The fallback: no aggregate claims `T`.
    pub trait Unowned {
        /// `None`.
        fn aggregate_type(&self) -> Option<&'static str>;
    }

    impl<T> Unowned for Probe<T> {
        fn aggregate_type(&self) -> Option<&'static str> {
            None
        }
    }
}

/// The stored event type names of the variants of `E` called `variants`:
/// each variant's [`Event::event_type_of_variant`], else its Rust name.
/// Used by the `Projection` derive.
#[doc(hidden)]
pub fn handled_event_types<E: Event>(variants: &[&'static str]) -> Vec<&'static str> {
    variants
        .iter()
        .map(|&variant| E::event_type_of_variant(variant).unwrap_or(variant))
        .collect()
}

/// An event's payload: a JSON text, cheap to clone.
///
/// ```
/// use es_core::Payload;
///
/// let payload = Payload::from_json(r#"{"amount": 5}"#).unwrap();
/// assert_eq!(payload.to_value().unwrap()["amount"], 5);
/// assert!(Payload::from_json_unchecked("{oops").to_value().is_err());
/// assert!(Payload::from_json("{not json").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(Arc<str>);

impl Payload {
    /// Checks that `text` is one JSON value and wraps it.
    pub fn from_json(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        let text = text.into();
        let mut de = serde_json::Deserializer::from_str(&text);
        de::IgnoredAny::deserialize(&mut de)?;
        de.end()?;
        Ok(Payload(text.into()))
    }

    /// Wraps text the caller knows is one JSON value (read from a `jsonb`
    /// column, say) without checking it again. Text that is not JSON is
    /// never unsafe: decoding it fails with a payload error.
    pub fn from_json_unchecked(text: impl Into<std::sync::Arc<str>>) -> Self {
        Payload(text.into())
    }

    /// Serializes a JSON value.
    pub fn from_value(value: &serde_json::Value) -> Self {
        Payload(value.to_string().into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the payload into a JSON tree (for tools and tests; decoding an
    /// event never needs one). Text that is not JSON (only possible through
    /// [`Payload::from_json_unchecked`]) is an error, never `Null`.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Whether two payloads hold the same JSON value, whatever their
    /// spacing, key order or number spelling (`1.0` and `1` are equal), as
    /// PostgreSQL's `jsonb` compares them. Stores use it to tell a retried
    /// append from a reused event id, so the same retry is a retry on
    /// every store. Text that is not JSON equals only the same text.
    ///
    /// ```
    /// use es_core::Payload;
    ///
    /// let a = Payload::from_json(r#"{"a": 1, "b": [1.0, "x"]}"#).unwrap();
    /// let b = Payload::from_json(r#"{"b":[1,"x"],"a":1}"#).unwrap();
    /// assert!(a.same_json(&b));
    /// assert!(!a.same_json(&Payload::from_json(r#"{"a": 2, "b": [1, "x"]}"#).unwrap()));
    /// ```
    pub fn same_json(&self, other: &Payload) -> bool {
        if self.0 == other.0 {
            return true;
        }
        match (
            serde_json::from_str::<serde_json::Value>(&self.0),
            serde_json::from_str::<serde_json::Value>(&other.0),
        ) {
            (Ok(a), Ok(b)) => same_value(&a, &b),
            _ => false,
        }
    }

    /// The size of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the JSON text is empty (never true for a checked payload).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Wraps text that `serde_json` produced.
    pub(crate) fn from_serialized(text: String) -> Self {
        Payload(text.into())
    }
}

/// JSON equality as `jsonb` has it: objects by key, numbers by value.
fn same_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event ready to append: its id, type, schema version, payload and
/// metadata. The store assigns the stream version and global position.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event's id (UUID v7). Appending an id again stores nothing twice.
    pub event_id: Uuid,
    /// The stored event type name.
    pub event_type: Cow<'static, str>,
    /// The schema version of the event type.
    pub schema_version: u32,
    /// The event's fields as JSON.
    pub payload: Payload,
    /// Correlation, causation, timestamp and user keys.
    pub metadata: Metadata,
}

impl NewEvent {
    /// Encodes a domain event with a fresh UUID v7 id.
    ///
    /// ```
    /// use es_core::{Event, Metadata, NewEvent};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize, Event)]
    /// # enum E { Happened { n: u8 } }
    ///
    /// let new = NewEvent::from_event(&E::Happened { n: 1 }, Metadata::new()).unwrap();
    /// assert_eq!(new.event_type, "Happened");
    /// assert_eq!(new.event_id.get_version_num(), 7);
    /// ```
    pub fn from_event<E: Event>(event: &E, metadata: Metadata) -> Result<Self, EncodeError> {
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            event_type: Cow::Borrowed(event.event_type()),
            schema_version: event.schema_version(),
            payload: event.encode()?,
            metadata,
        })
    }

    /// Builds an event from its raw parts (for tools, tests and bridges).
    pub fn raw(
        event_type: impl Into<Cow<'static, str>>,
        schema_version: u32,
        payload: Payload,
        metadata: Metadata,
    ) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata,
        }
    }

    /// Replaces the event id (a retry of a known append reuses its ids).
    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }
}

/// An event as stored: where it sits in its stream and in the global log,
/// and its data — a raw [`Payload`] by default, or a decoded event after
/// [`RecordedEvent::decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent<T = Payload> {
    /// The event's id (UUID v7).
    pub event_id: Uuid,
    /// The stream that holds the event.
    pub stream_id: StreamId,
    /// The event's version in its stream: 1, 2, 3, … without gaps.
    pub stream_version: u64,
    /// The event's position in the global log: increasing, starting at 1.
    pub global_position: u64,
    /// The stored event type name.
    pub event_type: Cow<'static, str>,
    /// The schema version the payload was written with.
    pub schema_version: u32,
    /// The payload, or the decoded event.
    pub data: T,
    /// Correlation, causation, timestamp and user keys.
    pub metadata: Metadata,
    /// When the store recorded the event.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent<Payload> {
    /// Decodes the payload into a domain event; the error names the stream,
    /// version and event type.
    ///
    /// An older schema version goes through the event type's upcaster; an
    /// upcaster that splits the event into several is an error here (use
    /// [`RecordedEvent::decode_all`]).
    pub fn decode<E: Event>(&self) -> Result<RecordedEvent<E>, DecodeError> {
        let mut events = self.decode_all::<E>()?;
        if events.len() != 1 {
            return Err(DecodeError::new(
                self,
                DecodeErrorKind::NotOneEvent {
                    count: events.len(),
                },
            ));
        }
        Ok(events.remove(0))
    }

    /// Decodes the payload into today's domain events: one for a current
    /// event, and for an older one whatever its upcaster makes of it (one,
    /// several after a split, none after a drop). The errors name the
    /// stream, version and event type.
    pub fn decode_all<E: Event>(&self) -> Result<Vec<RecordedEvent<E>>, DecodeError> {
        if self.metadata.erased_at.is_some() {
            return Err(DecodeError::new(self, DecodeErrorKind::Erased));
        }
        let events =
            crate::upcast::decode_upcasting::<E>(&self.event_type, self.schema_version, &self.data)
                .map_err(|kind| DecodeError::new(self, kind))?;
        Ok(events.into_iter().map(|e| self.with_data(e)).collect())
    }
}

impl<T> RecordedEvent<T> {
    /// The aggregate type of the event's stream (the part of its id before
    /// the first `-`), or `None` for a stream not named by an aggregate.
    pub fn aggregate_type(&self) -> Option<&str> {
        self.stream_id.aggregate_type()
    }

    /// The aggregate id of the event's stream (the part of its id after the
    /// first `-`), or `None` for a stream not named by an aggregate.
    pub fn aggregate_id(&self) -> Option<&str> {
        self.stream_id.aggregate_id()
    }

    /// The same envelope around other data.
    pub fn with_data<U>(&self, data: U) -> RecordedEvent<U> {
        RecordedEvent {
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            global_position: self.global_position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            data,
            metadata: self.metadata.clone(),
            recorded_at: self.recorded_at,
        }
    }
}

/// Serializes only the fields of an enum value's variant. Used by the
/// `Event` derive.
#[doc(hidden)]
pub fn encode_variant<E: Serialize + ?Sized>(event: &E) -> Result<Payload, EncodeError> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::new(&mut out);
    event
        .serialize(VariantSerializer { inner: &mut ser })
        .map_err(EncodeError::from)?;
    // serde_json writes UTF-8 only.
    let text = String::from_utf8(out).map_err(|e| EncodeError::new(e.to_string()))?;
    Ok(Payload::from_serialized(text))
}

/// Deserializes an enum value from the variant named `variant` and a payload
/// that holds only that variant's fields. Used by the `Event` derive.
#[doc(hidden)]
pub fn decode_variant<E: de::DeserializeOwned>(
    variant: &'static str,
    payload: &Payload,
) -> Result<E, DecodeErrorKind> {
    let mut de = serde_json::Deserializer::from_str(payload.as_str());
    let value = E::deserialize(VariantDeserializer {
        variant,
        content: &mut de,
    })
    .map_err(DecodeErrorKind::Payload)?;
    de.end().map_err(DecodeErrorKind::Payload)?;
    Ok(value)
}

struct VariantDeserializer<'a, 'de> {
    variant: &'static str,
    content: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
}

impl<'de> de::Deserializer<'de> for VariantDeserializer<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(
            "an event payload decodes into an enum variant only",
        ))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for VariantDeserializer<'_, 'de> {
    type Error = serde_json::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Self::Error> {
        let name: de::value::StrDeserializer<'_, serde_json::Error> =
            self.variant.into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for VariantDeserializer<'_, 'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        // A unit variant is stored as `null`; tolerate `{}` written by hand.
        de::IgnoredAny::deserialize(self.content)?;
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        seed.deserialize(self.content)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.content.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.content.deserialize_struct("", fields, visitor)
    }
}

type JsonSerializer<'a, W> = &'a mut serde_json::Serializer<W>;

struct VariantSerializer<'a, W> {
    inner: JsonSerializer<'a, W>,
}

fn not_a_variant() -> serde_json::Error {
    ser::Error::custom("an event payload encodes an enum variant only")
}

macro_rules! reject {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Self::Ok, Self::Error> {
            Err(not_a_variant())
        })*
    };
}

impl<'a, W: std::io::Write> ser::Serializer for VariantSerializer<'a, W> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<(), serde_json::Error>;
    type SerializeTuple = Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = Fields<<JsonSerializer<'a, W> as ser::Serializer>::SerializeTuple>;
    type SerializeMap = Impossible<(), serde_json::Error>;
    type SerializeStruct = Impossible<(), serde_json::Error>;
    type SerializeStructVariant =
        Fields<<JsonSerializer<'a, W> as ser::Serializer>::SerializeStruct>;

    reject! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64), serialize_f32(f32), serialize_f64(f64), serialize_char(char),
        serialize_str(&str), serialize_bytes(&[u8]), serialize_none(), serialize_unit(),
        serialize_unit_struct(&'static str),
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Self::Error> {
        Err(not_a_variant())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Self::Error> {
        Err(not_a_variant())
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        Err(not_a_variant())
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Self::Error> {
        Err(not_a_variant())
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        Err(not_a_variant())
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        Err(not_a_variant())
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        Err(not_a_variant())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), Self::Error> {
        ser::Serializer::serialize_unit(self.inner)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        value.serialize(self.inner)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        Ok(Fields(ser::Serializer::serialize_tuple(self.inner, len)?))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        Ok(Fields(ser::Serializer::serialize_struct(
            self.inner, variant, len,
        )?))
    }
}

/// Writes a variant's fields as a plain tuple or struct.
#[doc(hidden)]
pub struct Fields<S>(S);

impl<S: ser::SerializeTuple<Ok = (), Error = serde_json::Error>> ser::SerializeTupleVariant
    for Fields<S>
{
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        self.0.serialize_element(value)
    }

    fn end(self) -> Result<(), Self::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeStruct<Ok = (), Error = serde_json::Error>> ser::SerializeStructVariant
    for Fields<S>
{
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        self.0.serialize_field(key, value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), Self::Error> {
        self.0.skip_field(key)
    }

    fn end(self) -> Result<(), Self::Error> {
        self.0.end()
    }
}

/// Serializes a struct event. Used by the `Event` derive.
#[doc(hidden)]
pub fn encode_struct<E: Serialize + ?Sized>(event: &E) -> Result<Payload, EncodeError> {
    Ok(Payload::from_serialized(serde_json::to_string(event)?))
}

/// Deserializes a struct event. Used by the `Event` derive.
#[doc(hidden)]
pub fn decode_struct<E: de::DeserializeOwned>(payload: &Payload) -> Result<E, DecodeErrorKind> {
    serde_json::from_str(payload.as_str()).map_err(DecodeErrorKind::Payload)
}
