//! Named types and type expressions: structs, enums, `list<T>`, `map<T>`, references.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{Decl, QualifiedName, TypeTable, Validator};
use crate::diagnostic::{Diagnostic, Span};
use crate::model::*;
use crate::names;
use crate::yaml::{Key, Node, Value};

pub(super) const TYPE_KEYS: &[&str] = &["description", "fields", "enum"];
pub(super) const BASE_TYPES: &[&str] = &[
    "string", "integer", "float", "boolean", "datetime", "date", "uuid", "decimal", "json",
];

/// A struct type, identified across namespaces.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct StructKey<'a> {
    module: &'a str,
    name: &'a str,
}

/// A field that holds a struct by value: `Type.field` and the struct it holds.
struct ByValue<'a> {
    field: &'a str,
    holds: StructKey<'a>,
}

impl Validator {
    /// A struct that contains itself by value (directly or through an optional field,
    /// across any number of types) has no finite size, so its generated code would not
    /// compile. `list<>` and `map<>` keep their items on the heap and break the cycle.
    /// Each type on a cycle gets a diagnostic at its declaration, with the shortest path.
    pub(super) fn check_recursive_types(&mut self, modules: &[Module]) {
        let mut edges: HashMap<StructKey<'_>, Vec<ByValue<'_>>> = HashMap::new();
        for m in modules {
            for t in &m.types {
                let TypeKind::Struct(fields) = &t.kind else {
                    continue;
                };
                let by_value = fields.iter().filter_map(|f| match &f.ty {
                    Ty::Named(r) if !r.is_enum => Some(ByValue {
                        field: &f.name,
                        holds: StructKey {
                            module: &r.module,
                            name: &r.name,
                        },
                    }),
                    _ => None,
                });
                edges
                    .entry(StructKey {
                        module: &m.ident,
                        name: &t.name,
                    })
                    .or_default()
                    .extend(by_value);
            }
        }
        for m in modules {
            for t in &m.types {
                let start = StructKey {
                    module: &m.ident,
                    name: &t.name,
                };
                if let Some(path) = cycle_through(&edges, start) {
                    self.error(
                        &t.span,
                        format!(
                            "type `{}` contains itself by value ({path}), so it has no finite size; hold it in a `list<>` or `map<>` field instead",
                            t.name
                        ),
                    );
                }
            }
        }
    }

    pub(super) fn type_table(&mut self, decls: &[Decl]) -> TypeTable {
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
                                        .filter_map(|i| i.as_text().map(str::to_owned))
                                        .collect(),
                                ),
                                _ => None,
                            }),
                        _ => None,
                    };
                table.insert(
                    QualifiedName {
                        qualifier: decl.qualifier.clone(),
                        name: key.name.clone(),
                    },
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

    pub(super) fn type_def(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        types: &TypeTable,
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
                    span: key.span.clone(),
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
                    let Some(s) = item.as_text() else {
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
                    span: key.span.clone(),
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

    pub(super) fn ty(
        &mut self,
        decl: &Decl,
        text: &str,
        span: &Span,
        types: &TypeTable,
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
                if let Some(t) = types.get(&QualifiedName {
                    qualifier,
                    name: name.to_owned(),
                }) {
                    return Some(Ty::Named(t.clone()));
                }
                let mut candidates: Vec<String> =
                    BASE_TYPES.iter().map(|s| (*s).to_owned()).collect();
                let mut named_types = Vec::new();
                for QualifiedName { qualifier, name } in types.keys() {
                    named_types.push(if *qualifier == decl.qualifier {
                        name.clone()
                    } else {
                        format!("{qualifier}.{name}")
                    });
                }
                // This namespace's types first (named as they are written here), then
                // the others, each group sorted: the same list on every run.
                named_types.sort_by_key(|n| (n.contains('.'), n.clone()));
                candidates.extend(named_types.iter().cloned());
                let d = Diagnostic::error(
                    span,
                    format!(
                        "unknown type `{named}`; expected one of: {}",
                        valid_types(&named_types)
                    ),
                )
                .did_you_mean(named, candidates.iter().map(String::as_str));
                self.diags.push(d);
                return None;
            }
        };
        Some(base)
    }
}

/// The types a schema may name, for the unknown-type diagnostic: every base type, the
/// generic forms, and the named types declared under `types:` (at most
/// [`NAMED_TYPES_LISTED`] of them, then how many more).
fn valid_types(named_types: &[String]) -> String {
    let mut list: Vec<String> = BASE_TYPES.iter().map(|t| (*t).to_owned()).collect();
    list.push("list<T>".into());
    list.push("map<T>".into());
    let mut text = list.join(", ");
    text.push_str(", or a type declared under `types:`");
    if !named_types.is_empty() {
        let shown: Vec<String> = named_types
            .iter()
            .take(NAMED_TYPES_LISTED)
            .map(|n| format!("`{n}`"))
            .collect();
        text.push_str(&format!(" ({}", shown.join(", ")));
        if named_types.len() > NAMED_TYPES_LISTED {
            text.push_str(&format!(
                " and {} more",
                named_types.len() - NAMED_TYPES_LISTED
            ));
        }
        text.push(')');
    }
    text
}

/// How many named types the unknown-type diagnostic lists by name.
const NAMED_TYPES_LISTED: usize = 8;

pub(super) fn ty_name(ty: &Ty) -> String {
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

/// The shortest chain of by-value fields from `start` back to itself, as
/// `A.b → B.a → A`, if there is one (breadth-first, fields in declaration order).
fn cycle_through(
    edges: &HashMap<StructKey<'_>, Vec<ByValue<'_>>>,
    start: StructKey<'_>,
) -> Option<String> {
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([(start, Vec::<String>::new())]);
    while let Some((at, path)) = queue.pop_front() {
        for edge in edges.get(&at).into_iter().flatten() {
            let mut path = path.clone();
            path.push(format!("{}.{}", at.name, edge.field));
            if edge.holds == start {
                path.push(start.name.to_owned());
                return Some(path.join(" → "));
            }
            if seen.insert(edge.holds) {
                queue.push_back((edge.holds, path));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{BASE_TYPES, NAMED_TYPES_LISTED, valid_types};

    #[test]
    fn the_valid_types_name_every_base_type_and_the_generic_forms() {
        let text = valid_types(&[]);
        for base in BASE_TYPES {
            assert!(text.contains(base), "{base} missing from {text}");
        }
        assert!(text.contains("list<T>, map<T>, or a type declared under `types:`"));
        assert!(
            !text.contains('('),
            "no named types, no list of them: {text}"
        );
    }

    #[test]
    fn a_long_list_of_named_types_is_cut_with_a_count() {
        let named: Vec<String> = (0..NAMED_TYPES_LISTED + 3)
            .map(|i| format!("T{i}"))
            .collect();
        let text = valid_types(&named);
        assert!(text.contains("(`T0`, `T1`,"), "{text}");
        assert!(text.ends_with("`T7` and 3 more)"), "{text}");
        assert!(!text.contains("`T8`"), "{text}");
    }
}
