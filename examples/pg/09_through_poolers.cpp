// SPDX-License-Identifier: BSL-1.0
// keypool in front of a server-side pooler:
//   1. PgBouncer in transaction mode: one keypool pool per tenant database alias, and the role
//      switch done inside the lease's transaction (SET LOCAL ROLE);
//   2. Supavisor-style routes (the tenant in the user name) and templated routes, resolved and
//      checked without connecting (no Supavisor runs here).
// Connection settings come from the libpq environment variables PGHOST, PGUSER, PGPASSWORD, and
// KEYPOOL_PGB_PORT, PgBouncer's port (scripts/pg-fixture.sh sets them).
// Every claim is checked; the example fails if one is wrong.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

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

static bool command(PGconn* pg, const char* sql) {
    PGresult* r = PQexec(pg, sql);
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok;
}

int main() {
    using namespace std::chrono_literals;
    const std::string password = need("PGPASSWORD");

    // [snippet:pgbouncer]
    pq::target bouncer; // PgBouncer's address; its [databases] section maps each alias to a server
    bouncer.set("host", need("PGHOST")).set("port", need("KEYPOOL_PGB_PORT")).set("user", need("PGUSER"));
    bouncer.password = [password](std::error_code&) -> std::optional<std::string> { return password; };

    // Transaction mode: PgBouncer owns the server sessions, so no reset query of ours, and a role
    // switch must stay inside the lease's transaction.
    const pq::connector through_pgbouncer({.reset_query = "", .role_mode = pq::role_switch_mode::transaction});

    keypool::registry<std::string, pq::routes::pgbouncer, pq::connector> tenants(
        {.base = bouncer}, through_pgbouncer, {.pool = {.max_size = 2}, .max_pools = 100});
    tenants.run_as("acme", [](pq::connection& c) {
        EXPECT(query1(c.native_handle(), "SELECT current_database()") == "acme");
    });
    // [/snippet:pgbouncer]

    // [snippet:pgbouncer_role]
    pq::target app = bouncer;
    app.set("dbname", "app");
    keypool::registry<std::string, keypool::resolve::role_switch<pq::target>, pq::connector> users(
        {.target = app}, through_pgbouncer, {.pool = {.max_size = 2}});
    users.run_as("tenant_acme", [](pq::connection& c) {
        // The lease began a transaction and ran set_config('role', 'tenant_acme', true) in it.
        EXPECT(query1(c.native_handle(), "SELECT current_user") == "tenant_acme");
        EXPECT(command(c.native_handle(), "COMMIT")); // commit before returning the lease
    });
    // [/snippet:pgbouncer_role]

    // [snippet:supavisor]
    pq::target supavisor_host; // Supavisor routes on the user name: <user>.<tenant>
    supavisor_host.set("host", "pooler.example.com").set("port", "6543").set("dbname", "postgres");
    const pq::routes::supavisor by_user{
        .base = supavisor_host,
        .user_prefix = "postgres",
        .password = [](std::string_view tenant, std::error_code&) -> std::optional<std::string> {
            return "secret-of-" + std::string(tenant); // e.g. from a secret store, asked at each connect
        }};
    std::error_code ec;
    auto route = by_user.resolve(std::string("acme"), ec);
    EXPECT(route && *route->target.find("user") == "postgres.acme");
    EXPECT(route->target.describe() == "host=pooler.example.com port=6543 dbname=postgres user=postgres.acme");
    EXPECT(!by_user.resolve(std::string("acme.evil"), ec) && ec == keypool::errc::invalid_config);
    // A registry over it: keypool::registry<std::string, pq::routes::supavisor, pq::connector>.
    // [/snippet:supavisor]

    // [snippet:templated]
    const pq::routes::templated from_template(
        "postgresql://app:{password}@db.example.com:5432/db_{tenant}?sslmode=require",
        [](std::string_view, std::error_code&) -> std::optional<std::string> { return "s3cret"; });
    auto t = from_template.resolve(std::string("globex"), ec);
    EXPECT(t && *t->target.find("dbname") == "db_globex" && *t->target.find("sslmode") == "require");
    EXPECT(t->target.describe().find("s3cret") == std::string::npos); // the password is never kept in it
    EXPECT(!from_template.resolve(std::string("globex sslmode=disable"), ec) && ec == keypool::errc::invalid_config);
    // [/snippet:templated]

    std::printf("through poolers: pgbouncer pools=%llu, role switched through pgbouncer, supavisor user=%s\n",
                static_cast<unsigned long long>(tenants.stats().pools_active), route->target.find("user")->c_str());
    return 0;
}
