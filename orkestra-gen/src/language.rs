//! The schema language itself as a JSON Schema (draft-07, the draft the YAML language
//! server implements), so editors complete and check schema files.
//!
//! The keys of every mapping come from the validator's own tables (`SCHEMA_KEYS`) and
//! the field types from its `BASE_TYPES`: a key the validator learns appears here at
//! once, and a key it drops disappears. What each key holds and what it means is written
//! beside the tables' use here; a unit test fails when a key of the tables has no
//! description, or a table is not a mapping of the schema.
//! Mappings whose unknown keys the validator rejects are closed
//! (`additionalProperties: false`); the sections of named items are open to any name
//! that is an identifier.

use serde_json::{Map, Value, json};

use crate::validate::{BASE_TYPES, SCHEMA_KEYS};

/// The draft the schema is written in. The YAML language server (VS Code's YAML
/// extension, Neovim's and Helix's `yaml-language-server`) validates draft-07; later
/// drafts are not fully supported there.
pub const DRAFT: &str = "http://json-schema.org/draft-07/schema#";

/// An identifier: a command, event, type, field, handler, projection or timer name.
const IDENTIFIER: &str = "^[A-Za-z][A-Za-z0-9_]*$";
/// Dot-separated identifiers: a namespace, a named type or a reference across
/// namespaces (`Accounts.Plan`, `Orders.PlaceOrder`).
const DOTTED: &str = "^[A-Za-z][A-Za-z0-9_]*(\\.[A-Za-z][A-Za-z0-9_]*)*$";

/// The JSON Schema of schema files, pretty-printed with a final newline: what
/// `orkestra-gen schema-json` writes.
pub fn schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// The JSON Schema of schema files.
pub fn schema() -> Value {
    let mut top = closed_object("top level");
    top["title"] = json!("Orkestra schema file");
    top["description"] = json!(
        "One namespace of an Orkestra service: its types, commands, events, handler bindings, aggregates, projections, process managers and decisions. orkestra-gen turns it into Rust."
    );
    top["required"] = json!(["namespace"]);
    let mut root = Map::new();
    root.insert("$schema".into(), json!(DRAFT));
    if let Value::Object(fields) = top {
        root.extend(fields);
    }
    root.insert("definitions".into(), definitions());
    Value::Object(root)
}

