// SPDX-License-Identifier: BSL-1.0
// The engine behind basic_pool: slots, the lock-free idle stack, the FIFO waiter queue, connects,
// resets, maintenance and close. Everything with a loop, a lock or a data structure lives here.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <mutex>
#include <optional>
#include <source_location>
#include <stop_token>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <vector>

#include <boost/container/small_vector.hpp>
#include <boost/intrusive/list.hpp>
#include <boost/smart_ptr/intrusive_ptr.hpp>
#include <boost/smart_ptr/intrusive_ref_counter.hpp>

#include <keypool/concepts.hpp>
#include <keypool/error.hpp>
#include <keypool/options.hpp>
#include <keypool/policies/observer.hpp>
#include <keypool/stats.hpp>
#include <keypool/detail/budget.hpp>
#include <keypool/detail/config.hpp>
#include <keypool/detail/cpu.hpp>
#include <keypool/detail/huge_arena.hpp>
#include <keypool/detail/percpu.hpp>
#include <keypool/detail/rcu.hpp>
#include <keypool/detail/rng.hpp>

namespace keypool::detail {

/// Selects basic_pool's constructor that takes a context shared with other pools.
struct shared_context_tag {};
/// Selects basic_pool's constructor that shares an existing core (pool_access::share).
struct adopt_core_tag {};

/// What a pool keeps of a connection in its slot's header: the connector's hot part
/// (connector_has_hot), else nothing.
struct no_hot {};
template <class C>
struct hot_of {
    using type = no_hot;
};
template <class C>
    requires connector_has_hot<C>
struct hot_of<C> {
    using type = typename C::hot_type;
};

/// One more use or reset of a slot, by the slot's owner (the only writer): no read-modify-write.
/// `on_wrap()` runs when the 32-bit count wraps (every 2^32) and must carry 2^32 into a total
/// that readers add to the count (pool_core::carry, stats).
template <class Count32, class OnWrap>
KEYPOOL_ALWAYS_INLINE void tally(Count32& count, OnWrap on_wrap) noexcept {
    if (owner_increment(count)) [[unlikely]]
        on_wrap();
}

/// `a` += the counters of `b` (not its gauges): what a pool counted since it was built.
inline void add_counters(pool_stats& a, const pool_stats& b) noexcept {
    a.acquires += b.acquires, a.waits += b.waits, a.wait_time += b.wait_time, a.timeouts += b.timeouts;
    a.cancels += b.cancels, a.rejected += b.rejected, a.leaks += b.leaks, a.connects_ok += b.connects_ok;
    a.connects_failed += b.connects_failed, a.resets += b.resets;
    for (std::size_t i = 0; i < a.closes.size(); ++i) a.closes[i] += b.closes[i];
}

// Invariants (all under m_ unless said otherwise):
// - head_ packs the idle stack's top slot index (bits 0-15), WAITERS (bit 16), CLOSED (bit 17) and
//   an ABA tag (bits 18-63). The fast paths touch only head_ and the slot they own.
// - WAITERS is set exactly while waiters_ is non-empty, and then the idle stack is empty: a release
//   that sees WAITERS takes the lock and hands its connection to the oldest waiter, and an acquire
//   that sees it queues behind them. So a new caller never overtakes a waiter.
// - Because the push CAS itself observes WAITERS and CLOSED, a releasing thread never touches the
//   core after a successful push. That is what lets a lease outlive the pool: the core is deleted
//   by whoever brings open_ to 0 after the owner is gone, and nobody can be between "published"
//   and "done" at that moment.
// - open_ counts every slot holding or about to hold a connection: idle, leased, connecting and
//   closing. A slot is owned by exactly one party: the idle stack, a lease, a waiter it was
//   handed to, or the thread connecting/closing/resetting it.
template <class Connector, class Clock, class Sync, class Observer, class Reset>
class pool_core {
public:
    using connector_type = Connector;
    using connection_type = typename Connector::connection_type;
    using target_type = typename Connector::target_type;
    template <class T>
    using atomic = typename Sync::template atomic<T>;
    using head_type = atomic<std::uint64_t>;
    static constexpr bool thread_safe = Sync::thread_safe;

    enum class slot_state : std::uint8_t { empty, connecting, idle, in_use };

    // A connection's place in two parts: its header (`slot`: what a checkout and a release read
    // and write, 32 bytes, then the connector's hot part if it has one, e.g. the 8 bytes a fake
    // reset reads) and its body (`slot_body`: the connection object and maintain()'s notes),
    // kept in separate arrays of the block, so a hit touches the header alone (and, for a
    // registry's pool, slot 0's header lies on its key's one hot line: see the block layout).
    // Who holds a lease, and from where, is kept beside the slots only when an option asks for
    // it (lease_info).
    using hot_type = typename hot_of<Connector>::type;
    struct slot {
        atomic<std::uint16_t> next{none};
        std::uint16_t self = 0; // its index (slot_of; index_of without a division)
        atomic<std::uint8_t> state{static_cast<std::uint8_t>(slot_state::empty)};
        // Set (to a close_reason + 1) by maintain() for a leased connection that must not come
        // back, e.g. past its lifetime: the release closes it. Read by the owner at release.
        atomic<std::uint8_t> retire{0};
        bool dirty = false;
        bool leak_reported = false; // maintain()'s: it reported the lease it saw (seen_uses) as a leak
        // Written only by the slot's current owner (load + store, no read-modify-write); summed by
        // stats(). Kept across the slot's connections (a slot's count is the pool's share). 32
        // bits, wraps carried into slow_ (tally, carry): the header stays 32 bytes, so a connection's
        // first 32 bytes share the slot's first cache line (a reset touches only that line).
        atomic<std::uint32_t> uses{0};
        atomic<std::uint32_t> resets{0};
        time_point expires = time_point::max();
        // When the connection was last checked out (the fast path reads the clock once per cycle,
        // at checkout), as time_since_epoch().count(): while leased it is the lease's start (read
        // by maintain() and leases_out() under m_); while idle, maintain() may move it later for a
        // lease it saw still out (seen_*). Read and written through used_at / set_used_at.
        atomic<duration::rep> last_used{0};
        // The connector's hot part of the slot's connection (connector_has_hot: bound to it at
        // connect), which its reset reads instead of the connection; nothing otherwise.
        [[no_unique_address]] hot_type hot{};
    };
    struct slot_body {
        std::optional<connection_type> conn;
        // maintain()'s own notes, under m_: the uses count and time of its last pass that saw the
        // connection leased. Same count when it is idle again = that lease ended after that pass.
        std::uint32_t seen_uses = 0;
        // The use count when maintain() opened the connection (under m_): equal to uses until
        // its first checkout, so a registry can tell a use's stamp from such a connect's
        // (last_use()); one less for a connect an acquire made, whose stamp is a use.
        std::uint32_t uses_at_connect = 0;
        time_point seen_in_use_at{};
        time_point last_pinged{}; // keepalive: the last successful ping
    };

    /// The current lease of each slot: by which thread (detect_self_deadlock) and from where
    /// (leak_threshold). Written by the owner at checkout, read under m_; allocated only when one
    /// of those options is on.
    struct lease_info {
        atomic<std::thread::id> owner{};
        atomic<std::source_location> site{};
    };

    /// What every pool built from one set of options shares: the options (clamped), the
    /// connector, the clock, the observer and the connection budget. One reference-counted block
    /// for all the pools of a registry (it stays in cache, and a pool costs 8 bytes for it, not a
    /// copy of each), one per standalone pool. Pools may outlive whoever made it (leases out).
    struct context : pool_options, boost::intrusive_ref_counter<context, boost::thread_safe_counter> {
        context(const pool_options& o, Connector c, const Clock& clk, Observer ob)
            : pool_options(clamped(o)), connector(std::move(c)), clock(&clk), obs(std::move(ob)),
              n_caches(cache_count(*this)), rseq_caches(n_caches != 0 && use_rseq()), has_caches(n_caches != 0),
              has_lease_info(detect_self_deadlock || leak_threshold), pass_slack(slack_of(*this)) {
            set_prefix(0);
            if constexpr (std::is_same_v<Clock, steady_clock> && thread_safe)
                if (use_coarse_ticker) ticker.emplace();
        }
        Connector connector;
        const Clock* const clock;
        [[no_unique_address]] Observer obs;
        boost::intrusive_ptr<connection_budget> budget; // evict::size: set before the first pool is built
        // Where the pools' blocks come from when not from operator new (a large registry's
        // huge-page arena): set before the first pool is built, freed with the context, so after
        // the last pool.
        std::unique_ptr<huge_arena> arena;
        // Every core built from this context has as many per-CPU cache words (cache_count, from
        // the affinity of the thread that made the context), reached the same way.
        const std::uint16_t n_caches;
        const bool rseq_caches;
        const bool has_caches; // n_caches != 0, for the fast paths (a byte compare, no load into a register)
        const bool has_lease_info; // detect_self_deadlock or leak_threshold: checkouts note the lease (lease_info)
        // How long after a maintain() pass a pool it found quiet may go without another
        // (skip_pass(): a registry's maintain() skips it until then): 1/32 of the shortest timer a
        // pass serves (idle timeout, lifetime, leak threshold, keepalive), so a pass it skips makes
        // nothing happen more than that late, and only what a pass learns by looking (when a lease
        // seen out came back: the idle timeout counts from the last pass that saw it out) is that
        // much coarser. Zero, a pass every time, with min_idle (an acquire may take the pool below
        // it, with no pass to top it up) or background resets (a release leaves work for one).
        const duration pass_slack;
        static duration slack_of(const pool_options& o) noexcept {
            if (o.min_idle > 0 || std::is_same_v<Reset, reset_at::background>) return duration::zero();
            duration d = duration::max();
            for (const auto& t : {o.idle_timeout, o.max_lifetime, o.leak_threshold, o.keepalive_after})
                if (t) d = std::min(d, *t / 32);
            return d;
        }
        // The steady clock's coarse ticker, held while any pool built from this context lives
        // (use_coarse_ticker): its fast paths' coarse_now() then reads one cache line.
        std::optional<keypool::coarse_ticker> ticker;
        // Bytes each pool's allocation keeps for its owner (see block layout): `front` at its
        // start, before the idle-stack head (a registry's key entry and node), a multiple of 8;
        // and the distances from a core back to its block's start, its head and its slots. Set
        // (set_prefix) before the first pool is built.
        std::size_t front = 0, block_back = 0, head_back = 0, slots_back = 0, slot1_back = 0, bodies_back = 0;
        // The split layout (set_split; a registry's pools): each block is a record and a body,
        // from the arena's pairs (`pairs`, rec_bytes 0 otherwise): the record holds the owner's
        // record bytes, the head (at rec_head) and slot 0's header (after it); the body the
        // owner's body bytes, the other slots' headers (slot 1 at core - slot1_back), the bodies
        // and the core (at core_in_body).
        pair_layout pairs{};
        std::size_t rec_head = 0, core_in_body = 0;
        std::size_t slot0_from_head = 0; // (both layouts)
        bool split() const noexcept { return pairs.rec_bytes != 0; }
        /// reset_at::background: `f` is called when a returned connection of any pool built from
        /// this context waits for its reset (under that pool's lock and this context's signal
        /// lock, so once set_reset_signal returns, no earlier `f` is running). One per context, so
        /// a registry's pools share it (a registry registers its janitor once, not per pool).
        void set_reset_signal(std::function<void()> f) noexcept
            requires std::is_same_v<Reset, reset_at::background>
        {
            std::lock_guard lk(reset_signal.m);
            reset_signal.f = std::move(f);
        }
        void signal_reset() noexcept
            requires std::is_same_v<Reset, reset_at::background>
        {
            std::lock_guard lk(reset_signal.m);
            if (reset_signal.f) reset_signal.f();
        }
        struct signal_box {
            mutable typename Sync::mutex_type m;
            std::function<void()> f;
        };
        struct no_signal {};
        [[no_unique_address]] std::conditional_t<std::is_same_v<Reset, reset_at::background>, signal_box, no_signal>
            reset_signal;
        // Connections open or being opened in all the pools built from this context, counted
        // where each pool's own count moves (reserve_locked, free_locked: on connects and closes,
        // never on an acquire), for a registry's close(deadline), which waits for every one of
        // its pools, including those that left it with leases out.
        atomic<std::size_t> open_connections{0};
        mutable typename Sync::mutex_type drain_m;
        std::optional<typename Clock::event> all_closed; // made by the first wait_all_closed()
        void opened() noexcept { open_connections.fetch_add(1, std::memory_order_relaxed); }
        void closed_one() noexcept {
            if (open_connections.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard lk(drain_m);
                if (all_closed) all_closed->set();
            }
        }
        /// Waits until no connection of any pool built from this context is open, or `deadline`
        /// passes; true if none is. For after every pool is closed (none opens a connection again).
        bool wait_all_closed(time_point deadline) noexcept {
            typename Clock::event* ev = nullptr;
            {
                std::lock_guard lk(drain_m);
                if (open_connections.load(std::memory_order_acquire) == 0) return true;
                if constexpr (!thread_safe) return false; // nobody else can close one while we wait
                try {
                    if (!all_closed) all_closed.emplace(*clock);
                } catch (...) {
                    return false; // cannot wait: not drained in time
                }
                ev = &*all_closed;
            }
            for (;;) {
                const bool signalled = ev->wait_until(deadline);
                if (open_connections.load(std::memory_order_acquire) == 0) return true;
                if (!signalled || clock->now() >= deadline) return false;
                // Set when the count last reached zero, since risen (a pool not closed yet):
                // wait for the next time.
                std::lock_guard lk(drain_m);
                if (open_connections.load(std::memory_order_acquire) == 0) return true;
                ev->reset();
            }
        }
        void set_prefix(std::size_t front_bytes) noexcept {
            front = (front_bytes + 7) / 8 * 8; // (the head after it stays 8-byte aligned)
            block_back = core_offset(max_size, front);
            head_back = block_back - (slot0_offset(front) - sizeof(head_type));
            slots_back = block_back - slot0_offset(front);
            slot1_back = slots_back - sizeof(slot);
            slot0_from_head = head_back - slots_back;
            bodies_back = block_back - bodies_offset(max_size, front);
        }
        /// The split layout, with `rec_front` bytes for the owner at the record's start (a
        /// registry's node) and `body_front` at the body's (the rest of its entry, aligned as a
        /// body is: to 8 bytes or more). Before the first pool is built; the arena (made after,
        /// as the block's size decides) gets `pairs`.
        void set_split(std::size_t rec_front, std::size_t body_front) noexcept {
            static_assert(can_split());
            rec_head = (rec_front + alignof(head_type) - 1) / alignof(head_type) * alignof(head_type);
            const std::size_t slot0 = (rec_head + sizeof(head_type) + alignof(slot) - 1) / alignof(slot) * alignof(slot);
            const std::size_t slot1 = round_to(body_front, alignof(slot));
            const std::size_t n = std::max<std::size_t>(max_size, 1); // (0 is refused when a pool is built)
            const std::size_t bodies = round_to(slot1 + (n - 1) * sizeof(slot), alignof(slot_body));
            core_in_body = round_to(bodies + n * sizeof(slot_body), alignof(pool_core));
            pairs = pair_layout::make(slot0 + sizeof(slot), core_in_body + sizeof(pool_core),
                                      std::max({alignof(slot), alignof(slot_body), alignof(pool_core)}));
            slot1_back = core_in_body - slot1;
            slot0_from_head = slot0 - rec_head;
            bodies_back = core_in_body - bodies;
            front = 0, block_back = 0, head_back = 0, slots_back = 0;
        }
    };
    using shared_context = boost::intrusive_ptr<context>;
    static shared_context share(const pool_options& o, Connector c, const Clock& clock, Observer obs = {}) {
        return new context(o, std::move(c), clock, std::move(obs));
    }

