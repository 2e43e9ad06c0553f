// SPDX-License-Identifier: BSL-1.0
// The role-switch route end to end: one pooled login (kp_app, not a superuser) that is a member of
// per-tenant NOLOGIN roles; each lease runs as its key's role, directly and through PgBouncer in
// transaction mode.
#include "pg_support.hpp"

#include <thread>
#include <vector>

using namespace pg_test;
using namespace std::chrono_literals;
namespace pq = keypool::pq;
using role_registry = keypool::basic_registry<std::string, keypool::resolve::role_switch<pq::target>, pq::connector>;

namespace {

keypool::registry_options one_connection() {
    keypool::registry_options o;
    o.pool.max_size = 1;
    o.pool.validate_after_idle = keypool::duration::zero();
    return o;
}

std::string current_user(pq::connection& c) { return scalar(c.native_handle(), "SELECT current_user").value_or("?"); }

} // namespace

TEST_CASE("each lease runs as its key's role, never as the previous user's after reuse") {
    const std::string app = unique_name("roles");
    role_registry reg({.target = app_target(app)}, pq::connector{}, one_connection());
    std::string pid;
    for (int i = 0; i < 20; ++i) {
        const std::string key = (i % 2) ? "tenant_acme" : "tenant_globex";
        reg.run_as(key, [&](pq::connection& c) {
            CHECK(current_user(c) == key);
            CHECK(scalar(c.native_handle(), "SELECT session_user") == env()["KEYPOOL_PG_APP_USER"]);
            const std::string p = scalar(c.native_handle(), "SELECT pg_backend_pid()").value_or("?");
            if (pid.empty()) pid = p;
            CHECK(p == pid); // one physical connection, switched each time
        });
    }
    const auto s = reg.stats();
    CHECK(s.pools_active == 1); // many keys share the one physical pool
    CHECK(s.pools.connects_ok == 1);
}

TEST_CASE("a role that does not exist, or that the login is not a member of, fails the acquire") {
    role_registry reg({.target = app_target(unique_name("badrole"))}, pq::connector{}, one_connection());
    std::error_code ec;
    auto l = reg.acquire("tenant_nobody", 10s, ec);
    CHECK(!l);
    CHECK(ec == keypool::errc::key_not_found);
    l = reg.acquire(env()["KEYPOOL_PG_ADMIN"], 10s, ec); // a superuser role kp_app is not a member of
    CHECK(!l);
    CHECK(ec == keypool::errc::authentication_failed);
    reg.run_as("tenant_initech", [](pq::connection& c) { CHECK(current_user(c) == "tenant_initech"); });
    CHECK(reg.stats().pools.connects_ok == 1); // the refusals did not cost the connection
}

TEST_CASE("what the leased code does to its session stays in its lease: SET ROLE, search_path, temp table") {
    const std::string app = unique_name("hostile");
    role_registry reg({.target = app_target(app)}, pq::connector{}, one_connection());
    std::string pid;
    reg.run_as("tenant_acme", [&](pq::connection& c) {
        PGconn* pg = c.native_handle();
        pid = scalar(pg, "SELECT pg_backend_pid()").value_or("?");
        CHECK(current_user(c) == "tenant_acme");
        REQUIRE(scalar(pg, "SET search_path TO acme_private, pg_catalog"));
        REQUIRE(scalar(pg, "CREATE TEMP TABLE acme_secret(card text)"));
        REQUIRE(scalar(pg, "INSERT INTO acme_secret VALUES ('4111-1111')"));
        // Not a superuser: the session's identity cannot be changed from inside a lease.
        CHECK(!scalar(pg, "SET SESSION AUTHORIZATION tenant_globex"));
        // But SET ROLE to any role the pooled login is a member of does work: the role switch
        // separates well-behaved code, it is no sandbox for hostile SQL (docs/guarantees.md).
        REQUIRE(scalar(pg, "SET ROLE tenant_initech"));
        CHECK(current_user(c) == "tenant_initech");
    });
    reg.run_as("tenant_globex", [&](pq::connection& c) {
        PGconn* pg = c.native_handle();
        CHECK(scalar(pg, "SELECT pg_backend_pid()") == pid); // the same physical connection
        CHECK(current_user(c) == "tenant_globex");
        CHECK(scalar(pg, "SELECT session_user") == env()["KEYPOOL_PG_APP_USER"]);
        CHECK(scalar(pg, "SHOW search_path") == "\"$user\", public");
        CHECK(scalar(pg, "SELECT to_regclass('pg_temp.acme_secret') IS NULL") == "t");
        CHECK(scalar(pg, "SELECT count(*) FROM pg_class WHERE relname = 'acme_secret'") == "0");
    });
    CHECK(reg.stats().pools.connects_ok == 1);
}

