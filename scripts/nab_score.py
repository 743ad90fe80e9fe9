#!/usr/bin/env python3
"""An independent NAB scorer (standard library only), written from shared/nab/SCORING.md
separately from the Rust one in models/src/nab/scoring.rs, to check that the per-row CSVs
the `nab` harness writes reproduce the score it reports.

Detections are what the product alerts on: rows where the episode machine (written here
again from docs/models.md, not from the Rust code) opens or escalates an episode, with one
threshold per profile for all files, chosen from the grid 0.300, 0.305, ..., 1.000.

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


GRID = [0.3 + 0.005 * i for i in range(141)]
# Production episode rules, as fractions of the threshold (docs/models.md).
CLEAR_RATIO, CLEAR_AFTER, ESCALATE_RATIO, MAX_CAUSES = 0.5, 30, 1.2, 8


def rows_of(results_dir, key):
    with open(os.path.join(results_dir, key)) as handle:
        return [
            (r["timestamp"], float(r["anomaly_score"]), r["cause"]) for r in csv.DictReader(handle)
        ]


def episode_detections(rows, threshold):
    """Row indexes where an episode opens or escalates (a bigger score, or a metric not yet
    reported in the episode: the cause column is `metric:kind`)."""
    found, is_open, calm, reported, causes = [], False, 0, 0.0, []
    clear_below = CLEAR_RATIO * threshold
    for i, (_, score, label) in enumerate(rows):
        cause = label.rsplit(":", 1)[0]
        if not is_open:
            if score >= threshold:
                is_open, calm, reported = True, 0, score
                causes = [cause] if cause else []
                found.append(i)
        elif score < clear_below:
            calm += 1
            if calm >= CLEAR_AFTER:
                is_open = False
        else:
            calm = 0
            if score >= threshold:
                new_cause = bool(cause) and cause not in causes
                if new_cause and len(causes) < MAX_CAUSES:
                    causes.append(cause)
                if new_cause or score >= ESCALATE_RATIO * reported:
                    reported = max(reported, score)
                    found.append(i)
    return found


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
        timestamps = [t for t, _, _ in rows]
        # Only rows at or above the lowest threshold can open an episode, but calm rows
        # close them: keep every row, the machine is cheap.
        detections = {theta: set(episode_detections(rows, theta)) for theta in GRID}
        files.append((len(rows), window_rows(timestamps, windows), detections))
    total_windows = sum(len(spans) for _, spans, _ in files)
    report = {}
    for name, (tp, fp, fn) in PROFILES.items():
        weighted = [weighted_rows(n, spans, tp, fp) for n, spans, _ in files]
        best_raw = None
        for theta in GRID:
            raw = 0.0
            for (n, spans, detections), weights in zip(files, weighted):
                skipped = n - len(weights)
                best = [None] * len(spans)
                for i in detections[theta]:
                    if i < skipped:
                        continue
                    window, weight = weights[i - skipped]
                    if window is None:
                        raw += weight
                    else:
                        best[window] = weight if best[window] is None else max(best[window], weight)
                raw += sum(-fn if b is None else b for b in best)
            if best_raw is None or raw >= best_raw:
                best_raw = raw
        null = -fn * total_windows
        report[name] = 100.0 * (best_raw - null) / (tp * total_windows - null)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
