//! Payload traits the generator implements, and the errors of checking a payload.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A payload type: the params of a command or the data of an event.
///
/// The generator implements this for every command and event of a schema; hand-written
/// implementations are possible but must keep [`Payload::from_json`]'s check order.
pub trait Payload:
    Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static
{
    /// The fully qualified type name, `Namespace.Name` (for example `MyApp.Orders.PlaceOrder`).
    const TYPE_NAME: &'static str;
    /// The topic the payload travels on.
    const TOPIC: &'static str;
    /// The schema version of the payload (events declare it; commands are version 1).
    const VERSION: u32 = 1;

    /// Decodes and checks a JSON value, in this order: object shape, unknown keys
    /// ([`PayloadError::UnknownParams`]), missing required keys
    /// ([`PayloadError::MissingParams`], all of them, in declaration order), wrong types and
    /// rule violations together ([`PayloadError::InvalidParams`]), then the custom
    /// validation ([`PayloadError::Invalid`]).
    fn from_json(value: Value) -> Result<Self, PayloadError>;

    /// Checks the schema rules and the custom validation of an already typed value.
    fn check(&self) -> Result<(), PayloadError>;

    /// Encodes the payload as JSON.
    fn to_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

/// Marks a payload as the params of a command.
pub trait CommandPayload: Payload {}

/// Marks a payload as the data of an event.
pub trait EventPayload: Payload {}

/// Custom validation, for a command or event whose schema says `validate: custom`.
///
/// It runs after every schema rule has passed.
pub trait Validate {
    /// Checks the value; an error becomes [`PayloadError::Invalid`].
    fn validate(&self) -> Result<(), ValidationError>;
}

/// A failed custom validation: a machine-readable code and an optional message and field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    code: String,
    message: Option<String>,
    field: Option<String>,
}

