//! Rendering: the resolved model to Rust source through the minijinja template in
//! `templates/`. Every identifier, path, type and literal is computed here (through
//! [`names`](crate::names)) into the typed context below; the template only places the
//! strings.

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::model::*;
use crate::names::{doc_attrs, pascal, shouty, snake, str_lit};

/// The runtime crate, as generated code names it.
const RT: &str = "::orkestra_runtime";
/// What only generated code uses: readers, rule checks and the crates it names.
const CG: &str = "::orkestra_runtime::codegen";
const TEMPLATE: &str = include_str!("../templates/module.rs.j2");

/// The template environment: strict about undefined values, loaded once.
pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    /// Loads the embedded template.
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
            .render(ModuleCtx::new(model, module))
            .map_err(|e| format!("template module.rs.j2: {e:#}"))
    }
}

/// One namespace: what `module.rs.j2` receives.
#[derive(Serialize)]
struct ModuleCtx {
    ident: String,
    doc: String,
    rt: &'static str,
    cg: &'static str,
    types: Vec<TypeCtx>,
    sections: [SectionCtx; 2],
    topics: Vec<TopicCtx>,
    handlers: Vec<HandlerCtx>,
    /// The `Handlers` struct; absent when the namespace has no binding.
    wiring: Option<WiringCtx>,
    aggregates: Vec<AggregateCtx>,
    projections: Vec<ProjectionCtx>,
    process_managers: Vec<ProcessCtx>,
    /// The namespace's `Wiring` struct (every binding); absent when it has none.
    all_wiring: Option<AllWiringCtx>,
}

/// `Wiring`: one public field per binding of every kind (handlers, aggregates,
/// projections, process managers), so leaving one out does not compile, and `start`.
#[derive(Serialize)]
struct AllWiringCtx {
    doc: String,
    fields: Vec<AllWiringField>,
    /// One subscription expression per handler binding.
    handler_subscriptions: Vec<String>,
    /// One expression per aggregate (its subscriptions, extended onto the handlers').
    aggregate_subscriptions: Vec<String>,
    /// One expression per projection, then per process manager.
    projections: Vec<String>,
    process_managers: Vec<String>,
}

/// A field of `Wiring`.
#[derive(Serialize)]
struct AllWiringField {
    ident: String,
    param: String,
    /// The trait, from the namespace module (`handlers::PlaceOrderHandler`).
    bound: String,
    /// The binding fn, from the namespace module (`handlers::place_order_handler`).
    ctor: String,
    /// `handler`, `aggregate`, `projection` or `process_manager`.
    kind: &'static str,
    doc: String,
}

/// A process manager: state, event, command and timer enums, context, trait and glue.
#[derive(Serialize)]
struct ProcessCtx {
    /// The trait (the process manager's name).
    name: String,
    doc: String,
    state: String,
    state_doc: String,
    fields: Vec<FieldCtx>,
    event: String,
    events: Vec<ProcessEventCtx>,
    /// Every event type name, for a stored event of another type.
    expected: String,
    command: String,
    commands: Vec<EventVariantCtx>,
    timer: String,
    timers: Vec<TimerCtx>,
    context: String,
    marker: String,
    test: String,
    fn_name: String,
    wire: String,
    stream: String,
    correlate_by: String,
    /// The Rust field of `correlate_by` in each event.
    key_field: String,
    /// `partitions`, when not 1 (the binding calls `with_partitions` only then).
    partitions: Option<u32>,
}

/// An event of a process manager, with its role.
#[derive(Serialize)]
struct ProcessEventCtx {
    ident: String,
    path: String,
    doc: String,
    role: &'static str,
}

/// A timer of a process manager.
#[derive(Serialize)]
struct TimerCtx {
    ident: String,
    wire: String,
    doc: String,
    ms: u64,
}

/// A projection: its event enum (as a handler binding's), trait and binding fn.
#[derive(Serialize)]
struct ProjectionCtx {
    /// The enum, patterns and names, made as for a handler binding of the same target.
    h: HandlerCtx,
    /// The private adapter from the trait to `ProjectionHandler`.
    adapter: String,
    batch: Option<u32>,
    /// `checkpoint: none` makes it false.
    checkpoint: bool,
    /// `partitions`, when not 1 (the binding calls `with_partitions` only then).
    partitions: Option<u32>,
}

