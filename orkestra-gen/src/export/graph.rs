//! The flow graph: command → its handler → the events it emits → the bindings of each
//! event (a wildcard binding through a node for its pattern), the dead letters → their
//! bindings, and each process manager: the events of its flow → it → the commands it
//! dispatches, and each decision: its command → it → the events it appends, with a
//! dashed "reads" edge from each event of its boundary, labelled with the tags it reads
//! by. Laid out by `layout-rs` (layered, as Graphviz `dot` does) at
//! generation time and drawn by our own backend, so every node is a link to its page
//! and every label goes through `names::html`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};

use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::flow::{Flow, read_tags};
use crate::model::HandlerTarget;
use crate::names;

const FONT: usize = 14;

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Command,
    Event,
    Handler,
    /// A wildcard binding's pattern.
    Pattern,
    /// The bus's dead letters.
    DeadLetters,
    /// A process manager.
    Process,
    /// A decision across streams.
    Decision,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Event => "event",
            Kind::Handler => "handler",
            Kind::Pattern => "pattern",
            Kind::DeadLetters => "deadletters",
            Kind::Process => "process",
            Kind::Decision => "decision",
        }
    }
}

#[derive(Debug)]
struct GraphNode {
    kind: Kind,
    label: String,
    /// The page it links to, relative to the site root.
    href: Option<String>,
    key: String,
}

/// How an edge is drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Solid,
    /// A wildcard pattern's or the dead letters' edge.
    Dashed,
    /// An event a decision reads: dashed, labelled with the tags (`label`), `title` its
    /// tooltip.
    Reads {
        label: String,
        title: String,
    },
}

#[derive(Debug)]
struct Edge {
    from: usize,
    to: usize,
    line: Line,
}

/// The graph before layout.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    nodes: Vec<GraphNode>,
    edges: Vec<Edge>,
}

/// The page of a message, relative to the site root.
pub(crate) fn message_href(key: &str) -> String {
    format!("messages/{}.html", names::file_stem(key))
}

/// The page of a decision, relative to the site root.
pub(crate) fn decision_href(key: &str) -> String {
    format!("decisions/{}.html", names::file_stem(key))
}

/// The page of a handler binding, relative to the site root.
pub(crate) fn handler_href(key: &str) -> String {
    format!("handlers/{}.html", names::file_stem(key))
}

