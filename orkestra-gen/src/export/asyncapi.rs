//! AsyncAPI 3.0: the whole message system as one document.
//!
//! - one channel per topic; its AMQP binding names the exchange the RabbitMQ bus
//!   publishes it to (`orkestra.commands`, direct, or `orkestra.events`, topic), and
//!   `x-orkestra-queues` lists the queues that consume it with their binding key and
//!   dead-letter exchange, named as `orkestra-runtime/src/bus/rabbitmq/topology.rs`
//!   names them (default prefix `orkestra`);
//! - a `dead-letters` channel on `orkestra.deadletter` for the dead-letter bindings;
//! - operations: `send` for every command (a client dispatches it), for every event a
//!   binding `emits` (and a plain publish for events no binding declares), `receive` for
//!   every binding and each channel it consumes (a wildcard binding, each matching one);
//!   a decision is a binding of its command too: it receives it (from the command's
//!   queue, with `x-orkestra-decision`: its stream, read items and conflict retries)
//!   and sends the events it emits;
//! - messages with their payload schema, the metadata as headers and `correlationId`;
//!   an event's tags (the fields the store indexes it by) as `x-orkestra-tags`;
//!   personal fields as `x-personal: true` on their properties and the event's subject
//!   field as `x-personal-subject` on its payload (the JSON Schema builders mark them).

use super::flow::{Bound, Decided, Flow, Msg};
use super::jsonschema::{Refs, Schemas, example};
use super::tree::Node;
use crate::model::HandlerTarget;
use crate::names;

/// The prefix the RabbitMQ bus puts on every exchange and queue (setting `bus.prefix`).
const PREFIX: &str = "orkestra";
/// The AMQP bindings version these bindings follow.
const AMQP_BINDINGS: &str = "0.3.0";
const METADATA_KEY: &str = "orkestra.Metadata";
const DEAD_LETTERS: &str = "dead-letters";

