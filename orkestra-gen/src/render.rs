//! Rendering: the resolved model to Rust source through the minijinja templates in
//! `templates/`. Every identifier, type and literal is computed here (through
//! [`names`]); templates only place the strings.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Value, json};

use crate::model::*;
use crate::names::{doc_attrs, pascal, shouty, snake, str_lit};

const RT: &str = "::orkestra_runtime";
const TEMPLATE: &str = include_str!("../../templates/module.rs.j2");

/// The template environment: strict about undefined values, loaded once.
pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    /// Loads the embedded templates.
    pub fn new() -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template("module.rs.j2", TEMPLATE)
            .map_err(|e| format!("template module.rs.j2: {e:#}"))?;
        Ok(Self { env })
    }

    /// Renders one module as unformatted Rust.
    pub fn module(&self, model: &Model, module: &Module) -> Result<String, String> {
        let template = self
            .env
            .get_template("module.rs.j2")
            .map_err(|e| e.to_string())?;
        template
            .render(module_context(model, module))
            .map_err(|e| format!("template module.rs.j2: {e:#}"))
    }
}

fn docs(description: Option<&str>, fallback: &str) -> String {
    doc_attrs(description.unwrap_or(fallback))
}

fn module_context(model: &Model, module: &Module) -> Value {
    let types: Vec<Value> = module.types.iter().map(type_context).collect();
    let commands: Vec<Value> = module.commands.iter().map(payload_context).collect();
    let events: Vec<Value> = module.events.iter().map(payload_context).collect();
    let topics: Vec<Value> = module
        .commands
        .iter()
        .chain(&module.events)
        .map(|p| {
            json!({
                "doc": doc_attrs(&format!("Topic of `{}`.", p.type_name)),
                "name": shouty(&p.name),
                "value": str_lit(&p.topic),
            })
        })
        .collect();
    let handlers: Vec<Value> = module
        .handlers
        .iter()
        .map(|h| handler_context(model, h))
        .collect();
    json!({
        "ident": module.ident,
        "doc": docs(module.description.as_deref(), &format!("Namespace `{}`.", module.namespace)),
        "types": types,
        "sections": [
            {"name": "commands", "title": "Commands", "items": commands},
            {"name": "events", "title": "Events", "items": events},
        ],
        "topics": topics,
        "handlers": handlers,
        "rt": RT,
    })
}

/// The Rust type of a schema type, seen from inside `<module>::{types,commands,events}`.
fn rust_ty(ty: &Ty) -> String {
    match ty {
        Ty::String => "::std::string::String".into(),
        Ty::Integer => "i64".into(),
        Ty::Float => "f64".into(),
        Ty::Boolean => "bool".into(),
        Ty::DateTime => format!("{RT}::__private::chrono::DateTime<{RT}::__private::chrono::Utc>"),
        Ty::Date => format!("{RT}::__private::chrono::NaiveDate"),
        Ty::Uuid => format!("{RT}::__private::uuid::Uuid"),
        Ty::Decimal => format!("{RT}::Decimal"),
        Ty::Json => format!("{RT}::__private::serde_json::Value"),
        Ty::List(inner) => format!("::std::vec::Vec<{}>", rust_ty(inner)),
        Ty::Map(inner) => format!(
            "::std::collections::BTreeMap<::std::string::String, {}>",
            rust_ty(inner)
        ),
        Ty::Named(t) => format!("super::super::{}::types::{}", t.module, pascal(&t.name)),
    }
}