/// An aggregate: its state, event enum, trait, command trait and the runtime glue.
#[derive(Serialize)]
struct AggregateCtx {
    /// The trait (the aggregate's name).
    name: String,
    doc: String,
    state: String,
    state_doc: String,
    fields: Vec<FieldCtx>,
    event: String,
    event_doc: String,
    variants: Vec<EventVariantCtx>,
    /// Every event type name, for a stored event of another type.
    expected: String,
    marker: String,
    command_trait: String,
    repository: String,
    test: String,
    fn_name: String,
    wire: String,
    shape: String,
    snapshot_every: String,
    conflict_retries: u32,
    commands: Vec<AggregateCommandCtx>,
}

/// A command of an aggregate.
#[derive(Serialize)]
struct AggregateCommandCtx {
    path: String,
    method: String,
    doc: String,
    /// The subscription's handler name: `Account.OpenAccount`.
    handler_wire: String,
    /// The `(text, value)` pairs of the stream template, as Rust.
    stream_parts: String,
}

/// A named type: a struct with fields or an enum of string values.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum TypeCtx {
    Struct {
        name: String,
        doc: String,
        fields: Vec<FieldCtx>,
        /// Whether any field is checked by `check_into` (rules or nested structs).
        checked: bool,
        unknown: UnknownCtx,
    },
    Enum {
        name: String,
        doc: String,
        variants: Vec<VariantCtx>,
    },
}

/// A value of an enum type.
#[derive(Serialize)]
struct VariantCtx {
    ident: String,
    wire: String,
    doc: String,
}

/// The `commands` or `events` module.
#[derive(Serialize)]
struct SectionCtx {
    name: &'static str,
    title: &'static str,
    items: Vec<PayloadCtx>,
}

/// A command or event struct.
#[derive(Serialize)]
struct PayloadCtx {
    /// `Command` or `Event` (also names the `<kind>Payload` marker trait).
    kind: &'static str,
    name: String,
    doc: String,
    type_name: String,
    topic: String,
    version: u32,
    custom_validate: bool,
    fields: Vec<FieldCtx>,
    /// Every wire name, as a list of literals.
    known: String,
    /// The required wire names, as a list of literals.
    required: String,
    /// Whether any field has a rule (else `check` has nothing to collect).
    checked: bool,
    /// Events read tolerantly (`ObjectReader::open`), commands strictly.
    tolerant: bool,
    /// Commands: statements recording unknown keys nested in struct-typed params.
    unknown_checks: Vec<String>,
    /// Events with `upcast` steps.
    upcast: Option<UpcastCtx>,
}

/// An event's upcast steps.
#[derive(Serialize)]
struct UpcastCtx {
    /// The version the first step reads.
    first: u32,
    /// One `UpcastStep` expression per step, oldest first.
    steps: Vec<String>,
    /// The custom steps' trait (`OrderPlacedUpcast`), when there are any.
    custom_trait: Option<String>,
    trait_doc: String,
    custom: Vec<CustomStepCtx>,
}

/// A method of the custom steps' trait.
#[derive(Serialize)]
struct CustomStepCtx {
    method: String,
    doc: String,
}

/// A field of a type, command or event.
#[derive(Serialize)]
struct FieldCtx {
    ident: String,
    wire: String,
    doc: String,
    /// Its Rust type as declared (`Option<..>` when optional).
    declared: String,
    /// The type inside the `Option`.
    inner: String,
    optional: bool,
    required: bool,
    default_fn: String,
    default_expr: Option<String>,
    serde: String,
    /// The statements that check a `v: &<borrowed>`; `None` when nothing is checked.
    rules: Option<String>,
    /// The name of the payload's check function for this field (`check_quantity`).
    check_fn: String,
    check_doc: String,
    /// The type the check function takes by reference (`str` for strings, `[T]` for lists).
    borrowed: String,
}

/// A struct type's check for unknown keys (its JSON is read tolerantly by serde; commands
/// that use it check with this).
#[derive(Serialize)]
struct UnknownCtx {
    /// Every wire name, as a list of literals.
    known: String,
    /// Statements walking nested struct fields of `map`.
    nested: Vec<String>,
}

/// A topic constant.
#[derive(Serialize)]
struct TopicCtx {
    doc: String,
    name: String,
    value: String,
}