impl ValidationError {
    /// A validation error with a code such as `invalid_email`.
    pub fn new(code: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: None,
            field: None,
        }
    }

    /// Adds a human-readable message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Names the field the error is about.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The field, if any.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.code)?;
        if let Some(message) = &self.message {
            write!(f, " ({message})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// One param (or field) that has the wrong type or breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    param: String,
    code: &'static str,
    message: String,
}

impl ParamError {
    /// A param error: the path of the param (`quantity`, `ship_to.zip`, `tags[2]`), a
    /// code (`invalid_type`, `min`, `max`, `min_length`, `max_length`, `pattern`,
    /// `format`, `one_of`) and a sentence.
    #[cold]
    pub fn new(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            code,
            message: message.into(),
        }
    }

    /// The path of the param.
    pub fn param(&self) -> &str {
        &self.param
    }

    /// The rule code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The sentence.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

/// Why params or event data were refused.
///
/// `CommandError` and `EventError` are this type under the names the call sites read best with.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The value was not a JSON object.
    #[error("expected a JSON object, found {found}")]
    NotAnObject {
        /// The JSON kind found instead (`array`, `string`, `number`, `boolean`, `null`).
        found: &'static str,
    },
    /// Keys that the schema does not declare, in input order.
    #[error("unknown params: {}", .0.join(", "))]
    UnknownParams(Vec<String>),
    /// Required keys that are absent (or null), in declaration order.
    #[error("missing required params: {}", .0.join(", "))]
    MissingParams(Vec<&'static str>),
    /// Wrong types and rule violations, in declaration order.
    #[error("invalid params: {}", join_display(.0))]
    InvalidParams(Vec<ParamError>),
    /// The custom validation refused the value.
    #[error("validation failed: {0}")]
    Invalid(ValidationError),
    /// A typed value could not be encoded as JSON (a map with non-string keys, say).
    #[error("cannot encode as JSON: {0}")]
    Encoding(String),
    /// A message of another type was decoded as this one.
    #[error("expected a message of type {expected}, found {found}")]
    WrongType {
        /// The type name expected.
        expected: &'static str,
        /// The type name found.
        found: String,
    },
}

/// Why a command's params were refused.
pub type CommandError = PayloadError;
/// Why an event's data was refused.
pub type EventError = PayloadError;

impl PayloadError {
    /// The custom validation error, if that is what this is.
    pub fn validation(&self) -> Option<&ValidationError> {
        match self {
            Self::Invalid(e) => Some(e),
            _ => None,
        }
    }

    /// A short machine-readable code: `not_an_object`, `unknown_params`, `missing_params`,
    /// `invalid_params`, `wrong_type`, `encoding`, or the custom validation's own code.
    pub fn code(&self) -> &str {
        match self {
            Self::NotAnObject { .. } => "not_an_object",
            Self::UnknownParams(_) => "unknown_params",
            Self::MissingParams(_) => "missing_params",
            Self::InvalidParams(_) => "invalid_params",
            Self::Invalid(e) => e.code(),
            Self::WrongType { .. } => "wrong_type",
            Self::Encoding(_) => "encoding",
        }
    }
}

impl From<serde_json::Error> for PayloadError {
    fn from(e: serde_json::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}

impl From<ValidationError> for PayloadError {
    fn from(e: ValidationError) -> Self {
        Self::Invalid(e)
    }
}

fn join_display(errors: &[ParamError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The name of a JSON value's kind, for error messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

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

/// Reads a JSON object key by key in the documented check order. Generated code uses it;
/// it is public so hand-written payloads can keep the same behaviour.
#[derive(Debug)]
pub struct ObjectReader {
    map: serde_json::Map<String, Value>,
    errors: Vec<ParamError>,
}

impl ObjectReader {
    /// Checks the shape, unknown keys (against `known`) and missing keys (against
    /// `required`, reported in that slice's order). A `null` counts as absent.
    pub fn new(
        value: Value,
        known: &[&'static str],
        required: &[&'static str],
    ) -> Result<Self, PayloadError> {
        let map = match value {
            Value::Object(map) => map,
            other => {
                return Err(PayloadError::NotAnObject {
                    found: json_kind(&other),
                });
            }
        };
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(PayloadError::UnknownParams(unknown));
        }
        let missing: Vec<&'static str> = required
            .iter()
            .copied()
            .filter(|k| map.get(*k).is_none_or(Value::is_null))
            .collect();
        if !missing.is_empty() {
            return Err(PayloadError::MissingParams(missing));
        }
        Ok(Self {
            map,
            errors: Vec::new(),
        })
    }

    /// Takes a key: `None` when absent or null, or when its value has the wrong type (the
    /// type error is recorded and reported by [`ObjectReader::finish`]).
    pub fn take<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        match self.map.remove(key) {
            None | Some(Value::Null) => None,
            Some(value) => match serde_json::from_value(value) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.errors
                        .push(ParamError::new(key, "invalid_type", e.to_string()));
                    None
                }
            },
        }
    }

    /// Where rule checks record their errors.
    pub fn errors(&mut self) -> &mut Vec<ParamError> {
        &mut self.errors
    }

    /// `Ok` when no type error or rule violation was recorded.
    pub fn finish(self) -> Result<(), PayloadError> {
        finish(self.errors)
    }
}

/// The value of a required key once [`ObjectReader::finish`] passed. Absent only if a
/// hand-written payload skipped a check; reported as missing rather than a panic.
pub fn required<T>(value: Option<T>, key: &'static str) -> Result<T, PayloadError> {
    value.ok_or_else(|| PayloadError::MissingParams(vec![key]))
}

/// `Ok` when `errors` is empty, else [`PayloadError::InvalidParams`].
pub fn finish(errors: Vec<ParamError>) -> Result<(), PayloadError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PayloadError::InvalidParams(errors))
    }
}

/// Rule checks used by generated code. Each records a [`ParamError`] on violation.
pub mod rules {
    use std::fmt::Display;

    use super::ParamError;

