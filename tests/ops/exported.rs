//! What the runtime exports to Prometheus, in one place: the alert rules, the dashboard
//! and the scrape of a real service are all checked against this list.

/// A metric family's kind in the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric family the runtime exports, as Prometheus names them: the instrument's
/// name with dots as underscores, `_seconds` for a unit of `s` (a unit in braces is
/// only an annotation and dropped), `_total` after a counter; with the labels its
/// attributes become (dots as underscores too).
pub const EXPORTED: &[(&str, Kind, &[&str])] = &[
    (
        "messaging_client_sent_messages_total",
        Kind::Counter,
        &[SYSTEM, DESTINATION, TYPE],
    ),
    (
        "messaging_client_consumed_messages_total",
        Kind::Counter,
        &[SYSTEM, HANDLER],
    ),
    (
        "messaging_process_duration_seconds",
        Kind::Histogram,
        &[SYSTEM, HANDLER, TYPE, OUTCOME],
    ),
    (
        "messaging_client_operation_duration_seconds",
        Kind::Histogram,
        &[SYSTEM, OPERATION, DESTINATION],
    ),
    ("orkestra_handler_retries_total", Kind::Counter, &[HANDLER]),
    (
        "orkestra_dead_letters_total",
        Kind::Counter,
        &[HANDLER, REASON],
    ),
    ("orkestra_inbox_skipped_total", Kind::Counter, &[HANDLER]),
    ("orkestra_bus_in_flight", Kind::Gauge, &[HANDLER]),
    ("orkestra_bus_reconnects_total", Kind::Counter, &[]),
    (
        "orkestra_store_append_duration_seconds",
        Kind::Histogram,
        &[STORE],
    ),
    (
        "orkestra_aggregate_conflicts_total",
        Kind::Counter,
        &[AGGREGATE],
    ),
    ("orkestra_runner_lag", Kind::Gauge, &[WORKER, PARTITION]),
    (
        "orkestra_runner_lag_age_seconds",
        Kind::Gauge,
        &[WORKER, PARTITION],
    ),
    ("orkestra_runner_owned", Kind::Gauge, &[WORKER]),
    (
        "orkestra_process_timers_pending",
        Kind::Gauge,
        &[PROCESS_MANAGER],
    ),
    (
        "orkestra_process_timer_lateness_seconds",
        Kind::Histogram,
        &[PROCESS_MANAGER],
    ),
];

// The attributes, as labels.
const SYSTEM: &str = "messaging_system";
const DESTINATION: &str = "messaging_destination_name";
const OPERATION: &str = "messaging_operation_name";
const TYPE: &str = "orkestra_message_type";
const HANDLER: &str = "orkestra_handler";
const OUTCOME: &str = "orkestra_outcome";
const REASON: &str = "orkestra_dead_letter_reason";
const STORE: &str = "orkestra_store";
const AGGREGATE: &str = "orkestra_aggregate";
const WORKER: &str = "orkestra_worker";
const PARTITION: &str = "orkestra_partition";
const PROCESS_MANAGER: &str = "orkestra_process_manager";

/// Labels every series carries: the scope (meter) the exporter names, and the two
/// Prometheus gives every series of a target.
pub const TARGET_LABELS: &[&str] = &["otel_scope_name", "job", "instance"];

/// Series every Prometheus writes for a scrape target, which rules may read too.
pub const SCRAPE_SERIES: &[&str] = &["up"];

/// The series names a query may read: a counter's or a gauge's family name, a
/// histogram's `_bucket`, `_sum` and `_count`.
pub fn series_names() -> Vec<String> {
    EXPORTED
        .iter()
        .flat_map(|&(family, kind, _)| match kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{family}{suffix}"))
                .collect(),
            Kind::Counter | Kind::Gauge => vec![family.to_owned()],
        })
        .collect()
}

/// The family a series name belongs to (`x_bucket` → `x` for a histogram `x`).
pub fn family_of(series: &str) -> Option<&'static str> {
    EXPORTED.iter().find_map(|&(family, kind, _)| {
        let matches = match kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| series.strip_suffix(suffix) == Some(family)),
            Kind::Counter | Kind::Gauge => series == family,
        };
        matches.then_some(family)
    })
}

/// The labels a series of the runtime may carry: its attributes', the target's, and
/// `le` on a histogram's buckets. Empty for a series the runtime does not export.
pub fn labels_of(series: &str) -> Vec<&'static str> {
    let Some(family) = family_of(series) else {
        return Vec::new();
    };
    let (_, _, attributes) = EXPORTED.iter().find(|e| e.0 == family).expect("a family");
    let mut labels: Vec<&str> = attributes.iter().chain(TARGET_LABELS).copied().collect();
    if series.ends_with("_bucket") {
        labels.push("le");
    }
    labels
}
