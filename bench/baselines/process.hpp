// SPDX-License-Identifier: BSL-1.0
// Puts the benchmark process in the state a service's process is in: multi-threaded.
//
// glibc (2.34 and later) locks a private mutex with a plain store, no atomic instruction, while the
// process has never started a second thread. Measured here: the W1 baseline (std::mutex +
// std::vector) takes ≈ 9 ns per cycle in a process that never started a thread and ≈ 27 ns once one
// has run (the figure in ../shared/notes/performance.md). A thread-safe pool only matters in a
// process with threads, so every benchmark binary starts and joins one thread before measuring.
// KEYPOOL_BENCH_SINGLE_THREADED=1 skips it, to reproduce the single-threaded figure.
#pragma once

#include <cstdlib>
#include <cstring>
#include <thread>

#include <sys/single_threaded.h>

#include <benchmark/benchmark.h>

namespace keypool_bench {

inline void make_process_multithreaded() {
    const char* v = std::getenv("KEYPOOL_BENCH_SINGLE_THREADED");
    if (!(v && std::strcmp(v, "1") == 0)) std::thread([] {}).join();
    benchmark::AddCustomContext("keypool.process_single_threaded", __libc_single_threaded ? "yes" : "no");
}

} // namespace keypool_bench
