// SPDX-License-Identifier: BSL-1.0
// Baselines for the pool benchmarks: what a careful engineer writes in ten minutes without a
// library. They are deliberately minimal, not deliberately slow:
//
// - mutex_vector_pool<T>: std::mutex + std::vector of idle pointers, pre-filled with max_size
//   objects it owns; acquire pops the back (most recently used), release pushes the back.
//   A blocking acquire waits on a std::condition_variable; release notifies only when someone is
//   waiting. Not FIFO: a woken waiter can lose the object to a thread that barges in first.
// - atomic_slot<T>: one object in one std::atomic<T*>; acquire exchanges nullptr in, release
//   stores the pointer back. The physical floor of handing one object between threads: one atomic
//   read-modify-write and one release store per cycle.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <type_traits>
#include <vector>

namespace keypool_bench {

/// No wait measurement (the default): the wait path stays as bare as the rest.
struct no_wait_hook {};

/// Bare pool of `max_size` objects of type T (built with T{} each, then given to `init`).
/// `WaitHook`, when not no_wait_hook, is called as `hook(std::chrono::nanoseconds)` by every acquire
/// that found the pool empty, after it got an object (two steady_clock reads, on the wait path only).
template <class T, class WaitHook = no_wait_hook>
class mutex_vector_pool {
public:
    template <class Init>
    mutex_vector_pool(std::size_t max_size, Init init, WaitHook hook = {}) : store_(max_size), hook_(hook) {
        idle_.reserve(max_size);
        for (std::size_t i = 0; i < max_size; ++i) {
            init(store_[i], i);
            idle_.push_back(&store_[i]);
        }
    }
    explicit mutex_vector_pool(std::size_t max_size = 8) : mutex_vector_pool(max_size, [](T&, std::size_t) {}) {}

    mutex_vector_pool(const mutex_vector_pool&) = delete;
    mutex_vector_pool& operator=(const mutex_vector_pool&) = delete;

    /// Blocks until an object is free.
    T* acquire() {
        std::unique_lock lk(m_);
        if (idle_.empty()) [[unlikely]] {
            if constexpr (std::is_same_v<WaitHook, no_wait_hook>) {
                wait_for_idle(lk);
            } else {
                const auto start = std::chrono::steady_clock::now();
                wait_for_idle(lk);
                T* t = pop_locked();
                lk.unlock(); // record outside the lock, as keypool's observer hook is called
                hook_(std::chrono::steady_clock::now() - start);
                return t;
            }
        }
        return pop_locked();
    }

    /// Never blocks: nullptr when the pool is empty.
    T* try_acquire() {
        std::lock_guard lk(m_);
        return idle_.empty() ? nullptr : pop_locked();
    }

    void release(T* t) {
        bool wake;
        {
            std::lock_guard lk(m_);
            idle_.push_back(t);
            wake = waiting_ != 0;
        }
        if (wake) cv_.notify_one();
    }

private:
    void wait_for_idle(std::unique_lock<std::mutex>& lk) {
        ++waiting_;
        cv_.wait(lk, [&] { return !idle_.empty(); });
        --waiting_;
    }
    T* pop_locked() noexcept {
        T* t = idle_.back();
        idle_.pop_back();
        return t;
    }

    std::mutex m_;
    std::condition_variable cv_;
    std::vector<T*> idle_;
    std::size_t waiting_ = 0;
    std::vector<T> store_;
    [[no_unique_address]] WaitHook hook_;
};

/// One object in one atomic pointer: acquire = exchange(nullptr), release = store.
template <class T>
class atomic_slot {
public:
    explicit atomic_slot(T* object) noexcept : slot_(object) {}
    /// Never blocks: nullptr when the object is out.
    T* try_acquire() noexcept { return slot_.exchange(nullptr, std::memory_order_acquire); }
    void release(T* t) noexcept { slot_.store(t, std::memory_order_release); }

private:
    alignas(64) std::atomic<T*> slot_;
};

} // namespace keypool_bench
