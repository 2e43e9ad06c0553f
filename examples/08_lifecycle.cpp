// SPDX-License-Identifier: BSL-1.0
// Lifetimes, on the fake connector: a lease that outlives its pool, closing with leases still out,
// discard, a connection retired at the end of its lifetime while leased, and a registry entry
// invalidated while one of its leases is out. Every claim is checked; the example fails if one is wrong.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <keypool/keypool.hpp>

#include "expect.hpp"

int main() {
    using namespace std::chrono_literals;
    using fake_pool = keypool::pool<keypool::fake::connector>;
    {
        // [snippet:outlive]
        keypool::fake::connector fake;
        auto pool = std::make_unique<fake_pool>(fake, "db");
        auto lease = pool->acquire();
        pool.reset(); // the pool object is gone: closed, its idle connections closed
        lease->use("still usable");
        EXPECT(fake.live() == 1);
        lease.release(); // returns into a closed pool: the connection closes, the internals are freed
        EXPECT(fake.live() == 0);
        // [/snippet:outlive]
    }
    {
        // [snippet:close]
        keypool::fake::connector fake;
        fake_pool pool(fake, "db", {.leak_threshold = 1min}); // leak_threshold: record acquire sites
        auto held = pool.acquire();
        std::vector<keypool::lease_report> still_out;
        const bool drained = pool.close(pool.now() + 10ms, still_out); // waits up to 10 ms for returns
        EXPECT(!drained && still_out.size() == 1 && still_out[0].site.line() > 0);

        std::error_code ec;
        auto late = pool.acquire(1s, ec);
        EXPECT(!late && ec == keypool::errc::closed);
        held.release(); // the connection closes on return
        EXPECT(pool.stats().size == 0 && pool.stats().closed_for(keypool::close_reason::closed) == 1);
        // [/snippet:close]
    }
    {
        // [snippet:discard]
        keypool::fake::connector fake;
        fake_pool pool(fake, "db");
        auto c = pool.acquire();
        c.discard(); // the caller knows it is broken: close it instead of returning it
        EXPECT(!c && fake.live() == 0 && pool.stats().closed_for(keypool::close_reason::discarded) == 1);
        // [/snippet:discard]
    }
    {
        // [snippet:lifetime]
        keypool::manual_clock clock;
        keypool::basic_pool<keypool::fake::connector, keypool::with_clock<keypool::manual_clock>> pool(
            keypool::fake::connector{clock}, "db", {.max_lifetime = 30min, .lifetime_jitter = 0s}, clock);
        auto c = pool.acquire();
        clock.advance(31min);
        pool.maintain(); // marks the leased connection: past its lifetime
        c.release();     // so its return closes it instead of making it idle
        EXPECT(pool.stats().closed_for(keypool::close_reason::lifetime) == 1 && pool.stats().size == 0);
        // [/snippet:lifetime]
    }
    {
        // [snippet:invalidate]
        keypool::fake::connector fake;
        keypool::registry<std::string, keypool::resolve::identity<std::string>, keypool::fake::connector> dbs(
            {}, fake, {.pool = {.max_size = 2}});
        auto old = dbs.acquire("db_acme");
        EXPECT(dbs.invalidate("db_acme")); // retire the entry: the next acquire builds a new pool
        old->use("the lease stays valid");
        auto fresh = dbs.acquire("db_acme");
        EXPECT(fresh->id != old->id && dbs.stats().pools_created == 2);
        old.release(); // its pool was retired: the connection closes instead of going idle
        EXPECT(fake.live() == 1);
        // [/snippet:invalidate]
    }
    std::printf("lifecycle: outlive, close, discard, lifetime, invalidate: ok\n");
    return 0;
}
