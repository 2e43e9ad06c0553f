#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz/ (one per connection-string builder) with ASan and
# UBSan, and runs each for a bounded time on a copy of its seed corpus (tests/fuzz/corpus/<target>/,
# so the repository is never modified). Exits non-zero if a target fails to build, crashes or
# reports a property violation; the crashing input is left in build/fuzz/<target>/.
#
#   bash scripts/fuzz.sh               # every target: FUZZ_RUNS inputs (100000) from FUZZ_SEED (1),
#                                      # at most FUZZ_TIME seconds (60) each
#   FUZZ_RUNS=-1 FUZZ_TIME=300 FUZZ_SEED=$RANDOM bash scripts/fuzz.sh fuzz_uri   # a deeper, new run
#   bash scripts/fuzz.sh --replay      # only run the seeds (and any crash-* inputs) once each
set -uo pipefail
cd "$(dirname "$0")/.."

fuzz_time=${FUZZ_TIME:-60}
fuzz_runs=${FUZZ_RUNS:-100000}
fuzz_seed=${FUZZ_SEED:-1}
replay=0
if [[ "${1:-}" == "--replay" ]]; then replay=1; shift; fi
targets=("$@")
if ((${#targets[@]} == 0)); then
  for src in tests/fuzz/fuzz_*.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi

out=build/fuzz
mkdir -p "$out"
cxx=${CXX_FUZZ:-clang++}
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=all -Wall -Wextra -Wpedantic -Werror -Iinclude)
read -r -a pq_cflags <<<"$(pkg-config --cflags libpq)"
read -r -a pq_libs <<<"$(pkg-config --libs libpq)"

# Build (two at a time: the machine has 2 cores).
echo "== fuzz: building ${targets[*]} into $out"
running=0
for t in "${targets[@]}"; do
  # Up to date: newer than its source, the shared fuzz headers and every library header.
  if [[ -x "$out/$t" ]] && [[ "$(cat "$out/$t.rc" 2>/dev/null)" == 0 ]] &&
     [[ -z "$(find "tests/fuzz/$t.cpp" tests/fuzz -maxdepth 1 -name '*.hpp' -newer "$out/$t" 2>/dev/null | head -n1)" ]] &&
     [[ -z "$(find include "tests/fuzz/$t.cpp" -newer "$out/$t" 2>/dev/null | head -n1)" ]]; then
    continue
  fi
  rm -f "$out/$t" "$out/$t.rc"
  ( "$cxx" "${flags[@]}" "${pq_cflags[@]}" "tests/fuzz/$t.cpp" -o "$out/$t" "${pq_libs[@]}" >"$out/$t.build.log" 2>&1
    echo $? >"$out/$t.rc" ) &
  running=$((running + 1))
  if ((running >= 2)); then wait -n || true; running=$((running - 1)); fi
done
wait
status=0
for t in "${targets[@]}"; do
  if [[ "$(cat "$out/$t.rc" 2>/dev/null)" != 0 ]]; then
    echo "== fuzz: BUILD FAILED: $t" >&2
    cat "$out/$t.build.log" >&2
    status=1
  fi
done
((status == 0)) || exit 1

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

for t in "${targets[@]}"; do
  work="$out/$t"
  rm -rf "$work.corpus" && mkdir -p "$work.corpus" "$work.artifacts"
  if [[ -d "tests/fuzz/corpus/$t" ]]; then cp -R "tests/fuzz/corpus/$t/." "$work.corpus/"; fi
  dict=()
  [[ -f "tests/fuzz/$t.dict" ]] && dict=(-dict="tests/fuzz/$t.dict")
  log="$work.log"
  if ((replay)); then
    echo "== fuzz: $t: replaying $(ls "$work.corpus" | wc -l) seeds"
    if "$work" "${dict[@]}" -runs=0 "$work.corpus" >"$log" 2>&1; then
      echo "== fuzz: $t ok"
    else
      echo "== fuzz: $t FAILED (see $log)" >&2
      tail -n 40 "$log" >&2
      status=1
    fi
    continue
  fi
  echo "== fuzz: $t: ${fuzz_runs} runs, seed ${fuzz_seed}, at most ${fuzz_time}s ($(ls "$work.corpus" | wc -l) seeds)"
  # A fixed seed and run count make the run reproducible: CI explores the same inputs every time
  # (a slower machine stops at the time cap, on a prefix of them); deeper runs take FUZZ_RUNS and
  # FUZZ_SEED. -timeout: one input taking over 5 s is a hang; -rss_limit_mb: a runaway allocation.
  if "$work" "${dict[@]}" -seed="$fuzz_seed" -runs="$fuzz_runs" -max_total_time="$fuzz_time" -timeout=5 \
       -rss_limit_mb=2048 -max_len=4096 \
       -print_final_stats=1 -artifact_prefix="$work.artifacts/" "$work.corpus" >"$log" 2>&1; then
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$')
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n1)
    echo "== fuzz: $t ok: ${execs:-?} executions, ${cov:-cov ?}, corpus $(ls "$work.corpus" | wc -l)"
  else
    echo "== fuzz: $t FAILED (log $log, input in $work.artifacts/)" >&2
    grep -E 'PROPERTY VIOLATED|ERROR: |SUMMARY|runtime error' "$log" | head -n 10 >&2
    status=1
  fi
done

if ((status == 0)); then echo "== fuzz: all ${#targets[@]} targets passed"; else echo "== fuzz: FAILED" >&2; fi
exit $status
