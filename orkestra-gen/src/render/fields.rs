//! Fields and the Rust they need: types seen from a section, literals, rule checks,
//! unknown-key walkers.

use serde::Serialize;

use super::{CG, RT, item_path};
use crate::model::*;
use crate::names::{doc_attrs, pascal, snake, str_lit};

/// A field of a type, command or event.
#[derive(Serialize)]
pub(super) struct FieldCtx {
    pub(super) ident: String,
    pub(super) wire: String,
    pub(super) doc: String,
    /// Its Rust type as declared (`Option<..>` when optional).
    pub(super) declared: String,
    /// The type inside the `Option`.
    pub(super) inner: String,
    pub(super) optional: bool,
    pub(super) required: bool,
    pub(super) default_fn: String,
    pub(super) default_expr: Option<String>,
    pub(super) serde: String,
    /// The statements that check a `v: &<borrowed>`; `None` when nothing is checked.
    pub(super) rules: Option<String>,
    /// The name of the payload's check function for this field (`check_quantity`).
    pub(super) check_fn: String,
    pub(super) check_doc: String,
    /// The type the check function takes by reference (`str` for strings, `[T]` for lists).
    pub(super) borrowed: String,
}

/// The Rust type of a schema type, seen from inside `<here>::{types,commands,events}`.
pub(super) fn rust_ty(ty: &Ty, here: &str) -> String {
    match ty {
        Ty::String => "::std::string::String".into(),
        Ty::Integer => "i64".into(),
        Ty::Float => "f64".into(),
        Ty::Boolean => "bool".into(),
        Ty::DateTime => format!("{CG}::chrono::DateTime<{CG}::chrono::Utc>"),
        Ty::Date => format!("{CG}::chrono::NaiveDate"),
        Ty::Uuid => format!("{CG}::uuid::Uuid"),
        Ty::Decimal => format!("{RT}::Decimal"),
        Ty::Json => format!("{CG}::serde_json::Value"),
        Ty::List(inner) => format!("::std::vec::Vec<{}>", rust_ty(inner, here)),
        Ty::Map(inner) => format!(
            "::std::collections::BTreeMap<::std::string::String, {}>",
            rust_ty(inner, here)
        ),
        Ty::Named(t) => item_path(here, &t.module, "types", &t.name),
    }
}

/// The type a check function borrows: `str` and `[T]` rather than `String` and `Vec<T>`.
pub(super) fn borrowed_ty(ty: &Ty, here: &str) -> String {
    match ty {
        Ty::String => "str".into(),
        Ty::List(inner) => format!("[{}]", rust_ty(inner, here)),
        other => rust_ty(other, here),
    }
}

