//! Comparing two resolved models: every change that breaks a reader or a sender, per the
//! modes of the guide's schema evolution chapter (`book/src/evolution.md`) (events both ways, commands one way).

use std::collections::{BTreeMap, BTreeSet};

use super::{Change, Rule, Subject};
use crate::diagnostic::Span;
use crate::model::*;

/// Whether the value at `path` is sealed under `paths`: one of them is the path itself or
/// an ancestor of it (sealed whole).
fn sealed_by(paths: &[String], path: &str) -> bool {
    paths.iter().any(|p| {
        path.strip_prefix(p.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
    })
}

/// Named struct types of a model, by (module, name).
struct Types<'a>(BTreeMap<(&'a str, &'a str), &'a TypeDef>);

impl<'a> Types<'a> {
    fn of(model: &'a Model) -> Self {
        Self(
            model
                .modules
                .iter()
                .flat_map(|m| {
                    m.types
                        .iter()
                        .map(move |t| ((m.ident.as_str(), t.name.as_str()), t))
                })
                .collect(),
        )
    }

    fn fields(&self, r: &TypeRef) -> &'a [Field] {
        match self
            .0
            .get(&(r.module.as_str(), r.name.as_str()))
            .map(|t| &t.kind)
        {
            Some(TypeKind::Struct(fields)) => fields,
            _ => &[],
        }
    }
}

pub(super) struct Comparer<'a> {
    old: &'a Model,
    new: &'a Model,
    old_types: Types<'a>,
    new_types: Types<'a>,
    pub(super) changes: Vec<Change>,
}

/// What the fields under comparison belong to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Event,
    Command,
}

impl<'a> Comparer<'a> {
    pub(super) fn new(old: &'a Model, new: &'a Model) -> Self {
        Self {
            old,
            new,
            old_types: Types::of(old),
            new_types: Types::of(new),
            changes: Vec::new(),
        }
    }

    fn report(&mut self, rule: Rule, span: &Span, subject: Subject, message: String) {
        self.changes.push(Change {
            rule,
            span: span.clone(),
            message,
            subject,
            help: None,
        });
    }

    /// Like `report`, with how to make the change safely.
    fn report_with_help(
        &mut self,
        rule: Rule,
        span: &Span,
        subject: Subject,
        message: String,
        help: String,
    ) {
        self.report(rule, span, subject, message);
        if let Some(last) = self.changes.last_mut() {
            last.help = Some(help);
        }
    }

    pub(super) fn run(&mut self) {
        let old = payloads(self.old);
        let new = payloads(self.new);
        for (name, o) in &old {
            let Some(n) = new.get(name) else {
                let (rule, what) = match o.kind {
                    PayloadKind::Event => (Rule::EventRemoved, "event"),
                    PayloadKind::Command => (Rule::CommandRemoved, "command"),
                };
                let message = match o.kind {
                    PayloadKind::Event => format!(
                        "event `{name}` was removed: stored events of this type can no longer be read"
                    ),
                    PayloadKind::Command => {
                        format!("command `{name}` was removed: old dispatchers still send it")
                    }
                };
                self.report(rule, &o.span, Subject::new(what, name, None), message);
                continue;
            };
            if o.kind != n.kind {
                // A command became an event or the reverse: to every reader the old one is gone.
                let rule = match o.kind {
                    PayloadKind::Event => Rule::EventRemoved,
                    PayloadKind::Command => Rule::CommandRemoved,
                };
                let message = format!(
                    "`{name}` changed from a {} to a {}",
                    kind_word(o.kind),
                    kind_word(n.kind)
                );
                self.report(
                    rule,
                    &n.span,
                    Subject::new(kind_word(o.kind), name, None),
                    message,
                );
                continue;
            }
            match o.kind {
                PayloadKind::Event => self.event(name, o, n),
                PayloadKind::Command => self.command(name, o, n),
            }
        }
        self.handlers();
        self.partitions();
        self.changes
            .sort_by(|a, b| (&a.span, a.rule, &a.message).cmp(&(&b.span, b.rule, &b.message)));
    }

