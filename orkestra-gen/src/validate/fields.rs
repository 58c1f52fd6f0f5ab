//! Fields and params: their type, `required`, rules and defaults (checked against both).

use std::collections::HashMap;

use super::shape::describe;
use super::types::ty_name;
use super::{Decl, TypeTable, Validator};
use crate::diagnostic::Diagnostic;
use crate::model::*;
use crate::names;
use crate::yaml::{Key, Node, Value};

pub(super) const FIELD_KEYS: &[&str] = &[
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
    "personal",
    "replacement",
];

/// The field whose rules are being read.
#[derive(Clone, Copy)]
struct RuleTarget<'a> {
    /// Its name, for messages.
    field: &'a str,
    /// Its type: which rules apply and how values are read.
    ty: &'a Ty,
    /// Its keys.
    map: &'a HashMap<&'a str, &'a Node>,
}

impl Validator {
    pub(super) fn fields(
        &mut self,
        decl: &Decl,
        node: &Node,
        types: &TypeTable,
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
            if !self.identifier(key, "field name") {
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

    pub(super) fn field(
        &mut self,
        decl: &Decl,
        key: &Key,
        spec: &Node,
        types: &TypeTable,
    ) -> Option<Field> {
        // `quantity: integer` is shorthand for `quantity: { type: integer }`.
        if let Value::Str(ty) = &spec.value {
            let ty = self.ty(decl, ty, &spec.span, types)?;
            return Some(Field {
                name: key.name.clone(),
                span: key.span.clone(),
                description: None,
                ty,
                required: false,
                default: None,
                rules: Rules::default(),
                personal: false,
                replacement: None,
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
        let personal = match map.get("personal") {
            None => false,
            Some(Node {
                value: Value::Bool(b),
                ..
            }) => *b,
            Some(n) => {
                self.error(
                    &n.span,
                    format!("`personal` must be true or false, found {}", describe(n)),
                );
                return None;
            }
        };
        let replacement = match map.get("replacement") {
            None => None,
            Some(n) if !personal => {
                self.error(
                    &n.span,
                    format!(
                        "`replacement` is what readers get once a personal field's subject is forgotten, but `{}` is not personal: add `personal: true` or remove the `replacement`",
                        key.name
                    ),
                );
                return None;
            }
            Some(n) => match replacement(n, &ty) {
                Ok(lit) => Some(lit),
                Err(message) => {
                    self.error(
                        &n.span,
                        format!("the replacement of `{}` {message}", key.name),
                    );
                    return None;
                }
            },
        };
        if personal
            && replacement.is_none()
            && required
            && let Ty::Named(t) = &ty
            && t.is_enum
        {
            self.error(
                &key.span,
                format!(
                    "personal field `{}` is a required `{}`, an enum, which has no empty value to give readers once its subject is forgotten: add a `replacement` (one of {}), or make the field optional (it is then replaced by null)",
                    key.name,
                    t.name,
                    t.variants.join(", ")
                ),
            );
            return None;
        }
        Some(Field {
            name: key.name.clone(),
            span: key.span.clone(),
            description,
            ty,
            required,
            default,
            rules,
            personal,
            replacement,
        })
    }

    /// The rules of a field: each rule key checked against the field's type and read.
    /// Every step runs (so every mistake is reported); any failure drops the field.
    pub(super) fn rules(
        &mut self,
        field: &str,
        ty: &Ty,
        map: &HashMap<&str, &Node>,
    ) -> Option<Rules> {
        let target = RuleTarget { field, ty, map };
        let mut rules = Rules::default();
        let steps = [
            self.bounds(&target, &mut rules),
            self.lengths(&target, &mut rules),
            self.pattern(&target, &mut rules),
            self.format(&target, &mut rules),
            self.one_of(&target, &mut rules),
        ];
        steps.iter().all(|ok| *ok).then_some(rules)
    }

    /// "`rule` applies to what, but `field` is ...".
    fn rule_not_for(&mut self, target: &RuleTarget<'_>, n: &Node, rule: &str, what: &str) {
        self.error(
            &n.span,
            format!(
                "`{rule}` applies to {what}, but `{}` is {}",
                target.field,
                ty_name(target.ty)
            ),
        );
    }

    /// `min` and `max` (integers and floats), and `min <= max`.
    fn bounds(&mut self, target: &RuleTarget<'_>, rules: &mut Rules) -> bool {
        let RuleTarget { field, ty, map } = *target;
        let mut ok = true;
        for bound in ["min", "max"] {
            let Some(n) = map.get(bound) else { continue };
            if !matches!(ty, Ty::Integer | Ty::Float) {
                self.rule_not_for(target, n, bound, "integers and floats");
                ok = false;
                continue;
            }
            let lit = match (&n.value, ty) {
                (Value::Int(i), Ty::Float) => Literal::Float(*i as f64),
                (Value::Int(i), _) => Literal::Int(*i),
                (Value::Float(f), Ty::Float) if f.is_finite() => Literal::Float(*f),
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
                    continue;
                }
            };
            if bound == "min" {
                rules.min = Some(lit);
            } else {
                rules.max = Some(lit);
            }
        }
        let below = match (&rules.min, &rules.max) {
            (Some(Literal::Int(a)), Some(Literal::Int(b))) => a > b,
            (Some(Literal::Float(a)), Some(Literal::Float(b))) => a > b,
            _ => false,
        };
        if below && let (Some(a), Some(b)) = (&rules.min, &rules.max) {
            self.error(
                &map["max"].span,
                format!(
                    "`max` ({}) of `{field}` is below its `min` ({})",
                    number(b),
                    number(a)
                ),
            );
            ok = false;
        }
        ok
    }

    /// `min_length` and `max_length` (strings, lists, maps), and `min_length <= max_length`.
    fn lengths(&mut self, target: &RuleTarget<'_>, rules: &mut Rules) -> bool {
        let RuleTarget { field, ty, map } = *target;
        let mut ok = true;
        for bound in ["min_length", "max_length"] {
            let Some(n) = map.get(bound) else { continue };
            if !matches!(ty, Ty::String | Ty::List(_) | Ty::Map(_)) {
                self.rule_not_for(target, n, bound, "strings, lists and maps");
                ok = false;
                continue;
            }
            match n.value {
                Value::Int(i) if i >= 0 => {
                    if bound == "min_length" {
                        rules.min_length = Some(i as u64);
                    } else {
                        rules.max_length = Some(i as u64);
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
        if let (Some(a), Some(b)) = (rules.min_length, rules.max_length)
            && a > b
        {
            self.error(
                &map["max_length"].span,
                format!("`max_length` ({b}) of `{field}` is below its `min_length` ({a})"),
            );
            ok = false;
        }
        ok
    }

    /// `pattern` (strings): a regular expression that compiles.
    fn pattern(&mut self, target: &RuleTarget<'_>, rules: &mut Rules) -> bool {
        let Some(n) = target.map.get("pattern") else {
            return true;
        };
        if *target.ty != Ty::String {
            self.rule_not_for(target, n, "pattern", "strings");
            return false;
        }
        let Some(p) = self.string(n, "`pattern`") else {
            return false;
        };
        match regex::Regex::new(&p) {
            Ok(_) => {
                rules.pattern = Some(p);
                true
            }
            Err(e) => {
                let text = e.to_string();
                let last = text.lines().last().unwrap_or("").trim();
                let reason = last.strip_prefix("error:").unwrap_or(last).trim();
                self.error(
                    &n.span,
                    format!(
                        "`pattern` of `{}` is not a valid regular expression: {reason}",
                        target.field
                    ),
                );
                false
            }
        }
    }

    /// `format` (strings): email, uuid or url.
    fn format(&mut self, target: &RuleTarget<'_>, rules: &mut Rules) -> bool {
        let Some(n) = target.map.get("format") else {
            return true;
        };
        if *target.ty != Ty::String {
            self.rule_not_for(target, n, "format", "strings");
            return false;
        }
        rules.format = match n.as_str() {
            Some("email") => Some(Format::Email),
            Some("uuid") => Some(Format::Uuid),
            Some("url") => Some(Format::Url),
            other => {
                let d = Diagnostic::error(
                    &n.span,
                    format!(
                        "unknown format `{}` for `{}`; expected email, uuid or url",
                        other.unwrap_or("?"),
                        target.field
                    ),
                )
                .did_you_mean(other.unwrap_or(""), ["email", "uuid", "url"]);
                self.diags.push(d);
                return false;
            }
        };
        true
    }

    /// `one_of` (strings, integers, floats): a non-empty list of values of the field's type.
    fn one_of(&mut self, target: &RuleTarget<'_>, rules: &mut Rules) -> bool {
        let RuleTarget { field, ty, map } = *target;
        let Some(n) = map.get("one_of") else {
            return true;
        };
        if !matches!(ty, Ty::String | Ty::Integer | Ty::Float) {
            self.rule_not_for(target, n, "one_of", "strings, integers and floats");
            return false;
        }
        let items = match &n.value {
            Value::Seq(items) if !items.is_empty() => items,
            _ => {
                self.error(
                    &n.span,
                    format!("`one_of` of `{field}` must be a non-empty list"),
                );
                return false;
            }
        };
        let mut ok = true;
        let mut values = Vec::new();
        for item in items {
            match literal(item, ty) {
                Ok(l) => values.push(l),
                Err(m) => {
                    self.error(&item.span, format!("a `one_of` value of `{field}` {m}"));
                    ok = false;
                }
            }
        }
        rules.one_of = Some(values);
        ok
    }
}

/// Reads a default or `one_of` value as a literal of `ty`; the error finishes a sentence.
pub(super) fn literal(n: &Node, ty: &Ty) -> Result<Literal, String> {
    let wrong = || Err(format!("must be {}, found {}", ty_name(ty), describe(n)));
    match (ty, &n.value) {
        (Ty::String, Value::Str(_) | Value::Bool(_)) if n.as_text().is_some() => {
            Ok(Literal::Str(n.as_text().unwrap_or_default().to_owned()))
        }
        (Ty::Integer, Value::Int(i)) => Ok(Literal::Int(*i)),
        (Ty::Float, Value::Int(i)) => Ok(Literal::Float(*i as f64)),
        (Ty::Float, Value::Float(f)) if f.is_finite() => Ok(Literal::Float(*f)),
        (Ty::Boolean, Value::Bool(b)) => Ok(Literal::Bool(*b)),
        (Ty::Named(t), Value::Str(_) | Value::Bool(_)) if t.is_enum && n.as_text().is_some() => {
            let s = n.as_text().unwrap_or_default();
            if t.variants.iter().any(|v| v == s) {
                Ok(Literal::Str(s.to_owned()))
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
        // Checked here, so the generated code builds the typed value without a failure path.
        (Ty::DateTime, Value::Str(s)) => {
            super::text_forms::datetime(s).map(|()| Literal::Str(s.clone()))
        }
        (Ty::Date, Value::Str(s)) => super::text_forms::date(s).map(|()| Literal::Str(s.clone())),
        (Ty::Uuid, Value::Str(s)) => super::text_forms::uuid(s).map(|_| Literal::Str(s.clone())),
        (Ty::Decimal, Value::Str(s)) => {
            super::text_forms::decimal(s).map(|()| Literal::Str(s.clone()))
        }
        (Ty::Decimal, Value::Int(i)) => Ok(Literal::Str(i.to_string())),
        (Ty::Decimal, Value::Float(_)) => Err(format!(
            "must be quoted decimal text (like \"12.50\"), so no digit is lost, found {}",
            describe(n)
        )),
        (Ty::DateTime | Ty::Date | Ty::Uuid, _) => Err(format!(
            "must be {} written as quoted text, found {}",
            ty_name(ty),
            describe(n)
        )),
        (Ty::Json, _) => Err(format!(
            "is not supported: defaults are for strings, numbers, booleans, enums, datetimes, dates, uuids, decimals and lists or maps of those; `{}` has none",
            ty_name(ty)
        )),
        (Ty::Named(t), _) if !t.is_enum => Err(format!(
            "is not supported: a struct type (`{}`) cannot have a default",
            t.name
        )),
        _ => wrong(),
    }
}

/// Reads a personal field's `replacement` as a literal of `ty`; the error finishes a
/// sentence. Struct and `json` types have no literal form here: their default
/// replacement (an object of empty values, `null`) is the one they get.
fn replacement(n: &Node, ty: &Ty) -> Result<Literal, String> {
    fn holds_struct(ty: &Ty) -> Option<&str> {
        match ty {
            Ty::Named(t) if !t.is_enum => Some(&t.name),
            Ty::List(inner) | Ty::Map(inner) => holds_struct(inner),
            _ => None,
        }
    }
    if let Some(name) = holds_struct(ty) {
        return Err(format!(
            "cannot be written for a field holding struct type `{name}`: remove it, and readers get the type's empty value (an object of empty values, an empty list or map, null when optional)"
        ));
    }
    if *ty == Ty::Json {
        return Err(
            "cannot be written for a `json` field: remove it, and readers get null".to_owned(),
        );
    }
    literal(n, ty)
}

/// The first rule a default breaks, as a phrase.
pub(super) fn breaks_rules(lit: &Literal, rules: &Rules) -> Option<String> {
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

/// A numeric bound as the schema would write it (`5`, `2.5`).
fn number(l: &Literal) -> String {
    match l {
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => f.to_string(),
        other => format!("{other:?}"),
    }
}