impl Graph {
    /// The graph of a whole model.
    pub(crate) fn of(flow: &Flow<'_>) -> Self {
        let mut g = Graph::default();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for msg in &flow.messages {
            let key = msg.key();
            let kind = if msg.is_command() {
                Kind::Command
            } else {
                Kind::Event
            };
            index.insert(
                format!("m:{key}"),
                g.add(kind, &msg.payload.name, Some(message_href(&key)), &key),
            );
        }
        for b in &flow.handlers {
            let key = b.key();
            index.insert(
                format!("h:{key}"),
                g.add(
                    Kind::Handler,
                    &b.handler.name,
                    Some(handler_href(&key)),
                    &key,
                ),
            );
        }
        let node = |index: &BTreeMap<String, usize>, key: String| index.get(&key).copied();
        // Direct bindings and `emits` first: they make the flows.
        let mut dead_letters = None;
        for b in &flow.handlers {
            let Some(h) = node(&index, format!("h:{}", b.key())) else {
                continue;
            };
            match &b.handler.target {
                HandlerTarget::Topic { .. } => {}
                HandlerTarget::DeadLetters => {
                    let d = *dead_letters.get_or_insert_with(|| {
                        g.add(Kind::DeadLetters, "dead letters", None, "dead-letters")
                    });
                    g.edge(d, h, Line::Dashed);
                }
                _ => {
                    for msg in flow.received_by(b.handler) {
                        if let Some(m) = node(&index, format!("m:{}", msg.key())) {
                            g.edge(m, h, Line::Solid);
                        }
                    }
                }
            }
            for msg in flow.emitted_by(b.handler) {
                if let Some(m) = node(&index, format!("m:{}", msg.key())) {
                    g.edge(h, m, Line::Solid);
                }
            }
        }
        // Process managers: every event of their flow in, the commands they dispatch out.
        for module in &flow.model.modules {
            for pm in &module.process_managers {
                let p = g.add(
                    Kind::Process,
                    &pm.name,
                    None,
                    &format!("process:{}", pm.name),
                );
                for r in pm.starts_on.iter().chain(&pm.handles).chain(&pm.ends_on) {
                    if let Some(m) = flow
                        .find(r)
                        .and_then(|m| node(&index, format!("m:{}", m.key())))
                    {
                        g.edge(m, p, Line::Solid);
                    }
                }
                for r in &pm.dispatches {
                    if let Some(m) = flow
                        .find(r)
                        .and_then(|m| node(&index, format!("m:{}", m.key())))
                    {
                        g.edge(p, m, Line::Solid);
                    }
                }
            }
        }
        // Decisions: their command in, the events they append out, and a dashed edge from
        // each event of their boundary, labelled with the tags they read it by.
        for d in &flow.decisions {
            let key = d.key();
            let name = &d.decision.name;
            let n = g.add(Kind::Decision, name, Some(decision_href(&key)), &key);
            if let Some(c) = flow
                .find(&d.decision.command)
                .and_then(|m| node(&index, format!("m:{}", m.key())))
            {
                g.edge(c, n, Line::Solid);
            }
            for r in &d.decision.emits {
                if let Some(m) = flow
                    .find(r)
                    .and_then(|m| node(&index, format!("m:{}", m.key())))
                {
                    g.edge(n, m, Line::Solid);
                }
            }
            for (msg, items) in flow.read_by(d.decision) {
                let Some(m) = node(&index, format!("m:{}", msg.key())) else {
                    continue;
                };
                let tags = read_tags(&items);
                let via: Vec<String> = items
                    .iter()
                    .map(|i| format!("{} (tag {} = param {})", i.name, i.tag, i.param))
                    .collect();
                let title = format!("{name} reads {} by {}", msg.payload.name, via.join(", "));
                g.edge(
                    m,
                    n,
                    Line::Reads {
                        label: format!("reads {tags}"),
                        title,
                    },
                );
            }
        }
        // A wildcard binding is drawn in each flow it taps (its pattern, then a copy of
        // its node linking to the same page), so one `#` binding does not fuse every
        // flow into one graph whose layout time grows faster than linearly.
        let flows = g.roots();
        for b in &flow.handlers {
            let HandlerTarget::Topic { pattern, .. } = &b.handler.target else {
                continue;
            };
            let Some(h) = node(&index, format!("h:{}", b.key())) else {
                continue;
            };
            let mut taps: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for msg in flow.received_by(b.handler) {
                if let Some(m) = node(&index, format!("m:{}", msg.key())) {
                    taps.entry(flows[m]).or_default().push(m);
                }
            }
            let own = flows[h];
            // The binding's own node serves the flow it already belongs to (its `emits`),
            // or else the first one it taps.
            let first = if taps.contains_key(&own) {
                Some(own)
            } else {
                taps.keys().next().copied()
            };
            let pattern_key = format!("pattern:{pattern}");
            if taps.is_empty() {
                let p = g.add(Kind::Pattern, pattern, None, &pattern_key);
                g.edge(p, h, Line::Dashed);
            }
            for (flow_root, messages) in taps {
                let target = if Some(flow_root) == first {
                    h
                } else {
                    let original = &g.nodes[h];
                    let (label, href, key) = (
                        original.label.clone(),
                        original.href.clone(),
                        original.key.clone(),
                    );
                    g.add(Kind::Handler, &label, href, &key)
                };
                let p = g.add(Kind::Pattern, pattern, None, &pattern_key);
                for m in messages {
                    g.edge(m, p, Line::Dashed);
                }
                g.edge(p, target, Line::Dashed);
            }
        }
        g
    }

    /// The flow (connected part) each node is in, as the smallest node index of it.
    fn roots(&self) -> Vec<usize> {
        let mut roots = vec![0; self.nodes.len()];
        for part in self.components() {
            let first = part[0];
            for i in part {
                roots[i] = first;
            }
        }
        roots
    }

