#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run):
#   1. build/test  RelWithDebInfo, everything: unit, stress, readme,
#                  compile_fail, consumer and example tests, and the pg
#                  integration tests (real PostgreSQL 15 + PgBouncer)
#   2. build/tsan  ThreadSanitizer,    unit + stress
#   3. build/asan  ASan + UBSan,       unit + stress
#   4. build/fuzz  libFuzzer targets (scripts/fuzz.sh), bounded: one test
#   5. memcheck    the fake connector's and key_table's unit tests from
#                  build/test under valgrind (it sees inside glibc's pthread
#                  calls, which ASan does not intercept): one test
# Test failures in one phase don't stop the next (you see all of them);
# a configure/build failure stops at once. Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh || exit 1

# The integration tests (label pg) run on a throwaway PostgreSQL + PgBouncer
# that CTest itself starts and stops (fixture pg_server, scripts/pg-fixture.sh),
# also when tests fail. Should this script be interrupted mid-run, stop it here.
pg_env=build/test/tests/pg-fixture.env
trap 'bash scripts/pg-fixture.sh stop "$pg_env" >/dev/null 2>&1 || true' EXIT

total_passed=0
total_failed=0
status=0

summary() {
  echo "== ${total_passed} passed, ${total_failed} failed"
}

# build <dir> <cmake args...>: configure and build, abort the run on error.
build() {
  local dir=$1; shift
  echo "== configure + build $dir"
  if ! cmake -S . -B "$dir" "$@" || ! cmake --build "$dir" -j2; then
    echo "== BUILD FAILED: $dir" >&2
    summary
    exit 1
  fi
}

# run_ctest <dir> <ctest args...>: run tests and add to the totals.
run_ctest() {
  local dir=$1; shift
  local log="$dir/ctest.log"
  echo "== ctest $dir $*"
  ctest --test-dir "$dir" --output-on-failure -j2 --no-tests=error "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  # ctest's summary: "95% tests passed, 1 tests failed out of 20"
  local line failed total
  line=$(grep -Eo 'tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -n1)
  if [[ -n "$line" ]]; then
    failed=$(awk '{print $3}' <<<"$line")
    total=$(awk '{print $NF}' <<<"$line")
    total_passed=$((total_passed + total - failed))
    total_failed=$((total_failed + failed))
  fi
  if ((rc != 0)); then
    echo "== ctest FAILED in $dir (exit $rc)" >&2
    # Count a run that failed without a summary (e.g. no tests) as one failure.
    [[ -n "$line" ]] || total_failed=$((total_failed + 1))
    status=1
  fi
}

# 1. Everything, optimised as released but with debug info.
build build/test -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKEYPOOL_BUILD_TESTS=ON -DKEYPOOL_BUILD_BENCH=OFF -DKEYPOOL_BUILD_EXAMPLES=ON
run_ctest build/test

# 2. ThreadSanitizer. Options are exported for the build as well, since
# doctest test discovery runs the test binaries at build time.
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
build build/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYPOOL_SANITIZE=thread \
  -DKEYPOOL_BUILD_TESTS=ON -DKEYPOOL_BUILD_BENCH=OFF -DKEYPOOL_BUILD_EXAMPLES=OFF
run_ctest build/tsan -L 'stress|unit'
unset TSAN_OPTIONS

# 3. ASan + UBSan. A Debug build keeps assert()s live somewhere in the suite;
# -O1 is what ASan recommends and keeps the stress tests reasonably fast.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
build build/asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" -DKEYPOOL_SANITIZE=address \
  -DKEYPOOL_BUILD_TESTS=ON -DKEYPOOL_BUILD_BENCH=OFF -DKEYPOOL_BUILD_EXAMPLES=OFF
run_ctest build/asan -L 'stress|unit'
unset ASAN_OPTIONS UBSAN_OPTIONS

# 4. The connection-string builders under libFuzzer (ASan + UBSan, a bounded run per target on a
# copy of tests/fuzz/corpus). Counts as one test.
echo "== fuzz (scripts/fuzz.sh)"
if bash scripts/fuzz.sh; then
  total_passed=$((total_passed + 1))
else
  echo "== fuzz FAILED" >&2
  total_failed=$((total_failed + 1))
  status=1
fi

# 5. Valgrind memcheck on the suites whose objects manage their own lifetimes in ways a sanitizer
# misses (e.g. unlocking a mutex inside memory just freed: glibc's unlock is not instrumented).
echo "== memcheck (valgrind): fake_connector, key_table"
if valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
    build/test/tests/keypool_unit_tests -ts=fake_connector,key_table; then
  total_passed=$((total_passed + 1))
else
  echo "== memcheck FAILED" >&2
  total_failed=$((total_failed + 1))
  status=1
fi

summary
exit $status
