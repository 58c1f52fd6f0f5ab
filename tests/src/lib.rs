//! The golden output of `orkestra-gen` for `schemas/` (and the fixtures below), compiled
//! as a library with `missing_docs` denied (and, in CI, clippy `-D warnings`): the golden
//! must compile. build.rs takes the code out of the insta snapshots in
//! `orkestra-gen/tests/snapshots/golden__*.snap`.
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/shop.rs"));

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
    include!(concat!(env!("OUT_DIR"), "/nasty.rs"));
}

/// Generated from `orkestra-gen/tests/golden/wiring/wiring.yaml`: a namespace wired all
/// at once through `Handlers`, with a dead-letter binding.
pub mod wiring {
    include!(concat!(env!("OUT_DIR"), "/wiring.rs"));
}

/// Generated from `orkestra-gen/tests/golden/formats/formats.yaml`: every type, format and
/// rule, for the JSON Schema agreement test.
pub mod every_rule {
    include!(concat!(env!("OUT_DIR"), "/formats.rs"));
}
