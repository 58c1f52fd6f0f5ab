//! What each command prints, as text for a terminal or as one JSON document.

use chrono::Utc;
use orkestra_runtime::bus::rabbitmq::{Settlement, StoredDeadLetter, TopologyReport};
use orkestra_runtime::runners::RunnerStatus;
use orkestra_runtime::store::{DeclaredTag, EncryptReport, REINDEX_COMMAND, ReindexReport};
use serde_json::{Value, json};

use crate::Format;

/// `dlq list`: one row per letter.
pub(crate) fn list(format: Format, queue: &str, letters: &[StoredDeadLetter]) {
    let now = Utc::now();
    if format == Format::Json {
        let rows: Vec<Value> = letters
            .iter()
            .map(|l| {
                json!({
                    "id": l.id,
                    "topic": l.topic,
                    "handler": l.handler,
                    "attempts": l.attempts,
                    "reason": l.reason,
                    "dead_at": l.dead_at.map(|t| t.to_rfc3339()),
                    "age_seconds": l.age(now).map(|a| a.num_seconds()),
                })
            })
            .collect();
        emit(&Value::Array(rows));
        return;
    }
    if letters.is_empty() {
        println!("no dead letters in {queue}");
        return;
    }
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|l| {
            [
                clean(&l.id),
                clean(&l.topic),
                clean(&l.handler),
                l.attempts.to_string(),
                l.age(now).map_or_else(|| "-".to_owned(), age),
                clean(&l.reason),
            ]
        })
        .collect();
    table(
        &["ID", "TOPIC", "HANDLER", "ATTEMPTS", "AGE", "REASON"],
        &rows,
    );
}

/// `dlq show`: everything about each letter with the id.
pub(crate) fn show(format: Format, letters: &[StoredDeadLetter]) {
    let now = Utc::now();
    if format == Format::Json {
        let rows: Vec<Value> = letters
            .iter()
            .map(|l| {
                json!({
                    "id": l.id,
                    "topic": l.topic,
                    "handler": l.handler,
                    "attempts": l.attempts,
                    "reason": l.reason,
                    "dead_at": l.dead_at.map(|t| t.to_rfc3339()),
                    "age_seconds": l.age(now).map(|a| a.num_seconds()),
                    "original_exchange": l.original_exchange,
                    "type": l.message_type,
                    "metadata": l.metadata.as_ref().and_then(|m| serde_json::to_value(m).ok()),
                    "headers": l.headers,
                    "body": l.body_json().unwrap_or_else(|| Value::String(String::from_utf8_lossy(&l.body).into_owned())),
                })
            })
            .collect();
        emit(&Value::Array(rows));
        return;
    }
    for (i, l) in letters.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let field = |name: &str, value: &str| println!("{name:<10} {}", clean(value));
        field("id", &l.id);
        field("topic", &l.topic);
        field("handler", &l.handler);
        field("attempts", &l.attempts.to_string());
        field("reason", &l.reason);
        field(
            "dead at",
            &l.dead_at.map_or_else(
                || "-".to_owned(),
                |t| format!("{} ({} ago)", t.to_rfc3339(), age(now - t)),
            ),
        );
        field("exchange", &l.original_exchange);
        field("type", l.message_type.as_deref().unwrap_or("-"));
        println!("metadata");
        match l
            .metadata
            .as_ref()
            .and_then(|m| serde_json::to_value(m).ok())
        {
            Some(Value::Object(fields)) => {
                for (k, v) in fields {
                    println!("  {}: {}", clean(&k), clean(&scalar(&v)));
                }
            }
            _ => println!("  - (the body is not an Orkestra message)"),
        }
        println!("headers");
        for (k, v) in &l.headers {
            println!("  {}: {}", clean(k), clean(&scalar(v)));
        }
        println!("body");
        match l.body_json() {
            Some(body) => println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            ),
            None => println!("{}", clean_text(&String::from_utf8_lossy(&l.body))),
        }
    }
}

/// `dlq replay` / `dlq purge`: what was done, and what was not (on standard error).
pub(crate) fn settled(format: Format, verb: &str, queue: &str, done: &Settlement) {
    if format == Format::Json {
        let failed: Vec<Value> = done
            .failed
            .iter()
            .map(|(id, why)| json!({"id": id, "error": why}))
            .collect();
        emit(&json!({
            verb: done.done,
            "failed": failed,
            "kept": done.kept,
        }));
        return;
    }
    println!(
        "{verb} {} dead letter(s) from {queue}; {} left in place",
        done.done.len(),
        done.kept + done.failed.len() as u64
    );
    for id in &done.done {
        println!("  {}", clean(id));
    }
    for (id, why) in &done.failed {
        eprintln!("not {verb}: {}: {}", clean(id), clean(why));
    }
}