/// A Rust expression for a literal of `ty`.
pub(super) fn literal_expr(lit: &Literal, ty: &Ty, here: &str) -> String {
    let list = |items: Vec<String>| items.join(", ");
    match (lit, ty) {
        (Literal::Str(s), Ty::Named(_)) => format!("{}::{}", rust_ty(ty, here), pascal(s)),
        // The text forms were checked at generation time: the fallbacks never run.
        (Literal::Str(s), Ty::DateTime) => format!(
            "{CG}::chrono::DateTime::parse_from_rfc3339({}).map_or_else(|_| ::core::default::Default::default(), |t| t.with_timezone(&{CG}::chrono::Utc))",
            str_lit(s)
        ),
        (Literal::Str(s), Ty::Date) => {
            let mut parts = s.split('-').map(|p| p.trim_start_matches('0'));
            let mut next = || parts.next().filter(|p| !p.is_empty()).unwrap_or("0");
            let (y, m, d) = (next(), next(), next());
            format!("{CG}::chrono::NaiveDate::from_ymd_opt({y}, {m}, {d}).unwrap_or_default()")
        }
        (Literal::Str(s), Ty::Uuid) => format!(
            "{CG}::uuid::Uuid::from_u128(0x{}u128)",
            s.replace('-', "").to_ascii_lowercase()
        ),
        (Literal::Str(s), Ty::Decimal) => {
            format!("{RT}::Decimal::parse({}).unwrap_or_default()", str_lit(s))
        }
        (Literal::Str(s), _) => format!("::std::string::String::from({})", str_lit(s)),
        (Literal::Int(i), _) => format!("{i}i64"),
        (Literal::Float(f), _) => format!("{f:?}f64"),
        (Literal::Bool(b), _) => b.to_string(),
        // `Vec::from([..])`, not `vec![..]`: prettyplease formats a call, not a macro body.
        (Literal::List(items), Ty::List(_)) if items.is_empty() => "::std::vec::Vec::new()".into(),
        (Literal::List(items), Ty::List(inner)) => format!(
            "::std::vec::Vec::from([{}])",
            list(items.iter().map(|i| literal_expr(i, inner, here)).collect())
        ),
        (Literal::Map(entries), Ty::Map(inner)) => format!(
            "::std::collections::BTreeMap::from([{}])",
            list(
                entries
                    .iter()
                    .map(|(k, v)| format!(
                        "(::std::string::String::from({}), {})",
                        str_lit(k),
                        literal_expr(v, inner, here)
                    ))
                    .collect()
            )
        ),
        // Validation only builds literals that fit their type.
        (Literal::List(_) | Literal::Map(_), _) => "::core::default::Default::default()".into(),
    }
}

/// A number or string literal as compared in a rule (strings as `&str`).
pub(super) fn rule_literal(lit: &Literal) -> String {
    match lit {
        Literal::Str(s) => str_lit(s),
        Literal::Int(i) => format!("{i}i64"),
        Literal::Float(f) => format!("{f:?}f64"),
        other => format!("{other:?}"),
    }
}

/// Rule statements for a value `v: &<borrowed type>` reported at path expression `path`.
pub(super) fn rule_statements(field: &Field, path: &str) -> Vec<String> {
    let r = &field.rules;
    let rules = format!("{CG}::rules");
    let mut out = Vec::new();
    if let Some(min) = &r.min {
        out.push(format!(
            "{rules}::min(errors, {path}, *v, {});",
            rule_literal(min)
        ));
    }
    if let Some(max) = &r.max {
        out.push(format!(
            "{rules}::max(errors, {path}, *v, {});",
            rule_literal(max)
        ));
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
            .map(rule_literal)
            .collect::<Vec<_>>()
            .join(", ");
        let value = if field.ty == Ty::String { "&v" } else { "v" };
        out.push(format!(
            "{rules}::one_of(errors, {path}, {value}, &[{list}]);"
        ));
    }
    out.extend(nested_checks(&field.ty, "v", path));
    out
}

/// Checks of named struct types inside a value (directly, in lists, in maps).
pub(super) fn nested_checks(ty: &Ty, value: &str, path: &str) -> Vec<String> {
    let inner_checks = |inner: &Ty, item_path: String| nested_checks(inner, "item", &item_path);
    match ty {
        Ty::Named(t) if !t.is_enum => vec![format!("{value}.check_into(errors, {path});")],
        Ty::List(inner) if has_struct(inner) => vec![format!(
            "for (i, item) in {value}.iter().enumerate() {{ {} }}",
            inner_checks(inner, format!("&::std::format!(\"{{}}[{{}}]\", {path}, i)")).join(" ")
        )],
        Ty::Map(inner) if has_struct(inner) => vec![format!(
            "for (key, item) in {value}.iter() {{ {} }}",
            inner_checks(
                inner,
                format!("&::std::format!(\"{{}}.{{}}\", {path}, key)")
            )
            .join(" ")
        )],
        _ => Vec::new(),
    }
}

pub(super) fn has_struct(ty: &Ty) -> bool {
    match ty {
        Ty::Named(t) => !t.is_enum,
        Ty::List(inner) | Ty::Map(inner) => has_struct(inner),
        _ => false,
    }
}

