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

namespace keypool::detail {

/// With glibc ≥ 2.35 every thread has a registered rseq area whose `cpu_id` the kernel keeps
/// current: one load (≈0.3 ns), against ≈1.8 ns for `sched_getcpu()` here. Falls back to
/// `sched_getcpu()` when rseq is not registered (e.g. GLIBC_TUNABLES=glibc.pthread.rseq=0), and to
/// 0 off Linux.
inline unsigned current_cpu() noexcept {
#if defined(__linux__) && defined(__GLIBC__) && defined(RSEQ_SIG) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35)) && (defined(__x86_64__) || defined(__aarch64__))
    if (__rseq_size != 0) {
        const auto* area = reinterpret_cast<const volatile struct rseq*>(
            static_cast<const char*>(__builtin_thread_pointer()) + __rseq_offset);
        return area->cpu_id;
    }
#endif
#if defined(__linux__)
    const int cpu = ::sched_getcpu();
    return cpu < 0 ? 0U : static_cast<unsigned>(cpu);
#else
    return 0;
#endif
}

} // namespace keypool::detail
