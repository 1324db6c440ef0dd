//! The serde codec the `Event` derive uses: an enum is stored one variant
//! at a time, its payload holding only the variant's fields, decoded
//! straight from the payload text.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Impossible, Serialize};
use serde::{Deserialize as _, Deserializer as _};

use crate::error::{DecodeErrorKind, EncodeError};

use super::Payload;

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
