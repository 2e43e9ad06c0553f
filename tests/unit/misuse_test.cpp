// SPDX-License-Identifier: BSL-1.0
// Misuse the pool catches: leases held too long (leak reports with age and acquire site),
// close(deadline) naming the leases still out, and a thread that would wait on a full pool for a
// second lease while holding one (self-deadlock detection). Manual clock, fake connector.
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "../support/helpers.hpp"

using namespace std::chrono_literals;
using keypool::errc;
using keypool::lease_report;
using kp_test::fixture;

namespace {

struct leak_log {
    std::vector<lease_report>* out;
    void on_leak(const lease_report& r) { out->push_back(r); }
};

} // namespace

TEST_SUITE("misuse") {

TEST_CASE("a lease held past leak_threshold is reported once, with its age and acquire site") {
    fixture f;
    std::vector<lease_report> leaks;
    kp_test::manual_pool<keypool::with_observer<leak_log>> p(
        f.fake, "db", {.max_size = 2, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt, .leak_threshold = 1min},
        f.clock, leak_log{&leaks});
    const int line = __LINE__ + 1;
    auto held = p.acquire();
    { auto brief = p.acquire(); } // returned at once: never reported
    f.clock.advance(30s);
    CHECK(p.maintain() == f.clock.now() + 30s); // due when the held lease turns 1 min old
    CHECK(leaks.empty());
    f.clock.advance(30s);
    p.maintain();
    REQUIRE(leaks.size() == 1);
    CHECK(leaks[0].age == 1min);
    CHECK(leaks[0].site.line() == static_cast<unsigned>(line));
    CHECK(std::string(leaks[0].site.file_name()).find("misuse_test.cpp") != std::string::npos);
    CHECK(p.stats().leaks == 1);
    f.clock.advance(10min);
    p.maintain(); // the same lease: not reported again
    CHECK(leaks.size() == 1);
    held.release();
    auto next = p.acquire(); // a new lease on the same connection is a new lease
    f.clock.advance(2min);
    p.maintain();
    CHECK(leaks.size() == 2);
    CHECK(p.stats().leaks == 2);
}

TEST_CASE("through a registry: leaks reported with the site of the registry call") {
    fixture f;
    std::vector<lease_report> leaks;
    using registry = keypool::basic_registry<std::string, keypool::resolve::identity<std::string>, keypool::fake::connector,
                                             keypool::with_clock<keypool::manual_clock>, keypool::with_observer<leak_log>>;
    keypool::registry_options o;
    o.pool = {.max_size = 2, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt, .leak_threshold = 1min};
    o.pool_idle_timeout = std::nullopt;
    registry r({}, f.fake, o, f.clock, leak_log{&leaks});
    const int acquire_line = __LINE__ + 1;
    auto held = r.acquire("acme", 1s);
    std::error_code ec;
    const int ec_line = __LINE__ + 1;
    auto held2 = r.acquire("globex", 1s, ec);
    REQUIRE(held2);
    r.run_as("acme", [](keypool::fake::connection&) {}); // returned at once: never reported
    f.clock.advance(2min);
    r.maintain();
    REQUIRE(leaks.size() == 2);
    std::vector<unsigned> lines{leaks[0].site.line(), leaks[1].site.line()};
    std::sort(lines.begin(), lines.end());
    CHECK(lines == std::vector<unsigned>{static_cast<unsigned>(acquire_line), static_cast<unsigned>(ec_line)});
    for (const auto& l : leaks) {
        CHECK(l.age == 2min);
        CHECK(std::string(l.site.file_name()).find("misuse_test.cpp") != std::string::npos);
    }
    CHECK(r.stats().pools.leaks == 2);
}

TEST_CASE("a lease taken from an idle connection (the fast path) has its site recorded too") {
    fixture f;
    auto p = f.make({.max_size = 1, .leak_threshold = 1h});
    p.acquire().release(); // one idle connection: the acquires below take it without waiting
    const auto site_of_lease_out = [&] {
        const auto out = p.leases_out();
        REQUIRE(out.size() == 1);
        return out[0].site.line();
    };
    {
        const unsigned line = __LINE__ + 1;
        auto l = p.acquire();
        CHECK(site_of_lease_out() == line);
    }
    {
        const unsigned line = __LINE__ + 1;
        auto l = p.acquire(1s);
        CHECK(site_of_lease_out() == line);
    }
    {
        std::error_code ec;
        const unsigned line = __LINE__ + 1;
        auto l = p.acquire(p.now() + 1s, {}, ec);
        REQUIRE(l);
        CHECK(site_of_lease_out() == line);
    }
    {
        const unsigned line = __LINE__ + 1;
        auto l = p.try_acquire();
        REQUIRE(l);
        CHECK(site_of_lease_out() == line);
    }
}

TEST_CASE("leak detection off: no report, and no site recorded") {
    fixture f;
    auto p = f.make({.max_size = 1});
    auto held = p.acquire();
    f.clock.advance(1h);
    p.maintain();
    CHECK(p.stats().leaks == 0);
    auto out = p.leases_out();
    REQUIRE(out.size() == 1);
    CHECK(out[0].age == 1h); // the age is always known
    CHECK(out[0].site.line() == 0);
}

TEST_CASE("close(deadline) reports the leases still out") {
    fixture f;
    auto p = f.make({.max_size = 3, .leak_threshold = 1h});
    const int line = __LINE__ + 1;
    auto a = p.acquire();
    { auto b = p.acquire(); }
    f.clock.advance(5s);
    std::vector<lease_report> still_out;
    CHECK_FALSE(p.close(f.clock.now(), still_out));
    REQUIRE(still_out.size() == 1);
    CHECK(still_out[0].age == 5s);
    CHECK(still_out[0].site.line() == static_cast<unsigned>(line));
    a.release();
    CHECK(p.close(f.clock.now(), still_out));
    CHECK(still_out.empty());
}

TEST_CASE("leak_threshold must be positive") {
    std::string msg;
    CHECK(keypool::validate({.leak_threshold = 0s}, msg) == errc::invalid_config);
    CHECK(msg.find("leak_threshold") != std::string::npos);
}

TEST_CASE("self-deadlock: a thread holding a lease of a full pool gets would_deadlock at once") {
    fixture f;
    auto p = f.make({.max_size = 2, .detect_self_deadlock = true});
    auto a = p.acquire(), b = p.acquire();
    std::error_code ec;
    CHECK_FALSE(p.acquire(p.now() + 1h, {}, ec)); // no clock advance needed: it does not wait
    CHECK(ec == errc::would_deadlock);
    CHECK(p.stats().waits == 0);

    // Another thread holding nothing waits as usual (here: until its deadline).
    std::error_code other;
    std::jthread t([&] { (void)p.acquire(p.now(), {}, other); });
    t.join();
    CHECK(other == errc::timeout);

    // With a free connection there is nothing to detect.
    b.release();
    CHECK(p.acquire(p.now() + 1h, {}, ec));
}

TEST_CASE("self-deadlock detection off: the same caller waits (and times out)") {
    fixture f;
    auto p = f.make({.max_size = 1});
    auto a = p.acquire();
    std::error_code ec;
    CHECK_FALSE(p.acquire(p.now(), {}, ec));
    CHECK(ec == errc::timeout);
}

} // TEST_SUITE