    /// Where and how a core is allocated: `new (slot_count{ctx}) pool_core(...)`, as the context
    /// says (its slots, the owner's bytes, the layout, the arena).
    struct slot_count {
        const context* x;
    };

    /// `o` comes from share(). Allocate with `new (slot_count{o.get()}) pool_core(...)`: the slots
    /// and the idle-stack head live in the same block as the core (one allocation per pool, or
    /// one pair of the arena's: see operator new).
    pool_core(target_type t, shared_context o)
        : ctx_(o.get()),
          caches_(o->n_caches ? new cpu_cache[o->n_caches] : nullptr),
          target_(std::move(t)),
          leases_(ctx_->has_lease_info ? new lease_info[ctx_->max_size] : nullptr),
          rng_(ctx_->seed ? *ctx_->seed : seed_from_address()) {
        std::uninitialized_default_construct_n(bodies_at(this, *ctx_), ctx_->max_size); // noexcept: nullopt
        for (std::uint32_t i = 0; i < ctx_->max_size; ++i) {
            slot* s = ::new (static_cast<void*>(slot_at(this, *ctx_, i))) slot(); // noexcept: atomics
            s->self = static_cast<std::uint16_t>(i);
            s->next.store(i + 1 < ctx_->max_size ? i + 1 : none, std::memory_order_relaxed);
        }
        free_head_ = 0;
        ::new (static_cast<void*>(&head_at(this, *ctx_))) head_type(none);
        (void)o.detach(); // ctx_ keeps o's reference (released by the destructor)
    }
    ~pool_core() {
        std::destroy_n(bodies_at(this, *ctx_), ctx_->max_size); // (before the headers: a connection may use its hot part until then)
        for (std::uint32_t i = 0; i < ctx_->max_size; ++i) slot_at(this, *ctx_, i)->~slot();
        intrusive_ptr_release(ctx_);
    }

    // Block layout. Every part lies at a fixed distance from the core or, in the split layout,
    // from the core's record, which follows from the core's address (huge_arena's pair_layout),
    // so a caller that knows the context reaches each without reading the core (head_at,
    // slot_at, bodies_at).
    // - A pool of its own, one allocation: [head][slot headers][slot bodies][core], the core on a
    //   cache line of its own. The head and slot 0's header (the slot an idle pool hands out,
    //   most recently used first) share the first line, which a checkout and a release of slot 0
    //   write alone, so the core's first fields, which they read, stay shared between cores.
    // - A registry's pool, a pair from its arena (set_split): a record — the key's node (16 bytes
    //   for an 8-byte key: link word and key), the head, slot 0's header with the connector's
    //   hot part (the fake's 8 bytes): 64 bytes, all a hit reads and writes of its key — and a
    //   body: the rest of the key's entry, the other slots' headers, the slots' bodies and the
    //   core. The records of a chunk lie side by side: 100,000 keys' hot bytes take 6.1 MiB of
    //   lines, and W3 ran 0.93x the baseline where one hot line in each 576-byte block ran 1.91x
    //   (docs/benchmarks.md, "Session 31").
    // - Where the arena is not available (not Linux), a registry's pool is one allocation:
    //   [the owner's front: entry, node][head][slot headers][slot bodies][core] (set_prefix).
    static void* operator new(std::size_t size, slot_count c) {
        const context& x = *c.x;
        if (x.split()) return x.pairs.body_of(x.arena->allocate_pair()) + x.core_in_body;
        const std::size_t offset = x.block_back;
        void* block = x.arena ? x.arena->allocate(offset + size) : ::operator new(offset + size, std::align_val_t{allocation_alignment()});
        return static_cast<unsigned char*>(block) + offset;
    }
    static void operator delete(void* p, slot_count c) noexcept { // a constructor threw
        free_block(static_cast<pool_core*>(p), *c.x);
    }
    // A destroying delete: `delete core` reads the slot count before the destructor runs, and a
    // pool that left a registry hands its final counters over while it is still alive (a
    // registry's stats() may be reading it under the list's lock until then).
    static void operator delete(pool_core* p, std::destroying_delete_t) noexcept {
        if (p->slow_ && p->slow_->retired) p->slow_->retired->forget(*p);
        // The arena lives in the context, whose last reference the destructor may drop: held
        // until the block is back in it.
        const shared_context keep(p->ctx_);
        p->~pool_core();
        free_block(p, *keep);
    }
    static void free_block(pool_core* c, const context& x) noexcept {
        if (x.split()) x.arena->deallocate_pair(record_at(c, x));
        else if (x.arena) x.arena->deallocate(front_at(c, x), block_bytes(x));
        else ::operator delete(front_at(c, x), std::align_val_t{allocation_alignment()});
    }
    /// The bytes of one pool's block (both parts of a pair).
    static std::size_t block_bytes(const context& x) noexcept {
        return x.split() ? x.pairs.rec_bytes + x.pairs.body_bytes : x.block_back + sizeof(pool_core);
    }
    static constexpr std::size_t allocation_alignment() noexcept {
        return std::max({std::size_t{64}, alignof(slot), alignof(slot_body), alignof(pool_core)});
    }
    /// Whether the split layout can hold this core's parts (alignments a pair chunk keeps).
    static constexpr bool can_split() noexcept {
        return alignof(slot) <= 64 && alignof(slot_body) <= 64 && alignof(pool_core) <= 64;
    }
    static constexpr std::size_t round_to(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }
    /// Where slot 0 starts: right after the head, which follows the owner's `front` bytes
    /// (later only for a slot aligned wider than 8 bytes; the head then ends where slot 0
    /// starts).
    static constexpr std::size_t slot0_offset(std::size_t front) noexcept { return round_to(front + sizeof(head_type), alignof(slot)); }
    /// Where the slots' bodies start: after the headers.
    static constexpr std::size_t bodies_offset(std::size_t slots, std::size_t front) noexcept {
        return round_to(slot0_offset(front) + slots * sizeof(slot), alignof(slot_body));
    }
    /// Where the core starts. A pool of its own rounds up to a cache line (the core's first
    /// fields, read by every checkout, apart from the slots it writes); one with owner's bytes
    /// puts the core right after the bodies.
    static constexpr std::size_t core_offset(std::size_t slots, std::size_t front) noexcept {
        return round_to(bodies_offset(slots, front) + slots * sizeof(slot_body), front == 0 ? allocation_alignment() : alignof(pool_core));
    }
    /// The record of core `c` made with context `x` (split layout; an address only).
    static KEYPOOL_ALWAYS_INLINE unsigned char* record_at(const pool_core* c, const context& x) noexcept {
        return x.pairs.record_of(reinterpret_cast<const unsigned char*>(c) - x.core_in_body);
    }
    /// The core whose record is `rec` (split layout; the inverse of record_at).
    static KEYPOOL_ALWAYS_INLINE pool_core* with_record(const void* rec, const context& x) noexcept {
        return reinterpret_cast<pool_core*>(x.pairs.body_of(rec) + x.core_in_body);
    }
    /// The idle-stack head, the slots' headers and their bodies of core `c` made with context
    /// `x`, from the core's address alone (the core's own fields are not read).
    static KEYPOOL_ALWAYS_INLINE head_type& head_at(const pool_core* c, const context& x) noexcept {
        unsigned char* p = x.split() ? record_at(c, x) + x.rec_head : mutable_bytes(c) - x.head_back;
        return *std::launder(reinterpret_cast<head_type*>(p));
    }
    static KEYPOOL_ALWAYS_INLINE slot* slot_at(const pool_core* c, const context& x, std::size_t i) noexcept {
        unsigned char* p;
        if (i == 0)
            p = x.split() ? record_at(c, x) + x.rec_head + x.slot0_from_head : mutable_bytes(c) - x.slots_back;
        else
            p = mutable_bytes(c) - x.slot1_back + (i - 1) * sizeof(slot);
        return std::launder(reinterpret_cast<slot*>(p));
    }
    /// Slot `i` of core `c` whose head is `head`: slot 0 lies at a fixed distance from the head
    /// (head_at need not find the record again), the others from the core.
    static KEYPOOL_ALWAYS_INLINE slot* slot_near(const pool_core* c, const context& x, head_type& head, std::size_t i) noexcept {
        unsigned char* p = i == 0 ? reinterpret_cast<unsigned char*>(&head) + x.slot0_from_head : mutable_bytes(c) - x.slot1_back + (i - 1) * sizeof(slot);
        return std::launder(reinterpret_cast<slot*>(p));
    }
    /// The head of slot 0's pool, from slot 0's address.
    static KEYPOOL_ALWAYS_INLINE head_type& head_before(slot* s0, const context& x) noexcept {
        return *std::launder(reinterpret_cast<head_type*>(reinterpret_cast<unsigned char*>(s0) - x.slot0_from_head));
    }
    /// The head in record `rec` (split layout).
    static KEYPOOL_ALWAYS_INLINE head_type& head_in(const void* rec, const context& x) noexcept {
        return *std::launder(reinterpret_cast<head_type*>(mutable_bytes(rec) + x.rec_head));
    }
    static KEYPOOL_ALWAYS_INLINE slot_body* bodies_at(const pool_core* c, const context& x) noexcept {
        return std::launder(reinterpret_cast<slot_body*>(mutable_bytes(c) - x.bodies_back));
    }
    static unsigned char* mutable_bytes(const void* p) noexcept {
        return const_cast<unsigned char*>(static_cast<const unsigned char*>(p));
    }
    /// Where the owner's front bytes of core `c` (made with context `x`) start: the block's
    /// start, a cache line (not the split layout).
    static void* front_at(pool_core* c, const context& x) noexcept { return reinterpret_cast<unsigned char*>(c) - x.block_back; }
    /// The core whose owner's front bytes start at `p` (the inverse of front_at; an address
    /// only: nothing is read).
    static pool_core* after_front(const void* p, const context& x) noexcept {
        return reinterpret_cast<pool_core*>(reinterpret_cast<std::uintptr_t>(p) + x.block_back);
    }
    /// t + d, or time_point::max() where that would overflow (d ≥ 0).
    static time_point saturating_add(time_point t, duration d) noexcept {
        return d > time_point::max() - t ? time_point::max() : t + d;
    }