    fn event(&mut self, name: &str, o: &Payload, n: &Payload) {
        let subject = |field: Option<&str>| Subject::new("event", name, field);
        self.tags(name, o, n);
        if o.topic != n.topic {
            self.report(
                Rule::EventTopicChanged,
                &n.span,
                subject(None),
                format!("the topic of event `{name}` changed from `{}` to `{}`: bindings and queues of the old topic lose it", o.topic, n.topic),
            );
        }
        if n.version < o.version {
            self.report(
                Rule::EventVersionDecreased,
                &n.span,
                subject(None),
                format!("the version of event `{name}` went down from {} to {}: stored events of version {} are newer than this release", o.version, n.version, o.version),
            );
        }
        // The chain the new release runs on data the old release wrote.
        let chain: Vec<&UpcastStep> = n
            .upcast
            .iter()
            .filter(|s| s.from >= o.version && s.from < n.version)
            .collect();
        if n.version > o.version && n.upcast.first().is_none_or(|s| s.from > o.version) {
            self.report(
                Rule::EventUpcastMissing,
                &n.span,
                subject(None),
                format!("event `{name}` went from version {} to {} without an `upcast` step from version {}: events stored by the previous release cannot be read", o.version, n.version, o.version),
            );
        }
        let custom = chain.iter().any(|s| matches!(s.kind, StepKind::Custom));
        // Old field names as the chain renames them, and the fields the chain adds.
        let mut renamed: BTreeMap<String, String> = BTreeMap::new();
        let mut added: BTreeSet<String> = BTreeSet::new();
        for step in &chain {
            if let StepKind::Declarative {
                renamed: r,
                added: a,
                ..
            } = &step.kind
            {
                for (from, to) in r {
                    let old_name = renamed
                        .iter()
                        .find(|(_, now)| *now == from)
                        .map(|(k, _)| k.clone())
                        .unwrap_or_else(|| from.clone());
                    renamed.insert(old_name, to.clone());
                }
                added.extend(a.iter().map(|(f, _)| f.clone()));
            }
        }
        let covered = |field: &str| custom || added.contains(field);
        // The previous release reads what this one writes: its required fields must stay.
        for of in &o.fields {
            let same = n.fields.iter().find(|f| f.name == of.name);
            if of.required && of.default.is_none() && same.is_none() {
                let old_name = &of.name;
                let (how, safe) = match renamed.get(old_name) {
                    Some(to) => (
                        format!("was renamed to `{to}`"),
                        format!(
                            "add `{to}` as an optional field and make `{old_name}` optional but keep writing it, deploy, then remove `{old_name}` in the next release"
                        ),
                    ),
                    None => (
                        "was removed".to_owned(),
                        format!(
                            "make `{old_name}` optional but keep writing it, deploy, then remove it in the next release"
                        ),
                    ),
                };
                self.report_with_help(
                    Rule::EventRequiredFieldRemoved,
                    &of.span,
                    subject(Some(old_name)),
                    format!("required field `{old_name}` of event `{name}` {how}: the previous release cannot read events this one writes"),
                    format!("the safe path: {safe}; or `--allow EVENT_REQUIRED_FIELD_REMOVED` when no older release still runs"),
                );
            }
        }
        // This release reads what the previous one stored.
        for nf in &n.fields {
            let before = o.fields.iter().find(|f| f.name == nf.name).or_else(|| {
                renamed
                    .iter()
                    .find(|(_, to)| **to == nf.name)
                    .and_then(|(from, _)| o.fields.iter().find(|f| f.name == *from))
            });
            match before {
                None => {
                    if nf.required && nf.default.is_none() && !covered(&nf.name) {
                        self.report(
                            Rule::EventFieldRequiredAdded,
                            &nf.span,
                            subject(Some(&nf.name)),
                            format!("new required field `{}` of event `{name}` has no default and no `added` step: events stored by the previous release lack it", nf.name),
                        );
                    }
                }
                Some(of) => {
                    if !of.required && nf.required && nf.default.is_none() && !covered(&nf.name) {
                        self.report(
                            Rule::EventFieldMadeRequired,
                            &nf.span,
                            subject(Some(&nf.name)),
                            format!("field `{}` of event `{name}` became required: events stored without it can no longer be read", nf.name),
                        );
                    }
                    if of.name == nf.name {
                        self.same_field(Mode::Event, name, &nf.name, &of.ty, &nf.ty, &nf.span);
                    }
                }
            }
        }
        self.personal(name, o, n, &renamed);
    }