/// `topology`: the exchanges, then the queues with bindings and depths.
pub(crate) fn topology(format: Format, report: &TopologyReport) {
    if format == Format::Json {
        let exchanges: Vec<Value> = report
            .exchanges
            .iter()
            .map(|e| json!({"name": e.name, "kind": e.kind, "role": e.role, "exists": e.exists}))
            .collect();
        let queues: Vec<Value> = report
            .queues
            .iter()
            .map(|q| {
                json!({
                    "name": q.name,
                    "role": q.role,
                    "bindings": q.bindings,
                    "dead_letters_to": q.dead_letters_to,
                    "exists": q.messages.is_some(),
                    "messages": q.messages,
                    "consumers": q.consumers,
                })
            })
            .collect();
        emit(&json!({"prefix": report.prefix, "exchanges": exchanges, "queues": queues}));
        return;
    }
    println!("prefix {}", report.prefix);
    println!();
    println!("exchanges");
    for e in &report.exchanges {
        let missing = if e.exists { "" } else { " (MISSING)" };
        println!("  {:<6}  {}{missing}: {}", e.kind, e.name, e.role);
    }
    println!();
    println!("queues");
    for q in &report.queues {
        let depth = match (q.messages, q.consumers) {
            (Some(m), Some(c)) => format!("{m} messages, {c} consumers"),
            _ => "MISSING".to_owned(),
        };
        println!("  {}: {depth}: {}", clean(&q.name), clean(&q.role));
        for binding in &q.bindings {
            println!("    bound {}", clean(binding));
        }
        if let Some(to) = &q.dead_letters_to {
            println!("    dead-letters to {}", clean(to));
        }
    }
}

/// `status`: one row per partition of each worker, by worker then partition.
pub(crate) fn status(format: Format, statuses: &[RunnerStatus]) {
    let now = Utc::now();
    let expires_in = |s: &RunnerStatus| {
        s.expires_at
            .map(|t| u64::try_from((t - now).num_milliseconds()).map_or(0, |ms| ms.div_ceil(1000)))
    };
    if format == Format::Json {
        let rows: Vec<Value> = statuses
            .iter()
            .map(|s| {
                json!({
                    "worker": s.name,
                    "partition": s.partition,
                    "partitions": s.partitions,
                    "owner": s.owner,
                    "checkpoint": s.checkpoint,
                    "head": s.head,
                    "lag_events": s.lag_events,
                    "lag_seconds": seconds(s.lag),
                    "expires_at": s.expires_at.map(|t| t.to_rfc3339()),
                    "expires_in_seconds": expires_in(s),
                })
            })
            .collect();
        emit(&Value::Array(rows));
        return;
    }
    if statuses.is_empty() {
        println!("no workers have run yet: the store holds no leases");
        return;
    }
    let dash = || "-".to_owned();
    let rows: Vec<[String; 7]> = statuses
        .iter()
        .map(|s| {
            [
                clean(&s.name),
                format!("{}/{}", s.partition, s.partitions),
                s.owner.as_deref().map_or_else(dash, clean),
                s.checkpoint.map_or_else(dash, |c| c.to_string()),
                s.lag_events.to_string(),
                format!("{:.1}", seconds(s.lag)),
                expires_in(s).map_or_else(dash, |n| format!("in {n}s")),
            ]
        })
        .collect();
    table(
        &[
            "WORKER",
            "PARTITION",
            "OWNER",
            "CHECKPOINT",
            "LAG EVENTS",
            "LAG SECONDS",
            "LEASE EXPIRES",
        ],
        &rows,
    );
}

/// `store reindex-tags`: each pair reindexed, the events skipped, the totals.
pub(crate) fn reindexed(format: Format, report: &ReindexReport) {
    if format == Format::Json {
        let pairs: Vec<Value> = report
            .pairs
            .iter()
            .map(|p| {
                json!({
                    "event_type": p.event_type,
                    "tag": p.tag,
                    "events": p.events,
                    "written": p.written,
                    "skipped": p.skipped,
                })
            })
            .collect();
        let skipped: Vec<Value> = report
            .skipped
            .iter()
            .map(|s| {
                json!({
                    "event_type": s.event_type,
                    "tag": s.tag,
                    "stream": s.stream,
                    "position": s.position,
                    "reason": s.reason.to_string(),
                })
            })
            .collect();
        emit(&json!({
            "pairs": pairs,
            "events": report.events(),
            "written": report.written(),
            "skipped_count": report.skipped_count(),
            "skipped": skipped,
        }));
        return;
    }
    if report.pairs.is_empty() {
        println!("every declared tag is indexed: nothing to do");
        return;
    }
    let rows: Vec<[String; 5]> = report
        .pairs
        .iter()
        .map(|p| {
            [
                clean(&p.event_type),
                clean(&p.tag),
                p.events.to_string(),
                p.written.to_string(),
                p.skipped.to_string(),
            ]
        })
        .collect();
    table(
        &["EVENT TYPE", "TAG", "EVENTS", "WRITTEN", "SKIPPED"],
        &rows,
    );
    if !report.skipped.is_empty() {
        println!();
        println!("events without an entry (their field is missing or not a text):");
        let rows: Vec<[String; 5]> = report
            .skipped
            .iter()
            .map(|s| {
                [
                    clean(&s.event_type),
                    clean(&s.tag),
                    clean(&s.stream),
                    s.position.to_string(),
                    s.reason.to_string(),
                ]
            })
            .collect();
        table(&["EVENT TYPE", "TAG", "STREAM", "POSITION", "WHY"], &rows);
        let listed = report.skipped.len() as u64;
        if report.skipped_count() > listed {
            println!("... and {} more", report.skipped_count() - listed);
        }
    }
    println!();
    println!(
        "{} tag(s) indexed: {} event(s) read, {} entr{} written, {} skipped",
        report.pairs.len(),
        report.events(),
        report.written(),
        if report.written() == 1 { "y" } else { "ies" },
        report.skipped_count()
    );
}

