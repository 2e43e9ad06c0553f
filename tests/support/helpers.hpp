// SPDX-License-Identifier: BSL-1.0
// Test helpers: a manual-clock pool fixture and a bounded wait for a state another thread reaches.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

#include <ostream> // doctest prints std::error_code through it

#include <doctest/doctest.h>
#include <keypool/keypool.hpp>

namespace kp_test {

/// Spins (yielding) until `pred()` holds. This synchronises on observable state, never on time;
/// the real-time bound only turns a hang into a failure.
inline bool eventually(const std::function<bool()>& pred) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!pred()) {
        if (std::chrono::steady_clock::now() > give_up) return false;
        std::this_thread::yield();
    }
    return true;
}

template <class... Options>
using manual_pool =
    keypool::basic_pool<keypool::fake::connector, keypool::with_clock<keypool::manual_clock>, Options...>;

/// A manual clock, a fake connector on it, and pools built on both.
struct fixture {
    keypool::manual_clock clock;
    keypool::fake::connector fake{clock};

    template <class... Options>
    manual_pool<Options...> make(keypool::pool_options o = {}) {
        return manual_pool<Options...>(fake, "db", o, clock);
    }
};

} // namespace kp_test
