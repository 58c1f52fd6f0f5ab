//! What is personal in which event ([`PersonalData`]): the description generated code
//! provides as a static table, and the walks that seal and open those fields.

use std::borrow::Borrow;
use std::collections::HashMap;

use aes_gcm::Aes256Gcm;
use serde_json::Value;

use super::cipher::{open_into, open_value, seal_value, sealed_text};
use super::scan::Scan;

/// One personal field: its path in the event's data and the JSON value readers get once
/// the subject is forgotten.
///
/// A path is field names joined by `.`, each name followed by `[]` once per list level
/// to mean every element: `email`, `address.street`, `contacts[].phone`, `tags[]`. The
/// value found there (any type: a nested object or a map is sealed whole) is encrypted;
/// `null` and absent values are left as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonalField {
    path: &'static str,
    replacement: &'static str,
}

impl PersonalField {
    /// A field at `path` whose replacement is the JSON text `replacement` (`"null"`,
    /// `"\"(erased)\""`, `"\"\""`, `"0"`, `"[]"`); checked when the store takes it.
    pub const fn new(path: &'static str, replacement: &'static str) -> Self {
        Self { path, replacement }
    }

    /// The path.
    pub fn path(&self) -> &'static str {
        self.path
    }

    /// The replacement, as JSON text.
    pub fn replacement_json(&self) -> &'static str {
        self.replacement
    }
}

/// The personal data of one event type: whose it is (`subject`, a top-level string
/// field of the event, never itself personal) and which fields are personal. Static
/// data (what generated code writes), so a table of them is a `static`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonalEvent {
    event_type: &'static str,
    subject: &'static str,
    fields: &'static [PersonalField],
}

impl PersonalEvent {
    /// A description for a static table (what generated code writes).
    pub const fn new(
        event_type: &'static str,
        subject: &'static str,
        fields: &'static [PersonalField],
    ) -> Self {
        Self {
            event_type,
            subject,
            fields,
        }
    }

    /// The event type.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// The subject field.
    pub fn subject(&self) -> &'static str {
        self.subject
    }

    /// The personal fields.
    pub fn fields(&self) -> &'static [PersonalField] {
        self.fields
    }
}

/// The personal data of a snapshotted state (an aggregate's, a process manager's),
/// known by the state's shape tag (the `shape` of its snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonalState {
    shape: &'static str,
    subject: &'static str,
    fields: &'static [PersonalField],
}

impl PersonalState {
    /// A description for a static table.
    pub const fn new(
        shape: &'static str,
        subject: &'static str,
        fields: &'static [PersonalField],
    ) -> Self {
        Self {
            shape,
            subject,
            fields,
        }
    }

    /// The state's shape tag.
    pub fn shape(&self) -> &'static str {
        self.shape
    }
}

/// Which events (and snapshotted states) carry personal data, for
/// `Store::with_personal_data`. Generated code provides it as static tables:
///
/// ```
/// use orkestra_runtime::keys::{PersonalData, PersonalEvent, PersonalField};
///
/// static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
///     "Shop.Customers.CustomerRegistered",
///     "customer_id",
///     &[
///         PersonalField::new("email", "\"\""),
///         PersonalField::new("name", "\"(erased)\""),
///         PersonalField::new("addresses[].street", "null"),
///     ],
/// )];
///
/// let data = PersonalData::new().with_events(EVENTS);
/// assert!(data.event("Shop.Customers.CustomerRegistered").is_some());
/// ```
#[derive(Clone, Debug, Default)]
pub struct PersonalData {
    events: Vec<PersonalEvent>,
    states: Vec<PersonalState>,
}

impl PersonalData {
    /// No personal data.
    pub fn new() -> Self {
        Self::default()
    }

    /// With these events' descriptions added (a later one of the same type replaces).
    #[must_use]
    pub fn with_events<E: Borrow<PersonalEvent>>(
        mut self,
        events: impl IntoIterator<Item = E>,
    ) -> Self {
        self.events.extend(events.into_iter().map(|e| *e.borrow()));
        self
    }

    /// With these states' descriptions added (by shape; a later one replaces).
    #[must_use]
    pub fn with_states<S: Borrow<PersonalState>>(
        mut self,
        states: impl IntoIterator<Item = S>,
    ) -> Self {
        self.states.extend(states.into_iter().map(|s| *s.borrow()));
        self
    }

