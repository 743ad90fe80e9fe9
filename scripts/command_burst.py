#!/usr/bin/env python3
"""Commands at once (issue 14): starts `fleetwatch demo` on free ports, waits for /readyz and
5 s more, then POSTs N commands to N simulated devices at once (one thread each) and prints
the total time and the p50 and slowest answer. Usage:
scripts/command_burst.py FLEETWATCH_BIN N [N...]   (a fresh demo per N)"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor

from demo_session import post_command, ready_demo

def one_run(binary, count):
    with ready_demo(binary) as (base, _, _):
        time.sleep(5)
        started = time.time()
        with ThreadPoolExecutor(count) as pool:
            latencies = sorted(pool.map(
                lambda i: post_command(base, f"sim-{i % 300:05d}", timeout=30), range(count)))
        total = (time.time() - started) * 1000
        return {"commands": count, "total_ms": round(total),
                "p50_ms": round(latencies[len(latencies) // 2]), "max_ms": round(latencies[-1])}

for count in map(int, sys.argv[2:]):
    print(json.dumps(one_run(sys.argv[1], count)))
