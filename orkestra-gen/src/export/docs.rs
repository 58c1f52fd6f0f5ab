//! The documentation site: static HTML with everything inline (CSS, the filter script,
//! the flow graph as SVG), so it works from a file system or any static host and fetches
//! nothing at view time (each page's Content-Security-Policy forbids it).
//!
//! ```text
//! index.html              namespaces, commands, events, handlers, types; a filter box
//! flow.html, flow.svg     the flow graph (nodes link to pages)
//! messages/<Key>.html     one page per command and event
//! handlers/<Name>.html    one page per handler binding
//! decisions/<Key>.html    one page per decision (command, stream, boundary, state, emits)
//! ```
//!
//! Every schema-authored string goes through `names::html`.

use std::fmt::Write as _;

use super::flow::{Bound, Decided, Flow, Msg, read_tags, target_text};
use super::graph::{Graph, decision_href, handler_href, message_href};
use super::jsonschema::{Refs, Schemas, example};
use crate::model::{Field, Format, Literal, StepKind, Ty, TypeKind, TypeRef};
use crate::names::html;

const CSS: &str = "\
:root{--fg:#18181b;--mute:#52525b;--line:#e4e4e7;--cmd:#1d4ed8;--evt:#c2410c;--hnd:#15803d}\
*{box-sizing:border-box}\
body{margin:0;font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);background:#fafafa}\
header{background:#18181b;color:#fff;padding:.8rem 1.5rem;display:flex;gap:1.5rem;align-items:baseline}\
header a{color:#fff;text-decoration:none;font-weight:600}header nav a{font-weight:400;opacity:.85}\
main{max-width:1100px;margin:0 auto;padding:1rem 1.5rem 3rem}\
h1{font-size:1.6rem;margin:.6rem 0}h2{font-size:1.2rem;margin:1.6rem 0 .5rem}\
.badge{display:inline-block;font-size:.75rem;font-weight:600;padding:.05rem .45rem;border-radius:.3rem;color:#fff;vertical-align:middle}\
.badge.command{background:var(--cmd)}.badge.event{background:var(--evt)}.badge.handler{background:var(--hnd)}.badge.type{background:#6d28d9}.badge.decision{background:#0f766e}.badge.personal{background:#be123c}\
code,pre{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace}\
pre{background:#fff;border:1px solid var(--line);border-radius:.4rem;padding:.7rem;overflow:auto;white-space:pre-wrap}\
table{border-collapse:collapse;width:100%;background:#fff}th,td{border:1px solid var(--line);padding:.35rem .55rem;text-align:left;vertical-align:top}\
th{background:#f4f4f5;font-weight:600}\
.desc{white-space:pre-wrap}.mute{color:var(--mute)}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}dt{font-weight:600}dd{margin:0}\
#filter{width:100%;font-size:1rem;padding:.55rem .7rem;border:1px solid #a1a1aa;border-radius:.4rem}\
.ns{background:#fff;border:1px solid var(--line);border-radius:.5rem;padding:.3rem 1rem .8rem;margin:1rem 0}\
.ns ul{list-style:none;padding:0;margin:.2rem 0;columns:2}.ns li{padding:.1rem 0;break-inside:avoid}\
.ns h3{font-size:.85rem;text-transform:uppercase;letter-spacing:.04em;color:var(--mute);margin:.7rem 0 .1rem}\
.graph{overflow:auto;background:#fff;border:1px solid var(--line);border-radius:.5rem;max-height:80vh}\
main:has(.graph){max-width:none}\
a{color:#2563eb}";

/// `default-src 'none'`: nothing is fetched when the site is viewed (the inline style
/// and the filter script are all it runs).
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:";

const FILTER_JS: &str = "\
(function(){\
var box=document.getElementById('filter'),count=document.getElementById('count');\
var items=Array.prototype.slice.call(document.querySelectorAll('[data-search]'));\
function apply(){var q=box.value.trim().toLowerCase(),shown=0;\
items.forEach(function(li){var on=!q||li.getAttribute('data-search').indexOf(q)>=0;li.hidden=!on;if(on)shown++;});\
document.querySelectorAll('.ns').forEach(function(ns){ns.hidden=!ns.querySelector('[data-search]:not([hidden])');});\
document.querySelectorAll('.ns h3').forEach(function(h){var ul=h.nextElementSibling;h.hidden=ul&&!ul.querySelector('[data-search]:not([hidden])');});\
count.textContent=shown+' of '+items.length;}\
box.addEventListener('input',apply);apply();})();";