    fn edge(&mut self, from: usize, to: usize, line: Line) {
        self.edges.push(Edge { from, to, line });
    }

    fn add(&mut self, kind: Kind, label: &str, href: Option<String>, key: &str) -> usize {
        self.nodes.push(GraphNode {
            kind,
            label: label.to_owned(),
            href,
            key: key.to_owned(),
        });
        self.nodes.len() - 1
    }

    /// The laid-out graph as a standalone SVG document. `link_prefix` is put before
    /// every page link (`""` when the SVG sits at the site root).
    pub(crate) fn svg(&self, link_prefix: &str) -> Result<String, String> {
        if self.nodes.is_empty() {
            return Ok(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"0\" height=\"0\"></svg>\n"
                    .to_owned(),
            );
        }
        // layout-rs asserts on its own invariants; a failure there is our bug to report,
        // not a reason to take the caller's process down.
        catch_unwind(AssertUnwindSafe(|| self.layout(link_prefix)))
            .map_err(|_| "the graph layout (layout-rs) failed".to_owned())
    }

    /// Lays out each connected part of the graph on its own (layered layout grows
    /// faster than linearly with a graph's size; most systems are many small flows),
    /// then packs the parts in rows, largest first.
    fn layout(&self, link_prefix: &str) -> String {
        let mut parts: Vec<Part> = self
            .components()
            .iter()
            .map(|nodes| self.layout_part(nodes, link_prefix))
            .collect();
        parts.sort_by(|a, b| {
            b.height
                .total_cmp(&a.height)
                .then(b.width.total_cmp(&a.width))
        });
        let max_row = parts.iter().map(|p| p.width).fold(MAX_ROW_WIDTH, f64::max);
        let (mut x, mut y, mut row_height, mut width) = (0.0_f64, 0.0_f64, 0.0_f64, 0.0_f64);
        let mut body = String::new();
        for part in &parts {
            if x > 0.0 && x + part.width > max_row {
                y += row_height;
                x = 0.0;
                row_height = 0.0;
            }
            let _ = write!(
                body,
                "<g class=\"part\" transform=\"translate({x:.1} {y:.1})\">\n<g class=\"edges\">\n{}</g>\n<g class=\"nodes\">\n{}</g>\n</g>\n",
                part.edges, part.nodes
            );
            x += part.width;
            width = width.max(x);
            row_height = row_height.max(part.height);
        }
        let (w, h) = (width.ceil(), (y + row_height).ceil());
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"flow\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Message flow\">\n\
             <style>{STYLE}</style>\n\
             <defs><marker id=\"arrow\" markerWidth=\"10\" markerHeight=\"7\" refX=\"10\" refY=\"3.5\" orient=\"auto-start-reverse\"><polygon points=\"0 0, 10 3.5, 0 7\" fill=\"#555\"/></marker></defs>\n\
             <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n{body}</svg>\n"
        )
    }

    /// The node indices of each weakly connected part, in node order.
    fn components(&self) -> Vec<Vec<usize>> {
        let mut parent: Vec<usize> = (0..self.nodes.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for e in &self.edges {
            let (ra, rb) = (root(&mut parent, e.from), root(&mut parent, e.to));
            parent[ra.max(rb)] = ra.min(rb);
        }
        let mut parts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let r = root(&mut parent, i);
            parts.entry(r).or_default().push(i);
        }
        parts.into_values().collect()
    }

    fn layout_part(&self, nodes: &[usize], link_prefix: &str) -> Part {
        let orientation = Orientation::LeftToRight;
        let mut vg = VisualGraph::new(orientation);
        let mut handles = BTreeMap::new();
        for &i in nodes {
            let shape = ShapeKind::new_box(&self.nodes[i].label);
            let look = StyleAttr::new(Color::new(0x000000ff), 1, None, 6, FONT);
            let size = get_shape_size(orientation, &shape, FONT, false);
            let h = vg.add_node(Element::create_with_properties(
                shape,
                look,
                orientation,
                size,
                i.to_string(),
            ));
            handles.insert(i, h);
        }
        for (i, e) in self.edges.iter().enumerate() {
            let (Some(&a), Some(&b)) = (handles.get(&e.from), handles.get(&e.to)) else {
                continue;
            };
            let (style, label) = match &e.line {
                Line::Solid => (LineStyleKind::Normal, ""),
                Line::Dashed => (LineStyleKind::Dashed, ""),
                // The label makes layout-rs reserve room for it on the edge.
                Line::Reads { label, .. } => (LineStyleKind::Dashed, label.as_str()),
            };
            let mut arrow = Arrow::new(
                LineEndKind::None,
                LineEndKind::Arrow,
                style,
                label,
                &StyleAttr::simple(),
                &None,
                &None,
            );
            // Handed back to `draw_arrow`, which finds the edge by it.
            arrow.properties = Some(i.to_string());
            vg.add_edge(arrow, a, b);
        }
        let mut out = Svg::new(self, link_prefix);
        vg.do_it(false, false, false, &mut out);
        out.finish()
    }
}

