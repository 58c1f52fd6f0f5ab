//! The exports (AsyncAPI, JSON Schema, the documentation site): snapshots for the
//! reference schemas, the official AsyncAPI parser, hostile strings in every format,
//! bad input. The site in a real browser is `site_browser.rs`; JSON Schema against the
//! generated Rust is `tests/jsonschema_agreement.rs` of the workspace.

mod support;

use std::path::{Path, PathBuf};

use orkestra_gen::{Error, Generator, model::Model};
use support::{Node, node_modules};

fn dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn generator(sets: &[&str]) -> Generator {
    sets.iter()
        .fold(Generator::new().cargo_directives(false), |g, s| {
            g.schemas(dir(s))
        })
        .app_prefix("Shop")
}

fn model(sets: &[&str]) -> Model {
    generator(sets).render().unwrap().model
}

const SHOP: &[&str] = &["../schemas"];
const HOSTILE: &[&str] = &["tests/golden/nasty", "tests/exports/hostile"];
const PERSONAL: &[&str] = &["tests/exports/personal"];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("orkestra-exports-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

#[test]
fn asyncapi_of_the_reference_schemas() {
    let yaml = orkestra_gen::export::asyncapi_yaml(&model(SHOP));
    insta::assert_snapshot!("asyncapi_shop", yaml);
}

#[test]
fn json_schema_of_a_command_and_an_event() {
    let files = orkestra_gen::export::jsonschema_files(&model(SHOP));
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Accounts.CreateAccount.json",
            "Accounts.AccountCreated.json",
            "Orders.PlaceOrder.json",
            "Orders.CancelOrder.json",
            "Orders.OrderPlaced.json",
            "Orders.OrderCancelled.json"
        ]
    );
    let get = |n: &str| &files.iter().find(|(f, _)| f == n).unwrap().1;
    insta::assert_snapshot!("jsonschema_place_order", get("Orders.PlaceOrder.json"));
    insta::assert_snapshot!("jsonschema_order_placed", get("Orders.OrderPlaced.json"));
    let command: serde_json::Value = serde_json::from_str(get("Orders.PlaceOrder.json")).unwrap();
    let event: serde_json::Value = serde_json::from_str(get("Orders.OrderPlaced.json")).unwrap();
    assert_eq!(
        command["additionalProperties"], false,
        "commands are closed"
    );
    assert!(
        event.get("additionalProperties").is_none(),
        "events are open"
    );
    assert_eq!(
        command["$defs"]["Orders.Address"]["additionalProperties"],
        false
    );
}

/// Personal fields are marked where they are (`x-personal: true`, in named types too,
/// beside a `$ref` through `allOf`), the event names its subject, and nothing else is.
#[test]
fn json_schema_and_asyncapi_mark_personal_fields() {
    let m = model(PERSONAL);
    let files = orkestra_gen::export::jsonschema_files(&m);
    let get = |n: &str| -> serde_json::Value {
        serde_json::from_str(&files.iter().find(|(f, _)| f == n).unwrap().1).unwrap()
    };
    let text = &files
        .iter()
        .find(|(f, _)| f == "Customers.CustomerRegistered.json")
        .unwrap()
        .1;
    insta::assert_snapshot!("jsonschema_customer_registered", text);
    let event = get("Customers.CustomerRegistered.json");
    assert_eq!(event["x-personal-subject"], "customer_id");
    let props = &event["properties"];
    assert_eq!(props["email"]["x-personal"], true);
    assert_eq!(props["name"]["x-personal"], true);
    // A named type sealed whole: the mark beside its `$ref`, through `allOf`.
    assert_eq!(props["card"]["x-personal"], true);
    assert_eq!(props["card"]["allOf"][0]["$ref"], "#/$defs/Customers.Card");
    for plain in ["customer_id", "address", "contacts", "plan"] {
        assert!(props[plain].get("x-personal").is_none(), "{plain}");
    }
    let address = &event["$defs"]["Customers.Address"]["properties"];
    assert_eq!(address["street"]["x-personal"], true);
    assert!(address["city"].get("x-personal").is_none());
    assert_eq!(
        event["$defs"]["Customers.Contact"]["properties"]["phone"]["x-personal"],
        true
    );
    // No personal data: no marks at all.
    for plain in [
        "Customers.PlanChanged.json",
        "Customers.RegisterCustomer.json",
    ] {
        assert!(
            !files
                .iter()
                .find(|(f, _)| f == plain)
                .unwrap()
                .1
                .contains("x-personal")
        );
    }

    let doc: serde_json::Value =
        serde_json::from_str(&orkestra_gen::export::asyncapi_json(&m)).unwrap();
    let messages = &doc["components"]["messages"];
    let registered = messages
        .as_object()
        .unwrap()
        .values()
        .find(|msg| msg["x-orkestra"]["type"] == "Shop.Customers.CustomerRegistered")
        .unwrap();
    assert_eq!(registered["payload"]["x-personal-subject"], "customer_id");
    assert_eq!(
        registered["payload"]["properties"]["email"]["x-personal"],
        true
    );
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Customers.Address"]["properties"]["street"]["x-personal"],
        true
    );
    // The command's strict form of a type used by events only is not there; where a
    // named type is both, both forms carry the mark.
    let text = orkestra_gen::export::asyncapi_json(&m);
    assert_eq!(
        text.matches("\"x-personal\": true").count(),
        5,
        "email, name, card, street, phone"
    );
}

