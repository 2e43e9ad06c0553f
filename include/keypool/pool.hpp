// SPDX-License-Identifier: BSL-1.0
// basic_pool: a bounded pool of connections to one target, with policies chosen at compile time.
#pragma once

#include <chrono>
#include <functional>
#include <source_location>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

#include <keypool/concepts.hpp>
#include <keypool/error.hpp>
#include <keypool/lease.hpp>
#include <keypool/options.hpp>
#include <keypool/policies/clock.hpp>
#include <keypool/policies/observer.hpp>
#include <keypool/policies/reset.hpp>
#include <keypool/policies/sync.hpp>
#include <keypool/stats.hpp>
#include <keypool/detail/options_pack.hpp>
#include <keypool/detail/pool_core.hpp>

namespace keypool {
namespace detail {
struct pool_access; // the registry's way in: the core and lease construction
}

// ---- Option setters: order-free, each checked by its axis concept ----------------------------
namespace detail {
struct clock_axis {};
struct sync_axis {};
struct observer_axis {};
struct reset_axis {};
} // namespace detail

/// Chooses the clock (default `steady_clock`; tests use `manual_clock`, passed to the constructor).
template <clock C>
struct with_clock { using axis = detail::clock_axis; using type = C; };
/// Chooses thread-safety (default `sync::mutex`; `sync::none` for one thread, no atomics or locks).
template <sync_policy S>
struct with_sync { using axis = detail::sync_axis; using type = S; };
/// Chooses the observer whose hooks see every connect, close and wait (default `null_observer`).
template <observer O>
struct with_observer { using axis = detail::observer_axis; using type = O; };
/// Chooses where `reset` runs (default `reset_at::checkout`).
template <reset_policy R>
struct with_reset { using axis = detail::reset_axis; using type = R; };

template <class T>
concept pool_option = requires { typename T::axis; typename T::type; } &&
                      (std::same_as<typename T::axis, detail::clock_axis> ||
                       std::same_as<typename T::axis, detail::sync_axis> ||
                       std::same_as<typename T::axis, detail::observer_axis> ||
                       std::same_as<typename T::axis, detail::reset_axis>);

/// A bounded pool of connections to one target.
///
/// - At most `max_size` connections are open; `min_idle` are kept warm by `maintain()`.
/// - Waiters are served strictly FIFO with direct hand-off; idle connections are reused most
///   recently used first.
/// - Every acquire has a deadline (`acquire_timeout` by default) and may take a stop token.
/// - Connections are reset before reuse, validated when they sat idle, closed when too old.
///
/// Thread-safety: with `sync::mutex` (the default) every member may be called from any thread,
/// except that the destructor must not run concurrently with other members. The pool object may
/// be destroyed while leases are out: they return into a closed pool and their connections close.
template <connector Connector, pool_option... Options>
class basic_pool {
public:
    using connector_type = Connector;
    using connection_type = typename Connector::connection_type;
    using target_type = typename Connector::target_type;
    using clock_type = detail::pick_option_t<detail::clock_axis, steady_clock, Options...>;
    using sync_type = detail::pick_option_t<detail::sync_axis, sync::mutex, Options...>;
    using observer_type = detail::pick_option_t<detail::observer_axis, null_observer, Options...>;
    using reset_type = detail::pick_option_t<detail::reset_axis, reset_at::checkout, Options...>;

private:
    using core_type = detail::pool_core<Connector, clock_type, sync_type, observer_type, reset_type>;

public:
    using lease = basic_lease<core_type>;

    /// Builds a pool; opens no connection (call `maintain()` to warm it up to `min_idle`).
    /// Errors: throws `keypool::error` with `invalid_config` naming the bad field.
    explicit basic_pool(Connector connector, target_type target = {}, pool_options options = {})
        requires std::same_as<clock_type, steady_clock>
        : basic_pool(std::move(connector), std::move(target), options, default_clock()) {}

    /// As above with an explicit clock (required for `manual_clock`, which must outlive the pool)
    /// and observer.
    basic_pool(Connector connector, target_type target, pool_options options, const clock_type& clock,
               observer_type observer = {})
        : core_(make_core(std::move(target), core_type::share(options, std::move(connector), clock, std::move(observer)))) {}

