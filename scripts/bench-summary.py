#!/usr/bin/env python3
"""The results table of scripts/bench and scripts/bench-wsgi (standard library only), and
the same as JSON in OUT/results.json, to compare one run with the last.

    bench-summary.py OUT ROUNDS SLUG... -- NUM/DEN... p99:NUM/DEN...

Reads OUT/SLUG-rN.txt (a `# name` line, then wrk's --latency output) for N in 1..ROUNDS and
prints, per workload, the median Requests/sec over rounds, the min-max spread, the median
transfer rate (wrk's MB = 2^20 bytes), the median 99th-percentile latency, the busiest
process's share of the connections over rounds (min - max; from a `# connections per
process: 26/24` line scripts/bench appends, when the server runs more than one), then each ratio
NUM/DEN of median req/s, each p99:NUM/DEN of median p99, and a warning per run with errors or
without a result.
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
    split = re.search(r"^# connections per process: ([0-9/]+)\s*$", text, re.M)
    return (name, float(rps.group(1)) if rps else None,
            float(p99.group(1)) * UNIT_MS[p99.group(2)] if p99 else None, errors,
            float(mbs.group(1)) * UNIT_MB[mbs.group(2)] if mbs else None,
            [int(n) for n in split.group(1).split("/")] if split else None)

def busiest(split):
    """The busiest process's share of the connections, in percent (None: no sample; one
    count is one process holding them all, 100 %)."""
    if not split or sum(split) == 0:
        return None
    return 100.0 * max(split) / sum(split)

rows, medians, p99s, names, problems = [], {}, {}, {}, []
for slug in slugs:
    runs = [parse(out / f"{slug}-r{r}.txt") for r in range(1, rounds + 1)]
    name = runs[0][0]
    rps = [r[1] for r in runs if r[1] is not None]
    p99 = [r[2] for r in runs if r[2] is not None]
    mbs = [r[4] for r in runs if r[4] is not None]
    shares = [busiest(r[5]) for r in runs if busiest(r[5]) is not None]
    for r, run in enumerate(runs, 1):
        if run[1] is None:
            problems.append(f"{name} round {r}: no Requests/sec line")
        problems += [f"{name} round {r}: {e}" for e in run[3]]
    med = statistics.median(rps) if rps else None
    p99s[slug] = statistics.median(p99) if p99 else None
    medians[slug], names[slug] = med, name
    rows.append((name,
                 f"{med:,.0f}" if med else "-",
                 f"{min(rps):,.0f} - {max(rps):,.0f}" if rps else "-",
                 f"{statistics.median(mbs):,.1f}" if mbs else "-",
                 f"{statistics.median(p99):.2f} ms" if p99 else "-",
                 f"{min(shares):.0f} - {max(shares):.0f} %" if shares else "-"))

head = ("workload", "median req/s", "min - max req/s", "median MB/s", "median p99", "busiest process")
widths = [max(len(r[c]) for r in rows + [head]) for c in range(len(head))]
fmt = "  ".join(f"{{:{'<' if c == 0 else '>'}{w}}}" for c, w in enumerate(widths))
print(fmt.format(*head))
for r in rows:
    print(fmt.format(*r))
def ratio(pair):
    """NUM/DEN of median req/s, or `p99:NUM/DEN` of median p99; None without both."""
    table = p99s if pair.startswith("p99:") else medians
    num, den = pair.removeprefix("p99:").split("/")
    a, b = table.get(num), table.get(den)
    return (a / b if a and b else None), num, den

for title, tail in (("ratios (median req/s over median req/s):", False),
                    ("p99 ratios (median p99 over median p99; below 1, portico's tail is shorter):", True)):
    lines = []
    for pair in ratios:
        if pair.startswith("p99:") != tail:
            continue
        value, num, den = ratio(pair)
        if value is not None:
            lines.append((f"{names[num]} / {names[den]}", f"{value:.2f}"))
    if lines:
        print("\n" + title)
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
                   "runs": [dict(zip(("rps", "p99_ms", "errors", "mb_s", "connections_per_process"), parse(out / f"{slug}-r{r}.txt")[1:]))
                            for r in range(1, rounds + 1)]}
            for slug in slugs
        },
        "ratios": {pair: ratio(pair)[0] for pair in ratios},
        "problems": problems,
    },
    (out / "results.json").open("w"),
    indent=1,
)
