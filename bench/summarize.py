#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Turn Google Benchmark JSON output into candidate/baseline ratios (Markdown).

Usage: summarize.py [--markdown-out FILE] [--w1-time {cpu,real}] RESULT.json [RESULT.json ...]

For every benchmark named BM_<component>_<scenario>/<impl>[/real_time][/threads:N] the baseline is
the `mutex_vector` impl of the same scenario and thread count *in the same file* (same process, so
the pair saw the same machine state). Medians are taken from the `median` aggregates
(--benchmark_repetitions=N); a file without aggregates falls back to the median of its runs.

- Uncontended (W1, one thread): time ratio, lower is better. CPU time by default (a single
  thread's CPU time does not count the time other processes on the machine take from it);
  --w1-time real uses wall time.
- Contended (W2, N threads): throughput ratio from items_per_second, higher is better. Google
  Benchmark divides all threads' items by the *mean* of the threads' finish times; the benchmark
  also reports cycles_per_s (all cycles / the whole run's wall time), shown as its own column.
- Against a server (BM_pg_*, bench/pg/pg_bench.cpp): throughput ratio from items_per_second at every
  thread count, 1 included (a cycle mostly waits on the server, which CPU time does not count);
  the baseline is `baseline_mutex_vector`. A separate table shows their counters: server round trips
  per cycle by design, each row against the bare pool on the same path (`floor` = 1 marks those,
  `pgbouncer` = 1 the rows through PgBouncer), and what the pool did during the timed run. A third
  table puts the pools against the two references without a pool, `dedicated` (a connection per
  thread) and `connect_per_query`, at each thread count (items/s ratios).

Targets (from the issue) are printed next to their rows. Only ratios are printed for times;
absolute wait figures are printed in a separate table as this machine's diagnostics.
"""

import argparse
import json
import math
import re
import statistics
import sys

BASELINE = "mutex_vector"
# Every impl named here is the baseline of its scenario: the bare pool (W1, W2) or the bare keyed
# pool, std::mutex + std::unordered_map (W3, BM_registry_keyed_<keys>), or the bare pool of PGconn*
# (BM_pg_*).
BASELINES = (BASELINE, "mutex_map", "baseline_mutex_vector")
# Scenarios whose cycle waits on a server: throughput (items/s) ratios at every thread count.
THROUGHPUT_SCENARIO_PREFIXES = ("BM_pg_",)
# (scenario, impl, threads or None for any) -> (comparison, bound, description)
TARGETS = {
    ("BM_pool_uncontended", "keypool", 1): ("<=", 0.6, "time <= 0.6x baseline"),
    ("BM_pool_contended", "keypool", 32): (">=", 8.0, "throughput >= 8x baseline"),
}
for _keys in (1000, 10000, 100000, 1000000):
    TARGETS[(f"BM_registry_keyed_{_keys}", "keypool", 1)] = ("<=", 1.1, "time <= 1.1x baseline")
    TARGETS[(f"BM_registry_keyed_{_keys}", "keypool", 2)] = (">=", 4.0, "throughput >= 4x baseline")
NAME_MODIFIERS = re.compile(r"^(real_time|manual_time|process_time|threads:\d+|min_time:.*|"
                            r"min_warmup_time:.*|repeats:\d+|iterations:\d+)$")
TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
WAIT_COUNTERS = ["waited_pct", "wait_p50_us", "wait_p99_us", "wait_max_us", "wait_mean_us"]
# Counters of the server benchmarks (BM_pg_*), shown per row when present.
SERVER_COUNTERS = ["round_trips", "resets_per_cycle", "connects", "waits"]
# Server benchmarks: the references without a pool, and the pools compared against them.
NO_POOL_REFERENCES = ("dedicated", "connect_per_query")
POOLS_VS_REFERENCES = ("baseline_mutex_vector", "keypool_no_reset", "keypool_discard_all_pipelined", "keypool_discard_all_checkout")


def split_name(run_name):
    """'BM_pool_contended/keypool/real_time/threads:8' -> ('BM_pool_contended', 'keypool')."""
    parts = [p for p in run_name.split("/") if not NAME_MODIFIERS.match(p)]
    return parts[0], "/".join(parts[1:]) or "(default)"


def median_rows(benchmarks):
    """One row per run_name: the 'median' aggregate, or the median of the individual runs."""
    aggregates = {}
    runs = {}
    for b in benchmarks:
        run_name = b.get("run_name", b["name"])
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                aggregates[run_name] = b
        else:
            runs.setdefault(run_name, []).append(b)
    rows = {}
    for run_name in list(dict.fromkeys(list(aggregates) + list(runs))):
        if run_name in aggregates:
            rows[run_name] = dict(aggregates[run_name])
            continue
        group = runs[run_name]
        errors = [b for b in group if b.get("error_occurred")]
        if errors:
            rows[run_name] = dict(errors[0])
            continue
        row = dict(group[0])
        for key, value in group[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in (
                    "threads", "repetitions", "repetition_index", "family_index",
                    "per_family_instance_index"):
                row[key] = statistics.median(b[key] for b in group if key in b)
        rows[run_name] = row
    # Errors reported in any repetition make the pair unusable: keep the error visible.
    for b in benchmarks:
        if b.get("error_occurred"):
            rows[b.get("run_name", b["name"])] = dict(b)
    return rows


def seconds(row, which):
    return row[which] * TIME_UNITS[row.get("time_unit", "ns")]


def fmt_ratio(x):
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "n/a"
    return f"{x:.3g}x" if x < 0.01 else f"{x:.2f}x"


def fmt_num(x):
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def verdict(target, ratio):
    if target is None:
        return "", ""
    op, bound, text = target
    if ratio is None:
        return text, "no data"
    met = ratio <= bound if op == "<=" else ratio >= bound
    return text, "met" if met else "**not met**"


def summarize(path, w1_time):
    with open(path) as f:
        data = json.load(f)
    rows = median_rows(data.get("benchmarks", []))
    ctx = data.get("context", {})
    load = ctx.get("load_avg")
    head = (f"`{path}`: {ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz, "
            f"{ctx.get('date', '?')}"
            + (f", load average at start {', '.join(f'{x:.2f}' for x in load)}" if load else "")
            + (f", {ctx['library_build_type']} build of Google Benchmark"
               if "library_build_type" in ctx else ""))
    table = []
    waits = []
    memory = []
    server = []
    baselines = {}
    by_impl = {}  # (scenario, impl, threads) -> row, for the pools-vs-references table
    for run_name, row in rows.items():
        scenario, impl = split_name(run_name)
        by_impl[(scenario, impl, row.get("threads", 1))] = row
        if impl in BASELINES:
            baselines[(scenario, row.get("threads", 1))] = row
    for run_name, row in rows.items():
        scenario, impl = split_name(run_name)
        threads = row.get("threads", 1)
        if any(k in row for k in WAIT_COUNTERS):
            waits.append((scenario, impl, threads, row))
        if "round_trips" in row:
            server.append((scenario, impl, threads, row))
        if "_memory" in scenario:  # counters only (bytes), no time ratio
            memory.append((scenario, impl, {k: v for k, v in row.items() if "bytes" in k}))
            continue
        if impl in BASELINES:
            continue
        base = baselines.get((scenario, threads))
        target = TARGETS.get((scenario, impl, threads))
        contended = (threads > 1 or ("contended" in scenario and "uncontended" not in scenario)
                     or scenario.startswith(THROUGHPUT_SCENARIO_PREFIXES))
        if row.get("error_occurred") or base is None or base.get("error_occurred"):
            why = row.get("error_message") or (base or {}).get("error_message") or "no baseline"
            table.append((scenario, threads, impl, "-", f"error: {why}", "-", *verdict(target, None)))
            continue
        if contended and "items_per_second" in row and "items_per_second" in base:
            ratio = row["items_per_second"] / base["items_per_second"]
            measure = "items/s (higher is better)"
            if "cycles_per_s" in row and base.get("cycles_per_s"):
                makespan = fmt_ratio(row["cycles_per_s"] / base["cycles_per_s"])
            else:
                makespan = "-"
        else:
            which = "cpu_time" if (w1_time == "cpu" and not contended) else "real_time"
            ratio = seconds(row, which) / seconds(base, which)
            measure = f"{which.replace('_time', '')} time (lower is better)"
            makespan = "-"
        table.append((scenario, threads, impl, measure, fmt_ratio(ratio), makespan, *verdict(target, ratio)))

    out = [head, ""]
    out.append("| Scenario | Threads | Candidate | Measure | Candidate ÷ baseline (median) "
               "| Makespan cycles/s ÷ baseline | Target | Target met? |")
    out.append("|---|---:|---|---|---:|---:|---|---|")
    for r in table:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    for scenario, impl, counters in memory:
        out += ["", f"Memory ({scenario}/{impl}): " +
                ", ".join(f"{k} = {fmt_num(v)}" for k, v in sorted(counters.items()))]
    if server:
        # The bare pool on the same path (direct or through PgBouncer) at the same thread count.
        floors = {(scenario, threads, row.get("pgbouncer", 0)): row
                  for scenario, impl, threads, row in server if row.get("floor")}
        out += ["", "Server benchmarks, against the bare pool on the same path (direct, or through PgBouncer): "
                "server round trips per cycle by design, the throughput ratio if each cost the same, the "
                "measured items/s ratio, and what the pool did during the timed run (connector resets per "
                "cycle, whether or not they needed a round trip; connects should be 0, waits too while "
                "threads <= the pool's max_size):", "",
                "| Scenario | Threads | Impl | Path | Round trips per cycle | Bound ÷ floor | Measured ÷ floor "
                "| Resets per cycle | Connects | Waits |",
                "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        for scenario, impl, threads, row in server:
            floor = floors.get((scenario, threads, row.get("pgbouncer", 0)))
            bound = measured = "-"
            if floor is not None and floor is not row and not row.get("error_occurred"):
                if floor.get("round_trips") and row.get("round_trips"):
                    bound = fmt_ratio(floor["round_trips"] / row["round_trips"])
                if floor.get("items_per_second") and "items_per_second" in row:
                    measured = fmt_ratio(row["items_per_second"] / floor["items_per_second"])
            path = "PgBouncer" if row.get("pgbouncer") else "direct"
            vals = [fmt_num(row.get(k)) for k in SERVER_COUNTERS]
            out.append(f"| {scenario} | {threads} | {impl}{' (floor)' if row.get('floor') else ''} | {path} "
                       f"| {vals[0]} | {bound} | {measured} | " + " | ".join(vals[1:]) + " |")
    refs = sorted({(scenario, threads) for scenario, impl, threads in by_impl if impl in NO_POOL_REFERENCES})
    if refs:
        out += ["", "Pools against no pool (items/s ratios, higher is better): `dedicated` is a connection per "
                "thread (no sharing, the limit), `connect_per_query` connects and closes per cycle "
                "(- where a side was not run or failed):", "",
                "| Scenario | Threads | Impl | ÷ dedicated | ÷ connect_per_query |",
                "|---|---:|---|---:|---:|"]
        for scenario, threads in refs:
            for impl in POOLS_VS_REFERENCES:
                row = by_impl.get((scenario, impl, threads))
                if row is None:
                    continue
                cells = []
                for ref_impl in NO_POOL_REFERENCES:
                    ref = by_impl.get((scenario, ref_impl, threads))
                    ok = (ref is not None and not ref.get("error_occurred") and not row.get("error_occurred")
                          and ref.get("items_per_second") and "items_per_second" in row)
                    cells.append(fmt_ratio(row["items_per_second"] / ref["items_per_second"]) if ok else "-")
                out.append(f"| {scenario} | {threads} | {impl} | " + " | ".join(cells) + " |")
    if waits:
        out += ["", "Waits of acquires that found no idle connection (absolute, this machine and run only; "
                "diagnostics, not claims):", "",
                "| Scenario | Threads | Impl | % of acquires that waited | p50 µs | p99 µs | max µs "
                "| mean µs (pool stats) |",
                "|---|---:|---|---:|---:|---:|---:|---:|"]
        for scenario, impl, threads, row in waits:
            vals = [fmt_num(row.get(k)) for k in WAIT_COUNTERS]
            out.append(f"| {scenario} | {threads} | {impl} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", metavar="RESULT.json")
    ap.add_argument("--markdown-out", metavar="FILE", help="also write the Markdown to FILE")
    ap.add_argument("--w1-time", choices=["cpu", "real"], default="cpu",
                    help="time used for single-thread ratios (default: cpu)")
    args = ap.parse_args(argv)
    parts = ["Ratios are candidate ÷ baseline (`mutex_vector`, or `mutex_map` for the keyed W3, or "
             "`baseline_mutex_vector` for the PostgreSQL BM_pg_*), medians, paired within each file."]
    failed = False
    for path in args.files:
        try:
            parts.append(summarize(path, args.w1_time))
        except (OSError, ValueError, KeyError) as e:  # unreadable, truncated or not benchmark output
            failed = True
            parts.append(f"`{path}`: cannot summarize ({type(e).__name__}: {e}); "
                         "was the benchmark run interrupted?")
    text = "\n\n".join(parts) + "\n"
    sys.stdout.write(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
