// SPDX-License-Identifier: BSL-1.0
// A registry of pools keyed by tenant, on the fake connector: each tenant's pool is created on
// first use, leases tell their tenant, idle tenants are retired, and a logout invalidates one.
// Then the role-switch shape: one physical pool, each lease running as its tenant's role.
// Every claim is checked; the example fails if one is wrong.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <keypool/keypool.hpp>

#include "expect.hpp"

// Tenant "acme" lives in database "tenant_acme"; unknown tenants are rejected before any connect.
// [snippet:resolver]
struct tenant_directory {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const std::string& tenant, std::error_code& ec) const {
        if (tenant != "acme" && tenant != "globex") {
            ec = keypool::errc::key_not_found;
            return std::nullopt;
        }
        return keypool::route<std::string>{"tenant_" + tenant, {}};
    }
};
// [/snippet:resolver]

int main() {
    using namespace std::chrono_literals;
    // [snippet:registry]
    keypool::fake::connector fake;
    keypool::registry<std::string, tenant_directory, keypool::fake::connector> tenants(
        tenant_directory{}, fake, {.pool = {.max_size = 4}, .max_pools = 100, .pool_idle_timeout = 15min});
    // [/snippet:registry]

    // [snippet:acquire]
    {
        auto conn = tenants.acquire("acme");
        EXPECT(conn.key() == "acme");
        EXPECT(conn->target == "tenant_acme"); // never another tenant's connection
    }
    int rows = tenants.run_as("globex", [](keypool::fake::connection& c) {
        c.use("SELECT ...");
        return 3;
    });
    EXPECT(rows == 3);
    // [/snippet:acquire]

    // [snippet:errors]
    std::error_code ec;
    auto none = tenants.acquire("initech", 1s, ec);
    EXPECT(!none && ec == keypool::errc::key_not_found);

    EXPECT(tenants.invalidate("acme")); // logout: acme's connections close, its next acquire rebuilds
    // [/snippet:errors]

    auto s = tenants.stats();
    std::printf("keys=%llu pools=%llu created=%llu hits=%llu misses=%llu invalidated=%llu connections=%llu\n",
                (unsigned long long)s.keys_active, (unsigned long long)s.pools_active,
                (unsigned long long)s.pools_created, (unsigned long long)s.hits, (unsigned long long)s.misses,
                (unsigned long long)s.evicted_for(keypool::evict_reason::invalidated),
                (unsigned long long)s.pools.size);
    EXPECT(s.keys_active == 1 && s.pools.size == fake.live());

    // [snippet:role_switch]
    // Role switch: many users, one physical pool; each lease runs as its user, and the reset on
    // return undoes it before anyone else borrows the connection.
    keypool::registry<std::string, keypool::resolve::role_switch<std::string>, keypool::fake::connector> users(
        keypool::resolve::role_switch<std::string>{"app_db"}, fake, {.pool = {.max_size = 1}});
    std::uint64_t first = 0;
    users.run_as("alice", [&](keypool::fake::connection& c) {
        EXPECT(c.session() == "role=alice");
        first = c.id;
    });
    users.run_as("bob", [&](keypool::fake::connection& c) {
        EXPECT(c.id == first && c.session() == "role=bob");
    });
    EXPECT(users.stats().pools_active == 1 && users.stats().keys_active == 2);
    // [/snippet:role_switch]
    return 0;
}
