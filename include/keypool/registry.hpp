// SPDX-License-Identifier: BSL-1.0
// basic_registry: one pool per key (or per resolved target), created once under concurrency,
// retired by compile-time eviction policies.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <source_location>
#include <stop_token>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include <keypool/concepts.hpp>
#include <keypool/error.hpp>
#include <keypool/options.hpp>
#include <keypool/policies/eviction.hpp>
#include <keypool/policies/flight.hpp>
#include <keypool/pool.hpp>
#include <keypool/resolver.hpp>
#include <keypool/stats.hpp>
#include <keypool/detail/registry_table.hpp>

namespace keypool {

namespace detail {
struct eviction_axis {};
struct flight_axis {};
} // namespace detail

/// Chooses the registry's eviction rules (default `evict::all_of<evict::lru, evict::idle>`).
template <eviction_policy E>
struct with_eviction { using axis = detail::eviction_axis; using type = E; };
/// Chooses the single-flight policy for creating a key's pool (default `flight::shared`).
template <flight_policy F>
struct with_flight { using axis = detail::flight_axis; using type = F; };

template <class T>
concept registry_option = pool_option<T> || requires {
    typename T::axis;
    requires std::same_as<typename T::axis, detail::eviction_axis> ||
                 std::same_as<typename T::axis, detail::flight_axis>;
};

/// A lease from a registry: a pool lease that also tells the key it was acquired for. A key that
/// is trivially copyable (an integer, a small struct) is copied into the lease; any other (a
/// `std::string`, whose copy may allocate) is shared with the registry's own copy, made once per
/// key, so an acquire allocates nothing whatever the key type.
template <class Key, class PoolLease>
class keyed_lease : public PoolLease {
public:
    using key_holder = detail::held<Key>;
    keyed_lease() = default;
    keyed_lease(PoolLease l, key_holder k) noexcept : PoolLease(std::move(l)), key_(std::move(k)) {}
    keyed_lease(keyed_lease&&) = default;
    keyed_lease& operator=(keyed_lease&&) = default;
    // Inlined into the caller, as the pool lease's own release: an out-of-line destructor cost
    // W3 a call, a frame and a reload of the lease per cycle (docs/benchmarks.md, "Session 14").
    KEYPOOL_ALWAYS_INLINE ~keyed_lease() = default;
    /// The key the lease was acquired for (a default-constructed key for an empty lease).
    const Key& key() const noexcept {
        if constexpr (detail::copy_is_plain<Key>) {
            return key_;
        } else {
            static const Key none{};
            return key_ ? *key_ : none;
        }
    }

private:
    key_holder key_{};
};

/// One pool per key. `acquire(key)` finds the key's pool (creating it on first use, once even under
/// concurrency), takes a connection from it and runs the route's per-lease setup.
///
/// - Key: hashable (`boost::hash`) and equality-comparable.
/// - Resolver: `resolver<Key>`; called once per key entry, never on the hot path.
/// - Options: `with_eviction`, `with_flight`, and the pool setters (`with_clock`, `with_sync`,
///   `with_observer`, `with_reset`) which also apply to every pool.
///
/// Thread-safety: as for `basic_pool`. The hot path, a ready key with an idle connection, takes no
/// lock: a lookup inside a read-side section (detail/rcu.hpp) and one compare-and-swap on the
/// pool's idle stack (one more at release); it allocates nothing (a key that is not trivially
/// copyable is shared with the registry's copy, not copied into the lease). Anything else (a new
/// key, a pool without an idle connection) takes the key's shard lock, one of `shards`.
template <class Key, class Resolver, connector Connector, registry_option... Options>
    requires resolver<Resolver, Key> &&
             std::same_as<typename Resolver::target_type, typename Connector::target_type>
class basic_registry {
public:
    using key_type = Key;
    using resolver_type = Resolver;
    using target_type = typename Resolver::target_type;
    using setup_type = typename Resolver::setup_type;
    using eviction_type = detail::pick_option_t<detail::eviction_axis, evict::all_of<evict::lru, evict::idle>, Options...>;
    using flight_type = detail::pick_option_t<detail::flight_axis, flight::shared, Options...>;
    using clock_type = detail::pick_option_t<detail::clock_axis, steady_clock, Options...>;
    using sync_type = detail::pick_option_t<detail::sync_axis, sync::mutex, Options...>;
    using observer_type = detail::pick_option_t<detail::observer_axis, null_observer, Options...>;
    using reset_type = detail::pick_option_t<detail::reset_axis, reset_at::checkout, Options...>;
    using pool_type = basic_pool<Connector, with_clock<clock_type>, with_sync<sync_type>,
                                 with_observer<observer_type>, with_reset<reset_type>>;
    using lease = keyed_lease<Key, typename pool_type::lease>;

