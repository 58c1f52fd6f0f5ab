//! Personal data as the runtime needs it: for each event type (and each aggregate's
//! snapshotted state) with personal fields, its subject field and every personal path
//! with the JSON text readers get once the subject is forgotten.
//!
//! This is the one place those descriptions are computed. The renderer writes them as
//! the static tables of `<namespace>::personal`; tools that work on stored events (the
//! `orkestra store encrypt-personal --schemas` command) call [`events`] and [`states`]
//! on a validated model, so both always agree.
//!
//! # Paths
//!
//! Field names joined by `.`, each followed by `[]` once per list level: `email`,
//! `address.street` (a field of a named type), `contacts[].phone` (every element of a
//! list). A field marked personal is sealed whole, whatever its type: a personal
//! `address` of a named type is one path, `address`, and nothing below it.
//!
//! # Replacements
//!
//! A field's `replacement` when the schema gives one; otherwise its type's empty value:
//! `null` for an optional field (no `required`, no `default`: an `Option` in Rust);
//! else `""` (string), `0` (integer), `0.0` (float), `false` (boolean), `[]` (list),
//! `{}` (map), `null` (json), the nil UUID, `"1970-01-01"` (date),
//! `"1970-01-01T00:00:00Z"` (datetime), `"0"` (decimal), and for a named struct type
//! an object of its fields' empty values. An enum has no empty value (its first value
//! would be a made-up fact): a personal enum field without a `replacement` is replaced
//! by its `default` when it has one, by `null` when optional, and a required one is a
//! schema error. Every replacement deserializes into the generated Rust type.

use serde_json::Value;

use crate::model::*;

/// The personal data of one event type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalEvent {
    /// The Rust module of the namespace (`customers`).
    pub module: String,
    /// The event's name in the schema (`CustomerRegistered`).
    pub event: String,
    /// The stored event type (`Shop.Customers.CustomerRegistered`).
    pub event_type: String,
    /// The top-level string field naming the data subject (`customer_id`).
    pub subject: String,
    /// The personal paths, in field declaration order (depth first).
    pub fields: Vec<PersonalField>,
}

/// The personal data of one aggregate's snapshotted state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalState {
    /// The Rust module of the namespace.
    pub module: String,
    /// The aggregate's name.
    pub aggregate: String,
    /// The shape tag its snapshots carry (what the runtime knows the state by).
    pub shape: String,
    /// The state field naming the data subject.
    pub subject: String,
    /// The personal paths of the state.
    pub fields: Vec<PersonalField>,
}

/// One personal path and its replacement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalField {
    /// The path (`email`, `address.street`, `contacts[].phone`).
    pub path: String,
    /// What readers get once the subject is forgotten, as JSON text (`""`, `null`).
    pub replacement_json: String,
}

/// Every event type with personal data, module by module in model order, events in
/// declaration order.
pub fn events(model: &Model) -> Vec<PersonalEvent> {
    model
        .modules
        .iter()
        .flat_map(|m| module_events(model, m))
        .collect()
}

/// Every aggregate state with personal data, in model order.
pub fn states(model: &Model) -> Vec<PersonalState> {
    model
        .modules
        .iter()
        .flat_map(|m| module_states(model, m))
        .collect()
}

/// The events of one module with personal data.
pub fn module_events(model: &Model, module: &Module) -> Vec<PersonalEvent> {
    module
        .events
        .iter()
        .filter_map(|e| {
            let subject = e.personal_subject.clone()?;
            Some(PersonalEvent {
                module: module.ident.clone(),
                event: e.name.clone(),
                event_type: e.type_name.clone(),
                subject,
                fields: paths(&model.modules, &e.fields).fields,
            })
        })
        .collect()
}

/// The aggregate states of one module with personal data.
pub fn module_states(model: &Model, module: &Module) -> Vec<PersonalState> {
    module
        .aggregates
        .iter()
        .filter_map(|a| {
            let subject = a.personal_subject.clone()?;
            Some(PersonalState {
                module: module.ident.clone(),
                aggregate: a.name.clone(),
                shape: crate::render::state_shape(model, a),
                subject,
                fields: paths(&model.modules, &a.state).fields,
            })
        })
        .collect()
}

/// What walking a list of fields found: the personal paths, and what cannot be
/// described (by the index of the top-level field it is under).
#[derive(Debug, Default)]
pub(crate) struct Paths {
    pub(crate) fields: Vec<PersonalField>,
    pub(crate) problems: Vec<(usize, String)>,
}

/// The personal paths of `fields` (an event's data or a state), through named types.
pub(crate) fn paths(modules: &[Module], fields: &[Field]) -> Paths {
    let mut walk = Walk {
        modules,
        stack: Vec::new(),
        out: Paths::default(),
        top: 0,
    };
    for (i, f) in fields.iter().enumerate() {
        walk.top = i;
        walk.field(f, "");
    }
    walk.out
}

/// The state of one walk: the struct types being walked (recursion is reported, not
/// followed), and the top-level field problems are filed under.
struct Walk<'a> {
    modules: &'a [Module],
    stack: Vec<(&'a str, &'a str)>,
    out: Paths,
    top: usize,
}

