// SPDX-License-Identifier: BSL-1.0
// current_cpu(): which CPU the calling thread runs on, as a hint (it may have moved by the time the
// caller uses it). Used to pick a pool's per-CPU idle cache; any value is correct, a right one is fast.
#pragma once

#if defined(__linux__) && defined(__GLIBC__) && __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif

#include <algorithm>
#include <cstddef>
#include <thread>

#include <keypool/detail/config.hpp>

namespace keypool::detail {

/// With glibc ≥ 2.35 every thread has a registered rseq area whose `cpu_id` the kernel keeps
/// current: one load (≈0.3 ns), against ≈1.8 ns for `sched_getcpu()` here. Falls back to
/// `sched_getcpu()` when rseq is not registered (e.g. GLIBC_TUNABLES=glibc.pthread.rseq=0), and to
/// 0 off Linux.
#if defined(__linux__) && defined(__GLIBC__) && defined(RSEQ_SIG) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35)) && (defined(__x86_64__) || defined(__aarch64__))
#define KEYPOOL_RSEQ_CPU 1
/// glibc's rseq area as an offset from the thread pointer, or 0 if rseq is not registered
/// (glibc's own offset is never 0: the area sits inside the thread control block). Copied once
/// from `__rseq_size`/`__rseq_offset` (each a load through the GOT) during static initialisation;
/// 0, so `sched_getcpu()`, before that.
inline const std::ptrdiff_t rseq_area_offset = __rseq_size != 0 ? __rseq_offset : 0;

/// The calling thread's rseq area (only when rseq_area_offset != 0).
KEYPOOL_ALWAYS_INLINE struct rseq* rseq_area() noexcept {
    return reinterpret_cast<struct rseq*>(static_cast<char*>(__builtin_thread_pointer()) + rseq_area_offset);
}
#endif

KEYPOOL_ALWAYS_INLINE unsigned current_cpu() noexcept {
#if defined(KEYPOOL_RSEQ_CPU)
    if (rseq_area_offset != 0) [[likely]]
        return static_cast<const volatile struct rseq*>(rseq_area())->cpu_id;
#endif
#if defined(__linux__)
    const int cpu = ::sched_getcpu();
    return cpu < 0 ? 0U : static_cast<unsigned>(cpu);
#else
    return 0;
#endif
}

/// The CPUs the calling thread may run on (its affinity mask: a container's cpuset, `taskset`):
/// how many, and one past the highest number among them. Without a mask to read (other systems,
/// more CPUs than a `cpu_set_t` holds), both are `hardware_concurrency()`.
struct cpu_allowance {
    unsigned count;
    unsigned span;
};
inline cpu_allowance allowed_cpus() noexcept {
#if defined(__linux__)
    cpu_set_t set;
    if (::sched_getaffinity(0, sizeof set, &set) == 0) {
        const int count = CPU_COUNT(&set);
        int top = CPU_SETSIZE;
        while (top > 0 && !CPU_ISSET(top - 1, &set)) --top;
        if (count > 0) return {static_cast<unsigned>(count), static_cast<unsigned>(top)};
    }
#endif
    const unsigned hw = std::max(1U, std::thread::hardware_concurrency());
    return {hw, hw};
}

} // namespace keypool::detail