/// The document, as a tree (printed as YAML or JSON by the caller).
pub(crate) fn document(flow: &Flow<'_>) -> Node {
    let schemas = Schemas::new(flow.model, Refs::Components);
    let mut channels = Node::obj();
    let mut operations = Node::obj();
    let mut messages = Node::obj();

    for msg in &flow.messages {
        let key = msg.key();
        let channel = channel_key(msg);
        channels.set(&channel, topic_channel(flow, msg));
        messages.set(&key, message(flow, &schemas, msg));
        let msg_ref = message_ref(&channel, &key);
        if msg.is_command() {
            operations.set(
                &format!("dispatch.{key}"),
                operation("send", &channel, &msg_ref).with(
                    "summary",
                    Node::str(format!("Dispatch {}.", msg.payload.name)),
                ),
            );
        } else {
            let emitters = flow.emitters(msg);
            let decision_emitters = flow.decision_emitters(msg);
            if emitters.is_empty() && decision_emitters.is_empty() {
                operations.set(
                    &format!("publish.{key}"),
                    operation("send", &channel, &msg_ref).with(
                        "summary",
                        Node::str(format!(
                            "Publish {} (no binding declares it in `emits`).",
                            msg.payload.name
                        )),
                    ),
                );
            }
            for b in emitters {
                operations.set(
                    &format!("{}.emits.{key}", b.key()),
                    operation("send", &channel, &msg_ref).with(
                        "summary",
                        Node::str(format!("{} emits {}.", b.handler.name, msg.payload.name)),
                    ),
                );
            }
            for d in decision_emitters {
                operations.set(
                    &format!("{}.emits.{key}", d.key()),
                    operation("send", &channel, &msg_ref).with(
                        "summary",
                        Node::str(format!(
                            "Decision {} appends {}; it is published once stored.",
                            d.decision.name, msg.payload.name
                        )),
                    ),
                );
            }
        }
        for d in flow.deciders(msg) {
            operations.set(
                &format!("{}.receives.{key}", d.key()),
                decision_receive(&channel, &msg_ref, &d, msg),
            );
        }
        for b in flow.receivers(msg) {
            operations.set(
                &format!("{}.receives.{key}", b.key()),
                receive(&channel, &msg_ref, &b, msg),
            );
        }
    }

    let dead_letter_handlers: Vec<Bound<'_>> = flow
        .handlers
        .iter()
        .copied()
        .filter(|b| matches!(b.handler.target, HandlerTarget::DeadLetters))
        .collect();
    if !dead_letter_handlers.is_empty() && !flow.messages.is_empty() {
        channels.set(DEAD_LETTERS, dead_letter_channel(flow));
        for b in dead_letter_handlers {
            let refs = flow
                .messages
                .iter()
                .map(|m| message_ref(DEAD_LETTERS, &m.key()))
                .collect();
            let queue = format!("{PREFIX}.deadletter.handler.{}", b.handler.name);
            operations.set(
                &format!("{}.receives.dead-letters", b.key()),
                Node::obj()
                    .with("action", Node::str("receive"))
                    .with("channel", reference(&format!("#/channels/{DEAD_LETTERS}")))
                    .with("messages", Node::Arr(refs))
                    .with(
                        "summary",
                        Node::str(format!("{} receives every dead letter.", b.handler.name)),
                    )
                    .with("bindings", ack_binding())
                    .with(
                        "x-orkestra-queue",
                        Node::obj()
                            .with("name", Node::str(queue))
                            .with("bindingKey", Node::str("#")),
                    ),
            );
        }
    }

    let mut components = Node::obj();
    let mut component_schemas = Node::obj().with(METADATA_KEY, metadata_schema());
    // A named struct type appears once per way it is read: open as events read it and,
    // when commands use it, strict as `<key>.Strict`. Enums have one form.
    let used_by = |commands: bool| {
        let mut keys = std::collections::BTreeSet::new();
        for m in flow.messages.iter().filter(|m| m.is_command() == commands) {
            keys.extend(schemas.used_types(&m.payload.fields));
        }
        keys
    };
    let (in_commands, in_events) = (used_by(true), used_by(false));
    for (key, t) in schemas.all_types() {
        let is_enum = matches!(t.kind, crate::model::TypeKind::Enum(_));
        if is_enum || in_events.contains(&key) || !in_commands.contains(&key) {
            component_schemas.set(&key, schemas.named(t, false));
        }
        if !is_enum && in_commands.contains(&key) {
            component_schemas.set(&schemas.def_key(&key, true), schemas.named(t, true));
        }
    }
    components.set("schemas", component_schemas);
    components.set("messages", messages);
    components.set(
        "correlationIds",
        Node::obj().with(
            "correlationId",
            Node::obj()
                .with(
                    "description",
                    Node::str(
                        "The id every message of one flow shares: a command, the events it \
                         causes and what those cause.",
                    ),
                )
                .with("location", Node::str("$message.header#/correlation_id")),
        ),
    );

    Node::obj()
        .with("asyncapi", Node::str("3.0.0"))
        .with("info", info(flow))
        .with("defaultContentType", Node::str("application/json"))
        .with("servers", servers())
        .with("channels", channels)
        .with("operations", operations)
        .with("components", components)
}

fn info(flow: &Flow<'_>) -> Node {
    let title = if flow.model.app_prefix.is_empty() {
        "Messages".to_owned()
    } else {
        format!("{} messages", flow.model.app_prefix)
    };
    let mut description = String::from(
        "Commands, events and handler bindings generated by orkestra-gen from the schemas.\n\n\
         On the RabbitMQ bus a message body is one JSON object \
         `{kind, id, type, topic, version, payload, metadata}`: each message's `payload` \
         below is its `payload`, its `headers` the `metadata`.\n",
    );
    for m in &flow.model.modules {
        description.push_str(&format!(
            "\n- **{}**: {}",
            m.namespace,
            m.description.as_deref().unwrap_or("(no description)")
        ));
    }
    Node::obj()
        .with("title", Node::str(title))
        .with("version", Node::str("1.0.0"))
        .with("description", Node::str(description))
}

