// SPDX-License-Identifier: BSL-1.0
// Per-tenant passwords: static_password, password_from, and caching_password (TTL on a manual
// clock, invalidation, failures not cached, single flight under 16 threads with a gated fetch).
#include <atomic>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ostream> // doctest prints std::error_code through it

#include <doctest/doctest.h>
#include <keypool/pq/password.hpp>

#include "../support/helpers.hpp"

using namespace std::chrono_literals;
using keypool::errc;
using keypool::manual_clock;
using keypool::pq::caching_password;

namespace {

/// A fetch that answers "pw-<tenant>-<n>" (n = its call count) and counts its calls.
struct counting_fetch {
    std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
    std::optional<std::string> operator()(std::string_view tenant, std::error_code& ec) const {
        const int n = ++*calls;
        if (tenant == "ghost") {
            ec = make_error_code(errc::key_not_found);
            return std::nullopt;
        }
        return "pw-" + std::string(tenant) + "-" + std::to_string(n);
    }
};

/// A fetch that blocks until its gate opens, then answers (or fails, or throws) as told.
struct gated_fetch {
    enum class outcome { value, error, exception };
    std::shared_future<void> gate;
    outcome how = outcome::value;
    std::optional<std::string> operator()(std::string_view tenant, std::error_code& ec) const {
        gate.wait();
        switch (how) {
        case outcome::value: return "pw-" + std::string(tenant);
        case outcome::error: ec = make_error_code(errc::upstream_unreachable); return std::nullopt;
        case outcome::exception: throw std::runtime_error("secret store down");
        }
        return std::nullopt;
    }
};

struct result {
    std::optional<std::string> value;
    std::error_code ec;
};

/// 16 threads ask `cache` for "acme" while the fetch is held at `gate`: one fetches and fifteen
/// wait for it; then the gate opens. Returns what each thread got.
template <class Cache>
std::vector<result> stampede(Cache& cache, std::promise<void>& gate) {
    std::vector<result> results(16);
    std::vector<std::jthread> threads;
    for (auto& r : results) threads.emplace_back([&] { r.value = cache.password("acme", r.ec); });
    REQUIRE(kp_test::eventually([&] { return cache.fetches() == 1 && cache.waiters() == 15; }));
    gate.set_value();
    threads.clear();
    return results;
}

} // namespace

