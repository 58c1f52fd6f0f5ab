//! [`Command`]: a typed payload with an id and metadata.

use std::ops::Deref;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::metadata::{Metadata, new_id};
use super::payload::{CommandPayload, PayloadError};

/// A command: a typed payload `P` (its params) with an id and metadata.
///
/// Dereferences to `P`, so `cmd.quantity` reads a param directly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "P: Serialize", deserialize = "P: Deserialize<'de>"))]
pub struct Command<P> {
    /// The command id (a UUID).
    pub id: String,
    /// The params.
    pub params: P,
    /// Context of the command.
    pub metadata: Metadata,
}

impl<P: CommandPayload> Command<P> {
    /// Builds a command from typed params, checking the schema rules and the custom
    /// validation exactly as [`Command::from_json`] does.
    pub fn new(params: P, metadata: Metadata) -> Result<Self, PayloadError> {
        params.check()?;
        Ok(Self::unchecked(params, metadata))
    }

    /// Builds a command from JSON params, checking in the documented order: object shape,
    /// unknown params, missing required params, wrong types and rule violations, then
    /// the custom validation.
    pub fn from_json(params: Value, metadata: Metadata) -> Result<Self, PayloadError> {
        Ok(Self::unchecked(P::from_json(params)?, metadata))
    }

    /// Wraps params without checking them (for values that were checked already, such as
    /// a decoded message whose producer checked it).
    pub fn unchecked(params: P, metadata: Metadata) -> Self {
        Self {
            id: new_id(),
            params,
            metadata,
        }
    }

    /// The topic this command is dispatched on.
    pub fn topic(&self) -> &'static str {
        P::TOPIC
    }
}

impl<P> Deref for Command<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.params
    }
}
