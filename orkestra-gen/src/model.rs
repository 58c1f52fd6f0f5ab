//! The resolved model: what validation produces and rendering consumes. Every name is
//! checked, every reference resolved, every default checked against its type and rules.

use std::path::PathBuf;

/// Everything one generation covers.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// The app prefix stripped from namespaces.
    pub app_prefix: String,
    /// The schema files, in the order read.
    pub files: Vec<PathBuf>,
    /// One module per namespace, sorted by module name.
    pub modules: Vec<Module>,
}

/// One namespace.
#[derive(Clone, Debug, Default)]
pub struct Module {
    /// The full namespace (`MyApp.Orders`).
    pub namespace: String,
    /// The namespace without the app prefix (`Orders`): how other namespaces refer to it.
    pub qualifier: String,
    /// The Rust module name (`orders`).
    pub ident: String,
    /// Module docs.
    pub description: Option<String>,
    /// Named value types.
    pub types: Vec<TypeDef>,
    /// Commands.
    pub commands: Vec<Payload>,
    /// Events.
    pub events: Vec<Payload>,
    /// Handler bindings.
    pub handlers: Vec<Handler>,
    /// Aggregates.
    pub aggregates: Vec<Aggregate>,
    /// Projections (read models fed from the store), in declaration order.
    pub projections: Vec<Projection>,
    /// Process managers (flows with state, commands and timers), in declaration order.
    pub process_managers: Vec<ProcessManager>,
    /// Decisions (a command decided over the events of several streams), in declaration
    /// order.
    pub decisions: Vec<Decision>,
}

/// A decision: one command decided over the events that match its read items (a
/// dynamic consistency boundary), appended on the condition that none was appended since.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Its name.
    pub name: String,
    /// Where its key is.
    pub span: crate::diagnostic::Span,
    /// Docs.
    pub description: Option<String>,
    /// The command it decides.
    pub command: PayloadRef,
    /// The stream its events are appended to, split into text and placeholders (params
    /// of the command).
    pub stream: Vec<StreamPart>,
    /// The template as written.
    pub stream_text: String,
    /// The read items, in declaration order: the boundary is their union.
    pub reads: Vec<ReadItem>,
    /// The state fields (a field without a default is optional).
    pub state: Vec<Field>,
    /// The events it may append.
    pub emits: Vec<PayloadRef>,
    /// How often the command is decided again after a conflicting append.
    pub conflict_retries: u32,
}

/// One item of a decision's boundary: events of these types carrying one tag, whose
/// value is a param of the command.
#[derive(Clone, Debug)]
pub struct ReadItem {
    /// Its name (the field of the generated `<Decision>Reads`).
    pub name: String,
    /// The event types it reads.
    pub events: Vec<PayloadRef>,
    /// The tag key (a field every event of the item lists in its `tags`).
    pub tag: String,
    /// The param of the command whose value the tag must have.
    pub param: String,
}

/// A process manager: one instance per `correlate_by` value, typed state, the events
/// that start, drive and end it, the commands it dispatches and its named timers.
#[derive(Clone, Debug)]
pub struct ProcessManager {
    /// Its name.
    pub name: String,
    /// Where its key is.
    pub span: crate::diagnostic::Span,
    /// Docs.
    pub description: Option<String>,
    /// The field of every event that names the instance.
    pub correlate_by: String,
    /// The state fields (a field without a default is optional).
    pub state: Vec<Field>,
    /// Events that create the instance.
    pub starts_on: Vec<PayloadRef>,
    /// Events a running instance handles.
    pub handles: Vec<PayloadRef>,
    /// Events handled, then the instance is finished.
    pub ends_on: Vec<PayloadRef>,
    /// Commands it may dispatch.
    pub dispatches: Vec<PayloadRef>,
    /// Named timers.
    pub timeouts: Vec<Timeout>,
    /// How many partitions its instances are spread over, by key (`partitions`; 1 by
    /// default): each held by one copy of the service at a time.
    pub partitions: u32,
    /// `personal_data: { subject }` for personal state fields. Always `None` in a
    /// validated model today: a process manager's state is recorded in
    /// `orkestra.ProcessStep` records, which the store does not encrypt, so validation
    /// refuses personal data there (the field keeps the model's shape for when it does).
    pub personal_subject: Option<String>,
}

/// A named timer of a process manager.
#[derive(Clone, Debug)]
pub struct Timeout {
    /// Its name.
    pub name: String,
    /// Docs.
    pub description: Option<String>,
    /// How long after being set it fires, in milliseconds.
    pub after_ms: u64,
    /// The duration as written (`30m`).
    pub after: String,
}

