#!/usr/bin/env python3
"""The results table of scripts/bench and scripts/bench-wsgi (standard library only), and
the same as JSON in OUT/results.json, to compare one run with the last.

    bench-summary.py OUT ROUNDS SLUG... -- NUM/DEN...

Reads OUT/SLUG-rN.txt (a `# name` line, then wrk's --latency output) for N in 1..ROUNDS and
prints, per workload, the median Requests/sec over rounds, the min-max spread, the median
transfer rate (wrk's MB = 2^20 bytes), the median 99th-percentile latency, then each ratio
NUM/DEN of median req/s, and a warning per run with errors or without a result.
"""
import re, statistics, sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
sep = sys.argv.index("--")
slugs, ratios = sys.argv[3:sep], sys.argv[sep + 1:]
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
# wrk prints Transfer/sec in binary units (1 KB = 1024 B); MB here is wrk's MB, 2^20 bytes.
UNIT_MB = {"B": 1 / 1024**2, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0, "TB": 1024.0**2}

def parse(path):
    text = path.read_text(errors="replace")
    name = text.splitlines()[0].removeprefix("# ").strip()
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    mbs = re.search(r"^Transfer/sec:\s+([0-9.]+)([KMGT]?B)\s*$", text, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m)\s*$", text, re.M)
    errors = []
    for pattern in (r"^\s*Non-2xx or 3xx responses: \d+", r"^\s*Socket errors:.*"):
        m = re.search(pattern, text, re.M)
        if m:
            errors.append(m.group(0).strip())
    return (name, float(rps.group(1)) if rps else None,
            float(p99.group(1)) * UNIT_MS[p99.group(2)] if p99 else None, errors,
            float(mbs.group(1)) * UNIT_MB[mbs.group(2)] if mbs else None)

rows, medians, names, problems = [], {}, {}, []
for slug in slugs:
    runs = [parse(out / f"{slug}-r{r}.txt") for r in range(1, rounds + 1)]
    name = runs[0][0]
    rps = [r[1] for r in runs if r[1] is not None]
    p99 = [r[2] for r in runs if r[2] is not None]
    mbs = [r[4] for r in runs if r[4] is not None]
    for r, run in enumerate(runs, 1):
        if run[1] is None:
            problems.append(f"{name} round {r}: no Requests/sec line")
        problems += [f"{name} round {r}: {e}" for e in run[3]]
    med = statistics.median(rps) if rps else None
    medians[slug], names[slug] = med, name
    rows.append((name,
                 f"{med:,.0f}" if med else "-",
                 f"{min(rps):,.0f} - {max(rps):,.0f}" if rps else "-",
                 f"{statistics.median(mbs):,.1f}" if mbs else "-",
                 f"{statistics.median(p99):.2f} ms" if p99 else "-"))

head = ("workload", "median req/s", "min - max req/s", "median MB/s", "median p99")
widths = [max(len(r[c]) for r in rows + [head]) for c in range(len(head))]
fmt = "  ".join(f"{{:{'<' if c == 0 else '>'}{w}}}" for c, w in enumerate(widths))
print(fmt.format(*head))
for r in rows:
    print(fmt.format(*r))
lines = []
for pair in ratios:
    num, den = pair.split("/")
    a, b = medians.get(num), medians.get(den)
    if a and b:
        lines.append((f"{names[num]} / {names[den]}", f"{a / b:.2f}"))
if lines:
    print("\nratios (median req/s over median req/s):")
    width = max(len(l[0]) for l in lines)
    for label, value in lines:
        print(f"  {label:<{width}}  {value}")
for p in problems:
    print(f"warning: {p}")

import json

json.dump(
    {
        "workloads": {
            slug: {"name": names[slug], "median_rps": medians[slug],
                   "runs": [dict(zip(("rps", "p99_ms", "errors", "mb_s"), parse(out / f"{slug}-r{r}.txt")[1:]))
                            for r in range(1, rounds + 1)]}
            for slug in slugs
        },
        "ratios": {pair: (medians[pair.split("/")[0]] / medians[pair.split("/")[1]]
                          if medians.get(pair.split("/")[0]) and medians.get(pair.split("/")[1]) else None)
                   for pair in ratios},
        "problems": problems,
    },
    (out / "results.json").open("w"),
    indent=1,
)
