// SPDX-License-Identifier: BSL-1.0
// Writing your own policies, on the fake connector: an observer with every hook, a resolver that
// honours a stop token, an eviction policy, a clock, and the shipped sync and reset policies chosen
// with the order-free setters. Every claim is checked; the example fails if one is wrong.
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>

#include <keypool/keypool.hpp>

#include "expect.hpp"

namespace {

// [snippet:observer]
/// Counts what pools and registries report. A registry copies its observer into every pool it
/// builds, so the counts live behind a shared pointer. Hooks run on any thread, without the pool's
/// lock held: they must be thread-safe and quick.
struct counting_observer {
    struct counts {
        std::atomic<int> connects{0}, connect_failures{0}, waits{0}, leaks{0}, created{0}, evicted{0};
        std::array<std::atomic<int>, keypool::close_reason_count> closes{};
    };
    std::shared_ptr<counts> n = std::make_shared<counts>();

    // Pool hooks.
    void on_connect(std::chrono::nanoseconds /*took*/, std::error_code ec) {
        ++(ec ? n->connect_failures : n->connects);
    }
    void on_close(keypool::close_reason why) { ++n->closes[static_cast<std::size_t>(why)]; }
    void on_wait(std::chrono::nanoseconds /*waited*/, std::error_code /*ec: empty if served*/) { ++n->waits; }
    void on_leak(const keypool::lease_report& /*age and acquire site*/) { ++n->leaks; }
    // Registry hooks.
    void on_pool_created(const std::string& /*key*/) { ++n->created; }
    void on_pool_evicted(const std::string& /*key*/, keypool::evict_reason /*why*/) { ++n->evicted; }
};
// [/snippet:observer]

// [snippet:resolver]
/// Tenants come from a directory. Resolution runs once per key, when its pool entry is created.
struct directory_resolver {
    using target_type = std::string;      // must be the connector's target_type
    using setup_type = keypool::no_setup; // no per-lease session setup (else: the connector's prepare)

    std::map<std::string, std::string> databases; // tenant -> database

    std::optional<keypool::route<std::string>> resolve(const std::string& tenant, std::error_code& ec) const {
        const auto it = databases.find(tenant);
        if (it == databases.end()) {
            ec = keypool::errc::key_not_found;
            return std::nullopt;
        }
        return keypool::route<std::string>{it->second, {}};
    }
    /// Optional: a resolver that blocks (a network lookup) takes the creating caller's stop token;
    /// if that caller gives up, another caller waiting for the same key takes over.
    std::optional<keypool::route<std::string>> resolve(const std::string& tenant, std::stop_token stop,
                                                      std::error_code& ec) const {
        if (stop.stop_requested()) {
            ec = keypool::errc::cancelled;
            return std::nullopt;
        }
        return resolve(tenant, ec);
    }
};
// [/snippet:resolver]

// [snippet:eviction]
/// At most `max_pools` pools and `max_connections` connections across them; a tenant that goes
/// quiet keeps its pool until LRU pushes it out. Same as evict::all_of<evict::lru, evict::size>.
struct capped {
    static constexpr bool uses_lru = true;
    static constexpr bool uses_idle = false;
    static constexpr bool uses_size = true;
};
// [/snippet:eviction]

// [snippet:clock]
/// The steady clock, counting how often the pool reads it. `now()` is the precise reading (slow
/// path: waits, connects); `coarse_now()` may be coarse (the fast path reads it once per checkout).
/// The event is what a blocked waiter sleeps on; `wait_until` returns true if `set()` came first.
struct counting_clock {
    mutable std::atomic<long> precise{0}, coarse{0};

    keypool::time_point now() const noexcept {
        ++precise;
        return keypool::steady_clock{}.now();
    }
    keypool::time_point coarse_now() const noexcept {
        ++coarse;
        return keypool::steady_clock{}.coarse_now();
    }
    class event : public keypool::steady_clock::event {
    public:
        explicit event(const counting_clock&) : keypool::steady_clock::event(keypool::steady_clock{}) {}
    };
};
// [/snippet:clock]

} // namespace