#[test]
fn the_official_asyncapi_parser_accepts_every_document() {
    let Some(modules) = node_modules() else {
        return;
    };
    let out = tmp("asyncapi");
    let mut files = Vec::new();
    for (name, sets) in [
        ("shop", SHOP),
        ("hostile", HOSTILE),
        ("wiring", &["tests/golden/wiring"][..]),
        ("formats", &["tests/golden/formats"][..]),
        ("decisions", DECISIONS),
        ("personal", PERSONAL),
    ] {
        for ext in ["yaml", "json"] {
            let path = out.join(format!("{name}.{ext}"));
            generator(sets).asyncapi(&path).export().unwrap();
            files.push(path);
        }
    }
    // One node process for all of them: the parser takes a second to load.
    let run = files
        .iter()
        .fold(Node::new(&modules).script("asyncapi_parse.cjs"), |n, f| {
            n.arg(f)
        })
        .run();
    assert!(
        run.status.success(),
        "the parser refused a document:\n{}{}",
        run.stdout,
        run.stderr
    );
    let summaries: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("errors").is_some())
        .collect();
    assert_eq!(summaries.len(), files.len(), "{}", run.stdout);
    // Not even a warning (severity 1): the only note allowed is the informational
    // "a newer AsyncAPI version exists" (severity 2), since the contract is 3.0.
    let warnings: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["severity"].as_u64().is_some_and(|s| s < 2))
        })
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    for s in &summaries {
        assert_eq!(s["errors"], 0, "{s}");
        assert!(s["channels"].as_u64().unwrap() >= 2, "{s}");
    }
    // schemas/: 6 topics + the dead-letter channel; 3 dispatches, 3 emits, 12 receives
    // (OrderAudit's wildcard receives both order events), 1 dead-letter receive.
    for s in &summaries[..2] {
        assert_eq!(
            (&s["channels"], &s["operations"], &s["messages"]),
            (
                &serde_json::json!(7),
                &serde_json::json!(19),
                &serde_json::json!(6)
            ),
            "{s}"
        );
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn yaml_and_json_are_the_same_document() {
    for sets in [SHOP, HOSTILE] {
        let m = model(sets);
        let from_yaml: serde_json::Value =
            serde_saphyr::from_str(&orkestra_gen::export::asyncapi_yaml(&m)).unwrap();
        let from_json: serde_json::Value =
            serde_json::from_str(&orkestra_gen::export::asyncapi_json(&m)).unwrap();
        assert_eq!(from_yaml, from_json);
    }
}

#[test]
fn hostile_strings_are_inert_in_every_format() {
    let m = model(HOSTILE);
    let hostile_description = m
        .modules
        .iter()
        .find(|x| x.namespace == "Shop.Hostile")
        .unwrap()
        .description
        .clone()
        .unwrap();
    let mut outputs = vec![
        (
            "asyncapi.yaml".to_owned(),
            orkestra_gen::export::asyncapi_yaml(&m),
        ),
        (
            "asyncapi.json".to_owned(),
            orkestra_gen::export::asyncapi_json(&m),
        ),
    ];
    outputs.extend(orkestra_gen::export::jsonschema_files(&m));
    outputs.extend(orkestra_gen::export::docs_files(&m).unwrap());
    for (name, text) in &outputs {
        for bad in ['\u{202e}', '\u{2066}'] {
            assert!(!text.contains(bad), "{name}: a raw bidi control");
        }
        for bad in [
            "<script>window",
            "<img",
            "<svg onload",
            "<style>body",
            "<a href=\"javascript",
        ] {
            assert!(
                !text.contains(bad),
                "{name}: `{bad}` reached the output unescaped"
            );
        }
        if name.ends_with(".html") {
            // One script per page at most: the index's own filter.
            assert!(text.matches("<script").count() <= 1, "{name}");
        }
    }
    // The escaped text still says what the author wrote: it round-trips through JSON.
    let doc: serde_json::Value =
        serde_json::from_str(&orkestra_gen::export::asyncapi_json(&m)).unwrap();
    assert!(
        doc["info"]["description"]
            .as_str()
            .unwrap()
            .contains(&hostile_description)
    );
    let svg = orkestra_gen::export::flow_svg(&m).unwrap();
    assert!(
        svg.contains("hostile.events.#"),
        "the wildcard pattern is a node"
    );
}

#[test]
fn the_flow_graph_has_a_linked_node_per_command_event_and_handler() {
    let m = model(SHOP);
    let svg = orkestra_gen::export::flow_svg(&m).unwrap();
    let count = |kind: &str| svg.matches(&format!("data-kind=\"{kind}\"")).count();
    assert_eq!(count("command"), 3);
    assert_eq!(count("event"), 3);
    assert_eq!(count("handler"), 10);
    assert_eq!(count("pattern"), 1, "OrderAudit's `orders.events.#`");
    assert_eq!(count("deadletters"), 1);
    assert!(svg.contains("<a href=\"messages/Orders.PlaceOrder.html\">"));
    assert!(svg.contains("<a href=\"handlers/OrderAudit.html\">"));
    // Every page a node links to exists in the site.
    let site: Vec<String> = orkestra_gen::export::docs_files(&m)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    for link in svg.split("<a href=\"").skip(1) {
        let target = link.split('"').next().unwrap();
        assert!(site.iter().any(|p| p == target), "{target} is not a page");
    }
}

#[test]
fn the_flow_graph_draws_process_managers_between_their_events_and_commands() {
    let m = model(&["tests/golden/process_managers"]);
    let svg = orkestra_gen::export::flow_svg(&m).unwrap();
    let count = |kind: &str| svg.matches(&format!("data-kind=\"{kind}\"")).count();
    assert_eq!(count("process"), 2, "Fulfilment and Audit");
    assert!(svg.contains(">Fulfilment<"), "labelled with its name");
    // 5 events in, 3 commands out for Fulfilment; OrderPlaced in for Audit; and the
    // three command bindings: every edge is drawn.
    assert_eq!(svg.matches("class=\"edge\"").count(), 5 + 3 + 1 + 3);
}

#[test]
fn exports_are_deterministic_and_written_only_when_changed() {
    let out = tmp("determinism");
    let g = generator(SHOP)
        .asyncapi(out.join("asyncapi.json"))
        .jsonschema(out.join("schemas"))
        .docs(out.join("site"));
    let first = g.export().unwrap();
    assert_eq!(first.changed, first.files.len());
    assert_eq!(first.files.len(), 1 + 6 + (3 + 6 + 10));
    let again = g.export().unwrap();
    assert_eq!(again.changed, 0, "nothing changed, nothing rewritten");
    // A page whose message is gone is removed; other files are left alone.
    let stale = out.join("site/messages/Orders.Gone.html");
    std::fs::write(&stale, "old").unwrap();
    std::fs::write(out.join("site/CNAME"), "docs.example.com").unwrap();
    g.export().unwrap();
    assert!(!stale.exists());
    assert!(out.join("site/CNAME").exists());
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn build_rs_writes_the_exports_with_the_rust() {
    let out = tmp("build-rs");
    generator(SHOP)
        .out_file(out.join("generated.rs"))
        .asyncapi(out.join("asyncapi.yaml"))
        .docs(out.join("site"))
        .generate()
        .unwrap();
    for f in [
        "generated.rs",
        "asyncapi.yaml",
        "site/index.html",
        "site/flow.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn a_schema_set_with_errors_exports_nothing_and_reports_what_check_reports() {
    let out = tmp("broken");
    let g = Generator::new()
        .cargo_directives(false)
        .schemas(dir("tests/broken/16_default_wrong_type.yaml"))
        .app_prefix("Shop")
        .asyncapi(out.join("asyncapi.yaml"))
        .jsonschema(out.join("schemas"))
        .docs(out.join("site"));
    let check = g.check().unwrap();
    assert!(check.has_errors());
    match g.export() {
        Err(Error::Schema(diags)) => assert_eq!(diags, check),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists(), "nothing was written");
}

#[test]
fn an_unwritable_output_is_an_io_error_naming_it() {
    let out = tmp("unwritable");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("a-file");
    std::fs::write(&file, "").unwrap();
    let site = file.join("site");
    match generator(SHOP).docs(&site).export() {
        Err(Error::Io { path, .. }) => assert_eq!(path, site),
        other => panic!("{other:?}"),
    }
    let yaml = file.join("asyncapi.yaml");
    match generator(SHOP).asyncapi(&yaml).export() {
        Err(Error::Io { path, .. }) => assert!(path == yaml || path == file, "{path:?}"),
        other => panic!("{other:?}"),
    }
    match generator(SHOP).asyncapi(out.join("asyncapi.txt")).export() {
        Err(Error::Usage(m)) => assert!(m.contains("asyncapi.txt"), "{m}"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn the_readme_picture_is_the_graph_of_the_reference_schemas() {
    let svg = orkestra_gen::export::flow_svg(&model(SHOP)).unwrap();
    let committed = dir("../docs/flow.svg");
    if std::env::var("ORKESTRA_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&committed, &svg).unwrap();
    }
    assert!(
        std::fs::read_to_string(&committed).is_ok_and(|c| c == svg),
        "docs/flow.svg is stale: ORKESTRA_UPDATE_DOCS=1 cargo test -p orkestra-gen --test exports"
    );
}

#[test]
fn the_readme_decision_picture_is_the_graph_of_the_example_decision() {
    let svg =
        orkestra_gen::export::flow_svg(&model(&["../examples/orders/schemas/customers.yaml"]))
            .unwrap();
    assert!(svg.contains("data-kind=\"decision\""), "{svg}");
    assert!(svg.contains(">reads customer_id, username<"), "{svg}");
    let committed = dir("../docs/decision.svg");
    if std::env::var("ORKESTRA_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&committed, &svg).unwrap();
    }
    assert!(
        std::fs::read_to_string(&committed).is_ok_and(|c| c == svg),
        "docs/decision.svg is stale: ORKESTRA_UPDATE_DOCS=1 cargo test -p orkestra-gen --test exports"
    );
}

/// The names `orkestra-runtime/src/bus/rabbitmq/topology.rs` gives exchanges and queues
/// (default prefix `orkestra`), as the AsyncAPI bindings must state them.
#[test]
fn asyncapi_bindings_name_the_real_topology() {
    let doc: serde_json::Value =
        serde_json::from_str(&orkestra_gen::export::asyncapi_json(&model(SHOP))).unwrap();
    let channel = &doc["channels"]["orders.commands.place_order"];
    assert_eq!(channel["address"], "orders.commands.place_order");
    assert_eq!(channel["bindings"]["amqp"]["is"], "routingKey");
    assert_eq!(
        channel["bindings"]["amqp"]["exchange"]["name"],
        "orkestra.commands"
    );
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["type"], "direct");
    let queue = &channel["x-orkestra-queues"][0];
    assert_eq!(queue["name"], "orkestra.cmd.orders.commands.place_order");
    assert_eq!(queue["deadLetterExchange"], "orkestra.retry");
    assert_eq!(queue["exhaustedTo"], "orkestra.deadletter");

    let channel = &doc["channels"]["orders.events.order_cancelled"];
    assert_eq!(
        channel["bindings"]["amqp"]["exchange"]["name"],
        "orkestra.events"
    );
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["type"], "topic");
    let queues: Vec<(&str, &str)> = channel["x-orkestra-queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["name"].as_str().unwrap(),
                q["bindingKey"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        queues,
        [
            (
                "orkestra.evt.OrderProjector",
                "orders.events.order_cancelled"
            ),
            ("orkestra.evt.OrderAudit", "orders.events.#"),
        ]
    );
    // The wildcard binding receives each channel it matches.
    let ops = doc["operations"].as_object().unwrap();
    for key in [
        "OrderAudit.receives.Orders.OrderPlaced",
        "OrderAudit.receives.Orders.OrderCancelled",
    ] {
        assert_eq!(ops[key]["action"], "receive", "{key}");
        assert_eq!(ops[key]["bindings"]["amqp"]["ack"], true);
    }
    assert_eq!(
        ops["PlaceOrderHandler.emits.Orders.OrderPlaced"]["action"],
        "send"
    );
    assert_eq!(ops["dispatch.Orders.PlaceOrder"]["action"], "send");
    assert_eq!(
        ops["DeadLetterAlarm.receives.dead-letters"]["x-orkestra-queue"]["name"],
        "orkestra.deadletter.handler.DeadLetterAlarm"
    );
    let message = &doc["components"]["messages"]["Orders.PlaceOrder"];
    assert_eq!(message["contentType"], "application/json");
    assert_eq!(
        message["headers"]["$ref"],
        "#/components/schemas/orkestra.Metadata"
    );
    assert_eq!(
        doc["components"]["correlationIds"]["correlationId"]["location"],
        "$message.header#/correlation_id"
    );
}

#[test]
fn a_wildcard_binding_is_drawn_in_each_flow_it_taps() {
    let text = "namespace: Shop.W\n\
        commands:\n  A: { params: { x: { type: string } } }\n  B: { params: { x: { type: string } } }\n\
        events:\n  A1: { fields: { x: { type: string } } }\n  B1: { fields: { x: { type: string } } }\n\
        handlers:\n  AH: { command: A, emits: [A1] }\n  BH: { command: B, emits: [B1] }\n  Tap: { topic: \"w.events.*\" }\n";
    let sources = [orkestra_gen::Source {
        path: "w.yaml".into(),
        text: text.into(),
    }];
    let model = orkestra_gen::generate_from_sources(&sources, "Shop")
        .unwrap()
        .model;
    let svg = orkestra_gen::export::flow_svg(&model).unwrap();
    assert_eq!(
        svg.matches("data-key=\"Tap\"").count(),
        2,
        "one copy per flow"
    );
    assert_eq!(svg.matches("data-kind=\"pattern\"").count(), 2);
    assert_eq!(
        svg.matches("class=\"part\"").count(),
        2,
        "the flows stay apart"
    );
    assert_eq!(svg.matches("<a href=\"handlers/Tap.html\">").count(), 2);
}

#[test]
fn the_site_shows_each_readable_version_with_its_upcast_step() {
    let site = orkestra_gen::export::docs_files(&model(&["tests/golden/evolution"])).unwrap();
    let page = |name: &str| {
        let html = &site.iter().find(|(p, _)| p == name).unwrap().1;
        let start = html.find("<table class=\"versions\">").unwrap();
        html[start..start + html[start..].find("</table>").unwrap()].to_owned()
    };
    let reserved = page("messages/Inventory.ItemReserved.html");
    let rows: Vec<&str> = reserved.lines().skip(1).collect();
    assert_eq!(
        rows,
        [
            "<tr><td>3</td><td>current</td></tr>",
            "<tr><td>2</td><td>read as version 3 after: removed <code>legacy_ref</code>; added <code>channel</code> = <code>&quot;web&quot;</code>, <code>quantity</code> = <code>1</code></td></tr>",
            "<tr><td>1</td><td>read as version 2 after: renamed <code>product_id</code> → <code>sku</code></td></tr>",
        ]
    );
    assert!(page("messages/Inventory.StockCounted.html").contains("a custom step (Rust)"));
    // Version 1 of PriceChanged is no longer readable: it is not listed.
    assert!(!page("messages/Inventory.PriceChanged.html").contains("<td>1</td>"));
}

const DECISIONS: &[&str] = &["tests/golden/decisions"];

#[test]
fn the_flow_graph_draws_decisions_with_their_command_emits_and_dashed_reads() {
    let m = model(DECISIONS);
    let svg = orkestra_gen::export::flow_svg(&m).unwrap();
    let count = |kind: &str| svg.matches(&format!("data-kind=\"{kind}\"")).count();
    assert_eq!(count("decision"), 2, "Subscription and UniqueUsername");
    assert!(svg.contains("<a href=\"decisions/Courses.Subscription.html\">"));
    assert!(svg.contains("<a href=\"decisions/Names.UniqueUsername.html\">"));
    // Reads: CourseDefined (course_id) and StudentSubscribed (course_id, student_id) for
    // Subscription, UserRegistered (username) for UniqueUsername: one dashed edge per
    // (event, decision), labelled with the tags and explained in its tooltip.
    let reads: Vec<&str> = svg
        .lines()
        .filter(|l| l.contains("class=\"edge dashed reads\""))
        .collect();
    assert_eq!(reads.len(), 3, "{reads:#?}");
    assert!(
        reads.iter().any(|l| l.contains(
            "<title>Subscription reads StudentSubscribed by course (tag course_id = param course_id), student (tag student_id = param student_id)</title>"
        )),
        "{reads:#?}"
    );
    assert!(
        reads.iter().any(|l| l.contains(
            "<title>UniqueUsername reads UserRegistered by taken (tag username = param username)</title>"
        )),
        "{reads:#?}"
    );
    assert!(svg.contains("<text class=\"edge-label\""), "{svg}");
    for label in [
        ">reads course_id<",
        ">reads course_id, student_id<",
        ">reads username<",
    ] {
        assert!(svg.contains(label), "{label}");
    }
    // Solid: the command in (2), the events appended out (Subscription: 2,
    // UniqueUsername: 1), and DefineCourse into nothing (aggregates are not drawn).
    assert_eq!(svg.matches("class=\"edge\"").count(), 2 + 3, "{svg}");
    // A read edge that layout-rs turned round (the event is read and appended) still
    // points at the decision: its arrowhead is at the start of its path.
    assert!(svg.contains("marker-start=\"url(#arrow)\""), "{svg}");
    assert!(svg.contains("orient=\"auto-start-reverse\""));
    // Every page a node links to exists in the site.
    let site: Vec<String> = orkestra_gen::export::docs_files(&m)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    for link in svg.split("<a href=\"").skip(1) {
        let target = link.split('"').next().unwrap();
        assert!(site.iter().any(|p| p == target), "{target} is not a page");
    }
}

#[test]
fn the_site_has_a_page_per_decision_and_shows_tags_on_event_pages() {
    let site = orkestra_gen::export::docs_files(&model(DECISIONS)).unwrap();
    let page = |name: &str| {
        site.iter()
            .find(|(p, _)| p == name)
            .unwrap_or_else(|| panic!("no page {name}"))
            .1
            .clone()
    };
    let decision = page("decisions/Courses.Subscription.html");
    for expected in [
        "<span class=\"badge decision\">decision</span> Subscription</h1>",
        "At most `capacity` students per course, at most three courses per student.",
        "<dt>Command</dt><dd><a href=\"../messages/Courses.SubscribeStudent.html\">SubscribeStudent</a></dd>",
        "<dt>Stream</dt><dd><code>subscription-{course_id}-{student_id}</code></dd>",
        "<dt>Conflict retries</dt><dd>up to 5</dd>",
        "<tr><td><code>course</code></td><td><a href=\"../messages/Courses.CourseDefined.html\">CourseDefined</a>, <a href=\"../messages/Courses.StudentSubscribed.html\">StudentSubscribed</a></td><td><code>course_id</code></td><td><code>course_id</code></td></tr>",
        "<tr><td><code>student</code></td><td><a href=\"../messages/Courses.StudentSubscribed.html\">StudentSubscribed</a></td><td><code>student_id</code></td><td><code>student_id</code></td></tr>",
        "<td><code>course_taken</code></td><td><code>integer</code></td>",
        "<li><a href=\"../messages/Courses.CourseFull.html\">CourseFull</a>",
    ] {
        assert!(decision.contains(expected), "{expected}\n{decision}");
    }
    // A tag mapped to a param of another name says so.
    assert!(
        page("decisions/Names.UniqueUsername.html").contains(
            "<tr><td><code>taken</code></td><td><a href=\"../messages/Names.UserRegistered.html\">UserRegistered</a></td><td><code>username</code></td><td><code>username</code></td></tr>"
        )
    );
    let event = page("messages/Courses.StudentSubscribed.html");
    for expected in [
        "Tags: <code>course_id</code>, <code>student_id</code>",
        "<li><a href=\"../decisions/Courses.Subscription.html\">Subscription</a> (a decision: declares it in <code>emits</code>)</li>",
        "<h2>Read by decisions</h2>",
        "<li><a href=\"../decisions/Courses.Subscription.html\">Subscription</a> <span class=\"mute\">by tag course_id, student_id</span></li>",
    ] {
        assert!(event.contains(expected), "{expected}\n{event}");
    }
    assert!(!page("messages/Courses.CourseFull.html").contains("Tags:"));
    let command = page("messages/Courses.SubscribeStudent.html");
    assert!(command.contains(
        "<li><a href=\"../decisions/Courses.Subscription.html\">Subscription</a> <span class=\"mute\">(a decision across streams)</span></li>"
    ));
    let index = page("index.html");
    assert!(index.contains(", 2 decisions in 2 namespaces"), "{index}");
    assert!(index.contains("<h3>Decisions</h3>"));
    assert!(index.contains("<a href=\"decisions/Courses.Subscription.html\">Subscription</a>"));
}

#[test]
fn asyncapi_shows_a_decision_as_the_receiver_of_its_command_and_sender_of_its_events() {
    let doc: serde_json::Value =
        serde_json::from_str(&orkestra_gen::export::asyncapi_json(&model(DECISIONS))).unwrap();
    let ops = doc["operations"].as_object().unwrap();
    let receive = &ops["Courses.Subscription.receives.Courses.SubscribeStudent"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(
        receive["channel"]["$ref"],
        "#/channels/courses.commands.subscribe_student"
    );
    assert_eq!(
        receive["x-orkestra-queue"]["name"],
        "orkestra.cmd.courses.commands.subscribe_student"
    );
    let decision = &receive["x-orkestra-decision"];
    assert_eq!(decision["stream"], "subscription-{course_id}-{student_id}");
    assert_eq!(decision["conflictRetries"], 5);
    assert_eq!(
        decision["reads"][0],
        serde_json::json!({"name": "course", "events": ["CourseDefined", "StudentSubscribed"], "tag": "course_id", "param": "course_id"})
    );
    for key in [
        "Courses.Subscription.emits.Courses.StudentSubscribed",
        "Courses.Subscription.emits.Courses.CourseFull",
        "Names.UniqueUsername.emits.Names.UserRegistered",
    ] {
        assert_eq!(ops[key]["action"], "send", "{key}");
    }
    // An event a decision emits is not an undeclared publish.
    assert!(!ops.contains_key("publish.Courses.StudentSubscribed"));
    let queues = &doc["channels"]["courses.commands.subscribe_student"]["x-orkestra-queues"];
    assert_eq!(queues[0]["handler"], "Subscription");
    let messages = &doc["components"]["messages"];
    assert_eq!(
        messages["Courses.StudentSubscribed"]["x-orkestra-tags"],
        serde_json::json!(["course_id", "student_id"])
    );
    assert_eq!(
        messages["Names.UserRegistered"]["x-orkestra-tags"],
        serde_json::json!(["user_id", "username"])
    );
    assert!(
        messages["Courses.CourseFull"]
            .get("x-orkestra-tags")
            .is_none()
    );
    assert!(
        messages["Courses.SubscribeStudent"]
            .get("x-orkestra-tags")
            .is_none()
    );
}
