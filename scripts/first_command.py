#!/usr/bin/env python3
"""First command after start (issue 14): starts `fleetwatch demo` on free ports, waits for
/readyz, then POSTs 50 commands to simulated devices, 100 ms apart, and prints the first
one's latency next to the p50/p99 of the others. Usage: scripts/first_command.py FLEETWATCH_BIN [RUNS]"""
import json, re, subprocess, sys, time, urllib.request, urllib.error

def post(base, device):
    body = json.dumps({"name": "reboot", "args": {"simulate": "ok"}}).encode()
    req = urllib.request.Request(f"{base}/devices/{device}/commands", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    started = time.time()
    with urllib.request.urlopen(req, timeout=15) as r:
        assert r.status == 201, r.status
    return (time.time() - started) * 1000

def one_run(binary):
    demo = subprocess.Popen([binary, "demo", "--exit-after", "60", "--http-port", "0", "--ws-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        base = None
        for line in demo.stdout:
            found = re.search(r"REST\s+(http://[0-9.:]+)/devices", line)
            if found:
                base = found.group(1)
                break
        started = time.time()
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        ready_ms = (time.time() - started) * 1000
        latencies = []
        for i in range(50):
            latencies.append(post(base, f"sim-{(i * 7) % 300:05d}"))
            time.sleep(0.1)
        return ready_ms, latencies
    finally:
        demo.terminate()
        demo.wait()

runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
for _ in range(runs):
    ready_ms, latencies = one_run(sys.argv[1])
    rest = sorted(latencies[1:])
    q = lambda p: rest[int(p * (len(rest) - 1))]
    print(json.dumps({"ready_after_ms": round(ready_ms), "first_ms": round(latencies[0], 1),
                      "first_three_ms": [round(x, 1) for x in latencies[:3]],
                      "others_p50_ms": round(q(0.5), 1), "others_p99_ms": round(q(0.99), 1)}))
