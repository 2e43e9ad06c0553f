// SPDX-License-Identifier: BSL-1.0
// One bounded pool to one target, on the fake connector: acquire, use, return, and what the pool
// does when it is full. Every claim in the comments is checked; the example fails if one is wrong.
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <keypool/keypool.hpp>

#include "expect.hpp"

int main() {
    using namespace std::chrono_literals;
    // [snippet:build]
    keypool::fake::connector fake; // a copy keeps sharing the fake's state, for inspection
    keypool::pool<keypool::fake::connector> pool(fake, "orders-db",
                                                 {.max_size = 2, .min_idle = 1, .acquire_timeout = 2s});

    pool.maintain(); // opens min_idle connections
    EXPECT(pool.stats().idle == 1);
    // [/snippet:build]

    // [snippet:lease]
    {
        auto conn = pool.acquire(); // RAII lease: returned to the pool at the end of the scope
        conn->use("SET search_path = orders");
        EXPECT(conn->target == "orders-db");
    }
    auto conn = pool.acquire();
    EXPECT(!conn->dirty()); // reset before reuse: no session state reaches the next borrower
    // [/snippet:lease]

    // [snippet:full]
    // A full pool: a second thread waits, and gets the connection handed over when we return it.
    auto other = pool.acquire();
    std::jthread waiter([&] {
        auto mine = pool.acquire(5s);
        EXPECT(mine);
    });
    while (pool.stats().waiters == 0) std::this_thread::yield();
    conn.release();
    waiter.join();
    // [/snippet:full]

    // [snippet:error_code]
    // The error_code form never throws: a pool that cannot serve in time says so.
    std::error_code ec;
    auto a = pool.acquire(), b = pool.try_acquire();
    EXPECT(!b);
    auto c = pool.acquire(10ms, ec);
    EXPECT(!c && ec == keypool::errc::timeout);
    // [/snippet:error_code]

    auto s = pool.stats();
    std::printf("size=%llu idle=%llu in_use=%llu acquires=%llu waits=%llu timeouts=%llu connects=%llu\n",
                (unsigned long long)s.size, (unsigned long long)s.idle, (unsigned long long)s.in_use,
                (unsigned long long)s.acquires, (unsigned long long)s.waits, (unsigned long long)s.timeouts,
                (unsigned long long)s.connects_ok);
    EXPECT(s.size == 2 && s.size == fake.live());
    EXPECT(s.timeouts == 1);
    return 0;
}