fn servers() -> Node {
    Node::obj().with(
        "rabbitmq",
        Node::obj()
            .with("host", Node::str("localhost:5672"))
            .with("protocol", Node::str("amqp"))
            .with("protocolVersion", Node::str("0.9.1"))
            .with(
                "description",
                Node::str(
                    "The RabbitMQ bus (`bus.url` in the configuration; exchanges and queues \
                     are declared by every bus instance, prefix `orkestra`).",
                ),
            ),
    )
}

/// `orders.commands.place_order` as a component key.
fn channel_key(msg: &Msg<'_>) -> String {
    names::component_key(&msg.payload.topic)
}

fn reference(path: &str) -> Node {
    Node::obj().with("$ref", Node::str(path))
}

fn message_ref(channel: &str, key: &str) -> Node {
    reference(&format!("#/channels/{channel}/messages/{key}"))
}

fn operation(action: &str, channel: &str, msg_ref: &Node) -> Node {
    Node::obj()
        .with("action", Node::str(action))
        .with("channel", reference(&format!("#/channels/{channel}")))
        .with("messages", Node::Arr(vec![msg_ref.clone()]))
}

/// Manual acknowledgements: what every consumer of the bus does.
fn ack_binding() -> Node {
    Node::obj().with(
        "amqp",
        Node::obj()
            .with("ack", Node::Bool(true))
            .with("bindingVersion", Node::str(AMQP_BINDINGS)),
    )
}

fn exchange(name: &str, kind: &str) -> Node {
    Node::obj()
        .with("name", Node::str(name))
        .with("type", Node::str(kind))
        .with("durable", Node::Bool(true))
        .with("autoDelete", Node::Bool(false))
        .with("vhost", Node::str("/"))
}

/// The queue a binding consumes `msg` from, and the key that binds it.
fn queue_of(b: &Bound<'_>, msg: &Msg<'_>) -> (String, String) {
    if msg.is_command() {
        (
            format!("{PREFIX}.cmd.{}", msg.payload.topic),
            msg.payload.topic.clone(),
        )
    } else {
        let key = match &b.handler.target {
            HandlerTarget::Topic { pattern, .. } => pattern.clone(),
            _ => msg.payload.topic.clone(),
        };
        (format!("{PREFIX}.evt.{}", b.handler.name), key)
    }
}

fn queue_node(queue: &str, binding_key: &str, handler: &str) -> Node {
    Node::obj()
        .with("name", Node::str(queue))
        .with("handler", Node::str(handler))
        .with("bindingKey", Node::str(binding_key))
        .with("durable", Node::Bool(true))
        .with("deadLetterExchange", Node::str(format!("{PREFIX}.retry")))
        .with("deadLetterRoutingKey", Node::str(queue))
        .with("exhaustedTo", Node::str(format!("{PREFIX}.deadletter")))
}

