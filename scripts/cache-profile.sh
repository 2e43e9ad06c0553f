#!/usr/bin/env bash
# W3's cost per acquire + release in instructions and cache misses, from callgrind's cache
# simulator: figures that do not move with the machine's load, to explain the timed ratios of
# bench/registry_bench (docs/benchmarks.md, "Why W3 costs what it costs").
#
#   scripts/cache-profile.sh [build-dir]      (default build/main; needs valgrind)
#
# Simulated caches: L1d 48 KiB 12-way and a 1 MiB 16-way last level, the size of this machine's
# L2 (callgrind models two levels). "LL misses" are lines fetched from beyond that 1 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/main}
if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
  echo "cache-profile: valgrind is not installed (apt-get install valgrind)" >&2
  exit 1
fi
cmake --build "$dir" --target w3_cycles -j2 >/dev/null
bin="$dir/bench/w3_cycles"
cycles=200000
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-8s %-9s %8s %8s %8s %8s\n' keys impl instr D1miss LLmiss 'LL/base'
for keys in 1000 10000 100000; do
  valgrind --tool=callgrind --cache-sim=yes --D1=49152,12,64 --LL=1048576,16,64 \
    --callgrind-out-file="$tmp/out" "$bin" "$keys" "$cycles" >/dev/null 2>&1
  callgrind_annotate --inclusive=yes --show-percs=no "$tmp/out" 2>/dev/null |
    awk -v keys="$keys" -v n="$cycles" '
      /run_(baseline|keypool)\(/ && /\[/ && !/=>/ {
        impl = ($0 ~ /run_keypool/) ? "keypool" : "baseline"
        if (impl in seen) next
        seen[impl] = 1
        for (i = 1; i <= NF; ++i) gsub(",", "", $i)
        # columns (--show-percs=no): Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
        ir[impl] = $1 / n; d1[impl] = ($5 + $6) / n; ll[impl] = ($8 + $9) / n
      }
      END {
        for (k = 0; k < 2; ++k) {
          impl = k ? "keypool" : "baseline"
          printf "%-8s %-9s %8.1f %8.2f %8.2f %8s\n", keys, impl, ir[impl], d1[impl], ll[impl],
                 k ? sprintf("%.1fx", ll["baseline"] > 0 ? ll[impl] / ll["baseline"] : 0) : "-"
        }
      }'
done