/// What a binding receives, and so which trait method it gets.
#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum BindingKind {
    Command,
    Event,
    Events,
    Topic,
    DeadLetters,
}

/// A handler binding: its trait, its constructor and (events, topic) its enum.
#[derive(Serialize)]
struct HandlerCtx {
    kind: BindingKind,
    name: String,
    wire: String,
    fn_name: String,
    doc: String,
    /// What the handler method receives (a payload, `Event<..>` or the generated enum).
    message_ty: String,
    patterns: String,
    variants: Vec<EventVariantCtx>,
    max_retries: Option<u32>,
    concurrency: Option<u16>,
    /// The `partition_by` name as a string literal.
    partition_by: Option<String>,
    retry_delay_ms: Option<u64>,
    retry_delay_max_ms: Option<u64>,
    /// The `retry_backoff` factor as a float literal.
    retry_backoff: Option<String>,
    /// `once: true`.
    once: bool,
    enum_doc: String,
    /// The accepted type names, for `PayloadError::WrongType::expected`.
    expected: String,
}

/// One variant of a multi-event or wildcard binding's enum.
#[derive(Serialize)]
struct EventVariantCtx {
    ident: String,
    path: String,
    doc: String,
}

/// `Handlers`: one public field per binding, so leaving one out does not compile.
#[derive(Serialize)]
struct WiringCtx {
    doc: String,
    fields: Vec<WiringField>,
}

/// A field of `Handlers`.
#[derive(Serialize)]
struct WiringField {
    /// The field, named like the binding's constructor.
    ident: String,
    /// The generic parameter holding the implementation.
    param: String,
    /// The binding's trait.
    bound: String,
    doc: String,
}

fn docs(description: Option<&str>, fallback: &str) -> String {
    doc_attrs(description.unwrap_or(fallback))
}

impl ModuleCtx {
    fn new(model: &Model, module: &Module) -> Self {
        let here = module.ident.as_str();
        let payloads = |items: &[Payload]| items.iter().map(|p| payload_ctx(p, here)).collect();
        let handlers: Vec<HandlerCtx> = module
            .handlers
            .iter()
            .map(|h| handler_ctx(model, h, here))
            .collect();
        Self {
            ident: module.ident.clone(),
            doc: docs(
                module.description.as_deref(),
                &format!("Namespace `{}`.", module.namespace),
            ),
            rt: RT,
            cg: CG,
            types: module.types.iter().map(|t| type_ctx(t, here)).collect(),
            sections: [
                SectionCtx {
                    name: "commands",
                    title: "Commands",
                    items: payloads(&module.commands),
                },
                SectionCtx {
                    name: "events",
                    title: "Events",
                    items: payloads(&module.events),
                },
            ],
            topics: module
                .commands
                .iter()
                .chain(&module.events)
                .map(|p| TopicCtx {
                    doc: doc_attrs(&format!("Topic of `{}`.", p.type_name)),
                    name: shouty(&p.name),
                    value: str_lit(&p.topic),
                })
                .collect(),
            wiring: wiring_ctx(module, &handlers),
            handlers,
            aggregates: module
                .aggregates
                .iter()
                .map(|a| aggregate_ctx(model, a, here))
                .collect(),
            projections: module
                .projections
                .iter()
                .map(|p| projection_ctx(model, p, here))
                .collect(),
            process_managers: module
                .process_managers
                .iter()
                .map(|p| process_ctx(model, p, here))
                .collect(),
            all_wiring: None,
        }
        .with_all_wiring(module)
    }