fn topic_channel(flow: &Flow<'_>, msg: &Msg<'_>) -> Node {
    let key = msg.key();
    let (exchange_name, kind) = if msg.is_command() {
        (format!("{PREFIX}.commands"), "direct")
    } else {
        (format!("{PREFIX}.events"), "topic")
    };
    let mut queues: Vec<Node> = flow
        .receivers(msg)
        .iter()
        .map(|b| {
            let (queue, binding_key) = queue_of(b, msg);
            queue_node(&queue, &binding_key, &b.handler.name)
        })
        .collect();
    // A decided command is consumed from the command's queue, as a handler's is.
    for d in flow.deciders(msg) {
        let queue = format!("{PREFIX}.cmd.{}", msg.payload.topic);
        queues.push(queue_node(&queue, &msg.payload.topic, &d.decision.name));
    }
    let what = if msg.is_command() { "Command" } else { "Event" };
    Node::obj()
        .with("address", Node::str(msg.payload.topic.clone()))
        .with("title", Node::str(msg.payload.type_name.clone()))
        .with(
            "description",
            Node::str(format!(
                "{what} `{}`, published to exchange `{exchange_name}` ({kind}) with routing key \
                 `{}`. Each consuming queue dead-letters to `{PREFIX}.retry` for its retries; \
                 a message that exhausts them goes to `{PREFIX}.deadletter`.",
                msg.payload.type_name, msg.payload.topic
            )),
        )
        .with(
            "messages",
            Node::obj().with(&key, reference(&format!("#/components/messages/{key}"))),
        )
        .with(
            "bindings",
            Node::obj().with(
                "amqp",
                Node::obj()
                    .with("is", Node::str("routingKey"))
                    .with("exchange", exchange(&exchange_name, kind))
                    .with("bindingVersion", Node::str(AMQP_BINDINGS)),
            ),
        )
        .with("x-orkestra-queues", Node::Arr(queues))
}

fn dead_letter_channel(flow: &Flow<'_>) -> Node {
    let messages = flow
        .messages
        .iter()
        .map(|m| {
            let key = m.key();
            let r = reference(&format!("#/components/messages/{key}"));
            (key, r)
        })
        .collect();
    Node::obj()
        .with("address", Node::Null)
        .with("title", Node::str("Dead letters"))
        .with(
            "description",
            Node::str(format!(
                "Every message that exhausted its retries or was rejected, republished to \
                 `{PREFIX}.deadletter` with its original routing key; headers \
                 `x-orkestra-original-exchange`, `x-orkestra-original-routing-key`, \
                 `x-orkestra-handler`, `x-orkestra-attempts` and `x-orkestra-error` say why. \
                 The catch-all queue is `{PREFIX}.deadletter.all`."
            )),
        )
        .with("messages", Node::Obj(messages))
        .with(
            "bindings",
            Node::obj().with(
                "amqp",
                Node::obj()
                    .with("is", Node::str("routingKey"))
                    .with(
                        "exchange",
                        exchange(&format!("{PREFIX}.deadletter"), "topic"),
                    )
                    .with("bindingVersion", Node::str(AMQP_BINDINGS)),
            ),
        )
}

fn receive(channel: &str, msg_ref: &Node, b: &Bound<'_>, msg: &Msg<'_>) -> Node {
    let (queue, binding_key) = queue_of(b, msg);
    let mut op = operation("receive", channel, msg_ref)
        .with(
            "summary",
            Node::str(format!("{} receives {}.", b.handler.name, msg.payload.name)),
        )
        .with("bindings", ack_binding())
        .with(
            "x-orkestra-queue",
            Node::obj()
                .with("name", Node::str(queue))
                .with("bindingKey", Node::str(binding_key)),
        );
    if let Some(d) = &b.handler.description {
        op.set("description", Node::str(d.clone()));
    }
    if let Some(n) = b.handler.max_retries {
        op.set("x-orkestra-max-retries", Node::int(n));
    }
    op
}

