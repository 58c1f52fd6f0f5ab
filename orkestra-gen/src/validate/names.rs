//! Names: valid identifiers, unique per namespace and after case conversion, handler
//! names unique across namespaces, one topic per command and event.

use std::collections::{BTreeMap, HashMap};

use heck::ToSnakeCase;

use super::{Decl, Validator};
use crate::diagnostic::{Diagnostic, Span};
use crate::model::Module;
use crate::names;

/// Where a name was first declared, for "first defined at" messages.
struct FirstSeen {
    /// The name as written (or, for handler names, the namespace declaring it).
    name: String,
    span: Span,
}

impl Validator {
    /// Merges the declarations of one namespace split over several files; two namespaces
    /// that map to the same Rust module are an error.
    pub(super) fn merge_namespaces(&mut self, decls: Vec<Decl>) -> Vec<Decl> {
        let mut merged: BTreeMap<String, Decl> = BTreeMap::new();
        for decl in decls {
            match merged.get_mut(&decl.ident) {
                Some(existing) if existing.namespace == decl.namespace => {
                    existing.description = existing.description.take().or(decl.description);
                    existing.types.extend(decl.types);
                    existing.commands.extend(decl.commands);
                    existing.events.extend(decl.events);
                    existing.handlers.extend(decl.handlers);
                    existing.aggregates.extend(decl.aggregates);
                    existing.projections.extend(decl.projections);
                    existing.process_managers.extend(decl.process_managers);
                    existing.decisions.extend(decl.decisions);
                }
                Some(existing) => {
                    let ns = existing.namespace.clone();
                    self.error(
                        &decl.span,
                        format!(
                            "namespace `{}` maps to Rust module `{}`, like `{ns}`; rename one",
                            decl.namespace, decl.ident
                        ),
                    );
                }
                None => {
                    merged.insert(decl.ident.clone(), decl);
                }
            }
        }
        merged.into_values().collect()
    }

    /// Names: valid identifiers, unique per module, no collisions after case conversion,
    /// handler names unique across modules.
    pub(super) fn check_names(&mut self, decls: &[Decl]) {
        let mut handler_names: HashMap<String, FirstSeen> = HashMap::new();
        for decl in decls {
            let mut seen: HashMap<String, FirstSeen> = HashMap::new();
            let all = decl
                .types
                .iter()
                .chain(&decl.commands)
                .chain(&decl.events)
                .chain(&decl.handlers);
            for (key, _) in all {
                if !names::is_identifier(&key.name) {
                    self.error(
                        &key.span,
                        format!(
                            "`{}` is not a valid name: use letters, digits and `_`, starting with a letter",
                            key.name
                        ),
                    );
                    continue;
                }
                if key.name == "Self" || key.name == "Other" {
                    self.error(
                        &key.span,
                        format!("`{}` is reserved; choose another name", key.name),
                    );
                    continue;
                }
                let folded = key.name.to_snake_case();
                match seen.get(&folded) {
                    Some(FirstSeen { name: first, span }) if *first == key.name => {
                        let message = format!(
                            "`{}` is defined twice in namespace `{}` (first at {}:{})",
                            key.name,
                            decl.namespace,
                            span.file.display(),
                            span.line
                        );
                        self.error(&key.span, message);
                    }
                    Some(FirstSeen { name: first, span }) => {
                        let message = format!(
                            "`{}` collides with `{first}` (at {}:{}): both become `{folded}` in Rust and in topics",
                            key.name,
                            span.file.display(),
                            span.line
                        );
                        self.error(&key.span, message);
                    }
                    None => {
                        seen.insert(
                            folded,
                            FirstSeen {
                                name: key.name.clone(),
                                span: key.span.clone(),
                            },
                        );
                    }
                }
            }
            for (key, _) in &decl.handlers {
                if names::pascal(&key.name) == "Handlers" {
                    self.error(
                        &key.span,
                        format!(
                            "`{}` is reserved for the generated struct that wires every binding; choose another name",
                            key.name
                        ),
                    );
                }
                let folded = key.name.to_snake_case();
                if let Some(FirstSeen {
                    name: first_ns,
                    span,
                }) = handler_names.get(&folded)
                {
                    if *first_ns != decl.namespace {
                        let message = format!(
                            "handler `{}` is also defined in namespace `{first_ns}` (at {}:{}); handler names identify queues and must be unique",
                            key.name,
                            span.file.display(),
                            span.line
                        );
                        self.error(&key.span, message);
                    }
                } else {
                    handler_names.insert(
                        folded,
                        FirstSeen {
                            name: decl.namespace.clone(),
                            span: key.span.clone(),
                        },
                    );
                }
            }
        }
    }

    pub(super) fn check_topics(&mut self, modules: &[Module]) {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for m in modules {
            for p in m.commands.iter().chain(&m.events) {
                if let Some(first) = seen.get(p.topic.as_str()) {
                    if first.to_snake_case() == p.type_name.to_snake_case() {
                        continue; // already reported as a name collision
                    }
                    let message = format!(
                        "`{}` and `{first}` share the topic `{}`; every command and event needs its own",
                        p.type_name, p.topic
                    );
                    self.diags.push(Diagnostic::error(&p.span, message));
                } else {
                    seen.insert(&p.topic, &p.type_name);
                }
            }
        }
    }
}
