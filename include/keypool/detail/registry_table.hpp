// SPDX-License-Identifier: BSL-1.0
// The machinery behind basic_registry: a sharded key table, single-flight creation, the CLOCK
// ring for LRU eviction, idle eviction, and pool sharing between keys with one target.
#pragma once

#include <algorithm>
#include <bit>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <mutex>
#include <optional>
#include <stop_token>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <vector>

#include <boost/container_hash/hash.hpp>
#include <boost/intrusive/list.hpp>

#include <keypool/error.hpp>
#include <keypool/lease.hpp>
#include <keypool/detail/budget.hpp>
#include <keypool/detail/key_table.hpp>
#include <keypool/detail/rcu.hpp>
#include <keypool/options.hpp>
#include <keypool/pool.hpp>
#include <keypool/resolver.hpp>
#include <keypool/stats.hpp>

namespace keypool::detail {

/// How the acquire path carries a key's per-key values (the key into its lease, the route's
/// setup into `prepare`): a copy when that is a plain memory copy, else a share of the table's own
/// copy, made once per key. So a `std::string` key or role name longer than the small-string
/// buffer costs no allocation per acquire (an atomic increment instead).
template <class T>
inline constexpr bool copy_is_plain = std::is_trivially_copyable_v<T> && sizeof(T) <= 32;
template <class T>
using held = std::conditional_t<copy_is_plain<T>, T, std::shared_ptr<const T>>;
template <class T>
held<T> hold(T v) {
    if constexpr (copy_is_plain<T>) return v;
    else return std::make_shared<const T>(std::move(v));
}
template <class T>
const T& held_value(const held<T>& h) noexcept {
    if constexpr (copy_is_plain<T>) return h;
    else return *h;
}

/// acquire()'s error handling for the registry's throwing forms: a failure throws
/// `keypool::error` from the slow path, so the fast path builds no std::error_code.
struct throw_errors {};
/// acquire()'s `when` for the forms without a timeout: the pool options' acquire_timeout, read
/// only where a deadline is needed (the slow path; a connector's timed reset).
struct default_timeout {};

[[noreturn]] KEYPOOL_NOINLINE inline void throw_acquire_error(std::error_code ec) {
    throw error(ec, "keypool: registry acquire failed");
}

/// registry_options::huge_pages: as set, or, by default, whether `expected` pools of
/// `block_bytes` each would take 12 MiB (6 huge pages) or more: what a 3,072-entry second-level
/// TLB reaches with 4 KiB pages, and less once the rest of the process has its share
/// (docs/benchmarks.md, "Session 30": 30,000 keys' 15.8 MiB of pools ran W3 0.91× and 1.07× in
/// huge pages, 1.09× and 1.13× without, in two windows; 20,000 keys' 10.5 MiB gained nothing).
inline bool wants_huge_pages(const registry_options& o, std::size_t expected, std::size_t block_bytes) noexcept {
    if (!huge_arena::supported()) return false;
    if (o.huge_pages) return *o.huge_pages;
    return expected >= (std::size_t{12} << 20) / block_bytes;
}

template <class O, class Key>
void notify_pool_created(O& o, const Key& k) {
    if constexpr (requires { o.on_pool_created(k); }) o.on_pool_created(k);
}
template <class O, class Key>
void notify_pool_evicted(O& o, const Key& k, evict_reason r) {
    if constexpr (requires { o.on_pool_evicted(k, r); }) o.on_pool_evicted(k, r);
}

// Lock order: ring_m_ before any shard lock; never two shard locks at once. The hot path takes
// one shard lock only. Pools are destroyed (which closes their idle connections) outside all locks.
//
// An entry is created by the first caller for its key (the leader) in state `creating`; only the
// leader changes it until it is `ready` or `failed`. Ready entries are linked into the CLOCK ring;
// eviction, invalidation and close take ring_m_, then the entry's shard lock, and erase it.
template <class Key, class Resolver, class Connector, class Pool, class Lease, class Eviction, class Flight,
          class Clock, class Sync, class Observer>
class registry_table {
public:
    using target_type = typename Resolver::target_type;
    using setup_type = typename Resolver::setup_type;
    using core_type = std::remove_pointer_t<decltype(pool_access::core(std::declval<Pool&>()))>;
    template <class T>
    using atomic = typename Sync::template atomic<T>;
    using mutex_type = typename Sync::mutex_type;

    /// One owner of a pool core (pool_core::add_owner): an entry's pool, or one being closed. The
    /// registry keeps cores, not pool objects (a pool object would cost an allocation per key);
    /// pool() hands out pool objects that share the core. The last owner closes the pool.
    class core_ref {
    public:
        core_ref() = default;
        explicit core_ref(core_type* adopted) noexcept : c_(adopted) {}
        core_ref(core_ref&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
        core_ref& operator=(core_ref&& o) noexcept {
            if (this != &o) {
                reset();
                c_ = std::exchange(o.c_, nullptr);
            }
            return *this;
        }
        ~core_ref() { reset(); }
        core_ref share() const noexcept {
            c_->add_owner();
            return core_ref(c_);
        }
        void reset() noexcept {
            if (core_type* c = std::exchange(c_, nullptr); c && c->drop_owner()) delete c;
        }
        core_type* get() const noexcept { return c_; }
        core_type* operator->() const noexcept { return c_; }
        explicit operator bool() const noexcept { return c_ != nullptr; }
        /// Gives up ownership without dropping it.
        [[nodiscard]] core_type* release() noexcept { return std::exchange(c_, nullptr); }

    private:
        core_type* c_ = nullptr;
    };

    registry_table(registry_options o, Resolver r, Connector c, const Clock& clock, Observer obs)
        : opt_(std::move(o)), resolver_(std::move(r)), connector_(std::move(c)), clock_(&clock),
          obs_(std::move(obs)), pool_context_(core_type::share(opt_.pool, connector_, clock, obs_)), shard_mask_(std::bit_ceil(opt_.shards) - 1),
          directory_(new std::atomic<std::uintptr_t>[shard_mask_ + 1]), shards_(new shard[shard_mask_ + 1]) {
        for (std::size_t i = 0; i <= shard_mask_; ++i) shards_[i].map.publish_to(directory_[i]);
        // Size every shard's table for max_pools up front (capped) when tables get large: growing
        // a shard rehashes it under its lock, and with keys spread evenly all shards rehash at
        // nearly the same key count — 64 stalls of ≈5 ms each at ≈786k keys in
        // BM_registry_growth_latency without this. Small tables grow as keys come (a rehash of
        // fewer than 1,024 nodes takes well under a millisecond): reserved ahead, 1,000 keys had 8
        // buckets each across 64 shards (64 KiB), and a lookup missed the L1 on its bucket 3 times
        // in 4 (docs/benchmarks.md, "Session 18").
        if constexpr (split_layout)
            pool_context_->set_split(sizeof(node_type), sizeof(cold));
        else if constexpr (embeds)
            pool_context_->set_prefix(cold_room + sizeof(node_type));
        if constexpr (Sync::thread_safe) rcu.prepare(); // (the kernel's membarrier registration: not in an acquire)
        const std::size_t expected = std::min<std::size_t>(opt_.max_pools, std::size_t{1} << 21);
        const bool huge = wants_huge_pages(opt_, expected, core_type::block_bytes(*pool_context_));
        if (split_layout || huge) {
            // (no pool is built yet) The pools' pairs come from it whatever their pages.
            pool_context_->arena = std::make_unique<huge_arena>(huge);
            pool_context_->arena->set_pairs(pool_context_->pairs);
        }
        if (huge) {
            // The tables' arrays, reserved below, are read by every hit: spares in huge pages for
            // them (a hit's bucket in a 4 KiB page missed the TLB; the pools' own spares come
            // with maintain()).
            pool_context_->arena->prepare_for((shard_mask_ + 1) * (table_type::bytes_for(0) + table_type::bytes_for(reserved_per_shard(expected))));
            for (std::size_t i = 0; i <= shard_mask_; ++i) shards_[i].map.use_arena(pool_context_->arena.get());
        }
        if (const std::size_t n = reserved_per_shard(expected); n > 0)
            for (std::size_t i = 0; i <= shard_mask_; ++i) shards_[i].map.reserve(n);
        if constexpr (Eviction::uses_size) {
            budget_ = new connection_budget(opt_.max_connections, Sync::thread_safe);
            pool_context_->budget = budget_; // (no pool is built yet)
            budget_->set_trim([this](const void* except, std::uint64_t& scanned) { return trim_one(except, scanned); });
        }
    }
    /// The keys each shard's table is sized for up front, of `expected` in all: none for small
    /// tables (see the constructor).
    std::size_t reserved_per_shard(std::size_t expected) const noexcept {
        const std::size_t per_shard = expected / (shard_mask_ + 1);
        return per_shard >= 1024 ? per_shard + per_shard / 4 : 0;
    }
    ~registry_table() {
        if (budget_) budget_->set_trim(nullptr); // pools (and leases) may outlive the table
    }

