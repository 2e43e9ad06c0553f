// SPDX-License-Identifier: BSL-1.0
// Route builders end to end: a registry of pools, one database per tenant, directly, through
// PgBouncer, and from templates; bad tenant ids never reach the server.
#include "pg_support.hpp"

#include <keypool/pq/password.hpp>
#include <keypool/pq/route.hpp>

using namespace pg_test;
using namespace std::chrono_literals;
namespace pq = keypool::pq;

namespace {

template <class Resolver>
using tenant_registry = keypool::basic_registry<std::string, Resolver, pq::connector>;

/// The tenant databases' base target, without dbname and password.
pq::target tenant_base(const std::string& app, via how) {
    pq::target t = app_target(app, how);
    std::erase_if(t.params, [](const pq::param& p) { return p.keyword == "dbname"; });
    t.password = {};
    return t;
}

pq::tenant_password_fn app_password() {
    return [](std::string_view, std::error_code&) -> std::optional<std::string> {
        return env()["KEYPOOL_PG_APP_PASSWORD"];
    };
}

std::string current_database(pq::connection& c) {
    return scalar(c.native_handle(), "SELECT current_database()").value_or("?");
}

template <class Registry>
void check_tenants(Registry& reg) {
    for (const char* tenant : {"acme", "globex", "acme"})
        reg.run_as(tenant, [&](pq::connection& c) { CHECK(current_database(c) == tenant); });
    std::error_code ec;
    auto l = reg.acquire("no_such_tenant", 10s, ec); // a valid id whose database does not exist
    CHECK(!l);
    CHECK(ec == keypool::errc::key_not_found);
    for (const char* bad : {"acme host=evil.example", "x' password='y", "a/b?sslmode=disable", "a%00b", "", "Acme"}) {
        CAPTURE(bad);
        l = reg.acquire(bad, 10s, ec);
        CHECK(!l);
        CHECK(ec == keypool::errc::invalid_config);
    }
    const auto s = reg.stats();
    CHECK(s.pools_active == 2); // acme and globex: a tenant whose database does not exist keeps no pool
    CHECK(s.evicted_for(keypool::evict_reason::invalidated) == 1);
}

} // namespace

TEST_CASE("routes::direct: one pool per tenant database") {
    const std::string app = unique_name("direct");
    tenant_registry<pq::routes::direct> reg({.base = tenant_base(app, via::tcp), .password = app_password()},
                                            pq::connector{});
    check_tenants(reg);
    admin a;
    CHECK(a.backends(app) == 2);
}

TEST_CASE("routes::direct: close(deadline) ends every tenant's backend once its lease is back") {
    // The registry's graceful shutdown against a real server: the idle connection's backend ends
    // at once, the leased one's when its lease returns, and close(deadline) says when both have.
    const std::string app = unique_name("shutdown");
    tenant_registry<pq::routes::direct> reg({.base = tenant_base(app, via::tcp), .password = app_password()},
                                            pq::connector{});
    auto acme = reg.acquire("acme", 10s);
    reg.run_as("globex", [](pq::connection& c) { CHECK(current_database(c) == "globex"); }); // idle now
    admin a;
    CHECK(a.backends(app) == 2);
    std::vector<keypool::lease_report> still_out;
    CHECK_FALSE(reg.close(reg.now(), still_out)); // acme's lease is out
    CHECK(still_out.size() == 1);
    CHECK(eventually([&] { return a.backends(app) == 1; }, 10s)); // globex's, idle, closed at once
    bool drained = false;
    std::thread closer([&] { drained = reg.close(reg.now() + 30s); });
    CHECK(current_database(*acme) == "acme"); // still usable while the shutdown waits for it
    acme.release();
    closer.join();
    CHECK(drained);
    CHECK(eventually([&] { return a.backends(app) == 0; }, 10s));
}

TEST_CASE("routes::pgbouncer: tenant databases through PgBouncer in transaction mode") {
    tenant_registry<pq::routes::pgbouncer> reg(
        {.base = tenant_base(unique_name("bouncer"), via::bouncer), .password = app_password()},
        pq::connector(pq::connector_options{.reset_query = "", .role_mode = pq::role_switch_mode::transaction}));
    check_tenants(reg);
}

TEST_CASE("routes::templated: keyword/value and URI templates with a cached password") {
    const auto& e = env();
    auto fetches = std::make_shared<std::atomic<int>>(0);
    auto cache = std::make_shared<pq::caching_password<pq::tenant_password_fn>>(
        [fetches](std::string_view, std::error_code&) -> std::optional<std::string> {
            ++*fetches;
            return env()["KEYPOOL_PG_APP_PASSWORD"];
        },
        std::chrono::minutes(5));
    SUBCASE("keyword/value") {
        tenant_registry<pq::routes::templated> reg(
            pq::routes::templated("host=127.0.0.1 port=" + e["KEYPOOL_PG_PORT"] + " dbname={tenant} user=" +
                                      e["KEYPOOL_PG_APP_USER"] + " password={password} sslmode=disable",
                                  pq::password_from(cache)),
            pq::connector{});
        check_tenants(reg);
    }
    SUBCASE("URI") {
        tenant_registry<pq::routes::templated> reg(
            pq::routes::templated("postgresql://" + e["KEYPOOL_PG_APP_USER"] + ":{password}@127.0.0.1:" +
                                      e["KEYPOOL_PG_PORT"] + "/{tenant}?sslmode=disable",
                                  pq::password_from(cache)),
            pq::connector{});
        check_tenants(reg);
    }
    CHECK(*fetches <= 3); // acme, globex, no_such_tenant: each asked once, then cached
}
