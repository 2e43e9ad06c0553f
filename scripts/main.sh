#!/usr/bin/env bash
# The "main" job: Release build with benchmarks and examples, run every
# example, run every benchmark in quick mode, then summarise the results.
# Examples and benchmarks that need PostgreSQL run against a throwaway server.
set -euo pipefail
cd "$(dirname "$0")/.."

# --full: longer runs (more repetitions) and the plots written into docs/img/
# for docs/benchmarks.md; the default quick mode plots into build/main/plots.
mode=quick
if [[ ${1:-} == --full ]]; then mode=full; fi

bash scripts/deps.sh

dir=build/main
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release \
  -DKEYPOOL_BUILD_TESTS=OFF -DKEYPOOL_BUILD_BENCH=ON -DKEYPOOL_BUILD_EXAMPLES=ON
cmake --build "$dir" -j2

shopt -s nullglob

# A throwaway PostgreSQL + PgBouncer for the examples and benchmarks that need
# a server (scripts/pg-fixture.sh); stopped on exit, also on failure.
pg_env="$PWD/$dir/pg-fixture.env"
trap 'bash scripts/pg-fixture.sh stop "$pg_env" >/dev/null 2>&1 || true' EXIT
bash scripts/pg-fixture.sh start "$pg_env"
with_pg() { bash scripts/pg-fixture.sh exec "$pg_env" -- "$@"; }

echo "== examples"
for exe in "$dir"/examples/*; do
  [[ -f "$exe" && -x "$exe" ]] || continue
  echo "-- $exe"
  with_pg "$exe"
done

# The HTTP service example under load: wrk against its loopback port for a few seconds, then its
# /metrics (the plain run above was its self-test).
if [[ -x "$dir/examples/tenant_service" ]]; then
  echo "-- tenant_service under wrk"
  with_pg "$dir/examples/tenant_service" --wrk 3
fi

echo "== benchmarks"
results="$dir/bench-results"
rm -rf "$results"
mkdir -p "$results"
for exe in "$dir"/bench/*_bench; do
  [[ -f "$exe" && -x "$exe" ]] || continue
  name=$(basename "$exe")
  echo "-- $name"
  if [[ $mode == full ]]; then
    timing=(--benchmark_min_time=0.5 --benchmark_repetitions=5)
  else
    timing=(--benchmark_min_time=0.05 --benchmark_repetitions=3)
  fi
  with_pg "$exe" "${timing[@]}" \
    --benchmark_report_aggregates_only=true \
    --benchmark_out="$results/$name.json" --benchmark_out_format=json
done

jsons=("$results"/*.json)
if [[ -f bench/summarize.py && ${#jsons[@]} -gt 0 ]]; then
  python3 bench/summarize.py "${jsons[@]}"
fi

if ((${#jsons[@]} > 0)); then
  plots="$dir/plots"
  if [[ $mode == full ]]; then plots=docs/img; fi
  python3 bench/plot.py "$plots" "${jsons[@]}"
fi

# W3 round by round: each round times the bare keyed baseline and then the registry, back to back,
# on 1 and on 2 threads (bench/profile/w3_cycles.cpp); the median ratio follows the machine's load,
# which moves registry_bench's separately timed rows by 2x on this kind of machine.
if [[ -x "$dir/bench/w3_cycles" ]]; then
  echo "== W3 round by round (w3_cycles: registry / baseline time on 1 thread, throughput on 2)"
  cycles=300000
  if [[ $mode == full ]]; then cycles=2000000; fi
  for keys in 1000 10000 30000 100000; do
    "$dir/bench/w3_cycles" "$keys" "$cycles" 7
    "$dir/bench/w3_cycles" "$keys" "$cycles" 7 2
  done | tee "$results/w3-rounds.txt"
  # The same on 1 thread with random 64-bit keys: the baseline's std::unordered_map is at its
  # best on consecutive ids (its identity hash puts them in consecutive buckets, their nodes
  # allocated in key order), which the rows above use.
  echo "== W3 round by round, 1 thread, random 64-bit keys (W3_RANDOM_KEYS=1)"
  for keys in 1000 10000 100000; do
    W3_RANDOM_KEYS=1 "$dir/bench/w3_cycles" "$keys" "$cycles" 7
  done | tee "$results/w3-rounds-random.txt"
fi

# How much cache this machine gives a process, counted in 128-byte line pairs: where W3's
# ratio turns with the key count (docs/benchmarks.md, "Session 30": about 8 MiB of 128-byte line
# pairs on the machine of that session, which 100,000 keys' hot lines in 576-byte blocks exceed).
if [[ -x "$dir/bench/span_chase" ]]; then
  echo "== the cache this machine gives (span_chase: ns per dependent load)"
  "$dir/bench/span_chase" | tee "$results/span-chase.txt"
fi

# --full, with valgrind installed: W3's instructions and cache misses per cycle (deterministic).
if [[ $mode == full ]] && command -v valgrind >/dev/null; then
  echo "== W3 under callgrind's cache simulator (scripts/cache-profile.sh)"
  bash scripts/cache-profile.sh "$dir" | tee "$results/cache-profile.txt"
fi