    registry_table(const registry_table&) = delete;
    registry_table& operator=(const registry_table&) = delete;

    const registry_options& options() const noexcept { return opt_; }
    time_point now() const { return clock_->now(); }

    // ---- acquire ---------------------------------------------------------------------------

    /// The fast path, inlined into the caller: the key's pool is ready and has an idle connection
    /// that passes checkout. Anything else (a missing key, no idle connection, a failed checkout)
    /// goes to acquire_slow(), which looks the key up again: a few instructions more on paths
    /// that create a pool or wait, and a fast path with nothing to set up for them.
    /// `ec`: a std::error_code for the error (cleared on success), or throw_errors{} to throw it.
    /// `when`: a deadline (with the caller's stop token: `st`), or a timeout or default_timeout{}
    /// (no token: `st` null, so the fast path has no token to build or destroy). `site`: the
    /// caller's, recorded for leak reports (leak_threshold) in the slot the lease holds.
    template <class When, class Err>
    KEYPOOL_ALWAYS_INLINE Lease acquire(const Key& key, When when, Err& ec, std::source_location site,
                                        std::stop_token* st = nullptr) noexcept(
        std::is_same_v<Err, std::error_code>) {
        constexpr bool throwing = std::is_same_v<Err, throw_errors>;
        static_assert(throwing || std::is_same_v<Err, std::error_code>);
        if constexpr (!throwing) {
            if (ec) ec.clear(); // (clear() calls the out-of-line std::system_category())
        }
        if constexpr (std::is_same_v<When, time_point>) { // (the timeout forms take no token)
            static_assert(!throwing);
            if (st && st->stop_requested()) [[unlikely]]
                return cancelled(ec), Lease{};
        }
        const std::size_t h = table_type::hash_of(key);
        const time_point now = clock_->coarse_now(); // one read: the entry's last use and the checkout
        auto& x = *pool_context_; // (held in a register: the member is read again after every store)
        read_section rs;
        popped p;
        const lookup found = pop_unlocked(h, key, now, rs, p, x);
        if (found == lookup::popped) [[likely]] {
            held<setup_type> setup = setup_of(*p.e);
            held<Key> k = key_of(*p.e, key);
            rs.leave();
            const auto r = p.core->checkout_detached(x, p.s, now, checkout_when(when), site); // (records the site)
            if (r == core_type::checkout_result::ok) [[likely]]
                return leased(p.core, p.s, std::move(k), setup, ec, x);
            if (r == core_type::checkout_result::delete_core) delete p.core;
        }
        rs.leave();
        if constexpr (throwing) return acquire_slow_throwing(key, when, found != lookup::missing, site);
        else return acquire_slow(key, when, st ? std::move(*st) : std::stop_token{}, ec, found != lookup::missing, site);
    }

    /// acquire_slow() for the throwing forms: the error thrown as `keypool::error`.
    template <class When>
    KEYPOOL_NOINLINE Lease acquire_slow_throwing(const Key& key, When when, bool counted,
                                                 std::source_location site) {
        std::error_code ec(0, category());
        Lease l = acquire_slow(key, when, {}, ec, counted, site);
        if (!l) throw_acquire_error(ec);
        return l;
    }

    /// acquire() when its fast path found no usable idle connection. `counted`: whether the
    /// fast path already counted its lookup as a hit.
    template <class When>
    KEYPOOL_NOINLINE Lease acquire_slow(const Key& key, When when, std::stop_token st, std::error_code& ec,
                                        bool counted, std::source_location site) noexcept {
        shard& sh = shard_for(key);
        std::optional<time_point> deadline;
        auto resolve_deadline = [&] {
            if (!deadline) {
                if constexpr (std::is_same_v<When, time_point>) deadline = when;
                else deadline = core_type::saturating_add(clock_->now(), checkout_when(when));
            }
            return *deadline;
        };
        for (;;) {
            const time_point now = clock_->coarse_now(); // one read: the entry's last use and the checkout
            std::unique_lock lk(sh.m);
            auto it = sh.map.find(key);
            if (it != sh.map.end() && it->second.st() == entry::state::ready && it->second.c().core) {
                entry& e = it->second;
                core_type* core = e.c().core.get();
                touch(e, now);
                if (!counted) ++sh.hits;
                counted = true;
                held<setup_type> setup = setup_of(e);
                if (auto* s = core->pop_idle(*pool_context_)) {
                    held<Key> k = key_of(e, key);
                    lk.unlock();
                    switch (core->checkout_detached(*pool_context_, s, now, checkout_when(when))) {
                    case core_type::checkout_result::ok: return leased(core, s, std::move(k), setup, ec, &site);
                    case core_type::checkout_result::delete_core: delete core; continue;
                    case core_type::checkout_result::retry: continue;
                    }
                }
                // Keep the pool alive while we wait on it, even if the entry is retired.
                core_ref pin = e.c().core.share();
                held<Key> k = key_of(e, key);
                lk.unlock();
                auto* s = pin->acquire(resolve_deadline(), st, ec);
                if (!s) {
                    if (ec == errc::key_not_found) forget_missing(key, pin.get(), ec);
                    return count_error(ec), Lease{};
                }
                return leased(pin.get(), s, std::move(k), setup, ec, &site);
            }
            counted = true; // a miss is counted where the entry is made
            if (!create_or_join(sh, lk, it, key, resolve_deadline(), st, ec)) return count_error(ec), Lease{};
        }
    }

    Lease try_acquire(const Key& key) noexcept {
        const std::size_t h = table_type::hash_of(key);
        const time_point now = clock_->coarse_now();
        auto& x = *pool_context_;
        read_section rs;
        popped p;
        const lookup found = pop_unlocked(h, key, now, rs, p, x);
        if (found == lookup::popped) {
            held<setup_type> setup = setup_of(*p.e);
            held<Key> k = key_of(*p.e, key);
            rs.leave();
            const auto r = p.core->checkout_detached(x, p.s, now);
            if (r == core_type::checkout_result::ok) {
                std::error_code ec;
                return leased(p.core, p.s, std::move(k), setup, ec, x);
            }
            if (r == core_type::checkout_result::delete_core) delete p.core;
        }
        rs.leave();
        return try_acquire_locked(key, found != lookup::missing);
    }

    /// try_acquire() when the lock-free step found no usable idle connection: under the shard's
    /// lock, also one held in another thread's cache word (pop_idle_or_steal). `counted`: whether
    /// the lookup was already counted as a hit.
    KEYPOOL_NOINLINE Lease try_acquire_locked(const Key& key, bool counted) noexcept {
        shard& sh = shard_for(key);
        for (;;) {
            const time_point now = clock_->coarse_now();
            std::unique_lock lk(sh.m);
            auto it = sh.map.find(key);
            if (it == sh.map.end() || it->second.st() != entry::state::ready || !it->second.c().core) return {};
            entry& e = it->second;
            touch(e, now);
            if (!counted) ++sh.hits;
            counted = true;
            core_type* core = e.c().core.get();
            held<setup_type> setup = setup_of(e);
            auto* s = core->pop_idle_or_steal(); // (may take the core's lock: shard, then core)
            if (!s) return {};
            held<Key> k = key_of(e, key);
            lk.unlock();
            switch (core->checkout_detached(*pool_context_, s, now)) {
            case core_type::checkout_result::ok: {
                std::error_code ec;
                return leased(core, s, std::move(k), setup, ec);
            }
            case core_type::checkout_result::delete_core: delete core; continue;
            case core_type::checkout_result::retry: continue;
            }
        }
    }

