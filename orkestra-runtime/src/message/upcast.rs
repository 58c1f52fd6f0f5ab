//! Reading events written by another release: older data is upcast to the reader's
//! version through the schema's `upcast` steps, newer data is read tolerantly. The
//! guide's [schema evolution](https://github.com/orkestra-rs/orkestra/blob/main/book/src/evolution.md) chapter is the user's view.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::{self, IntoDeserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::payload::{EventPayload, ParamError, PayloadError};

/// The upcast steps of an event type, as data: what a schema's `upcast` section becomes.
/// Step `i` reads version `first + i` and returns version `first + i + 1`.
#[derive(Clone, Copy, Debug)]
pub struct UpcastSteps {
    /// The version the first step reads.
    pub first: u32,
    /// The steps, oldest first, one per version up to the current one.
    pub steps: &'static [UpcastStep],
}

/// Makes the value an `added` field gets.
pub type AddedValue = fn() -> Value;

/// One step from a version to the next.
#[derive(Clone, Copy, Debug)]
pub enum UpcastStep {
    /// `renamed`, `removed`, `added`, applied in that order.
    Declarative {
        /// `(old, new)` field names: the value moves, replacing any under the new name.
        renamed: &'static [(&'static str, &'static str)],
        /// Fields dropped.
        removed: &'static [&'static str],
        /// Fields set where the data has none (or null), with their values.
        added: &'static [(&'static str, AddedValue)],
    },
    /// A step written in Rust.
    Custom(fn(Value) -> Result<Value, UpcastError>),
}

impl UpcastSteps {
    /// No steps: only the current version (and newer ones) can be read.
    pub const NONE: Self = Self {
        first: 1,
        steps: &[],
    };

    /// Runs the steps from `from` up to `current` on a JSON tree.
    pub fn run(&self, mut data: Value, from: u32, current: u32) -> Result<Value, UpcastError> {
        for version in from..current {
            let step = version
                .checked_sub(self.first)
                .and_then(|i| self.steps.get(i as usize))
                .ok_or_else(|| UpcastError::no_step(version, current))?;
            data = match step {
                UpcastStep::Custom(f) => f(data)?,
                UpcastStep::Declarative {
                    renamed,
                    removed,
                    added,
                } => {
                    let Value::Object(map) = &mut data else {
                        return Err(UpcastError::new(format!(
                            "expected a JSON object, found {}",
                            super::json_kind(&data)
                        )));
                    };
                    for (from, to) in *renamed {
                        if let Some(v) = map.remove(*from) {
                            map.insert((*to).to_owned(), v);
                        }
                    }
                    for field in *removed {
                        map.remove(*field);
                    }
                    for (field, value) in *added {
                        match map.get_mut(*field) {
                            Some(v) if !v.is_null() => {}
                            Some(v) => *v = value(),
                            None => {
                                map.insert((*field).to_owned(), value());
                            }
                        }
                    }
                    data
                }
            };
        }
        Ok(data)
    }

    /// The steps from `from` to `current` when every one is declarative (so they can be
    /// applied to borrowed JSON without building a tree).
    fn declarative(&self, from: u32, current: u32) -> Option<&'static [UpcastStep]> {
        let start = from.checked_sub(self.first)? as usize;
        let end = current.checked_sub(self.first)? as usize;
        let chain = self.steps.get(start..end)?;
        chain
            .iter()
            .all(|s| matches!(s, UpcastStep::Declarative { .. }))
            .then_some(chain)
    }
}

/// Why an event's data could not be brought to the reader's schema version.
///
/// A custom upcast step returns it to refuse data it cannot convert; the runtime also
/// builds it when no step covers the stored version or a step panics. Decoding reports it
/// as [`PayloadError::Upcast`] (on a bus, the message becomes a dead letter with this
/// reason; in a store, nothing is lost: the stored data is untouched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpcastError {
    message: String,
}