/// A Rust expression for a literal of `ty`.
fn literal_expr(lit: &Literal, ty: &Ty) -> String {
    match (lit, ty) {
        (Literal::Str(s), Ty::Named(t)) => {
            format!("{}::{}", rust_ty(&Ty::Named(t.clone())), pascal(s))
        }
        (Literal::Str(s), _) => format!("::std::string::String::from({})", str_lit(s)),
        (Literal::Int(i), _) => format!("{i}i64"),
        (Literal::Float(f), _) => format!("{f:?}f64"),
        (Literal::Bool(b), _) => b.to_string(),
        (Literal::List(items), Ty::List(inner)) => {
            format!(
                "::std::vec![{}]",
                items
                    .iter()
                    .map(|i| literal_expr(i, inner))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        (Literal::Map(entries), Ty::Map(inner)) => format!(
            "::std::collections::BTreeMap::from([{}])",
            entries
                .iter()
                .map(|(k, v)| format!(
                    "(::std::string::String::from({}), {})",
                    str_lit(k),
                    literal_expr(v, inner)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        // Validation only builds literals that fit their type.
        (Literal::List(_) | Literal::Map(_), _) => "::core::default::Default::default()".into(),
    }
}

/// A one_of literal as compared in a rule (strings as `&str`).
fn one_of_expr(lit: &Literal) -> String {
    match lit {
        Literal::Str(s) => str_lit(s),
        Literal::Int(i) => format!("{i}i64"),
        Literal::Float(f) => format!("{f:?}f64"),
        other => format!("{other:?}"),
    }
}

/// Rule statements for a value `v: &T` at path expression `path`.
fn rule_statements(field: &Field, path: &str) -> Vec<String> {
    let r = &field.rules;
    let mut out = Vec::new();
    let rules = format!("{RT}::rules");
    let num = |l: &Literal| match l {
        Literal::Int(i) => format!("{i}i64"),
        Literal::Float(f) => format!("{f:?}f64"),
        _ => "0".into(),
    };
    if let Some(min) = &r.min {
        out.push(format!("{rules}::min(errors, {path}, *v, {});", num(min)));
    }
    if let Some(max) = &r.max {
        out.push(format!("{rules}::max(errors, {path}, *v, {});", num(max)));
    }
    let len = if field.ty == Ty::String {
        "v.chars().count()"
    } else {
        "v.len()"
    };
    if let Some(n) = r.min_length {
        out.push(format!(
            "{rules}::min_length(errors, {path}, {len}, {n}usize);"
        ));
    }
    if let Some(n) = r.max_length {
        out.push(format!(
            "{rules}::max_length(errors, {path}, {len}, {n}usize);"
        ));
    }
    if let Some(p) = &r.pattern {
        out.push(format!(
            "{{ static PATTERN: {rules}::Pattern = {rules}::Pattern::new({}); {rules}::pattern(errors, {path}, v, &PATTERN); }}",
            str_lit(p)
        ));
    }
    match r.format {
        Some(Format::Email) => out.push(format!("{rules}::email(errors, {path}, v);")),
        Some(Format::Uuid) => out.push(format!("{rules}::uuid(errors, {path}, v);")),
        Some(Format::Url) => out.push(format!("{rules}::url(errors, {path}, v);")),
        None => {}
    }
    if let Some(values) = &r.one_of {
        let list = values
            .iter()
            .map(one_of_expr)
            .collect::<Vec<_>>()
            .join(", ");
        let value = if field.ty == Ty::String {
            "&v.as_str()"
        } else {
            "v"
        };
        out.push(format!(
            "{rules}::one_of(errors, {path}, {value}, &[{list}]);"
        ));
    }
    out.extend(nested_checks(&field.ty, "v", path));
    out
}

/// Checks of named struct types inside a value (directly, in lists, in maps).
fn nested_checks(ty: &Ty, value: &str, path: &str) -> Vec<String> {
    match ty {
        Ty::Named(t) if !t.is_enum => vec![format!("{value}.check_into(errors, {path});")],
        Ty::List(inner) if has_struct(inner) => vec![format!(
            "for (i, item) in {value}.iter().enumerate() {{ {} }}",
            nested_checks(
                inner,
                "item",
                &format!("&::std::format!(\"{{}}[{{}}]\", {path}, i)")
            )
            .join(" ")
        )],
        Ty::Map(inner) if has_struct(inner) => vec![format!(
            "for (key, item) in {value}.iter() {{ {} }}",
            nested_checks(
                inner,
                "item",
                &format!("&::std::format!(\"{{}}.{{}}\", {path}, key)")
            )
            .join(" ")
        )],
        _ => Vec::new(),
    }
}

fn has_struct(ty: &Ty) -> bool {
    match ty {
        Ty::Named(t) => !t.is_enum,
        Ty::List(inner) | Ty::Map(inner) => has_struct(inner),
        _ => false,
    }
}

fn field_context(owner: &str, field: &Field, in_type: bool) -> Value {
    let ident = snake(&field.name);
    let inner = rust_ty(&field.ty);
    let optional = !field.required && field.default.is_none();
    let declared = if optional {
        format!("::core::option::Option<{inner}>")
    } else {
        inner.clone()
    };
    let mut serde = Vec::new();
    if ident.trim_start_matches("r#") != field.name {
        serde.push(format!("rename = {}", str_lit(&field.name)));
    }
    if optional {
        serde.push("default".into());
        serde.push("skip_serializing_if = \"::core::option::Option::is_none\"".into());
    }
    let default_fn = format!("__default_{}", ident.trim_start_matches("r#"));
    if field.default.is_some() {
        serde.push(format!(
            "default = {}",
            str_lit(&format!("{owner}::{default_fn}"))
        ));
    }
    let path = if in_type {
        format!(
            "&::std::format!(\"{{}}.{{}}\", path, {})",
            str_lit(&field.name)
        )
    } else {
        str_lit(&field.name)
    };
    let statements = rule_statements(field, &path);
    json!({
        "ident": ident,
        "wire": str_lit(&field.name),
        "doc": docs(field.description.as_deref(), &format!("`{}`", field.name)),
        "declared": declared,
        "inner": inner,
        "optional": optional,
        "required": field.required,
        "default_fn": default_fn,
        "default_expr": field.default.as_ref().map(|d| literal_expr(d, &field.ty)),
        "serde": if serde.is_empty() { String::new() } else { format!("#[serde({})]", serde.join(", ")) },
        "rules": statements.join("\n"),
        "has_rules": !statements.is_empty(),
    })
}

fn type_context(t: &TypeDef) -> Value {
    let name = pascal(&t.name);
    match &t.kind {
        TypeKind::Struct(fields) => json!({
            "kind": "struct",
            "name": name,
            "doc": docs(t.description.as_deref(), &format!("Type `{}`.", t.name)),
            "fields": fields.iter().map(|f| field_context(&name, f, true)).collect::<Vec<_>>(),
            "variants": [],
        }),
        TypeKind::Enum(values) => json!({
            "kind": "enum",
            "name": name,
            "doc": docs(t.description.as_deref(), &format!("Type `{}`.", t.name)),
            "fields": [],
            "variants": values.iter().map(|v| json!({
                "ident": pascal(v),
                "wire": str_lit(v),
                "doc": doc_attrs(&format!("`{v}`")),
            })).collect::<Vec<_>>(),
        }),
    }
}

fn payload_context(p: &Payload) -> Value {
    let name = pascal(&p.name);
    let fields: Vec<Value> = p
        .fields
        .iter()
        .map(|f| field_context(&name, f, false))
        .collect();
    let list = |pred: &dyn Fn(&Field) -> bool| {
        p.fields
            .iter()
            .filter(|f| pred(f))
            .map(|f| str_lit(&f.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = match p.kind {
        PayloadKind::Command => "Command",
        PayloadKind::Event => "Event",
    };
    json!({
        "kind": what,
        "name": name,
        "doc": docs(p.description.as_deref(), &format!("{what} `{}`.", p.type_name)),
        "type_name": str_lit(&p.type_name),
        "topic": str_lit(&p.topic),
        "version": p.version,
        "custom_validate": p.custom_validate,
        "fields": fields,
        "known": list(&|_| true),
        "required": list(&|f| f.required),
        "has_rules": p.fields.iter().any(|f| !rule_statements(f, "\"\"").is_empty()),
    })
}

fn payload_path(r: &PayloadRef, kind: &str) -> String {
    format!("super::super::{}::{kind}::{}", r.module, pascal(&r.name))
}

fn handler_context(model: &Model, h: &Handler) -> Value {
    let name = pascal(&h.name);
    let (kind, message_ty, patterns, variants) = match &h.target {
        HandlerTarget::Command(r) => (
            "command",
            payload_path(r, "commands"),
            Vec::new(),
            Vec::new(),
        ),
        HandlerTarget::Event(r) => (
            "event",
            format!("{RT}::Event<{}>", payload_path(r, "events")),
            Vec::new(),
            Vec::new(),
        ),
        HandlerTarget::Events(refs) => (
            "events",
            format!("{name}Event"),
            refs.iter()
                .map(|r| format!("{}::TOPIC", payload_path(r, "events")))
                .collect(),
            refs.clone(),
        ),
        HandlerTarget::Topic { pattern, matched } => (
            "topic",
            format!("{name}Event"),
            vec![str_lit(pattern)],
            matched.clone(),
        ),
    };
    let variants: Vec<Value> = variants
        .iter()
        .map(|r| {
            json!({
                "ident": pascal(&r.name),
                "path": payload_path(r, "events"),
                "doc": doc_attrs(&format!("`{}`", type_name(model, r))),
            })
        })
        .collect();
    let emits = h
        .emits
        .iter()
        .map(|r| format!("`{}`", type_name(model, r)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut doc = h
        .description
        .clone()
        .unwrap_or_else(|| format!("Handler binding `{}`.", h.name));
    if !emits.is_empty() {
        doc.push_str(&format!("\n\nEmits {emits}."));
    }
    json!({
        "kind": kind,
        "name": name,
        "wire": str_lit(&h.name),
        "fn_name": snake(&h.name),
        "doc": doc_attrs(&doc),
        "message_ty": message_ty,
        "patterns": patterns.join(", "),
        "variants": variants,
        "max_retries": h.max_retries,
        "enum_doc": doc_attrs(&format!("What `{}` receives.", h.name)),
    })
}

fn type_name(model: &Model, r: &PayloadRef) -> String {
    model
        .modules
        .iter()
        .find(|m| m.ident == r.module)
        .map_or_else(|| r.name.clone(), |m| format!("{}.{}", m.namespace, r.name))
}