    /// The description of an event type.
    pub fn event(&self, event_type: &str) -> Option<&PersonalEvent> {
        self.events
            .iter()
            .rev()
            .find(|e| e.event_type == event_type)
    }

    /// The description of a state shape.
    pub fn state(&self, shape: &str) -> Option<&PersonalState> {
        self.states.iter().rev().find(|s| s.shape == shape)
    }

    /// The described events (a later one of a type replaces an earlier one).
    pub fn events(&self) -> impl Iterator<Item = &PersonalEvent> {
        self.events.iter()
    }

    /// The described states.
    pub fn states(&self) -> impl Iterator<Item = &PersonalState> {
        self.states.iter()
    }

    /// `self` with everything `other` describes added (`other`'s win on a shared type).
    #[must_use]
    pub fn merged(&self, other: &PersonalData) -> Self {
        self.clone()
            .with_events(&other.events)
            .with_states(&other.states)
    }

    /// Whether nothing is described.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.states.is_empty()
    }

    /// Checked and ready for the store: every path parses, every replacement is JSON,
    /// the subject is named and not personal. The error names the event type (or
    /// state shape) and the field.
    pub(crate) fn compile(&self) -> Result<Compiled, String> {
        let mut compiled = Compiled {
            source: self.clone(),
            ..Compiled::default()
        };
        for e in &self.events {
            let fields = Fields::compile(e.subject, e.fields)
                .map_err(|m| format!("personal data of event {:?}: {m}", e.event_type))?;
            compiled.events.insert(e.event_type.to_string(), fields);
        }
        for s in &self.states {
            let fields = Fields::compile(s.subject, s.fields)
                .map_err(|m| format!("personal data of state shape {:?}: {m}", s.shape))?;
            compiled.states.insert(s.shape.to_string(), fields);
        }
        Ok(compiled)
    }
}

