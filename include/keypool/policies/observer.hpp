// SPDX-License-Identifier: BSL-1.0
// Observer policy: hooks the pool calls on each event. Every hook is optional; the default
// observer has none, and a hook that does not exist costs nothing (it is detected at compile time).
#pragma once

#include <source_location>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

namespace keypool {

/// Why a pooled connection was closed. The enumerator name is the metric label value.
enum class close_reason : std::uint8_t {
    idle,         ///< idle longer than `idle_timeout` (and above `min_idle`)
    lifetime,     ///< older than its `max_lifetime` (with jitter)
    broken,       ///< `alive()` said it was dead at checkout
    reset_failed, ///< the connector's `reset` returned false
    discarded,    ///< the lease holder called `discard()`
    closed,       ///< the pool was closed
    trimmed,      ///< closed while idle to free the registry's connection budget for another key
};
inline constexpr std::size_t close_reason_count = 7;

inline const char* to_string(close_reason r) noexcept {
    switch (r) {
    case close_reason::idle: return "idle";
    case close_reason::lifetime: return "lifetime";
    case close_reason::broken: return "broken";
    case close_reason::reset_failed: return "reset_failed";
    case close_reason::discarded: return "discarded";
    case close_reason::closed: return "closed";
    case close_reason::trimmed: return "trimmed";
    }
    return "unknown";
}

/// The observer with no hooks: what `basic_pool` uses unless `with_observer<O>` says otherwise.
///
/// An observer may define any of these members (all called without the pool's lock held, from any
/// thread, so a thread-safe pool needs a thread-safe observer):
/// - `on_connect(std::chrono::nanoseconds took, std::error_code ec)` after each connect attempt;
/// - `on_close(close_reason)` after a connection is closed;
/// - `on_wait(std::chrono::nanoseconds waited, std::error_code ec)` when an acquire that had to
///   wait ends (ec empty when it got a connection);
/// - `on_leak(const lease_report&)` when `maintain()` finds a lease held longer than
///   `pool_options::leak_threshold` (once per lease).
struct null_observer {};

/// A lease that is still out: how long it has been held and, when the pool records call sites
/// (`pool_options::leak_threshold` set), where it was acquired (`site.line() == 0` if unknown,
/// e.g. a registry lease).
struct lease_report {
    std::chrono::nanoseconds age{0};
    std::source_location site{};
};

namespace detail {
template <class O>
void notify_connect(O& o, std::chrono::nanoseconds took, std::error_code ec) {
    if constexpr (requires { o.on_connect(took, ec); }) o.on_connect(took, ec);
}
template <class O>
void notify_close(O& o, close_reason r) {
    if constexpr (requires { o.on_close(r); }) o.on_close(r);
}
template <class O>
void notify_wait(O& o, std::chrono::nanoseconds waited, std::error_code ec) {
    if constexpr (requires { o.on_wait(waited, ec); }) o.on_wait(waited, ec);
}
template <class O>
void notify_leak(O& o, const lease_report& r) {
    if constexpr (requires { o.on_leak(r); }) o.on_leak(r);
}
} // namespace detail

/// Several observers as one: each hook is forwarded to every part that has it, in order. E.g.
/// `with_observer<observers<metrics::observer, my_logger>>`, built as
/// `observers{metrics::observer{h}, my_logger{}}`. The registry's hooks (`on_pool_created`,
/// `on_pool_evicted`) are forwarded too. Copies copy every part (a registry copies its observer
/// into each pool it builds).
template <class... Os>
class observers {
    static_assert(sizeof...(Os) > 0, "keypool::observers needs at least one observer");

public:
    observers() requires(std::is_default_constructible_v<Os> && ...) = default;
    explicit observers(Os... parts) : parts_(std::move(parts)...) {}

    /// The I-th part, e.g. to read what it collected.
    template <std::size_t I>
    auto& get() noexcept { return std::get<I>(parts_); }
    template <std::size_t I>
    const auto& get() const noexcept { return std::get<I>(parts_); }

    void on_connect(std::chrono::nanoseconds took, std::error_code ec) {
        std::apply([&](auto&... o) { (detail::notify_connect(o, took, ec), ...); }, parts_);
    }
    void on_close(close_reason r) {
        std::apply([&](auto&... o) { (detail::notify_close(o, r), ...); }, parts_);
    }
    void on_wait(std::chrono::nanoseconds waited, std::error_code ec) {
        std::apply([&](auto&... o) { (detail::notify_wait(o, waited, ec), ...); }, parts_);
    }
    void on_leak(const lease_report& r) {
        std::apply([&](auto&... o) { (detail::notify_leak(o, r), ...); }, parts_);
    }
    template <class Key>
    void on_pool_created(const Key& k) {
        std::apply([&](auto&... o) { (created(o, k), ...); }, parts_);
    }
    template <class Key, class Reason>
    void on_pool_evicted(const Key& k, Reason r) {
        std::apply([&](auto&... o) { (evicted(o, k, r), ...); }, parts_);
    }

private:
    template <class O, class Key>
    static void created(O& o, const Key& k) {
        if constexpr (requires { o.on_pool_created(k); }) o.on_pool_created(k);
    }
    template <class O, class Key, class Reason>
    static void evicted(O& o, const Key& k, Reason r) {
        if constexpr (requires { o.on_pool_evicted(k, r); }) o.on_pool_evicted(k, r);
    }

    std::tuple<Os...> parts_;
};
} // namespace keypool
