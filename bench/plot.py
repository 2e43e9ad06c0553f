#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Plot benchmark ratios (PNG, with gnuplot) from Google Benchmark JSON.

Usage: plot.py OUT_DIR RESULT.json [RESULT.json ...]

Writes, for whatever the JSON files contain:
  w2_throughput.png  BM_pool_contended: keypool's throughput / mutex_vector's, by thread count
  w3_keyed.png       BM_registry_keyed_<keys>: keypool's time (1 thread) / mutex_map's, by key count
  pg_select1.png     BM_pg_select1: each variant's throughput / the bare pool's, at 1 and 4 threads
Every point is a ratio of medians taken in one process (see summarize.py for the pairing rules);
no absolute time is plotted. Needs `gnuplot` (Debian: gnuplot-nox).
"""

import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import median_rows, seconds  # noqa: E402

THREADS = re.compile(r"/threads:(\d+)")


def load(paths):
    rows = {}
    for path in paths:
        with open(path) as f:
            rows.update(median_rows(json.load(f).get("benchmarks", [])))
    return rows


def threads_of(run_name):
    m = THREADS.search(run_name)
    return int(m.group(1)) if m else 1


def pick(rows, prefix, impl):
    """{threads: row} for runs named prefix/impl[/...]."""
    out = {}
    for name, row in rows.items():
        parts = name.split("/")
        if parts[0] == prefix and len(parts) > 1 and parts[1] == impl and not row.get("error_occurred"):
            out[threads_of(name)] = row
    return out


def gnuplot(script, out_png):
    subprocess.run(["gnuplot"], input=f"set terminal pngcairo size 800,480 noenhanced\nset output '{out_png}'\n{script}",
                   text=True, check=True)


def line_plot(title, xlabel, log_base, pts, out_png):
    """keypool's ratio against x (log scale), beside the baseline's line at 1."""
    data = "\n".join(f"{x} {r:.4f}" for x, r in pts)
    gnuplot(f"""set title '{title}'
set xlabel '{xlabel}'; set ylabel 'ratio'; set logscale x {log_base}; set yrange [0:*]; set grid
plot '-' using 1:2 with linespoints lw 2 title 'keypool', 1 with lines dt 2 title 'baseline'
{data}
e
""", out_png)


def w2(rows, out_dir):
    kp, base = pick(rows, "BM_pool_contended", "keypool"), pick(rows, "BM_pool_contended", "mutex_vector")
    pts = [(t, kp[t]["items_per_second"] / base[t]["items_per_second"]) for t in sorted(kp) if t in base]
    if not pts:
        return None
    line_plot("W2: throughput of keypool / bare mutex+vector pool (higher is better)", "threads", 2, pts,
              os.path.join(out_dir, "w2_throughput.png"))
    return "w2_throughput.png"


def w3(rows, out_dir):
    pts = []
    for name in rows:
        m = re.match(r"BM_registry_keyed_(\d+)$", name.split("/")[0])
        if not m:
            continue
        keys = int(m.group(1))
        kp = pick(rows, name.split("/")[0], "keypool").get(1)
        base = pick(rows, name.split("/")[0], "mutex_map").get(1)
        if kp and base:
            pts.append((keys, seconds(kp, "cpu_time") / seconds(base, "cpu_time")))
    pts = sorted(set(pts))
    if not pts:
        return None
    line_plot("W3: time per cycle of the registry / bare mutex+unordered_map (1 thread, lower is better)",
              "live keys", 10, pts, os.path.join(out_dir, "w3_keyed.png"))
    return "w3_keyed.png"


def pg(rows, out_dir):
    base = pick(rows, "BM_pg_select1", "baseline_mutex_vector")
    if not base:
        return None
    impls = []
    for name in rows:
        parts = name.split("/")
        if parts[0] == "BM_pg_select1" and len(parts) > 1 and parts[1] not in impls:
            impls.append(parts[1])
    lines = []
    for impl in impls:
        got = pick(rows, "BM_pg_select1", impl)
        r1 = got[1]["items_per_second"] / base[1]["items_per_second"] if 1 in got and 1 in base else float("nan")
        r4 = got[4]["items_per_second"] / base[4]["items_per_second"] if 4 in got and 4 in base else float("nan")
        lines.append(f'"{impl}" {r1:.4f} {r4:.4f}')
    data = "\n".join(lines)
    gnuplot(f"""set title 'SELECT 1 on PostgreSQL: throughput / bare pool without reset (higher is better)'
set style data histograms; set style histogram clustered gap 1; set style fill solid 0.8
set ylabel 'ratio'; set yrange [0:*]; set grid ytics; set xtics rotate by -30 font ',9'
plot '-' using 2:xtic(1) title '1 thread', '-' using 3 title '4 threads'
{data}
e
{data}
e
""", os.path.join(out_dir, "pg_select1.png"))
    return "pg_select1.png"


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rows = load(argv[2:])
    made = [p for p in (w2(rows, out_dir), w3(rows, out_dir), pg(rows, out_dir)) if p]
    for p in made:
        print(f"plot: {os.path.join(out_dir, p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