/// Every file of the site: (path relative to the output directory, content).
pub(crate) fn files(flow: &Flow<'_>) -> Result<Vec<(String, String)>, String> {
    let graph = Graph::of(flow);
    let svg = graph.svg("")?;
    let schemas = Schemas::new(flow.model, Refs::Defs);
    let mut out = vec![
        ("index.html".to_owned(), index(flow)),
        ("flow.html".to_owned(), flow_page(flow, &svg)),
        ("flow.svg".to_owned(), svg),
    ];
    for msg in &flow.messages {
        out.push((message_href(&msg.key()), message_page(flow, &schemas, msg)));
    }
    for b in &flow.handlers {
        out.push((handler_href(&b.key()), handler_page(flow, b)));
    }
    for d in &flow.decisions {
        out.push((decision_href(&d.key()), decision_page(flow, d)));
    }
    Ok(out)
}

fn title(flow: &Flow<'_>) -> String {
    if flow.model.app_prefix.is_empty() {
        "Messages".to_owned()
    } else {
        format!("{} messages", flow.model.app_prefix)
    }
}

fn page(flow: &Flow<'_>, root: &str, page_title: &str, body: &str, script: &str) -> String {
    let site = html(&title(flow));
    let script = if script.is_empty() {
        String::new()
    } else {
        format!("<script>{script}</script>\n")
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <title>{} · {site}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <header><a href=\"{root}index.html\">{site}</a><nav><a href=\"{root}index.html\">Index</a> · <a href=\"{root}flow.html\">Flow graph</a></nav></header>\n\
         <main>\n{body}</main>\n{script}</body>\n</html>\n",
        html(page_title)
    )
}

fn index(flow: &Flow<'_>) -> String {
    let decisions = match flow.decisions.len() {
        0 => String::new(),
        1 => ", 1 decision".to_owned(),
        n => format!(", {n} decisions"),
    };
    let mut body = format!(
        "<h1>{}</h1>\n<p class=\"mute\">{} commands, {} events, {} handler bindings{decisions} in {} namespaces · <a href=\"flow.html\">flow graph</a></p>\n\
         <input id=\"filter\" type=\"search\" placeholder=\"Filter by name, topic or description…\" autocomplete=\"off\" aria-label=\"Filter\">\n\
         <p class=\"mute\">Showing <span id=\"count\"></span></p>\n",
        html(&title(flow)),
        flow.messages.iter().filter(|m| m.is_command()).count(),
        flow.messages.iter().filter(|m| !m.is_command()).count(),
        flow.handlers.len(),
        flow.model.modules.len()
    );
    for module in &flow.model.modules {
        let _ = write!(
            body,
            "<section class=\"ns\" id=\"ns-{}\">\n<h2>{}</h2>\n",
            html(&module.ident),
            html(&module.namespace)
        );
        if let Some(d) = &module.description {
            let _ = writeln!(body, "<p class=\"desc\">{}</p>", html(d));
        }
        let msgs: Vec<&Msg<'_>> = flow
            .messages
            .iter()
            .filter(|m| std::ptr::eq(m.module, module))
            .collect();
        for (heading, commands) in [("Commands", true), ("Events", false)] {
            let items: Vec<String> = msgs
                .iter()
                .filter(|m| m.is_command() == commands)
                .map(|m| {
                    let kind = if commands { "command" } else { "event" };
                    item(
                        &message_href(&m.key()),
                        kind,
                        &m.payload.name,
                        &m.payload.topic,
                        m.payload.description.as_deref(),
                    )
                })
                .collect();
            list(&mut body, heading, &items);
        }
        let items: Vec<String> = flow
            .handlers
            .iter()
            .filter(|b| std::ptr::eq(b.module, module))
            .map(|b| {
                item(
                    &handler_href(&b.key()),
                    "handler",
                    &b.handler.name,
                    &target_text(&b.handler.target),
                    b.handler.description.as_deref(),
                )
            })
            .collect();
        list(&mut body, "Handlers", &items);
        let items: Vec<String> = flow
            .decisions
            .iter()
            .filter(|d| std::ptr::eq(d.module, module))
            .map(|d| {
                item(
                    &decision_href(&d.key()),
                    "decision",
                    &d.decision.name,
                    &format!("decides {}", d.decision.command.name),
                    d.decision.description.as_deref(),
                )
            })
            .collect();
        list(&mut body, "Decisions", &items);
        let types: Vec<String> = module
            .types
            .iter()
            .map(|t| {
                let what = match &t.kind {
                    TypeKind::Struct(_) => "struct",
                    TypeKind::Enum(_) => "enum",
                };
                format!(
                    "<li data-search=\"{}\"><span class=\"badge type\">type</span> <b>{}</b> <span class=\"mute\">{what}</span></li>",
                    html(&search_text(&[&t.name, what, t.description.as_deref().unwrap_or("")])),
                    html(&t.name)
                )
            })
            .collect();
        list(&mut body, "Types", &types);
        body.push_str("</section>\n");
    }
    page(flow, "", "Index", &body, FILTER_JS)
}

