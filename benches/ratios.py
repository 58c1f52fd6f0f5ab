#!/usr/bin/env python3
"""Prints the benchmark ratios (numerator ÷ baseline, mean times) from criterion's output.

Run after `cargo bench`; reads target/criterion/<group>/<bench>/new/estimates.json.
A ratio below 1.0 means Orkestra took less time than the baseline.
"""
import json
import os
import sys

TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
RATIOS = [
    # (label, numerator, denominator, target or None): time ratios, lower is better
    ("in-process dispatch ÷ mpsc+oneshot", "dispatch/orkestra", "dispatch/raw_mpsc_oneshot", 1.0),
    ("in-process dispatch ÷ direct call", "dispatch/orkestra", "dispatch/direct_call", 2.0),
    ("floor: direct call + the receipt's copy ÷ direct call", "dispatch/direct_call_plus_receipt_copy", "dispatch/direct_call", None),
    ("publish to 3 ÷ broadcast to 3", "publish3/orkestra", "publish3/raw_broadcast", 1.5),
    ("aggregate load, 10,000 events + snapshot ÷ 100 events, SQLite", "aggregate_load_sqlite/events_10000_snapshot", "aggregate_load_sqlite/events_100", 2.0),
    ("aggregate load, 10,000 events + snapshot ÷ 100 events, PostgreSQL", "aggregate_load_postgres/events_10000_snapshot", "aggregate_load_postgres/events_100", 2.0),
]
THROUGHPUT = [
    # (label, variant, baseline, minimum or None): throughput ratios, higher is better
    ("dispatch throughput, OTel layer sampling off ÷ no subscriber", "tracing/otel_sampling_off", "tracing/no_subscriber", 0.85),
    ("dispatch throughput, every span sampled ÷ no subscriber", "tracing/otel_sampled", "tracing/no_subscriber", 0.17),
    ("same, tracing-opentelemetry's default layer settings", "tracing/otel_sampled_layer_defaults", "tracing/no_subscriber", None),
    ("in-process dispatch, meter provider installed ÷ none", "metrics/provider_installed", "metrics/no_provider", 0.90),
    ("in-process publish to 3, meter provider installed ÷ none", "metrics/publish3_provider_installed", "metrics/publish3_no_provider", None),
    ("PostgreSQL append, 1 event per commit ÷ raw INSERT+COMMIT", "pg_append_1/orkestra", "pg_append_1/raw_insert_commit", 0.80),
    ("PostgreSQL append, 8 writers ÷ raw, 8 connections", "pg_append_8w/orkestra", "pg_append_8w/raw_insert_commit", 0.80),
    ("embedded store, 1,000-event batch ÷ raw rusqlite transaction", "sqlite_batch_1000/orkestra", "sqlite_batch_1000/raw_rusqlite", 0.80),
    ("read + decode a 10,000-event stream ÷ raw SELECT + serde", "read_decode_10k/orkestra", "read_decode_10k/raw_select_serde", 0.70),
    ("RabbitMQ publish + consume + ack ÷ raw lapin", "rabbit_roundtrip/orkestra", "rabbit_roundtrip/raw_lapin", 0.90),
    ("aggregate command on PostgreSQL ÷ hand-written tokio-postgres", "aggregate_pg/orkestra", "aggregate_pg/raw_tokio_postgres", 0.80),
    ("PostgreSQL projection (read model + checkpoint per tx, batches of 500) ÷ hand-written loop", "pg_projection/orkestra", "pg_projection/raw_loop", 0.80),
    ("relay ÷ raw lapin publishing the same stored events with confirms", "relay/orkestra", "relay/raw_lapin", 0.80),
    ("one-partition projection with leases ÷ the same projection solo (no leases), SQLite, 20,000 events", "replicas_lease/orkestra", "replicas_lease/orkestra_solo", 0.95),
    ("one-partition projection with leases ÷ the hand-written loop without them", "replicas_lease/orkestra", "replicas_lease/raw_no_lease", None),
    ("the same loop holding its partition through a lease ÷ without", "replicas_lease/raw_with_leases", "replicas_lease/raw_no_lease", 0.95),
    ("SQLite append, an event with 2 tags ÷ without tags", "tags_append_sqlite/tagged_2", "tags_append_sqlite/untagged", 0.80),
    ("PostgreSQL append, an event with 2 tags ÷ without tags", "tags_append_pg/tagged_2", "tags_append_pg/untagged", 0.80),
    ("memory: append + read back, an event with 2 personal fields ÷ without", "personal_append_read_memory/personal_2", "personal_append_read_memory/plain", 0.70),
    ("SQLite: append + read back, an event with 2 personal fields ÷ without", "personal_append_read_sqlite/personal_2", "personal_append_read_sqlite/plain", 0.70),
    ("memory: read 10,000 events of 1,000 subjects, 2 personal fields (keys cached) ÷ plain", "personal_read_10k_memory/personal_2", "personal_read_10k_memory/plain", 0.60),
    ("SQLite: read 10,000 events of 1,000 subjects, 2 personal fields (keys cached) ÷ plain", "personal_read_10k_sqlite/personal_2", "personal_read_10k_sqlite/plain", 0.60),
    ("PostgreSQL decisions (read_query + append_if), 16 writers on disjoint boundaries ÷ 1 writer", "dcb_pg_writers/w16", "dcb_pg_writers/w1", 6.0),
    ("decision reading 20 events ÷ aggregate command on a ~20-event stream, PostgreSQL, bus.dispatch", "decision_pg/decision_20_events", "decision_pg/aggregate_20_events", 0.70),
    ("2 ms handler: 8 partitions on one copy ÷ 1 partition", "replicas_partitions/p8_one_copy", "replicas_partitions/p1", 5.0),
    ("2 ms handler: 8 partitions over two copies ÷ 1 partition", "replicas_partitions/p8_two_copies", "replicas_partitions/p1", 5.0),
    ("2 ms handler: 8 partitions over two copies ÷ 8 on one copy", "replicas_partitions/p8_two_copies", "replicas_partitions/p8_one_copy", None),
]


