#!/usr/bin/env python3
"""How the on-device deletion check (no Retrain) agrees with the Average Gap
(with a Retrain), summed over experiment reports: issue 14's item 8.

    docs/experiments/agreement.py REPORT_DIR...

A run or tuning trial has a "low" gap when it closed at least half of the
original's distance to Retrain (AG at most half the original's AG, the
original's AG taken per request in a sequence of requests), as in each
report's own table (`tools/src/report.rs`, `check_table`). Prints one line
per report and the totals by scenario (random or class-wise forgetting).
"""
import json
import sys


def avg_gap(a, b):
    return sum(abs(a[k] - b[k]) for k in ("fa", "ra", "ta", "mia")) / 4


def items(d):
    """(avg_gap, bar, check) of every run and trial that recorded a check."""
    if d.get("requests"):
        bars = {q["request"]: avg_gap(q["original"], q["retrain"]) / 2 for q in d["requests"]}
        for r in d["runs"]:
            if r.get("check"):
                yield r["avg_gap"], bars[r["request"]], r["check"]
        return
    if not d.get("original") or not d.get("retrain"):
        return
    bar = avg_gap(d["original"], d["retrain"]) / 2
    for r in d["runs"] + d.get("tuning", []):
        if r.get("check"):
            yield r["avg_gap"], bar, r["check"]


def main(dirs):
    totals = {}
    for p in dirs:
        d = json.load(open(f"{p}/results.json"))
        cells = {}
        for g, bar, c in items(d):
            key = (c["scenario"], g <= bar, c["passed"])
            cells[key] = cells.get(key, 0) + 1
            totals[key] = totals.get(key, 0) + 1
        line = ", ".join(
            f"{s} {'low' if low else 'high'} gap {'pass' if ok else 'fail'} {n}"
            for (s, low, ok), n in sorted(cells.items())
        )
        print(f"{p}: {line or 'no checks recorded'}")
    print()
    print("| scenario | gap | check passed | check failed |")
    print("|---|---|---|---|")
    for s in sorted({k[0] for k in totals}):
        for low in (True, False):
            print(
                f"| {s} | {'low' if low else 'high'} | {totals.get((s, low, True), 0)} "
                f"| {totals.get((s, low, False), 0)} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
