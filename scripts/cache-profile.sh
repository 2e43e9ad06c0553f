#!/usr/bin/env bash
# W3's cost per acquire + release in instructions and cache misses, from callgrind's cache
# simulator: figures that do not move with the machine's load, to explain the timed ratios of
# bench/registry_bench (docs/benchmarks.md, "Why W3 costs what it costs").
#
#   scripts/cache-profile.sh [build-dir]      (default build/main; needs valgrind)
#
# Simulated caches: this machine's L1d and L2 as sysfs describes CPU 0's (callgrind models two
# levels; without sysfs, L1d 48 KiB 12-way and a 1 MiB 16-way L2, the machine of sessions 5-11).
# "LL misses" are lines fetched from beyond the L2.
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
# "<bytes>,<ways>,64" for sysfs cache index $1, or $2 if sysfs does not say.
cache_geometry() {
  local d=/sys/devices/system/cpu/cpu0/cache/index$1 size ways
  size=$(cat "$d/size" 2>/dev/null) && ways=$(cat "$d/ways_of_associativity" 2>/dev/null) &&
    [[ $size =~ ^([0-9]+)K$ ]] && echo "$((BASH_REMATCH[1] * 1024)),$ways,64" || echo "$2"
}
d1=$(cache_geometry 0 49152,12,64)
l2=$(cache_geometry 2 1048576,16,64)
echo "simulated: L1d $d1, L2 (last level) $l2 (bytes,ways,line)"
printf '%-8s %-9s %8s %8s %8s %8s\n' keys impl instr D1miss LLmiss 'LL/base'
for keys in 1000 10000 100000; do
  valgrind --tool=callgrind --cache-sim=yes --D1="$d1" --LL="$l2" \
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
