#!/usr/bin/env python3
"""Export scale benchmark: AsyncAPI, JSON Schema and the documentation site for the
200 commands / 200 events / 200 handlers of gen_scale.py, with the release
`orkestra-gen` (median of 5 runs of each command; each run validates the schemas and
writes every file). Target: the three together under 2 s.

Usage: cargo build --release -p orkestra-cli && python3 benches/export_scale.py
(from the workspace root; CARGO_TARGET_DIR is honoured)
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_scale  # noqa: E402

ROOT = gen_scale.ROOT
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "orkestra-gen")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        schemas = os.path.join(tmp, "schemas")
        os.makedirs(schemas)
        for name, text in gen_scale.schema_files().items():
            with open(os.path.join(schemas, name), "w") as f:
                f.write(text)
        total = 0.0
        for command, out in [("asyncapi", "asyncapi.yaml"), ("jsonschema", "json"), ("docs", "site")]:
            times = []
            for i in range(5):
                target = os.path.join(tmp, f"{i}-{out}")
                start = time.perf_counter()
                subprocess.run(
                    [BIN, command, "--schemas", schemas, "--app-prefix", "Bench", "--out", target],
                    check=True, capture_output=True,
                )
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            total += median
            print(f"{command:<11} {median * 1000:7.0f} ms")
        verdict = "ok" if total < 2.0 else "MISSED"
        print(f"{'together':<11} {total * 1000:7.0f} ms  (target < 2000 ms: {verdict})")


if __name__ == "__main__":
    main()