    pool_core(const pool_core&) = delete;
    pool_core& operator=(const pool_core&) = delete;

    const pool_options& options() const noexcept { return *ctx_; }
    Connector& connector() noexcept { return ctx_->connector; }
    const target_type& target() const noexcept { return target_; }
    std::uint32_t index_of(const slot* s) const noexcept { return s->self; }
    /// The context this core was made with (its pools' options, connector, clock, budget).
    context& shared() const noexcept { return *ctx_; }
    head_type& head() const noexcept { return head_at(this, *ctx_); }
    /// Slot `i`'s header.
    slot* slot_of(std::size_t i) const noexcept { return slot_at(this, *ctx_, i); }
    /// The body of slot `s` (its connection and maintain()'s notes).
    slot_body& body(const slot* s) const noexcept { return bodies_at(this, *ctx_)[s->self]; }
    /// The connection of slot `s`, which holds one (an address only: nothing is read but the
    /// slot's index).
    connection_type& connection_of(const slot* s) const noexcept { return connection_at(this, *ctx_, s); }
    static connection_type& connection_at(const pool_core* c, const context& x, const slot* s) noexcept {
        return *bodies_at(c, x)[s->self].conn;
    }

    // ---- acquire ---------------------------------------------------------------------------

    /// `when` is a deadline (time_point) or a timeout (duration). A timeout becomes a deadline only
    /// on the slow path, so the fast path never reads the precise clock. `started`: when the
    /// caller's acquire_fast() began a checkout that failed (the coarse time it read), so the time
    /// that checkout took counts against the timeout; time_point{} if it found nothing.
    template <class When>
    slot* acquire(When when, std::stop_token st, std::error_code& ec, time_point started = {}) noexcept {
        if (ec) ec.clear(); // (clear() calls the out-of-line std::system_category())
        std::optional<time_point> deadline;
        auto resolve = [&] {
            if (!deadline) {
                if constexpr (std::is_same_v<When, time_point>)
                    deadline = when;
                else
                    deadline = saturating_add(started != time_point{} ? started : ctx_->clock->now(), when);
            }
            return *deadline;
        };
        // A caller already told to stop gets `cancelled` at once, idle connection or not: the
        // work it would do with one is unwanted (as Go's pgxpool/puddle checks its context first).
        if (st.stop_requested()) [[unlikely]]
            return acquire_cancelled(ec);
        // The failed checkout used up the time (e.g. a reset that ran until the deadline).
        if (started != time_point{} && ctx_->clock->now() > resolve()) return acquire_timed_out(ec);
        for (;;) {
            slot* s = pop_ready(*ctx_);
            if (!s && !(s = acquire_slow(resolve(), st, ec))) return nullptr;
            if (checkout(s, resolve())) return s;
            // The connection failed checkout and was closed: try another within the deadline.
            if (ctx_->clock->now() >= resolve()) return acquire_timed_out(ec);
        }
    }

    /// For checkout's `site`: the caller records none (or records it itself, record_site).
    struct no_site {};

    /// acquire()'s first step, inlined into the caller: one idle connection that passes checkout,
    /// or nullptr (then acquire() takes over, with the deadline and the error code). One attempt
    /// only, so a run of failing checkouts stays bounded by acquire()'s deadline; `started` gets the
    /// time a failed checkout began (see acquire()). `site`: the caller's, recorded at checkout
    /// for leak_threshold (or no_site{}).
    template <class When, class Site = no_site>
    KEYPOOL_ALWAYS_INLINE slot* acquire_fast(When when, time_point& started, Site site = {}) noexcept {
        slot* s = pop_ready(*ctx_);
        return s && checkout(s, when, &started, site) ? s : nullptr;
    }

    /// Never waits: an idle connection if one is free and nobody is queued for it, else nullptr.
    slot* try_acquire() noexcept {
        for (;;) {
            slot* s = pop_idle_or_steal();
            if (!s) return nullptr;
            if (checkout(s)) return s;
        }
    }

    /// pop_idle(), then (rseq mode, where another thread's cache word is out of reach of the fast
    /// path) one held in another word, taken under m_ and not past queued callers: every idle
    /// connection a caller that will not wait may have. nullptr if none.
    slot* pop_idle_or_steal() noexcept {
        slot* s = pop_ready(*ctx_);
        if (!s && ctx_->rseq_caches) {
            std::lock_guard lk(m_);
            if (!closed_ && !has_waiters_locked()) s = steal_cached();
        }
        return s;
    }

    /// How many per-CPU cache words a pool with options `o` gets (`pool_options::cpu_caches`
    /// resolved; read at construction, and by the tests).
    static std::uint16_t cache_count(const pool_options& o) noexcept {
        if constexpr (!thread_safe) {
            return 0;
        } else {
            std::size_t n = o.cpu_caches ? *o.cpu_caches : std::min(o.max_size / 4, std::size_t{64});
            if (!o.cpu_caches && n > 1) n = std::min<std::size_t>(n, cpus_to_cover());
            n = std::min<std::size_t>(n, 64);
            return n == 0 ? 0 : static_cast<std::uint16_t>(std::bit_floor(n));
        }
    }

    /// How many words the automatic `cpu_caches` needs to give every CPU the process may use
    /// one (read from the building thread's affinity mask): one past the highest CPU number when
    /// word j is CPU j's (rseq by CPU number), else the number of CPUs — concurrency ids are
    /// dense below it, and a CASed word is picked by CPU number modulo the word count. A service
    /// confined to 4 CPUs of a 128-CPU host allocates 4 words, not 64.
    static std::size_t cpus_to_cover() noexcept {
        const cpu_allowance a = allowed_cpus();
        return use_rseq() && percpu::indexed_by_cpu() ? a.span : a.count;
    }

    // ---- for owners that may have dropped the pool object (the registry) ---------------------

    /// A registry's pools that have left it (retired, invalidated, closed) but are still open —
    /// leases out, or a pool object from `pool(key)` — and the counters of those since
    /// destroyed: the registry's summed pool counters are its live pools' plus these, so they
    /// never go down when a pool leaves (a Prometheus counter that drops reads as a reset).
    /// Shared with the pools, which may outlive the registry. Lock order: the registry's ring
    /// lock, then `m`, then a pool's lock.
    struct retired_list : boost::intrusive_ref_counter<retired_list, boost::thread_safe_counter> {
        std::mutex m;
        std::unordered_set<pool_core*> open;
        pool_stats gone; // counters only

        /// Under the registry's ring lock: `c` left the registry's live set. Listed once, however
        /// many keys shared it; out of memory, its counters so far are kept and later ones lost.
        void adopt(pool_core& c) noexcept {
            std::lock_guard lk(m);
            bool listed = false;
            switch (c.report_retired_to(this)) {
            case report::already: return;
            case report::attached:
                try {
                    listed = open.insert(&c).second;
                } catch (...) {
                }
                if (listed) return;
                c.report_retired_to(nullptr);
                break;
            case report::no_memory: break;
            }
            add_counters(gone, c.stats());
        }
        /// From `delete c`, before its destructor: its final counters move from `open` to `gone`.
        void forget(pool_core& c) noexcept {
            std::lock_guard lk(m);
            open.erase(&c);
            add_counters(gone, c.stats());
        }
    };
    enum class report { attached, already, no_memory };
    /// Lists this pool's counters with `r` until it is destroyed (nullptr: not any more).
    report report_retired_to(retired_list* r) noexcept {
        std::lock_guard lk(m_);
        trouble* t = trouble_locked();
        if (!t) return report::no_memory;
        if (r && t->retired) return report::already;
        t->retired = r;
        return report::attached;
    }

    /// Closes the least recently used idle connection, if there is one (to free a budget token).
    bool close_one_idle() noexcept {
        slot* victim = nullptr;
        {
            std::lock_guard lk(m_);
            if (closed_) return false;
            boost::container::small_vector<slot*, 32> idle;
            for (slot* s = take_all_idle_locked(0); s; s = next_of(s)) idle.push_back(s);
            if (idle.empty()) return false;
            victim = idle.back();
            for (std::size_t i = idle.size() - 1; i-- > 0;) deliver_locked(idle[i]);
        }
        (void)dispose(victim, close_reason::trimmed);
        return true;
    }

    /// An idle connection, or nullptr if none is free or callers are queued (pop_ready). `x`:
    /// this core's context (shared()), which a caller has at hand: see pop_fast.
    /// `known`: the pool's head, when the caller has its address (see head_in).
    KEYPOOL_ALWAYS_INLINE slot* pop_idle(const context& x, head_type* known = nullptr) noexcept { return pop_ready(x, known); }

    /// Starts loading what a checkout of `c` (made with context `x`) touches: the line of the
    /// idle-stack head and slot 0's header (slot 0 is the slot an idle pool hands out when one
    /// connection serves it). Computed from the address alone, so a caller that has just found
    /// the core's pointer (the registry) waits for this miss beside its own, not after it.
    static KEYPOOL_ALWAYS_INLINE void prefetch(const pool_core* c, const context& x) noexcept {
        KEYPOOL_PREFETCH_WRITE(&head_at(c, x));
        if constexpr (slot0_offset(0) > sizeof(head_type)) KEYPOOL_PREFETCH_WRITE(slot_at(c, x, 0)); // (not on the head's line)
    }

    /// reset_at::background: called (under the pool's lock, so it must not call back into the
    /// pool) when a returned connection waits for its reset, e.g. a janitor's poke(). Empty = none.
    /// Set on the context, so for every pool built from it (context::set_reset_signal).
    void set_reset_signal(std::function<void()> f) noexcept
        requires std::is_same_v<Reset, reset_at::background>
    {
        ctx_->set_reset_signal(std::move(f));
    }

    struct no_deadline {};
    enum class checkout_result { ok, retry, delete_core };
    /// `checkout` for a caller that may hold no pool object: on `delete_core` the pool was gone and
    /// this closed its last connection, so the caller must delete the core.
    /// `now`: the coarse time the caller read (the registry reads it once for its own
    /// bookkeeping and this). `when`: the caller's deadline (time_point) or timeout (duration); a
    /// connector with `reset(connection, deadline)` gets it for a reset run here. `no_deadline{}`
    /// for none. `x`: this core's context (shared()), which the caller has at hand: a checkout
    /// that needs no check reads nothing of the core's own fields. `site`: the caller's (a
    /// std::source_location), recorded for leak_threshold, or no_site{} (the caller records it,
    /// record_site).
    template <class When = no_deadline, class Site = no_site>
    KEYPOOL_ALWAYS_INLINE checkout_result checkout_detached(context& x, slot* s, time_point now, When when = {},
                                                            Site site = {}) noexcept {
        if (now >= s->expires || now - used_at(*s) >= x.validate_after_idle) [[unlikely]] {
            if (const checkout_result r = checkout_checks(s, now); r != checkout_result::ok) return r;
        }
        if constexpr (!std::is_same_v<Reset, reset_at::release>) {
            if (s->dirty) {
                tally(s->resets, [this] { carry(&trouble::resets_carried); });
                if (!reset_connection(x, s, now, when)) [[unlikely]]
                    return checkout_failed(s, close_reason::reset_failed);
            }
        }
        set_used_at(*s, now);
        if (x.has_lease_info) [[unlikely]]
            note_lease(x, s, site);
        s->state.store(static_cast<std::uint8_t>(slot_state::in_use), std::memory_order_release);
        tally(s->uses, [this] { carry(&trouble::uses_carried); });
        return checkout_result::ok;
    }

