// SPDX-License-Identifier: BSL-1.0
// Testing code that uses keypool without a server and without sleeping: the fake connector's
// fault injection, gates and counters, and a manual clock that moves only when the test says so.
// Every claim is checked; the example fails if one is wrong.
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include <keypool/keypool.hpp>

#include "expect.hpp"

namespace {
using namespace std::chrono_literals;

// [snippet:fixture]
// The test's pool: the fake's delays and the pool's deadlines both run on a manual clock.
using test_pool = keypool::basic_pool<keypool::fake::connector, keypool::with_clock<keypool::manual_clock>>;

struct fixture {
    keypool::manual_clock clock;                  // starts at 1 h; moves only on advance()/set()
    keypool::fake::connector fake{clock};         // copies share state: this one scripts and inspects
    test_pool pool{fake, "db", {.max_size = 2, .backoff_initial = 1s, .backoff_max = 1s}, clock};
};
// [/snippet:fixture]

/// Spins (yielding) until `cond` holds: tests synchronise on observable state, never on sleeps.
template <class Cond>
void wait_until(Cond cond) {
    while (!cond()) std::this_thread::yield();
}

} // namespace

int main() {
    {
        // [snippet:timeout]
        fixture f;
        auto a = f.pool.acquire(), b = f.pool.acquire(); // the pool is full
        std::error_code ec;
        std::jthread waiter([&] { auto c = f.pool.acquire(5s, ec); });
        wait_until([&] { return f.pool.stats().waiters == 1; });
        f.clock.advance(5s); // wakes exactly the waiters whose deadline has passed
        waiter.join();
        EXPECT(ec == keypool::errc::timeout && f.pool.stats().timeouts == 1);
        // [/snippet:timeout]
    }
    {
        // [snippet:connect_failure]
        fixture f;
        f.fake.fail_next_connects(1, keypool::errc::authentication_failed);
        std::error_code ec;
        auto c = f.pool.acquire(5s, ec);
        EXPECT(!c && ec == keypool::errc::authentication_failed); // the real cause, not a timeout
        c = f.pool.acquire(5s, ec); // backing off with nothing open: the same error, at once
        EXPECT(!c && ec == keypool::errc::authentication_failed && f.fake.stats().connect_attempts == 1);
        f.clock.advance(1s); // past backoff_max
        c = f.pool.acquire(5s, ec);
        EXPECT(c && !ec && f.pool.stats().connects_failed == 1);
        // [/snippet:connect_failure]
    }
    {
        // [snippet:gate]
        fixture f;
        auto gate = std::make_shared<keypool::fake::gate>();
        f.fake.push(keypool::fake::outcome::wait_for(gate)); // the next connect blocks on the gate
        std::jthread caller([&] { EXPECT(f.pool.acquire(5s)); });
        wait_until([&] { return gate->waiting() == 1; });
        EXPECT(f.pool.stats().connecting == 1 && f.pool.stats().size == 1);
        gate->open(); // the connect completes; the caller gets its connection
        caller.join();
        EXPECT(f.pool.stats().connects_ok == 1);
        // [/snippet:gate]
    }
    {
        // [snippet:faults]
        fixture f;
        std::uint64_t first = 0;
        {
            auto c = f.pool.acquire();
            first = c->id;
            c->use("SET search_path = x");
        }
        f.fake.fail_next_resets(1); // the returned connection's reset (at the next checkout) fails
        auto c = f.pool.acquire();
        EXPECT(c->id != first && !f.fake.is_live(first));
        EXPECT(f.pool.stats().closed_for(keypool::close_reason::reset_failed) == 1);

        const std::uint64_t second = c->id;
        c.release();
        f.fake.kill(second);  // the server drops it while idle
        f.clock.advance(1s);  // idle for validate_after_idle (1 s): checked with alive() at checkout
        c = f.pool.acquire();
        EXPECT(c->id != second && f.pool.stats().closed_for(keypool::close_reason::broken) == 1);
        // [/snippet:faults]
    }
    {
        // [snippet:maintenance]
        fixture f;
        { auto c = f.pool.acquire(); }
        f.clock.advance(10min); // idle_timeout (10 min by default)
        f.pool.maintain();      // what a janitor would run: closes it
        EXPECT(f.pool.stats().closed_for(keypool::close_reason::idle) == 1 && f.fake.live() == 0);

        auto counts = f.fake.stats(); // what the connector saw
        EXPECT(counts.connects == 1 && counts.resets == 0 && counts.closes == 1 && counts.live == 0);
        // [/snippet:maintenance]
    }
    {
        // [snippet:slow_connect]
        fixture f;
        f.fake.push(keypool::fake::outcome::slow(3s)); // takes 3 s of the manual clock
        std::error_code ec;
        std::jthread caller([&] { auto c = f.pool.acquire(2s, ec); });
        wait_until([&] { return f.fake.stats().connect_attempts == 1; });
        f.clock.advance(2s); // the caller's deadline ends the connect first
        caller.join();
        EXPECT(ec == keypool::errc::timeout && f.pool.stats().connects_failed == 1);
        // [/snippet:slow_connect]
    }
    {
        // [snippet:leak]
        keypool::manual_clock clock;
        test_pool pool{keypool::fake::connector{clock}, "db", {.leak_threshold = 30s}, clock};
        auto forgotten = pool.acquire();
        clock.advance(31s);
        pool.maintain(); // reports each lease held past the threshold once (observer's on_leak)
        EXPECT(pool.stats().leaks == 1);
        const auto out = pool.leases_out();
        EXPECT(out.size() == 1 && out[0].age >= 31s && out[0].site.line() > 0); // where it was acquired
        // [/snippet:leak]
    }
    std::printf("testing with fakes: timeouts, connect failures, gates, faults, maintenance, leaks: ok\n");
    return 0;
}
