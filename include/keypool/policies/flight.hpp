// SPDX-License-Identifier: BSL-1.0
// Single-flight policies of a registry: what concurrent first requests for one key do.
#pragma once

#include <concepts>

namespace keypool::flight {

/// The first request for a missing key resolves it and builds its pool; concurrent requests for the
/// same key join it and wait (each with its own deadline and stop token). A failure is delivered to
/// every joiner and remembered for `registry_options::failure_backoff`, no longer.
struct shared {
    static constexpr bool single = true;
};

/// No coordination: every concurrent first request resolves and builds a pool; the first to finish
/// is kept and the others are closed. For comparison in benchmarks.
struct none {
    static constexpr bool single = false;
};

} // namespace keypool::flight

namespace keypool {
template <class F>
concept flight_policy = requires {
    { F::single } -> std::convertible_to<bool>;
};
} // namespace keypool
