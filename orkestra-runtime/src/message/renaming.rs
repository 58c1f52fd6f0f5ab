//! Declarative upcast steps applied while serde reads the object, with nothing copied:
//! each key is renamed or dropped as it streams past, and `added` fields that never
//! appeared are yielded at the end.
//!
//! Exact only where per-key renaming equals running the steps on a tree, so the callers
//! use it only when [`streamable`] holds and no top-level value is `null` (an `added`
//! step replaces a null). A key collision (two keys ending under one name) makes serde
//! report a duplicate field; the caller then takes the tree path, which is exact.

use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};

use super::upcast::{AddedValue, UpcastStep};

/// Whether per-key renaming is exact for `chain`: no field a step adds is renamed or
/// removed by a later step.
pub(super) fn streamable(chain: &[UpcastStep]) -> bool {
    added(chain).count() <= MAX_ADDED
        && chain.iter().enumerate().all(|(i, step)| {
            let UpcastStep::Declarative { added, .. } = step else {
                return false;
            };
            added.iter().all(|(field, _)| {
                chain[i + 1..].iter().all(|later| match later {
                    UpcastStep::Declarative {
                        renamed, removed, ..
                    } => !renamed.iter().any(|(from, _)| from == field) && !removed.contains(field),
                    UpcastStep::Custom(_) => false,
                })
            })
        })
}

/// What the steps make of an input key: its final name, or `None` when a step drops it.
fn fate<'a>(key: &'a str, chain: &[UpcastStep]) -> Option<&'a str> {
    let mut name = key;
    for step in chain {
        if let UpcastStep::Declarative {
            renamed, removed, ..
        } = step
        {
            if let Some((_, to)) = renamed.iter().find(|(from, _)| *from == name) {
                name = to;
            }
            if removed.contains(&name) {
                return None;
            }
        }
    }
    Some(name)
}

/// A deserializer for an event's object that applies `chain` on the way.
pub(super) struct Renaming<'c, D> {
    pub(super) inner: D,
    pub(super) chain: &'c [UpcastStep],
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for Renaming<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_map(Wrap {
            visitor,
            chain: self.chain,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
        enum identifier ignored_any
    }
}

struct Wrap<'c, V> {
    visitor: V,
    chain: &'c [UpcastStep],
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(Access {
            map,
            chain: self.chain,
            seen: 0,
            next_added: 0,
            pending: None,
        })
    }
}

/// Every `added` field of the chain, in step order.
fn added(chain: &[UpcastStep]) -> impl Iterator<Item = &(&'static str, AddedValue)> {
    chain.iter().flat_map(|s| match s {
        UpcastStep::Declarative { added, .. } => added.iter(),
        UpcastStep::Custom(_) => [].iter(),
    })
}

/// At most this many `added` fields in a chain (one bit each in `Access::seen`).
pub(super) const MAX_ADDED: usize = 64;

struct Access<'c, A> {
    map: A,
    chain: &'c [UpcastStep],
    /// Bit `i`: an input key already gave the chain's `i`-th added field.
    seen: u64,
    /// The next added field to consider once the input is exhausted.
    next_added: usize,
    /// The value of the added field whose key was just yielded.
    pending: Option<AddedValue>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<&'de str>()? {
            match fate(key, self.chain) {
                None => {
                    self.map.next_value::<IgnoredAny>()?;
                }
                Some(name) => {
                    for (i, (field, _)) in added(self.chain).enumerate() {
                        if *field == name {
                            self.seen |= 1 << i;
                        }
                    }
                    return seed
                        .deserialize(BorrowedStrDeserializer::new(name))
                        .map(Some);
                }
            }
        }
        while let Some(&(field, value)) = added(self.chain).nth(self.next_added) {
            let i = self.next_added;
            self.next_added += 1;
            // Two steps may add one field: the first one wins, as on a tree.
            let first = added(self.chain).take(i).all(|(f, _)| *f != field);
            if self.seen & (1 << i) == 0 && first {
                self.pending = Some(value);
                return seed
                    .deserialize(BorrowedStrDeserializer::new(field))
                    .map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        match self.pending.take() {
            Some(value) => seed
                .deserialize(IntoDeserializer::<serde_json::Error>::into_deserializer(
                    value(),
                ))
                .map_err(de::Error::custom),
            None => self.map.next_value_seed(seed),
        }
    }
}
