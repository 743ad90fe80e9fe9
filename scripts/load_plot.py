#!/usr/bin/env python3
"""Plot the load harness's run (tests/examples/load.rs): CPU per message of each process
and the latencies against the measured rate, for the one-process runs at 1,000 devices on
one partition per topic (the plan's load on more partitions is a table row, not a point;
lines without a partition count, from before they were recorded, had 4).
Usage: scripts/load_plot.py target/load.jsonl docs/load.png
Needs matplotlib: python3 -m venv target/plot-venv && target/plot-venv/bin/pip install matplotlib"""
import json, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
points = sorted((r for r in runs if r["layout"] == "OneProcess" and r["devices"] == 1000
                 and r.get("partitions") == 1),
                key=lambda r: r["rate"])
rates = [r["rate"] for r in points]
figure, (cpu, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
processes = sorted({p for r in points for p in r["cpu_us_per_message"]})
for process in processes:
    cpu.plot(rates, [r["cpu_us_per_message"].get(process, 0) for r in points], marker="o", label=process)
cpu.set(xlabel="readings per second (measured)", ylabel="CPU µs per reading", title="CPU per reading, by process")
cpu.legend()
for key, label in [("alert_ms_p99", "publish → alert p99"), ("alert_ms_p50", "publish → alert p50"),
                   ("twin_ms_p99", "publish → twin p99 (bucket bound)"), ("floor_ms_p99", "broker floor p99")]:
    values = [r[key] for r in points]
    if any(v is not None for v in values):
        latency.plot(rates, [v if v is not None else float("nan") for v in values], marker="o", label=label)
latency.set(xlabel="readings per second (measured)", ylabel="ms", title="Latency", yscale="log")
latency.legend()
figure.tight_layout()
figure.savefig(sys.argv[2], dpi=100)
print(f"wrote {sys.argv[2]}")