    std::shared_ptr<Pool> pool(const Key& key, time_point deadline, std::stop_token st, std::error_code& ec) {
        if (st.stop_requested()) return cancelled(ec), nullptr;
        shard& sh = shard_for(key);
        for (;;) {
            std::unique_lock lk(sh.m);
            auto it = sh.map.find(key);
            if (it != sh.map.end() && it->second.st() == entry::state::ready && it->second.c().core) {
                touch(it->second, clock_->coarse_now());
                return pool_access::share<Pool>(it->second.c().core.get(), *clock_);
            }
            if (!create_or_join(sh, lk, it, key, deadline, st, ec)) return nullptr;
        }
    }

    // ---- housekeeping ------------------------------------------------------------------------

    bool invalidate(const Key& key) {
        core_ref dead;
        shard& sh = shard_for(key);
        {
            std::lock_guard rl(ring_m_);
            std::lock_guard lk(sh.m);
            auto it = sh.map.find(key);
            if (it == sh.map.end() || it->second.st() == entry::state::creating) return false;
            if (it->second.st() == entry::state::ready) {
                leave_ring_locked(it->second);
                ++evicted_[static_cast<std::size_t>(evict_reason::invalidated)];
            }
            dead = it->second.c().core.take();
            sh.map.erase(it);
        }
        quiesce();
        reclaim(sh);
        notify_pool_evicted(obs_, key, evict_reason::invalidated);
        return true; // `dead` goes out of scope here, outside the locks: the pool closes
    }

    /// A connect said the key's target does not exist (`key_not_found`, e.g. no such database): no
    /// pool is kept for it. Unless the pool is in use (someone holds or awaits a connection, so the
    /// target may well exist), its entry becomes a remembered failure for `failure_backoff`, as a
    /// failed resolution does, and the pool retires (counted and reported as `invalidated`). Without
    /// this, every made-up tenant id would keep a pool, and under `evict::lru` push out real ones.
    void forget_missing(const Key& key, const core_type* pool, std::error_code why) {
        core_ref dead;
        std::unique_ptr<pending> pend(new (std::nothrow) pending);
        if (!pend) return; // out of memory: the pool stays, as it would while in use
        shard& sh = shard_for(key);
        {
            std::lock_guard rl(ring_m_);
            std::lock_guard lk(sh.m);
            auto it = sh.map.find(key);
            if (it == sh.map.end()) return;
            entry* e = &it->second;
            if (e->st() != entry::state::ready || e->c().core.get() != pool || e->c().core->busy()) return;
            leave_ring_locked(*e);
            ++evicted_[static_cast<std::size_t>(evict_reason::invalidated)];
            dead = e->c().core.take(); // closed outside the locks, after a grace period
            // A node in the pool's allocation must go with the pool: the failure is
            // remembered in a node of the table's own (which cannot throw here: out of memory,
            // the key is just dropped).
            if (e->embedded()) {
                try {
                    e = &embed_locked(sh, *e, nullptr);
                } catch (...) {
                    sh.map.erase(&table_type::node_of(*e));
                    e = nullptr;
                }
            }
            if (e) {
                e->set_st(entry::state::failed);
                pend->error = why;
                pend->failed_until = core_type::saturating_add(clock_->now(), opt_.failure_backoff);
                e->c().pend = std::move(pend);
            }
        }
        quiesce();
        reclaim(sh);
        notify_pool_evicted(obs_, key, evict_reason::invalidated);
    }

    std::size_t evict_idle() {
        if constexpr (!Eviction::uses_idle) {
            return 0;
        } else {
            if (!opt_.pool_idle_timeout) return 0;
            const auto idle = idle_test(clock_->coarse_now());
            // The candidates, one shard at a time under its lock alone; then retire_idle().
            std::vector<Key> candidates;
            for (std::size_t i = 0; i <= shard_mask_; ++i) {
                std::lock_guard lk(shards_[i].m);
                shards_[i].map.for_each([&](const node_type& n) {
                    if (idle(n.second)) candidates.push_back(n.first);
                });
            }
            return retire_idle(candidates, idle);
        }
    }

    /// reset_at::background: on the context all the registry's pools share (pool_core::context).
    void set_reset_signal(std::function<void()> f) noexcept { pool_context_->set_reset_signal(std::move(f)); }

    time_point maintain() {
        time_point due = time_point::max();
        const time_point now = clock_->now();
        // One walk for both: the pools idle eviction retires (as evict_idle(), the same walk's
        // candidates), and the others but those a pass found quiet, left until they next need
        // one (pool_core::skip_pass) unless no walk ran for so long that their notes may have
        // wrapped around.
        const auto last = time_point(duration(last_walk_.exchange(now.time_since_epoch().count(), std::memory_order_relaxed)));
        const bool fresh = now - last < std::chrono::hours(24);
        std::vector<core_ref> pools;
        bool walked = false;
        if constexpr (Eviction::uses_idle) {
            if (opt_.pool_idle_timeout) {
                walked = true;
                std::vector<Key> candidates;
                due = core_type::saturating_add(now, *opt_.pool_idle_timeout);
                const auto idle = idle_test(clock_->coarse_now());
                pools = live_pools([&](const node_type& n) {
                    if (idle(n.second)) return candidates.push_back(n.first), true;
                    return fresh && n.second.c().core->skip_pass(now, due);
                });
                retire_idle(candidates, idle);
            }
        }
        if (!walked)
            pools = live_pools([&](const node_type& n) { return fresh && n.second.c().core->skip_pass(now, due); });
        passes_.fetch_add(pools.size(), std::memory_order_relaxed);
        for (auto& p : pools) due = std::min(due, p->maintain());
        // Spare chunks in huge pages for the pools to come (registry_options::huge_pages): faulted
        // in here, off the acquire path, and only as many as room is left for.
        if (pool_context_->arena) pool_context_->arena->prepare(room_for_pools());
        return due;
    }

    /// The bytes the pools not yet built would take, up to max_pools.
    std::size_t room_for_pools() const {
        std::size_t live;
        {
            std::lock_guard rl(ring_m_);
            live = ring_.size();
        }
        const std::size_t left = opt_.max_pools > live ? opt_.max_pools - live : 0;
        const std::size_t block = core_type::block_bytes(*pool_context_);
        return left > SIZE_MAX / block ? SIZE_MAX : left * block;
    }

    void close() noexcept {
        std::vector<core_ref> dead;
        {
            std::lock_guard rl(ring_m_);
            closed_.store(true);
            for (std::size_t i = 0; i <= shard_mask_; ++i) {
                std::lock_guard lk(shards_[i].m);
                shards_[i].map.erase_if([&](auto& node) {
                    entry& e = node.second;
                    if (e.st() == entry::state::creating) {
                        wake_joiners_locked(e); // they see closed_; the leader finishes the entry
                        return false;
                    }
                    if (e.st() == entry::state::ready) leave_ring_locked(e);
                    if (e.c().core) dead.push_back(e.c().core.take());
                    return true;
                });
            }
            for (auto& t : by_target_) dead.push_back(std::move(t.second));
            by_target_.clear();
        }
        for (auto& p : dead) p->close(); // (shared pool objects handed out stay valid, closed)
        quiesce(); // before `dead` goes: lock-free lookups may still use them
        for (std::size_t i = 0; i <= shard_mask_; ++i) reclaim(shards_[i]);
    }

    /// close(), then the pools that left the registry earlier and are still open (leases out, or
    /// a pool object from pool(key)) close too, and this waits until every connection of every
    /// pool the registry made is closed, or `deadline`. True if they all are.
    bool close(time_point deadline) noexcept {
        close();
        std::vector<core_ref> left;
        {
            std::lock_guard lk(retired_->m);
            try {
                left.reserve(retired_->open.size());
            } catch (...) {
                return false; // cannot close them: not drained
            }
            // An owner each, so none is deleted while we close it (one whose last owner is going
            // is closing already: try_add_owner refuses it).
            for (core_type* c : retired_->open)
                if (c->try_add_owner()) left.emplace_back(c);
        }
        for (core_ref& c : left) c->close();
        left.clear(); // (outside retired_->m: a pool deleted now leaves it, under that lock)
        return pool_context_->wait_all_closed(deadline);
    }

