// SPDX-License-Identifier: BSL-1.0
// Clock policies: the coarse reading and the manual clock's events.
#include <thread>

#include "../support/helpers.hpp"

using namespace std::chrono_literals;

TEST_SUITE("clock") {

TEST_CASE("the coarse steady reading is on the same epoch as the precise one") {
    keypool::steady_clock c;
    auto precise = c.now();
    auto coarse = c.coarse_now();
    CHECK(coarse <= precise + 10ms);
    CHECK(coarse >= precise - 50ms); // resolution is a few milliseconds
}

#if defined(KEYPOOL_VDSO_CLOCK)
TEST_CASE("the coarse reading calls the vDSO directly and agrees with clock_gettime") {
    REQUIRE(bool(keypool::steady_clock::vdso_clock_gettime)); // found during static init
    keypool::steady_clock c;
    timespec before, after;
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &before);
    const auto direct = c.coarse_now();
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &after);
    auto as_tp = [](const timespec& t) {
        return keypool::time_point(std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec));
    };
    CHECK(as_tp(before) <= direct); // the same clock: ordered between two wrapper reads
    CHECK(direct <= as_tp(after));
}
#endif

TEST_CASE("a manual clock moves only when told") {
    keypool::manual_clock c;
    auto t0 = c.now();
    CHECK(c.now() == t0);
    c.advance(5s);
    CHECK(c.now() == t0 + 5s);
    CHECK(c.coarse_now() == c.now());
    c.set(t0);
    CHECK(c.now() == t0);
}

TEST_CASE("a manual-clock event wakes when set or when time passes its deadline") {
    keypool::manual_clock c;
    keypool::manual_clock::event ev(c);
    CHECK_FALSE(ev.wait_until(c.now())); // deadline already reached: returns at once
    std::atomic<int> result{-1};
    std::atomic<bool> started{false};
    // The deadline is fixed before the waiter starts: read inside the thread, after `started`,
    // an advance that came first moved it 10 s further, and the wait never ended (a CI timeout).
    const keypool::time_point deadline = c.now() + 10s;
    std::jthread t([&] {
        started = true;
        result = ev.wait_until(deadline) ? 1 : 0;
    });
    REQUIRE(kp_test::eventually([&] { return started.load(); }));
    c.advance(10s);
    t.join();
    CHECK(result == 0);
    ev.set();
    CHECK(ev.wait_until(c.now() + 1s));
}

TEST_CASE("sleep_until ends early on a stop request") {
    keypool::manual_clock c;
    std::stop_source s;
    s.request_stop();
    CHECK_FALSE(keypool::sleep_until(c, c.now() + 1h, s.get_token()));
    CHECK(keypool::sleep_until(c, c.now(), {}));
}

} // TEST_SUITE