    /// As above with a context (options, connector, clock, observer) shared by other pools
    /// (`core_type::share`): how a registry gives all its pools one copy.
    basic_pool(detail::shared_context_tag, target_type target, typename core_type::shared_context context)
        : core_(make_core(std::move(target), std::move(context))) {}

private:
    friend struct detail::pool_access;
    basic_pool(detail::adopt_core_tag, core_type* core, const clock_type& clock) noexcept
        : clock_(&clock), core_(core) {
        core_->add_owner();
    }

public:
    basic_pool(basic_pool&& o) noexcept : clock_(o.clock_), core_(std::exchange(o.core_, nullptr)) {}
    basic_pool& operator=(basic_pool&&) = delete;
    basic_pool(const basic_pool&) = delete;
    basic_pool& operator=(const basic_pool&) = delete;

    /// Closes the pool (see `close()`); leases still out return into the closed pool. (A pool
    /// object a registry handed out shares its pool with the registry: the last of them closes it.)
    ~basic_pool() {
        if (core_ && core_->drop_owner()) delete core_;
    }

    // ---- acquire ----------------------------------------------------------------------------

    /// Waits up to `options().acquire_timeout`.
    /// Errors: throws `keypool::error` with timeout, pool_exhausted, closed, would_deadlock, or the
    /// classified connect failure.
    /// `site` is the caller's location, recorded for leak reports when `leak_threshold` is set.
    [[nodiscard]] KEYPOOL_ALWAYS_INLINE lease acquire(std::source_location site = std::source_location::current()) {
        return acquire(core_->options().acquire_timeout, site);
    }
    [[nodiscard]] KEYPOOL_ALWAYS_INLINE lease acquire(duration timeout,
                                                      std::source_location site = std::source_location::current()) {
        time_point started{};
        if (auto* s = core_->acquire_fast(timeout, started, site)) [[likely]]
            return detail::lease_access::make(core_, s); // (the checkout recorded the site: every fast form)
        return acquire_waiting(timeout, {}, started, site);
    }
    /// A `stop` already stopped fails it with `cancelled`, even with a connection idle.
    [[nodiscard]] lease acquire(time_point deadline, std::stop_token stop = {},
                                std::source_location site = std::source_location::current()) {
        time_point started{};
        if (!stop.stop_requested()) [[likely]]
            if (auto* s = core_->acquire_fast(deadline, started, site)) [[likely]]
                return detail::lease_access::make(core_, s);
        return acquire_waiting(deadline, std::move(stop), started, site);
    }

    /// Non-throwing forms: an empty lease and `ec` set on failure.
    [[nodiscard]] lease acquire(duration timeout, std::error_code& ec,
                                std::source_location site = std::source_location::current()) noexcept {
        time_point started{};
        if (auto* s = core_->acquire_fast(timeout, started, site)) [[likely]] {
            if (ec) ec.clear();
            return detail::lease_access::make(core_, s);
        }
        return make_lease(core_->acquire(timeout, {}, ec, started), site);
    }
    [[nodiscard]] lease acquire(time_point deadline, std::stop_token stop, std::error_code& ec,
                                std::source_location site = std::source_location::current()) noexcept {
        time_point started{};
        if (!stop.stop_requested()) [[likely]]
            if (auto* s = core_->acquire_fast(deadline, started, site)) [[likely]] {
                if (ec) ec.clear();
                return detail::lease_access::make(core_, s);
            }
        return make_lease(core_->acquire(deadline, std::move(stop), ec), site);
    }

    /// Never blocks: an idle connection if one is free and no caller is queued, else an empty lease.
    /// (It may still run the connector's `alive` or a pending `reset` on the connection it takes.)
    [[nodiscard]] lease try_acquire(std::source_location site = std::source_location::current()) noexcept {
        return make_lease(core_->try_acquire(), site);
    }

    // ---- housekeeping -----------------------------------------------------------------------

    /// Closes idle connections past `idle_timeout` (down to `min_idle`) or `max_lifetime`, resets
    /// dirty idle ones under `reset_at::background`, pings (or resets) those idle for
    /// `keepalive_after` and closes the dead ones, opens connections up to `min_idle`, and grants
    /// connects to waiters whose backoff ended. Returns when it next has work (or time_point::max()).
    /// Blocking: runs connects and closes on the calling thread.
    time_point maintain() noexcept { return core_->maintain(); }