    /// Where the lease on `s` was acquired (leak_threshold only; called by its owner).
    void record_site(slot* s, const std::source_location& site) noexcept {
        leases_[s->self].site.store(site, std::memory_order_relaxed);
    }

    /// At checkout, with lease_info kept: the owning thread (detect_self_deadlock; before the slot
    /// shows in_use) and, when the caller passed it, the acquire site (leak_threshold).
    template <class Site>
    KEYPOOL_NOINLINE void note_lease(const context& x, slot* s, Site site) noexcept {
        if (x.detect_self_deadlock) leases_[s->self].owner.store(std::this_thread::get_id(), std::memory_order_relaxed);
        if constexpr (std::is_same_v<Site, std::source_location>) {
            if (x.leak_threshold) record_site(s, site);
        } else {
            (void)site;
        }
    }

    /// The leases out now: age and acquire site.
    std::vector<lease_report> leases_out() const {
        std::vector<lease_report> r;
        const time_point now = ctx_->clock->coarse_now();
        std::lock_guard lk(m_);
        for (std::size_t i = 0; i < ctx_->max_size; ++i) {
            const slot& s = *slot_of(i);
            if (static_cast<slot_state>(s.state.load(std::memory_order_acquire)) != slot_state::in_use) continue;
            r.push_back({now - used_at(s),
                         ctx_->leak_threshold ? leases_[i].site.load(std::memory_order_relaxed) : std::source_location{}});
        }
        return r;
    }

    // ---- release ---------------------------------------------------------------------------

    /// Returns a leased connection. Returns true if the caller must delete the core (the pool is
    /// gone and this was its last connection). `x`: this core's context (what a lease carries):
    /// a release that finds no one waiting reads nothing of the core's own fields.
    [[nodiscard]] KEYPOOL_ALWAYS_INLINE bool release(slot* s, bool discard, context& x) noexcept {
        if (discard) return dispose(s, close_reason::discarded);
        // No clock read here: lifetime is checked at checkout, and for leases still out when it
        // ends, maintain() sets `retire` (as HikariCP marks a connection evicted).
        if (const std::uint8_t r = s->retire.load(std::memory_order_relaxed)) [[unlikely]]
            return dispose(s, static_cast<close_reason>(r - 1));
        if constexpr (std::is_same_v<Reset, reset_at::release>) {
            tally(s->resets, [this] { carry(&trouble::resets_carried); });
            if (!reset_connection(x, s)) return dispose(s, close_reason::reset_failed);
        } else {
            if constexpr (connector_has_reset_begin<Connector>) begin_reset(x, s);
            s->dirty = true;
        }
        s->state.store(static_cast<std::uint8_t>(slot_state::idle), std::memory_order_relaxed);
        if (x.budget) [[unlikely]]
            return release_budgeted(s, x);
        if constexpr (std::is_same_v<Reset, reset_at::background>) return release_dirty(s);
        if (slot* rest = push_fast(s, x)) return release_slow(rest);
        return false;
    }

    /// release() under evict::size: with callers queued for a budget token, the connection goes
    /// to our own waiters or is closed (its token to the oldest caller of any key); else it is made
    /// idle. The check and the push share one read-side section, which a budget's walker waits out
    /// before it walks: it then sees this connection idle, or this release saw it queued
    /// (detail/budget.hpp). Also for a connection an acquirer puts back (prefer_ready). Out of
    /// line: inlined into every release, it cost registries without a budget about 0.9 ns a cycle
    /// (≈ 4%); out of line, a budgeted release pays ≈ 2 ns more than before the section.
    KEYPOOL_NOINLINE bool release_budgeted(slot* s, context& x) noexcept {
        rcu_section_if<thread_safe> section;
        if (x.budget->has_tickets()) {
            section.leave();
            return release_to_budget(s);
        }
        if constexpr (std::is_same_v<Reset, reset_at::background>) {
            section.leave(); // (release_dirty idles it under m_, and says so: idled_locked)
            return release_dirty(s);
        }
        slot* rest = push_fast(s, x);
        section.leave();
        return rest ? release_slow(rest) : false;
    }

    /// The connector starts the reset now (e.g. sends it) and the reset before the next hand-out
    /// completes it: its round trip overlaps the time the connection sits idle.
    void begin_reset(context& x, slot* s) noexcept {
        try {
            x.connector.reset_begin(*body(s).conn);
        } catch (...) { // the reset at checkout still runs in full
        }
    }

    // ---- close -----------------------------------------------------------------------------

    void close() noexcept {
        slot* idle = nullptr;
        {
            std::lock_guard lk(m_);
            if (closed_) return;
            closed_ = true;
            if (slow_ && slow_->close_source.stop_possible()) slow_->close_source.request_stop();
            idle = take_all_idle_locked(closed_bit);
            fail_all_waiters_locked(make_error_code(errc::closed));
            signal_if_drained_locked();
        }
        while (idle) {
            slot* next = next_of(idle);
            (void)dispose(idle, close_reason::closed); // the owner is alive: never deletes here
            idle = next;
        }
    }

    /// Waits until every connection is closed (all leases returned) or the deadline passes.
    bool wait_drained(time_point deadline) noexcept {
        typename Clock::event* drained = nullptr;
        {
            std::lock_guard lk(m_);
            if (open_ == 0) return true;
            trouble* t = trouble_locked();
            if (!t) return false; // out of memory: cannot wait, so not drained in time
            if (!t->drained) t->drained.emplace(*ctx_->clock);
            drained = &*t->drained;
        }
        if constexpr (!thread_safe) {
            return false; // nobody else can return a lease while we wait
        } else {
            for (;;) {
                bool signalled = drained->wait_until(deadline);
                std::lock_guard lk(m_);
                if (open_ == 0) return true;
                if (!signalled || ctx_->clock->now() >= deadline) return false;
            }
        }
    }

    /// One more owner: a pool object or a registry entry sharing this core (it starts with one).
    void add_owner() noexcept {
        std::lock_guard lk(m_);
        ++owners_;
    }
    /// A registry lists this core among the pools its keys share (role-switch routes), as one
    /// owner that does not keep the pool open: when only that owner is left, the pool closes.
    void set_listed() noexcept {
        std::lock_guard lk(m_);
        listed_ = true;
    }
    /// add_owner() unless the pool is closed, or no owner or only its listing owns it (then it
    /// closed or is about to: the registry makes a new pool for the target instead).
    [[nodiscard]] bool try_add_owner() noexcept {
        std::lock_guard lk(m_);
        if (closed_ || owners_ == 0 || (owners_ == 1 && listed_)) return false;
        ++owners_;
        return true;
    }
    /// True while owners other than a registry's listing remain.
    bool owned() const noexcept {
        std::lock_guard lk(m_);
        return owners_ > (listed_ ? 1U : 0U);
    }
    /// An owner is done. If only the listing is left, the pool closes now; if none is left, it
    /// closes and true means the caller must delete the core (no connection is out).
    [[nodiscard]] bool drop_owner() noexcept {
        bool last = false, close_now = false;
        {
            std::lock_guard lk(m_);
            last = --owners_ == 0;
            close_now = last || (owners_ == 1 && listed_);
        }
        if (!close_now) return false;
        close();
        return last && owner_gone();
    }

    /// Called by the last owner after close(). True if the caller must delete the core now.
    [[nodiscard]] bool owner_gone() noexcept {
        std::lock_guard lk(m_);
        owner_gone_ = true;
        return open_ == 0;
    }

    // ---- maintenance -----------------------------------------------------------------------