fn search_text(parts: &[&str]) -> String {
    parts.join(" ").to_lowercase()
}

fn item(href: &str, kind: &str, name: &str, detail: &str, description: Option<&str>) -> String {
    let description = description.unwrap_or("");
    format!(
        "<li data-search=\"{}\"><span class=\"badge {kind}\">{kind}</span> <a href=\"{}\">{}</a> <code class=\"mute\">{}</code></li>",
        html(&search_text(&[name, detail, description, kind])),
        html(href),
        html(name),
        html(detail)
    )
}

fn list(body: &mut String, heading: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = write!(
        body,
        "<h3>{heading}</h3>\n<ul>\n{}\n</ul>\n",
        items.join("\n")
    );
}

fn flow_page(flow: &Flow<'_>, svg: &str) -> String {
    let body = format!(
        "<h1>Message flow</h1>\n<p class=\"mute\">Commands (blue) go to their handler (green), which emits events (orange); each event goes to every binding of it, and to the process managers (purple) whose flow it belongs to, which dispatch commands. A decision (teal) receives its command and appends the events it emits; the dashed teal edges labelled <i>reads</i> come from the events of its consistency boundary, with the tags it reads them by (hover for the read items). Dashed grey: a wildcard binding's pattern (the binding is drawn in each flow it taps) and the dead letters. Click a node for its page.</p>\n<div class=\"graph\">\n{svg}</div>\n"
    );
    page(flow, "", "Flow graph", &body, "")
}