impl<'a> Walk<'a> {
    fn field(&mut self, f: &'a Field, prefix: &str) {
        let path = format!("{prefix}{}", f.name);
        if f.personal {
            match replacement_json(self.modules, f) {
                Ok(replacement_json) => self.out.fields.push(PersonalField {
                    path,
                    replacement_json,
                }),
                Err(why) => self.out.problems.push((
                    self.top,
                    format!("personal field `{path}` has no empty value to give readers once its subject is forgotten: {why}; make `{path}` optional (it is then replaced by null), or mark the fields of its type personal instead"),
                )),
            }
            return;
        }
        self.ty(&f.ty, path);
    }

    fn ty(&mut self, ty: &'a Ty, path: String) {
        match ty {
            Ty::List(inner) => self.ty(inner, format!("{path}[]")),
            Ty::Map(inner) => {
                if let Some(inside) = personal_inside(self.modules, inner, &mut Vec::new()) {
                    self.out.problems.push((
                        self.top,
                        format!("`{path}` is a map whose values hold personal field `{inside}`, which a path cannot address: mark `{path}` itself `personal: true` to seal the whole map"),
                    ));
                }
            }
            Ty::Named(t) if !t.is_enum => {
                let Some(fields) = struct_fields(self.modules, t) else {
                    return;
                };
                let key = (t.module.as_str(), t.name.as_str());
                if self.stack.contains(&key) {
                    if let Some(inside) = personal_inside(self.modules, ty, &mut Vec::new()) {
                        self.out.problems.push((
                            self.top,
                            format!("`{path}` holds type `{}` inside itself, with personal field `{inside}`: a path cannot address every level; mark a field holding it `personal: true` to seal it whole", t.name),
                        ));
                    }
                    return;
                }
                self.stack.push(key);
                let prefix = format!("{path}.");
                for f in fields {
                    self.field(f, &prefix);
                }
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// The fields of the struct type `t` refers to.
fn struct_fields<'a>(modules: &'a [Module], t: &TypeRef) -> Option<&'a [Field]> {
    let def = modules
        .iter()
        .find(|m| m.ident == t.module)?
        .types
        .iter()
        .find(|d| d.name == t.name)?;
    match &def.kind {
        TypeKind::Struct(fields) => Some(fields),
        TypeKind::Enum(_) => None,
    }
}

/// The first personal field a value of `ty` holds, as `Type.field`, if any.
pub(crate) fn personal_inside<'a>(
    modules: &'a [Module],
    ty: &'a Ty,
    seen: &mut Vec<(&'a str, &'a str)>,
) -> Option<String> {
    match ty {
        Ty::List(inner) | Ty::Map(inner) => personal_inside(modules, inner, seen),
        Ty::Named(t) if !t.is_enum => {
            let key = (t.module.as_str(), t.name.as_str());
            if seen.contains(&key) {
                return None;
            }
            seen.push(key);
            let fields = struct_fields(modules, t)?;
            fields.iter().find_map(|f| {
                if f.personal {
                    Some(format!("{}.{}", t.name, f.name))
                } else {
                    personal_inside(modules, &f.ty, seen)
                }
            })
        }
        _ => None,
    }
}

/// The replacement of a personal field as JSON text.
fn replacement_json(modules: &[Module], f: &Field) -> Result<String, String> {
    let value = match &f.replacement {
        Some(lit) => literal_json(lit),
        None => empty_value(modules, f, &mut Vec::new())?,
    };
    Ok(value.to_string())
}

/// What a field holds once emptied: see the module docs.
fn empty_value<'a>(
    modules: &'a [Module],
    f: &'a Field,
    stack: &mut Vec<(&'a str, &'a str)>,
) -> Result<Value, String> {
    if !f.required && f.default.is_none() {
        return Ok(Value::Null);
    }
    let value = match &f.ty {
        Ty::String => Value::from(""),
        Ty::Integer => Value::from(0),
        Ty::Float => Value::from(0.0),
        Ty::Boolean => Value::from(false),
        Ty::DateTime => Value::from("1970-01-01T00:00:00Z"),
        Ty::Date => Value::from("1970-01-01"),
        Ty::Uuid => Value::from("00000000-0000-0000-0000-000000000000"),
        Ty::Decimal => Value::from("0"),
        Ty::Json => Value::Null,
        Ty::List(_) => Value::Array(Vec::new()),
        Ty::Map(_) => Value::Object(serde_json::Map::new()),
        Ty::Named(t) if t.is_enum => match &f.default {
            Some(lit) => literal_json(lit),
            None => {
                return Err(format!(
                    "`{}` is a required enum (`{}`), which has no empty value",
                    f.name, t.name
                ));
            }
        },
        Ty::Named(t) => {
            let key = (t.module.as_str(), t.name.as_str());
            let fields = struct_fields(modules, t)
                .filter(|_| !stack.contains(&key))
                .ok_or_else(|| format!("type `{}` contains itself", t.name))?;
            stack.push(key);
            let mut object = serde_json::Map::new();
            for inner in fields {
                let value = empty_value(modules, inner, stack)
                    .map_err(|why| format!("in type `{}`, {why}", t.name))?;
                object.insert(inner.name.clone(), value);
            }
            stack.pop();
            Value::Object(object)
        }
    };
    Ok(value)
}

/// A checked literal as JSON.
fn literal_json(lit: &Literal) -> Value {
    match lit {
        Literal::Str(s) => Value::from(s.as_str()),
        Literal::Int(i) => Value::from(*i),
        Literal::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Literal::Bool(b) => Value::from(*b),
        Literal::List(items) => Value::Array(items.iter().map(literal_json).collect()),
        Literal::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), literal_json(v)))
                .collect(),
        ),
    }
}