/// An aggregate: state folded from its own stream, one decide method per command.
#[derive(Clone, Debug)]
pub struct Aggregate {
    /// Its name.
    pub name: String,
    /// Where its key is.
    pub span: crate::diagnostic::Span,
    /// Docs.
    pub description: Option<String>,
    /// The stream name template, split into text and placeholders.
    pub stream: Vec<StreamPart>,
    /// The template as written.
    pub stream_text: String,
    /// The state fields (a field without a default is optional).
    pub state: Vec<Field>,
    /// The commands it handles, with the type of each placeholder's param in them.
    pub commands: Vec<PayloadRef>,
    /// Its events.
    pub events: Vec<PayloadRef>,
    /// Snapshot each time a stream's length crosses a multiple of this.
    pub snapshot_every: Option<u64>,
    /// Part of the snapshot tag: bumped when `apply` changes, so snapshots folded by the
    /// previous `apply` are ignored (1 unless the schema says otherwise).
    pub snapshot_version: u32,
    /// How often a command is decided again after a concurrent append.
    pub conflict_retries: u32,
    /// `personal_data: { subject }`: the string state field naming whose personal data
    /// the state's personal fields are. Set exactly when a state field is personal,
    /// directly or through its named types (its snapshots are then encrypted).
    pub personal_subject: Option<String>,
}

/// A piece of a stream template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamPart {
    /// Literal text.
    Text(String),
    /// `{param}`: the value of that param of the command.
    Param(String),
}

/// A named value type.
#[derive(Clone, Debug)]
pub struct TypeDef {
    /// Its name in the schema.
    pub name: String,
    /// Where it is declared.
    pub span: crate::diagnostic::Span,
    /// Docs.
    pub description: Option<String>,
    /// Struct or enum.
    pub kind: TypeKind,
}

/// The shape of a named type.
#[derive(Clone, Debug)]
pub enum TypeKind {
    /// A struct with fields.
    Struct(Vec<Field>),
    /// An enum of string values.
    Enum(Vec<String>),
}

/// Command or event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// A command.
    Command,
    /// An event.
    Event,
}

/// A command or event.
#[derive(Clone, Debug)]
pub struct Payload {
    /// Command or event.
    pub kind: PayloadKind,
    /// Its name.
    pub name: String,
    /// Docs.
    pub description: Option<String>,
    /// Params or data fields, in declaration order.
    pub fields: Vec<Field>,
    /// The topic (derived or overridden).
    pub topic: String,
    /// `Namespace.Name`.
    pub type_name: String,
    /// Schema version (events; commands are 1).
    pub version: u32,
    /// Whether the user implements `Validate`.
    pub custom_validate: bool,
    /// Upcast steps (events), sorted by the version they start from; they cover every
    /// version from the first step's up to `version - 1`.
    pub upcast: Vec<UpcastStep>,
    /// The fields whose values tag the event (events; commands have none), in
    /// declaration order: each is required and has a stable text form.
    pub tags: Vec<String>,
    /// `personal_data: { subject }` (events): the required, non-personal string field
    /// naming whose personal data the event's personal fields are. Set exactly when a
    /// field is personal, directly or through its named types; commands have none.
    pub personal_subject: Option<String>,
    /// Where it is declared.
    pub span: crate::diagnostic::Span,
}

/// One step of an event's `upcast` section: data of version `from` to `from + 1`.
#[derive(Clone, Debug)]
pub struct UpcastStep {
    /// The version it reads.
    pub from: u32,
    /// Where its key is.
    pub span: crate::diagnostic::Span,
    /// What it does.
    pub kind: StepKind,
}

/// What an upcast step does.
#[derive(Clone, Debug)]
pub enum StepKind {
    /// `renamed`, `removed`, `added`, applied in that order.
    Declarative {
        /// `(old, new)` field names.
        renamed: Vec<(String, String)>,
        /// Fields dropped.
        removed: Vec<String>,
        /// Fields set where the old data has none, with values checked against their type.
        added: Vec<(String, Literal)>,
    },
    /// Written in Rust: a method of the generated `<Event>Upcast` trait.
    Custom,
}

/// A param or field.
#[derive(Clone, Debug)]
pub struct Field {
    /// The wire name (as in the schema).
    pub name: String,
    /// Where its key is.
    pub span: crate::diagnostic::Span,
    /// Docs.
    pub description: Option<String>,
    /// Its type.
    pub ty: Ty,
    /// Must be present.
    pub required: bool,
    /// The value used when absent.
    pub default: Option<Literal>,
    /// Rules.
    pub rules: Rules,
    /// `personal: true`: the value is personal data, stored encrypted with its
    /// subject's key (events, aggregate state, and wherever a named type holding it is
    /// used there). A field of a named-type, list or map type is sealed whole.
    pub personal: bool,
    /// What readers get once the subject is forgotten (`replacement`, checked against
    /// the type); `None`: the type's empty value (see [`crate::personal`]).
    pub replacement: Option<Literal>,
}

/// A schema type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `string`
    String,
    /// `integer` (i64)
    Integer,
    /// `float` (f64)
    Float,
    /// `boolean`
    Boolean,
    /// `datetime` (UTC, RFC 3339)
    DateTime,
    /// `date`
    Date,
    /// `uuid`
    Uuid,
    /// `decimal` (kept as exact text)
    Decimal,
    /// `json` (any JSON value)
    Json,
    /// `list<T>`
    List(Box<Ty>),
    /// `map<T>` (string keys)
    Map(Box<Ty>),
    /// A named type.
    Named(TypeRef),
}

