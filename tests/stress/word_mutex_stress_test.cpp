// SPDX-License-Identifier: BSL-1.0
// detail::word_mutex under contention: more threads than cores hammer one lock, so holders are
// preempted and waiters go to sleep (the futex path) and must be woken. A plain counter guarded by
// it must come out exact; under ThreadSanitizer a missing acquire/release would be a data race.
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <keypool/detail/word_mutex.hpp>

TEST_SUITE("stress") {

TEST_CASE("word_mutex: 8 threads, a plain counter, no lost update and no lost wake-up") {
    keypool::detail::word_mutex m;
    std::uint64_t counter = 0; // guarded by m, deliberately not atomic
    constexpr int threads = 8, rounds = 20'000;
    {
        std::vector<std::jthread> ts;
        for (int t = 0; t < threads; ++t)
            ts.emplace_back([&] {
                for (int i = 0; i < rounds; ++i) {
                    std::lock_guard g(m);
                    const std::uint64_t v = counter;
                    if (i % 64 == 0) std::this_thread::yield(); // hold it across a reschedule now and then
                    counter = v + 1;
                }
            });
    }
    CHECK(counter == std::uint64_t{threads} * rounds);
    CHECK(m.try_lock()); // left free
    m.unlock();
}

} // TEST_SUITE
