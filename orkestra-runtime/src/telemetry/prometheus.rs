//! The Prometheus text exposition format (version 0.0.4) of collected OpenTelemetry
//! metrics, named as Prometheus translates OpenTelemetry names: every character outside
//! `[a-zA-Z0-9_:]` becomes `_`, the unit becomes a suffix (`s` → `_seconds`; an
//! annotation in braces such as `{message}` none), monotonic sums get `_total`,
//! histograms `_bucket`/`_sum`/`_count`, and the resource's attributes go to
//! `target_info`. Each series carries `otel_scope_name`, so two meters' instruments of
//! one name stay distinct series.
//!
//! Label values keep every character; `\`, `"` and line feeds are escaped, which is all
//! the format needs. Label names are sanitised like metric names, and attributes whose
//! keys sanitise to the same name are joined with `;`.
//!
//! (The `opentelemetry-prometheus` crate is discontinued; this is the part of it
//! Orkestra needs.)

use std::collections::BTreeMap;
use std::fmt::Write as _;

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{
    AggregatedMetrics, Histogram, Metric, MetricData, ResourceMetrics, Sum,
};

/// The `Content-Type` of the format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: its HELP and TYPE lines and its samples, in collection order.
struct Family {
    help: String,
    kind: &'static str,
    samples: String,
}

/// Renders `metrics` in the text format.
pub(crate) fn render(metrics: &ResourceMetrics) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for scope in metrics.scope_metrics() {
        let scope_name = scope.scope().name();
        for metric in scope.metrics() {
            add(&mut families, metric, scope_name);
        }
    }
    let mut out = String::with_capacity(4096 + families.len() * 512);
    let resource: Vec<KeyValue> = metrics
        .resource()
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    if !resource.is_empty() {
        out.push_str("# HELP target_info Target metadata\n# TYPE target_info gauge\ntarget_info{");
        labels(&mut out, &resource, &[]);
        out.push_str("} 1\n");
    }
    for (name, family) in &families {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
        let _ = writeln!(out, "# TYPE {name} {}", family.kind);
        out.push_str(&family.samples);
    }
    out
}

fn add(families: &mut BTreeMap<String, Family>, metric: &Metric, scope: &str) {
    let base = metric_name(metric.name(), metric.unit());
    let scope = [("otel_scope_name", scope)];
    match metric.data() {
        AggregatedMetrics::F64(data) => add_data(families, metric, base, data, &scope),
        AggregatedMetrics::U64(data) => add_data(families, metric, base, data, &scope),
        AggregatedMetrics::I64(data) => add_data(families, metric, base, data, &scope),
    }
}

/// A value as the format writes it.
trait Sample: Copy {
    fn write(self, out: &mut String);
}

impl Sample for f64 {
    fn write(self, out: &mut String) {
        write_f64(out, self);
    }
}

impl Sample for u64 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Sample for i64 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

fn add_data<T: Sample>(
    families: &mut BTreeMap<String, Family>,
    metric: &Metric,
    base: String,
    data: &MetricData<T>,
    scope: &[(&str, &str)],
) {
    match data {
        MetricData::Gauge(gauge) => {
            let family = family(families, base.clone(), metric, "gauge");
            for point in gauge.data_points() {
                sample(
                    &mut family.samples,
                    &base,
                    point.attributes(),
                    scope,
                    point.value(),
                );
            }
        }
        MetricData::Sum(sum) => add_sum(families, metric, base, sum, scope),
        MetricData::Histogram(histogram) => add_histogram(families, metric, base, histogram, scope),
        // Orkestra records no exponential histogram; Prometheus 2 cannot read one as text.
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn add_sum<T: Sample>(
    families: &mut BTreeMap<String, Family>,
    metric: &Metric,
    base: String,
    sum: &Sum<T>,
    scope: &[(&str, &str)],
) {
    let (name, kind) = if sum.is_monotonic() {
        let name = if base.ends_with("_total") {
            base
        } else {
            format!("{base}_total")
        };
        (name, "counter")
    } else {
        (base, "gauge")
    };
    let family = family(families, name.clone(), metric, kind);
    for point in sum.data_points() {
        sample(
            &mut family.samples,
            &name,
            point.attributes(),
            scope,
            point.value(),
        );
    }
}

fn add_histogram<T: Sample>(
    families: &mut BTreeMap<String, Family>,
    metric: &Metric,
    base: String,
    histogram: &Histogram<T>,
    scope: &[(&str, &str)],
) {
    let family = family(families, base.clone(), metric, "histogram");
    let out = &mut family.samples;
    let mut point_labels = String::new();
    for point in histogram.data_points() {
        let attributes: Vec<&KeyValue> = point.attributes().collect();
        point_labels.clear();
        labels(&mut point_labels, &attributes, scope);
        let mut cumulative = 0u64;
        for (bound, n) in point.bounds().zip(point.bucket_counts()) {
            cumulative += n;
            let _ = write!(out, "{base}_bucket{{{point_labels},le=\"");
            write_f64(out, bound);
            let _ = writeln!(out, "\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{base}_bucket{{{point_labels},le=\"+Inf\"}} {}",
            point.count()
        );
        let _ = write!(out, "{base}_sum{{{point_labels}}} ");
        point.sum().write(out);
        let _ = writeln!(out, "\n{base}_count{{{point_labels}}} {}", point.count());
    }
}

/// The family named `name`, made on first use with the metric's description.
fn family<'a>(
    families: &'a mut BTreeMap<String, Family>,
    name: String,
    metric: &Metric,
    kind: &'static str,
) -> &'a mut Family {
    families.entry(name).or_insert_with(|| Family {
        help: if metric.description().is_empty() {
            metric.name().to_owned()
        } else {
            metric.description().to_owned()
        },
        kind,
        samples: String::new(),
    })
}

fn sample<'a, T: Sample>(
    out: &mut String,
    name: &str,
    attributes: impl Iterator<Item = &'a KeyValue>,
    scope: &[(&str, &str)],
    value: T,
) {
    let attributes: Vec<&KeyValue> = attributes.collect();
    out.push_str(name);
    out.push('{');
    labels(out, &attributes, scope);
    out.push_str("} ");
    value.write(out);
    out.push('\n');
}