    /// `value >= min`.
    pub fn min<T: PartialOrd + Display>(
        errors: &mut Vec<ParamError>,
        param: &str,
        value: T,
        min: T,
    ) {
        if value < min {
            errors.push(ParamError::new(
                param,
                "min",
                format!("must be at least {min}, got {value}"),
            ));
        }
    }

    /// `value <= max`.
    pub fn max<T: PartialOrd + Display>(
        errors: &mut Vec<ParamError>,
        param: &str,
        value: T,
        max: T,
    ) {
        if value > max {
            errors.push(ParamError::new(
                param,
                "max",
                format!("must be at most {max}, got {value}"),
            ));
        }
    }

    /// At least `min` characters (strings count chars) or items.
    pub fn min_length(errors: &mut Vec<ParamError>, param: &str, len: usize, min: usize) {
        if len < min {
            errors.push(ParamError::new(
                param,
                "min_length",
                format!("must have a length of at least {min}, got {len}"),
            ));
        }
    }

    /// At most `max` characters (strings count chars) or items.
    pub fn max_length(errors: &mut Vec<ParamError>, param: &str, len: usize, max: usize) {
        if len > max {
            errors.push(ParamError::new(
                param,
                "max_length",
                format!("must have a length of at most {max}, got {len}"),
            ));
        }
    }

    /// One of the allowed values.
    pub fn one_of<T: PartialEq + std::fmt::Debug>(
        errors: &mut Vec<ParamError>,
        param: &str,
        value: &T,
        allowed: &[T],
    ) {
        if !allowed.contains(value) {
            errors.push(ParamError::new(
                param,
                "one_of",
                format!("must be one of {allowed:?}, got {value:?}"),
            ));
        }
    }

    /// `format: email`: one `@`, a non-empty local part, a dotted domain, no spaces.
    pub fn email(errors: &mut Vec<ParamError>, param: &str, value: &str) {
        if !is_email(value) {
            errors.push(ParamError::new(param, "format", "must be an email address"));
        }
    }

    /// `format: uuid`.
    pub fn uuid(errors: &mut Vec<ParamError>, param: &str, value: &str) {
        if uuid::Uuid::parse_str(value).is_err() {
            errors.push(ParamError::new(param, "format", "must be a UUID"));
        }
    }

    /// `format: url`: an absolute URL with a scheme and a host.
    pub fn url(errors: &mut Vec<ParamError>, param: &str, value: &str) {
        if !is_url(value) {
            errors.push(ParamError::new(param, "format", "must be an absolute URL"));
        }
    }

    /// A regular expression compiled on first use. The generator compiled it already, so
    /// it cannot fail here; if it somehow does, every check reports it instead of panicking.
    #[derive(Debug)]
    pub struct Pattern {
        source: &'static str,
        compiled: std::sync::OnceLock<Option<regex::Regex>>,
    }

    impl Pattern {
        /// A pattern, compiled lazily.
        pub const fn new(source: &'static str) -> Self {
            Self {
                source,
                compiled: std::sync::OnceLock::new(),
            }
        }
    }

    /// `pattern:` the string contains a match (anchor the regex to match it whole).
    pub fn pattern(errors: &mut Vec<ParamError>, param: &str, value: &str, pattern: &Pattern) {
        match pattern
            .compiled
            .get_or_init(|| regex::Regex::new(pattern.source).ok())
        {
            Some(re) if re.is_match(value) => {}
            Some(_) => errors.push(ParamError::new(
                param,
                "pattern",
                format!("must match the pattern {}", pattern.source),
            )),
            None => errors.push(ParamError::new(
                param,
                "pattern",
                "the pattern does not compile",
            )),
        }
    }

    fn is_email(s: &str) -> bool {
        let Some((local, domain)) = s.split_once('@') else {
            return false;
        };
        !local.is_empty()
            && !domain.contains('@')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && domain.split('.').count() >= 2
            && domain.split('.').all(|label| !label.is_empty())
    }

    fn is_url(s: &str) -> bool {
        let Some((scheme, rest)) = s.split_once("://") else {
            return false;
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !host.is_empty()
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
    }
}