    /// The leases out now from every pool the registry made that is still open (those that left
    /// it included): age and, with leak_threshold set, acquire site.
    std::vector<lease_report> leases_out() const {
        std::vector<lease_report> r;
        auto append = [&r](const core_type& c) {
            const std::vector<lease_report> v = c.leases_out();
            r.insert(r.end(), v.begin(), v.end());
        };
        const std::vector<core_ref> live = live_pools(); // (sorted by address)
        for (const core_ref& p : live) append(*p.get());
        std::lock_guard lk(retired_->m);
        for (const core_type* c : retired_->open)
            if (!std::ranges::binary_search(live, c, std::less<>{}, &core_ref::get)) append(*c);
        return r;
    }

    registry_stats stats() const {
        registry_stats r;
        {
            std::lock_guard rl(ring_m_);
            r.keys_active = ring_.size();
            r.pools_created = created_;
            r.evicted = evicted_;
        }
        // The live pools, one shard at a time (live_pools: no walk of all pools under ring_m_),
        // then those that left and are still open. A pool that leaves meanwhile is counted once:
        // the references keep it from closing (its counters would then move to `gone`), and the
        // open ones already counted are skipped.
        const std::vector<core_ref> live = live_pools();
        for (const core_ref& p : live) add(r.pools, p->stats());
        {
            std::lock_guard lk(retired_->m);
            for (const core_type* c : retired_->open)
                if (!std::ranges::binary_search(live, c, std::less<>{}, &core_ref::get))
                    add(r.pools, c->stats()), ++r.pools_draining; // left, still open
            add_counters(r.pools, retired_->gone);
        }
        r.pools_active = live.size();
        if (budget_) {
            r.evicted[static_cast<std::size_t>(evict_reason::size)] = budget_->trimmed();
            r.trim_scans = budget_->scans();
        }
        if constexpr (Sync::thread_safe)
            for (unsigned i = 0; i < hit_slots; ++i) r.hits += hits_[i].n.load(std::memory_order_relaxed);
        for (std::size_t i = 0; i <= shard_mask_; ++i) {
            std::lock_guard lk(shards_[i].m);
            r.hits += shards_[i].hits;
            r.misses += shards_[i].misses;
            r.joins += shards_[i].joins;
        }
        for (std::size_t i = 0; i < r.errors.size(); ++i) r.errors[i] = errors_[i].load(std::memory_order_relaxed);
        r.pool_passes = passes_.load(std::memory_order_relaxed);
        if (pool_context_->arena && pool_context_->arena->huge()) r.huge_page_bytes = pool_context_->arena->mapped_bytes();
        return r;
    }

private:
    struct joiner : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::safe_link>> {
        explicit joiner(const Clock& c) : ev(c) {}
        typename Clock::event ev;
    };
    using joiner_list = boost::intrusive::list<joiner>;
    /// What an entry needs only while its pool is being created or after that failed: kept out of
    /// the entry (8 bytes instead of 40 in every ready one).
    struct pending {
        joiner_list joiners;     // creating: callers waiting for the leader
        std::error_code error;   // failed: why, until failed_until
        time_point failed_until{};
    };

    /// An entry's pool: one owner of its core, read by lock-free lookups. Taken out (take()) under
    /// the shard's lock; the taker drops it only after a grace period (quiesce()), so a lookup that
    /// read the pointer just before may still use the core.
    class core_cell {
    public:
        core_cell() = default;
        core_cell(const core_cell&) = delete;
        core_cell& operator=(const core_cell&) = delete;
        ~core_cell() { (void)take(); }
        core_type* get() const noexcept { return c_.load(std::memory_order_acquire); }
        core_type* operator->() const noexcept { return get(); }
        explicit operator bool() const noexcept { return get() != nullptr; }
        core_ref share() const noexcept {
            core_type* c = get();
            c->add_owner();
            return core_ref(c);
        }
        void set(core_ref p) noexcept { c_.store(p.release(), std::memory_order_release); }
        [[nodiscard]] core_ref take() noexcept { return core_ref(c_.exchange(nullptr, std::memory_order_acq_rel)); }

    private:
        atomic<core_type*> c_{nullptr};
    };

    struct entry;
    // An entry in two parts. Its state lives in its hash-table node's link word (the table is
    // node-based, so the node never moves): the state (2 bits) and whether the node lives in its
    // pool's allocation (1 bit), in the word's low bits (key_table's value bits), so the entry
    // itself takes no room and the node is 16 bytes for an 8-byte key. The rest, which a hit on
    // a key's own pool never reads, lives where the node's address says (entry::c()): for a
    // node in its pool's record (embeds) at the start of the pool's body, so the node, the
    // idle-stack head and slot 0's header with the connector's hot part fill the record (where
    // the arena is not available: at the block's start, the line before the node's); for a node
    // of the table's own memory right after the node (key_table's Tail).
    // Lock-free lookups read the state and, once it is ready, core, setup and shared_key, which
    // do not change while the node is linked.
    struct cold {
        explicit cold(entry& e) noexcept : owner(&e) {}
        cold(const cold&) = delete;
        cold& operator=(const cold&) = delete;
        entry* const owner; // (the ring's way back: it links the cold parts)
        // For keys that share a pool (a hit's touch()): the CLOCK bit and the coarse last use.
        atomic<bool> referenced{true};
        // An embedded entry's pool is its own: hits stamp its slots, not the entry (pop_unlocked).
        // The CLOCK hand's note of the pool's use count (uses_mod32) at its last visit, under
        // ring_m_; last_used is brought up to the pool's last use by the idle walks (last_use).
        std::uint32_t seen_uses = 0;
        mutable atomic<duration::rep> last_used{0};
        core_cell core; // ready: the pool (an owner of its core); empty otherwise
        [[no_unique_address]] held<setup_type> setup{}; // ready: the route's per-lease setup
        struct no_share {};
        // Leases share it when the key is not copied into them (copy_is_plain).
        [[no_unique_address]] std::conditional_t<copy_is_plain<Key>, no_share, held<Key>> shared_key;
        boost::intrusive::list_member_hook<boost::intrusive::link_mode<boost::intrusive::safe_link>> hook;
        std::unique_ptr<pending> pend; // creating (flight::shared) and failed only
    };
    // The bytes before an embedded node that its cold part takes: whole lines, so the node starts
    // a line (the block does).
    static constexpr std::size_t cold_room = (sizeof(cold) + 63) / 64 * 64;
    struct entry {
        /// State changes are writes of the shard's lock holder; lock-free lookups that see
        /// `ready` (an acquire load) see the pool and setup published before it.
        enum class state : std::uint8_t { creating, ready, failed };
        static constexpr std::uintptr_t state_bits = 3, in_pool_bit = 4;
        static_assert(in_pool_bit < (std::uintptr_t{1} << 3)); // (key_table's value_bits)
        /// `in_pool`: the node lives in its pool's allocation (see embeds); its cold part goes
        /// before it, else after it. State `creating`.
        explicit entry(bool in_pool) {
            node().set_bits(in_pool ? in_pool_bit : 0);
            ::new (static_cast<void*>(&c())) cold(*this);
        }
        entry(const entry&) = delete;
        entry& operator=(const entry&) = delete;
        ~entry() { c().~cold(); }
        state st() const noexcept { return static_cast<state>(node().bits() & state_bits); }
        void set_st(state s) noexcept { node().set_bits((node().bits() & in_pool_bit) | static_cast<std::uintptr_t>(s)); }
        bool embedded() const noexcept { return (node().bits() & in_pool_bit) != 0; }
        /// The cold part: the entry's fields a hit on a key's own pool does not read.
        cold& c() const noexcept {
            unsigned char* const n = reinterpret_cast<unsigned char*>(&node());
            if constexpr (split_layout) // (the body's start: the chunk's layout says where)
                if (embedded()) return *std::launder(reinterpret_cast<cold*>(pair_layout::of(n).body_of(n)));
            return *std::launder(reinterpret_cast<cold*>(embedded() ? n - cold_room : static_cast<unsigned char*>(table_type::tail_of(&node()))));
        }
        auto& node() const noexcept { return table_type::node_of(const_cast<entry&>(*this)); }
    };
    struct shard;
    /// An entry taken out of the table: its key (for the observer), its pool, which closes when
    /// the last reference goes (outside all locks, after a grace period), and its shard.
    struct retired {
        Key key;
        core_ref pool;
        shard* from;
    };

