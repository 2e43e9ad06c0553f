// SPDX-License-Identifier: BSL-1.0
// keypool on a real PostgreSQL, the two shapes of a multi-tenant service:
//   1. one privileged pool whose leases switch role per user (SET ROLE through a bind parameter,
//      undone by the reset on return), and
//   2. one pool per tenant database, built from a validated tenant id.
// Connection settings come from the usual libpq environment variables, read explicitly:
// PGHOST, PGPORT, PGUSER, PGPASSWORD (scripts/main.sh starts a throwaway server and sets them).
// Every claim is checked; the example fails if one is wrong.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <keypool/keypool.hpp>
#include <keypool/pq.hpp>

#include "../expect.hpp"

namespace pq = keypool::pq;

static std::string need(const char* var) {
    const char* v = std::getenv(var);
    if (!v || !*v) {
        std::fprintf(stderr, "set %s (scripts/main.sh runs this example against a throwaway server)\n", var);
        std::exit(2);
    }
    return v;
}

static std::string query1(PGconn* pg, const char* sql) {
    PGresult* r = PQexec(pg, sql);
    std::string out = (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0) ? PQgetvalue(r, 0, 0) : "<error>";
    PQclear(r);
    return out;
}

int main() {
    using namespace std::chrono_literals;
    // [snippet:target]
    pq::target server;
    server.set("host", need("PGHOST")).set("port", need("PGPORT")).set("user", need("PGUSER"));
    server.set("application_name", "keypool_example");
    const std::string password = need("PGPASSWORD");
    server.password = [password](std::error_code&) -> std::optional<std::string> { return password; };
    // [/snippet:target]

    // [snippet:role_switch]
    // 1. Role switch: many users, one physical pool of the privileged (non-superuser) login.
    pq::target app_db = server;
    app_db.set("dbname", "app");
    keypool::registry<std::string, keypool::resolve::role_switch<pq::target>, pq::connector> users(
        {.target = app_db}, pq::connector{}, {.pool = {.max_size = 4}});
    for (const char* user : {"tenant_acme", "tenant_globex", "tenant_acme"}) {
        users.run_as(user, [&](pq::connection& c) {
            const std::string who = query1(c.native_handle(), "SELECT current_user");
            std::printf("lease for %-14s runs as %s\n", user, who.c_str());
            EXPECT(who == user);
        });
    }
    std::error_code ec;
    auto nobody = users.acquire("tenant_nobody", 5s, ec);
    EXPECT(!nobody && ec == keypool::errc::key_not_found);
    std::printf("unknown role: %s\n", ec.message().c_str());
    // [/snippet:role_switch]

    // [snippet:direct]
    // 2. One pool per tenant database; tenant ids are checked before they reach a connection string.
    keypool::registry<std::string, pq::routes::direct, pq::connector> tenants(
        {.base = server}, pq::connector{}, {.pool = {.max_size = 2}, .max_pools = 100});
    tenants.run_as("acme", [](pq::connection& c) {
        EXPECT(query1(c.native_handle(), "SELECT current_database()") == "acme");
    });
    auto evil = tenants.acquire("acme host=evil.example", 5s, ec);
    EXPECT(!evil && ec == keypool::errc::invalid_config);
    std::printf("hostile tenant id rejected: %s\n", ec.message().c_str());
    auto missing = tenants.acquire("no_such_tenant", 5s, ec);
    EXPECT(!missing && ec == keypool::errc::key_not_found);
    std::printf("tenant without a database: %s\n", ec.message().c_str());
    // [/snippet:direct]
    std::printf("pools: %llu role-switched, %llu per tenant\n",
                static_cast<unsigned long long>(users.stats().pools_active),
                static_cast<unsigned long long>(tenants.stats().pools_active));
    return 0;
}