fn message_page(flow: &Flow<'_>, schemas: &Schemas<'_>, msg: &Msg<'_>) -> String {
    let p = msg.payload;
    let kind = if msg.is_command() { "command" } else { "event" };
    let mut body = format!(
        "<h1><span class=\"badge {kind}\">{kind}</span> {}</h1>\n",
        html(&p.name)
    );
    if let Some(d) = &p.description {
        let _ = writeln!(body, "<p class=\"desc\">{}</p>", html(d));
    }
    let _ = write!(
        body,
        "<dl>\n<dt>Type name</dt><dd><code>{}</code></dd>\n<dt>Namespace</dt><dd><a href=\"../index.html#ns-{}\">{}</a></dd>\n<dt>Topic</dt><dd><code>{}</code></dd>\n<dt>Validation</dt><dd>{}</dd>\n</dl>\n",
        html(&p.type_name),
        html(&msg.module.ident),
        html(&msg.module.namespace),
        html(&p.topic),
        if p.custom_validate {
            "the schema's rules, then a custom <code>Validate</code> implementation"
        } else {
            "the schema's rules"
        }
    );

    if !p.tags.is_empty() {
        let tags: Vec<String> = p
            .tags
            .iter()
            .map(|t| format!("<code>{}</code>", html(t)))
            .collect();
        let _ = writeln!(
            body,
            "<p class=\"tags\">Tags: {} (the store indexes each stored event by these fields' values; decisions read by them).</p>",
            tags.join(", ")
        );
    }
    if let Some(subject) = &p.personal_subject {
        let _ = writeln!(
            body,
            "<p class=\"personal-subject\">Personal data of the subject named by <code>{}</code>: the fields marked <span class=\"badge personal\">personal</span> are stored encrypted with that subject's key, and read as their replacement once the subject is forgotten.</p>",
            html(subject)
        );
    }
    body.push_str("<h2>Fields</h2>\n");
    fields_table(&mut body, &p.fields, flow.model);

    let used: Vec<&TypeRef> = {
        let mut v = Vec::new();
        for f in &p.fields {
            collect_named(&f.ty, &mut v);
        }
        v.dedup_by(|a, b| a == b);
        v
    };
    for r in used {
        let Some(t) = flow
            .model
            .modules
            .iter()
            .find(|m| m.ident == r.module)
            .and_then(|m| m.types.iter().find(|t| t.name == r.name))
        else {
            continue;
        };
        let _ = writeln!(
            body,
            "<h3 id=\"type-{}\"><span class=\"badge type\">type</span> {}</h3>",
            html(&schemas.type_key(r)),
            html(&t.name)
        );
        if let Some(d) = &t.description {
            let _ = writeln!(body, "<p class=\"desc\">{}</p>", html(d));
        }
        match &t.kind {
            TypeKind::Struct(fields) => fields_table(&mut body, fields, flow.model),
            TypeKind::Enum(values) => {
                let vs: Vec<String> = values
                    .iter()
                    .map(|v| format!("<code>{}</code>", html(v)))
                    .collect();
                let _ = writeln!(body, "<p>One of {}.</p>", vs.join(", "));
            }
        }
    }

    let _ = write!(
        body,
        "<h2>Example payload</h2>\n<pre class=\"example\">{}</pre>\n",
        html(&example(flow.model, &p.fields).to_json_for_html())
    );

    body.push_str(
        "<h2>Versions</h2>\n<table class=\"versions\"><tr><th>version</th><th>notes</th></tr>\n",
    );
    let _ = writeln!(body, "<tr><td>{}</td><td>current</td></tr>", p.version);
    // Older versions still readable, newest first, each with the step that upcasts it.
    for step in p.upcast.iter().rev() {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>read as version {} after: {}</td></tr>",
            step.from,
            step.from + 1,
            step_text(&step.kind)
        );
    }
    body.push_str("</table>\n");

    body.push_str("<h2>Senders</h2>\n<ul>\n");
    let emitters = flow.emitters(msg);
    if msg.is_command() {
        body.push_str("<li>any client that dispatches it (<code>bus.dispatch</code>)</li>\n");
    }
    for b in &emitters {
        let _ = writeln!(
            body,
            "<li>{} (declares it in <code>emits</code>)</li>",
            handler_link(b)
        );
    }
    let decision_emitters = flow.decision_emitters(msg);
    for d in &decision_emitters {
        let _ = writeln!(
            body,
            "<li>{} (a decision: declares it in <code>emits</code>)</li>",
            decision_link(d)
        );
    }
    if !msg.is_command() && emitters.is_empty() && decision_emitters.is_empty() {
        body.push_str("<li class=\"mute\">no binding declares it in <code>emits</code></li>\n");
    }
    body.push_str("</ul>\n<h2>Handlers</h2>\n<ul>\n");
    let receivers = flow.receivers(msg);
    let deciders = flow.deciders(msg);
    if receivers.is_empty() && deciders.is_empty() {
        body.push_str("<li class=\"mute\">none</li>\n");
    }
    for d in &deciders {
        let _ = writeln!(
            body,
            "<li>{} <span class=\"mute\">(a decision across streams)</span></li>",
            decision_link(d)
        );
    }
    for b in &receivers {
        let _ = writeln!(
            body,
            "<li>{} <span class=\"mute\">({})</span></li>",
            handler_link(b),
            html(&target_text(&b.handler.target))
        );
    }
    body.push_str("</ul>\n");
    let readers = flow.decision_readers(msg);
    if !readers.is_empty() {
        body.push_str("<h2>Read by decisions</h2>\n<ul>\n");
        for (d, items) in &readers {
            let _ = writeln!(
                body,
                "<li>{} <span class=\"mute\">by tag {}</span></li>",
                decision_link(d),
                html(&read_tags(items))
            );
        }
        body.push_str("</ul>\n");
    }
    let _ = write!(
        body,
        "<details><summary>JSON Schema</summary>\n<pre>{}</pre>\n</details>\n",
        html(&schemas.document(msg).to_json_for_html())
    );
    page(flow, "../", &p.name, &body, "")
}

