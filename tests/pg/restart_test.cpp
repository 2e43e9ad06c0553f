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
