// SPDX-License-Identifier: BSL-1.0
// connection_budget: the global cap on server connections shared by a registry's pools
// (evict::size). Every open connection of a budgeted pool holds one token.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>

#include <boost/intrusive/list.hpp>
#include <boost/smart_ptr/intrusive_ref_counter.hpp>

namespace keypool::detail {

// Lock order: a pool's lock, then m_ (give_back and enqueue run under a pool's lock); the budget
// never calls into a pool: it only wakes a ticket's owner, who then takes its own pool's lock.
// trim_m_ is taken with no pool lock held, and trim may lock the registry and other pools.
// Held by the registry and by each budgeted pool through an 8-byte intrusive pointer.
class connection_budget : public boost::intrusive_ref_counter<connection_budget, boost::thread_safe_counter> {
public:
    /// A caller waiting for a token, in arrival order across all pools: fairness across keys.
    struct ticket : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::safe_link>> {
        bool granted = false; // under m_
        void (*wake)(void*) = nullptr;
        void* ctx = nullptr;
    };

    explicit connection_budget(std::size_t capacity) : capacity_(capacity) {}

    /// Takes a token unless none is free or someone queued earlier is waiting for one.
    bool try_take() {
        std::lock_guard lk(m_);
        if (used_ >= capacity_ || !tickets_.empty()) return false;
        ++used_;
        return true;
    }

    /// Returns a token: it goes to the oldest ticket, or back to the pool of free ones.
    void give_back() {
        std::lock_guard lk(m_);
        if (tickets_.empty()) {
            --used_;
            return;
        }
        ticket& t = tickets_.front();
        tickets_.pop_front();
        waiting_.store(tickets_.size(), std::memory_order_relaxed);
        t.granted = true;
        t.wake(t.ctx);
    }

    void enqueue(ticket& t) {
        std::lock_guard lk(m_);
        if (!t.is_linked() && !t.granted) tickets_.push_back(t);
        waiting_.store(tickets_.size(), std::memory_order_relaxed);
    }

    /// Someone waits for a token: a returned idle connection should be closed to make one.
    /// One relaxed load of a line that changes only when tickets come and go.
    bool has_tickets() const noexcept { return waiting_.load(std::memory_order_relaxed) != 0; }

    /// Leaves the queue. Returns true if a token had already been granted (the caller owns it and
    /// must use it or give it back).
    bool leave(ticket& t) {
        std::lock_guard lk(m_);
        if (t.is_linked()) tickets_.erase(tickets_.iterator_to(t));
        waiting_.store(tickets_.size(), std::memory_order_relaxed);
        bool g = t.granted;
        t.granted = false;
        return g;
    }

    bool granted(const ticket& t) const {
        std::lock_guard lk(m_);
        return t.granted;
    }

    std::size_t used() const {
        std::lock_guard lk(m_);
        return used_;
    }
    std::size_t capacity() const noexcept { return capacity_; }

    /// Connections closed to free a token (close_reason::trimmed), over the budget's lifetime.
    void count_trim() noexcept { trimmed_.fetch_add(1, std::memory_order_relaxed); }
    std::uint64_t trimmed() const noexcept { return trimmed_.load(std::memory_order_relaxed); }

    /// Closes one idle connection of a pool other than `except` (the registry's least recently
    /// used first), freeing a token. Returns false if there was none.
    bool trim(const void* except) {
        std::lock_guard lk(trim_m_);
        return trim_ && trim_(except);
    }
    void set_trim(std::function<bool(const void*)> fn) {
        std::lock_guard lk(trim_m_);
        trim_ = std::move(fn);
    }

private:
    const std::size_t capacity_;
    mutable std::mutex m_;
    std::size_t used_ = 0;
    boost::intrusive::list<ticket> tickets_;
    std::atomic<std::size_t> waiting_{0};
    std::atomic<std::uint64_t> trimmed_{0};
    std::mutex trim_m_;
    std::function<bool(const void*)> trim_;
};

} // namespace keypool::detail
