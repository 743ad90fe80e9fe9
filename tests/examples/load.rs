//! The load harness's full run (docs/benchmarks.md, "Load"): rates of 2k, 5k, 10k and
//! 20k readings a second (1,000 devices), the five pipeline roles in one process; 5k again
//! with one process per role (each role's own cost); and 10,000 devices reading every
//! second (the service's memory at 10k devices); 5k again with 4 partitions per topic,
//! where the others have one. Each load gets a fresh service and fresh
//! brokers (its own Mosquitto, tansu in memory unless `FLEETWATCH_LOAD_TANSU_STORAGE`
//! says otherwise, e.g. `sqlite://tansu.db`). Prints a Markdown table and
//! writes one JSON line per load to OUT (default `target/load.jsonl`) for
//! `scripts/load_plot.py`.
//!
//! ```sh
//! cargo build --release -p fleetwatch -p fleetwatch-sim
//! FLEETWATCH_BIN=$PWD/target/release/fleetwatch FLEETSIM_BIN=$PWD/target/release/fleetsim \
//! FLEETWATCH_TEST_MOSQUITTO=/usr/sbin/mosquitto FLEETWATCH_TEST_TANSU=$HOME/.cargo/bin/tansu \
//!   cargo run --release -p fleetwatch-e2e --example load -- [OUT] [--quick]
//! ```
//! `--quick`: 10 s windows and 30 s warm-ups (no alert latency at the slow rates).
//! `--only=3,5`: only those loads of the plan (0-based, in the order above).
//! Before each load it measures the machine's speed (`machine_reference_us`, the last
//! column): the shared machine's speed moves by a factor of 3 or more from hour to hour.
//! `--idle`: only the service with no devices (every role in one process, fresh brokers):
//! ms of CPU per second of each process over 20 s, from 25 s after it is ready.

use std::io::Write;

use fleetwatch_e2e::brokers::OwnBrokers;
use fleetwatch_e2e::load::{
    idle, machine_reference_us, run, table_row, Layout, Load, TABLE_HEADER,
};
use fleetwatch_e2e::RIG_PARTITIONS;

/// Partitions per topic: one instance of each role runs, and one partition is all it can
/// use. The plan's last load runs the e2e rig's count, to show what partitions cost on
/// tansu (docs/benchmarks.md, "Partitions on tansu").
const ONE_INSTANCE: u32 = 1;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<usize>> = args.iter().find_map(|a| {
        let list = a.strip_prefix("--only=")?;
        Some(list.split(',').filter_map(|n| n.parse().ok()).collect())
    });
    let out = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "target/load.jsonl".into());
    let fleetsim = std::env::var("FLEETSIM_BIN").expect("FLEETSIM_BIN: the fleetsim binary");
    let load = |devices: usize, interval_ms: u64, partitions: u32| {
        // Long enough for the models to pass their warm-up (about 400 readings).
        let warmup = (400.0 * interval_ms as f64 / 1000.0).clamp(30.0, 120.0);
        Load {
            devices,
            interval_ms,
            warmup_secs: if quick { 30.0 } else { warmup },
            window_secs: if quick { 10.0 } else { 20.0 },
            partitions,
            // At least 500 a minute: over a 20 s window, about 160 alert latencies, so
            // the p99 is not simply the slowest of a few dozen.
            anomalies_per_minute: (devices as f64 / 10.0).max(500.0),
        }
    };
    let plan = [
        (load(1000, 500, ONE_INSTANCE), Layout::OneProcess),
        (load(1000, 200, ONE_INSTANCE), Layout::OneProcess),
        (load(1000, 100, ONE_INSTANCE), Layout::OneProcess),
        (load(1000, 50, ONE_INSTANCE), Layout::OneProcess),
        (load(1000, 200, ONE_INSTANCE), Layout::PerRole),
        (load(10_000, 1000, ONE_INSTANCE), Layout::OneProcess),
        (load(1000, 200, RIG_PARTITIONS), Layout::OneProcess),
    ];
    // `FLEETWATCH_LOAD_TANSU_STORAGE=sqlite://tansu.db`: tansu on disk, as the fault
    // tests run it (its path relative to the brokers' directory).
    let tansu_storage = std::env::var("FLEETWATCH_LOAD_TANSU_STORAGE")
        .unwrap_or_else(|_| "memory://tansu/".to_owned());
    let fresh_brokers = || {
        let dir = std::env::temp_dir().join(fleetwatch_e2e::unique("load-brokers"));
        OwnBrokers::start_with_storage(dir, &tansu_storage)
    };
    if args.iter().any(|a| a == "--idle") {
        let costs = idle(&fresh_brokers(), ONE_INSTANCE, 25.0, 20.0);
        let costs: Vec<String> = costs
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.1}"))
            .collect();
        println!(
            "idle, no devices, ms of CPU per second: {}",
            costs.join(", ")
        );
        return;
    }
    let mut lines = std::fs::File::create(&out).expect("the output file");
    println!("{TABLE_HEADER}");
    for (index, (load, layout)) in plan.into_iter().enumerate() {
        if only.as_ref().is_some_and(|only| !only.contains(&index)) {
            continue;
        }
        // Fresh brokers for each load, so no load pays for what the ones before it left
        // in tansu's in-memory log (on one tansu for the whole plan, 2026-11-27: 5,000/s
        // publish → alert p99 268 ms, 39-42 in quick runs on a fresh one). tansu's cost
        // still grows within a long load (docs/benchmarks.md, "Load").
        let machine_reference_us = machine_reference_us();
        let brokers = fresh_brokers();
        let mut measured = run(&brokers, &fleetsim, load, layout);
        measured.machine_reference_us = Some(machine_reference_us);
        println!("{}", table_row(&measured));
        writeln!(lines, "{}", serde_json::to_string(&measured).unwrap()).unwrap();
    }
    eprintln!("per-process CPU and the rest: {out}");
}