def mean_ns(bench):
    path = os.path.join(TARGET, "criterion", *bench.split("/"), "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["mean"]["point_estimate"]
    except FileNotFoundError:
        return None


def main():
    failed = False
    for label, num, den, target in RATIOS:
        a, b = mean_ns(num), mean_ns(den)
        if a is None or b is None:
            print(f"{label}: not measured (run cargo bench first)")
            continue
        ratio = a / b
        verdict = ""
        if target is not None:
            ok = ratio <= target
            failed |= not ok
            verdict = f"  target <= {target:.2f}x: {'ok' if ok else 'MISSED'}"
        print(f"{label}: {a:,.0f} ns / {b:,.0f} ns = {ratio:.2f}x{verdict}")
    for label, variant, base, minimum in THROUGHPUT:
        a, b = mean_ns(variant), mean_ns(base)
        if a is None or b is None:
            print(f"{label}: not measured (run cargo bench first)")
            continue
        ratio = b / a
        verdict = ""
        if minimum is not None:
            ok = ratio >= minimum
            failed |= not ok
            verdict = f"  target >= {minimum:.2f}x: {'ok' if ok else 'MISSED'}"
        print(f"{label}: {ratio:.2f}x ({a:,.0f} ns vs {b:,.0f} ns){verdict}")
    try:
        with open(os.path.join(TARGET, "criterion", "rabbit_confirm_p99.json")) as f:
            p99 = json.load(f)
        ratio = p99["orkestra_ns"] / p99["raw_ns"]
        ok = ratio <= 1.2
        failed |= not ok
        print(f"RabbitMQ p99 confirm latency ÷ raw lapin: {p99['orkestra_ns'] / 1e6:.1f} ms / "
              f"{p99['raw_ns'] / 1e6:.1f} ms = {ratio:.2f}x  target <= 1.20x: {'ok' if ok else 'MISSED'}")
    except FileNotFoundError:
        print("RabbitMQ p99 confirm latency: not measured (run the rabbitmq bench)")
    try:
        with open(os.path.join(TARGET, "criterion", "metrics_overhead.json")) as f:
            overhead = json.load(f)
        for label, minimum in [("dispatch", 0.90), ("publish3", None)]:
            m = overhead[label]
            ratio = m["without_ns"] / m["with_ns"]
            verdict = ""
            if minimum is not None:
                ok = ratio >= minimum
                failed |= not ok
                verdict = f"  target >= {minimum:.2f}x: {'ok' if ok else 'MISSED'}"
            print(f"in-process {label}, meter provider ÷ none, interleaved rounds: {ratio:.2f}x "
                  f"({m['with_ns']:,.0f} ns vs {m['without_ns']:,.0f} ns){verdict}")
    except FileNotFoundError:
        print("metrics overhead (interleaved): not measured (run the in_process bench)")
    try:
        with open(os.path.join(TARGET, "criterion", "decision_vs_aggregate.json")) as f:
            d = json.load(f)
        ratio = d["aggregate_ns"] / d["decision_ns"]
        ok = ratio >= 0.70
        failed |= not ok
        print(f"decision reading 20 events ÷ aggregate command, interleaved rounds: {ratio:.2f}x "
              f"({d['decision_ns']:,.0f} ns vs {d['aggregate_ns']:,.0f} ns)  "
              f"target >= 0.70x: {'ok' if ok else 'MISSED'}")
    except FileNotFoundError:
        print("decision ÷ aggregate (interleaved): not measured (run the tests decisions bench)")
    scrape = mean_ns("metrics/scrape_200_handlers")
    if scrape is not None:
        ok = scrape < 10e6
        failed |= not ok
        print(f"GET /metrics with 200 handlers: {scrape / 1e6:.2f} ms  target < 10 ms: {'ok' if ok else 'MISSED'}")
    try:
        with open(os.path.join(TARGET, "criterion", "rabbit_busy_metrics.json")) as f:
            busy = json.load(f)
        ratio = busy["with_metrics_per_s"] / busy["without_per_s"]
        ok = ratio >= 0.95
        failed |= not ok
        print(f"RabbitMQ busy (32 dispatchers, no-op), metrics ÷ none: {ratio:.2f}x "
              f"({busy['with_metrics_per_s']:,.0f} vs {busy['without_per_s']:,.0f} msg/s)  "
              f"target >= 0.95x: {'ok' if ok else 'MISSED'}")
    except FileNotFoundError:
        print("RabbitMQ busy with metrics: not measured (run the rabbitmq bench)")
    try:
        with open(os.path.join(TARGET, "criterion", "projection_lag.json")) as f:
            lag = json.load(f)
        ok = lag["p99_ms"] < 100
        failed |= not ok
        print(f"PostgreSQL projection lag at {lag['rate']} appends/s: p50 {lag['p50_ms']:.1f} ms, "
              f"p99 {lag['p99_ms']:.1f} ms  target < 100 ms: {'ok' if ok else 'MISSED'}")
    except FileNotFoundError:
        print("projection lag: not measured (run the projections bench)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