    /// Idle and lifetime eviction, background resets, min_idle top-up, connects for waiters whose
    /// backoff ended. Returns when it next needs to run (time_point::max() if nothing is due).
    time_point maintain() noexcept {
        const time_point now = ctx_->clock->now();
        boost::container::small_vector<slot*, 32> idle, to_close, to_reset, to_ping;
        boost::container::small_vector<close_reason, 32> why;
        boost::container::small_vector<lease_report, 4> leaks;
        std::size_t top_up = 0;
        bool refused = false;
        std::stop_token on_close;
        time_point due = time_point::max();
        bool quiet = false;
        {
            std::lock_guard lk(m_);
            if (closed_) return time_point::max();
            // A cached connection that needs nothing now stays in its CPU's cache (taking it from
            // another CPU costs a fence in rseq mode); it counts as idle and sets when to look again.
            // (m_ keeps expires and last_pinged still; a lease taken meanwhile only makes the count high
            // for this pass.)
            auto needs_pass = [&](const slot& c) noexcept {
                return std::is_same_v<Reset, reset_at::background> || now >= c.expires ||
                       (ctx_->idle_timeout && now - used_at(c) >= *ctx_->idle_timeout) || keepalive_due(&c) <= now;
            };
            for (slot* s = take_all_idle_locked(0, needs_pass); s; s = next_of(s)) idle.push_back(s); // MRU first
            std::size_t cached = 0;
            for (std::size_t j = 0; j < ctx_->n_caches; ++j) {
                const std::uint32_t w = caches_[j].word.load(std::memory_order_acquire);
                if (w >= none) continue;
                const slot& c = *slot_of(w);
                ++cached;
                due = std::min({due, c.expires, keepalive_due(&c),
                                ctx_->idle_timeout ? used_at(c) + *ctx_->idle_timeout : time_point::max()});
            }
            // Leased connections: note that they were out now (see last_used), and mark the ones
            // past their lifetime to be closed when they come back.
            for (std::size_t i = 0; i < ctx_->max_size; ++i) {
                slot& s = *slot_of(i);
                if (static_cast<slot_state>(s.state.load(std::memory_order_relaxed)) != slot_state::in_use) continue;
                const std::uint32_t uses = s.uses.load(std::memory_order_relaxed);
                if (uses != body(&s).seen_uses) s.leak_reported = false; // another lease than last pass's
                body(&s).seen_uses = uses;
                body(&s).seen_in_use_at = now;
                if (ctx_->leak_threshold && !s.leak_reported) {
                    const time_point at = used_at(s);
                    if (now - at >= *ctx_->leak_threshold) {
                        s.leak_reported = true;
                        count(&trouble::leaks);
                        leaks.push_back({now - at, leases_[i].site.load(std::memory_order_relaxed)});
                    } else {
                        due = std::min(due, at + *ctx_->leak_threshold);
                    }
                }
                if (now >= s.expires)
                    s.retire.store(static_cast<std::uint8_t>(close_reason::lifetime) + 1, std::memory_order_relaxed);
                else
                    due = std::min(due, s.expires);
            }
            // An idle connection whose lease a pass saw still out was returned after that pass.
            for (slot* s : idle)
                if (body(s).seen_in_use_at != time_point{} && s->uses.load(std::memory_order_relaxed) == body(s).seen_uses)
                    set_used_at(*s, std::max(used_at(*s), body(s).seen_in_use_at));
            // Lifetime first, then idle timeout from the least recently used end, never below min_idle.
            std::size_t keep_count = idle.size() + cached;
            for (slot* s : idle)
                if (now >= s->expires) --keep_count;
            for (std::size_t i = idle.size(); i-- > 0;) {
                slot* s = idle[i];
                if (now >= s->expires) {
                    to_close.push_back(s), why.push_back(close_reason::lifetime);
                    idle[i] = nullptr;
                } else if (ctx_->idle_timeout && keep_count > ctx_->min_idle &&
                           now - used_at(*s) >= *ctx_->idle_timeout) {
                    to_close.push_back(s), why.push_back(close_reason::idle);
                    idle[i] = nullptr;
                    --keep_count;
                } else if (std::is_same_v<Reset, reset_at::background> && s->dirty) {
                    to_reset.push_back(s);
                    idle[i] = nullptr;
                } else if (keepalive_due(s) <= now) {
                    // A dirty connection (reset pending until checkout) may hold an open
                    // transaction, so it is not pinged: its reset, a round trip too, runs now.
                    (s->dirty ? to_reset : to_ping).push_back(s);
                    idle[i] = nullptr;
                }
            }
            for (std::size_t i = idle.size(); i-- > 0;) { // LRU first, so the MRU ends on top
                if (!idle[i]) continue;
                due = std::min({due, idle[i]->expires, keepalive_due(idle[i])});
                if (ctx_->idle_timeout && keep_count > ctx_->min_idle)
                    due = std::min(due, used_at(*idle[i]) + *ctx_->idle_timeout);
                deliver_locked(idle[i]);
            }
            const std::size_t idle_after = keep_count;
            // (trouble_locked(): the top-up's connects stop with close() through its close_source)
            if (!has_waiters_locked() && idle_after < ctx_->min_idle && !in_backoff_locked(now) && trouble_locked()) {
                top_up = std::min({ctx_->min_idle - idle_after, ctx_->max_size - open_,
                                   ctx_->max_connecting - std::min<std::size_t>(connecting_, ctx_->max_connecting)});
                for (std::size_t i = 0; i < top_up; ++i) {
                    slot* s = try_reserve_locked();
                    if (!s) {
                        top_up = i;
                        refused = ctx_->budget != nullptr; // no connection budget left: not our room to wait for
                        break;
                    }
                    idle.push_back(s);
                }
                if (top_up > 0 && !slow_->close_source.stop_possible()) slow_->close_source = std::stop_source{};
            }
            grant_permits_locked(now);
            if (top_up > 0) on_close = slow_->close_source.get_token();
            if (failures() > 0 && (has_waiters_locked() || top_up < ctx_->min_idle - std::min(ctx_->min_idle, idle_after)))
                due = std::min(due, slow_->backoff_until);
            quiet = !has_waiters_locked() && connecting_ == 0 && failures() == 0;
        }
        for (const lease_report& l : leaks) notify_leak(ctx_->obs, l);
        for (std::size_t i = 0; i < to_close.size(); ++i) (void)dispose(to_close[i], why[i]);
        for (slot* s : to_reset) {
            tally(s->resets, [this] { carry(&trouble::resets_carried); });
            if (reset_connection(*ctx_, s)) {
                body(s).last_pinged = ctx_->clock->now(); // a reset is a round trip: it counts as a keepalive
                due = std::min(due, keepalive_due(s));
                deliver(s);
            } else {
                (void)dispose(s, close_reason::reset_failed);
            }
        }
        if constexpr (connector_has_ping<Connector>) {
            for (slot* s : to_ping) {
                bool ok = false;
                try {
                    ok = ctx_->connector.ping(*body(s).conn);
                } catch (...) {
                }
                if (ok) {
                    body(s).last_pinged = ctx_->clock->now();
                    due = std::min(due, keepalive_due(s));
                    deliver(s);
                } else {
                    (void)dispose(s, close_reason::broken);
                }
            }
        }
        for (std::size_t i = 0; i < top_up; ++i) {
            slot* s = idle[idle.size() - top_up + i];
            std::error_code ec;
            if (open_connection(s, now + ctx_->connect_timeout, on_close, ec, false)) {
                s->state.store(static_cast<std::uint8_t>(slot_state::idle), std::memory_order_relaxed);
                deliver(s);
            }
        }
        // Connections reset or opened above are new idle ones: due no earlier than the ones kept,
        // except that a connection opened now could expire before them only if lifetime < idle scan.
        if (top_up > 0 || !to_reset.empty()) {
            std::lock_guard lk(m_);
            if (failures() > 0) due = std::min(due, slow_->backoff_until);
            if (ctx_->idle_timeout && open_ > ctx_->min_idle) due = std::min(due, now + *ctx_->idle_timeout);
            if (ctx_->max_lifetime) due = std::min(due, now + *ctx_->max_lifetime - ctx_->lifetime_jitter);
        }
        // min_idle still unmet although there is room now (the top-up was sized while the
        // connections closed above still counted against max_size, or was capped by max_connecting):
        // due at once, so the next pass opens the rest. Each pass opens or starts a backoff.
        if (ctx_->min_idle > 0 && !refused) {
            std::lock_guard lk(m_);
            if (!closed_ && !has_waiters_locked() && open_ < ctx_->max_size && connecting_ < ctx_->max_connecting &&
                !in_backoff_locked(now) && idle_count_locked() < ctx_->min_idle)
                due = std::min(due, now);
        }
        note_next_pass(quiet, now, due);
        return due;
    }

    /// For a registry's maintain(): whether this pool may go without a pass at `now` because
    /// its last one found it quiet with nothing due before a later time (context::pass_slack),
    /// which then lowers `due` to that time.
    bool skip_pass(time_point now, time_point& due) const noexcept {
        const std::uint32_t v = next_pass_.load(std::memory_order_relaxed);
        if (v == 0) return false;
        const std::int64_t n = pass_units(now);
        const auto ahead = static_cast<std::int32_t>(v - static_cast<std::uint32_t>(n));
        if (ahead <= 0 || ahead > pass_reach) return false;
        due = std::min(due, time_point(std::chrono::duration_cast<duration>(std::chrono::nanoseconds((n + ahead) << pass_shift))));
        return true;
    }

    // ---- stats -----------------------------------------------------------------------------

    pool_stats stats() const noexcept {
        pool_stats r;
        std::lock_guard lk(m_);
        r.size = open_;
        r.connecting = connecting_;
        const trouble none_yet{};
        const trouble& t = slow_ ? *slow_ : none_yet;
        r.waiters = t.waiters.size();
        r.peak_size = peak_size_;
        r.peak_waiters = t.peak_waiters;
        for (std::size_t i = 0; i < ctx_->max_size; ++i) {
            const slot& s = *slot_of(i);
            auto st = static_cast<slot_state>(s.state.load(std::memory_order_relaxed));
            if (st == slot_state::idle) ++r.idle;
            if (st == slot_state::in_use) ++r.in_use;
            r.acquires += s.uses.load(std::memory_order_relaxed);
            r.resets += s.resets.load(std::memory_order_relaxed);
        }
        r.acquires += t.uses_carried;
        r.resets += t.resets_carried;
        r.waits = t.waits;
        r.wait_time = t.wait_time;
        r.timeouts = t.timeouts;
        r.cancels = t.cancels;
        r.rejected = t.rejected;
        r.leaks = t.leaks;
        r.connects_ok = connects_ok_;
        r.connects_failed = t.connects_failed;
        r.closes = t.closes;
        return r;
    }

    std::size_t idle_count_locked() const noexcept {
        std::size_t n = 0;
        for (std::size_t i = 0; i < ctx_->max_size; ++i)
            if (static_cast<slot_state>(slot_of(i)->state.load(std::memory_order_relaxed)) == slot_state::idle) ++n;
        return n;
    }

    /// True while a lease is out, a connect is in flight or a caller waits: a registry does not
    /// count such a pool as idle.
    bool busy() const noexcept {
        std::lock_guard lk(m_);
        if (connecting_ > 0 || has_waiters_locked()) return true;
        for (std::size_t i = 0; i < ctx_->max_size; ++i)
            if (static_cast<slot_state>(slot_of(i)->state.load(std::memory_order_relaxed)) == slot_state::in_use)
                return true;
        return false;
    }

    /// What a registry reads of a pool of its own instead of stamping its entry on every hit (the
    /// checkout stamps the slot already). uses_mod32(): the sum of the slots' use counts, modulo
    /// 2^32 (it changes with every checkout); no lock, each count read once (a checkout racing
    /// with the read is seen by the next). last_use(): the time of the latest checkout or
    /// acquire's own connect, under the lock; a slot whose connection maintain() opened and no one
    /// has checked out since does not count (opened for min_idle, not asked for).
    std::uint32_t uses_mod32() const noexcept {
        std::uint32_t n = 0;
        for (std::size_t i = 0; i < ctx_->max_size; ++i) n += slot_of(i)->uses.load(std::memory_order_relaxed);
        return n;
    }
    time_point last_use() const noexcept {
        std::lock_guard lk(m_);
        time_point t{};
        for (std::size_t i = 0; i < ctx_->max_size; ++i) {
            const slot& s = *slot_of(i);
            if (s.uses.load(std::memory_order_relaxed) != body(&s).uses_at_connect) t = std::max(t, used_at(s));
        }
        return t;
    }

    std::error_code last_connect_error() const noexcept {
        std::lock_guard lk(m_);
        return slow_ ? slow_->last_connect_error : std::error_code{};
    }

private:
    static constexpr std::uint32_t none = 0xFFFF;
    static constexpr std::uint64_t index_mask = 0xFFFF;
    static constexpr std::uint64_t waiters_bit = 1ULL << 16;
    static constexpr std::uint64_t closed_bit = 1ULL << 17;
    static constexpr std::uint64_t tag_one = 1ULL << 18;
    static constexpr std::uint32_t cache_blocked = 1U << 16;
    // rseq mode: a word a remote (under m_) is taking over; neither owner sequence commits on it.
    static constexpr std::uint32_t cache_locked = (1U << 17) | cache_blocked | none;

    /// Restartable sequences for this pool's caches: only where the process can (percpu.hpp)
    /// and the CPU number is the kernel's (a Sync with its own cpu() routes by that instead).
    static bool use_rseq() noexcept {
        if constexpr (!thread_safe || requires { Sync::cpu(); })
            return false;
        else
            return percpu::available();
    }

    struct waiter : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::safe_link>> {
        enum class outcome : std::uint8_t { pending, served, permit, failed };
        explicit waiter(const Clock& c) : ev(c) {
            ticket.wake = [](void* e) { static_cast<typename Clock::event*>(e)->set(); };
            ticket.ctx = &ev;
        }
        outcome result = outcome::pending;
        slot* s = nullptr;
        std::error_code ec;
        // Completing a waiter = setting result/s/ec under m_, then signalling. A blocked thread
        // sleeps on this event; an asynchronous acquire would complete through a callback instead.
        typename Clock::event ev;
        connection_budget::ticket ticket; // evict::size: this waiter's place in the budget queue
    };
    using waiter_list = boost::intrusive::list<waiter, boost::intrusive::constant_time_size<true>>;

    /// What only waiting, failing and closing use, allocated the first time a caller waits, a
    /// connect fails, an acquire times out, a connection closes or close(deadline) waits: most
    /// pools of a large registry never need it, and each would pay ~200 bytes for it. Under m_.
    struct trouble {
        waiter_list waiters;
        std::error_code last_connect_error;
        unsigned failures = 0; // consecutive failed connects (backoff)
        time_point backoff_until{};
        std::optional<typename Clock::event> drained; // made by the first close(deadline)
        std::uint64_t peak_waiters = 0, waits = 0, timeouts = 0, cancels = 0, rejected = 0, leaks = 0;
        std::uint64_t connects_failed = 0;
        std::uint64_t uses_carried = 0, resets_carried = 0; // the slots' 32-bit counts' wraps (carry)
        std::chrono::nanoseconds wait_time{0};
        std::array<std::uint64_t, close_reason_count> closes{}; // an idle pool has closed nothing
        std::stop_source close_source{std::nostopstate}; // made when maintenance first connects
        boost::intrusive_ptr<retired_list> retired;      // a registry's, once the pool has left it
    };

