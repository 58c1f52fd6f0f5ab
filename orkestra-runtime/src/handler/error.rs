//! [`HandlerError`]: what a handler returns when it does not succeed.

use std::fmt;

use crate::message::PayloadError;

/// Why a handler did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A business refusal ("book already lent"): the handler's answer, not a fault.
    /// Never retried and never dead-lettered; the caller of `Bus::call` gets
    /// `Rejected` with the reason, and the bus logs it at info.
    #[error("rejected: {0}")]
    Reject(String),
    /// A failure that may pass (a timeout, a busy resource): retried up to the limit, then
    /// dead-lettered.
    #[error("failed: {0}")]
    Fail(String),
}

impl HandlerError {
    /// A rejection with a reason.
    #[cold]
    pub fn reject(reason: impl fmt::Display) -> Self {
        Self::Reject(reason.to_string())
    }

    /// A retryable failure with a reason.
    #[cold]
    pub fn fail(reason: impl fmt::Display) -> Self {
        Self::Fail(reason.to_string())
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        match self {
            Self::Reject(r) | Self::Fail(r) => r,
        }
    }

    /// Whether the bus may retry it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Fail(_))
    }
}

/// Invalid data will not become valid on a retry: a payload error rejects.
impl From<PayloadError> for HandlerError {
    fn from(e: PayloadError) -> Self {
        Self::Reject(e.to_string())
    }
}