    struct is_embedded {
        bool operator()(const entry& e) const noexcept { return e.embedded(); }
    };
    using table_type = key_table<Key, entry, boost::hash<Key>, std::equal_to<Key>, Sync::thread_safe, is_embedded, cold>;
    using node_type = typename table_type::node;

    /// A ready key's node lives in its pool's block, in the record before the idle-stack head,
    /// and the rest of its entry (cold) at the start of the block's body (pool_core's block
    /// layout), when the key's pool is its own: routes without a setup (with one, keys share
    /// pools by target). Then the node — link and key, the state in the link's low bits: 16
    /// bytes for an 8-byte key — the head and slot 0's header with the connector's hot part fill
    /// the record, 64 bytes, side by side with other keys' records: a hit reads and writes that
    /// line of the key and nothing else of it (docs/benchmarks.md, "Session 31"). The node is
    /// built when the pool is published, in place of the `creating` node that
    /// the leader inserted (key_table::replace), and destroyed by the table's reclaim after a
    /// grace period, before the registry drops its reference on the pool (every path that takes
    /// an entry's pool unlinks the node, waits for the grace period and reclaims before letting
    /// the pool go); the block is freed with the pool.
    static constexpr bool embeds = std::is_same_v<setup_type, no_setup> && alignof(node_type) <= 8;
    /// Where an embedded node goes: into its pool's record, with the idle-stack head and slot 0's
    /// header, and the rest of its entry at the start of the pool's body (pool_core's split
    /// layout, from the registry's arena: every key's hot bytes in records side by side); where
    /// the arena is not available, at the front of the pool's one allocation.
    static constexpr bool split_layout = embeds && huge_arena::supported() && core_type::can_split() &&
                                         alignof(cold) <= 8 && sizeof(node_type) + sizeof(typename core_type::slot) <= 4096;

    struct alignas(64) shard {
        mutable mutex_type m;
        table_type map;
        std::uint64_t hits = 0, misses = 0, joins = 0; // (hits on the locked paths; count_hit's are apart)
    };

    /// The lock-free lookup's read-side section (nothing for sync::none: no other thread).
    using read_section = rcu_section_if<Sync::thread_safe>;

    /// Hits of lock-free lookups, one counter per thread (by its rcu record's index), each on its
    /// own line and written only by its thread: no read-modify-write and no line shared between
    /// threads on the fast path. Threads past the first hit_slots - 1 share the last counter.
    static constexpr unsigned hit_slots = 64;
    struct alignas(64) hit_counter {
        atomic<std::uint64_t> n{0};
    };
    KEYPOOL_ALWAYS_INLINE void count_hit(shard& sh, const read_section& rs) noexcept {
        if constexpr (!Sync::thread_safe) {
            (void)rs;
            ++sh.hits;
        } else {
            (void)sh;
            if (const unsigned i = rs.index(); i < hit_slots - 1) [[likely]]
                (void)owner_increment(hits_[i].n);
            else
                hits_[hit_slots - 1].n.fetch_add(1, std::memory_order_relaxed);
        }
    }

    /// After unlinking entries (or taking their pools) under the locks: waits for a grace period,
    /// so no lock-free lookup still uses them; reclaim() then destroys a shard's erased nodes.
    /// Called with no lock held and outside any read section; the caller drops the pools it took
    /// after.
    void quiesce() noexcept {
        if constexpr (Sync::thread_safe) rcu.synchronize();
    }
    static void reclaim(shard& sh) noexcept {
        std::lock_guard lk(sh.m);
        sh.map.reclaim();
    }
    void quiesce_retired(const std::vector<retired>& dead) noexcept {
        if (dead.empty()) return;
        quiesce();
        for (const retired& d : dead) reclaim(*d.from); // (a shard twice: nothing left the second time)
    }

    using ring_type =
        boost::intrusive::list<cold,
                               boost::intrusive::member_hook<cold, decltype(cold::hook), &cold::hook>,
                               boost::intrusive::constant_time_size<true>>;

    /// A key's shard: the top bits of its mixed hash, whose bits below pick its bucket in the
    /// shard's table (shards ≤ 4096: key_table::split_bits). The lock-free lookup computes the
    /// hash once for both (shard_index, which also indexes directory_).
    shard& shard_for(const Key& k) const noexcept { return shard_at(table_type::hash_of(k)); }
    shard& shard_at(std::size_t mixed_hash) const noexcept { return shards_[shard_index(mixed_hash)]; }
    std::size_t shard_index(std::size_t mixed_hash) const noexcept {
        return (mixed_hash >> (64 - table_type::split_bits)) & shard_mask_;
    }

    /// How stale an entry's last use may get before touch() stores a newer one: 1/32 of
    /// pool_idle_timeout (28 s of the default 15 min). A hit on a shared pool then writes
    /// nothing of the key's entry but every ~idle_timeout/32 (the entry is shared by every core
    /// that looks the key up; its pool's writes go to the pool's lines), and the branch is not taken on nearly every
    /// hit (a comparison with the coarse tick itself was taken about once per tick at 10,000
    /// keys, a mispredict). evict_idle() allows for the staleness: a pool is retired between
    /// pool_idle_timeout and pool_idle_timeout × 33/32 after its last acquire, never before.
    /// Without a timeout the last use is never read, and never stored.
    static duration::rep touch_step_of(const registry_options& o) noexcept {
        return o.pool_idle_timeout ? (*o.pool_idle_timeout / 32).count() : duration::max().count();
    }
    /// Whether an entry is idle enough for idle eviction at `now`: ready, its pool unused for
    /// pool_idle_timeout and not busy (that last check takes the pool's lock).
    auto idle_test(time_point now) const noexcept {
        return [now, limit = idle_limit()](const entry& e) {
            return e.st() == entry::state::ready && e.c().core && now - last_use(e, now, limit) >= limit && !e.c().core->busy();
        };
    }
    /// The entry's last use as idle eviction sees it: the stored one (touch), or, once that is
    /// `limit` old, for an entry whose pool is its own (hits stamp only the pool's slots), the
    /// pool's last use if later (pool_core::last_use: not maintain()'s connects), stored
    /// back: a busy key's slots are read once a timeout, not on every walk.
    static time_point last_use(const entry& e, time_point now, duration limit) noexcept {
        const time_point stored(duration(e.c().last_used.load(std::memory_order_relaxed)));
        if (!e.embedded() || now - stored < limit) return stored;
        const time_point used = e.c().core->last_use();
        if (used <= stored) return stored;
        e.c().last_used.store(used.time_since_epoch().count(), std::memory_order_relaxed);
        return used;
    }
    /// The CLOCK hand's visit (under ring_m_): whether the entry's own pool had a checkout since
    /// the hand's last visit (its use count moved), noted for the next.
    static bool used_since_hand(entry& e) noexcept {
        if (!e.embedded()) return false;
        const std::uint32_t u = e.c().core->uses_mod32();
        return std::exchange(e.c().seen_uses, u) != u;
    }

    /// evict_idle()'s second half: each candidate checked again and retired under ring_m_, a
    /// batch at a time (no lock is held for a scan of all pools: a creation, which takes ring_m_,
    /// waits for a shard's scan or a batch at most).
    template <class Idle>
    std::size_t retire_idle(const std::vector<Key>& candidates, const Idle& idle) {
        std::vector<retired> dead;
        constexpr std::size_t batch = 64;
        for (std::size_t from = 0; from < candidates.size(); from += batch) {
            std::lock_guard rl(ring_m_);
            for (std::size_t i = from; i < std::min(candidates.size(), from + batch); ++i) {
                entry* e = nullptr;
                {
                    shard& sh = shard_for(candidates[i]);
                    std::lock_guard lk(sh.m);
                    auto it = sh.map.find(candidates[i]);
                    if (it != sh.map.end() && idle(it->second)) e = &it->second;
                }
                // (a ready entry leaves its shard only under ring_m_, held: e stays)
                if (e) dead.push_back(unlink_locked(*e, evict_reason::idle));
            }
        }
        quiesce_retired(dead);
        for (auto& d : dead) notify_pool_evicted(obs_, d.key, evict_reason::idle);
        return dead.size();
    }