    static_assert(std::is_same_v<setup_type, no_setup> || connector_has_prepare<Connector, setup_type>,
                  "keypool: the resolver's routes carry a session setup, but the connector has no "
                  "matching prepare(connection&, const setup_type&, std::error_code&) -> bool");

    /// Builds an empty registry. Errors: throws `keypool::error(invalid_config)` naming the field.
    basic_registry(Resolver resolver, Connector connector, registry_options options = {})
        requires std::same_as<clock_type, steady_clock>
        : basic_registry(std::move(resolver), std::move(connector), std::move(options), default_clock()) {}
    basic_registry(Resolver resolver, Connector connector, registry_options options, const clock_type& clock,
                   observer_type observer = {})
        : table_(checked(std::move(options)), std::move(resolver), std::move(connector), clock,
                 std::move(observer)) {}

    basic_registry(const basic_registry&) = delete;
    basic_registry& operator=(const basic_registry&) = delete;
    /// Closes every pool; leases still out stay valid and close their connections on return.
    ~basic_registry() { close(); }

    // ---- acquire ----------------------------------------------------------------------------

    /// Errors: throws `keypool::error` with the resolver's error (`key_not_found`, `invalid_config`),
    /// the pool's (`timeout`, `pool_exhausted`, a classified connect failure...), `cancelled`,
    /// `closed`, or the connector's `prepare` error. A `stop` already stopped gives `cancelled` at
    /// once (no lookup, no pool made, no idle connection taken); so does `pool(key)`'s.
    /// `site` is the caller's location, recorded for leak reports when `leak_threshold` is set.
    /// The forms with a timeout inline their fast path (a ready key's idle connection) into the
    /// caller, as the pool's do; everything else is out of line.
    [[nodiscard]] KEYPOOL_ALWAYS_INLINE lease acquire(const Key& key,
                                                      std::source_location site = std::source_location::current()) {
        detail::throw_errors throws; // (the slow path throws: the fast path makes no error_code)
        return table_.acquire(key, detail::default_timeout{}, throws, site);
    }
    [[nodiscard]] KEYPOOL_ALWAYS_INLINE lease acquire(const Key& key, duration timeout,
                                                      std::source_location site = std::source_location::current()) {
        detail::throw_errors throws;
        return table_.acquire(key, timeout, throws, site);
    }
    [[nodiscard]] lease acquire(const Key& key, time_point deadline, std::stop_token stop = {},
                                std::source_location site = std::source_location::current()) {
        std::error_code ec(0, category()); // no call to the out-of-line std::system_category()
        lease l = table_.acquire(key, deadline, ec, site, &stop);
        if (!l) [[unlikely]]
            detail::throw_acquire_error(ec);
        return l;
    }
    [[nodiscard]] KEYPOOL_ALWAYS_INLINE lease acquire(const Key& key, duration timeout, std::error_code& ec,
                                                      std::source_location site = std::source_location::current()) noexcept {
        return table_.acquire(key, timeout, ec, site);
    }
    [[nodiscard]] lease acquire(const Key& key, time_point deadline, std::stop_token stop, std::error_code& ec,
                                std::source_location site = std::source_location::current()) noexcept {
        return table_.acquire(key, deadline, ec, site, &stop);
    }

    /// Never blocks: a lease if the key's pool exists and has an idle connection, else empty.
    [[nodiscard]] lease try_acquire(const Key& key,
                                    std::source_location site = std::source_location::current()) noexcept {
        lease l = table_.try_acquire(key);
        detail::lease_access::record_site(l, site);
        return l;
    }

    /// Acquires a connection for `key`, calls `fn(connection&)` and returns what it returns. The
    /// lease is returned however `fn` exits; exceptions propagate.
    template <class Fn>
    decltype(auto) run_as(const Key& key, Fn&& fn, std::source_location site = std::source_location::current()) {
        lease l = acquire(key, site);
        return std::invoke(std::forward<Fn>(fn), *l);
    }