/// The reusable parts: one per kind of mapping, and the values several keys share.
fn definitions() -> Value {
    let mut state_field = closed_object("field");
    if let Some(Value::Object(properties)) = state_field.get_mut("properties") {
        properties.retain(|key, _| {
            matches!(
                key.as_str(),
                "type" | "default" | "description" | "personal" | "replacement"
            )
        });
        if let Some(required) = property("field", "required") {
            properties.insert(
                "required".into(),
                json!({ "description": required.0, "enum": [false] }),
            );
        }
    }
    state_field["required"] = json!(["type"]);
    let mut field = closed_object("field");
    field["required"] = json!(["type"]);
    let mut type_def = closed_object("type");
    type_def["oneOf"] = json!([{ "required": ["fields"] }, { "required": ["enum"] }]);
    let mut command = closed_object("command");
    command["type"] = json!(["object", "null"]);
    let mut event = closed_object("event");
    event["type"] = json!(["object", "null"]);
    let mut step = closed_object("upcast step");
    step["minProperties"] = json!(1);
    let mut handler = closed_object("handler");
    handler["oneOf"] = one_required(&["command", "event", "events", "topic", "dead_letters"]);
    let mut aggregate = closed_object("aggregate");
    aggregate["required"] = json!(["stream", "commands", "events"]);
    let mut projection = closed_object("projection");
    projection["oneOf"] = one_required(&["event", "events", "topic"]);
    let mut process_manager = closed_object("process manager");
    process_manager["required"] = json!(["correlate_by", "starts_on"]);
    let mut timeout = closed_object("timeout");
    timeout["required"] = json!(["after"]);
    let mut decision = closed_object("decision");
    decision["required"] = json!(["command", "stream", "reads", "emits"]);
    let mut read_item = closed_object("read item");
    read_item["required"] = json!(["events", "tag"]);
    let mut personal_data = closed_object("personal data");
    personal_data["required"] = json!(["subject"]);
    json!({
        "typeExpression": {
            "description": "A field type: a base type, `list<T>`, `map<T>` (string keys), or a named type of `types` (`Address`, or `Accounts.Plan` from another namespace).",
            "anyOf": [
                { "type": "string", "enum": BASE_TYPES },
                { "type": "string", "pattern": "^(list|map)<.+>$" },
                { "type": "string", "pattern": DOTTED },
            ],
        },
        "field": {
            "description": "A field: its type alone (`quantity: integer`), or a mapping with the type and its rules.",
            "anyOf": [{ "$ref": "#/definitions/typeExpression" }, field],
        },
        "fields": named("field", "Fields by name (identifiers); each a type or a mapping with `type`."),
        "stateField": {
            "description": "A state field: its type alone, or a mapping with `type`, `default`, `description`, and (aggregates) `personal` and `replacement` (state is kept, not checked: no rules, never `required`).",
            "anyOf": [{ "$ref": "#/definitions/typeExpression" }, state_field],
        },
        "stateFields": named("stateField", "State fields by name; a field without a `default` is an `Option`."),
        "type": type_def,
        "command": command,
        "event": event,
        "upcastStep": {
            "description": "The step that brings data of this version to the next: `custom` (you implement it) or a mapping of `renamed`, `removed` and `added`.",
            "anyOf": [{ "enum": ["custom"] }, step],
        },
        "handler": handler,
        "aggregate": aggregate,
        "projection": projection,
        "processManager": process_manager,
        "timeout": timeout,
        "decision": decision,
        "readItem": read_item,
        "personalData": personal_data,
        "reference": {
            "description": "A command or event of this namespace (`PlaceOrder`), or of another (`Orders.PlaceOrder`).",
            "type": "string",
            "pattern": DOTTED,
        },
        "references": {
            "type": "array",
            "items": { "$ref": "#/definitions/reference" },
        },
        "topicPattern": {
            "description": "A topic pattern, words split on `.`: `*` is exactly one word, `#` zero or more (`orders.events.#`).",
            "type": "string",
            "pattern": "^\\S+$",
        },
        "partitions": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1024,
            "default": 1,
        },
        "retryDelay": {
            "description": "A duration: `500ms`, `5s` or `2m` (1 ms to 24 h).",
            "type": "string",
            "pattern": "^\\s*[0-9]+(ms|s|m)\\s*$",
        },
    })
}

/// `{ "type": "object", properties from the validator's table, additionalProperties:
/// false }` for the mapping the table `at` describes.
fn closed_object(at: &str) -> Value {
    let keys = SCHEMA_KEYS
        .iter()
        .find(|(name, _)| *name == at)
        .map_or(&[][..], |(_, keys)| *keys);
    let mut properties = Map::new();
    for key in keys {
        let (description, mut shape) = property(at, key).unwrap_or(("", json!({})));
        if let Value::Object(fields) = &mut shape
            && !description.is_empty()
        {
            fields.insert("description".into(), json!(description));
        }
        properties.insert((*key).to_owned(), shape);
    }
    json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    })
}

/// A section of named items: a mapping from identifiers to `definition`, or nothing.
fn named(definition: &str, description: &str) -> Value {
    json!({
        "description": description,
        "type": ["object", "null"],
        "propertyNames": { "pattern": IDENTIFIER },
        "additionalProperties": { "$ref": format!("#/definitions/{definition}") },
    })
}

/// Exactly one of `keys` is present.
fn one_required(keys: &[&str]) -> Value {
    Value::Array(
        keys.iter()
            .map(|key| json!({ "required": [key] }))
            .collect(),
    )
}

