//! [`Payload`]: an event's JSON text, cheap to clone.

use std::fmt;
use std::sync::Arc;

use serde::de;
use serde::Deserialize as _;

/// An event's payload: a JSON text, cheap to clone.
///
/// ```
/// use evently_core::Payload;
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
    /// use evently_core::Payload;
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