impl Ty {
    /// The type as a schema writes it (`list<integer>`), with named types spelled by
    /// `named`.
    pub fn schema_text(&self, named: &dyn Fn(&TypeRef) -> String) -> String {
        match self {
            Ty::String => "string".into(),
            Ty::Integer => "integer".into(),
            Ty::Float => "float".into(),
            Ty::Boolean => "boolean".into(),
            Ty::DateTime => "datetime".into(),
            Ty::Date => "date".into(),
            Ty::Uuid => "uuid".into(),
            Ty::Decimal => "decimal".into(),
            Ty::Json => "json".into(),
            Ty::List(inner) => format!("list<{}>", inner.schema_text(named)),
            Ty::Map(inner) => format!("map<{}>", inner.schema_text(named)),
            Ty::Named(t) => named(t),
        }
    }
}

/// A resolved reference to a named type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeRef {
    /// The Rust module it lives in.
    pub module: String,
    /// Its name.
    pub name: String,
    /// Whether it is an enum (its values are strings on the wire).
    pub is_enum: bool,
    /// Enum values, for checking defaults.
    pub variants: Vec<String>,
}

/// A default or `one_of` value, checked against the field type.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// A string (also an enum value).
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A list.
    List(Vec<Literal>),
    /// A map with string keys, in document order.
    Map(Vec<(String, Literal)>),
}

/// `format:` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An email address.
    Email,
    /// A UUID.
    Uuid,
    /// An absolute URL.
    Url,
}

/// The rules on a field.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    /// Lower bound (numbers).
    pub min: Option<Literal>,
    /// Upper bound (numbers).
    pub max: Option<Literal>,
    /// Lower bound of the length (strings in chars, lists and maps in items).
    pub min_length: Option<u64>,
    /// Upper bound of the length.
    pub max_length: Option<u64>,
    /// A regex the whole string must match somewhere (unanchored unless it anchors).
    pub pattern: Option<String>,
    /// A format.
    pub format: Option<Format>,
    /// Allowed values.
    pub one_of: Option<Vec<Literal>>,
}

/// A reference to a command or event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PayloadRef {
    /// The Rust module.
    pub module: String,
    /// The name.
    pub name: String,
}

/// What a handler binding receives.
#[derive(Clone, Debug)]
pub enum HandlerTarget {
    /// One command.
    Command(PayloadRef),
    /// One event.
    Event(PayloadRef),
    /// Several events: a generated enum.
    Events(Vec<PayloadRef>),
    /// Every event whose topic matches: a generated enum with `Other(RawEvent)`.
    Topic {
        /// The AMQP pattern.
        pattern: String,
        /// The known events it matches.
        matched: Vec<PayloadRef>,
    },
    /// Every dead letter of the bus (`{ dead_letters: true }`).
    DeadLetters,
}

/// A projection: a read model fed from the store's global order.
#[derive(Clone, Debug)]
pub struct Projection {
    /// The name (the trait's, and the checkpoint's).
    pub name: String,
    /// Where its key is.
    pub span: crate::diagnostic::Span,
    /// Docs.
    pub description: Option<String>,
    /// What it receives: `Event`, `Events` or `Topic`.
    pub target: HandlerTarget,
    /// Events per batch (per transaction on PostgreSQL), when set.
    pub batch: Option<u32>,
    /// Retry limit, when set.
    pub max_retries: Option<u32>,
    /// Whether it keeps a checkpoint in the store (`checkpoint: none`: no, it replays
    /// from the start at each launch).
    pub checkpoint: bool,
    /// How many partitions its events are spread over, by stream (`partitions`; 1 by
    /// default): each with its own checkpoint, held by one copy of the service at a time.
    pub partitions: u32,
}

/// A handler binding.
#[derive(Clone, Debug)]
pub struct Handler {
    /// The binding name (the trait name).
    pub name: String,
    /// Where its key is.
    pub span: crate::diagnostic::Span,
    /// Docs.
    pub description: Option<String>,
    /// What it handles.
    pub target: HandlerTarget,
    /// Retry limit, when set.
    pub max_retries: Option<u32>,
    /// Deliveries handled at once in one process, when set.
    pub concurrency: Option<u16>,
    /// The field or param whose value orders deliveries (one at a time per value), when set.
    pub partition_by: Option<PartitionKey>,
    /// The waits before retries, when set.
    pub retry: RetryDelays,
    /// `once: true`: runs once per message id (the bus's inbox).
    pub once: bool,
    /// Events it declares it emits.
    pub emits: Vec<PayloadRef>,
}

/// A binding's `retry_delay`, `retry_backoff` and `retry_delay_max`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RetryDelays {
    /// The wait before the first retry, in ms.
    pub delay_ms: Option<u64>,
    /// The factor between two waits (at least 1).
    pub backoff: Option<f64>,
    /// The longest wait, in ms.
    pub max_ms: Option<u64>,
}

/// A binding's `partition_by`: a field or param name, or `correlation_id`.
#[derive(Clone, Debug)]
pub struct PartitionKey {
    /// The name as written.
    pub field: String,
    /// Where it is written (checked against every message of the binding).
    pub span: crate::diagnostic::Span,
}
