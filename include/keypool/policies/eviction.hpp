// SPDX-License-Identifier: BSL-1.0
// Eviction policies of a registry: which rules retire whole pools. Chosen at compile time, so a
// rule that is off costs nothing on the hot path; the numbers live in registry_options.
#pragma once

#include <concepts>
#include <type_traits>

namespace keypool::evict {

/// A policy names the rules it turns on. Write your own by declaring the three constants.
struct none {
    static constexpr bool uses_lru = false;  ///< cap live pools at registry_options::max_pools
    static constexpr bool uses_idle = false; ///< retire pools unused for registry_options::pool_idle_timeout
    static constexpr bool uses_size = false; ///< cap connections across pools at registry_options::max_connections
};

/// At most `max_pools` live pools; the least recently used one (approximated by the CLOCK
/// algorithm: one reference bit per pool, a sweeping hand) is retired to make room.
struct lru : none {
    static constexpr bool uses_lru = true;
};

/// Pools with no lease out and no acquire for `pool_idle_timeout` are retired by `maintain()` /
/// `evict_idle()`.
struct idle : none {
    static constexpr bool uses_idle = true;
};

/// At most `max_connections` server connections across all pools. A pool that needs another one
/// when the budget is spent closes an idle connection of another key (the least recently used of
/// the pool nearest the CLOCK hand that has one); if no other key has one, its caller waits, in one
/// queue shared by all keys (no key starves), within its own deadline. Finding one costs about
/// one pool lock per trim over time (docs/design.md, "A dry budget").
struct size : none {
    static constexpr bool uses_size = true;
};

/// Every rule any of `Ps` turns on.
template <class... Ps>
struct all_of {
    static constexpr bool uses_lru = (false || ... || Ps::uses_lru);
    static constexpr bool uses_idle = (false || ... || Ps::uses_idle);
    static constexpr bool uses_size = (false || ... || Ps::uses_size);
};

} // namespace keypool::evict

namespace keypool {
template <class E>
concept eviction_policy = requires {
    { E::uses_lru } -> std::convertible_to<bool>;
    { E::uses_idle } -> std::convertible_to<bool>;
    { E::uses_size } -> std::convertible_to<bool>;
};
} // namespace keypool