    /// `reset_at::background` only: `f` is called when a returned connection waits for its reset
    /// (so maintain() should run soon). A `janitor` on this pool registers its `poke()` here. `f`
    /// runs under the pool's lock: it must be short and must not call into the pool. Empty = none.
    void set_reset_signal(std::function<void()> f) noexcept
        requires std::same_as<reset_type, reset_at::background>
    {
        core_->set_reset_signal(std::move(f));
    }

    /// Wakes every waiter with `closed`, closes idle connections, and makes every later acquire fail
    /// with `closed`. Leases out stay valid; their connections close when they return.
    void close() noexcept { core_->close(); }

    /// `close()`, then waits until every lease has returned or `deadline` passes.
    /// Returns true if the pool drained (no connection left open).
    bool close(time_point deadline) noexcept {
        core_->close();
        return core_->wait_drained(deadline);
    }

    /// The same, and on return `still_out` lists the leases that had not come back: their age and,
    /// with `leak_threshold` set, where they were acquired.
    bool close(time_point deadline, std::vector<lease_report>& still_out) {
        const bool drained = close(deadline);
        still_out = core_->leases_out();
        return drained;
    }

    /// The leases out now: age and (with `leak_threshold` set) acquire site.
    [[nodiscard]] std::vector<lease_report> leases_out() const { return core_->leases_out(); }

    [[nodiscard]] pool_stats stats() const noexcept { return core_->stats(); }
    /// The error of the most recent failed connect (empty if none failed yet).
    [[nodiscard]] std::error_code last_connect_error() const noexcept { return core_->last_connect_error(); }
    const pool_options& options() const noexcept { return core_->options(); }
    Connector& connector() noexcept { return core_->connector(); }
    const target_type& target() const noexcept { return core_->target(); }
    time_point now() const noexcept { return clock_->now(); }

private:
    static const clock_type& default_clock() noexcept {
        static const clock_type c{};
        return c;
    }

    core_type* make_core(target_type t, typename core_type::shared_context o) {
        std::string msg;
        if (!o) throw error(make_error_code(errc::invalid_config), "keypool: pool options missing");
        if (auto ec = validate(static_cast<const pool_options&>(*o), msg)) throw error(ec, msg);
        clock_ = o->clock;
        const typename core_type::context* const x = o.get();
        // GCC 12 takes the placement delete (which frees the block the placement new made, should
        // the constructor throw) for a mismatched pair once both compute the block's start.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
        return new (typename core_type::slot_count{x}) core_type(std::move(t), std::move(o));
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
    }

    /// The throwing acquire after its fast path found nothing: out of line, so the fast path
    /// inlines into the caller.
    template <class When>
    KEYPOOL_NOINLINE lease acquire_waiting(When when, std::stop_token stop, time_point started,
                                           const std::source_location& site) {
        std::error_code ec(0, category()); // no call to the out-of-line std::system_category()
        return checked(core_->acquire(when, std::move(stop), ec, started), ec, site);
    }

    lease make_lease(typename core_type::slot* s, const std::source_location& site) noexcept {
        if (!s) return lease{};
        lease l = detail::lease_access::make(core_, s);
        detail::lease_access::record_site(l, site);
        return l;
    }

    lease checked(typename core_type::slot* s, std::error_code ec, const std::source_location& site) {
        if (!s) throw_acquire_error(ec);
        return make_lease(s, site);
    }

    [[noreturn]] void throw_acquire_error(std::error_code ec) const {
        std::string msg = "keypool: acquire failed";
        if (ec != errc::closed) {
            if (auto last = core_->last_connect_error(); last && last != ec)
                msg += " (last connect error: " + last.message() + ")";
        }
        throw error(ec, msg);
    }

    const clock_type* clock_ = nullptr;
    core_type* core_ = nullptr;
};

namespace detail {
struct pool_access {
    template <class Pool>
    static auto* core(Pool& p) noexcept { return p.core_; }
    /// Takes the core out of `p` with its ownership (the registry keeps cores, not pool objects).
    template <class Pool>
    static auto* release_core(Pool& p) noexcept { return std::exchange(p.core_, nullptr); }
    /// A pool object that shares `core` (one more owner of it).
    template <class Pool, class Core>
    static std::shared_ptr<Pool> share(Core* core, const typename Pool::clock_type& clock) {
        return std::shared_ptr<Pool>(new Pool(detail::adopt_core_tag{}, core, clock));
    }
};
} // namespace detail

/// The pool with default policies: `keypool::pool<keypool::fake::connector>`.
template <connector Connector>
using pool = basic_pool<Connector>;

} // namespace keypool