fn decision_receive(channel: &str, msg_ref: &Node, d: &Decided<'_>, msg: &Msg<'_>) -> Node {
    let dec = d.decision;
    let queue = format!("{PREFIX}.cmd.{}", msg.payload.topic);
    let reads = dec
        .reads
        .iter()
        .map(|item| {
            Node::obj()
                .with("name", Node::str(item.name.clone()))
                .with(
                    "events",
                    Node::Arr(
                        item.events
                            .iter()
                            .map(|r| Node::str(r.name.clone()))
                            .collect(),
                    ),
                )
                .with("tag", Node::str(item.tag.clone()))
                .with("param", Node::str(item.param.clone()))
        })
        .collect();
    let mut op = operation("receive", channel, msg_ref)
        .with(
            "summary",
            Node::str(format!(
                "Decision {} decides {} across streams.",
                dec.name, msg.payload.name
            )),
        )
        .with("bindings", ack_binding())
        .with(
            "x-orkestra-queue",
            Node::obj()
                .with("name", Node::str(queue))
                .with("bindingKey", Node::str(msg.payload.topic.clone())),
        )
        .with(
            "x-orkestra-decision",
            Node::obj()
                .with("name", Node::str(dec.name.clone()))
                .with("stream", Node::str(dec.stream_text.clone()))
                .with("reads", Node::Arr(reads))
                .with("conflictRetries", Node::int(dec.conflict_retries)),
        );
    if let Some(desc) = &dec.description {
        op.set("description", Node::str(desc.clone()));
    }
    op
}

fn message(flow: &Flow<'_>, schemas: &Schemas<'_>, msg: &Msg<'_>) -> Node {
    let p = msg.payload;
    let mut m = Node::obj()
        .with("name", Node::str(p.name.clone()))
        .with("title", Node::str(p.type_name.clone()));
    if let Some(d) = &p.description {
        m.set("summary", Node::str(first_line(d)));
        m.set("description", Node::str(d.clone()));
    }
    m.set("contentType", Node::str("application/json"));
    m.set(
        "headers",
        reference(&format!("#/components/schemas/{METADATA_KEY}")),
    );
    m.set(
        "correlationId",
        reference("#/components/correlationIds/correlationId"),
    );
    m.set("payload", schemas.payload(msg));
    m.set(
        "examples",
        Node::Arr(vec![
            Node::obj()
                .with("name", Node::str("example"))
                .with("payload", example(flow.model, &p.fields)),
        ]),
    );
    m.set(
        "x-orkestra",
        Node::obj()
            .with(
                "kind",
                Node::str(if msg.is_command() { "command" } else { "event" }),
            )
            .with("type", Node::str(p.type_name.clone()))
            .with("version", Node::int(p.version)),
    );
    if !p.tags.is_empty() {
        // The fields whose values the store indexes the event by (`<field>:<value>`).
        m.set(
            "x-orkestra-tags",
            Node::Arr(p.tags.iter().map(|t| Node::str(t.clone())).collect()),
        );
    }
    m
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// `Metadata` as it travels with every message.
fn metadata_schema() -> Node {
    let text = |d: &str| {
        Node::obj()
            .with("type", Node::str("string"))
            .with("description", Node::str(d))
    };
    let optional = |d: &str| {
        Node::obj()
            .with(
                "type",
                Node::Arr(vec![Node::str("string"), Node::str("null")]),
            )
            .with("description", Node::str(d))
    };
    Node::obj()
        .with("title", Node::str("Metadata"))
        .with(
            "description",
            Node::str("What travels with every command and event."),
        )
        .with("type", Node::str("object"))
        .with(
            "properties",
            Node::obj()
                .with(
                    "correlation_id",
                    text("The flow's id (a UUID), shared by everything one command causes.")
                        .with("format", Node::str("uuid")),
                )
                .with(
                    "causation_id",
                    optional("The id of the message that caused this one."),
                )
                .with("actor_id", optional("Who acted."))
                .with(
                    "actor_type",
                    text("What kind of actor.")
                        .with(
                            "enum",
                            Node::Arr(
                                ["user", "system", "expert", "scheduler"]
                                    .into_iter()
                                    .map(Node::str)
                                    .collect(),
                            ),
                        )
                        .with("default", Node::str("system")),
                )
                .with(
                    "source",
                    optional("Where the message came from (`web`, a service name)."),
                )
                .with(
                    "issued_at",
                    text("When the message was made (UTC, RFC 3339).")
                        .with("format", Node::str("date-time")),
                ),
        )
        .with(
            "required",
            Node::Arr(vec![Node::str("correlation_id"), Node::str("issued_at")]),
        )
}