fn reference(definition: &str) -> Value {
    json!({ "$ref": format!("#/definitions/{definition}") })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn int(minimum: i64, maximum: i64) -> Value {
    json!({ "type": "integer", "minimum": minimum, "maximum": maximum })
}

/// A non-empty list of commands or events.
fn some_references() -> Value {
    json!({ "allOf": [reference("references")], "minItems": 1 })
}

/// What key `key` of the mapping `at` (a label of `SCHEMA_KEYS`) means and holds:
/// its description and its JSON Schema, or `None` for a key this table does not know.
fn property(at: &str, key: &str) -> Option<(&'static str, Value)> {
    const DESCRIPTION: &str =
        "Documentation: the doc comment of what is generated, and the exports' description.";
    const U32_MAX: u32 = u32::MAX;
    let section = |definition: &str, text: &'static str| (text, named(definition, text));
    Some(match (at, key) {
        (_, "description") => (DESCRIPTION, string()),
        ("top level", "namespace") => (
            "Dot-separated identifiers, `Shop.Orders`. The app prefix is stripped and each remaining segment snake-cased: module `orders`, topics `orders.commands.*` and `orders.events.*`. Files with the same namespace are merged.",
            json!({ "type": "string", "pattern": DOTTED }),
        ),
        ("top level", "types") => section(
            "type",
            "Named value types (structs or enums), usable in params, fields and state.",
        ),
        ("top level", "commands") => {
            section("command", "Commands: requests with exactly one handler.")
        }
        ("top level", "events") => section(
            "event",
            "Events: facts, received by every binding that listens.",
        ),
        ("top level", "handlers") => {
            section("handler", "Handler bindings: what each handler receives.")
        }
        ("top level", "aggregates") => section(
            "aggregate",
            "Aggregates: consistency boundaries whose state is the fold of their own stream.",
        ),
        ("top level", "projections") => section(
            "projection",
            "Projections: read models fed from the store in global order.",
        ),
        ("top level", "process_managers") => section(
            "processManager",
            "Process managers: long-running flows with typed state and timers.",
        ),
        ("top level", "decisions") => section(
            "decision",
            "Decisions: a command decided over the events matching a query of types and tags across streams (dynamic consistency boundaries).",
        ),
        ("type", "fields") => (
            "A struct: its fields (one of `fields` and `enum`).",
            reference("fields"),
        ),
        ("type", "enum") => (
            "An enum: its string values; the Rust variants are their PascalCase, the wire keeps the string.",
            json!({ "type": "array", "minItems": 1, "items": { "type": ["string", "boolean"] } }),
        ),
        ("field", "type") => ("The field's type.", reference("typeExpression")),
        ("field", "required") => (
            "Must be present and not null (default false).",
            json!({ "type": "boolean", "default": false }),
        ),
        ("field", "default") => (
            "The value when absent, checked against the type and the rules at generation time; not with `required: true`.",
            json!({}),
        ),
        ("field", "min") => (
            "Lower bound, inclusive (integers and floats).",
            json!({ "type": "number" }),
        ),
        ("field", "max") => (
            "Upper bound, inclusive (integers and floats).",
            json!({ "type": "number" }),
        ),
        ("field", "min_length") => (
            "Shortest: characters of a string, items of a list or map.",
            json!({ "type": "integer", "minimum": 0 }),
        ),
        ("field", "max_length") => (
            "Longest: characters of a string, items of a list or map.",
            json!({ "type": "integer", "minimum": 0 }),
        ),
        ("field", "pattern") => (
            "A regular expression (Rust `regex` syntax) a string must match; it matches anywhere unless anchored with `^`/`$`.",
            string(),
        ),
        ("field", "format") => (
            "A string's format: `email`, `uuid` or `url` (absolute).",
            json!({ "type": "string", "enum": ["email", "uuid", "url"] }),
        ),
        ("field", "one_of") => (
            "The allowed values of a string, integer or float: a non-empty list.",
            json!({ "type": "array", "minItems": 1, "items": { "type": ["string", "number", "boolean"] } }),
        ),
        ("command", "params") => ("The command's fields (params).", reference("fields")),
        ("field", "personal") => (
            "Personal data (default false): stored encrypted with a key of its data subject, and replaced once the subject is forgotten. Events (which then need `personal_data`), aggregate state, and fields of named types used there; a named-type, list or map field is sealed whole. Not on command params (commands are not stored).",
            json!({ "type": "boolean", "default": false }),
        ),
        ("field", "replacement") => (
            "What readers get once a personal field's subject is forgotten, checked against the type (default: the type's empty value: \"\", 0, false, [], {}, null when optional). Only with `personal: true`; a required enum field needs one.",
            json!({}),
        ),
        ("event", "personal_data") => (
            "Whose data the event's personal fields are: `{ subject: customer_id }`, a required string field that is not itself personal. Needed exactly when a field is personal, directly or through its types.",
            reference("personalData"),
        ),
        ("aggregate", "personal_data") => (
            "Whose data the state's personal fields are: `{ subject: customer_id }`, a string state field that is not itself personal; the snapshots' personal fields are then encrypted.",
            reference("personalData"),
        ),
        ("process manager", "personal_data") => (
            "Not supported: a process manager's state is recorded in step records that are not encrypted, so it cannot hold personal data (keep the person's id and look the rest up).",
            json!({ "not": {} }),
        ),
        ("personal data", "subject") => (
            "The field holding the id of the person (the data subject) the personal fields belong to.",
            json!({ "type": "string", "pattern": IDENTIFIER }),
        ),
        ("command" | "event", "validate") => (
            "`custom`: you implement `orkestra_runtime::Validate`; it runs after the generated checks.",
            json!({ "enum": ["custom"] }),
        ),
        ("command" | "event", "topic") => (
            "A topic of your own instead of the derived one (`orders.commands.place_order`): a non-empty name without spaces or wildcards.",
            json!({ "type": "string", "pattern": "^\\S+$" }),
        ),
        ("event", "fields") => ("The event's fields.", reference("fields")),
        ("event", "tags") => (
            "Fields whose values index the event in the store (`tags: [course_id]`): each required, a string, integer, uuid, date or enum. Decisions read events by them.",
            json!({ "type": "array", "uniqueItems": true, "items": { "type": "string", "pattern": IDENTIFIER } }),
        ),
        ("event", "version") => (
            "The current version, a positive integer (default 1).",
            json!({ "type": "integer", "minimum": 1, "maximum": U32_MAX, "default": 1 }),
        ),
        ("event", "upcast") => (
            "One step per older version still readable: each key a version (1, 2, ..), each value the step to the next version.",
            json!({
                "type": "object",
                "propertyNames": { "pattern": "^[1-9][0-9]*$" },
                "additionalProperties": reference("upcastStep"),
            }),
        ),
        ("upcast step", "renamed") => (
            "Fields renamed: `{ old_name: new_name }`.",
            json!({ "type": "object", "additionalProperties": { "type": "string" } }),
        ),
        ("upcast step", "removed") => (
            "Fields dropped: `[name, ..]`.",
            json!({ "type": "array", "items": { "type": "string" } }),
        ),
        ("upcast step", "added") => (
            "Fields added: `{ name: value }`, each value checked against the field's type.",
            json!({ "type": "object" }),
        ),
        ("handler", "command") => (
            "The command it handles (each command has exactly one handler).",
            reference("reference"),
        ),
        ("handler" | "projection", "event") => {
            ("The one event it receives.", reference("reference"))
        }
        ("handler" | "projection", "events") => (
            "The events it receives; the handler gets a generated enum `<Name>Event`.",
            some_references(),
        ),
        ("handler" | "projection", "topic") => (
            "A topic pattern: it receives every event whose topic matches (plus `Other(RawEvent)` for events of other services).",
            reference("topicPattern"),
        ),
        ("handler", "max_retries") => (
            "Retries after the first run before the message is dead-lettered (default 3).",
            json!({ "type": "integer", "minimum": 0, "maximum": U32_MAX, "default": 3 }),
        ),
        ("handler", "concurrency") => (
            "RabbitMQ: deliveries handled at once in one process, 1 to 65535 (default `[bus] concurrency`); 1 is strict arrival order.",
            int(1, 65535),
        ),
        ("handler", "partition_by") => (
            "RabbitMQ: deliveries with the same value of this field run one at a time, in order (default the correlation id); a field of every message received, or `correlation_id`.",
            string(),
        ),
        ("handler", "retry_delay") => (
            "RabbitMQ: the wait before a retry (default `[bus] retry_delay_ms`).",
            reference("retryDelay"),
        ),
        ("handler", "retry_backoff") => (
            "The factor between two waits, 1 to 1000: the wait before retry n is retry_delay · retry_backoff^(n-1).",
            json!({ "type": "number", "minimum": 1, "maximum": 1000 }),
        ),
        ("handler", "retry_delay_max") => (
            "The longest wait, not below `retry_delay`.",
            reference("retryDelay"),
        ),
        ("handler", "emits") => (
            "The events the handler publishes (for the exports: AsyncAPI, the flow graph).",
            reference("references"),
        ),
        ("handler", "dead_letters") => (
            "`true`: receives every dead letter of the bus; takes only `max_retries` and `description` besides.",
            json!({ "enum": [true] }),
        ),
        ("handler", "once") => (
            "Event bindings only: skipped for a message id its inbox already recorded (default false).",
            json!({ "type": "boolean", "default": false }),
        ),
        ("aggregate", "stream") => (
            "The stream name template, `\"account-{account_id}\"`: each placeholder a required param of every command listed.",
            json!({ "type": "string", "minLength": 1 }),
        ),
        ("aggregate" | "process manager" | "decision", "state") => (
            "State fields: `type`, `default`, `description` (no default: `Option<T>`).",
            reference("stateFields"),
        ),
        ("aggregate", "commands") => (
            "The commands it decides (not also bound in `handlers`).",
            some_references(),
        ),
        ("aggregate", "events") => ("The events its stream holds.", some_references()),
        ("aggregate", "snapshot_every") => (
            "A snapshot when an append crosses a multiple of this many events (default: no snapshots).",
            json!({ "type": "integer", "minimum": 1 }),
        ),
        ("aggregate", "snapshot_version") => (
            "Part of the snapshot's tag: bump it when `apply` changes (default 1).",
            json!({ "type": "integer", "minimum": 1, "maximum": U32_MAX, "default": 1 }),
        ),
        ("aggregate" | "decision", "conflict_retries") => (
            "How often a command loads and decides again after another writer appended first, 0 to 1000 (default 5).",
            json!({ "type": "integer", "minimum": 0, "maximum": 1000, "default": 5 }),
        ),
        ("projection", "batch") => (
            "Events per batch, 1 to 100,000 (default 500; on PostgreSQL one transaction per batch).",
            json!({ "type": "integer", "minimum": 1, "maximum": 100_000, "default": 500 }),
        ),
        ("projection", "max_retries") => (
            "Retries of a failing event before the projection stops (default 3).",
            json!({ "type": "integer", "minimum": 0, "maximum": U32_MAX, "default": 3 }),
        ),
        ("projection", "checkpoint") => (
            "`store` (default): resume from a checkpoint kept in the store; `none`: replay from the start at each launch (a read model in memory).",
            json!({ "type": "string", "enum": ["store", "none"], "default": "store" }),
        ),
        ("projection" | "process manager", "partitions") => (
            "1 to 1,024 partitions, each held by one copy of the service at a time (default 1); changing it needs a rebuild.",
            reference("partitions"),
        ),
        ("process manager", "correlate_by") => (
            "A required string, integer or uuid field of every event listed: one instance per value.",
            json!({ "type": "string", "pattern": IDENTIFIER }),
        ),
        ("process manager", "starts_on") => ("Events that create an instance.", some_references()),
        ("process manager", "handles") => (
            "Events handled while an instance runs.",
            reference("references"),
        ),
        ("process manager", "ends_on") => (
            "Events handled, then the instance is finished.",
            reference("references"),
        ),
        ("process manager", "dispatches") => {
            ("The commands it may dispatch.", reference("references"))
        }
        ("process manager", "timeouts") => (
            "Named timers: `payment: { after: 30m }`.",
            json!({
                "type": "object",
                "propertyNames": { "pattern": IDENTIFIER },
                "additionalProperties": reference("timeout"),
            }),
        ),
        ("timeout", "after") => (
            "When the timer fires: `500ms`, `30s`, `30m` or `2h` (more than zero, at most 366 days).",
            json!({ "type": "string", "pattern": "^[0-9]+(ms|s|m|h)$" }),
        ),
        ("decision", "command") => (
            "The command it decides (not also handled by a binding or an aggregate).",
            reference("reference"),
        ),
        ("decision", "stream") => (
            "The stream its events are appended to, `\"subscription-{course_id}-{student_id}\"`: each placeholder a required param of the command.",
            json!({ "type": "string", "minLength": 1 }),
        ),
        ("decision", "reads") => (
            "The consistency boundary, the union of its items: `course: { events: [CourseDefined, StudentSubscribed], tag: course_id }`. Each item name becomes a `bool` of the generated `<Name>Reads`.",
            json!({
                "type": "object",
                "minProperties": 1,
                "propertyNames": { "pattern": IDENTIFIER },
                "additionalProperties": reference("readItem"),
            }),
        ),
        ("decision", "emits") => ("The events it may append.", some_references()),
        ("read item", "events") => (
            "The event types it reads; each lists the item's tag in its `tags`.",
            some_references(),
        ),
        ("read item", "tag") => (
            "The tag the events must carry, valued by the command's param of the same name (`tag: course_id`), or a tag mapped to a param (`tag: { course_id: course }`).",
            json!({
                "anyOf": [
                    { "type": "string", "pattern": IDENTIFIER },
                    {
                        "type": "object",
                        "minProperties": 1,
                        "maxProperties": 1,
                        "propertyNames": { "pattern": IDENTIFIER },
                        "additionalProperties": { "type": "string", "pattern": IDENTIFIER },
                    },
                ],
            }),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_validator_tables_is_described() {
        let missing: Vec<String> = SCHEMA_KEYS
            .iter()
            .flat_map(|(at, keys)| keys.iter().map(move |key| (*at, *key)))
            .filter(|(at, key)| property(at, key).is_none_or(|(text, _)| text.is_empty()))
            .map(|(at, key)| format!("{at}: {key}"))
            .collect();
        assert!(
            missing.is_empty(),
            "keys without a description: {missing:?}"
        );
    }

    /// Every key set of `properties` in the schema, sorted.
    fn property_sets(value: &Value, out: &mut Vec<Vec<String>>) {
        match value {
            Value::Object(fields) => {
                if let Some(Value::Object(properties)) = fields.get("properties") {
                    out.push(properties.keys().cloned().collect());
                }
                fields.values().for_each(|v| property_sets(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| property_sets(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_table_of_the_validator_is_a_closed_mapping_of_the_schema() {
        let mut sets = Vec::new();
        property_sets(&schema(), &mut sets);
        for (at, keys) in SCHEMA_KEYS {
            let mut expected: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            expected.sort_unstable();
            assert!(
                sets.contains(&expected),
                "no mapping of the schema has exactly the keys of `{at}`: {expected:?}"
            );
        }
        let closed = schema()
            .to_string()
            .matches("\"additionalProperties\":false")
            .count();
        assert!(closed >= SCHEMA_KEYS.len(), "{closed} closed mappings");
    }

    #[test]
    fn the_field_types_are_the_validators() {
        let schema = schema();
        assert_eq!(
            schema["definitions"]["typeExpression"]["anyOf"][0]["enum"],
            json!(BASE_TYPES)
        );
    }
}
