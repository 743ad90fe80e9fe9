#!/usr/bin/env python3
"""Commands at once (issue 14): starts `fleetwatch demo` on free ports, waits for /readyz and
5 s more, then POSTs N commands to N simulated devices at once (one thread each) and prints
the total time and the p50 and slowest answer. Usage:
scripts/command_burst.py FLEETWATCH_BIN N [N...]   (a fresh demo per N)"""
import json, re, subprocess, sys, time, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor

def post(base, device):
    body = json.dumps({"name": "reboot", "args": {"simulate": "ok"}}).encode()
    req = urllib.request.Request(f"{base}/devices/{device}/commands", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    started = time.time()
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201, r.status
    return (time.time() - started) * 1000

def one_run(binary, count):
    demo = subprocess.Popen([binary, "demo", "--exit-after", "60", "--http-port", "0", "--ws-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        base = None
        for line in demo.stdout:
            found = re.search(r"REST\s+(http://[0-9.:]+)/devices", line)
            if found:
                base = found.group(1)
                break
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        time.sleep(5)
        started = time.time()
        with ThreadPoolExecutor(count) as pool:
            latencies = sorted(pool.map(lambda i: post(base, f"sim-{i % 300:05d}"), range(count)))
        total = (time.time() - started) * 1000
        return {"commands": count, "total_ms": round(total),
                "p50_ms": round(latencies[len(latencies) // 2]), "max_ms": round(latencies[-1])}
    finally:
        demo.terminate()
        demo.wait()

for count in map(int, sys.argv[2:]):
    print(json.dumps(one_run(sys.argv[1], count)))