    /// The `Wiring` struct over every binding rendered above. Field and parameter names
    /// are the binding fns and traits; one taken by another kind gets the kind appended.
    fn with_all_wiring(mut self, module: &Module) -> Self {
        let mut bindings: Vec<(&'static str, &'static str, String, String)> = Vec::new();
        bindings.extend(
            self.handlers
                .iter()
                .map(|h| ("handler", "handlers", h.name.clone(), h.fn_name.clone())),
        );
        bindings.extend(
            self.aggregates
                .iter()
                .map(|a| ("aggregate", "aggregates", a.name.clone(), a.fn_name.clone())),
        );
        bindings.extend(self.projections.iter().map(|p| {
            (
                "projection",
                "projections",
                p.h.name.clone(),
                p.h.fn_name.clone(),
            )
        }));
        bindings.extend(self.process_managers.iter().map(|p| {
            (
                "process_manager",
                "process_managers",
                p.name.clone(),
                p.fn_name.clone(),
            )
        }));
        if bindings.is_empty() {
            return self;
        }
        let mut idents = std::collections::HashSet::new();
        let mut params = std::collections::HashSet::new();
        let mut fields = Vec::new();
        for (kind, section, name, ctor) in bindings {
            let bare = ctor.trim_start_matches("r#").to_owned();
            let ident = if idents.insert(ctor.clone()) {
                ctor.clone()
            } else {
                let renamed = format!("{bare}_{kind}");
                idents.insert(renamed.clone());
                renamed
            };
            let trait_name = name.trim_start_matches("r#");
            let mut param = format!("{trait_name}Impl");
            if !params.insert(param.clone()) {
                param = format!("{trait_name}{}Impl", pascal(kind));
                params.insert(param.clone());
            }
            let what = match kind {
                "handler" => "handler binding",
                "aggregate" => "aggregate",
                "projection" => "projection",
                _ => "process manager",
            };
            fields.push(AllWiringField {
                doc: doc_attrs(&format!(
                    "The implementation of [`{section}::{trait_name}`], the {what}."
                )),
                ident,
                param,
                bound: format!("{section}::{name}"),
                ctor: format!("{section}::{ctor}"),
                kind,
            });
        }
        let list = fields
            .iter()
            .map(|f| format!("`{}`", f.bound))
            .collect::<Vec<_>>()
            .join(", ");
        let of_kind = |kind: &str, shape: &dyn Fn(&AllWiringField) -> String| {
            fields
                .iter()
                .filter(|f| f.kind == kind)
                .map(shape)
                .collect::<Vec<_>>()
        };
        let handler_subscriptions = of_kind("handler", &|f| {
            format!("self::{}(self.{})", f.ctor, f.ident)
        });
        let aggregate_subscriptions = of_kind("aggregate", &|f| {
            format!("self::{}(self.{}, store.clone())", f.ctor, f.ident)
        });
        let projections = of_kind("projection", &|f| {
            format!("self::{}(self.{})", f.ctor, f.ident)
        });
        let process_managers = of_kind("process_manager", &|f| {
            format!("self::{}(self.{}, store.clone())", f.ctor, f.ident)
        });
        self.all_wiring = Some(AllWiringCtx {
            doc: doc_attrs(&format!(
                "Every binding of `{}`, one field each ({list}): a missing field is a compile error.\n\n\
                 `Wiring {{ .. }}.start(&bus, &store).await?` subscribes the handlers and aggregates, then starts the projections and process managers; \
                 stop what it returns to stop them.",
                module.namespace
            )),
            fields,
            handler_subscriptions,
            aggregate_subscriptions,
            projections,
            process_managers,
        });
        self
    }
}

/// A projection renders like a handler binding of the same target (the same enum and
/// `EventSet`), with its own trait, binding fn and `batch`.
fn projection_ctx(model: &Model, p: &Projection, here: &str) -> ProjectionCtx {
    let as_binding = Handler {
        name: p.name.clone(),
        span: p.span.clone(),
        description: Some(
            p.description
                .clone()
                .unwrap_or_else(|| format!("Projection `{}`.", p.name)),
        ),
        target: p.target.clone(),
        max_retries: p.max_retries,
        concurrency: None,
        partition_by: None,
        retry: RetryDelays::default(),
        once: false,
        emits: Vec::new(),
    };
    let h = handler_ctx(model, &as_binding, here);
    ProjectionCtx {
        adapter: format!("{}Binding", h.name.trim_start_matches("r#")),
        batch: p.batch,
        checkpoint: p.checkpoint,
        partitions: (p.partitions != 1).then_some(p.partitions),
        h,
    }
}

/// The path of an item of module `target`'s `section`, seen from a sibling section of
/// module `here`: `super::types::X` in the same namespace, fully qualified otherwise.
fn item_path(here: &str, target: &str, section: &str, name: &str) -> String {
    if here == target {
        format!("super::{section}::{}", pascal(name))
    } else {
        format!("super::super::{target}::{section}::{}", pascal(name))
    }
}

