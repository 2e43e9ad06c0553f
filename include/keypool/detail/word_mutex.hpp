// SPDX-License-Identifier: BSL-1.0
// word_mutex: a mutex in one 32-bit word (std::mutex is 40 bytes with glibc), for the pool's slow
// path and the registry's shards. A registry keeps one pool per key, so every byte of the pool's
// core is paid thousands of times.
#pragma once

#include <atomic>
#include <cstdint>

#include <keypool/detail/config.hpp>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace keypool::detail {

/// Lockable in four bytes: 0 free, 1 locked, 2 locked and someone may sleep on it (the classic
/// three-state futex mutex). lock() spins briefly on a held word, then sleeps through
/// std::atomic::wait (a futex on Linux); unlock() wakes one sleeper only if the word says one may
/// exist. Not fair, like std::mutex; the pool's fairness comes from its own FIFO of waiters.
class word_mutex {
public:
    word_mutex() = default;
    word_mutex(const word_mutex&) = delete;
    word_mutex& operator=(const word_mutex&) = delete;

    KEYPOOL_ALWAYS_INLINE void lock() noexcept {
        std::uint32_t c = 0;
        if (!w_.compare_exchange_strong(c, 1, std::memory_order_acquire, std::memory_order_relaxed)) [[unlikely]]
            lock_contended();
    }
    bool try_lock() noexcept {
        std::uint32_t c = 0;
        return w_.compare_exchange_strong(c, 1, std::memory_order_acquire, std::memory_order_relaxed);
    }
    KEYPOOL_ALWAYS_INLINE void unlock() noexcept {
        if (w_.exchange(0, std::memory_order_release) == 2) [[unlikely]]
            w_.notify_one();
    }

private:
    static void relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        _mm_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
    }

    KEYPOOL_NOINLINE void lock_contended() noexcept {
        // A holder of the pool's lock does a few dozen instructions: spin for about as long
        // before sleeping, reading (not writing) the word so the holder keeps its line.
        for (int i = 0; i < 64; ++i) {
            relax();
            std::uint32_t c = w_.load(std::memory_order_relaxed);
            if (c == 0 && w_.compare_exchange_weak(c, 1, std::memory_order_acquire, std::memory_order_relaxed))
                return;
        }
        // Announce a sleeper (2); whoever unlocks then wakes one. Taking the lock this way also
        // leaves 2, which costs at most one spare wake-up.
        while (w_.exchange(2, std::memory_order_acquire) != 0) w_.wait(2, std::memory_order_relaxed);
    }

    std::atomic<std::uint32_t> w_{0};
};

} // namespace keypool::detail