    /// How long after the stored last use evict_idle() retires an entry (pool_idle_timeout set):
    /// the timeout plus the staleness touch() allows (the stored use lags the last acquire by
    /// less than a step), saturated at duration::max().
    duration idle_limit() const noexcept {
        const duration timeout = *opt_.pool_idle_timeout, step(touch_step_);
        return timeout > duration::max() - step ? duration::max() : timeout + step;
    }

    /// Marks the entry recently used: the CLOCK reference bit and the coarse last-use time for
    /// idle eviction, each stored only when it changes (the bit is clear) or has grown stale (by
    /// touch_step_), so that a hit's stores are rare and a key's entry stays shared. The fast
    /// path calls it for entries whose pool is shared (routes with a setup) only: a key's own pool
    /// records its use in its slots (last_use, used_since_hand).
    KEYPOOL_ALWAYS_INLINE void touch(entry& e, time_point coarse_now) noexcept {
        const auto now = coarse_now.time_since_epoch().count();
        if constexpr (Eviction::uses_lru) {
            if (!e.c().referenced.load(std::memory_order_relaxed)) [[unlikely]]
                e.c().referenced.store(true, std::memory_order_relaxed);
        }
        if constexpr (Eviction::uses_idle) {
            if (now - e.c().last_used.load(std::memory_order_relaxed) >= touch_step_) [[unlikely]]
                e.c().last_used.store(now, std::memory_order_relaxed);
        }
        (void)now;
    }

    /// What the lock-free step of an acquire found: no ready pool for the key (`missing`), a ready
    /// pool without an idle connection for us (`empty`; counted as a hit), or one (`popped`).
    enum class lookup { missing, empty, popped };
    struct popped {
        core_type* core;
        typename core_type::slot* s;
        entry* e;
    };

    /// The first step of acquire() and try_acquire(), inlined, no lock: the key's ready pool and
    /// an idle connection popped from it (into `p`). The caller's read section `rs` keeps the
    /// node, and the pool core it names, from being freed while it reads them (detail/rcu.hpp);
    /// once the caller has copied the entry's key and setup it may leave, since the connection it
    /// holds keeps the core alive. Writes nothing shared but the pool's idle stack.
    /// `h`: hash_of(key), which picks the shard and the bucket; `x`: the pools' context
    /// (*pool_context_, which the caller holds for the whole fast path).
    KEYPOOL_ALWAYS_INLINE lookup pop_unlocked(std::size_t h, const Key& key, time_point now, const read_section& rs,
                                              popped& p, typename core_type::context& x) noexcept {
        shard& sh = shard_at(h);
        auto it = table_type::find_shared_at(directory_[shard_index(h)], key, h);
        if (!it) [[unlikely]]
            return lookup::missing;
        entry& e = it->second;
        core_type* core = nullptr;
        typename core_type::head_type* head = nullptr; // (when known: else the pop finds it)
        // One load for the state and where the node lives (the node's link word).
        const std::uintptr_t bits = it->bits();
        if (embeds && bits == (entry::in_pool_bit | static_cast<std::uintptr_t>(entry::state::ready))) [[likely]] {
            // The key's own pool, whose record holds the node: the core's address follows from
            // the node's, and nothing of the entry's cold part is read. The node, the idle-stack
            // head and slot 0's header with the connector's hot part fill the record, the only
            // line of the key's a hit reads or writes. The checkout stamps the slot, which is
            // what eviction reads (last_use, used_since_hand). (While the node is linked and
            // ready, its pool is the registry's: every path that takes the pool unlinks the node
            // and lets a grace period pass before it lets the pool go.)
            core = home_of(&*it, x);
            if constexpr (split_layout) head = &core_type::head_in(&*it, x);
        } else {
            if ((bits & entry::state_bits) != static_cast<std::uintptr_t>(entry::state::ready)) [[unlikely]]
                return lookup::missing;
            core = e.c().core.get();
            if (!core) [[unlikely]] // (empty once forget_missing or close took it)
                return lookup::missing;
            core_type::prefetch(core, x);
            touch(e, now);
        }
        count_hit(sh, rs);
        typename core_type::slot* s = core->pop_idle(x, head);
        if (!s) [[unlikely]]
            return lookup::empty;
        p = {core, s, &e};
        return lookup::popped;
    }

    /// The lease on `s` (checked out of `core`) for key `k`, with the route's setup run on it: an
    /// empty lease and `ec` set if the setup failed (with throw_errors, the error thrown). Built
    /// once, in the caller's return slot. `site`: where it was acquired (leak_threshold), or null.
    Lease leased(core_type* core, typename core_type::slot* s, held<Key> k, const held<setup_type>& setup,
                 std::error_code& ec, const std::source_location* site = nullptr) noexcept {
        return leased(core, s, std::move(k), setup, ec, *pool_context_, site);
    }
    template <class Err>
    Lease leased(core_type* core, typename core_type::slot* s, held<Key> k, const held<setup_type>& setup, Err& ec,
                 typename core_type::context& x, const std::source_location* site = nullptr) noexcept(
        std::is_same_v<Err, std::error_code>) {
        if (site && x.leak_threshold) [[unlikely]]
            core->record_site(s, *site);
        Lease l(lease_access::make(core, s, x), std::move(k));
        if constexpr (std::is_same_v<Err, throw_errors>) {
            if constexpr (!std::is_same_v<setup_type, no_setup>) {
                std::error_code pec;
                prepare(l, setup, pec);
                if (!l) throw_acquire_error(pec);
            }
            (void)ec;
        } else {
            prepare(l, setup, ec);
        }
        return l;
    }

    /// What a checkout (a timed reset) and the slow path get for `when`.
    template <class When>
    KEYPOOL_ALWAYS_INLINE auto checkout_when(const When& when) const noexcept {
        if constexpr (std::is_same_v<When, default_timeout>) return opt_.pool.acquire_timeout;
        else return when;
    }

    /// Runs the route's per-lease setup on `l`'s connection; on failure `l` ends empty and `ec`
    /// says why.
    void prepare(Lease& l, const held<setup_type>& held_setup, std::error_code& ec) noexcept {
        if constexpr (!std::is_same_v<setup_type, no_setup>) {
            const setup_type& setup = held_value<setup_type>(held_setup);
            bool ok = false;
            std::error_code pec;
            try {
                ok = connector_.prepare(*l, setup, pec);
            } catch (...) {
                ok = false;
            }
            if (!ok) {
                ec = pec ? pec : make_error_code(errc::broken_connection);
                // The server refused the setup (no such role, not a member): the connection is
                // fine and goes back; the reset before its next use undoes whatever the setup
                // began. Anything else may have broken the connection: close it.
                if (ec == errc::key_not_found || ec == errc::authentication_failed || ec == errc::invalid_config)
                    l.release();
                else
                    l.discard();
                l = Lease{}; // empty, its key too
                count_error(ec);
            }
        } else {
            (void)l, (void)held_setup, (void)ec;
        }
    }

    /// A caller already told to stop: `cancelled` at once, before any lookup (no pool is made or
    /// joined, no idle connection taken), counted as a failed acquire.
    KEYPOOL_NOINLINE void cancelled(std::error_code& ec) noexcept {
        ec = make_error_code(errc::cancelled);
        count_error(ec);
    }

    void count_error(std::error_code ec) noexcept {
        if (ec.category() == category()) errors_[static_cast<std::size_t>(ec.value()) & 15].fetch_add(1, std::memory_order_relaxed);
    }

    void wake_joiners_locked(entry& e) noexcept {
        if (!e.c().pend) return;
        while (!e.c().pend->joiners.empty()) {
            joiner& j = e.c().pend->joiners.front();
            e.c().pend->joiners.pop_front();
            j.ev.set();
        }
    }

