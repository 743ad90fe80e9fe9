#!/usr/bin/env python3
"""An independent NAB scorer (standard library only), written from shared/nab/SCORING.md
separately from the Rust one in models/src/nab/scoring.rs, to check that the per-row CSVs
the `nab` harness writes reproduce the score it reports.

usage: scripts/nab_score.py NAB_DIR RESULTS_DIR   (prints one JSON object: profile -> score)
"""
import csv
import json
import math
import os
import sys

PROFILES = {
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}


def sigmoid_scaled(y):
    return -1.0 if y > 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def rows_of(results_dir, key):
    with open(os.path.join(results_dir, key)) as handle:
        return [(r["timestamp"], float(r["anomaly_score"])) for r in csv.DictReader(handle)]


def window_rows(timestamps, windows):
    spans = []
    for start, end in windows:
        first = timestamps.index(start[:19])
        spans.append((first, timestamps.index(end[:19], first)))
    return spans


def weighted_rows(n, spans, tp, fp):
    """(window index or None, weight) for every scored row."""
    probation = min(int(0.15 * n), 750)
    max_tp = sigmoid_scaled(-1.0)
    out, previous = [], None
    for i in range(n):
        inside = [k for k, (l, r) in enumerate(spans) if l <= i <= r]
        ended = [s for s in spans if s[1] < i]
        if ended:
            previous = ended[-1]
        if i < probation:
            continue
        if inside:
            l, r = spans[inside[0]]
            out.append((inside[0], tp * sigmoid_scaled(-(r - i + 1) / (r - l + 1)) / max_tp))
        elif previous is None:
            out.append((None, -fp))
        else:
            l, r = previous
            out.append((None, fp * sigmoid_scaled((i - r) / (r - l + 1 - 1))))
    return out


def main():
    nab_dir, results_dir = sys.argv[1], sys.argv[2]
    with open(os.path.join(nab_dir, "labels", "combined_windows.json")) as handle:
        labels = json.load(handle)
    files = []
    for key, windows in sorted(labels.items()):
        rows = rows_of(results_dir, key)
        timestamps = [t for t, _ in rows]
        files.append((rows, window_rows(timestamps, windows)))
    total_windows = sum(len(spans) for _, spans in files)
    report = {}
    for name, (tp, fp, fn) in PROFILES.items():
        pooled, offset = [], 0
        for rows, spans in files:
            weights = weighted_rows(len(rows), spans, tp, fp)
            scores = [s for _, s in rows][len(rows) - len(weights):]
            for (window, weight), score in zip(weights, scores):
                pooled.append((score, None if window is None else offset + window, weight))
            offset += len(spans)
        pooled.sort(key=lambda row: -row[0])
        best = [None] * total_windows
        raw = -fn * total_windows
        best_raw, i = raw, 0
        while i < len(pooled):
            level = pooled[i][0]
            while i < len(pooled) and pooled[i][0] == level:
                _, window, weight = pooled[i]
                if window is None:
                    raw += weight
                else:
                    old = -fn if best[window] is None else best[window]
                    best[window] = weight if best[window] is None else max(best[window], weight)
                    raw += best[window] - old
                i += 1
            best_raw = max(best_raw, raw)
        null = -fn * total_windows
        report[name] = 100.0 * (best_raw - null) / (tp * total_windows - null)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