/// A field of `owner`; `in_type` fields report rule paths under their parent's path.
pub(super) fn field_ctx(owner: &str, field: &Field, in_type: bool, here: &str) -> FieldCtx {
    let ident = snake(&field.name);
    let bare = ident.trim_start_matches("r#").to_owned();
    let inner = rust_ty(&field.ty, here);
    let optional = !field.required && field.default.is_none();
    let declared = if optional {
        format!("::core::option::Option<{inner}>")
    } else {
        inner.clone()
    };
    let default_fn = format!("__default_{bare}");
    let mut serde = Vec::new();
    if bare != field.name {
        serde.push(format!("rename = {}", str_lit(&field.name)));
    }
    if optional {
        serde.push("default".into());
        serde.push("skip_serializing_if = \"::core::option::Option::is_none\"".into());
    }
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
    FieldCtx {
        wire: str_lit(&field.name),
        doc: field_doc(field),
        declared,
        borrowed: borrowed_ty(&field.ty, here),
        inner,
        optional,
        required: field.required,
        default_expr: field
            .default
            .as_ref()
            .map(|d| literal_expr(d, &field.ty, here)),
        default_fn,
        serde: if serde.is_empty() {
            String::new()
        } else {
            format!("#[serde({})]", serde.join(", "))
        },
        rules: (!statements.is_empty()).then(|| statements.join("\n")),
        check_fn: format!("check_{bare}"),
        check_doc: doc_attrs(&format!("Records every rule `{}` breaks.", field.name)),
        ident,
    }
}

/// A callable `(v: &Value, path: &str, out: &mut Vec<String>)` recording the unknown
/// keys inside a value of `ty` (a struct type's `unknown_into`, or a closure walking lists
/// and maps down to one); `None` when `ty` holds no struct type.
pub(super) fn unknown_walker(ty: &Ty, here: &str) -> Option<String> {
    match ty {
        Ty::Named(t) if !t.is_enum => Some(format!("{}::unknown_into", rust_ty(ty, here))),
        Ty::List(inner) => unknown_walker(inner, here)
            .map(|item| format!("|v, path, out| {CG}::unknown_in_items(v, path, out, {item})")),
        Ty::Map(inner) => unknown_walker(inner, here)
            .map(|item| format!("|v, path, out| {CG}::unknown_in_values(v, path, out, {item})")),
        _ => None,
    }
}

/// A `serde_json::Value` expression for a literal.
pub(super) fn json_expr(lit: &Literal) -> String {
    let value = format!("{CG}::serde_json::Value");
    match lit {
        Literal::Str(s) => format!(
            "{value}::String(::std::string::String::from({}))",
            str_lit(s)
        ),
        Literal::Int(i) => format!("{value}::from({i}i64)"),
        Literal::Float(f) => format!("{value}::from({f:?}f64)"),
        Literal::Bool(b) => format!("{value}::Bool({b})"),
        Literal::List(items) if items.is_empty() => {
            format!("{value}::Array(::std::vec::Vec::new())")
        }
        Literal::List(items) => format!(
            "{value}::Array(::std::vec::Vec::from([{}]))",
            items.iter().map(json_expr).collect::<Vec<_>>().join(", ")
        ),
        Literal::Map(entries) => format!(
            "{value}::Object(::core::iter::FromIterator::from_iter([{}]))",
            entries
                .iter()
                .map(|(k, v)| format!(
                    "(::std::string::String::from({}), {})",
                    str_lit(k),
                    json_expr(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A field's doc comment: its description (or its name), and for a personal field what
/// that means to whoever reads it.
fn field_doc(field: &Field) -> String {
    let text = field
        .description
        .clone()
        .unwrap_or_else(|| format!("`{}`", field.name));
    if field.personal {
        doc_attrs(&format!(
            "{text}\n\nPersonal data: stored encrypted with its subject's key; once the subject \
             is forgotten, readers get its replacement."
        ))
    } else {
        doc_attrs(&text)
    }
}