    /// The key has no ready entry: create it (as leader), join the creation in flight, or return the
    /// remembered failure. Entered with the shard lock held; returns with it released. Returns
    /// false with `ec` set on failure; true means "look the key up again".
    template <class It>
    bool create_or_join(shard& sh, std::unique_lock<mutex_type>& lk, It it, const Key& key, time_point deadline,
                        std::stop_token& st, std::error_code& ec) {
        if (closed_.load()) return ec = make_error_code(errc::closed), false;
        if (it != sh.map.end()) {
            entry& e = it->second;
            if (e.st() == entry::state::failed) {
                if (clock_->now() < e.c().pend->failed_until) return ec = e.c().pend->error, false;
                sh.map.erase(it); // the backoff window is over: try again
                it = sh.map.end();
            } else if (e.st() == entry::state::creating) {
                if constexpr (Sync::thread_safe) return join(sh, lk, e, deadline, st, ec);
                else return ec = make_error_code(errc::would_deadlock), false; // re-entered from the resolver
            }
        }
        ++sh.misses;
        if constexpr (Flight::single) {
            auto pend = std::make_unique<pending>(); // before the insert: nothing to undo if it throws
            entry& e = insert_locked(sh, key);
            e.c().pend = std::move(pend);
            lk.unlock();
            return lead(sh, e, key, st, ec);
        } else {
            lk.unlock();
            return build_unshared(sh, key, ec);
        }
    }

    bool join(shard& sh, std::unique_lock<mutex_type>& lk, entry& e, time_point deadline, std::stop_token& st,
              std::error_code& ec) {
        ++sh.joins;
        joiner j(*clock_);
        e.c().pend->joiners.push_back(j); // creating: it has one
        lk.unlock();
        {
            std::stop_callback cb(st, [&] { j.ev.set(); });
            j.ev.wait_until(deadline);
        }
        lk.lock();
        if (j.is_linked()) e.c().pend->joiners.erase(e.c().pend->joiners.iterator_to(j)); // not woken by the leader
        lk.unlock();
        if (closed_.load()) return ec = make_error_code(errc::closed), false;
        if (st.stop_requested()) return ec = make_error_code(errc::cancelled), false;
        if (clock_->now() >= deadline) return ec = make_error_code(errc::timeout), false;
        return true;
    }

    /// Resolves the key and builds (or shares) its pool. The entry is ours until we publish it.
    bool lead(shard& sh, entry& e, const Key& key, std::stop_token& st, std::error_code& ec) {
        std::error_code rec;
        std::optional<route<target_type, setup_type>> r;
        try {
            if constexpr (requires { resolver_.resolve(key, st, rec); })
                r = resolver_.resolve(key, st, rec);
            else
                r = resolver_.resolve(key, rec);
        } catch (...) {
            r.reset();
            rec = make_error_code(errc::invalid_config);
        }
        if (!r && !rec) rec = make_error_code(errc::key_not_found);
        core_ref p;
        entry* done = &e; // the key's entry once published: e, or the node embeds puts in its place
        {
            std::lock_guard rl(ring_m_);
            if (r && !closed_.load()) {
                try {
                    p = shared_pool_locked(r->target);
                } catch (const error& x) {
                    rec = x.code();
                } catch (...) {
                    rec = make_error_code(errc::invalid_config);
                }
            }
            std::lock_guard lk(sh.m);
            if (p) {
                if constexpr (embeds) {
                    wake_joiners_locked(e); // they look the key up again and find the new node
                    done = &embed_locked(sh, e, p.get());
                }
                publish_locked(*done, std::move(p), std::move(r->setup));
                ++created_;
            } else if (rec == errc::cancelled && st.stop_requested()) {
                // The leader gave up; the joiners must not fail for it: drop the entry so the next
                // of them becomes the leader.
                wake_joiners_locked(e);
                sh.map.erase(key);
                return ec = rec, false;
            } else {
                e.set_st(entry::state::failed);
                e.c().pend->error = closed_.load() ? make_error_code(errc::closed) : rec;
                e.c().pend->failed_until = core_type::saturating_add(clock_->now(), opt_.failure_backoff);
            }
            wake_joiners_locked(*done);
            if (done->st() == entry::state::failed) return ec = done->c().pend->error, false;
            done->c().pend.reset(); // ready: no joiners left
        }
        notify_pool_created(obs_, key);
        evict_over_cap(done);
        return true;
    }

    bool build_unshared(shard& sh, const Key& key, std::error_code& ec) {
        std::error_code rec;
        auto r = resolver_.resolve(key, rec);
        if (!r) return ec = rec ? rec : make_error_code(errc::key_not_found), false;
        entry* mine = nullptr;
        {
            std::lock_guard rl(ring_m_);
            if (closed_.load()) return ec = make_error_code(errc::closed), false;
            auto p = make_pool(r->target);
            ++created_;
            std::lock_guard lk(sh.m);
            if (sh.map.find(key) != sh.map.end()) return true; // another caller won: ours closes unused
            entry& e = insert_locked(sh, key, embeds ? p.get() : nullptr);
            publish_locked(e, std::move(p), std::move(r->setup));
            mine = &e;
        }
        notify_pool_created(obs_, key);
        evict_over_cap(mine);
        return true;
    }

    /// Where a key's node is built: in the front of `home`'s allocation, after its entry's cold
    /// part (cold_room), or (nullptr) in the table's own memory.
    void* node_memory(core_type* home) const noexcept {
        if (!home) return nullptr;
        if constexpr (split_layout) return core_type::record_at(home, *pool_context_);
        return static_cast<unsigned char*>(core_type::front_at(home, *pool_context_)) + cold_room;
    }
    /// The core whose allocation holds node `n` (a node in its pool's allocation; an address
    /// only: nothing is read).
    static core_type* home_of(const node_type* n, const typename core_type::context& x) noexcept {
        if constexpr (split_layout) return core_type::with_record(n, x);
        return core_type::after_front(reinterpret_cast<const unsigned char*>(n) - cold_room, x);
    }

    /// Under the shard lock: a new entry (state `creating`) in the key's node; built in the
    /// front of `home`'s allocation (embeds) if given, else in the table's own memory.
    entry& insert_locked(shard& sh, const Key& key, core_type* home = nullptr) {
        auto node = sh.map.emplace(key, node_memory(home), home != nullptr);
        if constexpr (!copy_is_plain<Key>) node->second.c().shared_key = hold(key);
        return node->second;
    }

    /// Under the shard lock (embeds): `e`'s key gets a new node at the front of `home`'s
    /// allocation (or, for nullptr, in the table's memory), in `e`'s place in the chain; `e` is
    /// retired (destroyed by a reclaim after a grace period) and must hold no pool, no ring link
    /// and no joiner. Returns the new entry, state `creating`.
    entry& embed_locked(shard& sh, entry& e, core_type* home) {
        [[maybe_unused]] auto shared_key = e.c().shared_key; // (e may be gone once replaced: sync::none)
        auto node = sh.map.replace(&table_type::node_of(e), node_memory(home), home != nullptr);
        if constexpr (!copy_is_plain<Key>) node->second.c().shared_key = std::move(shared_key);
        return node->second;
    }

    /// What a lease of `e`, found for `key`, holds for its key (under the shard lock): a plain key
    /// is the caller's (equal, and already in a register), any other the entry's shared copy.
    /// The entry's per-lease setup (ready entries): nothing to read for routes without one (a
    /// hit then reads nothing of the entry's cold part, whose address an embedded node's record
    /// gives only through its chunk's layout).
    static held<setup_type> setup_of(const entry& e) noexcept {
        if constexpr (std::is_same_v<setup_type, no_setup>) return (void)e, held<setup_type>{};
        else return e.c().setup;
    }
    static held<Key> key_of(const entry& e, const Key& key) noexcept {
        if constexpr (copy_is_plain<Key>) return (void)e, key;
        else return e.c().shared_key;
    }

