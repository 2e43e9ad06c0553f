// SPDX-License-Identifier: BSL-1.0
// connection_budget: the global cap on server connections shared by a registry's pools
// (evict::size). Every open connection of a budgeted pool holds one token.
//
// Finding an idle connection to close (trim) walks the registry's pools, each under its lock. A
// walk that a queued caller made and that found none marks the budget *dry*: while callers stay
// queued, no idle connection can appear unnoticed, so later callers skip the walk (one walk per
// run of queued callers, not one per caller). What keeps that true:
// - a release that finds callers queued closes its connection rather than idling it (its token
//   goes to the oldest caller); it checks inside a read-side section (detail/rcu.hpp), and a
//   walker waits for a grace period before it walks, so a release that checked before the
//   caller queued has made its connection idle where the walk will see it;
// - any other path that idles a connection under its pool's lock (a connect nobody waits for
//   any more, a keepalive ping or background reset handing the connection back) calls idled(),
//   which clears the mark and voids any walk in progress (idle_epoch_);
// - the mark goes when the queue empties.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>

#include <boost/intrusive/list.hpp>
#include <boost/smart_ptr/intrusive_ref_counter.hpp>

#include <keypool/detail/rcu.hpp>

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
        bool walk = false;    // under m_: a connection went idle since the owner's walk (idled())
        void (*wake)(void*) = nullptr;
        void* ctx = nullptr;
    };

    /// `thread_safe`: whether releases may run on other threads (then a walker waits for a grace
    /// period before it walks; see the top of this file).
    explicit connection_budget(std::size_t capacity, bool thread_safe = true)
        : capacity_(capacity), thread_safe_(thread_safe) {}

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
        queue_changed_locked();
        t.granted = true;
        t.wake(t.ctx);
    }

    /// Queues `t` (once). Returns the queue's episode: it changes whenever the queue fills again
    /// after being empty, so a walk can tell that callers stayed queued since (mark_dry).
    std::uint64_t enqueue(ticket& t) {
        std::lock_guard lk(m_);
        if (!t.is_linked() && !t.granted) {
            if (tickets_.empty()) ++episode_;
            tickets_.push_back(t);
        }
        queue_changed_locked();
        return episode_;
    }

    /// Someone waits for a token: a returned idle connection should be closed to make one.
    /// One relaxed load of a line that changes only when tickets come and go.
    bool has_tickets() const noexcept { return waiting_.load(std::memory_order_relaxed) != 0; }

    /// Leaves the queue. Returns true if a token had already been granted (the caller owns it and
    /// must use it or give it back).
    bool leave(ticket& t) {
        std::lock_guard lk(m_);
        if (t.is_linked()) tickets_.erase(tickets_.iterator_to(t));
        queue_changed_locked();
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

    /// Closes one idle connection of a pool other than `except` (the registry's pools from its
    /// CLOCK hand on), freeing a token. Returns false if there was none, at once while the budget
    /// is dry. `queued`: the episode enqueue() returned to a caller now queued, whose walk, if it
    /// finds nothing, marks the budget dry. Called with no lock held, outside any read section.
    bool trim(const void* except, const std::uint64_t* queued = nullptr) {
        if (dry_.load(std::memory_order_acquire)) return false;
        std::uint64_t epoch = 0;
        if (queued) {
            epoch = idle_epoch_.load(std::memory_order_acquire);
            // Releases that saw no caller queued have made their connections idle by now.
            if (thread_safe_) rcu.synchronize();
        }
        std::lock_guard lk(trim_m_);
        if (!trim_) return false;
        std::uint64_t scanned = 0;
        const bool found = trim_(except, scanned);
        if (!found && queued) mark_dry(*queued, epoch);
        scanned_.fetch_add(scanned, std::memory_order_release); // (after the mark: see scans())
        return found;
    }
    /// `fn(except, scanned)`: closes an idle connection of a pool other than `except`, adding to
    /// `scanned` the pools it looked at; true if it found one.
    void set_trim(std::function<bool(const void*, std::uint64_t&)> fn) {
        std::lock_guard lk(trim_m_);
        trim_ = std::move(fn);
    }

    /// A connection became idle outside a release's read section (under its pool's lock): if
    /// callers are queued, the budget is no longer dry, a walk in progress proves nothing, and
    /// the oldest caller is woken to walk again (take_walk), so the connection is closed for it
    /// rather than left idle while it waits.
    void idled() {
        if (!has_tickets()) return;
        std::lock_guard lk(m_);
        idle_epoch_.fetch_add(1, std::memory_order_release);
        dry_.store(false, std::memory_order_release);
        if (tickets_.empty()) return;
        ticket& t = tickets_.front();
        t.walk = true;
        t.wake(t.ctx);
    }
    /// Whether `t`'s owner was woken to walk again (and clears it).
    bool take_walk(ticket& t) {
        std::lock_guard lk(m_);
        return std::exchange(t.walk, false);
    }

    /// Whether a walk found no idle connection while callers stayed queued (tests, stats).
    bool dry() const noexcept { return dry_.load(std::memory_order_acquire); }
    /// Pools the trims looked at (each takes that pool's lock), over the budget's lifetime. A walk
    /// counts its pools after it has marked the budget dry: whoever sees its count sees the mark.
    std::uint64_t scans() const noexcept { return scanned_.load(std::memory_order_acquire); }

private:
    void queue_changed_locked() noexcept {
        waiting_.store(tickets_.size(), std::memory_order_relaxed);
        if (tickets_.empty()) dry_.store(false, std::memory_order_relaxed);
    }
    /// Marks the budget dry if the callers queued when the walk began (episode `queued`) are
    /// still queued and no connection became idle behind the walk (idle_epoch_ unchanged).
    void mark_dry(std::uint64_t queued, std::uint64_t epoch) {
        std::lock_guard lk(m_);
        if (!tickets_.empty() && episode_ == queued && idle_epoch_.load(std::memory_order_relaxed) == epoch)
            dry_.store(true, std::memory_order_release);
    }

    const std::size_t capacity_;
    const bool thread_safe_;
    mutable std::mutex m_;
    std::size_t used_ = 0;
    boost::intrusive::list<ticket> tickets_;
    std::uint64_t episode_ = 0; // under m_
    std::atomic<std::size_t> waiting_{0};
    std::atomic<bool> dry_{false};              // written under m_
    std::atomic<std::uint64_t> idle_epoch_{0};  // written under m_
    std::atomic<std::uint64_t> trimmed_{0}, scanned_{0};
    std::mutex trim_m_;
    std::function<bool(const void*, std::uint64_t&)> trim_;
};

} // namespace keypool::detail