    /// The key's pool itself (created if needed, waiting at most `acquire_timeout` for that), for
    /// callers that manage leases themselves. The pointer keeps the pool alive even if the
    /// registry retires it. Errors: throws `keypool::error` with what `acquire` would give for a
    /// key it cannot build a pool for (`key_not_found`, `invalid_config`, `timeout`, `cancelled`,
    /// `closed`).
    [[nodiscard]] std::shared_ptr<pool_type> pool(const Key& key) {
        return pool(key, table_.options().pool.acquire_timeout);
    }
    [[nodiscard]] std::shared_ptr<pool_type> pool(const Key& key, duration timeout) {
        return pool(key, deadline_after(timeout), {});
    }
    [[nodiscard]] std::shared_ptr<pool_type> pool(const Key& key, time_point deadline, std::stop_token stop) {
        std::error_code ec(0, category()); // no call to the out-of-line std::system_category()
        auto p = table_.pool(key, deadline, std::move(stop), ec);
        if (!p) throw error(ec, "keypool: registry pool lookup failed");
        return p;
    }
    /// As above, the error in `ec` (and nullptr); out of memory gives `std::errc::not_enough_memory`.
    [[nodiscard]] std::shared_ptr<pool_type> pool(const Key& key, duration timeout, std::error_code& ec) noexcept {
        return pool(key, deadline_after(timeout), {}, ec);
    }
    [[nodiscard]] std::shared_ptr<pool_type> pool(const Key& key, time_point deadline, std::stop_token stop,
                                                  std::error_code& ec) noexcept {
        ec.clear();
        try {
            return table_.pool(key, deadline, std::move(stop), ec);
        } catch (const std::bad_alloc&) {
            ec = std::make_error_code(std::errc::not_enough_memory);
        } catch (const error& x) {
            ec = x.code();
        } catch (...) {
            ec = make_error_code(errc::invalid_config);
        }
        return nullptr;
    }

    // ---- housekeeping -----------------------------------------------------------------------

    /// Retires the key's pool now: its idle connections close now, leased ones on return; the next
    /// acquire for the key builds a fresh pool (the logout case). Returns false if the key had none.
    /// With keys sharing one pool (role switch), only this key's entry is dropped.
    bool invalidate(const Key& key) { return table_.invalidate(key); }

    /// Retires every pool that is idle per `evict::idle` now. Returns how many.
    std::size_t evict_idle() { return table_.evict_idle(); }

    /// Idle eviction, then `maintain()` of every pool. Returns when it is next due.
    time_point maintain() { return table_.maintain(); }

    /// `reset_at::background` only: `f` is called when a returned connection of any of the
    /// registry's pools waits for its reset (so maintain() should run soon). A `janitor` on the
    /// registry registers its `poke()` here. `f` runs under that pool's lock: it must be short and
    /// must not call into the registry. Empty = none.
    void set_reset_signal(std::function<void()> f) noexcept
        requires std::same_as<reset_type, reset_at::background>
    {
        table_.set_reset_signal(std::move(f));
    }

    /// Closes every pool and wakes every waiter with `closed`; later acquires fail with `closed`.
    void close() noexcept { table_.close(); }

    /// `close()`, then closes the pools that had left the registry and are still open (leases out,
    /// or a pool object from `pool(key)`), and waits until every connection of every pool the
    /// registry made has closed (each lease returned) or `deadline` passes: a service's graceful
    /// shutdown. Returns true if none is left open.
    bool close(time_point deadline) noexcept { return table_.close(deadline); }

    /// The same, and on return `still_out` lists the leases that had not come back: their age
    /// and, with `pool.leak_threshold` set, where they were acquired.
    bool close(time_point deadline, std::vector<lease_report>& still_out) {
        const bool drained = close(deadline);
        still_out = leases_out();
        return drained;
    }

    /// The leases out now, from every pool the registry made that is still open (pools that left
    /// it with leases out included): age and (with `pool.leak_threshold` set) acquire site.
    [[nodiscard]] std::vector<lease_report> leases_out() const { return table_.leases_out(); }

    [[nodiscard]] registry_stats stats() const { return table_.stats(); }
    const registry_options& options() const noexcept { return table_.options(); }
    time_point now() const { return table_.now(); }

private:
    using table_type = detail::registry_table<Key, Resolver, Connector, pool_type, lease, eviction_type,
                                              flight_type, clock_type, sync_type, observer_type>;

    /// now + timeout, or the end of time if that is past it.
    time_point deadline_after(duration timeout) const {
        const time_point t = now();
        return timeout > time_point::max() - t ? time_point::max() : t + timeout;
    }
    static const clock_type& default_clock() noexcept {
        static const clock_type c{};
        return c;
    }
    static registry_options checked(registry_options o) {
        std::string msg;
        if (auto ec = validate(o, msg)) throw error(ec, msg);
        return o;
    }

    table_type table_;
};

/// The registry with default policies (LRU + idle eviction, single flight, thread-safe).
template <class Key, class Resolver, connector Connector>
using registry = basic_registry<Key, Resolver, Connector>;

} // namespace keypool