/// An upcast step as HTML (already escaped).
fn step_text(kind: &StepKind) -> String {
    match kind {
        StepKind::Custom => "a custom step (Rust)".to_owned(),
        StepKind::Declarative {
            renamed,
            removed,
            added,
        } => {
            let code = |s: &str| format!("<code>{}</code>", html(s));
            let mut parts = Vec::new();
            if !renamed.is_empty() {
                let r: Vec<String> = renamed
                    .iter()
                    .map(|(old, new)| format!("{} → {}", code(old), code(new)))
                    .collect();
                parts.push(format!("renamed {}", r.join(", ")));
            }
            if !removed.is_empty() {
                let r: Vec<String> = removed.iter().map(|f| code(f)).collect();
                parts.push(format!("removed {}", r.join(", ")));
            }
            if !added.is_empty() {
                let r: Vec<String> = added
                    .iter()
                    .map(|(f, v)| format!("{} = {}", code(f), code(&literal_text(v))))
                    .collect();
                parts.push(format!("added {}", r.join(", ")));
            }
            if parts.is_empty() {
                "no change".to_owned()
            } else {
                parts.join("; ")
            }
        }
    }
}

fn handler_link(b: &Bound<'_>) -> String {
    format!(
        "<a href=\"../{}\">{}</a>",
        html(&handler_href(&b.key())),
        html(&b.handler.name)
    )
}

fn decision_link(d: &Decided<'_>) -> String {
    format!(
        "<a href=\"../{}\">{}</a>",
        html(&decision_href(&d.key())),
        html(&d.decision.name)
    )
}

fn message_link(m: &Msg<'_>) -> String {
    format!(
        "<a href=\"../{}\">{}</a>",
        html(&message_href(&m.key())),
        html(&m.payload.name)
    )
}

fn handler_page(flow: &Flow<'_>, b: &Bound<'_>) -> String {
    let h = b.handler;
    let mut body = format!(
        "<h1><span class=\"badge handler\">handler</span> {}</h1>\n",
        html(&h.name)
    );
    if let Some(d) = &h.description {
        let _ = writeln!(body, "<p class=\"desc\">{}</p>", html(d));
    }
    let _ = write!(
        body,
        "<dl>\n<dt>Namespace</dt><dd><a href=\"../index.html#ns-{}\">{}</a></dd>\n<dt>Receives</dt><dd>{}</dd>\n<dt>Retries</dt><dd>{}</dd>\n</dl>\n",
        html(&b.module.ident),
        html(&b.module.namespace),
        html(&target_text(&h.target)),
        h.max_retries
            .map_or_else(|| "the bus default".to_owned(), |n| format!("up to {n}"))
    );
    let lists = [
        ("Receives", flow.received_by(h)),
        ("Emits", flow.emitted_by(h)),
    ];
    for (heading, msgs) in lists {
        let _ = writeln!(body, "<h2>{heading}</h2>\n<ul>");
        if msgs.is_empty() {
            body.push_str("<li class=\"mute\">nothing</li>\n");
        }
        for m in &msgs {
            let _ = writeln!(
                body,
                "<li>{} <code class=\"mute\">{}</code></li>",
                message_link(m),
                html(&m.payload.topic)
            );
        }
        body.push_str("</ul>\n");
    }
    page(flow, "../", &h.name, &body, "")
}

fn decision_page(flow: &Flow<'_>, d: &Decided<'_>) -> String {
    let dec = d.decision;
    let mut body = format!(
        "<h1><span class=\"badge decision\">decision</span> {}</h1>\n",
        html(&dec.name)
    );
    if let Some(desc) = &dec.description {
        let _ = writeln!(body, "<p class=\"desc\">{}</p>", html(desc));
    }
    let command = flow
        .find(&dec.command)
        .map_or_else(|| html(&dec.command.name), |m| message_link(&m));
    let _ = write!(
        body,
        "<dl>\n<dt>Namespace</dt><dd><a href=\"../index.html#ns-{}\">{}</a></dd>\n<dt>Command</dt><dd>{command}</dd>\n<dt>Stream</dt><dd><code>{}</code></dd>\n<dt>Conflict retries</dt><dd>up to {}</dd>\n</dl>\n",
        html(&d.module.ident),
        html(&d.module.namespace),
        html(&dec.stream_text),
        dec.conflict_retries
    );
    body.push_str(
        "<p class=\"mute\">The handler reads the events matching the boundary (the union of the read items), folds them into the state, decides, and appends to the stream on the condition that no event matching the boundary was stored since it read; on a conflict it reads and decides again.</p>\n",
    );
    body.push_str("<h2>Reads (the consistency boundary)</h2>\n<table class=\"reads\"><tr><th>item</th><th>events</th><th>tag</th><th>value from param</th></tr>\n");
    for item in &dec.reads {
        let events: Vec<String> = item
            .events
            .iter()
            .map(|r| {
                flow.find(r)
                    .map_or_else(|| html(&r.name), |m| message_link(&m))
            })
            .collect();
        let _ = writeln!(
            body,
            "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            html(&item.name),
            events.join(", "),
            html(&item.tag),
            html(&item.param)
        );
    }
    body.push_str("</table>\n<h2>State</h2>\n");
    fields_table(&mut body, &dec.state, flow.model);
    body.push_str("<h2>Emits</h2>\n<ul>\n");
    if dec.emits.is_empty() {
        body.push_str("<li class=\"mute\">nothing</li>\n");
    }
    for r in &dec.emits {
        match flow.find(r) {
            Some(m) => {
                let _ = writeln!(
                    body,
                    "<li>{} <code class=\"mute\">{}</code></li>",
                    message_link(&m),
                    html(&m.payload.topic)
                );
            }
            None => {
                let _ = writeln!(body, "<li>{}</li>", html(&r.name));
            }
        }
    }
    body.push_str("</ul>\n");
    page(flow, "../", &dec.name, &body, "")
}

