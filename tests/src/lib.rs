//! The golden output of `orkestra-gen` for `schemas/`, compiled as a library with
//! `missing_docs` denied (and, in CI, clippy `-D warnings`): the golden must compile.
#![deny(missing_docs)]

include!("../../orkestra-gen/tests/golden/shop.rs");

impl orkestra_runtime::Validate for accounts::commands::CreateAccount {
    fn validate(&self) -> Result<(), orkestra_runtime::ValidationError> {
        if self.email.contains('@') {
            Ok(())
        } else {
            Err(orkestra_runtime::ValidationError::new("invalid_email").with_field("email"))
        }
    }
}

/// Generated from `orkestra-gen/tests/golden/nasty/nasty.yaml`: hostile descriptions,
/// defaults and patterns, and keyword field names, which must all compile.
pub mod hostile {
    include!("../../orkestra-gen/tests/golden/nasty/nasty.rs");
}
