// SPDX-License-Identifier: BSL-1.0
// Snapshot of a pool's state and counters, as returned by `basic_pool::stats()`.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

#include <keypool/policies/observer.hpp>

namespace keypool {

/// A consistent-enough snapshot: gauges are read under the pool's lock, except that a lease
/// changing hands at that instant may be counted as idle or in use.
struct pool_stats {
    // Gauges.
    std::uint64_t size = 0;        ///< open connections: idle + in use + connecting + closing
    std::uint64_t idle = 0;        ///< connections ready to be handed out
    std::uint64_t in_use = 0;      ///< connections held by leases (or being checked out/returned)
    std::uint64_t connecting = 0;  ///< connects in flight
    std::uint64_t waiters = 0;     ///< callers waiting for a connection
    std::uint64_t peak_size = 0;   ///< high-water mark of `size`
    std::uint64_t peak_waiters = 0;///< high-water mark of `waiters`
    // Counters since the pool was built.
    std::uint64_t acquires = 0;       ///< leases handed out
    std::uint64_t waits = 0;          ///< acquires that had to wait (whatever their outcome)
    std::chrono::nanoseconds wait_time{0}; ///< total time spent waiting by those
    std::uint64_t timeouts = 0;       ///< acquires that ended with `timeout`
    std::uint64_t cancels = 0;        ///< acquires that ended with `cancelled`
    std::uint64_t rejected = 0;       ///< acquires refused with `pool_exhausted`
    std::uint64_t connects_ok = 0;    ///< successful connects
    std::uint64_t connects_failed = 0;///< failed connects (any cause)
    std::uint64_t resets = 0;         ///< resets run
    std::array<std::uint64_t, close_reason_count> closes{}; ///< closes, indexed by close_reason

    std::uint64_t closed_for(close_reason r) const noexcept { return closes[static_cast<std::size_t>(r)]; }
};

} // namespace keypool