TEST_SUITE("pq.password") {

TEST_CASE("static_password gives the same password to every tenant, and an empty one is invalid_config") {
    static_assert(keypool::pq::password_resolver<keypool::pq::static_password>);
    keypool::pq::static_password p{"s3cret"};
    std::error_code ec = make_error_code(errc::timeout);
    CHECK(p.password("acme", ec) == std::optional<std::string>("s3cret"));
    CHECK(!ec);
    CHECK(p.password("globex", ec) == std::optional<std::string>("s3cret"));

    keypool::pq::static_password empty{};
    CHECK_FALSE(empty.password("acme", ec));
    CHECK(ec == errc::invalid_config);
}

TEST_CASE("password_from keeps the resolver alive and passes the tenant and errors through") {
    struct per_tenant {
        std::optional<std::string> password(std::string_view tenant, std::error_code& ec) {
            if (tenant == "acme") return "acme-pw";
            ec = make_error_code(errc::key_not_found);
            return std::nullopt;
        }
    };
    static_assert(keypool::pq::password_resolver<per_tenant>);
    auto r = std::make_shared<per_tenant>();
    std::weak_ptr<per_tenant> weak = r;
    keypool::pq::tenant_password_fn fn = keypool::pq::password_from(std::move(r));
    CHECK_FALSE(weak.expired());

    std::error_code ec;
    CHECK(fn("acme", ec) == std::optional<std::string>("acme-pw"));
    CHECK(!ec);
    CHECK_FALSE(fn("nobody", ec));
    CHECK(ec == errc::key_not_found);

    fn = nullptr;
    CHECK(weak.expired());

    auto none = keypool::pq::password_from(std::shared_ptr<keypool::pq::static_password>{});
    ec.clear();
    CHECK_FALSE(none("acme", ec));
    CHECK(ec == errc::invalid_config);
}

TEST_CASE("caching_password: miss, hit, expiry after the ttl on the manual clock") {
    manual_clock clock;
    counting_fetch fetch;
    caching_password cache(fetch, 10min, clock);
    static_assert(keypool::pq::password_resolver<decltype(cache)>);
    std::error_code ec;

    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-1"));
    CHECK(!ec);
    CHECK(cache.fetches() == 1);
    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-1")); // hit
    CHECK(cache.fetches() == 1);

    CHECK(cache.password("globex", ec) == std::optional<std::string>("pw-globex-2")); // its own entry
    CHECK(cache.fetches() == 2);
    CHECK(cache.size() == 2);

    clock.advance(10min - 1ns);
    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-1")); // not yet expired
    CHECK(cache.fetches() == 2);
    clock.advance(1ns);
    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-3")); // expired: refetched
    CHECK(cache.fetches() == 3);
    CHECK(*fetch.calls == 3);
}

TEST_CASE("caching_password: invalidate drops one tenant, invalidate_all every tenant") {
    manual_clock clock;
    caching_password cache(counting_fetch{}, 1h, clock);
    std::error_code ec;
    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-1"));
    CHECK(cache.password("globex", ec) == std::optional<std::string>("pw-globex-2"));

    cache.invalidate("acme");
    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-3"));
    CHECK(cache.password("globex", ec) == std::optional<std::string>("pw-globex-2")); // untouched
    CHECK(cache.fetches() == 3);

    cache.invalidate("nobody"); // unknown tenant: nothing happens
    cache.invalidate_all();
    CHECK(cache.size() == 0);
    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-4"));
    CHECK(cache.password("globex", ec) == std::optional<std::string>("pw-globex-5"));
    CHECK(cache.fetches() == 5);
}

TEST_CASE("caching_password: a failure reaches the caller but is not cached") {
    manual_clock clock;
    bool fail = true;
    auto fetch = [&](std::string_view, std::error_code& ec) -> std::optional<std::string> {
        if (fail) {
            ec = make_error_code(errc::upstream_unreachable);
            return std::nullopt;
        }
        return "good";
    };
    caching_password cache(fetch, 1h, clock);
    std::error_code ec;
    CHECK_FALSE(cache.password("acme", ec));
    CHECK(ec == errc::upstream_unreachable);
    CHECK(cache.size() == 0);

    fail = false;
    CHECK(cache.password("acme", ec) == std::optional<std::string>("good"));
    CHECK(!ec);
    CHECK(cache.fetches() == 2);

    // An unknown tenant keeps its key_not_found, asked again every time.
    caching_password lookup(counting_fetch{}, 1h, clock);
    CHECK_FALSE(lookup.password("ghost", ec));
    CHECK(ec == errc::key_not_found);
    CHECK_FALSE(lookup.password("ghost", ec));
    CHECK(lookup.fetches() == 2);
}

TEST_CASE("caching_password: a throwing, silent or empty fetch is an error, never an exception") {
    manual_clock clock;
    int mode = 0;
    auto fetch = [&](std::string_view, std::error_code&) -> std::optional<std::string> {
        switch (mode) {
        case 0: throw std::runtime_error("boom");
        case 1: return std::nullopt; // no error code given
        case 2: return std::string();
        default: return "ok";
        }
    };
    caching_password cache(fetch, 1h, clock);
    std::error_code ec;
    CHECK_FALSE(cache.password("acme", ec));
    CHECK(ec == errc::connect_failed);
    mode = 1;
    CHECK_FALSE(cache.password("acme", ec));
    CHECK(ec == errc::connect_failed);
    mode = 2;
    CHECK_FALSE(cache.password("acme", ec));
    CHECK(ec == errc::invalid_config); // libpq would read an empty password as "not set"
    mode = 3;
    CHECK(cache.password("acme", ec) == std::optional<std::string>("ok"));
    CHECK(!ec);
    CHECK(cache.fetches() == 4);
}

TEST_CASE("caching_password: a negative ttl is invalid_config, and the steady-clock form needs no clock") {
    manual_clock clock;
    CHECK_THROWS_AS(caching_password(counting_fetch{}, -1s, clock), keypool::error);
    try {
        caching_password c(counting_fetch{}, -1s, clock);
    } catch (const keypool::error& e) {
        CHECK(e.code() == errc::invalid_config);
    }

    caching_password real(counting_fetch{}, 1h);
    std::error_code ec;
    CHECK(real.password("acme", ec) == std::optional<std::string>("pw-acme-1"));
    CHECK(real.password("acme", ec) == std::optional<std::string>("pw-acme-1"));
    CHECK(real.fetches() == 1);
}

TEST_CASE("caching_password: 16 threads on a cold tenant share one fetch") {
    manual_clock clock;
    std::promise<void> gate;
    std::atomic<int> calls{0};
    gated_fetch inner{gate.get_future().share()};
    auto fetch = [&](std::string_view t, std::error_code& ec) {
        ++calls;
        return inner(t, ec);
    };
    caching_password cache(fetch, 1h, clock);

    const std::vector<result> results = stampede(cache, gate);

    CHECK(calls == 1);
    CHECK(cache.fetches() == 1);
    for (const auto& r : results) {
        CHECK(r.value == std::optional<std::string>("pw-acme"));
        CHECK(!r.ec);
    }
    std::error_code ec;
    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme")); // now cached
    CHECK(cache.fetches() == 1);
}

TEST_CASE("caching_password: a failing or throwing shared fetch reaches every waiter, and is not cached") {
    for (auto how : {gated_fetch::outcome::error, gated_fetch::outcome::exception}) {
        CAPTURE(static_cast<int>(how));
        manual_clock clock;
        std::promise<void> gate;
        caching_password cache(gated_fetch{gate.get_future().share(), how}, 1h, clock);

        const std::vector<result> results = stampede(cache, gate);

        const auto expected = how == gated_fetch::outcome::error ? errc::upstream_unreachable : errc::connect_failed;
        for (const auto& r : results) {
            CHECK_FALSE(r.value);
            CHECK(r.ec == expected);
        }
        CHECK(cache.fetches() == 1);
        CHECK(cache.size() == 0);
        std::error_code ec;
        CHECK_FALSE(cache.password("acme", ec)); // fetched again (the gate is open now)
        CHECK(cache.fetches() == 2);
    }
}

TEST_CASE("caching_password: a fetch in flight during an invalidation is not cached") {
    for (bool all : {false, true}) {
        CAPTURE(all);
        manual_clock clock;
        std::promise<void> first_gate;
        std::promise<void> open_gate;
        open_gate.set_value();
        std::shared_future<void> gates[] = {first_gate.get_future().share(), open_gate.get_future().share()};
        std::atomic<int> calls{0};
        auto fetch = [&](std::string_view tenant, std::error_code&) -> std::optional<std::string> {
            const int n = calls++;
            gates[n == 0 ? 0 : 1].wait();
            return "pw-" + std::string(tenant) + "-" + std::to_string(n);
        };
        caching_password cache(fetch, 1h, clock);

        result old;
        std::jthread t([&] { old.value = cache.password("acme", old.ec); });
        REQUIRE(kp_test::eventually([&] { return calls == 1; })); // inside the fetch, on the gate
        if (all) cache.invalidate_all();
        else cache.invalidate("acme");

        // A caller after the invalidation does not join the old fetch: it fetches anew.
        std::error_code ec;
        CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-1"));
        CHECK(cache.fetches() == 2);

        first_gate.set_value();
        t.join();
        CHECK(old.value == std::optional<std::string>("pw-acme-0")); // its caller still gets it
        CHECK(!old.ec);

        // The old result did not overwrite the newer one.
        CHECK(cache.password("acme", ec) == std::optional<std::string>("pw-acme-1"));
        CHECK(cache.fetches() == 2);
    }
}

TEST_CASE("caching_password: an invalidated fetch with no newer one leaves nothing cached") {
    manual_clock clock;
    std::promise<void> gate;
    std::atomic<bool> gated{true};
    std::shared_future<void> open = gate.get_future().share();
    auto fetch = [&](std::string_view, std::error_code&) -> std::optional<std::string> {
        if (gated.exchange(false)) open.wait();
        return "pw";
    };
    caching_password cache(fetch, 1h, clock);

    result old;
    std::jthread t([&] { old.value = cache.password("acme", old.ec); });
    REQUIRE(kp_test::eventually([&] { return cache.fetches() == 1; }));
    cache.invalidate("acme");
    gate.set_value();
    t.join();
    CHECK(old.value == std::optional<std::string>("pw"));
    CHECK(cache.size() == 0);
    std::error_code ec;
    CHECK(cache.password("acme", ec) == std::optional<std::string>("pw"));
    CHECK(cache.fetches() == 2); // the in-flight result was not stored as fresh
}

TEST_CASE("caching_password through password_from") {
    manual_clock clock;
    using cache_t = caching_password<counting_fetch, manual_clock>;
    auto cache = std::make_shared<cache_t>(counting_fetch{}, 1h, clock);
    keypool::pq::tenant_password_fn fn = keypool::pq::password_from(cache);
    std::error_code ec;
    CHECK(fn("acme", ec) == std::optional<std::string>("pw-acme-1"));
    CHECK(fn("acme", ec) == std::optional<std::string>("pw-acme-1"));
    CHECK_FALSE(fn("ghost", ec));
    CHECK(ec == errc::key_not_found);
    CHECK(cache->fetches() == 2);
}

} // TEST_SUITE