/// One laid-out part of the graph.
struct Part {
    nodes: String,
    edges: String,
    width: f64,
    height: f64,
}

/// Rows of parts wrap at this width (unless one part is wider).
const MAX_ROW_WIDTH: f64 = 1200.0;

/// A `RenderBackend` that writes nodes as links with classes and data attributes.
struct Svg<'g> {
    graph: &'g Graph,
    link_prefix: &'g str,
    body: String,
    edges: String,
    width: f64,
    height: f64,
    /// A node's `<a>`/`<g>` opened by its rectangle, closed by its label.
    open: bool,
}

impl<'g> Svg<'g> {
    fn new(graph: &'g Graph, link_prefix: &'g str) -> Self {
        Self {
            graph,
            link_prefix,
            body: String::new(),
            edges: String::new(),
            width: 0.0,
            height: 0.0,
            open: false,
        }
    }

    fn grow(&mut self, p: Point) {
        self.width = self.width.max(p.x + 10.0);
        self.height = self.height.max(p.y + 10.0);
    }

    fn finish(mut self) -> Part {
        if self.open {
            self.body.push_str("</g>\n");
        }
        Part {
            nodes: self.body,
            edges: self.edges,
            width: self.width.ceil(),
            height: self.height.ceil(),
        }
    }
}

const STYLE: &str = "\
.flow text{font:14px system-ui,-apple-system,'Segoe UI',sans-serif;fill:#111}\
.node rect{stroke-width:1.5}\
.command rect{fill:#dbeafe;stroke:#1d4ed8}\
.event rect{fill:#ffedd5;stroke:#c2410c}\
.handler rect{fill:#dcfce7;stroke:#15803d}\
.pattern rect{fill:#f4f4f5;stroke:#71717a;stroke-dasharray:4 3}\
.deadletters rect{fill:#fee2e2;stroke:#b91c1c}\
.process rect{fill:#ede9fe;stroke:#6d28d9}\
.decision rect{fill:#ccfbf1;stroke:#0f766e}\
.flow .edge-label{font-size:12px;fill:#0f766e;paint-order:stroke;stroke:#fff;stroke-width:3px}\
a:hover rect{stroke-width:3}\
.edge{fill:none;stroke:#555;stroke-width:1.3}\
.edge.dashed{stroke-dasharray:5 4}\
.edge.reads{stroke:#0f766e}";