    /// Under ring_m_ and the shard lock: the entry becomes ready with its pool and joins the ring.
    void publish_locked(entry& e, core_ref p, setup_type setup) {
        e.c().core.set(std::move(p));
        e.c().setup = hold(std::move(setup));
        e.set_st(entry::state::ready);
        e.c().last_used.store(clock_->coarse_now().time_since_epoch().count(), std::memory_order_relaxed);
        ring_.push_back(e.c());
    }

    core_ref make_pool(const target_type& target) {
        Pool p(shared_context_tag{}, target, pool_context_); // validates
        return core_ref(pool_access::release_core(p));
    }

    /// evict::size: closes an idle connection (its pool's least recently used) of the first pool
    /// from the CLOCK hand that has one, other than `except`. A pool passed over (no idle
    /// connection: all leased) moves behind the others, as a referenced pool does under CLOCK, so
    /// the next walk starts where this one stopped: over a run of trims each pool is looked at
    /// about once per lap, not once per trim. Called with no pool lock held.
    bool trim_one(const void* except, std::uint64_t& scanned) {
        std::lock_guard rl(ring_m_);
        bool found = false;
        for (std::size_t n = ring_.size(); n > 0 && !found; --n) {
            entry& e = *ring_.front().owner;
            ++scanned;
            if (e.c().core.get() != except && e.c().core->close_one_idle()) // counted as the pool's close_reason::trimmed
                found = true;
            else
                ring_.splice(ring_.end(), ring_, ring_.begin());
        }
        return found;
    }

    /// A pool for `target`: the live one other keys already share, or a new one.
    core_ref shared_pool_locked(const target_type& target) {
        if constexpr (!std::is_same_v<setup_type, no_setup>) {
            // Keys differ only by their setup: they share the target's physical pool. by_target_
            // lists it as an owner that does not keep it open (set_listed): the last key's entry
            // (or pool object handed out) to go closes it, and the listing is dropped here.
            for (auto it = by_target_.begin(); it != by_target_.end();) {
                if (it->first == target && it->second->try_add_owner()) return core_ref(it->second.get());
                if (it->first == target || !it->second->owned())
                    it = by_target_.erase(it); // closed, nobody else owns it: deleted here
                else
                    ++it;
            }
            auto p = make_pool(target);
            p->set_listed();
            by_target_.emplace_back(target, p.share());
            return p;
        } else {
            return make_pool(target);
        }
    }

    /// Under ring_m_: takes a ready entry out of the ring and its shard.
    retired unlink_locked(entry& e, evict_reason why) {
        leave_ring_locked(e);
        ++evicted_[static_cast<std::size_t>(why)];
        auto& node = table_type::node_of(e);
        shard& sh = shard_for(node.first);
        std::lock_guard lk(sh.m);
        retired r{node.first, e.c().core.take(), &sh};
        sh.map.erase(&node);
        return r;
    }

    /// CLOCK: sweep the ring from the hand, giving referenced or busy pools a second chance, and
    /// retire the first that has neither, until the ring is within max_pools. Referenced: the bit
    /// touch() sets, or for a key's own pool a checkout since the hand's last visit
    /// (used_since_hand: max_size slot reads). Amortised O(1) steps: each takes a second chance
    /// only an acquire gives again. After two full turns a busy pool is
    /// retired anyway (its leases finish first). `fresh`, the entry just created, is never chosen:
    /// its creator is about to use it.
    void evict_over_cap(entry* fresh) {
        if constexpr (Eviction::uses_lru) {
            std::vector<retired> dead;
            {
                std::lock_guard rl(ring_m_);
                std::size_t steps = 0;
                while (ring_.size() > opt_.max_pools) {
                    entry& e = *ring_.front().owner;
                    const bool last_resort = steps++ > 2 * ring_.size();
                    const bool used = used_since_hand(e);
                    if (&e == fresh ||
                        (!last_resort && (e.c().referenced.load(std::memory_order_relaxed) || used || e.c().core->busy()))) {
                        e.c().referenced.store(false, std::memory_order_relaxed);
                        ring_.splice(ring_.end(), ring_, ring_.begin()); // advance the hand
                        continue;
                    }
                    dead.push_back(unlink_locked(e, evict_reason::lru));
                }
            }
            quiesce_retired(dead);
            for (auto& d : dead) notify_pool_evicted(obs_, d.key, evict_reason::lru);
        }
    }

    struct no_skip {
        bool operator()(const node_type&) const noexcept { return false; }
    };
    /// A reference to every ready key's pool, each once (keys with a setup share pools), sorted
    /// by address, but those whose node `skip(node)` says to leave out (asked under the shard's
    /// lock, before a reference is taken). Taken one shard at a time under its lock alone (not
    /// ring_m_, which a creation takes: at 1e6 keys a walk of the ring under it held creations
    /// up for hundreds of ms).
    template <class Skip = no_skip>
    std::vector<core_ref> live_pools(Skip skip = {}) const {
        std::vector<core_ref> v;
        {
            std::lock_guard rl(ring_m_);
            v.reserve(ring_.size() + ring_.size() / 8); // (not grown under a shard's lock: at 1e6 keys a copy of 8 MB)
        }
        for (std::size_t i = 0; i <= shard_mask_; ++i) {
            std::lock_guard lk(shards_[i].m);
            shards_[i].map.for_each([&](const node_type& n) {
                if (n.second.st() == entry::state::ready && n.second.c().core && !skip(n))
                    v.push_back(n.second.c().core.share());
            });
        }
        std::ranges::sort(v, std::less<>{}, &core_ref::get);
        if constexpr (!embeds) { // (a key of its own per pool otherwise)
            const auto dup = std::ranges::unique(v, {}, &core_ref::get);
            v.erase(dup.begin(), dup.end());
        }
        return v;
    }

    static void add(pool_stats& a, const pool_stats& b) {
        a.size += b.size, a.idle += b.idle, a.in_use += b.in_use, a.connecting += b.connecting;
        a.waiters += b.waiters, a.peak_size = std::max(a.peak_size, b.peak_size);
        a.peak_waiters = std::max(a.peak_waiters, b.peak_waiters);
        add_counters(a, b);
    }

    /// Under ring_m_: the ready entry `e` leaves the ring. Its pool's counters stay in stats()
    /// (retired_), so the summed counters do not go down.
    void leave_ring_locked(entry& e) noexcept {
        ring_.erase(ring_.iterator_to(e.c()));
        if (core_type* c = e.c().core.get()) retired_->adopt(*c);
    }

    const registry_options opt_;
    Resolver resolver_;
    Connector connector_;
    const Clock* clock_;
    [[no_unique_address]] Observer obs_;
    const duration::rep touch_step_ = touch_step_of(opt_);
    const typename core_type::shared_context pool_context_; // one for every pool: options, connector, clock, observer, budget
    std::size_t shard_mask_; // shards rounded up to a power of two, minus one
    // The shards' bucket words side by side (key_table::publish_to), read by the lock-free lookup:
    // 64 shards' in 512 bytes that stay cached, where each word on its shard's own line missed
    // the L1 on about one hit in eight at 1,000 keys (docs/benchmarks.md, "Session 18").
    // Declared before the shards: their tables read their words until they are destroyed.
    std::unique_ptr<std::atomic<std::uintptr_t>[]> directory_;
    std::unique_ptr<shard[]> shards_;
    std::unique_ptr<hit_counter[]> hits_{Sync::thread_safe ? new hit_counter[hit_slots] : nullptr};

    boost::intrusive_ptr<connection_budget> budget_; // evict::size only
    // Pools that left the ring but are open, and the counters of those gone (shared with them).
    const boost::intrusive_ptr<typename core_type::retired_list> retired_{new typename core_type::retired_list};
    mutable mutex_type ring_m_;
    ring_type ring_;
    std::vector<std::pair<target_type, core_ref>> by_target_; // role-switch routes: shared pools
    atomic<bool> closed_{false}; // set once, under ring_m_
    std::uint64_t created_ = 0;
    std::array<std::uint64_t, evict_reason_count> evicted_{};
    std::array<atomic<std::uint64_t>, 16> errors_{};
    atomic<std::uint64_t> passes_{0};          // maintain(): pools it ran a pass on (registry_stats::pool_passes)
    atomic<duration::rep> last_walk_{0};       // maintain(): when its last walk began
};

} // namespace keypool::detail