    /// slow_, made if missing; nullptr only when out of memory (under m_).
    trouble* trouble_locked() noexcept {
        if (!slow_) slow_.reset(new (std::nothrow) trouble);
        return slow_.get();
    }
    /// Counts a rare event (under m_). Out of memory, the count is lost, never the caller's result.
    void count(std::uint64_t trouble::*counter) noexcept {
        if (trouble* t = trouble_locked()) ++(t->*counter);
    }
    /// A slot's 32-bit count wrapped (tally): 2^32 more in the pool's total. Called by the slot's
    /// owner, never under m_. Out of memory, the carry is lost, never the caller's result.
    KEYPOOL_NOINLINE void carry(std::uint64_t trouble::*total) noexcept {
        std::lock_guard lk(m_);
        if (trouble* t = trouble_locked()) t->*total += std::uint64_t{1} << 32;
    }
    // next_pass_'s unit: 2^20 ns (≈ 1 ms) of the clock, kept modulo 2^32 and compared as a
    // signed difference, so never set more than 2^30 units (≈ 13 days) ahead.
    static constexpr int pass_shift = 20;
    static constexpr std::int64_t pass_reach = std::int64_t{1} << 30;
    static std::int64_t pass_units(time_point t) noexcept {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count() >> pass_shift;
    }
    /// maintain()'s end: when the pool needs its next pass, if it was quiet (no waiters, no
    /// connect in flight, no failure) and the context allows a slack; else at the next pass.
    void note_next_pass(bool quiet, time_point now, time_point due) noexcept {
        std::uint32_t v = 0;
        if (quiet && ctx_->pass_slack > duration::zero()) {
            const std::int64_t ahead = pass_units(std::min(due, saturating_add(now, ctx_->pass_slack))) - pass_units(now);
            if (ahead > 0) { // (rounded down: the pass comes at the latest when due)
                v = static_cast<std::uint32_t>(pass_units(now) + std::min(ahead, pass_reach));
                if (v == 0) v = ~std::uint32_t{0}; // (0 means the next pass; a unit earlier is as good)
            }
        }
        next_pass_.store(v, std::memory_order_relaxed);
    }

    bool has_waiters_locked() const noexcept { return slow_ && !slow_->waiters.empty(); }
    unsigned failures() const noexcept { return slow_ ? slow_->failures : 0; }


    static pool_options clamped(pool_options o) noexcept {
        o.max_connecting = std::min(o.max_connecting, o.max_size);
        return o;
    }

    static std::uint64_t seed_from_address() noexcept {
        static std::uint64_t salt = 0x243f6a8885a308d3ULL;
        return reinterpret_cast<std::uintptr_t>(&salt) ^
               static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    }

    static time_point used_at(const slot& s) noexcept {
        return time_point(duration(s.last_used.load(std::memory_order_relaxed)));
    }
    static void set_used_at(slot& s, time_point t) noexcept {
        s.last_used.store(t.time_since_epoch().count(), std::memory_order_relaxed);
    }


    /// Links an owned slot in front of a chain (through `next`); returns the new head.
    slot* prepend(slot* s, slot* chain) noexcept {
        s->next.store(chain ? index_of(chain) : none, std::memory_order_relaxed);
        return s;
    }

    slot* next_of(slot* s) noexcept {
        std::uint32_t n = s->next.load(std::memory_order_relaxed);
        return n == none ? nullptr : slot_of(n);
    }

    // ---- per-CPU caches (pool_options::cpu_caches) ---------------------------------------------
    // Each cache word holds `none` (empty), a slot index (one idle connection), or
    // `cache_blocked | none`. Blocked means "go to the idle stack": set while callers wait (so a
    // new caller cannot take a cached connection past them, and a release cannot park one where
    // a waiter would not see it) and forever after close. Only code holding m_ blocks or unblocks
    // a word, and nobody else writes a blocked word.
    //
    // Two ways to reach a word, fixed per context (context::rseq_caches):
    // - rseq: word j belongs to the thread running with concurrency id j, or on CPU j (percpu.hpp;
    //   ids or CPUs from n_caches on have none and use the stack). Its
    //   owners take and put with a restartable sequence, no locked instruction; everything else
    //   (stealing, blocking, emptying) holds m_ and goes through percpu::seize_all.
    // - compare-and-swap: word cpu & (n_caches - 1), one CAS for every access, from anywhere.

    std::atomic<std::uint32_t>* cache_words() const noexcept {
        static_assert(sizeof(cpu_cache) == percpu::stride);
        return &caches_[0].word;
    }

    KEYPOOL_ALWAYS_INLINE std::atomic<std::uint32_t>& my_cache() noexcept {
        unsigned cpu;
        if constexpr (requires { Sync::cpu(); })
            cpu = Sync::cpu();
        else
            cpu = current_cpu();
        return caches_[cpu & (ctx_->n_caches - 1)].word;
    }

    KEYPOOL_ALWAYS_INLINE slot* take_cached(std::atomic<std::uint32_t>& c) noexcept {
        std::uint32_t w = c.load(std::memory_order_relaxed);
        while (w < none)
            if (c.compare_exchange_weak(w, none, std::memory_order_acquire, std::memory_order_relaxed))
                return slot_of(w);
        return nullptr;
    }

    /// Another CPU's cached connection, when this CPU's cache and the idle stack are empty
    /// (compare-and-swap mode: from the fast path; rseq mode: under m_, with no waiters queued,
    /// and the other cached connections go back to the stack).
    slot* steal_cached() noexcept {
        if (ctx_->rseq_caches) {
            slot* first = seize_caches_locked(nullptr, none);
            if (first)
                for (slot* s = next_of(first); s;) {
                    slot* next = next_of(s);
                    push_locked(s);
                    s = next;
                }
            return first;
        }
        for (std::size_t j = 0; j < ctx_->n_caches; ++j)
            if (slot* s = take_cached(caches_[j].word)) return s;
        return nullptr;
    }

    /// Under m_, when the first waiter queues or the pool closes: blocks every cache and returns
    /// the connections they held, chained through `next`, in front of `chain`.
    slot* block_caches_locked(slot* chain) noexcept {
        if (ctx_->rseq_caches) return seize_caches_locked(chain, cache_blocked | none);
        for (std::size_t j = ctx_->n_caches; j-- > 0;) {
            const std::uint32_t w = caches_[j].word.exchange(cache_blocked | none, std::memory_order_acquire);
            if (w < none) chain = prepend(slot_of(w), chain);
        }
        return chain;
    }

    /// Under m_, when the last waiter leaves an open pool. (rseq mode too: no owner sequence
    /// commits on a blocked word, so a plain store cannot be overwritten.)
    void unblock_caches_locked() noexcept {
        for (std::size_t j = 0; j < ctx_->n_caches; ++j) caches_[j].word.store(none, std::memory_order_relaxed);
    }

    static constexpr auto every_slot = [](const slot&) noexcept { return true; };

    /// rseq mode, under m_: takes every word that holds a connection `want` accepts (and, to
    /// block, every word not yet blocked) from its owners: percpu::seize_all.
    template <class Want = decltype(every_slot)>
    slot* seize_caches_locked(slot* chain, std::uint32_t final, const Want& want = every_slot) noexcept {
        percpu::seize_all(
            cache_words(), ctx_->n_caches, none, final, cache_locked, [&](std::uint32_t v) { return want(*slot_of(v)); },
            [&](std::uint32_t v) {
                if (v < none) chain = prepend(slot_of(v), chain);
            },
            percpu::fence);
        return chain;
    }

    // ---- the idle stack (Treiber stack of slot indices in head_) -------------------------------

    /// The calling thread's cached connection (its word: a restartable sequence, or one CAS),
    /// else the top of the idle stack (one CAS), else (CAS mode only) another word's; nullptr if
    /// none is free or callers are queued. (rseq mode steals under m_: acquire_slow,
    /// pop_idle_or_steal.)
    /// `x`: this core's context, which the caller may have at hand (a registry): then the pop
    /// reads nothing of the core's own fields when the pool has no cache words.
    /// `known`: the head when the caller has its address at hand (a registry's hit: in the key's
    /// record), else null (computed from the core's).
    KEYPOOL_ALWAYS_INLINE slot* pop_fast(const context& x, head_type* known = nullptr) noexcept {
        if constexpr (thread_safe) {
            if (x.has_caches) {
                if (x.rseq_caches) {
                    std::uint32_t w;
                    if (percpu::swap_if_below(cache_words(), x.n_caches, none, none, w)) return slot_at(this, x, w);
                } else if (slot* s = take_cached(my_cache())) {
                    return s;
                }
            }
        }
        head_type& head = known ? *known : head_at(this, x);
        std::uint64_t h = head.load(std::memory_order_acquire);
        for (;;) {
            if (h & (waiters_bit | closed_bit)) return nullptr;
            std::uint32_t i = static_cast<std::uint32_t>(h & index_mask);
            if (i == none) return x.has_caches && !x.rseq_caches ? steal_cached() : nullptr; // (rseq: under m_)
            slot* const s = slot_near(this, x, head, i);
            std::uint64_t nh = ((h & ~index_mask) + tag_one) | s->next.load(std::memory_order_relaxed);
            if (head.compare_exchange_weak(h, nh, std::memory_order_acquire, std::memory_order_acquire)) {
                KEYPOOL_ASSUME(s != nullptr); // (so a caller's test for none folds away)
                return s;
            }
        }
    }

    /// pop_fast(); with a connector that has `reset_ready`, a connection whose begun reset is
    /// still waiting for its answer is swapped for the next idle one if that one is ready.
    KEYPOOL_ALWAYS_INLINE slot* pop_ready(const context& x, head_type* known = nullptr) noexcept {
        slot* s = pop_fast(x, known);
        if constexpr (connector_has_reset_ready<Connector>) {
            if (s && !reset_ready(s)) s = prefer_ready(s);
        }
        return s;
    }

    bool reset_ready(slot* s) noexcept {
        if (!s->dirty) return true;
        try {
            return ctx_->connector.reset_ready(*body(s).conn);
        } catch (...) {
            return true; // the checkout's reset finds out
        }
    }

    /// `s` (ours) still waits for its reset's answer: take the next idle connection instead if its
    /// reset is done, and put `s` back on top. Else keep `s` (most recently used first).
    KEYPOOL_NOINLINE slot* prefer_ready(slot* s) noexcept {
        slot* t = pop_fast(*ctx_);
        if (!t) return s;
        if (!reset_ready(t)) std::swap(s, t); // neither is ready: keep the more recent one
        // We own a connection (t), so the core stays alive; a queued caller may take s at once.
        if (ctx_->budget)
            (void)release_budgeted(s, *ctx_);
        else if (slot* rest = push_fast(s, *ctx_))
            (void)release_slow(rest);
        return t;
    }

    /// Publishes an idle connection: into this CPU's cache (the connection it held moves to the
    /// idle stack), else onto the stack. Returns nullptr when done, or the slot the caller must
    /// deliver under the lock (callers are queued, or the pool is closed).
    /// `x`: this core's context (see pop_fast).
    KEYPOOL_ALWAYS_INLINE slot* push_fast(slot* s, const context& x) noexcept {
        if constexpr (thread_safe) {
            if (x.has_caches) {
                std::uint32_t w = cache_blocked; // what the cache held; blocked = not cached
                if (x.rseq_caches) {
                    // Commits only on an empty word or one holding a connection (not blocked or
                    // locked); leaves w alone otherwise.
                    (void)percpu::swap_if_below(cache_words(), x.n_caches, none + 1, index_of(s), w);
                } else {
                    std::atomic<std::uint32_t>& c = my_cache();
                    w = c.load(std::memory_order_relaxed);
                    while (!(w & cache_blocked) &&
                           !c.compare_exchange_weak(w, index_of(s), std::memory_order_acq_rel, std::memory_order_relaxed)) {
                    }
                }
                if (w == none) return nullptr;
                if (w < none) s = slot_at(this, x, w); // displaced: ours now, so the core stays alive while we push it
            }
        }
        const std::uint32_t i = index_of(s);
        // Slot 0's header lies at a fixed distance from the head (in a registry's pool, both in
        // the key's record): no need to find the record from the core's address.
        head_type& head = i == 0 ? head_before(s, x) : head_at(this, x);
        std::uint64_t h = head.load(std::memory_order_relaxed);
        for (;;) {
            if (h & (waiters_bit | closed_bit)) return s;
            s->next.store(static_cast<std::uint32_t>(h & index_mask), std::memory_order_relaxed);
            std::uint64_t nh = ((h & ~index_mask) + tag_one) | i;
            if (head.compare_exchange_weak(h, nh, std::memory_order_release, std::memory_order_relaxed))
                return nullptr;
        }
    }

    // Under m_ with WAITERS and CLOSED clear: nobody else pushes, but fast pops may still race.
    void push_locked(slot* s) noexcept {
        const std::uint32_t i = index_of(s);
        std::uint64_t h = head().load(std::memory_order_relaxed);
        for (;;) {
            s->next.store(static_cast<std::uint32_t>(h & index_mask), std::memory_order_relaxed);
            std::uint64_t nh = ((h & ~index_mask) + tag_one) | i;
            if (head().compare_exchange_weak(h, nh, std::memory_order_release, std::memory_order_relaxed))
                return;
        }
    }