impl RenderBackend for Svg<'_> {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        _look: &StyleAttr,
        properties: Option<String>,
        _clip: Option<ClipHandle>,
    ) {
        self.grow(Point::new(xy.x + size.x, xy.y + size.y));
        let node = properties
            .and_then(|p| p.parse::<usize>().ok())
            .and_then(|i| self.graph.nodes.get(i));
        let rect = format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"6\"/>",
            xy.x, xy.y, size.x, size.y
        );
        match node {
            Some(n) => {
                if self.open {
                    self.body.push_str("</g>\n");
                }
                let class = n.kind.class();
                let key = names::html(&n.key);
                let label = names::html(&n.label);
                let open_link = match &n.href {
                    Some(href) => format!(
                        "<a href=\"{}{}\">",
                        names::html(self.link_prefix),
                        names::html(href)
                    ),
                    None => String::new(),
                };
                self.body.push_str(&format!(
                    "<g class=\"node {class}\" data-kind=\"{class}\" data-key=\"{key}\"><title>{label}</title>{open_link}{rect}"
                ));
                if n.href.is_some() {
                    // Closed after the label, which layout-rs draws next.
                    self.body.push_str("<!--label-->");
                }
                self.open = true;
            }
            None => self.body.push_str(&rect),
        }
    }

    fn draw_line(&mut self, start: Point, stop: Point, _look: &StyleAttr, _p: Option<String>) {
        self.grow(start);
        self.grow(stop);
        self.edges.push_str(&format!(
            "<line class=\"edge\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>\n",
            start.x, start.y, stop.x, stop.y
        ));
    }

    fn draw_circle(&mut self, xy: Point, size: Point, _look: &StyleAttr, _p: Option<String>) {
        self.grow(Point::new(xy.x + size.x / 2.0, xy.y + size.y / 2.0));
    }

    fn draw_text(&mut self, xy: Point, label: &str, _look: &StyleAttr) {
        let text = format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" dominant-baseline=\"central\">{}</text>",
            xy.x,
            xy.y,
            names::html(label)
        );
        if self.open {
            let linked = self.body.ends_with("<!--label-->");
            if linked {
                let cut = self.body.len() - "<!--label-->".len();
                self.body.truncate(cut);
            }
            self.body.push_str(&text);
            self.body
                .push_str(if linked { "</a></g>\n" } else { "</g>\n" });
            self.open = false;
        } else {
            // No node is open: the label of an edge (layout-rs draws it as a connector,
            // on the edge's path), set just above the line.
            let _ = write!(
                self.body,
                "<text class=\"edge-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" dominant-baseline=\"central\">{}</text>",
                xy.x,
                xy.y - 9.0,
                names::html(label)
            );
        }
    }

    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        dashed: bool,
        head: (bool, bool),
        _look: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        if path.len() < 2 {
            return;
        }
        for (a, b) in path {
            self.grow(*a);
            self.grow(*b);
        }
        let mut d = format!(
            "M {:.1} {:.1} C {:.1} {:.1}, {:.1} {:.1}, {:.1} {:.1}",
            path[0].0.x,
            path[0].0.y,
            path[0].1.x,
            path[0].1.y,
            path[1].0.x,
            path[1].0.y,
            path[1].1.x,
            path[1].1.y
        );
        for (a, b) in &path[2..] {
            d.push_str(&format!(" S {:.1} {:.1}, {:.1} {:.1}", a.x, a.y, b.x, b.y));
        }
        let edge = properties
            .and_then(|p| p.parse::<usize>().ok())
            .and_then(|i| self.graph.edges.get(i));
        let (reads, title) = match edge.map(|e| &e.line) {
            Some(Line::Reads { title, .. }) => {
                (" reads", format!("<title>{}</title>", names::html(title)))
            }
            _ => ("", String::new()),
        };
        // An edge layout-rs turned round to break a cycle (an event a decision both
        // reads and appends) has its head at the start of the path.
        let marker = if head.0 && !head.1 {
            "marker-start"
        } else {
            "marker-end"
        };
        if title.is_empty() {
            self.edges.push_str(&format!(
                "<path class=\"edge{}{reads}\" d=\"{d}\" {marker}=\"url(#arrow)\"/>\n",
                if dashed { " dashed" } else { "" }
            ));
        } else {
            self.edges.push_str(&format!(
                "<path class=\"edge{}{reads}\" d=\"{d}\" {marker}=\"url(#arrow)\">{title}</path>\n",
                if dashed { " dashed" } else { "" }
            ));
        }
    }

    fn create_clip(&mut self, _xy: Point, _size: Point, _rounded_px: usize) -> ClipHandle {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_graph_is_an_empty_svg() {
        assert!(Graph::default().svg("").unwrap().starts_with("<svg"));
    }
}