TEST_CASE("the reset undoes the role, whatever the reset query") {
    for (const char* reset_query : {"DISCARD ALL", "RESET ALL", ""}) {
        CAPTURE(reset_query);
        pq::connector c(pq::connector_options{.reset_query = reset_query});
        std::error_code ec;
        auto conn = c.connect(app_target(unique_name("undo")), std::chrono::steady_clock::now() + 10s, {}, ec);
        REQUIRE(conn);
        REQUIRE(c.prepare(*conn, keypool::role{"tenant_acme"}, ec));
        CHECK(current_user(*conn) == "tenant_acme");
        REQUIRE(c.reset(*conn));
        CHECK(current_user(*conn) == env()["KEYPOOL_PG_APP_USER"]);
        c.close(*conn);
    }
}

TEST_CASE("a role name is a bind parameter, never spliced into SQL") {
    pq::connector c;
    std::error_code ec;
    auto conn = c.connect(app_target(unique_name("inject")), std::chrono::steady_clock::now() + 10s, {}, ec);
    REQUIRE(conn);
    for (const char* hostile : {"tenant_acme; RESET ROLE", "tenant_acme'; SET ROLE kp_admin; --", "\"tenant_acme\"",
                                "TENANT_ACME"}) {
        CAPTURE(hostile);
        CHECK(!c.prepare(*conn, keypool::role{hostile}, ec));
        CHECK(ec == keypool::errc::key_not_found);
        REQUIRE(c.reset(*conn));
        CHECK(current_user(*conn) == env()["KEYPOOL_PG_APP_USER"]);
    }
    c.close(*conn);
}

TEST_CASE("through PgBouncer in transaction mode the role is SET LOCAL and never reaches another client") {
    const std::string app = unique_name("bouncer_roles");
    keypool::registry_options o;
    o.pool.max_size = 2;
    role_registry reg({.target = app_target(app, via::bouncer, "globex")},
                      pq::connector(pq::connector_options{.reset_query = "", .role_mode = pq::role_switch_mode::transaction}),
                      o);
    std::atomic<int> wrong{0}, done{0};
    auto worker = [&](std::string key) {
        for (int i = 0; i < 100; ++i)
            reg.run_as(key, [&](pq::connection& c) {
                if (current_user(c) != key) ++wrong;
                if (PQtransactionStatus(c.native_handle()) != PQTRANS_INTRANS) ++wrong;
                ++done;
            });
    };
    // A plain client of the same PgBouncer database: if a tenant's role leaked into a server
    // session, it would see it.
    std::atomic<int> leaked{0};
    std::atomic<bool> stop{false};
    std::thread observer([&] {
        auto t = app_target(unique_name("plain"), via::bouncer, "globex");
        pq::connector c(pq::connector_options{.reset_query = ""});
        std::error_code ec;
        auto conn = c.connect(t, std::chrono::steady_clock::now() + 10s, {}, ec);
        if (!conn) {
            leaked = -1000;
            return;
        }
        while (!stop.load())
            if (current_user(*conn) != env()["KEYPOOL_PG_APP_USER"]) ++leaked;
        c.close(*conn);
    });
    std::thread a(worker, "tenant_acme"), b(worker, "tenant_globex");
    a.join();
    b.join();
    stop = true;
    observer.join();
    CHECK(done == 200);
    CHECK(wrong == 0);
    CHECK(leaked == 0);
}