impl<'a> IntoIterator for &'a PersonalData {
    type Item = &'a PersonalEvent;
    type IntoIter = std::slice::Iter<'a, PersonalEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

/// [`PersonalData`] checked, by event type and state shape.
#[derive(Debug, Default)]
pub(crate) struct Compiled {
    /// What was compiled (merged with what a later description adds).
    pub(crate) source: PersonalData,
    pub(crate) events: HashMap<String, Fields>,
    pub(crate) states: HashMap<String, Fields>,
}

/// One segment of a path: a field name and how many list levels follow it.
#[derive(Debug)]
struct Segment {
    name: String,
    lists: usize,
}

#[derive(Debug)]
struct Field {
    /// As declared (`contacts[].phone`): what a found value's pattern is matched with.
    path: String,
    segments: Vec<Segment>,
    replacement: Value,
    /// The same as JSON text, as declared.
    replacement_text: &'static str,
}

/// The personal fields of one event type or state, checked.
#[derive(Debug)]
pub(crate) struct Fields {
    subject: String,
    fields: Vec<Field>,
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    if path.is_empty() {
        return Err("a personal field has an empty path".into());
    }
    path.split('.')
        .map(|part| {
            let mut name = part;
            let mut lists = 0;
            while let Some(rest) = name.strip_suffix("[]") {
                name = rest;
                lists += 1;
            }
            if name.is_empty() || name.contains(['[', ']']) {
                return Err(format!(
                    "path {path:?}: {part:?} is not a field name (write `name`, or `name[]` for each element of a list)"
                ));
            }
            Ok(Segment {
                name: name.to_owned(),
                lists,
            })
        })
        .collect()
}

/// The subject of a record: its top-level string field `field`.
pub(crate) fn subject_of<'v>(data: &'v Value, field: &str) -> Result<&'v str, String> {
    match data.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("the subject field {field:?} is empty")),
        Some(other) => Err(format!(
            "the subject field {field:?} is not a string but {}",
            kind(other)
        )),
        None => Err(format!("the subject field {field:?} is missing")),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Fields {
    fn compile(subject: &str, fields: &[PersonalField]) -> Result<Self, String> {
        if subject.is_empty() {
            return Err("the subject field is empty".into());
        }
        let mut compiled: Vec<Field> = Vec::with_capacity(fields.len());
        for f in fields {
            let segments = parse_path(f.path)?;
            if segments.len() == 1 && segments[0].name == subject && segments[0].lists == 0 {
                return Err(format!(
                    "the subject field {subject:?} cannot itself be personal"
                ));
            }
            if compiled.iter().any(|c| c.path == f.path) {
                return Err(format!("field {:?} is listed twice", f.path));
            }
            let replacement = serde_json::from_str(f.replacement).map_err(|e| {
                format!(
                    "field {:?}: the replacement {:?} is not JSON ({e})",
                    f.path, f.replacement
                )
            })?;
            compiled.push(Field {
                path: f.path.to_string(),
                segments,
                replacement,
                replacement_text: f.replacement,
            });
        }
        Ok(Self {
            subject: subject.to_owned(),
            fields: compiled,
        })
    }

    /// The subject field's name.
    pub(crate) fn subject_field(&self) -> &str {
        &self.subject
    }

    /// The personal fields' paths, as declared.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.path.as_str())
    }

    /// Replaces every declared personal value of `data` (not null) with its stored
    /// form. The error names the field's path.
    pub(crate) fn seal(
        &self,
        data: &mut Value,
        subject: &str,
        cipher: &Aes256Gcm,
    ) -> Result<(), String> {
        for f in &self.fields {
            visit_mut(data, &f.segments, &mut String::new(), &mut |path, v| {
                if v.is_null() {
                    return Ok(());
                }
                *v = seal_value(cipher, subject, path, v)
                    .map_err(|m| format!("field {path}: {m}"))?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Replaces every declared personal value of `data` (not null) with its field's
    /// replacement, as a reader gets it once the subject is forgotten; returns the
    /// paths replaced. What a carrier does with an event of a forgotten subject it
    /// cannot seal any more.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    pub(crate) fn redact(&self, data: &mut Value) -> Vec<String> {
        let mut redacted = Vec::new();
        for f in &self.fields {
            let _ = visit_mut(data, &f.segments, &mut String::new(), &mut |path, v| {
                if !v.is_null() {
                    *v = f.replacement.clone();
                    redacted.push(path.to_owned());
                }
                Ok(())
            });
        }
        redacted
    }

    /// Whether `path` (a top-level field name) is personal, or holds a personal field.
    pub(crate) fn covers_top_level(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.segments[0].name == name)
    }

    /// How many declared personal values of `data` are plain: not `null`, not in the
    /// stored form (what an append of an older schema left, see
    /// `Store::encrypt_personal`).
    pub(crate) fn count_plain(&self, data: &mut Value) -> Result<usize, String> {
        let mut plain = 0;
        for f in &self.fields {
            visit_mut(data, &f.segments, &mut String::new(), &mut |_, v| {
                if !v.is_null() && sealed_text(v).is_none() {
                    plain += 1;
                }
                Ok(())
            })?;
        }
        Ok(plain)
    }

    /// Seals the declared personal values of `data` that are plain, exactly as
    /// [`seal`](Self::seal) does on append; values already in the stored form are left
    /// as they are (a second run changes nothing). The number sealed.
    pub(crate) fn seal_plain(
        &self,
        data: &mut Value,
        subject: &str,
        cipher: &Aes256Gcm,
    ) -> Result<usize, String> {
        let mut sealed = 0;
        for f in &self.fields {
            visit_mut(data, &f.segments, &mut String::new(), &mut |path, v| {
                if v.is_null() || sealed_text(v).is_some() {
                    return Ok(());
                }
                *v = seal_value(cipher, subject, path, v)
                    .map_err(|m| format!("field {path}: {m}"))?;
                sealed += 1;
                Ok(())
            })?;
        }
        Ok(sealed)
    }

    /// Replaces every value of `data` in the stored form with what it holds (`cipher`)
    /// or, without a key, with its field's replacement (`null` for a value found where
    /// no field is declared now); returns the paths replaced. The error is
    /// `(path, why)`.
    pub(crate) fn open(
        &self,
        data: &mut Value,
        subject: &str,
        cipher: Option<&Aes256Gcm>,
    ) -> Result<Vec<String>, (String, String)> {
        let mut redacted = Vec::new();
        let mut path = String::new();
        let mut pattern = String::new();
        open_tree(data, &mut path, &mut pattern, &mut |path, pattern, v| {
            let Some(text) = sealed_text(v) else {
                return Ok(false);
            };
            match cipher {
                Some(cipher) => {
                    *v = open_value(cipher, subject, path, text)
                        .map_err(|m| (path.to_owned(), m))?;
                }
                None => {
                    *v = self
                        .fields
                        .iter()
                        .find(|f| f.path == pattern)
                        .map_or(Value::Null, |f| f.replacement.clone());
                    redacted.push(path.to_owned());
                }
            }
            Ok(true)
        })?;
        self.in_declared_order(&mut redacted);
        Ok(redacted)
    }

    /// Orders redacted paths as their fields are declared, each field's values in the
    /// order of the record (list elements by index): one order whatever the store's text
    /// does with keys (PostgreSQL's `jsonb` sorts them by length).
    fn in_declared_order(&self, paths: &mut [String]) {
        if paths.len() < 2 {
            return;
        }
        paths.sort_by_cached_key(|path| {
            let mut pattern = String::with_capacity(path.len());
            let mut in_index = false;
            for c in path.chars() {
                match c {
                    '[' => {
                        in_index = true;
                        pattern.push_str("[]");
                    }
                    ']' => in_index = false,
                    _ if in_index => {}
                    _ => pattern.push(c),
                }
            }
            self.fields
                .iter()
                .position(|f| f.path == pattern)
                .unwrap_or(usize::MAX)
        });
    }
}

impl Fields {
    /// [`open`](Self::open) on the text, with what [`scan`](super::scan::scan) found in
    /// it: each sealed value replaced by the JSON text it holds (authenticated, so the
    /// text this store sealed) or by its field's replacement.
    pub(crate) fn splice(
        &self,
        json: &str,
        scan: &Scan,
        subject: &str,
        cipher: Option<&Aes256Gcm>,
    ) -> Result<(String, Vec<String>), (String, String)> {
        let mut out = String::with_capacity(json.len());
        let mut redacted = Vec::new();
        let mut at = 0;
        for sealed in &scan.sealed {
            let (Some(before), Some(text)) = (
                json.get(at..sealed.span.start),
                json.get(sealed.text.clone()),
            ) else {
                return Err((sealed.path.clone(), "the record's text was misread".into()));
            };
            out.push_str(before);
            match cipher {
                Some(cipher) => open_into(cipher, subject, &sealed.path, text, &mut out)
                    .map_err(|m| (sealed.path.clone(), m))?,
                None => {
                    out.push_str(
                        self.fields
                            .iter()
                            .find(|f| f.path == sealed.pattern)
                            .map_or("null", |f| f.replacement_text),
                    );
                    redacted.push(sealed.path.clone());
                }
            }
            at = sealed.span.end;
        }
        out.push_str(json.get(at..).unwrap_or_default());
        self.in_declared_order(&mut redacted);
        Ok((out, redacted))
    }
}

/// Whether the text of a record holds a value in the stored form: a record without one
/// is read as it is, without parsing.
pub(crate) fn find_encrypted(json: &str) -> bool {
    json.contains(super::ENCRYPTED_KEY)
}

type VisitMut<'f> = dyn FnMut(&str, &mut Value) -> Result<(), String> + 'f;

fn push_name(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

/// Calls `f` with each value `segments` reach in `value` and its concrete path
/// (`contacts[1].phone`). Values of another shape than the path expects are passed by.
fn visit_mut(
    value: &mut Value,
    segments: &[Segment],
    path: &mut String,
    f: &mut VisitMut<'_>,
) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        return f(path, value);
    };
    let Some(child) = value.as_object_mut().and_then(|o| o.get_mut(&first.name)) else {
        return Ok(());
    };
    let len = path.len();
    push_name(path, &first.name);
    let result = visit_lists_mut(child, first.lists, rest, path, f);
    path.truncate(len);
    result
}

