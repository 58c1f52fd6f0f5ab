#!/usr/bin/env python3
"""Generator scale benchmark: 200 commands, 200 events, 200 handlers.

Measures, in one run:
  - generation time (the release `orkestra-gen generate`, median of 5 runs);
  - the debug compile time of a crate holding the generated code;
  - the debug compile time of a hand-written equivalent: plain structs with serde,
    Debug and Clone derives and the same trait impls (Payload, handler traits and
    subscription functions), with no generated rule checks;
and prints generation / compile (target <= 10 %) and generated / hand-written compile
(target <= 1.3x). Compile times are medians of 3 rebuilds of the crate alone (its
dependencies are built first and not counted).

Usage: python3 benches/gen_scale.py   (from the workspace root)
       python3 benches/gen_scale.py --gate
         the compatibility gate (`check --against`) on the same set against a copy of
         itself with 20 breaking changes: median of 5 runs, target < 1 s, and exactly
         the 20 findings.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

N = 200
FILES = 10
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def schema_files():
    per = N // FILES
    files = {}
    for f in range(FILES):
        ns = f"Mod{f}"
        lines = [f"namespace: Bench.{ns}", "commands:"]
        for i in range(per):
            lines += [
                f"  DoThing{i}:",
                "    params:",
                "      name: { type: string, required: true, min_length: 1, max_length: 64 }",
                "      count: { type: integer, required: true, min: 0, max: 1000 }",
                "      email: { type: string, format: email }",
                "      tags: { type: \"list<string>\", default: [] }",
                "      note: { type: string, default: \"\" }",
            ]
        lines.append("events:")
        for i in range(per):
            lines += [
                f"  ThingDone{i}:",
                "    fields:",
                "      id: { type: string, required: true }",
                "      count: { type: integer, required: true }",
                "      at: { type: datetime, required: true }",
            ]
        lines.append("handlers:")
        for i in range(per):
            if i % 2 == 0:
                lines.append(f"  M{f}DoThing{i}Handler: {{ command: DoThing{i}, emits: [ThingDone{i}] }}")
            else:
                lines.append(f"  M{f}ThingDone{i}Handler: {{ event: ThingDone{i} }}")
        files[f"mod{f}.yaml"] = "\n".join(lines) + "\n"
    return files


def hand_written():
    """The equivalent a person would write without rule checks."""
    per = N // FILES
    rt = "::orkestra_runtime"
    out = ["#![allow(missing_docs)]"]
    for f in range(FILES):
        ns = f"Mod{f}"
        out.append(f"pub mod mod{f} {{")
        out.append("pub mod commands { use serde::{Deserialize, Serialize};")
        for i in range(per):
            name = f"DoThing{i}"
            out.append(f"""
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct {name} {{ pub name: String, pub count: i64, #[serde(default)] pub email: Option<String>, #[serde(default)] pub tags: Vec<String>, #[serde(default)] pub note: String }}
impl {rt}::Payload for {name} {{
    const TYPE_NAME: &'static str = "Bench.{ns}.{name}";
    const TOPIC: &'static str = "mod{f}.commands.do_thing{i}";
    fn from_json(value: serde_json::Value) -> Result<Self, {rt}::PayloadError> {{ serde_json::from_value(value).map_err(|e| {rt}::PayloadError::Encoding(e.to_string())) }}
    fn check(&self) -> Result<(), {rt}::PayloadError> {{ Ok(()) }}
}}
impl {rt}::CommandPayload for {name} {{}}""")
        out.append("}")
        out.append("pub mod events { use serde::{Deserialize, Serialize};")
        for i in range(per):
            name = f"ThingDone{i}"
            out.append(f"""
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct {name} {{ pub id: String, pub count: i64, pub at: chrono::DateTime<chrono::Utc> }}
impl {rt}::Payload for {name} {{
    const TYPE_NAME: &'static str = "Bench.{ns}.{name}";
    const TOPIC: &'static str = "mod{f}.events.thing_done{i}";
    fn from_json(value: serde_json::Value) -> Result<Self, {rt}::PayloadError> {{ serde_json::from_value(value).map_err(|e| {rt}::PayloadError::Encoding(e.to_string())) }}
    fn check(&self) -> Result<(), {rt}::PayloadError> {{ Ok(()) }}
}}
impl {rt}::EventPayload for {name} {{}}""")
        out.append("}")
        out.append("pub mod handlers { use std::sync::Arc; use std::future::Future;")
        for i in range(per):
            if i % 2 == 0:
                t, fn, p = f"M{f}DoThing{i}Handler", f"m{f}_do_thing{i}_handler", f"super::commands::DoThing{i}"
                out.append(f"""
pub trait {t}: Send + Sync + 'static {{ fn execute(&self, command: {rt}::Command<{p}>, ctx: {rt}::HandlerContext) -> impl Future<Output = Result<serde_json::Value, {rt}::HandlerError>> + Send; }}
pub fn {fn}<H: {t}>(handler: H) -> {rt}::Subscription {{ let handler = Arc::new(handler); {rt}::Subscription::command::<{p}, _, _>("{t}", move |c, ctx| {{ let handler = Arc::clone(&handler); async move {{ handler.execute(c, ctx).await }} }}) }}""")
            else:
                t, fn, p = f"M{f}ThingDone{i}Handler", f"m{f}_thing_done{i}_handler", f"super::events::ThingDone{i}"
                out.append(f"""
pub trait {t}: Send + Sync + 'static {{ fn handle_event(&self, event: {rt}::Event<{p}>, ctx: {rt}::HandlerContext) -> impl Future<Output = Result<(), {rt}::HandlerError>> + Send; }}
pub fn {fn}<H: {t}>(handler: H) -> {rt}::Subscription {{ let handler = Arc::new(handler); {rt}::Subscription::events::<{rt}::Event<{p}>, _, _>("{t}", move |e, ctx| {{ let handler = Arc::clone(&handler); async move {{ handler.handle_event(e, ctx).await }} }}) }}""")
        out.append("}")
        out.append("}")
    return "\n".join(out) + "\n"


def make_crate(path, lib, extra_deps=""):
    os.makedirs(os.path.join(path, "src"), exist_ok=True)
    with open(os.path.join(path, "Cargo.toml"), "w") as f:
        f.write(f"""[package]
name = "{os.path.basename(path)}"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
orkestra-runtime = {{ path = "{ROOT}/orkestra-runtime" }}
{extra_deps}
""")
    with open(os.path.join(path, "src", "lib.rs"), "w") as f:
        f.write(lib)
    shutil.copy(os.path.join(ROOT, "Cargo.lock"), os.path.join(path, "Cargo.lock"))


def build_time(path, target):
    env = dict(os.environ, CARGO_TARGET_DIR=target)
    subprocess.run(["cargo", "build", "--quiet", "--offline"], cwd=path, env=env, check=True)
    times = []
    for _ in range(3):
        os.utime(os.path.join(path, "src", "lib.rs"))
        start = time.perf_counter()
        subprocess.run(["cargo", "build", "--quiet", "--offline"], cwd=path, env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def changed(files):
    """The set with 20 breaking changes: 5 event field types, 5 required event fields
    added, 5 command params removed, 5 command rules tightened."""
    out = dict(files)
    for k in range(5):
        name = f"mod{k}.yaml"
        text = out[name]
        text = text.replace(f"  ThingDone{k}:\n    fields:\n      id: {{ type: string, required: true }}\n      count: {{ type: integer, required: true }}",
                            f"  ThingDone{k}:\n    fields:\n      id: {{ type: string, required: true }}\n      count: {{ type: string, required: true }}")
        text = text.replace(f"  ThingDone{k + 5}:\n    fields:\n      id: {{ type: string, required: true }}",
                            f"  ThingDone{k + 5}:\n    fields:\n      id: {{ type: string, required: true }}\n      by: {{ type: string, required: true }}")
        text = text.replace(f"  DoThing{k}:\n    params:\n      name: {{ type: string, required: true, min_length: 1, max_length: 64 }}\n      count: {{ type: integer, required: true, min: 0, max: 1000 }}\n      email: {{ type: string, format: email }}",
                            f"  DoThing{k}:\n    params:\n      name: {{ type: string, required: true, min_length: 1, max_length: 64 }}\n      count: {{ type: integer, required: true, min: 0, max: 1000 }}")
        text = text.replace(f"  DoThing{k + 5}:\n    params:\n      name: {{ type: string, required: true, min_length: 1, max_length: 64 }}",
                            f"  DoThing{k + 5}:\n    params:\n      name: {{ type: string, required: true, min_length: 1, max_length: 32 }}")
        out[name] = text
    return out


def write_set(path, files):
    os.makedirs(path)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)


def gate(gen):
    work = tempfile.mkdtemp(prefix="orkestra-gate-scale-")
    old, new = os.path.join(work, "old"), os.path.join(work, "new")
    write_set(old, schema_files())
    write_set(new, changed(schema_files()))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run = subprocess.run([gen, "--format", "short", "check", "--schemas", new, "--app-prefix", "Bench",
                              "--against", old], capture_output=True, text=True)
        times.append(time.perf_counter() - start)
    findings = [l for l in run.stderr.splitlines() if "error[" in l]
    median = statistics.median(times)
    shutil.rmtree(work, ignore_errors=True)
    print(f"gate: {N} commands, {N} events against a copy with 20 changes: {len(findings)} findings, "
          f"exit {run.returncode}, {median * 1000:.0f} ms  target < 1 s: {'ok' if median < 1 else 'MISSED'}")
    return 0 if median < 1 and len(findings) == 20 and run.returncode == 1 else 1


def main():
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "orkestra-cli"], cwd=ROOT, check=True)
    gen = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "orkestra-gen")
    if "--gate" in sys.argv:
        return gate(gen)
    work = tempfile.mkdtemp(prefix="orkestra-gen-scale-")
    schemas = os.path.join(work, "schemas")
    os.makedirs(schemas)
    for name, text in schema_files().items():
        with open(os.path.join(schemas, name), "w") as f:
            f.write(text)
    out = os.path.join(work, "generated.rs")
    gen_times = []
    for _ in range(5):
        if os.path.exists(out):
            os.remove(out)
        start = time.perf_counter()
        subprocess.run([gen, "generate", "--schemas", schemas, "--app-prefix", "Bench", "--out", out],
                       check=True, stderr=subprocess.DEVNULL)
        gen_times.append(time.perf_counter() - start)
    gen_time = statistics.median(gen_times)
    with open(out) as f:
        generated = f.read()
    target = os.path.join(ROOT, "target", "gen-scale")
    make_crate(os.path.join(work, "generated_crate"), "#![deny(missing_docs)]\n//! generated\n" + generated)
    make_crate(os.path.join(work, "handwritten_crate"), hand_written(),
               'serde = { version = "1", features = ["derive"] }\nserde_json = "1"\n'
               'chrono = { version = "0.4", default-features = false, features = ["std", "serde"] }')
    compile_gen = build_time(os.path.join(work, "generated_crate"), target)
    compile_hand = build_time(os.path.join(work, "handwritten_crate"), target)
    print(f"schemas: {N} commands, {N} events, {N} handlers in {FILES} files; generated {len(generated.splitlines())} lines")
    print(f"generation: {gen_time * 1000:.0f} ms; compile generated: {compile_gen:.2f} s; compile hand-written: {compile_hand:.2f} s")
    r1 = gen_time / compile_gen
    r2 = compile_gen / compile_hand
    print(f"generation / compile of generated code: {r1 * 100:.1f} %  target <= 10 %: {'ok' if r1 <= 0.10 else 'MISSED'}")
    print(f"compile generated / hand-written: {r2:.2f}x  target <= 1.30x: {'ok' if r2 <= 1.3 else 'MISSED'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if r1 <= 0.10 and r2 <= 1.3 else 1


if __name__ == "__main__":
    sys.exit(main())