/// The Rust type of a schema type, seen from inside `<here>::{types,commands,events}`.
fn rust_ty(ty: &Ty, here: &str) -> String {
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
fn borrowed_ty(ty: &Ty, here: &str) -> String {
    match ty {
        Ty::String => "str".into(),
        Ty::List(inner) => format!("[{}]", rust_ty(inner, here)),
        other => rust_ty(other, here),
    }
}

/// A Rust expression for a literal of `ty`.
fn literal_expr(lit: &Literal, ty: &Ty, here: &str) -> String {
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
fn rule_literal(lit: &Literal) -> String {
    match lit {
        Literal::Str(s) => str_lit(s),
        Literal::Int(i) => format!("{i}i64"),
        Literal::Float(f) => format!("{f:?}f64"),
        other => format!("{other:?}"),
    }
}

/// Rule statements for a value `v: &<borrowed type>` reported at path expression `path`.
fn rule_statements(field: &Field, path: &str) -> Vec<String> {
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
fn nested_checks(ty: &Ty, value: &str, path: &str) -> Vec<String> {
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

fn has_struct(ty: &Ty) -> bool {
    match ty {
        Ty::Named(t) => !t.is_enum,
        Ty::List(inner) | Ty::Map(inner) => has_struct(inner),
        _ => false,
    }
}

/// A field of `owner`; `in_type` fields report rule paths under their parent's path.
fn field_ctx(owner: &str, field: &Field, in_type: bool, here: &str) -> FieldCtx {
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
        doc: docs(field.description.as_deref(), &format!("`{}`", field.name)),
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

fn type_ctx(t: &TypeDef, here: &str) -> TypeCtx {
    let name = pascal(&t.name);
    let doc = docs(t.description.as_deref(), &format!("Type `{}`.", t.name));
    match &t.kind {
        TypeKind::Struct(t_fields) => {
            let fields: Vec<FieldCtx> = t_fields
                .iter()
                .map(|f| field_ctx(&name, f, true, here))
                .collect();
            TypeCtx::Struct {
                checked: fields.iter().any(|f| f.rules.is_some()),
                unknown: UnknownCtx {
                    known: fields
                        .iter()
                        .map(|f| f.wire.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    nested: t_fields
                        .iter()
                        .filter_map(|f| {
                            let walk = unknown_walker(&f.ty, here)?;
                            Some(format!(
                                "{CG}::unknown_in_field(map, {}, path, out, {walk});",
                                str_lit(&f.name)
                            ))
                        })
                        .collect(),
                },
                name,
                doc,
                fields,
            }
        }
        TypeKind::Enum(values) => TypeCtx::Enum {
            name,
            doc,
            variants: values
                .iter()
                .map(|v| VariantCtx {
                    ident: pascal(v),
                    wire: str_lit(v),
                    doc: doc_attrs(&format!("`{v}`")),
                })
                .collect(),
        },
    }
}

fn payload_ctx(p: &Payload, here: &str) -> PayloadCtx {
    let name = pascal(&p.name);
    let fields: Vec<FieldCtx> = p
        .fields
        .iter()
        .map(|f| field_ctx(&name, f, false, here))
        .collect();
    let wire_names = |pred: &dyn Fn(&FieldCtx) -> bool| {
        fields
            .iter()
            .filter(|f| pred(f))
            .map(|f| f.wire.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = match p.kind {
        PayloadKind::Command => "Command",
        PayloadKind::Event => "Event",
    };
    PayloadCtx {
        kind,
        doc: docs(
            p.description.as_deref(),
            &format!("{kind} `{}`.", p.type_name),
        ),
        type_name: str_lit(&p.type_name),
        topic: str_lit(&p.topic),
        version: p.version,
        custom_validate: p.custom_validate,
        known: wire_names(&|_| true),
        required: wire_names(&|f| f.required),
        checked: fields.iter().any(|f| f.rules.is_some()),
        tolerant: p.kind == PayloadKind::Event,
        unknown_checks: if p.kind == PayloadKind::Command {
            p.fields
                .iter()
                .filter_map(|f| {
                    let walk = unknown_walker(&f.ty, here)?;
                    Some(format!(
                        "reader.check_unknown({}, {walk});",
                        str_lit(&f.name)
                    ))
                })
                .collect()
        } else {
            Vec::new()
        },
        upcast: upcast_ctx(p),
        fields,
        name,
    }
}

/// A callable `(v: &Value, path: &str, out: &mut Vec<String>)` recording the unknown
/// keys inside a value of `ty` (a struct type's `unknown_into`, or a closure walking lists
/// and maps down to one); `None` when `ty` holds no struct type.
fn unknown_walker(ty: &Ty, here: &str) -> Option<String> {
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
fn json_expr(lit: &Literal) -> String {
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

/// The `Payload::upcast` of an event with steps.
fn upcast_ctx(p: &Payload) -> Option<UpcastCtx> {
    if p.upcast.is_empty() {
        return None;
    }
    let name = pascal(&p.name);
    let custom_trait = format!("{name}Upcast");
    let has_custom = p.upcast.iter().any(|s| matches!(s.kind, StepKind::Custom));
    let steps = p
        .upcast
        .iter()
        .map(|step| match &step.kind {
            StepKind::Custom => format!(
                "{RT}::UpcastStep::Custom(<Self as self::{custom_trait}>::upcast_v{})",
                step.from
            ),
            StepKind::Declarative {
                renamed,
                removed,
                added,
            } => format!(
                "{RT}::UpcastStep::Declarative {{ renamed: &[{}], removed: &[{}], added: &[{}] }}",
                renamed
                    .iter()
                    .map(|(old, new)| format!("({}, {})", str_lit(old), str_lit(new)))
                    .collect::<Vec<_>>()
                    .join(", "),
                removed
                    .iter()
                    .map(|f| str_lit(f))
                    .collect::<Vec<_>>()
                    .join(", "),
                added
                    .iter()
                    .map(|(f, lit)| format!("({}, || {})", str_lit(f), json_expr(lit)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        })
        .collect();
    Some(UpcastCtx {
        first: p.upcast[0].from,
        steps,
        trait_doc: doc_attrs(&format!(
            "The custom upcast steps of event `{}`: implement it for [`{name}`]. Each method \
             reads data of one older version and returns it as the next version.",
            p.type_name
        )),
        custom: p
            .upcast
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Custom))
            .map(|s| CustomStepCtx {
                method: format!("upcast_v{}", s.from),
                doc: doc_attrs(&format!(
                    "Upcasts data of version {} to version {}.",
                    s.from,
                    s.from + 1
                )),
            })
            .collect(),
        custom_trait: has_custom.then_some(custom_trait),
    })
}

fn handler_ctx(model: &Model, h: &Handler, here: &str) -> HandlerCtx {
    let name = pascal(&h.name);
    let event_path = |r: &PayloadRef| item_path(here, &r.module, "events", &r.name);
    let enum_name = format!("{name}Event");
    let (kind, message_ty, patterns, variants): (_, _, Vec<String>, &[PayloadRef]) = match &h.target
    {
        HandlerTarget::Command(r) => (
            BindingKind::Command,
            item_path(here, &r.module, "commands", &r.name),
            Vec::new(),
            &[],
        ),
        HandlerTarget::Event(r) => (
            BindingKind::Event,
            format!("{RT}::Event<{}>", event_path(r)),
            Vec::new(),
            &[],
        ),
        HandlerTarget::Events(refs) => (
            BindingKind::Events,
            enum_name,
            refs.iter()
                .map(|r| format!("{}::TOPIC", event_path(r)))
                .collect(),
            refs,
        ),
        HandlerTarget::Topic { pattern, matched } => (
            BindingKind::Topic,
            enum_name,
            vec![str_lit(pattern)],
            matched,
        ),
        HandlerTarget::DeadLetters => (
            BindingKind::DeadLetters,
            format!("{RT}::DeadLetter"),
            Vec::new(),
            &[],
        ),
    };
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
    HandlerCtx {
        kind,
        wire: str_lit(&h.name),
        fn_name: snake(&h.name),
        doc: doc_attrs(&doc),
        message_ty,
        patterns: patterns.join(", "),
        expected: str_lit(
            &variants
                .iter()
                .map(|r| type_name(model, r))
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        variants: variants
            .iter()
            .map(|r| EventVariantCtx {
                ident: pascal(&r.name),
                path: event_path(r),
                doc: doc_attrs(&format!("`{}`", type_name(model, r))),
            })
            .collect(),
        max_retries: h.max_retries,
        concurrency: h.concurrency,
        partition_by: h.partition_by.as_ref().map(|k| str_lit(&k.field)),
        retry_delay_ms: h.retry.delay_ms,
        retry_delay_max_ms: h.retry.max_ms,
        retry_backoff: h.retry.backoff.map(|f| format!("{f:?}_f64")),
        once: h.once,
        enum_doc: doc_attrs(&format!("What `{}` receives.", h.name)),
        name,
    }
}

/// The `Handlers` struct of a namespace with bindings. Its generic parameters are named
/// after the traits (`PlaceOrderHandlerImpl`) and bounded through `self::`, so no
/// binding name can shadow a bound.
fn wiring_ctx(module: &Module, handlers: &[HandlerCtx]) -> Option<WiringCtx> {
    if handlers.is_empty() {
        return None;
    }
    let list = module
        .handlers
        .iter()
        .map(|h| format!("`{}`", h.name))
        .collect::<Vec<_>>()
        .join(", ");
    Some(WiringCtx {
        doc: doc_attrs(&format!(
            "Every binding of `{}`, one field each ({list}): a missing field is a compile error.\n\n\
             `bus.subscribe_all(Handlers {{ .. }}.subscriptions()).await?` subscribes them all.",
            module.namespace
        )),
        fields: handlers
            .iter()
            .map(|h| WiringField {
                ident: h.fn_name.clone(),
                param: format!("{}Impl", h.name.trim_start_matches("r#")),
                bound: h.name.clone(),
                doc: doc_attrs(&format!("The implementation of [`{}`].", h.name)),
            })
            .collect(),
    })
}

fn type_name(model: &Model, r: &PayloadRef) -> String {
    model
        .modules
        .iter()
        .find(|m| m.ident == r.module)
        .map_or_else(|| r.name.clone(), |m| format!("{}.{}", m.namespace, r.name))
}

fn aggregate_ctx(model: &Model, a: &Aggregate, here: &str) -> AggregateCtx {
    let name = pascal(&a.name);
    let state = format!("{name}State");
    let event = format!("{name}Event");
    let event_path = |r: &PayloadRef| item_path(here, &r.module, "events", &r.name);
    let commands = a
        .commands
        .iter()
        .map(|r| {
            let path = item_path(here, &r.module, "commands", &r.name);
            let stream_parts = a
                .stream
                .iter()
                .map(|part| match part {
                    StreamPart::Text(text) => {
                        format!("({}, ::core::option::Option::None)", str_lit(text))
                    }
                    StreamPart::Param(param) => format!(
                        "({}, ::core::option::Option::Some(&command.params.{} as &dyn ::core::fmt::Display))",
                        str_lit(param),
                        snake(param)
                    ),
                })
                .collect::<Vec<_>>()
                .join(", ");
            AggregateCommandCtx {
                doc: doc_attrs(&format!(
                    "Decides `{}`: the events to append, none, or an error \
                     (`HandlerError::Reject`: nothing is appended and the command is rejected).",
                    type_name(model, r)
                )),
                method: snake(&r.name),
                handler_wire: str_lit(&format!("{}.{}", a.name, r.name)),
                stream_parts,
                path,
            }
        })
        .collect();
    let owner = state.clone();
    AggregateCtx {
        doc: docs(
            a.description.as_deref(),
            &format!("Aggregate `{}`.", a.name),
        ),
        state_doc: doc_attrs(&format!(
            "The state of `{}`: the fold of its stream with `apply`, starting from `Default` \
             (each field's schema default, `None` where it has none).",
            a.name
        )),
        fields: a
            .state
            .iter()
            .map(|f| field_ctx(&owner, f, false, here))
            .collect(),
        event_doc: doc_attrs(&format!("The events of `{}`.", a.name)),
        variants: a
            .events
            .iter()
            .map(|r| EventVariantCtx {
                ident: pascal(&r.name),
                path: event_path(r),
                doc: doc_attrs(&format!("`{}`", type_name(model, r))),
            })
            .collect(),
        expected: str_lit(
            &a.events
                .iter()
                .map(|r| type_name(model, r))
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        marker: format!("{name}Aggregate"),
        command_trait: format!("{name}Command"),
        repository: format!("{name}Repository"),
        test: format!("{name}Test"),
        fn_name: snake(&a.name),
        wire: str_lit(&a.name),
        shape: str_lit(&state_shape(model, a)),
        snapshot_every: match a.snapshot_every {
            Some(n) => format!("::core::option::Option::Some({n})"),
            None => "::core::option::Option::None".into(),
        },
        conflict_retries: a.conflict_retries,
        commands,
        state,
        event,
        name,
    }
}

fn process_ctx(model: &Model, p: &ProcessManager, here: &str) -> ProcessCtx {
    let name = pascal(&p.name);
    let state = format!("{name}State");
    let roles = [
        (&p.starts_on, "Start", "starts an instance"),
        (&p.handles, "Handle", "handled by a running instance"),
        (&p.ends_on, "End", "handled, then the instance is finished"),
    ];
    let events: Vec<ProcessEventCtx> = roles
        .iter()
        .flat_map(|(refs, role, what)| {
            refs.iter().map(move |r| ProcessEventCtx {
                ident: pascal(&r.name),
                path: item_path(here, &r.module, "events", &r.name),
                doc: doc_attrs(&format!("`{}`: {what}.", type_name(model, r))),
                role,
            })
        })
        .collect();
    ProcessCtx {
        doc: docs(
            p.description.as_deref(),
            &format!("Process manager `{}`.", p.name),
        ),
        state_doc: doc_attrs(&format!(
            "The state of one `{}` instance, recorded after each step; a new instance starts \
             from `Default` (each field's schema default, `None` where it has none).",
            p.name
        )),
        fields: p
            .state
            .iter()
            .map(|f| field_ctx(&state, f, false, here))
            .collect(),
        event: format!("{name}Event"),
        expected: str_lit(
            &roles
                .iter()
                .flat_map(|(refs, _, _)| refs.iter())
                .map(|r| type_name(model, r))
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        events,
        command: format!("{name}Command"),
        commands: p
            .dispatches
            .iter()
            .map(|r| EventVariantCtx {
                ident: pascal(&r.name),
                path: item_path(here, &r.module, "commands", &r.name),
                doc: doc_attrs(&format!("`{}`", type_name(model, r))),
            })
            .collect(),
        timer: format!("{name}Timer"),
        timers: p
            .timeouts
            .iter()
            .map(|t| TimerCtx {
                ident: pascal(&t.name),
                wire: str_lit(&t.name),
                doc: docs(
                    t.description.as_deref(),
                    &format!("`{}`: fires {} after it is set.", t.name, t.after),
                ),
                ms: t.after_ms,
            })
            .collect(),
        context: format!("{name}Context"),
        marker: format!("{name}Manager"),
        test: format!("{name}Test"),
        fn_name: snake(&p.name),
        wire: str_lit(&p.name),
        stream: str_lit(&crate::validate::stream_prefix(&p.name)),
        correlate_by: str_lit(&p.correlate_by),
        key_field: snake(&p.correlate_by),
        partitions: (p.partitions != 1).then_some(p.partitions),
        state,
        name,
    }
}

/// A tag of an aggregate's state shape: FNV-1a over each field's name, type (named
/// struct types by their own fields, enums by their values) and default, then
/// `/v<snapshot_version>` when the schema bumped it (version 1 keeps the bare tag, so
/// existing snapshots stay valid). Snapshots written under another tag are ignored.
fn state_shape(model: &Model, a: &Aggregate) -> String {
    fn ty_text(model: &Model, ty: &Ty, depth: usize) -> String {
        ty.schema_text(&|t: &TypeRef| {
            let def = model
                .modules
                .iter()
                .find(|m| m.ident == t.module)
                .and_then(|m| m.types.iter().find(|d| d.name == t.name));
            match def.map(|d| &d.kind) {
                Some(TypeKind::Enum(values)) => format!("enum({})", values.join("|")),
                Some(TypeKind::Struct(fields)) if depth < 8 => format!(
                    "struct({})",
                    fields
                        .iter()
                        .map(|f| field_text(model, f, depth + 1))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => format!("{}::{}", t.module, t.name),
            }
        })
    }
    fn field_text(model: &Model, f: &Field, depth: usize) -> String {
        format!(
            "{}:{}:{}:{:?}",
            f.name,
            ty_text(model, &f.ty, depth),
            f.required,
            f.default
        )
    }
    let text = a
        .state
        .iter()
        .map(|f| field_text(model, f, 0))
        .collect::<Vec<_>>()
        .join(";");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    match a.snapshot_version {
        1 => format!("fnv1a64:{hash:016x}"),
        v => format!("fnv1a64:{hash:016x}/v{v}"),
    }
}
