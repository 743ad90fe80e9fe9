#!/usr/bin/env python3
"""Command round trips against a running fleetwatch (the demo): 50 commands to simulated
devices, each POSTed and then polled until it succeeded. Usage: scripts/command_latency.py http://127.0.0.1:8080/
Prints POST latency (a Kafka round trip to the owning instance and back) and POST → succeeded
(through MQTT to the device, its acknowledgements back through ingest and Kafka)."""
import json, sys, time, urllib.request, urllib.error, statistics
base = sys.argv[1].rstrip("/")
def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
post, done = [], []
for i in range(50):
    dev = f"sim-{(i*17)%1000:05d}"
    t0 = time.time()
    s, c = call("POST", f"/devices/{dev}/commands", {"name": "reboot", "args": {"simulate": "ok"}})
    t1 = time.time()
    assert s == 201, (s, c)
    while True:
        s, c2 = call("GET", f"/devices/{dev}/commands/{c['command_id']}")
        if c2.get("state") == "succeeded":
            break
        time.sleep(0.01)
    t2 = time.time()
    post.append((t1 - t0) * 1000); done.append((t2 - t0) * 1000)
q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))]
print(json.dumps({"commands": 50, "post_ms_p50": round(q(post, .5)), "post_ms_p99": round(q(post, .99)),
                  "succeeded_ms_p50": round(q(done, .5)), "succeeded_ms_p99": round(q(done, .99))}))