impl UpcastError {
    /// A step's refusal, in words.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// No step starts at `version`: the data is older than the oldest step the reader
    /// knows (or the payload has no steps at all).
    #[cold]
    pub fn no_step(version: u32, current: u32) -> Self {
        Self::new(format!(
            "no upcast step from version {version} (this release reads version {current} and \
             declares no step from {version})"
        ))
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for UpcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpcastError {}

/// Decodes stored event data (JSON text) written at schema version `version` into `D`:
/// as [`read_event`], without building a JSON tree where it can. Current (or newer) data
/// goes straight from the text into the type (whose serde shape reads as tolerantly as
/// `decode_json`); data behind declarative steps only is read into a map of borrowed raw
/// values, renamed, pruned and completed there. Anything else, and any failure (for its
/// precise message), takes the tree path.
pub(crate) fn read_stored<D: EventPayload>(text: &str, version: u32) -> Result<D, PayloadError> {
    if version >= D::VERSION {
        if let Ok(data) = serde_json::from_str(text) {
            return Ok(data);
        }
    } else if let Some(chain) = D::UPCAST.declarative(version, D::VERSION) {
        if super::renaming::streamable(chain) && !text.contains("null") {
            let mut de = serde_json::Deserializer::from_str(text);
            let renaming = super::renaming::Renaming {
                inner: &mut de,
                chain,
            };
            if let Ok(data) = D::deserialize(renaming)
                && de.end().is_ok()
            {
                return Ok(data);
            }
        }
        if let Ok(data) = read_borrowed(text, chain) {
            return Ok(data);
        }
    }
    let value = serde_json::from_str(text).map_err(|e| {
        PayloadError::InvalidParams(vec![ParamError::new("data", "invalid_type", e.to_string())])
    })?;
    read_event(value, version)
}

/// A field's value: borrowed from the stored text or a JSON tree, or added by a step.
enum Field<'a> {
    Raw(&'a RawValue),
    Ref(&'a Value),
    Owned(Value),
}

/// The top-level entries of a JSON object, in order, keys and values borrowed from the
/// text (a key with escapes does not borrow: the caller then takes the tree path).
struct Entries<'a>(Vec<(&'a str, Field<'a>)>);

impl<'de> de::Deserialize<'de> for Entries<'de> {
    fn deserialize<De: de::Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        struct Visit;
        impl<'de> de::Visitor<'de> for Visit {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<&'de str, &'de RawValue>()? {
                    entries.push((k, Field::Raw(v)));
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl<'a> Entries<'a> {
    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| *k == key)
    }

    fn remove(&mut self, key: &str) -> Option<Field<'a>> {
        self.position(key).map(|i| self.0.remove(i).1)
    }

    /// Sets `key`, replacing any value it had.
    fn insert(&mut self, key: &'a str, value: Field<'a>) {
        match self.position(key) {
            Some(i) => self.0[i].1 = value,
            None => self.0.push((key, value)),
        }
    }
}

fn read_borrowed<D: EventPayload>(
    text: &str,
    chain: &[UpcastStep],
) -> Result<D, serde_json::Error> {
    apply(serde_json::from_str(text)?, chain)
}

/// Decodes an event from a JSON tree written at `version` without copying the tree:
/// current (or newer) data straight through serde, data behind declarative steps through
/// a view of borrowed values. `None` when neither applies or the data does not fit (the
/// caller then copies the tree and takes the precise path).
pub(crate) fn read_event_ref<D: EventPayload>(data: &Value, version: u32) -> Option<D> {
    if version >= D::VERSION {
        return D::deserialize(data).ok();
    }
    let chain = D::UPCAST.declarative(version, D::VERSION)?;
    let Value::Object(map) = data else {
        return None;
    };
    if super::renaming::streamable(chain) && !map.values().any(Value::is_null) {
        let renaming = super::renaming::Renaming { inner: data, chain };
        if let Ok(data) = D::deserialize(renaming) {
            return Some(data);
        }
    }
    let entries = Entries(
        map.iter()
            .map(|(k, v)| (k.as_str(), Field::Ref(v)))
            .collect(),
    );
    apply(entries, chain).ok()
}

/// Applies declarative steps to a view of an object, then decodes it.
fn apply<D: EventPayload>(
    mut map: Entries<'_>,
    chain: &[UpcastStep],
) -> Result<D, serde_json::Error> {
    for step in chain {
        let UpcastStep::Declarative {
            renamed,
            removed,
            added,
        } = step
        else {
            unreachable!("the chain holds declarative steps only");
        };
        for (from, to) in *renamed {
            if let Some(v) = map.remove(from) {
                map.insert(to, v);
            }
        }
        for field in *removed {
            map.remove(field);
        }
        for (field, value) in *added {
            let absent = match map.position(field).map(|i| &map.0[i].1) {
                None => true,
                Some(Field::Raw(raw)) => raw.get().trim() == "null",
                Some(Field::Ref(v)) => v.is_null(),
                Some(Field::Owned(v)) => v.is_null(),
            };
            if absent {
                map.insert(field, Field::Owned(value()));
            }
        }
    }
    D::deserialize(de::value::MapDeserializer::new(map.0.into_iter()))
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Field<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// Each method hands the visitor to the borrowed raw value or the owned one.
macro_rules! delegate {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: de::Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, serde_json::Error> {
                match self {
                    Field::Raw(raw) => raw.$method($($arg,)* visitor),
                    Field::Ref(value) => value.$method($($arg,)* visitor),
                    Field::Owned(value) => value.$method($($arg,)* visitor),
                }
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Field<'de> {
    type Error = serde_json::Error;

    delegate! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }
}

/// Decodes event data written at schema version `version` into `D`: older data is upcast
/// through `D`'s steps first, data of this or a newer version is read as it is (unknown
/// fields ignored). The shape is checked, the rules are not (history stays readable when
/// a rule is tightened). A step that fails or panics is [`PayloadError::Upcast`].
pub(crate) fn read_event<D: EventPayload>(data: Value, version: u32) -> Result<D, PayloadError> {
    let data = upcast_to_current::<D>(data, version)?;
    D::decode_json(data)
}

/// Runs `D`'s steps from `version` to `D::VERSION` (nothing when `version` is current or
/// newer).
fn upcast_to_current<D: EventPayload>(data: Value, version: u32) -> Result<Value, PayloadError> {
    if version >= D::VERSION {
        return Ok(data);
    }
    let failed = |reason: String| PayloadError::Upcast {
        event_type: D::TYPE_NAME,
        from: version,
        to: D::VERSION,
        reason,
    };
    match catch_unwind(AssertUnwindSafe(|| D::upcast(data, version))) {
        Ok(Ok(data)) => Ok(data),
        Ok(Err(e)) => Err(failed(e.message)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            Err(failed(format!("an upcast step panicked: {what}")))
        }
    }
}
