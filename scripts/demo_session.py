"""What scripts/first_command.py and scripts/command_burst.py share: a `fleetwatch demo` on
free ports, ready, and a timed command POST to one of its simulated devices."""
import contextlib, json, re, subprocess, time, urllib.request, urllib.error

@contextlib.contextmanager
def ready_demo(binary, then_until_line=None):
    """Start the demo, wait for /readyz (and then, if given, for a line of its output
    containing `then_until_line`); yields (REST base URL, ms from the printed address to
    ready, the demo's pid). The demo is stopped on leaving."""
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
        if then_until_line:
            for line in demo.stdout:
                if then_until_line in line:
                    break
        yield base, ready_ms, demo.pid
    finally:
        demo.terminate()
        demo.wait()

def post_command(base, device, timeout=15):
    """POST a reboot command to `device`; its answer's latency in ms (201 asserted)."""
    body = json.dumps({"name": "reboot", "args": {"simulate": "ok"}}).encode()
    req = urllib.request.Request(f"{base}/devices/{device}/commands", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    started = time.time()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 201, r.status
    return (time.time() - started) * 1000
