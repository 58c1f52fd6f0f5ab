//! Validation: parsed YAML trees to the resolved [`Model`], with a located diagnostic for
//! every mistake. Nothing here panics on any input; everything is reported at once.

mod aggregates;
mod decisions;
mod fields;
mod handlers;
mod names;
mod payloads;
mod personal;
mod process_managers;
pub(crate) use process_managers::stream_prefix;
mod projections;
mod shape;
mod text_forms;
mod types;
mod upcast;

use std::collections::HashMap;
use std::path::PathBuf;

/// Every key the schema language accepts, by where it is written, and every base type:
/// the validator's own tables, for the guide's reference test (not a stable API).
#[doc(hidden)]
pub const SCHEMA_KEYS: &[(&str, &[&str])] = &[
    ("top level", shape::TOP_KEYS),
    ("type", types::TYPE_KEYS),
    ("field", fields::FIELD_KEYS),
    ("command", payloads::COMMAND_KEYS),
    ("event", payloads::EVENT_KEYS),
    ("personal data", personal::PERSONAL_DATA_KEYS),
    ("upcast step", upcast::STEP_KEYS),
    ("handler", handlers::HANDLER_KEYS),
    ("aggregate", aggregates::AGGREGATE_KEYS),
    ("projection", projections::PROJECTION_KEYS),
    ("process manager", process_managers::PROCESS_KEYS),
    ("timeout", process_managers::TIMEOUT_KEYS),
    ("decision", decisions::DECISION_KEYS),
    ("read item", decisions::READ_KEYS),
];

/// The base types a field's `type` may name (besides `list<T>`, `map<T>` and named types).
#[doc(hidden)]
pub const BASE_TYPES: &[&str] = types::BASE_TYPES;

use crate::diagnostic::{Diagnostic, Diagnostics, Span};
use crate::model::*;
use crate::yaml::{self, Key, Node};

/// One schema file's text.
#[derive(Clone, Debug)]
pub struct Source {
    /// Its path, as diagnostics print it.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// A file's declarations, before resolution.
struct Decl {
    /// Where its `namespace` value is.
    span: Span,
    namespace: String,
    qualifier: String,
    ident: String,
    description: Option<String>,
    types: Vec<(Key, Node)>,
    commands: Vec<(Key, Node)>,
    events: Vec<(Key, Node)>,
    handlers: Vec<(Key, Node)>,
    aggregates: Vec<(Key, Node)>,
    projections: Vec<(Key, Node)>,
    process_managers: Vec<(Key, Node)>,
    decisions: Vec<(Key, Node)>,
}

/// A declared command or event, for resolving references.
#[derive(Clone)]
struct Declared {
    module: String,
    qualifier: String,
    name: String,
    topic: String,
}

/// A name as the schemas write it across namespaces: `Qualifier.Name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QualifiedName {
    /// The namespace without the app prefix (`Orders`).
    qualifier: String,
    /// The name inside it.
    name: String,
}

/// Every named type of every namespace, for resolving type expressions.
type TypeTable = HashMap<QualifiedName, TypeRef>;

/// Every command and event of every namespace, for resolving handler references.
struct PayloadTables {
    commands: Vec<Declared>,
    events: Vec<Declared>,
}

/// Validates the sources and builds the model. The model is `None` when any error was found.
pub fn build(sources: &[Source], app_prefix: &str) -> (Option<Model>, Diagnostics) {
    let mut v = Validator {
        diags: Diagnostics::default(),
        app_prefix: app_prefix.to_owned(),
        personal_spans: HashMap::new(),
    };
    let model = v.run(sources);
    v.diags.sort();
    let model = if v.diags.has_errors() {
        None
    } else {
        Some(model)
    };
    (model, v.diags)
}

struct Validator {
    diags: Diagnostics,
    app_prefix: String,
    /// Where each `personal_data` is written, by `personal::subject_key`: checked once
    /// every type is resolved.
    personal_spans: HashMap<String, Span>,
}

