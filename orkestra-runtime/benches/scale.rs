//! Appends at scale: one writer appends 500,000 events in batches of 100 over 5,000
//! streams to a fresh store, and the rate of each 50,000 is printed, for the embedded
//! SQLite store and PostgreSQL (a fresh database, dropped after). A store whose appends
//! cost more as the table grows shows as a falling line; BENCHMARKS.md keeps the lines.
//!
//! `cargo bench -p orkestra-runtime --bench scale` (PostgreSQL: `ORKESTRA_PG_URL` or the
//! local default; skipped with a notice when unreachable). `ORKESTRA_SCALE_EVENTS` sets
//! the total, `ORKESTRA_SCALE_BUDGET_S` stops a store's run after that many seconds.

#[path = "../tests/support/databases.rs"]
#[allow(dead_code)]
mod databases;
#[path = "../tests/support/payloads.rs"]
#[allow(dead_code)]
mod payloads;
#[path = "../tests/support/scale.rs"]
#[allow(dead_code)]
mod scale;

use std::time::{Duration, Instant};

use orkestra_runtime::Store;
use scale::{BATCH, STEP, append_batches, line, rate};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Rates per step, and whether the run stopped at the budget.
async fn run(store: &Store, total: usize, budget: Duration) -> (Vec<f64>, bool) {
    let per_step = STEP / BATCH;
    let started = Instant::now();
    let mut rates = Vec::new();
    for step in 0..total / STEP {
        let times = append_batches(store, step * per_step, per_step).await;
        rates.push(rate(&times));
        if started.elapsed() > budget {
            return (rates, true);
        }
    }
    (rates, false)
}

fn report(name: &str, rates: &[f64], stopped: bool) {
    println!("{name}: {}", line(rates));
    if stopped {
        println!("{name}: stopped at the time budget");
    }
    let steps: Vec<String> = (1..=rates.len())
        .map(|i| format!("{}k", i * STEP / 1000))
        .collect();
    println!("| store | {} |", steps.join(" | "));
    println!("| --- |{}", " --- |".repeat(rates.len()));
    let cells: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!("| {name} | {} |", cells.join(" | "));
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it with no argument:
    // then only a smoke run.
    let benching = std::env::args().any(|a| a == "--bench");
    let total = if benching {
        env_number("ORKESTRA_SCALE_EVENTS", 500_000) as usize
    } else {
        STEP
    };
    let budget = Duration::from_secs(env_number("ORKESTRA_SCALE_BUDGET_S", 900));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir =
            std::env::temp_dir().join(format!("orkestra-scale-{}", uuid::Uuid::new_v4().simple()));
        let store = Store::sqlite(dir.join("events.db")).await.unwrap();
        let (rates, stopped) = run(&store, total, budget).await;
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        report("sqlite", &rates, stopped);

        match databases::FreshDatabase::create("scale_bench").await {
            Ok(db) => {
                let store = Store::postgres(&db.url()).await.unwrap();
                let (rates, stopped) = run(&store, total, budget).await;
                drop(store);
                report("postgres", &rates, stopped);
                let client = db.client().await;
                let scans = databases::seq_scans(&client, "orkestra_events").await;
                println!("postgres: seq_scan on orkestra_events after the run: {scans}");
            }
            Err(e) => println!("postgres: skipped ({e})"),
        }
    });
}
