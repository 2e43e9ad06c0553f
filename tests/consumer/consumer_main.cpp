// SPDX-License-Identifier: BSL-1.0
// The consumer projects' program (find_package and add_subdirectory build this same file): it
// includes keypool the way a user does, uses a pool, and with the pq component also builds a
// libpq connector and describes a target (no server needed). Exits non-zero if anything is off.
#include <keypool/keypool.hpp>
#if defined(KEYPOOL_CONSUMER_PQ)
#include <keypool/pq.hpp>
#endif

#include <cstdio>

int main() {
    keypool::pool<keypool::fake::connector> pool(keypool::fake::connector{}, "db", {.max_size = 2});
    {
        auto lease = pool.acquire();
        if (lease.get().target != "db") return std::puts("consumer: wrong target"), 1;
    }
    if (pool.stats().acquires != 1 || pool.stats().idle != 1) return std::puts("consumer: wrong stats"), 1;
#if defined(KEYPOOL_CONSUMER_PQ)
    keypool::pq::connector connector;
    (void)connector;
    keypool::pq::target t;
    t.set("host", "/nonexistent").set("dbname", "app");
    if (t.describe().find("dbname=app") == std::string::npos) return std::puts("consumer: pq target"), 1;
#endif
    std::puts("consumer: ok");
    return 0;
}