impl Validator {
    fn error(&mut self, span: &Span, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(span, message));
    }

    /// The pipeline: parse every file, merge namespaces, check names, build the lookup
    /// tables, resolve each namespace, then the handler bindings (which see every event).
    fn run(&mut self, sources: &[Source]) -> Model {
        let decls = self.parse_files(sources);
        let decls = self.merge_namespaces(decls);
        self.check_names(&decls);
        let types = self.type_table(&decls);
        let tables = self.payload_tables(&decls);
        let mut modules: Vec<Module> = decls.iter().map(|decl| self.module(decl, &types)).collect();
        self.check_topics(&modules);
        self.check_recursive_types(&modules);
        let mut handled_commands = HashMap::new();
        // Aggregates first: a binding of a command an aggregate handles is the mistake
        // reported, at the binding.
        let mut aggregate_names = HashMap::new();
        for (i, decl) in decls.iter().enumerate() {
            for (key, node) in &decl.aggregates {
                if let Some(a) = self.aggregate(
                    decl,
                    key,
                    node,
                    &types,
                    &tables,
                    &modules,
                    &mut handled_commands,
                    &mut aggregate_names,
                ) {
                    modules[i].aggregates.push(a);
                }
            }
        }
        // Decisions next: they claim their commands as aggregates do.
        let mut decision_names = HashMap::new();
        for (i, decl) in decls.iter().enumerate() {
            for (key, node) in &decl.decisions {
                if let Some(d) = self.decision(
                    decl,
                    key,
                    node,
                    &types,
                    &tables,
                    &modules,
                    &mut handled_commands,
                    &mut decision_names,
                ) {
                    modules[i].decisions.push(d);
                }
            }
        }
        for (decl, module) in decls.iter().zip(&mut modules) {
            for (key, node) in &decl.handlers {
                if let Some(h) = self.handler(decl, key, node, &tables, &mut handled_commands) {
                    module.handlers.push(h);
                }
            }
        }
        let mut projection_names = projections::ProjectionNames::default();
        for (decl, module) in decls.iter().zip(&mut modules) {
            for (key, node) in &decl.projections {
                if let Some(p) = self.projection(decl, key, node, &tables, &mut projection_names) {
                    module.projections.push(p);
                }
            }
        }
        let mut process_names = process_managers::ProcessNames::default();
        for i in 0..decls.len() {
            for (key, node) in &decls[i].process_managers {
                if let Some(p) = self.process_manager(
                    &decls[i],
                    key,
                    node,
                    &types,
                    &tables,
                    &modules,
                    &mut process_names,
                ) {
                    modules[i].process_managers.push(p);
                }
            }
        }
        self.check_partition_keys(&modules);
        self.check_personal_data(&modules);
        Model {
            app_prefix: self.app_prefix.clone(),
            files: sources.iter().map(|s| s.path.clone()).collect(),
            modules,
        }
    }

    /// Parses each file and reads its top level; a file that cannot be read is skipped
    /// (its diagnostics are recorded).
    fn parse_files(&mut self, sources: &[Source]) -> Vec<Decl> {
        let mut decls = Vec::new();
        for source in sources {
            match yaml::parse(&source.text, &source.path) {
                Ok(root) => {
                    if let Some(decl) = self.file(&root, source) {
                        decls.push(decl);
                    }
                }
                Err(d) => self.diags.push(*d),
            }
        }
        decls
    }

    /// The types, commands and events of one namespace, resolved.
    fn module(&mut self, decl: &Decl, types: &TypeTable) -> Module {
        let mut module = Module {
            namespace: decl.namespace.clone(),
            qualifier: decl.qualifier.clone(),
            ident: decl.ident.clone(),
            description: decl.description.clone(),
            ..Module::default()
        };
        for (key, node) in &decl.types {
            if let Some(t) = self.type_def(decl, key, node, types) {
                module.types.push(t);
            }
        }
        for (key, node) in &decl.commands {
            if let Some(p) = self.payload(decl, key, node, PayloadKind::Command, types) {
                module.commands.push(p);
            }
        }
        for (key, node) in &decl.events {
            if let Some(p) = self.payload(decl, key, node, PayloadKind::Event, types) {
                module.events.push(p);
            }
        }
        module
    }
}