int main() {
    using namespace std::chrono_literals;
    keypool::fake::connector fake;

    // [snippet:registry]
    using tenant_registry =
        keypool::basic_registry<std::string, directory_resolver, keypool::fake::connector,
                                keypool::with_eviction<capped>, keypool::with_observer<counting_observer>,
                                keypool::with_reset<keypool::reset_at::release>>;
    const keypool::steady_clock clock; // a registry given an observer is given its clock too
    counting_observer seen;            // copies share the counts
    tenant_registry tenants(directory_resolver{{{"acme", "db_acme"}, {"globex", "db_globex"}, {"initech", "db_initech"}}},
                            fake, {.pool = {.max_size = 2}, .max_pools = 2, .max_connections = 3}, clock, seen);

    for (const char* tenant : {"acme", "globex", "initech"}) // a third pool: over max_pools
        tenants.run_as(tenant, [](keypool::fake::connection& c) { c.use("SET app.tenant = ..."); });

    EXPECT(seen.n->created == 3 && seen.n->connects == 3);
    EXPECT(seen.n->evicted == 1 && tenants.stats().evicted_for(keypool::evict_reason::lru) == 1);
    EXPECT(seen.n->closes[static_cast<std::size_t>(keypool::close_reason::closed)] == 1); // the retired pool's
    EXPECT(fake.stats().resets == 3); // reset_at::release: every return was reset on the spot
    // [/snippet:registry]

    std::error_code ec;
    auto unknown = tenants.acquire("umbrella", 1s, ec);
    EXPECT(!unknown && ec == keypool::errc::key_not_found);

    // [snippet:single_thread]
    // One thread, no atomics, no locks: a caller that would have to wait for another thread
    // (which cannot exist) gets would_deadlock at once instead of hanging.
    keypool::basic_pool<keypool::fake::connector, keypool::with_sync<keypool::sync::none>> local(
        fake, "cache-db", {.max_size = 1});
    auto only = local.acquire();
    auto second = local.acquire(1s, ec);
    EXPECT(!second && ec == keypool::errc::would_deadlock);
    // [/snippet:single_thread]
    only.release();

    // [snippet:background]
    // reset_at::background: a returned connection is reset by maintain(), here on a janitor's
    // thread (it registers itself as the pool's reset signal), not by the next borrower.
    keypool::basic_pool<keypool::fake::connector, keypool::with_reset<keypool::reset_at::background>> reports(
        fake, "reports-db", {.max_size = 2});
    keypool::janitor resetter(reports, 1s);
    { reports.acquire()->use("CREATE TEMP TABLE t (...)"); } // returned dirty
    for (auto until = std::chrono::steady_clock::now() + 5s;
         reports.stats().resets == 0 && std::chrono::steady_clock::now() < until;)
        std::this_thread::sleep_for(1ms);
    EXPECT(reports.stats().resets == 1 && !reports.acquire()->dirty());
    // [/snippet:background]

    // [snippet:clock_use]
    counting_clock counted;
    keypool::basic_pool<keypool::fake::connector, keypool::with_clock<counting_clock>> timed(
        fake, "orders-db", {.max_size = 2}, counted);
    timed.acquire().release(); // the first acquire connects: the slow path reads the precise clock
    const long precise_before = counted.precise.load();
    for (int i = 0; i < 1000; ++i) timed.acquire().release();
    EXPECT(counted.precise.load() == precise_before); // the fast path never reads it...
    EXPECT(counted.coarse.load() >= 1000);            // ...only the coarse clock, once per checkout
    // [/snippet:clock_use]

    std::printf("custom policies: %d pools created, %d evicted, %d connects; resets on release: %llu\n",
                seen.n->created.load(), seen.n->evicted.load(), seen.n->connects.load(),
                static_cast<unsigned long long>(fake.stats().resets));
    return 0;
}