/// `a="1",b="2"` without braces: the attributes (sanitised names, sorted, equal names
/// joined with `;`), then `extra` as given. Written once per data point; a histogram's
/// bucket lines add their `le` to it.
fn labels<K: std::borrow::Borrow<KeyValue>>(
    out: &mut String,
    attributes: &[K],
    extra: &[(&str, &str)],
) {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(attributes.len());
    for kv in attributes {
        let kv = kv.borrow();
        let name = sanitize(kv.key.as_str());
        let value = kv.value.as_str();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(';');
                v.push_str(&value);
            }
            None => merged.push((name, value.into_owned())),
        }
    }
    merged.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let pairs = merged
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra.iter().copied());
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
}

/// The Prometheus name of an instrument: sanitised, with the unit's suffix.
pub(crate) fn metric_name(name: &str, unit: &str) -> String {
    let mut name = sanitize(name);
    if let Some(suffix) = unit_suffix(unit)
        && !name.ends_with(&format!("_{suffix}"))
    {
        name.push('_');
        name.push_str(&suffix);
    }
    name
}

/// What a unit adds to a name: `s` → `seconds` and the other common UCUM units by
/// their Prometheus names; an annotation in braces, or `1`, nothing.
fn unit_suffix(unit: &str) -> Option<String> {
    let known = match unit {
        "" | "1" => return None,
        u if u.starts_with('{') && u.ends_with('}') => return None,
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "min" => "minutes",
        "h" => "hours",
        "d" => "days",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "%" => "percent",
        other => {
            let cleaned = sanitize(&other.replace('{', "").replace('}', ""));
            return (!cleaned.is_empty()).then_some(cleaned);
        }
    };
    Some(known.to_owned())
}

/// A metric or label name: every character outside `[a-zA-Z0-9_]` becomes `_`, runs
/// of `_` become one, and a leading digit gets a `_` before it.
pub(crate) fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// A label value: `\` → `\\`, `"` → `\"`, line feed → `\n`; every other character as it is.
pub(crate) fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` → `\\`, line feed → `\n`.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_translation() {
        assert_eq!(
            metric_name("messaging.process.duration", "s"),
            "messaging_process_duration_seconds"
        );
        assert_eq!(
            metric_name("messaging.client.sent.messages", "{message}"),
            "messaging_client_sent_messages"
        );
        assert_eq!(
            metric_name("orkestra.runner.lag.age", "s"),
            "orkestra_runner_lag_age_seconds"
        );
        assert_eq!(metric_name("already_seconds", "s"), "already_seconds");
        assert_eq!(metric_name("size", "By"), "size_bytes");
        assert_eq!(sanitize("9lives"), "_9lives");
        assert_eq!(sanitize("a..b-c/d"), "a_b_c_d");
        assert_eq!(sanitize("é"), "_");
    }

    #[test]
    fn label_values_escape_only_what_the_format_needs() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\\b\"c\nd ünï {x}");
        assert_eq!(out, "a\\\\b\\\"c\\nd ünï {x}");
    }

    #[test]
    fn colliding_label_names_are_joined() {
        let mut out = String::new();
        let attrs = [KeyValue::new("a.b", "1"), KeyValue::new("a_b", "2")];
        labels(&mut out, &attrs, &[("le", "+Inf")]);
        assert_eq!(out, "a_b=\"1;2\",le=\"+Inf\"");
    }

    #[test]
    fn floats_are_written_as_prometheus_reads_them() {
        let mut out = String::new();
        for v in [0.0005, 1.0, 30.0, f64::INFINITY, f64::NEG_INFINITY] {
            write_f64(&mut out, v);
            out.push(' ');
        }
        write_f64(&mut out, f64::NAN);
        assert_eq!(out, "0.0005 1 30 +Inf -Inf NaN");
    }
}