    /// Personal fields made (a warning) and no longer (an error) personal, and a changed
    /// subject (an error), in event `name`. Paths are compared as the runtime seals
    /// them (`crate::personal`): a path still sealed inside a personal ancestor (or
    /// sealed before inside one) is no change; old names follow the chain's renames.
    fn personal(
        &mut self,
        name: &str,
        o: &Payload,
        n: &Payload,
        renamed: &BTreeMap<String, String>,
    ) {
        let old_paths: Vec<String> = crate::personal::paths(&self.old.modules, &o.fields)
            .fields
            .into_iter()
            .map(|f| match f.path.split_once(['.', '[']) {
                Some((top, rest)) => {
                    let sep = &f.path[top.len()..=top.len()];
                    let top = renamed.get(top).map_or(top, String::as_str);
                    format!("{top}{sep}{}", &rest)
                }
                None => renamed.get(&f.path).cloned().unwrap_or(f.path),
            })
            .collect();
        let new_paths: Vec<String> = crate::personal::paths(&self.new.modules, &n.fields)
            .fields
            .into_iter()
            .map(|f| f.path)
            .collect();
        let span_of = |path: &str| -> Span {
            let top = path.split(['.', '[']).next().unwrap_or(path);
            n.fields
                .iter()
                .find(|f| f.name == top)
                .map_or_else(|| n.span.clone(), |f| f.span.clone())
        };
        if let (Some(before), Some(now)) = (&o.personal_subject, &n.personal_subject)
            && before != now
            && renamed.get(before).is_none_or(|to| to != now)
        {
            self.report_with_help(
                Rule::PersonalSubjectChanged,
                &n.span,
                Subject::new("event", name, None),
                format!("the personal data subject of event `{name}` changed from `{before}` to `{now}`: each stored sealed value is bound to its subject, so readers looking it up by `{now}` can no longer open it"),
                format!("keep `personal_data: {{ subject: {before} }}`; a new subject needs a new event type"),
            );
        }
        for path in new_paths.iter().filter(|p| !sealed_by(&old_paths, p)) {
            self.report_with_help(
                Rule::PersonalAdded,
                &span_of(path),
                Subject::new("event", name, Some(path)),
                format!("field `{path}` of event `{name}` was made personal: events stored before hold it in plain text, which forgetting the subject cannot erase"),
                "run `orkestra store encrypt-personal --schemas <the new schemas>` once every process appends with this release: it seals the stored values in place".to_owned(),
            );
        }
        for path in old_paths.iter().filter(|p| !sealed_by(&new_paths, p)) {
            self.report_with_help(
                Rule::PersonalRemoved,
                &span_of(path),
                Subject::new("event", name, Some(path)),
                format!("field `{path}` of event `{name}` is no longer personal: events appended from now on hold it in plain text, which forgetting the subject cannot erase"),
                format!("keep `personal: true` on `{path}`; if it is not personal data after all, `--allow PERSONAL_REMOVED`"),
            );
        }
    }

    fn command(&mut self, name: &str, o: &Payload, n: &Payload) {
        let subject = |field: Option<&str>| Subject::new("command", name, field);
        if o.topic != n.topic {
            self.report(
                Rule::CommandTopicChanged,
                &n.span,
                subject(None),
                format!("the topic of command `{name}` changed from `{}` to `{}`: old dispatchers send it where no handler listens", o.topic, n.topic),
            );
        }
        self.command_fields(name, "", &o.fields, &n.fields);
    }

    /// Params (or the fields of a struct type inside one, under `prefix`).
    fn command_fields(&mut self, name: &str, prefix: &str, old: &[Field], new: &[Field]) {
        let subject = |field: &str| Subject::new("command", name, Some(field));
        for of in old {
            if !new.iter().any(|f| f.name == of.name) {
                let path = format!("{prefix}{}", of.name);
                self.report(
                    Rule::CommandParamRemoved,
                    &of.span,
                    subject(&path),
                    format!("param `{path}` of command `{name}` was removed: old dispatchers still send it, and unknown params are rejected"),
                );
            }
        }
        for nf in new {
            let path = format!("{prefix}{}", nf.name);
            match old.iter().find(|f| f.name == nf.name) {
                None if nf.required && nf.default.is_none() => self.report(
                    Rule::CommandParamRequiredAdded,
                    &nf.span,
                    subject(&path),
                    format!("new required param `{path}` of command `{name}` has no default: old dispatchers do not send it"),
                ),
                None => {}
                Some(of) => {
                    if !of.required && nf.required && nf.default.is_none() {
                        self.report(
                            Rule::CommandParamMadeRequired,
                            &nf.span,
                            subject(&path),
                            format!("param `{path}` of command `{name}` became required: old dispatchers may leave it out"),
                        );
                    }
                    for tightened in tightened(&of.rules, &nf.rules) {
                        self.report(
                            Rule::CommandRuleTightened,
                            &nf.span,
                            subject(&path),
                            format!("param `{path}` of command `{name}`: {tightened}, so values old dispatchers send may be refused"),
                        );
                    }
                    self.same_field(Mode::Command, name, &path, &of.ty, &nf.ty, &nf.span);
                }
            }
        }
    }

