// SPDX-License-Identifier: BSL-1.0
// Clock policies: the coarse reading, the coarse ticker, and the manual clock's events.
#include <thread>

#if defined(__linux__)
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "../support/helpers.hpp"

using namespace std::chrono_literals;

TEST_SUITE("clock") {

TEST_CASE("the coarse steady reading is on the same epoch as the precise one") {
    keypool::steady_clock c;
    auto precise = c.now();
    auto coarse = keypool::steady_clock::read_coarse(); // (coarse_now() may be a ticker's copy: below)
    CHECK(coarse <= precise + 10ms);
    CHECK(coarse >= precise - 50ms); // resolution is a few milliseconds
}

#if defined(KEYPOOL_VDSO_CLOCK)
TEST_CASE("the coarse reading calls the vDSO directly and agrees with clock_gettime") {
    REQUIRE(bool(keypool::steady_clock::vdso_clock_gettime)); // found during static init
    timespec before, after;
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &before);
    const auto direct = keypool::steady_clock::read_coarse(); // (coarse_now() is the ticker's copy while one runs)
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &after);
    auto as_tp = [](const timespec& t) {
        return keypool::time_point(std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec));
    };
    CHECK(as_tp(before) <= direct); // the same clock: ordered between two wrapper reads
    CHECK(direct <= as_tp(after));
}
#endif

namespace {
keypool::detail::coarse_ticker_state& ticker_state() { return keypool::detail::coarse_ticker_state::get(); }
keypool::duration::rep cell() { return keypool::detail::coarse_cell.copy(); }
/// Reads the clock until the process's ticker keeps a copy (it may be idling: unread for a while).
bool copy_kept() {
    return kp_test::eventually([] {
        (void)keypool::steady_clock{}.coarse_now();
        return cell() != 0;
    });
}
} // namespace

TEST_CASE("a coarse ticker keeps a copy of the coarse clock while held, and drops it when the last holder goes") {
    keypool::detail::coarse_time_cell mine; // a ticker of its own: the process's may be held by static pools
    keypool::detail::coarse_ticker_state t(mine, false);
    CHECK_FALSE(t.running());
    CHECK_FALSE(mine.kept());
    const keypool::time_point before = keypool::steady_clock::read_coarse();
    t.hold();
    CHECK(t.running());
    const keypool::duration::rep first = mine.copy();
    CHECK(first >= before.time_since_epoch().count() - 1); // published before hold() returned (lowest bit cleared)
    CHECK(first <= keypool::steady_clock::read_coarse().time_since_epoch().count());
    t.hold(); // a second holder shares the thread
    CHECK(t.holders() == 2);
    t.drop();
    CHECK(t.running());
    // The thread refreshes the copy while it is read (the coarse clock moves every few ms).
    CHECK(kp_test::eventually([&] {
        mine.want();
        return mine.copy() > first;
    }));
    t.drop();
    CHECK(t.holders() == 0);
    CHECK_FALSE(t.running());
    CHECK_FALSE(mine.kept()); // and the stopped thread never writes it again
    t.hold(); // restarts
    CHECK(t.running());
    CHECK(mine.kept());
    t.drop();
    CHECK_FALSE(mine.kept());
} // ~coarse_ticker_state waits for its threads to leave

TEST_CASE("an unread ticker drops its copy and wakes rarely, and a read brings it back") {
    keypool::detail::coarse_time_cell mine;
    keypool::detail::coarse_ticker_state t(mine, false);
    t.hold();
    REQUIRE(mine.kept());
    // Nobody reads: after idle_after periods the copy goes (readers would call the vDSO).
    CHECK(kp_test::eventually([&] { return !mine.kept(); }));
    CHECK(t.running());
    mine.want(); // what coarse_now() does on reading an odd word (none, here)
    CHECK(kp_test::eventually([&] { return mine.kept(); })); // within an idle period
    t.drop();
    CHECK_FALSE(mine.kept());
}

TEST_CASE("a ticker asks now and then whether anyone reads, and an answer keeps its copy fresh") {
    keypool::detail::coarse_time_cell mine;
    keypool::detail::coarse_ticker_state t(mine, false);
    t.hold();
    // Readers of an even word say nothing; the ticker asks by publishing its copy odd.
    REQUIRE(kp_test::eventually([&] { return (mine.ticks.load() & 1) == 1 && mine.kept(); }));
    const keypool::duration::rep asked = mine.copy();
    mine.want(); // what coarse_now() does on reading an odd word
    CHECK(kp_test::eventually([&] { return (mine.ticks.load() & 1) == 0; })); // answered: even again
    CHECK(mine.kept());
    CHECK(mine.copy() >= asked);
    t.drop();
    CHECK_FALSE(mine.kept());
}

TEST_CASE("coarse_now's odd word: the copy the ticker asks about, or the clock when none is kept") {
    const keypool::time_point before = keypool::steady_clock::read_coarse();
    CHECK(keypool::steady_clock::coarse_odd(keypool::detail::coarse_time_cell::none) >= before);
    CHECK(keypool::steady_clock::coarse_odd(1001).time_since_epoch().count() == 1000);
}

TEST_CASE("coarse_now is the ticker's copy while one runs") {
    keypool::steady_clock c;
    keypool::coarse_ticker t;
    REQUIRE(ticker_state().running());
    REQUIRE(copy_kept());
    const keypool::duration::rep copy = cell();
    CHECK(c.coarse_now().time_since_epoch().count() >= copy);
    CHECK(c.coarse_now() <= keypool::steady_clock::read_coarse());
}

TEST_CASE("a pool or registry on the steady clock holds the coarse ticker while it lives, unless told not to") {
    const std::size_t before = ticker_state().holders(); // (static pools of other tests hold it too)
    {
        keypool::basic_pool<keypool::fake::connector> p(keypool::fake::connector{}, "db");
        CHECK(ticker_state().holders() == before + 1);
        CHECK(copy_kept());
        keypool::basic_pool<keypool::fake::connector> q(keypool::fake::connector{}, "db",
                                                         {.use_coarse_ticker = false});
        CHECK(ticker_state().holders() == before + 1);
    }
    CHECK(ticker_state().holders() == before);
    {
        keypool::registry<std::string, keypool::resolve::identity<std::string>, keypool::fake::connector> r(
            keypool::resolve::identity<std::string>{}, keypool::fake::connector{});
        CHECK(ticker_state().holders() == before + 1); // one for the registry's shared context
        CHECK(r.acquire("a").key() == "a");
        CHECK(r.acquire("b").key() == "b");
        CHECK(ticker_state().holders() == before + 1);
    }
    CHECK(ticker_state().holders() == before);
    kp_test::fixture f; // the manual clock has no use for it
    auto p = f.make();
    CHECK(ticker_state().holders() == before);
}

#if defined(__linux__)
TEST_CASE("a child of fork starts without the parent's ticker copy and can start its own") {
    keypool::coarse_ticker t;
    REQUIRE(copy_kept());
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        // No ticker thread here: a copy kept from the parent would never move again.
        if (cell() != 0 || ticker_state().running()) ::_exit(1);
#if !defined(__SANITIZE_THREAD__) // (ThreadSanitizer cannot start threads in a child of a threaded process)
        keypool::coarse_ticker mine;
        if (!ticker_state().running() || cell() == 0) ::_exit(2);
        const auto first = cell();
        if (!kp_test::eventually([&] { return keypool::steady_clock{}.coarse_now().time_since_epoch().count() > first && cell() != 0; }))
            ::_exit(3);
#endif
        ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(ticker_state().running()); // the parent's is untouched
    CHECK(copy_kept());
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