fn collect_named<'a>(ty: &'a Ty, out: &mut Vec<&'a TypeRef>) {
    match ty {
        Ty::List(inner) | Ty::Map(inner) => collect_named(inner, out),
        Ty::Named(r) if !out.contains(&r) => out.push(r),
        _ => {}
    }
}

fn fields_table(body: &mut String, fields: &[Field], model: &crate::model::Model) {
    if fields.is_empty() {
        body.push_str("<p class=\"mute\">No fields.</p>\n");
        return;
    }
    body.push_str("<table class=\"fields\"><tr><th>name</th><th>type</th><th>required</th><th>default</th><th>rules</th><th>description</th></tr>\n");
    for f in fields {
        let personal = if f.personal {
            let replacement = f.replacement.as_ref().map_or_else(String::new, |r| {
                format!(
                    ", read as {} once its subject is forgotten",
                    html(&super::tree::Node::literal(r).to_json_line())
                )
            });
            format!(
                " <span class=\"badge personal\" data-personal=\"{}\" title=\"personal data: stored encrypted{replacement}\">personal</span>",
                html(&f.name)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            body,
            "<tr><td><code>{}</code>{personal}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"desc\">{}</td></tr>",
            html(&f.name),
            html(&type_text(&f.ty, model)),
            if f.required { "yes" } else { "no" },
            f.default.as_ref().map_or_else(String::new, |d| format!(
                "<code>{}</code>",
                html(&super::tree::Node::literal(d).to_json_line())
            )),
            rules_text(f),
            html(f.description.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</table>\n");
}

fn type_text(ty: &Ty, model: &crate::model::Model) -> String {
    ty.schema_text(&|r| {
        let q = model
            .modules
            .iter()
            .find(|m| m.ident == r.module)
            .map_or(r.module.as_str(), |m| m.qualifier.as_str());
        format!("{q}.{}", r.name)
    })
}

fn literal_text(l: &Literal) -> String {
    super::tree::Node::literal(l).to_json_line_for_html()
}

/// The rules of a field as HTML (already escaped).
fn rules_text(f: &Field) -> String {
    let r = &f.rules;
    let mut parts = Vec::new();
    if let Some(min) = &r.min {
        parts.push(format!("≥ {}", html(&literal_text(min))));
    }
    if let Some(max) = &r.max {
        parts.push(format!("≤ {}", html(&literal_text(max))));
    }
    if let Some(n) = r.min_length {
        parts.push(format!("length ≥ {n}"));
    }
    if let Some(n) = r.max_length {
        parts.push(format!("length ≤ {n}"));
    }
    if let Some(p) = &r.pattern {
        parts.push(format!("matches <code>{}</code>", html(p)));
    }
    if let Some(fmt) = r.format {
        parts.push(
            match fmt {
                Format::Email => "an email address",
                Format::Uuid => "a UUID",
                Format::Url => "an absolute URL",
            }
            .to_owned(),
        );
    }
    if let Some(values) = &r.one_of {
        let vs: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", html(&literal_text(v))))
            .collect();
        parts.push(format!("one of {}", vs.join(", ")));
    }
    parts.join("; ")
}
