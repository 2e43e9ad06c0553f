#!/usr/bin/env bash
# Alternating A/B runs of W3 (bench/profile/w3_cycles.cpp) or of the layout models
# (bench/profile/w3_layout_model.cpp): the comparison behind every "ab" row of docs/benchmarks.md
# since session 24. On a shared host the baseline's own time moves by 2x within minutes, so two
# builds compared minutes apart say little; here each round runs every build once, one after the
# other, and each run's figure is already a ratio to the baseline in the same process (median over
# its rounds). The script prints, per build, the median of those figures over the rounds and their
# quartiles.
#
#   scripts/w3-ab.sh [-n rounds] [-t threads] <keys> <build>...
#       <build>: a git revision (its include/ and bench/ are built) or a directory holding an
#       include/keypool tree (a throwaway copy with one change; its bench/ if it has one, else this
#       tree's). 1 thread: `taskset -c 1 w3_cycles <keys> 1000000 3` (registry time / baseline
#       time, lower is better); -t 2 and more: `w3_cycles <keys> 1000000 3 <threads>` (throughput
#       ratio, higher is better). Default 5 rounds.
#   scripts/w3-ab.sh -m [-n rounds] <keys> <model>...
#       the layout models of this tree, `w3_layout_model <keys> 2000000 5 <model>` alternated.
#
# Environment as w3_cycles reads it (W3_RANDOM_KEYS=1, W3_HUGE_PAGES=0|1) passes through. Needs g++
# (C++20) and, for 1 thread, taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5 threads=0 models=0
while getopts "n:t:m" opt; do
  case $opt in
    n) rounds=$OPTARG ;;
    t) threads=$OPTARG ;;
    m) models=1 ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [[ $# -lt 2 || ! $1 =~ ^[0-9]+$ || ! $rounds =~ ^[1-9][0-9]*$ || ! $threads =~ ^[0-9]+$ ]]; then
  sed -n '2,22p' "$0" >&2
  exit 2
fi
keys=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cxx=${CXX:-g++}
flags=(-std=c++20 -O3 -DNDEBUG -pthread)

declare -a names bins
if [[ $models == 1 ]]; then
  "$cxx" "${flags[@]}" bench/profile/w3_layout_model.cpp -o "$tmp/model"
  for m in "$@"; do names+=("$m"); bins+=("$tmp/model"); done
else
  i=0
  for b in "$@"; do
    src=$tmp/src$i
    if [[ -d $b/include/keypool ]]; then
      src=$(cd "$b" && pwd)
      [[ -d $src/bench/profile ]] || { mkdir -p "$tmp/bench$i" && cp -r bench "$tmp/bench$i/" && ln -s "$src/include" "$tmp/bench$i/include" && src=$tmp/bench$i; }
    elif git rev-parse --verify --quiet "$b^{commit}" >/dev/null; then
      mkdir -p "$src"
      git archive "$b" include bench | tar -x -C "$src"
    else
      echo "w3-ab: $b is neither a git revision nor a directory with include/keypool" >&2
      exit 2
    fi
    "$cxx" "${flags[@]}" -I"$src/include" "$src/bench/profile/w3_cycles.cpp" -o "$tmp/w3_$i" &
    names+=("$b"); bins+=("$tmp/w3_$i")
    i=$((i + 1))
  done
  wait
  for bin in "${bins[@]}"; do [[ -x $bin ]] || { echo "w3-ab: a build failed" >&2; exit 1; }; done
fi

# One run of build/model $1 (index): its printed ratio.
run_one() {
  local j=$1 out
  if [[ $models == 1 ]]; then
    out=$("${bins[$j]}" "$keys" 2000000 5 "${names[$j]}" | tail -1)
    sed -E 's/^ *[^ ]+ +([0-9.]+)x.*/\1/' <<<"$out"
  elif [[ $threads -ge 2 ]]; then
    out=$("${bins[$j]}" "$keys" 1000000 3 "$threads")
    sed -E 's/.* ([0-9.]+)x median.*/\1/' <<<"$out"
  else
    out=$(taskset -c 1 "${bins[$j]}" "$keys" 1000000 3)
    sed -E 's/.* ([0-9.]+)x median.*/\1/' <<<"$out"
  fi
}

declare -a results
for ((r = 0; r < rounds; ++r)); do
  for j in "${!names[@]}"; do results[j]="${results[j]:-} $(run_one "$j")"; done
done
what="registry time / baseline time, lower is better"
[[ $threads -ge 2 ]] && what="registry throughput / baseline throughput, higher is better"
[[ $models == 1 ]] && what="model time / baseline time, lower is better"
echo "$keys keys, $rounds alternating rounds ($what):"
for j in "${!names[@]}"; do
  tr ' ' '\n' <<<"${results[$j]}" | grep . | sort -n |
    awk -v name="${names[$j]}" '{a[NR] = $1} END {
      printf "  %-24s median %.2fx  quartiles %.2f-%.2f  (%s)\n", name, a[int((NR + 1) / 2)],
             a[int((NR + 3) / 4)], a[int((3 * NR + 1) / 4)], "n = " NR }'
done
