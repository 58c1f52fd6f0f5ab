//! [`Decimal`]: a `decimal` schema value, kept as its exact text.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::payload::json_kind;

/// A `decimal` value, kept as its exact text (`"12.50"`), never rounded through a float.
///
/// It accepts a JSON string or number holding an optional sign, digits and an optional
/// fraction (and exponent); convert it with the decimal crate of your choice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Decimal(String);

impl Decimal {
    /// Parses decimal text.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((m, e)) => (m, Some(e)),
            None => (unsigned, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        let exponent_ok = exponent.is_none_or(|e| {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        });
        (!int.is_empty() || !frac.is_empty())
            .then_some(())
            .filter(|()| digits(int) && digits(frac) && exponent_ok)
            .map(|()| Self(t.to_owned()))
    }

    /// The exact text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Zero (`"0"`).
impl Default for Decimal {
    fn default() -> Self {
        Self("0".to_owned())
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match Value::deserialize(d)? {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "invalid type: {}, expected a decimal string or number",
                    json_kind(&other)
                )));
            }
        };
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid decimal {text:?}")))
    }
}