/// `store encrypt-personal`: what the rewrite read, sealed, erased and left.
pub(crate) fn encrypted(format: Format, adapter: &str, report: &EncryptReport) {
    if format == Format::Json {
        let unsealed: Vec<Value> = report
            .unsealed_events
            .iter()
            .map(|e| {
                json!({
                    "event_type": e.event_type,
                    "stream": e.stream,
                    "position": e.position,
                    "reason": e.reason,
                })
            })
            .collect();
        emit(&json!({
            "store": adapter,
            "resumed_after": report.resumed_after,
            "last_position": report.last_position,
            "scanned": report.scanned,
            "rewritten": report.rewritten,
            "fields_sealed": report.fields_sealed,
            "forgotten": report.forgotten,
            "fields_erased": report.fields_erased,
            "unsealed_count": report.unsealed,
            "unsealed": unsealed,
            "snapshots_deleted": report.snapshots_deleted,
        }));
        return;
    }
    if report.scanned == 0 {
        match report.resumed_after {
            Some(p) => println!(
                "no event after position {p}, where the last run with these schemas stopped: nothing to do (--from-start reads every event again)"
            ),
            None => println!("the store holds no events: nothing to do"),
        }
        return;
    }
    let rows = [
        ["events read".to_owned(), report.scanned.to_string()],
        ["events rewritten".to_owned(), report.rewritten.to_string()],
        [
            "values sealed with their subject's key".to_owned(),
            report.fields_sealed.to_string(),
        ],
        [
            "events of forgotten subjects (values erased)".to_owned(),
            format!("{} ({})", report.forgotten, report.fields_erased),
        ],
        [
            "events left in plain text (no subject)".to_owned(),
            report.unsealed.to_string(),
        ],
        [
            "plain snapshots deleted".to_owned(),
            report.snapshots_deleted.to_string(),
        ],
    ];
    table(&["", "COUNT"], &rows);
    if !report.unsealed_events.is_empty() {
        println!();
        println!("events left in plain text (no usable subject field):");
        let rows: Vec<[String; 4]> = report
            .unsealed_events
            .iter()
            .map(|e| {
                [
                    clean(&e.event_type),
                    clean(&e.stream),
                    e.position.to_string(),
                    clean(&e.reason),
                ]
            })
            .collect();
        table(&["EVENT TYPE", "STREAM", "POSITION", "WHY"], &rows);
        let listed = report.unsealed_events.len() as u64;
        if report.unsealed > listed {
            println!("... and {} more", report.unsealed - listed);
        }
    }
    println!();
    println!(
        "the {adapter} store's personal data is encrypted up to position {}: {} event(s) rewritten. \
         Copies outside the store (read models, messages already delivered, backups) keep \
         what they hold.",
        report
            .last_position
            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        report.rewritten
    );
}

/// `store tags`: every declared (event type, tag) pair and whether it is indexed.
pub(crate) fn declared_tags(format: Format, declared: &[DeclaredTag]) {
    if format == Format::Json {
        let rows: Vec<Value> = declared
            .iter()
            .map(|d| {
                json!({
                    "event_type": d.event_type,
                    "tag": d.tag,
                    "indexed": d.indexed,
                    "reindexed_to": d.reindexed_to,
                })
            })
            .collect();
        emit(&Value::Array(rows));
        return;
    }
    if declared.is_empty() {
        println!("no tags are declared: no decision has run against this store");
        return;
    }
    let rows: Vec<[String; 3]> = declared
        .iter()
        .map(|d| {
            [
                clean(&d.event_type),
                clean(&d.tag),
                if d.indexed {
                    "yes".to_owned()
                } else {
                    format!("no: run `{REINDEX_COMMAND}`")
                },
            ]
        })
        .collect();
    table(&["EVENT TYPE", "TAG", "INDEXED"], &rows);
}

/// Seconds to the millisecond.
fn seconds(d: std::time::Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

fn emit(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Left-aligned columns two spaces apart under a header, no borders and no trailing
/// spaces (comfy-table, without a terminal backend: the same text in a pipe).
fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(head.to_vec());
    table.add_rows(rows.iter().map(|row| row.to_vec()));
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}

/// `42s`, `5m`, `3h`, `2d`.
fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// One line with every control character escaped: what a handler or a foreign
/// publisher wrote never moves the cursor or recolours the terminal.
fn clean(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<char>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Like [`clean`], keeping line breaks (a body that is not JSON).
fn clean_text(text: &str) -> String {
    let lines: Vec<String> = text.lines().map(clean).collect();
    lines.join("\n")
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
