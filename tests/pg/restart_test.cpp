// SPDX-License-Identifier: BSL-1.0
// The server restarted under load. This test runs on a PostgreSQL of its own (it stops and starts
// it), so the other integration tests keep their server.
#include "pg_support.hpp"

#include <mutex>
#include <map>
#include <thread>
#include <vector>

using namespace pg_test;
using namespace std::chrono_literals;
namespace pq = keypool::pq;

TEST_CASE("server restarted under load: classified errors, recovery, no leaked server connection") {
    own_fixture server;
    const std::string app = unique_name("restart");
    keypool::basic_pool<pq::connector> pool(
        pq::connector{}, app_target(app, via::tcp, "app", "", "", server.env()),
        keypool::pool_options{.max_size = 4, .validate_after_idle = keypool::duration::zero(),
                              .backoff_initial = 20ms, .backoff_max = 200ms});

    std::atomic<bool> stop{false};
    std::atomic<long> ok{0}, query_failures{0};
    std::mutex m;
    std::map<std::string, long> acquire_errors; // error -> count
    auto worker = [&] {
        while (!stop.load()) {
            std::error_code ec;
            auto lease = pool.acquire(1s, ec);
            if (!lease) {
                std::lock_guard lk(m);
                ++acquire_errors[ec.message()];
                continue;
            }
            if (scalar(lease.native_handle(), "SELECT 1") == "1") ++ok;
            else ++query_failures; // the lease's return finds the connection broken and destroys it
        }
    };
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) threads.emplace_back(worker);

    REQUIRE(eventually([&] { return ok.load() > 200; }));
    REQUIRE(server.run("pg-stop") == 0);
    const long ok_while_down = ok.load();
    // While the server is down every acquire fails, with a classified error.
    REQUIRE(eventually([&] {
        std::lock_guard lk(m);
        long n = 0;
        for (const auto& [e, count] : acquire_errors) n += count;
        return n >= 4;
    }));
    REQUIRE(server.run("pg-start") == 0);
    REQUIRE(eventually([&] { return ok.load() > ok_while_down + 200; }, 60s));
    stop = true;
    for (auto& t : threads) t.join();

    {
        std::lock_guard lk(m);
        for (const auto& [e, count] : acquire_errors) {
            CAPTURE(e);
            CAPTURE(count);
            CHECK((e == "upstream_unreachable" || e == "timeout" || e == "broken_connection" || e == "server_saturated"));
        }
    }
    // Connects were backed off while the server was down, not retried in a loop.
    MESSAGE("connects ok/failed: " << pool.stats().connects_ok << "/" << pool.stats().connects_failed);
    CHECK(pool.stats().connects_failed < 200);
    // Server-side truth: the backends of this pool are exactly the pool's open connections.
    admin a(server.env());
    CHECK(eventually([&] { return a.backends(app) == static_cast<int>(pool.stats().size); }));
    CHECK(pool.stats().size >= 1);
    pool.close();
    CHECK(eventually([&] { return a.backends(app) == 0; }));
}

TEST_CASE("max_connections saturated by another client: classified errors, backoff, recovery when it leaves") {
    own_fixture server;
    const environment& e = server.env();
    // Another client takes every connection slot a non-superuser may have (max_connections 40,
    // 3 reserved for superusers).
    std::vector<PGconn*> hogs;
    for (int i = 0; i < 40; ++i) {
        const std::string port = e["KEYPOOL_PG_PORT"];
        const char* keys[] = {"host", "port", "dbname", "user", "password", "application_name", nullptr};
        const char* vals[] = {e["KEYPOOL_PG_HOST"].c_str(), port.c_str(), "app", e["KEYPOOL_PG_APP_USER"].c_str(),
                              e["KEYPOOL_PG_APP_PASSWORD"].c_str(), "kp_hog", nullptr};
        PGconn* c = PQconnectdbParams(keys, vals, 0);
        if (PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            break;
        }
        hogs.push_back(c);
    }
    REQUIRE(hogs.size() >= 30);

    const std::string app = unique_name("saturated");
    keypool::basic_pool<pq::connector> pool(
        pq::connector{}, app_target(app, via::tcp, "app", "", "", e),
        keypool::pool_options{.max_size = 2, .backoff_initial = 100ms, .backoff_max = 400ms});
    std::error_code ec;
    auto none = pool.acquire(1500ms, ec);
    CHECK(!none);
    CHECK((ec == keypool::errc::server_saturated || ec == keypool::errc::timeout));
    const auto failed = pool.stats().connects_failed;
    MESSAGE("connect attempts while saturated for 1.5 s: " << failed);
    CHECK(failed >= 1);
    CHECK(failed <= 12); // backoff 100 ms doubling to 400 ms; a busy loop would make dozens

    for (PGconn* c : hogs) PQfinish(c);
    // The other client left. While the pool backs off with nothing open, an acquire fails at once
    // with the last connect error (it cannot be served before the backoff ends); once the backoff
    // is over the next acquire connects.
    keypool::basic_pool<pq::connector>::lease lease;
    CHECK(eventually([&] {
        lease = pool.acquire(1s, ec);
        if (!lease) CHECK((ec == keypool::errc::server_saturated || ec == keypool::errc::timeout));
        return static_cast<bool>(lease);
    }));
    REQUIRE(lease);
    CHECK(scalar(lease.native_handle(), "SELECT 1") == "1");
    CHECK(pool.stats().connects_failed <= failed + 3);
}