    /// Empties the idle stack (setting `extra` flag bits) and the per-CPU caches (blocking them
    /// for good if `extra` has CLOSED; else taking only the connections `want` accepts) and returns
    /// their chain, MRU first: cached ones, then the stack.
    template <class Want = decltype(every_slot)>
    slot* take_all_idle_locked(std::uint64_t extra, const Want& want = every_slot) noexcept {
        std::uint64_t h = head().load(std::memory_order_acquire);
        for (;;) {
            std::uint64_t nh = ((h & ~index_mask) + tag_one) | none | extra;
            if (head().compare_exchange_weak(h, nh, std::memory_order_acquire, std::memory_order_acquire))
                break;
        }
        std::uint32_t i = static_cast<std::uint32_t>(h & index_mask);
        slot* chain = i == none ? nullptr : slot_of(i);
        // reset_at::background's dirty list: returned most recently, so in front.
        if (dirty_head_ != none) {
            slot* last = slot_of(dirty_head_);
            while (next_of(last)) last = next_of(last);
            last->next.store(chain ? index_of(chain) : none, std::memory_order_relaxed);
            chain = slot_of(dirty_head_);
            dirty_head_ = none;
        }
        if (extra & closed_bit) return block_caches_locked(chain);
        if (ctx_->rseq_caches) return seize_caches_locked(chain, none, want);
        for (std::size_t j = ctx_->n_caches; j-- > 0;) {
            const std::uint32_t w = caches_[j].word.load(std::memory_order_acquire);
            if (w < none && want(*slot_of(w)))
                if (slot* c = take_cached(caches_[j].word)) chain = prepend(c, chain);
        }
        return chain;
    }

    slot* pop_locked() noexcept {
        std::uint64_t h = head().load(std::memory_order_acquire);
        for (;;) {
            std::uint32_t i = static_cast<std::uint32_t>(h & index_mask);
            if (i == none) return nullptr;
            std::uint64_t nh = ((h & ~index_mask) + tag_one) | slot_of(i)->next.load(std::memory_order_relaxed);
            if (head().compare_exchange_weak(h, nh, std::memory_order_acquire, std::memory_order_acquire))
                return slot_of(i);
        }
    }

    // ---- waiters -------------------------------------------------------------------------------

    void complete_locked(waiter& w, typename waiter::outcome o, slot* s, std::error_code ec) noexcept {
        waiter_list& q = slow_->waiters; // a waiter exists: so does slow_
        q.erase(q.iterator_to(w));
        if (q.empty()) {
            head().fetch_and(~waiters_bit);
            if (!closed_) unblock_caches_locked();
        }
        w.result = o;
        w.s = s;
        w.ec = ec;
        w.ev.set();
    }

    void fail_all_waiters_locked(std::error_code ec) noexcept {
        while (has_waiters_locked()) complete_locked(slow_->waiters.front(), waiter::outcome::failed, nullptr, ec);
    }

    /// Gives a returned or new connection to the oldest waiter, or makes it idle.
    /// Returns true if it was handed to a waiter.
    bool deliver_locked(slot* s) noexcept {
        if (has_waiters_locked()) {
            complete_locked(slow_->waiters.front(), waiter::outcome::served, s, {});
            return true;
        }
        s->state.store(static_cast<std::uint8_t>(slot_state::idle), std::memory_order_relaxed);
        push_locked(s);
        idled_locked();
        return false;
    }

    /// Under m_, after a connection became idle outside release(): a budget's walker that already
    /// looked at this pool must not conclude that none is idle (detail/budget.hpp).
    void idled_locked() noexcept {
        if (ctx_->budget) [[unlikely]]
            ctx_->budget->idled();
    }

    void deliver(slot* s) noexcept {
        bool dispose_it = false;
        {
            std::lock_guard lk(m_);
            if (closed_)
                dispose_it = true;
            else
                deliver_locked(s);
        }
        if (dispose_it) (void)dispose(s, close_reason::closed);
    }

    /// evict::size with callers waiting for a token: our own waiters get the connection; if there
    /// are none, it is closed so its token goes to the oldest caller of any key.
    bool release_to_budget(slot* s) noexcept {
        bool closed = false;
        {
            std::lock_guard lk(m_);
            closed = closed_;
            if (!closed && has_waiters_locked()) {
                deliver_locked(s);
                return false;
            }
        }
        return dispose(s, closed ? close_reason::closed : close_reason::trimmed);
    }

    /// reset_at::background: a returned connection waits on the dirty list for maintain() (woken
    /// through the context's reset signal), so borrowers get reset connections; a waiter takes it at once.
    bool release_dirty(slot* s) noexcept {
        {
            std::unique_lock lk(m_);
            if (closed_) {
                lk.unlock();
                return dispose(s, close_reason::closed);
            }
            if (has_waiters_locked()) {
                deliver_locked(s); // it resets at checkout: sooner than the resetter
                return false;
            }
            s->next.store(dirty_head_, std::memory_order_relaxed);
            dirty_head_ = index_of(s);
            idled_locked();
            if constexpr (std::is_same_v<Reset, reset_at::background>) ctx_->signal_reset();
        }
        return false;
    }

    slot* pop_dirty_locked() noexcept {
        if (dirty_head_ == none) return nullptr;
        slot* s = slot_of(dirty_head_);
        dirty_head_ = s->next.load(std::memory_order_relaxed);
        return s;
    }

    bool release_slow(slot* s) noexcept {
        bool yield = false;
        {
            std::unique_lock lk(m_);
            if (closed_) {
                lk.unlock();
                return dispose(s, close_reason::closed);
            }
            // Read before unlocking: once the waiter has the connection it may return it into a
            // pool whose owner is gone and free the core before this thread runs again.
            yield = deliver_locked(s) && ctx_->yield_after_handoff;
        }
        // Let the woken waiter run before this thread can queue again (see pool_options).
        if (yield) std::this_thread::yield();
        return false;
    }

    // ---- capacity: reservations, permits, backoff ------------------------------------------------

    slot* reserve_locked() noexcept {
        slot* s = slot_of(free_head_);
        free_head_ = s->next.load(std::memory_order_relaxed);
        s->state.store(static_cast<std::uint8_t>(slot_state::connecting), std::memory_order_relaxed);
        ++open_;
        ctx_->opened();
        ++connecting_;
        peak_size_ = std::max<std::uint64_t>(peak_size_, open_);
        return s;
    }

    /// Reserves a slot for a new connection if the pool (and the budget, if any) has room.
    slot* try_reserve_locked() noexcept {
        if (!can_connect_locked()) return nullptr;
        if (ctx_->budget && !ctx_->budget->try_take()) return nullptr;
        return reserve_locked();
    }

    void free_locked(slot* s) noexcept {
        s->state.store(static_cast<std::uint8_t>(slot_state::empty), std::memory_order_relaxed);
        s->next.store(free_head_, std::memory_order_relaxed);
        free_head_ = index_of(s);
        --open_;
        ctx_->closed_one();
        if (ctx_->budget) ctx_->budget->give_back();
        signal_if_drained_locked();
    }

    void signal_if_drained_locked() noexcept {
        if (closed_ && open_ == 0 && slow_ && slow_->drained) slow_->drained->set();
    }

    bool can_connect_locked() const noexcept {
        return !closed_ && open_ < ctx_->max_size && connecting_ < ctx_->max_connecting;
    }

    /// When an idle connection is next due for a keepalive (max() without keepalive).
    time_point keepalive_due(const slot* s) const noexcept {
        if constexpr (!connector_has_ping<Connector>) return time_point::max();
        if (!ctx_->keepalive_after) return time_point::max();
        return std::max(used_at(*s), body(s).last_pinged) + *ctx_->keepalive_after;
    }

    bool in_backoff_locked(time_point now) const noexcept { return failures() > 0 && now < slow_->backoff_until; }

    /// Hands connect permits to the oldest waiters while there is room to connect.
    void grant_permits_locked(time_point now) noexcept {
        if (!has_waiters_locked() || !can_connect_locked() || in_backoff_locked(now)) return;
        while (has_waiters_locked()) {
            slot* s = try_reserve_locked();
            if (!s) break;
            complete_locked(slow_->waiters.front(), waiter::outcome::permit, s, {});
        }
    }
    void grant_permits_locked() noexcept {
        if (!has_waiters_locked() || !can_connect_locked()) return;
        grant_permits_locked(failures() > 0 ? ctx_->clock->now() : time_point{});
    }

    duration next_backoff_locked() noexcept {
        duration d = ctx_->backoff_initial;
        for (unsigned i = 1; i < failures() && d < ctx_->backoff_max; ++i) d *= 2;
        d = std::min(d, ctx_->backoff_max);
        return rng_.between(d / 2, d);
    }

    time_point expiry_for(time_point created) noexcept {
        if (!ctx_->max_lifetime) return time_point::max();
        return created + *ctx_->max_lifetime - rng_.between(duration::zero(), ctx_->lifetime_jitter);
    }

    // ---- connect, checkout, reset, dispose --------------------------------------------------------

    /// Connects into the reserved slot `s`. On success the slot holds the connection and belongs to
    /// the caller; on failure the slot is freed and `ec` says why.
    /// `for_acquire`: an acquire's own connect (its timeout or cancellation is counted in stats);
    /// false for maintain()'s top-up.
    bool open_connection(slot* s, time_point deadline, std::stop_token st, std::error_code& ec,
                         bool for_acquire = true) noexcept {
        const time_point start = ctx_->clock->now();
        const time_point cd = std::min(deadline, start + ctx_->connect_timeout);
        std::optional<connection_type> c;
        std::error_code cec;
        try {
            c = ctx_->connector.connect(target_, cd, st, cec);
        } catch (...) {
            c.reset();
            cec = make_error_code(errc::connect_failed);
        }
        if (!c && !cec) cec = make_error_code(errc::connect_failed);
        const time_point end = ctx_->clock->now();
        notify_connect(ctx_->obs, end - start, c ? std::error_code{} : cec);

        std::unique_lock lk(m_);
        --connecting_;
        if (c) {
            ++connects_ok_;
            if (slow_) slow_->failures = 0;
            body(s).conn.emplace(std::move(*c));
            if constexpr (connector_has_hot<Connector>) ctx_->connector.bind(*body(s).conn, s->hot);
            set_used_at(*s, end);
            // (an acquire's own connect is a use: its stamp counts at once)
            body(s).uses_at_connect = s->uses.load(std::memory_order_relaxed) - (for_acquire ? 1 : 0);
            s->retire.store(0, std::memory_order_relaxed);
            body(s).seen_uses = 0;
            body(s).seen_in_use_at = {};
            s->leak_reported = false;
            s->expires = expiry_for(end);
            s->dirty = false;
            s->state.store(static_cast<std::uint8_t>(slot_state::in_use), std::memory_order_relaxed);
            if (closed_) {
                lk.unlock();
                (void)dispose(s, close_reason::closed);
                ec = make_error_code(errc::closed);
                return false;
            }
            grant_permits_locked(); // a connect slot came free
            return true;
        }
        trouble* t = trouble_locked(); // out of memory: the failure is reported, not counted or backed off
        if (t) ++t->connects_failed;
        free_locked(s);
        // A connect ended by the caller's own deadline or stop says nothing about the server. One
        // the server refused (any other error) does, even if the caller's deadline passed meanwhile:
        // the caller gets that error, and the failure counts for backoff.
        const bool own = st.stop_requested() ||
                         (end >= deadline && (cec == errc::timeout || cec == errc::cancelled));
        if (own) {
            ec = make_error_code(st.stop_requested() ? errc::cancelled : errc::timeout);
            if (for_acquire && t) ++(st.stop_requested() ? t->cancels : t->timeouts);
        } else {
            ec = cec;
            if (t) {
                t->last_connect_error = cec;
                ++t->failures;
                t->backoff_until = end + next_backoff_locked();
            }
            // Nothing open and nothing connecting: no waiter can be served before the backoff
            // ends, so tell them the real error now instead of letting them time out.
            if (open_ == 0) fail_all_waiters_locked(cec);
        }
        grant_permits_locked(end);
        return false;
    }

    /// checkout's rare part, out of line: lifetime over, or idle long enough to validate.
    KEYPOOL_NOINLINE checkout_result checkout_checks(slot* s, time_point now) noexcept {
        if (now >= s->expires) return checkout_failed(s, close_reason::lifetime);
        bool ok = false;
        try {
            ok = ctx_->connector.alive(*body(s).conn);
        } catch (...) {
        }
        return ok ? checkout_result::ok : checkout_failed(s, close_reason::broken);
    }

