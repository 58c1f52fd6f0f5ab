//! Payload traits the generator implements, and the errors of checking a payload.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::upcast::UpcastError;

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

    /// Decodes and checks a JSON value, as building a message does, in this order: object
    /// shape, unknown keys ([`PayloadError::UnknownParams`]; commands only, events ignore
    /// fields they do not declare), missing required keys
    /// ([`PayloadError::MissingParams`], all of them, in declaration order), wrong types and
    /// rule violations together ([`PayloadError::InvalidParams`]), then the custom
    /// validation ([`PayloadError::Invalid`]).
    fn from_json(value: Value) -> Result<Self, PayloadError>;

    /// Decodes a JSON value read from history or a bus, of this payload's current version:
    /// the shape is checked as by [`Payload::from_json`], the rules and the custom
    /// validation are not (they were checked when the message was built, and a rule
    /// tightened since must not make it unreadable). Generated events implement it; the
    /// default is [`Payload::from_json`] (commands stay strict).
    fn decode_json(value: Value) -> Result<Self, PayloadError> {
        Self::from_json(value)
    }

    /// Rewrites data written at schema version `from` (older than [`Payload::VERSION`]) to
    /// the current version, one step at a time (the schema's `upcast` section). The
    /// default knows no step.
    fn upcast(data: Value, from: u32) -> Result<Value, UpcastError> {
        let _ = data;
        Err(UpcastError::no_step(from, Self::VERSION))
    }

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
    /// Event data of an older schema version could not be upcast to the reader's.
    #[error("cannot upcast {event_type} from version {from} to {to}: {reason}")]
    Upcast {
        /// The event type.
        event_type: &'static str,
        /// The version the data was written at.
        from: u32,
        /// The reader's version.
        to: u32,
        /// What went wrong.
        reason: String,
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
    /// `invalid_params`, `wrong_type`, `encoding`, `upcast`, or the custom validation's own code.
    pub fn code(&self) -> &str {
        match self {
            Self::NotAnObject { .. } => "not_an_object",
            Self::UnknownParams(_) => "unknown_params",
            Self::MissingParams(_) => "missing_params",
            Self::InvalidParams(_) => "invalid_params",
            Self::Invalid(e) => e.code(),
            Self::WrongType { .. } => "wrong_type",
            Self::Encoding(_) => "encoding",
            Self::Upcast { .. } => "upcast",
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
