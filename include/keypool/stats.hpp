// SPDX-License-Identifier: BSL-1.0
// Snapshot of a pool's state and counters, as returned by `basic_pool::stats()`.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

#include <keypool/error.hpp>
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
    std::uint64_t leaks = 0;          ///< leases reported held past `leak_threshold`
    std::array<std::uint64_t, close_reason_count> closes{}; ///< closes, indexed by close_reason

    std::uint64_t closed_for(close_reason r) const noexcept { return closes[static_cast<std::size_t>(r)]; }
};

/// Why a registry retired a pool. The enumerator name is the metric label value.
enum class evict_reason : std::uint8_t { lru, idle, size, invalidated };
inline constexpr std::size_t evict_reason_count = 4;

inline const char* to_string(evict_reason r) noexcept {
    switch (r) {
    case evict_reason::lru: return "lru";
    case evict_reason::idle: return "idle";
    case evict_reason::size: return "size";
    case evict_reason::invalidated: return "invalidated";
    }
    return "unknown";
}

/// Snapshot of a registry.
struct registry_stats {
    std::uint64_t keys_active = 0;   ///< keys with a live pool entry
    std::uint64_t pools_active = 0;  ///< distinct live pools (fewer than keys when keys share a target)
    /// Pools that left (retired, invalidated, closed) with connections still open: leases out, or
    /// a pool object from `pool(key)`. Their connections count in `pools.size` until closed.
    std::uint64_t pools_draining = 0;
    std::uint64_t pools_created = 0; ///< pool entries built (with flight::none, also the discarded ones)
    std::uint64_t hits = 0;          ///< acquires that found the key's pool ready
    std::uint64_t misses = 0;        ///< acquires that had to create it
    std::uint64_t joins = 0;         ///< acquires that waited for another caller's creation
    /// Pools retired, indexed by evict_reason; for `size`, idle connections closed to free the
    /// connection budget for another key (the budget retires connections, not whole pools).
    std::array<std::uint64_t, evict_reason_count> evicted{};
    /// evict::size: pools looked at for an idle connection to close (each look takes that
    /// pool's lock). Amortised about one per trim: a walk resumes where the last one stopped, and
    /// while callers stay queued after a walk found nothing idle, none walks again.
    std::uint64_t trim_scans = 0;
    std::array<std::uint64_t, 16> errors{}; ///< failed acquires, indexed by keypool::errc value
    /// Pools maintain() ran a pass on. A pass that finds a pool quiet (no waiters, no connect in
    /// flight or failing) notes when it next needs one, and later calls skip it until then: at
    /// most 1/32 of its shortest timer later (never with min_idle or background resets).
    std::uint64_t pool_passes = 0;
    /// Bytes the registry's huge-page arena has mapped (registry_options::huge_pages; 0 without
    /// one, and for an arena of ordinary pages): pools' allocations and bucket arrays, in use, kept for reuse or prepared as spares
    /// by maintain(). The spares carry huge pages; chunks the registry mapped itself, growing
    /// faster than maintain() ran, keep ordinary pages.
    std::uint64_t huge_page_bytes = 0;
    /// The pools' stats, summed (peaks are maxima): the live and the draining pools', plus the
    /// counters of pools since gone, so no counter goes down when a pool leaves.
    pool_stats pools{};

    std::uint64_t evicted_for(evict_reason r) const noexcept { return evicted[static_cast<std::size_t>(r)]; }
    std::uint64_t errors_for(errc e) const noexcept { return errors[static_cast<std::size_t>(e) & 15]; }
};

} // namespace keypool