    KEYPOOL_NOINLINE checkout_result checkout_failed(slot* s, close_reason why) noexcept {
        return dispose(s, why) ? checkout_result::delete_core : checkout_result::retry;
    }

    /// The deadline a reset at checkout may take: the caller's, from the coarse time checkout read.
    template <class When>
    static time_point reset_deadline(time_point now, const When& when) noexcept {
        if constexpr (std::is_same_v<When, time_point>) return when;
        else if constexpr (std::is_same_v<When, no_deadline>) return time_point::max();
        else return saturating_add(now, when);
    }

    /// Runs the connector's reset; one with `reset(connection, deadline)` gets the caller's deadline
    /// (`when` from the coarse time `now` checkout read; max() without a caller: the connector's
    /// own limit applies; nothing is computed for a connector without it); else one with a hot
    /// part (connector_has_hot) gets the slot's, so a clean connection's reset reads only the
    /// slot's header. `x`: this core's context.
    template <class When = no_deadline>
    KEYPOOL_ALWAYS_INLINE bool reset_connection(context& x, slot* s, time_point now = {}, const When& when = {}) noexcept {
        try {
            if constexpr (connector_has_reset_until<Connector>) {
                if (!x.connector.reset(connection_at(this, x, s), reset_deadline(now, when))) return false;
            } else if constexpr (connector_has_hot<Connector>) {
                if (!x.connector.reset(connection_at(this, x, s), s->hot)) return false;
            } else {
                if (!x.connector.reset(connection_at(this, x, s))) return false;
            }
        } catch (...) {
            return false;
        }
        s->dirty = false;
        return true;
    }

    /// Makes an owned slot's connection fit to lease: lifetime, liveness, pending reset.
    /// On failure the connection is closed and false returned. Only for callers that keep the
    /// pool object alive (so closing cannot be the core's last act).
    template <class When = no_deadline, class Site = no_site>
    KEYPOOL_ALWAYS_INLINE bool checkout(slot* s, When when = {}, time_point* read_at = nullptr, Site site = {}) noexcept {
        const time_point now = ctx_->clock->coarse_now();
        if (read_at) *read_at = now;
        return checkout_detached(*ctx_, s, now, when, site) == checkout_result::ok;
    }

    KEYPOOL_NOINLINE slot* acquire_cancelled(std::error_code& ec) noexcept {
        ec = make_error_code(errc::cancelled);
        std::lock_guard lk(m_);
        count(&trouble::cancels);
        return nullptr;
    }

    KEYPOOL_NOINLINE slot* acquire_timed_out(std::error_code& ec) noexcept {
        ec = make_error_code(errc::timeout);
        std::lock_guard lk(m_);
        count(&trouble::timeouts);
        return nullptr;
    }

    /// Closes an owned slot's connection and frees the slot. True if the caller must delete the
    /// core (owner gone, last connection).
    [[nodiscard]] bool dispose(slot* s, close_reason why) noexcept {
        try {
            ctx_->connector.close(*body(s).conn);
        } catch (...) {
        }
        body(s).conn.reset();
        notify_close(ctx_->obs, why);
        if (why == close_reason::trimmed && ctx_->budget) ctx_->budget->count_trim();
        std::lock_guard lk(m_);
        if (trouble* t = trouble_locked()) ++t->closes[static_cast<std::size_t>(why)]; // (out of memory: not counted)
        free_locked(s);
        grant_permits_locked(); // room for a new connection
        return closed_ && owner_gone_ && open_ == 0;
    }

    // ---- the slow path of acquire -------------------------------------------------------------

    slot* acquire_slow(time_point deadline, std::stop_token& st, std::error_code& ec) noexcept {
        std::unique_lock lk(m_);
        for (bool trimmed = false;; trimmed = true) {
            if (closed_) return fail(ec, errc::closed);
            if (has_waiters_locked()) break;
            if (slot* s = pop_locked()) return s;
            if (slot* s = steal_cached()) return s;
            if (slot* s = pop_dirty_locked()) return s; // background reset lags: reset it at checkout
            const time_point now = failures() > 0 ? ctx_->clock->now() : time_point{};
            if (!in_backoff_locked(now)) {
                if (slot* s = try_reserve_locked()) {
                    lk.unlock();
                    return open_connection(s, deadline, st, ec) ? s : nullptr;
                }
                // evict::size: room here but no token. Close another key's least recently used
                // idle connection (once), then look again; its token goes to whoever queued first.
                if (ctx_->budget && !trimmed && can_connect_locked()) {
                    lk.unlock();
                    const bool freed = ctx_->budget->trim(this);
                    lk.lock();
                    if (freed) continue;
                }
            }
            // Backing off with nothing open: no connection can appear before the backoff ends.
            if (in_backoff_locked(now) && open_ == 0) {
                ec = slow_->last_connect_error;
                return nullptr;
            }
            break;
        }
        if constexpr (!thread_safe) {
            return fail(ec, errc::would_deadlock); // no other thread can return a connection
        } else {
            if (st.stop_requested()) return count(&trouble::cancels), fail(ec, errc::cancelled);
            if (ctx_->clock->now() >= deadline) return count(&trouble::timeouts), fail(ec, errc::timeout);
            if (!trouble_locked()) { // the waiter queue lives there
                ec = std::make_error_code(std::errc::not_enough_memory);
                return nullptr;
            }
            if (slow_->waiters.size() >= ctx_->max_waiters) return count(&trouble::rejected), fail(ec, errc::pool_exhausted);
            if (ctx_->detect_self_deadlock && open_ >= ctx_->max_size && holds_lease_locked())
                return fail(ec, errc::would_deadlock);
            return wait(lk, deadline, st, ec);
        }
    }

    /// detect_self_deadlock: whether the calling thread holds a lease of this pool.
    bool holds_lease_locked() const noexcept {
        const auto me = std::this_thread::get_id();
        for (std::size_t i = 0; i < ctx_->max_size; ++i) {
            const slot& s = *slot_of(i);
            if (static_cast<slot_state>(s.state.load(std::memory_order_acquire)) == slot_state::in_use &&
                leases_[i].owner.load(std::memory_order_relaxed) == me)
                return true;
        }
        return false;
    }

    slot* fail(std::error_code& ec, errc e) noexcept {
        ec = make_error_code(e);
        return nullptr;
    }

    /// Queues the caller and blocks until it is served, handed a connect permit, failed, cancelled
    /// or out of time. Entered with m_ held; returns with it released.
    slot* wait(std::unique_lock<typename Sync::mutex_type>& lk, time_point deadline, std::stop_token& st,
               std::error_code& ec) noexcept {
        waiter w(*ctx_->clock);
        trouble& t = *slow_; // acquire_slow made it
        t.waiters.push_back(w);
        head().fetch_or(waiters_bit);
        ++t.waits;
        t.peak_waiters = std::max<std::uint64_t>(t.peak_waiters, t.waiters.size());
        // Connections pushed before WAITERS was set are still on the stack (and in the per-CPU
        // caches, which the first waiter blocks): hand them out in order.
        for (slot* c = t.waiters.size() == 1 ? block_caches_locked(nullptr) : nullptr; c;) {
            slot* next = next_of(c);
            deliver_locked(c);
            c = next;
        }
        while (!t.waiters.empty()) {
            slot* s = pop_locked();
            if (!s) break;
            deliver_locked(s);
        }
        grant_permits_locked();
        // A budgeted pool with room but no token: queue for one (in arrival order across all
        // pools), and free one by closing another key's least recently used idle connection.
        const bool wants_token = ctx_->budget && w.result == waiter::outcome::pending && open_ < ctx_->max_size;
        std::uint64_t episode = 0;
        if (wants_token) episode = ctx_->budget->enqueue(w.ticket);
        const time_point start = ctx_->clock->now();
        lk.unlock(); // the stop callback may run at once, in this thread, and it takes m_
        if (wants_token) ctx_->budget->trim(this, &episode);
        {
            std::stop_callback on_stop(st, [&]() noexcept {
                std::lock_guard g(m_);
                if (w.is_linked()) {
                    ++t.cancels;
                    complete_locked(w, waiter::outcome::failed, nullptr, make_error_code(errc::cancelled));
                }
            });
            lk.lock();
            while (w.result == waiter::outcome::pending) {
                // Wake at the deadline, or when a connect backoff ends, to ask for a permit.
                time_point wake = deadline;
                if (t.failures > 0 && t.backoff_until < wake) wake = t.backoff_until;
                lk.unlock();
                w.ev.wait_until(wake);
                lk.lock();
                if (w.result != waiter::outcome::pending) break;
                if (ctx_->budget) {
                    w.ev.reset(); // a grant after this re-sets it: no lost wake-up
                    if (ctx_->budget->granted(w.ticket) && ctx_->budget->leave(w.ticket)) { // the token is ours
                        if (can_connect_locked()) {
                            complete_locked(w, waiter::outcome::permit, reserve_locked(), {});
                            break;
                        }
                        ctx_->budget->give_back(); // no room here after all: pass the token on
                    } else if (ctx_->budget->take_walk(w.ticket)) {
                        // A connection went idle in some pool while we waited (budget.hpp, idled()):
                        // close it; its token comes to the oldest caller, likely us (a wake-up).
                        lk.unlock();
                        (void)ctx_->budget->trim(this, &episode);
                        lk.lock();
                        continue;
                    }
                }
                const time_point now = ctx_->clock->now();
                if (now >= deadline) {
                    ++t.timeouts;
                    complete_locked(w, waiter::outcome::failed, nullptr, make_error_code(errc::timeout));
                    break;
                }
                grant_permits_locked(now);
            }
            if (ctx_->budget && ctx_->budget->leave(w.ticket)) ctx_->budget->give_back(); // granted but not used
            t.wait_time += ctx_->clock->now() - start;
            lk.unlock(); // the stop callback may be running and waiting for m_
        }
        notify_wait(ctx_->obs, ctx_->clock->now() - start, w.ec);
        switch (w.result) {
        case waiter::outcome::served: return w.s;
        case waiter::outcome::permit: return open_connection(w.s, deadline, st, ec) ? w.s : nullptr;
        default: ec = w.ec; return nullptr;
        }
    }

    // The fast path (checkout, reset, release) touches only this cache line of the core, the slot
    // it takes, and what is shared by every pool (options, clock, the connector's shared state):
    // with thousands of pools in a registry, each miss here is a DRAM access per acquire.
    struct alignas(64) cpu_cache {
        std::atomic<std::uint32_t> word{none};
    };
    // Derived from the context, not kept twice: the slots (slot_at), how many cache words
    // (n_caches, a power of two, or 0) and how their owners reach them (rseq_caches).
    context* const ctx_; // shared with other pools: the core holds one of its references
    // The slow path's lock: 4 bytes, in what would be padding. (Every caller that finds no idle
    // connection takes it and then sets WAITERS in the head, on slot 0's line.)
    mutable typename Sync::mutex_type m_;
    // When maintain() last found this pool quiet, the time it next needs a pass (skip_pass(); 4
    // bytes, in what would be padding after m_): pass_units() of it, 0 for the next pass.
    atomic<std::uint32_t> next_pass_{0};
    std::unique_ptr<cpu_cache[]> caches_;

    const target_type target_;
    // Slot indices and counts: max_size ≤ 65534, so 16 bits each.
    std::uint16_t free_head_ = none;
    std::uint16_t dirty_head_ = none; // reset_at::background: returned, waiting for their reset
    std::uint16_t open_ = 0;
    std::uint16_t connecting_ = 0;
    bool closed_ = false;
    bool owner_gone_ = false;
    bool listed_ = false;      // set_listed()
    std::uint32_t owners_ = 1; // pool objects and registry entries (add_owner / drop_owner)
    std::unique_ptr<trouble> slow_;          // made by the first wait, failure, close or close(deadline)
    std::unique_ptr<lease_info[]> leases_;   // detect_self_deadlock or leak_threshold only
    splitmix64 rng_;
    // Counters (under m_); the ones only trouble moves are in slow_.
    std::uint64_t peak_size_ = 0, connects_ok_ = 0;
};

} // namespace keypool::detail
