#!/usr/bin/env python3
"""The demo's memory and CPU as its fleet connects (docs/benchmarks.md, "Transparent huge
pages off in the demo"): starts `fleetwatch demo` on free ports, waits for /readyz, then
prints its RSS (MB) at readiness and every 100 ms for 1 s, then 5 s later, and its CPU
(% of one core) over each 100 ms. Usage: scripts/demo_memory.py FLEETWATCH_BIN [RUNS]"""
import json, os, sys, time

from demo_session import ready_demo

TICKS = os.sysconf("SC_CLK_TCK")

def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        line = next(l for l in status if l.startswith("VmRSS:"))
    return round(int(line.split()[1]) / 1024)

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS

def one_run(binary):
    with ready_demo(binary) as (_, ready_ms, pid):
        rss, cpu = [rss_mb(pid)], []
        before = cpu_seconds(pid)
        for _ in range(10):
            time.sleep(0.1)
            now = cpu_seconds(pid)
            rss.append(rss_mb(pid))
            cpu.append(round((now - before) * 1000))
            before = now
        time.sleep(5)
        rss.append(rss_mb(pid))
        return {"ready_after_ms": round(ready_ms), "rss_mb_ready_then_every_100ms_then_6s": rss,
                "cpu_percent_every_100ms": cpu}

runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
for _ in range(runs):
    print(json.dumps(one_run(sys.argv[1])))
