//! Validation: parsed YAML trees to the resolved [`Model`], with a located diagnostic for
//! every mistake. Nothing here panics on any input; everything is reported at once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use heck::ToSnakeCase;

use crate::diagnostic::{Diagnostic, Diagnostics, Span};
use crate::model::*;
use crate::names;
use crate::topic;
use crate::yaml::{self, Key, Node, Value};

/// One schema file's text.
#[derive(Clone, Debug)]
pub struct Source {
    /// Its path, as diagnostics print it.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

const TOP_KEYS: &[&str] = &[
    "namespace",
    "description",
    "types",
    "commands",
    "events",
    "handlers",
];
const FIELD_KEYS: &[&str] = &[
    "type",
    "required",
    "default",
    "description",
    "min",
    "max",
    "min_length",
    "max_length",
    "pattern",
    "format",
    "one_of",
];
const TYPE_KEYS: &[&str] = &["description", "fields", "enum"];
const COMMAND_KEYS: &[&str] = &["description", "params", "validate", "topic"];
const EVENT_KEYS: &[&str] = &["description", "fields", "version", "validate", "topic"];
const HANDLER_KEYS: &[&str] = &[
    "command",
    "event",
    "events",
    "topic",
    "max_retries",
    "emits",
    "description",
];
const BASE_TYPES: &[&str] = &[
    "string", "integer", "float", "boolean", "datetime", "date", "uuid", "decimal", "json",
];

/// A file's declarations, before resolution.
struct Decl {
    namespace: String,
    qualifier: String,
    ident: String,
    description: Option<String>,
    types: Vec<(Key, Node)>,
    commands: Vec<(Key, Node)>,
    events: Vec<(Key, Node)>,
    handlers: Vec<(Key, Node)>,
}

/// A declared command or event, for resolving references.
#[derive(Clone)]
struct Declared {
    module: String,
    qualifier: String,
    name: String,
    topic: String,
}

/// Validates the sources and builds the model. The model is `None` when any error was found.
pub fn build(sources: &[Source], app_prefix: &str) -> (Option<Model>, Diagnostics) {
    let mut v = Validator {
        diags: Diagnostics::default(),
        app_prefix: app_prefix.to_owned(),
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
}

impl Validator {
    fn error(&mut self, span: &Span, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(span, message));
    }

    fn run(&mut self, sources: &[Source]) -> Model {
        let mut decls = Vec::new();
        for source in sources {
            match yaml::parse(&source.text, &source.path) {
                Ok(root) => {
                    if let Some(decl) = self.file(&root, source) {
                        decls.push(decl);
                    }
                }
                Err(d) => self.diags.push(d),
            }
        }
        // Merge declarations of one namespace split over several files.
        let mut merged: BTreeMap<String, Decl> = BTreeMap::new();
        for decl in decls {
            match merged.get_mut(&decl.ident) {
                Some(existing) if existing.namespace == decl.namespace => {
                    existing.description = existing.description.take().or(decl.description);
                    existing.types.extend(decl.types);
                    existing.commands.extend(decl.commands);
                    existing.events.extend(decl.events);
                    existing.handlers.extend(decl.handlers);
                }
                Some(existing) => {
                    let ns = existing.namespace.clone();
                    let span = decl
                        .types
                        .first()
                        .map(|(k, _)| k.span.clone())
                        .unwrap_or_default();
                    self.error(
                        &span,
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
        let decls: Vec<Decl> = merged.into_values().collect();
        self.check_names(&decls);
        let types = self.type_table(&decls);
        let (commands, events) = self.payload_tables(&decls);
        let mut modules = Vec::new();
        for decl in &decls {
            let mut module = Module {
                namespace: decl.namespace.clone(),
                qualifier: decl.qualifier.clone(),
                ident: decl.ident.clone(),
                description: decl.description.clone(),
                ..Module::default()
            };
            for (key, node) in &decl.types {
                if let Some(t) = self.type_def(decl, key, node, &types) {
                    module.types.push(t);
                }
            }
            for (key, node) in &decl.commands {
                if let Some(p) = self.payload(decl, key, node, PayloadKind::Command, &types) {
                    module.commands.push(p);
                }
            }
            for (key, node) in &decl.events {
                if let Some(p) = self.payload(decl, key, node, PayloadKind::Event, &types) {
                    module.events.push(p);
                }
            }
            modules.push(module);
        }
        self.check_topics(&modules);
        let mut handled_commands: HashMap<(String, String), String> = HashMap::new();
        for (i, decl) in decls.iter().enumerate() {
            for (key, node) in &decl.handlers {
                if let Some(h) =
                    self.handler(decl, key, node, &commands, &events, &mut handled_commands)
                {
                    modules[i].handlers.push(h);
                }
            }
        }
        Model {
            app_prefix: self.app_prefix.clone(),
            files: sources.iter().map(|s| s.path.clone()).collect(),
            modules,
        }
    }

    /// Top level of one file.
    fn file(&mut self, root: &Node, source: &Source) -> Option<Decl> {
        let entries = match &root.value {
            Value::Map(entries) => entries,
            Value::Null => {
                let span = Span {
                    file: source.path.clone(),
                    line: 1,
                    column: 1,
                    offset: Some(0),
                };
                self.error(
                    &span,
                    "the schema file is empty; it needs at least a `namespace`",
                );
                return None;
            }
            _ => {
                self.error(
                    &root.span,
                    format!("a schema file must be a mapping, found {}", root.kind()),
                );
                return None;
            }
        };
        let map = self.keys(entries, TOP_KEYS, "at the top level");
        let Some(ns_node) = map.get("namespace") else {
            let span = Span {
                file: source.path.clone(),
                line: 1,
                column: 1,
                offset: Some(0),
            };
            self.error(
                &span,
                "missing `namespace` (for example `namespace: MyApp.Orders`)",
            );
            return None;
        };
        let namespace = self.string(ns_node, "`namespace`")?;
        let segments: Vec<&str> = namespace.split('.').collect();
        if segments.iter().any(|s| !names::is_identifier(s)) {
            self.error(
                &ns_node.span,
                format!(
                    "namespace `{namespace}` must be dot-separated identifiers, like `MyApp.Orders`"
                ),
            );
            return None;
        }
        let qualifier = topic::strip_prefix(&namespace, &self.app_prefix).to_owned();
        if qualifier.is_empty() {
            self.error(
                &ns_node.span,
                format!(
                    "namespace `{namespace}` has nothing after the app prefix `{}`",
                    self.app_prefix
                ),
            );
            return None;
        }
        let ident = names::ident(
            &qualifier
                .split('.')
                .map(|s| s.to_snake_case())
                .collect::<Vec<_>>()
                .join("_"),
        );
        let description = map
            .get("description")
            .and_then(|n| self.string(n, "`description`"));
        let mut section = |name: &str| -> Vec<(Key, Node)> {
            match map.get(name) {
                None => Vec::new(),
                Some(Node {
                    value: Value::Null, ..
                }) => Vec::new(),
                Some(Node {
                    value: Value::Map(entries),
                    ..
                }) => {
                    self.check_duplicates(entries);
                    entries.clone()
                }
                Some(other) => {
                    self.error(
                        &other.span,
                        format!(
                            "`{name}` must be a mapping of names, found {}",
                            other.kind()
                        ),
                    );
                    Vec::new()
                }
            }
        };
        let types = section("types");
        let commands = section("commands");
        let events = section("events");
        let handlers = section("handlers");
        Some(Decl {
            namespace,
            qualifier,
            ident,
            description,
            types,
            commands,
            events,
            handlers,
        })
    }

    /// Checks the keys of a mapping (unknown keys with suggestions, duplicates) and
    /// returns the first value of each known key.
    fn keys<'a>(
        &mut self,
        entries: &'a [(Key, Node)],
        allowed: &[&str],
        context: &str,
    ) -> HashMap<&'a str, &'a Node> {
        self.check_duplicates(entries);
        let mut map = HashMap::new();
        for (key, node) in entries {
            if allowed.contains(&key.name.as_str()) {
                map.entry(key.name.as_str()).or_insert(node);
            } else {
                let d =
                    Diagnostic::error(&key.span, format!("unknown key `{}` {context}", key.name))
                        .did_you_mean(&key.name, allowed.iter().copied());
                let d = if d.help.is_none() {
                    d.with_help(format!("expected one of: {}", allowed.join(", ")))
                } else {
                    d
                };
                self.diags.push(d);
            }
        }
        map
    }

    fn check_duplicates(&mut self, entries: &[(Key, Node)]) {
        let mut seen: HashMap<&str, &Span> = HashMap::new();
        for (key, _) in entries {
            if let Some(first) = seen.get(key.name.as_str()) {
                let message = format!(
                    "duplicate key `{}` (first defined at line {})",
                    key.name, first.line
                );
                self.error(&key.span, message);
            } else {
                seen.insert(&key.name, &key.span);
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.error(
                    &node.span,
                    format!("{what} must be a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn description(&mut self, map: &HashMap<&str, &Node>) -> Option<String> {
        map.get("description")
            .and_then(|n| self.string(n, "`description`"))
    }

    /// Names: valid identifiers, unique per module, no collisions after case conversion,
    /// handler names unique across modules.
    fn check_names(&mut self, decls: &[Decl]) {
        let mut handler_names: HashMap<String, (String, Span)> = HashMap::new();
        for decl in decls {
            let mut seen: HashMap<String, (String, Span)> = HashMap::new();
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
                    Some((first, span)) if *first == key.name => {
                        let message = format!(
                            "`{}` is defined twice in namespace `{}` (first at {}:{})",
                            key.name,
                            decl.namespace,
                            span.file.display(),
                            span.line
                        );
                        self.error(&key.span, message);
                    }
                    Some((first, span)) => {
                        let message = format!(
                            "`{}` collides with `{first}` (at {}:{}): both become `{folded}` in Rust and in topics",
                            key.name,
                            span.file.display(),
                            span.line
                        );
                        self.error(&key.span, message);
                    }
                    None => {
                        seen.insert(folded, (key.name.clone(), key.span.clone()));
                    }
                }
            }
            for (key, _) in &decl.handlers {
                let folded = key.name.to_snake_case();
                if let Some((first_ns, span)) = handler_names.get(&folded) {
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
                    handler_names.insert(folded, (decl.namespace.clone(), key.span.clone()));
                }
            }
        }
    }

    fn type_table(&mut self, decls: &[Decl]) -> HashMap<(String, String), TypeRef> {
        let mut table = HashMap::new();
        for decl in decls {
            for (key, node) in &decl.types {
                let variants =
                    match &node.value {
                        Value::Map(entries) => entries
                            .iter()
                            .find(|(k, _)| k.name == "enum")
                            .and_then(|(_, n)| match &n.value {
                                Value::Seq(items) => Some(
                                    items
                                        .iter()
                                        .filter_map(|i| i.as_str().map(str::to_owned))
                                        .collect(),
                                ),
                                _ => None,
                            }),
                        _ => None,
                    };
                table.insert(
                    (decl.qualifier.clone(), key.name.clone()),
                    TypeRef {
                        module: decl.ident.clone(),
                        name: key.name.clone(),
                        is_enum: variants.is_some(),
                        variants: variants.unwrap_or_default(),
                    },
                );
            }
        }
        table
    }

    #[allow(clippy::type_complexity)]
    fn payload_tables(&mut self, decls: &[Decl]) -> (Vec<Declared>, Vec<Declared>) {
        let mut commands = Vec::new();
        let mut events = Vec::new();
        for decl in decls {
            for (list, section, out) in [
                (&decl.commands, "Commands", &mut commands),
                (&decl.events, "Events", &mut events),
            ] {
                for (key, node) in list {
                    let topic = override_topic(node)
                        .unwrap_or_else(|| self.derived_topic(decl, section, &key.name));
                    out.push(Declared {
                        module: decl.ident.clone(),
                        qualifier: decl.qualifier.clone(),
                        name: key.name.clone(),
                        topic,
                    });
                }
            }
        }
        (commands, events)
    }

    /// The topic of a command or event without a `topic` override.
    fn derived_topic(&self, decl: &Decl, section: &str, name: &str) -> String {
        topic::derive(
            &format!("{}.{section}.{name}", decl.namespace),
            &self.app_prefix,
        )
    }

    fn type_def(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        types: &HashMap<(String, String), TypeRef>,
    ) -> Option<TypeDef> {
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "type `{}` must be a mapping with `fields` or `enum`",
                    key.name
                ),
            );
            return None;
        };
        let map = self.keys(entries, TYPE_KEYS, &format!("in type `{}`", key.name));
        let description = self.description(&map);
        match (map.get("fields"), map.get("enum")) {
            (Some(fields), None) => {
                let fields = self.fields(decl, fields, types, &format!("type `{}`", key.name))?;
                Some(TypeDef {
                    name: key.name.clone(),
                    description,
                    kind: TypeKind::Struct(fields),
                })
            }
            (None, Some(values)) => {
                let Value::Seq(items) = &values.value else {
                    self.error(
                        &values.span,
                        format!("`enum` of type `{}` must be a list of strings", key.name),
                    );
                    return None;
                };
                let mut variants = Vec::new();
                let mut seen: HashMap<String, String> = HashMap::new();
                for item in items {
                    let Some(s) = item.as_str() else {
                        self.error(
                            &item.span,
                            format!("enum values must be strings, found {}", item.kind()),
                        );
                        continue;
                    };
                    let variant = names::pascal(s);
                    if s.is_empty() || !s.chars().next().is_some_and(char::is_alphabetic) {
                        self.error(
                            &item.span,
                            format!("enum value `{s}` must start with a letter"),
                        );
                    } else if let Some(first) = seen.get(&variant) {
                        self.error(&item.span, format!("enum value `{s}` collides with `{first}`: both become variant `{variant}`"));
                    } else {
                        seen.insert(variant, s.to_owned());
                        variants.push(s.to_owned());
                    }
                }
                if items.is_empty() {
                    self.error(
                        &values.span,
                        format!("`enum` of type `{}` needs at least one value", key.name),
                    );
                }
                Some(TypeDef {
                    name: key.name.clone(),
                    description,
                    kind: TypeKind::Enum(variants),
                })
            }
            (Some(_), Some(_)) => {
                self.error(
                    &key.span,
                    format!(
                        "type `{}` has both `fields` and `enum`; it must be one or the other",
                        key.name
                    ),
                );
                None
            }
            (None, None) => {
                self.error(
                    &key.span,
                    format!(
                        "type `{}` needs `fields` (a struct) or `enum` (a list of values)",
                        key.name
                    ),
                );
                None
            }
        }
    }

    fn payload(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        kind: PayloadKind,
        types: &HashMap<(String, String), TypeRef>,
    ) -> Option<Payload> {
        let (what, allowed, fields_key, section) = match kind {
            PayloadKind::Command => ("command", COMMAND_KEYS, "params", "Commands"),
            PayloadKind::Event => ("event", EVENT_KEYS, "fields", "Events"),
        };
        let empty = Vec::new();
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &empty,
            _ => {
                self.error(
                    &node.span,
                    format!(
                        "{what} `{}` must be a mapping, found {}",
                        key.name,
                        node.kind()
                    ),
                );
                return None;
            }
        };
        let map = self.keys(entries, allowed, &format!("in {what} `{}`", key.name));
        let description = self.description(&map);
        let fields = match map.get(fields_key) {
            Some(f) => self.fields(decl, f, types, &format!("{what} `{}`", key.name))?,
            None => Vec::new(),
        };
        let custom_validate = match map.get("validate") {
            None => false,
            Some(n) if n.as_str() == Some("custom") => true,
            Some(n) => {
                self.error(&n.span, "`validate` takes one value, `custom` (you implement `orkestra_runtime::Validate`)");
                false
            }
        };
        let version = match map.get("version") {
            None => 1,
            Some(n) => match n.value {
                Value::Int(v) if (1..=i64::from(u32::MAX)).contains(&v) => v as u32,
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`version` must be a positive integer, found {}",
                            describe(n)
                        ),
                    );
                    1
                }
            },
        };
        let topic = match map.get("topic") {
            Some(n) => {
                let t = self.string(n, "`topic`")?;
                if t.is_empty() || t.contains(char::is_whitespace) || topic::is_pattern(&t) {
                    self.error(
                        &n.span,
                        format!("topic `{t}` must be a non-empty name without spaces or wildcards"),
                    );
                    return None;
                }
                t
            }
            None => self.derived_topic(decl, section, &key.name),
        };
        Some(Payload {
            kind,
            name: key.name.clone(),
            description,
            fields,
            topic,
            type_name: format!("{}.{}", decl.namespace, key.name),
            version,
            custom_validate,
            span: key.span.clone(),
        })
    }

    fn fields(
        &mut self,
        decl: &Decl,
        node: &Node,
        types: &HashMap<(String, String), TypeRef>,
        owner: &str,
    ) -> Option<Vec<Field>> {
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => return Some(Vec::new()),
            _ => {
                self.error(
                    &node.span,
                    format!(
                        "the fields of {owner} must be a mapping, found {}",
                        node.kind()
                    ),
                );
                return None;
            }
        };
        self.check_duplicates(entries);
        let mut fields = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut ok = true;
        for (key, spec) in entries {
            if !names::is_identifier(&key.name) {
                self.error(&key.span, format!("`{}` is not a valid field name: use letters, digits and `_`, starting with a letter", key.name));
                ok = false;
                continue;
            }
            let rust = names::snake(&key.name);
            if let Some(first) = seen.get(&rust) {
                if *first != key.name {
                    self.error(
                        &key.span,
                        format!(
                            "field `{}` collides with `{first}` in {owner}: both become `{rust}`",
                            key.name
                        ),
                    );
                }
                ok = false;
                continue;
            }
            seen.insert(rust, key.name.clone());
            match self.field(decl, key, spec, types) {
                Some(f) => fields.push(f),
                None => ok = false,
            }
        }
        ok.then_some(fields)
    }

    fn field(
        &mut self,
        decl: &Decl,
        key: &Key,
        spec: &Node,
        types: &HashMap<(String, String), TypeRef>,
    ) -> Option<Field> {
        // `quantity: integer` is shorthand for `quantity: { type: integer }`.
        if let Value::Str(ty) = &spec.value {
            let ty = self.ty(decl, ty, &spec.span, types)?;
            return Some(Field {
                name: key.name.clone(),
                description: None,
                ty,
                required: false,
                default: None,
                rules: Rules::default(),
            });
        }
        let Value::Map(entries) = &spec.value else {
            self.error(
                &spec.span,
                format!(
                    "field `{}` must be a type name or a mapping, found {}",
                    key.name,
                    spec.kind()
                ),
            );
            return None;
        };
        let map = self.keys(entries, FIELD_KEYS, &format!("in field `{}`", key.name));
        let Some(ty_node) = map.get("type") else {
            self.error(&key.span, format!("field `{}` has no `type`", key.name));
            return None;
        };
        let ty_text = self.string(ty_node, "`type`")?;
        let ty = self.ty(decl, &ty_text, &ty_node.span, types)?;
        let description = self.description(&map);
        let required = match map.get("required") {
            None => false,
            Some(Node {
                value: Value::Bool(b),
                ..
            }) => *b,
            Some(n) => {
                self.error(
                    &n.span,
                    format!("`required` must be true or false, found {}", describe(n)),
                );
                false
            }
        };
        let rules = self.rules(&key.name, &ty, &map)?;
        let default = match map.get("default") {
            None => None,
            Some(n) => {
                if required {
                    self.error(
                        &n.span,
                        format!(
                            "field `{}` is required, so its `default` would never be used",
                            key.name
                        ),
                    );
                    return None;
                }
                match literal(n, &ty) {
                    Ok(lit) => {
                        if let Some(problem) = breaks_rules(&lit, &rules) {
                            self.error(
                                &n.span,
                                format!(
                                    "the default of `{}` breaks its own rule: {problem}",
                                    key.name
                                ),
                            );
                            return None;
                        }
                        Some(lit)
                    }
                    Err(message) => {
                        self.error(&n.span, format!("the default of `{}` {message}", key.name));
                        return None;
                    }
                }
            }
        };
        Some(Field {
            name: key.name.clone(),
            description,
            ty,
            required,
            default,
            rules,
        })
    }

    fn ty(
        &mut self,
        decl: &Decl,
        text: &str,
        span: &Span,
        types: &HashMap<(String, String), TypeRef>,
    ) -> Option<Ty> {
        let text = text.trim();
        for (prefix, wrap) in [
            ("list<", Ty::List as fn(Box<Ty>) -> Ty),
            ("map<", Ty::Map as fn(Box<Ty>) -> Ty),
        ] {
            if let Some(inner) = text.strip_prefix(prefix) {
                let Some(inner) = inner.strip_suffix('>') else {
                    self.error(span, format!("type `{text}` is missing its closing `>`"));
                    return None;
                };
                return self.ty(decl, inner, span, types).map(|t| wrap(Box::new(t)));
            }
        }
        let base = match text {
            "string" => Ty::String,
            "integer" => Ty::Integer,
            "float" => Ty::Float,
            "boolean" => Ty::Boolean,
            "datetime" => Ty::DateTime,
            "date" => Ty::Date,
            "uuid" => Ty::Uuid,
            "decimal" => Ty::Decimal,
            "json" => Ty::Json,
            named => {
                let (qualifier, name) = match named.rsplit_once('.') {
                    Some((q, n)) => (q.to_owned(), n),
                    None => (decl.qualifier.clone(), named),
                };
                if let Some(t) = types.get(&(qualifier, name.to_owned())) {
                    return Some(Ty::Named(t.clone()));
                }
                let mut candidates: Vec<String> =
                    BASE_TYPES.iter().map(|s| (*s).to_owned()).collect();
                for (q, n) in types.keys() {
                    candidates.push(if *q == decl.qualifier {
                        n.clone()
                    } else {
                        format!("{q}.{n}")
                    });
                }
                let d = Diagnostic::error(span, format!("unknown type `{named}`"))
                    .did_you_mean(named, candidates.iter().map(String::as_str));
                self.diags.push(d);
                return None;
            }
        };
        Some(base)
    }

    fn rules(&mut self, field: &str, ty: &Ty, map: &HashMap<&str, &Node>) -> Option<Rules> {
        let mut rules = Rules::default();
        let mut ok = true;
        let numeric = matches!(ty, Ty::Integer | Ty::Float);
        let sized = matches!(ty, Ty::String | Ty::List(_) | Ty::Map(_));
        let textual = *ty == Ty::String;
        let type_name = ty_name(ty);
        let not_for = |this: &mut Self, n: &Node, rule: &str, what: &str| {
            this.error(
                &n.span,
                format!("`{rule}` applies to {what}, but `{field}` is {type_name}"),
            );
        };
        for bound in ["min", "max"] {
            if let Some(n) = map.get(bound) {
                if !numeric {
                    not_for(self, n, bound, "integers and floats");
                    ok = false;
                    continue;
                }
                match (&n.value, ty) {
                    (Value::Int(i), _) => {
                        let lit = if *ty == Ty::Float {
                            Literal::Float(*i as f64)
                        } else {
                            Literal::Int(*i)
                        };
                        if bound == "min" {
                            rules.min = Some(lit)
                        } else {
                            rules.max = Some(lit)
                        }
                    }
                    (Value::Float(f), Ty::Float) if f.is_finite() => {
                        if bound == "min" {
                            rules.min = Some(Literal::Float(*f))
                        } else {
                            rules.max = Some(Literal::Float(*f))
                        }
                    }
                    _ => {
                        self.error(
                            &n.span,
                            format!(
                                "`{bound}` of `{field}` must be {}, found {}",
                                if *ty == Ty::Integer {
                                    "an integer"
                                } else {
                                    "a number"
                                },
                                describe(n)
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        for bound in ["min_length", "max_length"] {
            if let Some(n) = map.get(bound) {
                if !sized {
                    not_for(self, n, bound, "strings, lists and maps");
                    ok = false;
                    continue;
                }
                match n.value {
                    Value::Int(i) if i >= 0 => {
                        if bound == "min_length" {
                            rules.min_length = Some(i as u64)
                        } else {
                            rules.max_length = Some(i as u64)
                        }
                    }
                    _ => {
                        self.error(
                            &n.span,
                            format!(
                                "`{bound}` of `{field}` must be a non-negative integer, found {}",
                                describe(n)
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        if let (Some(Literal::Int(a)), Some(Literal::Int(b))) = (&rules.min, &rules.max)
            && a > b
        {
            self.error(
                &map["max"].span,
                format!("`max` ({b}) of `{field}` is below its `min` ({a})"),
            );
            ok = false;
        }
        if let (Some(a), Some(b)) = (rules.min_length, rules.max_length)
            && a > b
        {
            self.error(
                &map["max_length"].span,
                format!("`max_length` ({b}) of `{field}` is below its `min_length` ({a})"),
            );
            ok = false;
        }
        if let Some(n) = map.get("pattern") {
            if !textual {
                not_for(self, n, "pattern", "strings");
                ok = false;
            } else if let Some(p) = self.string(n, "`pattern`") {
                match regex::Regex::new(&p) {
                    Ok(_) => rules.pattern = Some(p),
                    Err(e) => {
                        let text = e.to_string();
                        let last = text.lines().last().unwrap_or("").trim();
                        let reason = last
                            .strip_prefix("error:")
                            .unwrap_or(last)
                            .trim()
                            .to_owned();
                        self.error(
                            &n.span,
                            format!(
                                "`pattern` of `{field}` is not a valid regular expression: {reason}"
                            ),
                        );
                        ok = false;
                    }
                }
            } else {
                ok = false;
            }
        }
        if let Some(n) = map.get("format") {
            if !textual {
                not_for(self, n, "format", "strings");
                ok = false;
            } else {
                match n.as_str() {
                    Some("email") => rules.format = Some(Format::Email),
                    Some("uuid") => rules.format = Some(Format::Uuid),
                    Some("url") => rules.format = Some(Format::Url),
                    other => {
                        let d = Diagnostic::error(
                            &n.span,
                            format!(
                                "unknown format `{}` for `{field}`; expected email, uuid or url",
                                other.unwrap_or("?")
                            ),
                        )
                        .did_you_mean(other.unwrap_or(""), ["email", "uuid", "url"]);
                        self.diags.push(d);
                        ok = false;
                    }
                }
            }
        }
        if let Some(n) = map.get("one_of") {
            if !matches!(ty, Ty::String | Ty::Integer | Ty::Float) {
                not_for(self, n, "one_of", "strings, integers and floats");
                ok = false;
            } else {
                match &n.value {
                    Value::Seq(items) if !items.is_empty() => {
                        let mut values = Vec::new();
                        for item in items {
                            match literal(item, ty) {
                                Ok(l) => values.push(l),
                                Err(m) => {
                                    self.error(
                                        &item.span,
                                        format!("a `one_of` value of `{field}` {m}"),
                                    );
                                    ok = false;
                                }
                            }
                        }
                        rules.one_of = Some(values);
                    }
                    _ => {
                        self.error(
                            &n.span,
                            format!("`one_of` of `{field}` must be a non-empty list"),
                        );
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(rules)
    }

    fn check_topics(&mut self, modules: &[Module]) {
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

    fn handler(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        commands: &[Declared],
        events: &[Declared],
        handled_commands: &mut HashMap<(String, String), String>,
    ) -> Option<Handler> {
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "handler `{}` must be a mapping with `command`, `event`, `events` or `topic`",
                    key.name
                ),
            );
            return None;
        };
        let map = self.keys(entries, HANDLER_KEYS, &format!("in handler `{}`", key.name));
        let description = self.description(&map);
        let targets: Vec<&str> = ["command", "event", "events", "topic"]
            .into_iter()
            .filter(|t| map.contains_key(t))
            .collect();
        let target = match targets.as_slice() {
            [] => {
                self.error(&key.span, format!("handler `{}` has no target: give it one of `command`, `event`, `events` or `topic`", key.name));
                return None;
            }
            [one] => *one,
            several => {
                let list = several
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    &key.span,
                    format!(
                        "handler `{}` has several targets ({list}); give it exactly one",
                        key.name
                    ),
                );
                return None;
            }
        };
        let node = map[target];
        let target = match target {
            "command" => {
                let r = self.reference(decl, node, commands, "command")?;
                let slot = (r.module.clone(), r.name.clone());
                if let Some(first) = handled_commands.get(&slot) {
                    self.error(&node.span, format!("command `{}` already has handler `{first}`; a command has exactly one handler", r.name));
                    return None;
                }
                handled_commands.insert(slot, key.name.clone());
                HandlerTarget::Command(r)
            }
            "event" => HandlerTarget::Event(self.reference(decl, node, events, "event")?),
            "events" => {
                let Value::Seq(items) = &node.value else {
                    self.error(
                        &node.span,
                        format!(
                            "`events` of handler `{}` must be a list of event names",
                            key.name
                        ),
                    );
                    return None;
                };
                if items.is_empty() {
                    self.error(
                        &node.span,
                        format!("`events` of handler `{}` is empty", key.name),
                    );
                    return None;
                }
                let mut refs: Vec<PayloadRef> = Vec::new();
                for item in items {
                    let r = self.reference(decl, item, events, "event")?;
                    if refs.contains(&r) {
                        self.error(&item.span, format!("event `{}` is listed twice", r.name));
                        return None;
                    }
                    if refs.iter().any(|x| x.name == r.name) {
                        self.error(&item.span, format!("two events named `{}` in one handler; variants are named after events", r.name));
                        return None;
                    }
                    refs.push(r);
                }
                HandlerTarget::Events(refs)
            }
            _ => {
                let pattern = self.string(node, "`topic`")?;
                if pattern.contains(char::is_whitespace) {
                    self.error(
                        &node.span,
                        format!("topic pattern `{pattern}` must not contain spaces"),
                    );
                    return None;
                }
                let mut matched: Vec<PayloadRef> = Vec::new();
                for e in events.iter().filter(|e| topic::matches(&pattern, &e.topic)) {
                    if matched.iter().any(|m| m.name == e.name) {
                        self.error(&node.span, format!("topic pattern `{pattern}` matches two events named `{}`; variants are named after events", e.name));
                        return None;
                    }
                    matched.push(PayloadRef {
                        module: e.module.clone(),
                        name: e.name.clone(),
                    });
                }
                if matched.is_empty() {
                    let d = Diagnostic::warning(
                        &node.span,
                        format!(
                            "topic pattern `{pattern}` matches no known event; handler `{}` will only see events from other services as `Other`",
                            key.name
                        ),
                    );
                    self.diags.push(d);
                }
                HandlerTarget::Topic { pattern, matched }
            }
        };
        let max_retries = match map.get("max_retries") {
            None => None,
            Some(n) => {
                match n.value {
                    Value::Int(i) if (0..=i64::from(u32::MAX)).contains(&i) => Some(i as u32),
                    Value::Int(i) if i < 0 => {
                        self.error(&n.span, format!("`max_retries` of handler `{}` is negative ({i}); use 0 for no retries", key.name));
                        return None;
                    }
                    _ => {
                        self.error(&n.span, format!("`max_retries` of handler `{}` must be a non-negative integer, found {}", key.name, describe(n)));
                        return None;
                    }
                }
            }
        };
        let mut emits = Vec::new();
        if let Some(n) = map.get("emits") {
            let Value::Seq(items) = &n.value else {
                self.error(
                    &n.span,
                    format!(
                        "`emits` of handler `{}` must be a list of event names",
                        key.name
                    ),
                );
                return None;
            };
            for item in items {
                emits.push(self.reference(decl, item, events, "event")?);
            }
        }
        Some(Handler {
            name: key.name.clone(),
            description,
            target,
            max_retries,
            emits,
        })
    }

    /// Resolves `Name` (this namespace) or `Qualifier.Name` to a declared command or event.
    fn reference(
        &mut self,
        decl: &Decl,
        node: &Node,
        table: &[Declared],
        what: &str,
    ) -> Option<PayloadRef> {
        let text = self.string(node, &format!("a {what} name"))?;
        let (qualifier, name) = match text.rsplit_once('.') {
            Some((q, n)) => (q.to_owned(), n.to_owned()),
            None => (decl.qualifier.clone(), text.clone()),
        };
        if let Some(d) = table
            .iter()
            .find(|d| d.qualifier == qualifier && d.name == name)
        {
            return Some(PayloadRef {
                module: d.module.clone(),
                name: d.name.clone(),
            });
        }
        let candidates: Vec<String> = table
            .iter()
            .map(|d| {
                if d.qualifier == decl.qualifier {
                    d.name.clone()
                } else {
                    format!("{}.{}", d.qualifier, d.name)
                }
            })
            .collect();
        let d = Diagnostic::error(&node.span, format!("unknown {what} `{text}`"))
            .did_you_mean(&text, candidates.iter().map(String::as_str));
        self.diags.push(d);
        None
    }
}

fn override_topic(node: &Node) -> Option<String> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == "topic")
            .and_then(|(_, n)| n.as_str().map(str::to_owned)),
        _ => None,
    }
}

fn describe(n: &Node) -> String {
    match &n.value {
        Value::Str(s) => format!("the string \"{}\"", s.escape_debug()),
        Value::Int(i) => format!("{i}"),
        Value::Float(f) => format!("{f}"),
        Value::Bool(b) => format!("{b}"),
        _ => n.kind().to_owned(),
    }
}

fn ty_name(ty: &Ty) -> String {
    match ty {
        Ty::String => "a string".into(),
        Ty::Integer => "an integer".into(),
        Ty::Float => "a float".into(),
        Ty::Boolean => "a boolean".into(),
        Ty::DateTime => "a datetime".into(),
        Ty::Date => "a date".into(),
        Ty::Uuid => "a uuid".into(),
        Ty::Decimal => "a decimal".into(),
        Ty::Json => "json".into(),
        Ty::List(_) => "a list".into(),
        Ty::Map(_) => "a map".into(),
        Ty::Named(t) => format!("`{}`", t.name),
    }
}

/// Reads a default or `one_of` value as a literal of `ty`; the error finishes a sentence.
fn literal(n: &Node, ty: &Ty) -> Result<Literal, String> {
    let wrong = || Err(format!("must be {}, found {}", ty_name(ty), describe(n)));
    match (ty, &n.value) {
        (Ty::String, Value::Str(s)) => Ok(Literal::Str(s.clone())),
        (Ty::Integer, Value::Int(i)) => Ok(Literal::Int(*i)),
        (Ty::Float, Value::Int(i)) => Ok(Literal::Float(*i as f64)),
        (Ty::Float, Value::Float(f)) if f.is_finite() => Ok(Literal::Float(*f)),
        (Ty::Boolean, Value::Bool(b)) => Ok(Literal::Bool(*b)),
        (Ty::Named(t), Value::Str(s)) if t.is_enum => {
            if t.variants.contains(s) {
                Ok(Literal::Str(s.clone()))
            } else {
                Err(format!(
                    "must be one of the values of `{}` ({}), found \"{s}\"",
                    t.name,
                    t.variants.join(", ")
                ))
            }
        }
        (Ty::List(inner), Value::Seq(items)) => items
            .iter()
            .map(|i| literal(i, inner))
            .collect::<Result<_, _>>()
            .map(Literal::List),
        (Ty::Map(inner), Value::Map(entries)) => entries
            .iter()
            .map(|(k, v)| literal(v, inner).map(|l| (k.name.clone(), l)))
            .collect::<Result<_, _>>()
            .map(Literal::Map),
        (Ty::DateTime | Ty::Date | Ty::Uuid | Ty::Decimal | Ty::Json, _) => Err(format!(
            "is not supported: defaults are for strings, numbers, booleans, enums and lists or maps of those; `{}` has none",
            ty_name(ty)
        )),
        (Ty::Named(t), _) if !t.is_enum => Err(format!(
            "is not supported: a struct type (`{}`) cannot have a default",
            t.name
        )),
        _ => wrong(),
    }
}

/// The first rule a default breaks, as a phrase.
fn breaks_rules(lit: &Literal, rules: &Rules) -> Option<String> {
    let num = |l: &Literal| match l {
        Literal::Int(i) => Some(*i as f64),
        Literal::Float(f) => Some(*f),
        _ => None,
    };
    if let (Some(v), Some(min)) = (num(lit), rules.min.as_ref().and_then(num))
        && v < min
    {
        return Some(format!("it is below min {min}"));
    }
    if let (Some(v), Some(max)) = (num(lit), rules.max.as_ref().and_then(num))
        && v > max
    {
        return Some(format!("it is above max {max}"));
    }
    let len = match lit {
        Literal::Str(s) => Some(s.chars().count() as u64),
        Literal::List(l) => Some(l.len() as u64),
        Literal::Map(m) => Some(m.len() as u64),
        _ => None,
    };
    if let (Some(len), Some(min)) = (len, rules.min_length)
        && len < min
    {
        return Some(format!("its length {len} is below min_length {min}"));
    }
    if let (Some(len), Some(max)) = (len, rules.max_length)
        && len > max
    {
        return Some(format!("its length {len} is above max_length {max}"));
    }
    if let (Literal::Str(s), Some(p)) = (lit, &rules.pattern)
        && regex::Regex::new(p).is_ok_and(|re| !re.is_match(s))
    {
        return Some(format!("\"{s}\" does not match pattern `{p}`"));
    }
    if let Some(allowed) = &rules.one_of
        && !allowed.contains(lit)
    {
        return Some("it is not one of the `one_of` values".into());
    }
    None
}
