// SPDX-License-Identifier: BSL-1.0
// Synchronisation policies: sync::mutex (thread-safe, the default) and sync::none (one thread,
// no atomic read-modify-writes and no locks).
#pragma once

#include <atomic>
#include <mutex>
#include <utility>

#include <keypool/detail/cpu.hpp>
#include <keypool/detail/word_mutex.hpp>

namespace keypool {
namespace detail {

/// The subset of std::atomic the pool uses, as plain loads and stores: what sync::none compiles to.
template <class T>
class plain_atomic {
public:
    constexpr plain_atomic(T v = T{}) noexcept : v_(v) {}
    T load(std::memory_order = std::memory_order_seq_cst) const noexcept { return v_; }
    void store(T v, std::memory_order = std::memory_order_seq_cst) noexcept { v_ = v; }
    T exchange(T v, std::memory_order = std::memory_order_seq_cst) noexcept {
        T old = v_;
        v_ = v;
        return old;
    }
    bool compare_exchange_weak(T& expected, T desired, std::memory_order = {},
                               std::memory_order = {}) noexcept {
        if (v_ == expected) {
            v_ = desired;
            return true;
        }
        expected = v_;
        return false;
    }
    bool compare_exchange_strong(T& e, T d, std::memory_order a = {}, std::memory_order b = {}) noexcept {
        return compare_exchange_weak(e, d, a, b);
    }
    T fetch_add(T d, std::memory_order = {}) noexcept { return std::exchange(v_, v_ + d); }
    T fetch_sub(T d, std::memory_order = {}) noexcept { return std::exchange(v_, v_ - d); }
    T fetch_or(T d, std::memory_order = {}) noexcept { return std::exchange(v_, v_ | d); }
    T fetch_and(T d, std::memory_order = {}) noexcept { return std::exchange(v_, v_ & d); }

private:
    T v_;
};

struct null_mutex {
    void lock() noexcept {}
    void unlock() noexcept {}
    bool try_lock() noexcept { return true; }
};

} // namespace detail

namespace sync {

/// Thread-safe (the default): atomics on the fast path, a mutex on the slow path, blocked waiters.
struct mutex {
    static constexpr bool thread_safe = true;
    template <class T>
    using atomic = std::atomic<T>;
    /// One 32-bit word (std::mutex is 40 bytes): a registry has a pool, so a lock, per key.
    using mutex_type = detail::word_mutex;
    // A policy may add `static unsigned cpu()`: the CPU the caller runs on, which picks the pool's
    // per-CPU idle cache (`pool_options::cpu_caches`; tests use it to play several CPUs). Without
    // it (as here) the pool uses the kernel's CPU number and, where it can, restartable sequences
    // instead of compare-and-swap on its caches (detail/percpu.hpp).
};

/// Single-threaded: every "atomic" is a plain variable and the lock does nothing. A caller that
/// would have to wait for another thread gets `errc::would_deadlock` at once instead.
struct none {
    static constexpr bool thread_safe = false;
    template <class T>
    using atomic = detail::plain_atomic<T>;
    using mutex_type = detail::null_mutex;
};

} // namespace sync
} // namespace keypool
