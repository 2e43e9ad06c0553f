// SPDX-License-Identifier: BSL-1.0
// Observer policy: hooks the pool calls on each event. Every hook is optional; the default
// observer has none, and a hook that does not exist costs nothing (it is detected at compile time).
#pragma once

#include <source_location>

#include <chrono>
#include <cstdint>
#include <system_error>

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
} // namespace keypool