    /// A field present on both sides under one name: its type, enum values and (through
    /// named struct types) nested fields.
    fn same_field(&mut self, mode: Mode, name: &str, path: &str, old: &Ty, new: &Ty, span: &Span) {
        let (what, kind) = match mode {
            Mode::Event => ("field", "event"),
            Mode::Command => ("param", "command"),
        };
        let subject = Subject::new(kind, name, Some(path));
        match (old, new) {
            (Ty::List(o), Ty::List(n)) | (Ty::Map(o), Ty::Map(n)) => {
                self.same_field(mode, name, path, o, n, span);
            }
            (Ty::Named(o), Ty::Named(n)) if o.name == n.name && o.is_enum == n.is_enum => {
                if o.is_enum {
                    let removed: Vec<&String> = o
                        .variants
                        .iter()
                        .filter(|v| !n.variants.contains(v))
                        .collect();
                    let added: Vec<&String> = n
                        .variants
                        .iter()
                        .filter(|v| !o.variants.contains(v))
                        .collect();
                    let list = |vs: &[&String]| {
                        vs.iter()
                            .map(|v| format!("`{v}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    if !removed.is_empty() {
                        let (rule, why) = match mode {
                            Mode::Event => (
                                Rule::EventEnumValueRemoved,
                                "events stored with it can no longer be read",
                            ),
                            Mode::Command => (
                                Rule::CommandRuleTightened,
                                "old dispatchers may still send it",
                            ),
                        };
                        self.report(
                            rule,
                            span,
                            subject.clone(),
                            format!(
                                "{what} `{path}` of {kind} `{name}`: enum `{}` lost {}: {why}",
                                n.name,
                                list(&removed)
                            ),
                        );
                    }
                    if !added.is_empty() && mode == Mode::Event {
                        self.report(Rule::EventEnumValueAdded, span, subject, format!("{what} `{path}` of event `{name}`: enum `{}` gained {}: the previous release cannot read events that carry it", n.name, list(&added)));
                    }
                } else {
                    let old_fields = self.old_types.fields(o);
                    let new_fields = self.new_types.fields(n);
                    match mode {
                        Mode::Command => {
                            self.command_fields(name, &format!("{path}."), old_fields, new_fields)
                        }
                        Mode::Event => self.nested_event_fields(name, path, old_fields, new_fields),
                    }
                }
            }
            (o, n) if !same_shape(o, n) => {
                let rule = match mode {
                    Mode::Event => Rule::EventFieldTypeChanged,
                    Mode::Command => Rule::CommandParamTypeChanged,
                };
                let why = match mode {
                    Mode::Event => "stored events and the previous release read it as the old type",
                    Mode::Command => "old dispatchers send the old type",
                };
                self.report(
                    rule,
                    span,
                    subject,
                    format!(
                        "{what} `{path}` of {kind} `{name}` changed type from {} to {}: {why}",
                        ty_text(o),
                        ty_text(n)
                    ),
                );
            }
            _ => {}
        }
    }

    /// The fields of a struct type inside an event: no upcast steps reach inside, so the
    /// rules apply by name.
    fn nested_event_fields(&mut self, name: &str, path: &str, old: &[Field], new: &[Field]) {
        let subject = |field: &str| Subject::new("event", name, Some(field));
        for of in old {
            if of.required && of.default.is_none() && !new.iter().any(|f| f.name == of.name) {
                let p = format!("{path}.{}", of.name);
                self.report(Rule::EventRequiredFieldRemoved, &of.span, subject(&p), format!("required field `{p}` of event `{name}` was removed: the previous release cannot read events this one writes"));
            }
        }
        for nf in new {
            let p = format!("{path}.{}", nf.name);
            match old.iter().find(|f| f.name == nf.name) {
                None if nf.required && nf.default.is_none() => {
                    self.report(Rule::EventFieldRequiredAdded, &nf.span, subject(&p), format!("new required field `{p}` of event `{name}` has no default: events stored by the previous release lack it"));
                }
                None => {}
                Some(of) => {
                    if !of.required && nf.required && nf.default.is_none() {
                        self.report(Rule::EventFieldMadeRequired, &nf.span, subject(&p), format!("field `{p}` of event `{name}` became required: events stored without it can no longer be read"));
                    }
                    self.same_field(Mode::Event, name, &p, &of.ty, &nf.ty, &nf.span);
                }
            }
        }
    }

    /// A projection or process manager on both sides whose partition count changed: the
    /// store holds checkpoints per partition of the old count and refuses the new one.
    fn partitions(&mut self) {
        let old = workers(self.old);
        let new = workers(self.new);
        for (key, n) in &new {
            let Some(o) = old.get(key) else { continue };
            if o.partitions == n.partitions {
                continue;
            }
            let (from, to) = (o.partitions, n.partitions);
            let counted = |count: u32| {
                if count == 1 {
                    "1 partition".to_owned()
                } else {
                    format!("{count} partitions")
                }
            };
            let (message, rebuilt) = match n.kind {
                "projection" => (
                    format!(
                        "`partitions` of projection `{}` changed from {from} to {to}: its stored checkpoints were assigned to {}, so the runtime will refuse to start it with {to} until the projection is rebuilt",
                        n.full_name,
                        counted(from)
                    ),
                    format!("a rebuild of `{}`", n.name),
                ),
                _ => (
                    format!(
                        "`partitions` of process manager `{}` changed from {from} to {to}: the stored checkpoints of its feed `process-manager:{}` were assigned to {}, so the runtime will refuse to start it with {to} until the feed is rebuilt",
                        n.full_name,
                        n.name,
                        counted(from)
                    ),
                    format!("a rebuild of its feed `process-manager:{}`", n.name),
                ),
            };
            self.report_with_help(
                Rule::PartitionsChanged,
                n.span,
                Subject::new(n.kind, &n.full_name, None),
                message,
                format!(
                    "the safe path: keep `partitions: {from}`; or plan {rebuilt} over {} with this deploy and `--allow PARTITIONS_CHANGED`",
                    counted(to)
                ),
            );
        }
    }

    /// Tags removed from (an error) and added to (a warning) event `name`.
    fn tags(&mut self, name: &str, o: &Payload, n: &Payload) {
        for tag in o.tags.iter().filter(|t| !n.tags.contains(t)) {
            self.report_with_help(
                Rule::TagRemoved,
                &n.span,
                Subject::new("event", name, Some(tag.as_str())),
                format!("tag `{tag}` of event `{name}` was removed: events appended from now on are not indexed by it, so a decision reading events by `{tag}` no longer sees them"),
                format!("keep `{tag}` in the event's `tags` while any release reads it; remove it once no decision reads by it, with `--allow TAG_REMOVED`"),
            );
        }
        for tag in n.tags.iter().filter(|t| !o.tags.contains(t)) {
            self.report_with_help(
                Rule::TagAdded,
                &n.span,
                Subject::new("event", name, Some(tag.as_str())),
                format!("tag `{tag}` was added to event `{name}`: stored events of this type have no index entries; run `orkestra store reindex-tags`"),
                "until the index is built, a decision reading by this tag refuses to run".to_owned(),
            );
        }
    }

    fn handlers(&mut self) {
        let new: BTreeSet<(&str, &str)> = self
            .new
            .modules
            .iter()
            .flat_map(|m| {
                m.handlers
                    .iter()
                    .map(move |h| (m.namespace.as_str(), h.name.as_str()))
            })
            .collect();
        let mut removed = Vec::new();
        for m in &self.old.modules {
            for h in &m.handlers {
                if !new.contains(&(m.namespace.as_str(), h.name.as_str())) {
                    removed.push((format!("{}.{}", m.namespace, h.name), h.span.clone()));
                }
            }
        }
        for (name, span) in removed {
            self.report(
                Rule::HandlerRemoved,
                &span,
                Subject::new("handler", &name, None),
                format!("handler binding `{name}` was removed: on RabbitMQ its queue keeps the messages bound to it, and nobody reads them (delete the queue once it is drained)"),
            );
        }
    }
}

/// A worker whose partitions the store records: a projection that keeps a checkpoint, or
/// a process manager (whose feed always does), by the name its checkpoints are kept under.
struct Worker<'a> {
    /// `projection` or `process_manager`.
    kind: &'static str,
    /// `Namespace.Name`, for the subject.
    full_name: String,
    /// The schema's name.
    name: &'a str,
    partitions: u32,
    span: &'a Span,
}

/// Every worker of a model with stored checkpoints, by (kind, name): projection names
/// are unique across namespaces (a projection that moves to another namespace keeps its
/// checkpoint), and so are process manager names.
fn workers(model: &Model) -> BTreeMap<(&'static str, &str), Worker<'_>> {
    let mut out = BTreeMap::new();
    for m in &model.modules {
        for p in m.projections.iter().filter(|p| p.checkpoint) {
            out.insert(
                ("projection", p.name.as_str()),
                Worker {
                    kind: "projection",
                    full_name: format!("{}.{}", m.namespace, p.name),
                    name: &p.name,
                    partitions: p.partitions,
                    span: &p.span,
                },
            );
        }
        for p in &m.process_managers {
            out.insert(
                ("process_manager", p.name.as_str()),
                Worker {
                    kind: "process_manager",
                    full_name: format!("{}.{}", m.namespace, p.name),
                    name: &p.name,
                    partitions: p.partitions,
                    span: &p.span,
                },
            );
        }
    }
    out
}

fn payloads(model: &Model) -> BTreeMap<&str, &Payload> {
    model
        .modules
        .iter()
        .flat_map(|m| m.commands.iter().chain(&m.events))
        .map(|p| (p.type_name.as_str(), p))
        .collect()
}

fn kind_word(kind: PayloadKind) -> &'static str {
    match kind {
        PayloadKind::Event => "event",
        PayloadKind::Command => "command",
    }
}

/// Same type, ignoring the module a named type lives in.
fn same_shape(a: &Ty, b: &Ty) -> bool {
    match (a, b) {
        (Ty::List(x), Ty::List(y)) | (Ty::Map(x), Ty::Map(y)) => same_shape(x, y),
        (Ty::Named(x), Ty::Named(y)) => x.name == y.name && x.is_enum == y.is_enum,
        _ => a == b,
    }
}

fn ty_text(ty: &Ty) -> String {
    ty.schema_text(&|t| t.name.clone())
}

fn num(lit: &Literal) -> Option<f64> {
    match lit {
        Literal::Int(i) => Some(*i as f64),
        Literal::Float(f) => Some(*f),
        _ => None,
    }
}

fn lit_text(lit: &Literal) -> String {
    match lit {
        Literal::Str(s) => format!("\"{s}\""),
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => f.to_string(),
        Literal::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// Every way the rules of a param got stricter, as phrases.
fn tightened(old: &Rules, new: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    match (old.min.as_ref().and_then(num), new.min.as_ref()) {
        (None, Some(n)) => out.push(format!("`min: {}` was added", lit_text(n))),
        (Some(o), Some(n)) if num(n).is_some_and(|n| n > o) => {
            out.push(format!("`min` went up to {}", lit_text(n)))
        }
        _ => {}
    }
    match (old.max.as_ref().and_then(num), new.max.as_ref()) {
        (None, Some(n)) => out.push(format!("`max: {}` was added", lit_text(n))),
        (Some(o), Some(n)) if num(n).is_some_and(|n| n < o) => {
            out.push(format!("`max` went down to {}", lit_text(n)))
        }
        _ => {}
    }
    match (old.min_length, new.min_length) {
        (None, Some(n)) if n > 0 => out.push(format!("`min_length: {n}` was added")),
        (Some(o), Some(n)) if n > o => out.push(format!("`min_length` went up to {n}")),
        _ => {}
    }
    match (old.max_length, new.max_length) {
        (None, Some(n)) => out.push(format!("`max_length: {n}` was added")),
        (Some(o), Some(n)) if n < o => out.push(format!("`max_length` went down to {n}")),
        _ => {}
    }
    match (&old.pattern, &new.pattern) {
        (None, Some(p)) => out.push(format!("`pattern: {p}` was added")),
        (Some(o), Some(p)) if o != p => out.push(format!("`pattern` changed to {p}")),
        _ => {}
    }
    match (old.format, new.format) {
        (None, Some(f)) => out.push(format!("`format: {}` was added", format_text(f))),
        (Some(o), Some(f)) if o != f => out.push(format!("`format` changed to {}", format_text(f))),
        _ => {}
    }
    match (&old.one_of, &new.one_of) {
        (None, Some(_)) => out.push("`one_of` was added".into()),
        (Some(o), Some(n)) => {
            let gone: Vec<String> = o.iter().filter(|v| !n.contains(v)).map(lit_text).collect();
            if !gone.is_empty() {
                out.push(format!("`one_of` lost {}", gone.join(", ")));
            }
        }
        _ => {}
    }
    out
}

fn format_text(f: Format) -> &'static str {
    match f {
        Format::Email => "email",
        Format::Uuid => "uuid",
        Format::Url => "url",
    }
}
