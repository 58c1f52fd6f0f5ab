//! The Orkestra guide (`book/src`), compiled: every chapter is included below as the docs
//! of an empty module, so `cargo test -p orkestra-guide --doc` compiles (and, unless a
//! block is `no_run`, runs) each of its Rust snippets against the code generated from
//! `schemas/` (this crate's `orders`, `accounts`, `ledger`, `fulfil` and `customers` modules). The
//! getting-started chapter shows the files of the crate `book/getting-started` (what
//! `orkestra-gen new my-shop` writes), which the workspace builds and tests itself.
//!
//! Snippets name the generated modules with hidden lines (`# use orkestra_guide::orders;`),
//! which mdBook hides as rustdoc does.

include!(concat!(env!("OUT_DIR"), "/guide.rs"));

/// `validate: custom` on `CreateAccount` (the commands chapter shows this impl).
impl orkestra_runtime::Validate for accounts::commands::CreateAccount {
    fn validate(&self) -> Result<(), orkestra_runtime::ValidationError> {
        if self.email.contains('@') {
            Ok(())
        } else {
            Err(orkestra_runtime::ValidationError::new("invalid_email").with_field("email"))
        }
    }
}

/// `upcast: { 1: custom }` on `AccountCreated` (the evolution chapter shows this impl):
/// version 1 kept the e-mail address under `mail`.
impl accounts::events::AccountCreatedUpcast for accounts::events::AccountCreated {
    fn upcast_v1(
        mut data: serde_json::Value,
    ) -> Result<serde_json::Value, orkestra_runtime::UpcastError> {
        let object = data
            .as_object_mut()
            .ok_or_else(|| orkestra_runtime::UpcastError::new("not an object"))?;
        if let Some(mail) = object.remove("mail") {
            object.insert("email".into(), mail);
        }
        Ok(data)
    }
}

macro_rules! chapters {
    ($($module:ident = $file:literal,)*) => {
        $(
            #[cfg(doctest)]
            #[doc = include_str!(concat!(env!("OUT_DIR"), "/book/", $file))]
            mod $module {}
        )*
        /// Every chapter file this crate compiles, in `SUMMARY.md` order.
        pub const CHAPTERS: &[&str] = &[$($file),*];
    };
}

chapters! {
    introduction = "introduction.md",
    getting_started = "getting-started.md",
    own_crate = "own-crate.md",
    editor_support = "editor-support.md",
    schema_reference = "schema-reference.md",
    configuration = "configuration.md",
    commands_events_handlers = "commands-events-handlers.md",
    aggregates = "aggregates.md",
    projections = "projections.md",
    process_managers = "process-managers.md",
    decisions = "decisions.md",
    decisions_store = "decisions-store.md",
    personal_data = "personal-data.md",
    evolution = "evolution.md",
    rabbitmq = "rabbitmq.md",
    several_copies = "several-copies.md",
    operations = "operations.md",
    exports = "exports.md",
    from_elixir = "from-elixir.md",
    contributing = "contributing.md",
}