fn visit_lists_mut(
    value: &mut Value,
    lists: usize,
    rest: &[Segment],
    path: &mut String,
    f: &mut VisitMut<'_>,
) -> Result<(), String> {
    if lists == 0 {
        return visit_mut(value, rest, path, f);
    }
    let Some(items) = value.as_array_mut() else {
        return Ok(());
    };
    for (i, item) in items.iter_mut().enumerate() {
        let len = path.len();
        path.push_str(&format!("[{i}]"));
        let result = visit_lists_mut(item, lists - 1, rest, path, f);
        path.truncate(len);
        result?;
    }
    Ok(())
}

type OpenVisit<'f> = dyn FnMut(&str, &str, &mut Value) -> Result<bool, (String, String)> + 'f;

/// Every value of the tree, with its concrete path and its pattern (`contacts[].phone`),
/// depth first; `f` returns whether it took the value (then its inside is not walked).
fn open_tree(
    value: &mut Value,
    path: &mut String,
    pattern: &mut String,
    f: &mut OpenVisit<'_>,
) -> Result<(), (String, String)> {
    if !path.is_empty() && f(path, pattern, value)? {
        return Ok(());
    }
    match value {
        Value::Object(map) => {
            for (name, child) in map.iter_mut() {
                let (len, plen) = (path.len(), pattern.len());
                push_name(path, name);
                push_name(pattern, name);
                let result = open_tree(child, path, pattern, f);
                path.truncate(len);
                pattern.truncate(plen);
                result?;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let (len, plen) = (path.len(), pattern.len());
                path.push_str(&format!("[{i}]"));
                pattern.push_str("[]");
                let result = open_tree(item, path, pattern, f);
                path.truncate(len);
                pattern.truncate(plen);
                result?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::KeyInit;
    use serde_json::json;

    static FIELDS: &[PersonalField] = &[
        PersonalField::new("email", "\"\""),
        PersonalField::new("name", "\"(erased)\""),
        PersonalField::new("contacts[].phone", "null"),
        PersonalField::new("address", "{}"),
    ];

    fn fields() -> Fields {
        Fields::compile("customer_id", FIELDS).unwrap()
    }

    fn data() -> Value {
        json!({
            "customer_id": "c-1",
            "email": "ada@example.com",
            "name": null,
            "contacts": [{"phone": "555-0100", "kind": "home"}, {"kind": "none"}, {"phone": "555-0199"}],
            "address": {"street": "1 Main St", "city": "Springfield"},
            "plan": "gold"
        })
    }

    #[test]
    fn sealed_fields_open_to_the_same_data() {
        let cipher = Aes256Gcm::new(&[7u8; 32].into());
        let f = fields();
        let mut d = data();
        f.seal(&mut d, "c-1", &cipher).unwrap();
        let text = d.to_string();
        for plain in [
            "ada@example.com",
            "555-0100",
            "555-0199",
            "Main St",
            "Springfield",
        ] {
            assert!(!text.contains(plain), "{plain} in {text}");
        }
        assert!(text.contains("gold") && text.contains("c-1") && text.contains("home"));
        assert_eq!(d["name"], Value::Null, "null stays null");
        assert!(find_encrypted(&text));
        let redacted = f.open(&mut d, "c-1", Some(&cipher)).unwrap();
        assert!(redacted.is_empty());
        assert_eq!(d, data());
    }

    #[test]
    fn without_a_key_each_value_becomes_its_replacement() {
        let cipher = Aes256Gcm::new(&[7u8; 32].into());
        let f = fields();
        let mut d = data();
        f.seal(&mut d, "c-1", &cipher).unwrap();
        let redacted = f.open(&mut d, "c-1", None).unwrap();
        // As declared (and as `redact` lists them), not as the record's keys sort.
        assert_eq!(
            redacted,
            ["email", "contacts[0].phone", "contacts[2].phone", "address"]
        );
        assert_eq!(d["email"], json!(""));
        assert_eq!(d["name"], Value::Null);
        assert_eq!(d["address"], json!({}));
        assert_eq!(d["contacts"][0], json!({"phone": null, "kind": "home"}));
        assert_eq!(d["plan"], json!("gold"));
    }

    #[test]
    fn redacting_replaces_every_declared_value_as_a_reader_would_see_it() {
        let f = fields();
        let mut d = data();
        let redacted = f.redact(&mut d);
        assert_eq!(
            redacted,
            ["email", "contacts[0].phone", "contacts[2].phone", "address"]
        );
        assert_eq!(d["email"], json!(""));
        assert_eq!(d["name"], Value::Null, "null stays null, and is not listed");
        assert_eq!(d["contacts"][0], json!({"phone": null, "kind": "home"}));
        assert_eq!(d["address"], json!({}));
        assert_eq!(d["plan"], json!("gold"));
        assert!(f.covers_top_level("contacts") && !f.covers_top_level("plan"));
    }

    /// The fast path (scan and splice the text) gives what the slow one (a parsed
    /// value) gives, with a key and without, in compact and in spaced JSON (PostgreSQL's
    /// `jsonb` text).
    #[test]
    fn the_text_path_agrees_with_the_value_path() {
        let cipher = Aes256Gcm::new(&[7u8; 32].into());
        let f = fields();
        let mut d = data();
        d["contacts"][1]["note"] = json!({"$orkestra:personal": 3, "kept": true});
        f.seal(&mut d, "c-1", &cipher).unwrap();
        let compact = d.to_string();
        let spaced = compact.replace("\":", "\": ").replace(',', ", ");
        for text in [compact, spaced] {
            for key in [Some(&cipher), None] {
                let scan = super::super::scan::scan(&text, "customer_id").unwrap();
                assert_eq!(&text[scan.subject.clone().unwrap()], "c-1");
                let (fast, fast_redacted) = f.splice(&text, &scan, "c-1", key).unwrap();
                let mut slow: Value = serde_json::from_str(&text).unwrap();
                let slow_redacted = f.open(&mut slow, "c-1", key).unwrap();
                assert_eq!(
                    serde_json::from_str::<Value>(&fast).unwrap(),
                    slow,
                    "{text}"
                );
                assert_eq!(fast_redacted, slow_redacted);
            }
        }
    }

    #[test]
    fn a_value_moved_to_another_field_is_reported_at_its_path() {
        let cipher = Aes256Gcm::new(&[7u8; 32].into());
        let f = fields();
        let mut d = data();
        f.seal(&mut d, "c-1", &cipher).unwrap();
        let phone = d["contacts"][0]["phone"].clone();
        d["contacts"][2]["phone"] = phone;
        let (path, why) = f.open(&mut d, "c-1", Some(&cipher)).unwrap_err();
        assert_eq!(path, "contacts[2].phone");
        assert!(why.contains("does not authenticate"), "{why}");
    }

    #[test]
    fn sealing_what_is_plain_leaves_sealed_values_as_they_are() {
        let cipher = Aes256Gcm::new(&[7u8; 32].into());
        let f = fields();
        let mut d = data();
        // The email sealed already (by an append of the newer schema), the rest plain.
        let email = seal_value(&cipher, "c-1", "email", &d["email"]).unwrap();
        d["email"] = email.clone();
        assert_eq!(
            f.count_plain(&mut d).unwrap(),
            3,
            "two phones and the address"
        );
        assert_eq!(f.seal_plain(&mut d, "c-1", &cipher).unwrap(), 3);
        assert_eq!(d["email"], email, "untouched");
        assert_eq!(f.count_plain(&mut d).unwrap(), 0);
        assert_eq!(
            f.seal_plain(&mut d, "c-1", &cipher).unwrap(),
            0,
            "idempotent"
        );
        f.open(&mut d, "c-1", Some(&cipher)).unwrap();
        assert_eq!(d, data());
    }

    #[test]
    fn bad_descriptions_are_named() {
        let bad = |subject: &'static str, fields: &'static [PersonalField]| {
            PersonalData::new()
                .with_events([PersonalEvent::new("T.E", subject, fields)])
                .compile()
                .unwrap_err()
        };
        let e = bad("id", const { &[PersonalField::new("a..b", "null")] });
        assert!(e.contains("\"T.E\"") && e.contains("\"a..b\""), "{e}");
        let e = bad("id", const { &[PersonalField::new("id", "null")] });
        assert!(e.contains("cannot itself be personal"), "{e}");
        let e = bad("id", const { &[PersonalField::new("x", "not json")] });
        assert!(e.contains("\"x\"") && e.contains("not JSON"), "{e}");
        let e = bad("", const { &[] });
        assert!(e.contains("subject field is empty"), "{e}");
        let e = bad("id", const { &[PersonalField::new("x[", "null")] });
        assert!(e.contains("not a field name"), "{e}");
        let e = bad(
            "id",
            const { &[PersonalField::new("x", "1"), PersonalField::new("x", "2")] },
        );
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn the_subject_must_be_a_string() {
        assert_eq!(subject_of(&json!({"id": "a"}), "id"), Ok("a"));
        assert!(
            subject_of(&json!({"id": 3}), "id")
                .unwrap_err()
                .contains("a number")
        );
        assert!(
            subject_of(&json!({}), "id")
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            subject_of(&json!({"id": ""}), "id")
                .unwrap_err()
                .contains("empty")
        );
    }
}
