// SPDX-License-Identifier: BSL-1.0
// Randomised property test of the registry: threads acquire, return, discard, invalidate and
// maintain over many keys while LRU and idle eviction retire pools. After every step: a lease's
// connection belongs to its key, and the accounting bounds hold; at the end, nothing leaked.
// KEYPOOL_STRESS_SEED reproduces a run.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <doctest/doctest.h>
#include <keypool/keypool.hpp>

using namespace std::chrono_literals;

namespace {
// Keys are "k0", "k1", ... or the integers 0, 1, ... (plain keys, copied into leases; a node of
// 24 bytes, which shares its line with its pool's idle-stack head and slot 0's header).
std::string key_name(const std::string& k) { return k; }
std::string key_name(std::uint64_t k) { return "k" + std::to_string(k); }
template <class Key>
Key key_at(int i) {
    if constexpr (std::is_same_v<Key, std::string>) return "k" + std::to_string(i);
    else return static_cast<Key>(i);
}

template <class Key>
struct prefix_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const Key& key, std::error_code& ec) const {
        const std::string name = key_name(key);
        if (name == "k13") { // one key that never resolves
            ec = keypool::make_error_code(keypool::errc::key_not_found);
            return std::nullopt;
        }
        return keypool::route<std::string>{"db_" + name, {}};
    }
};
} // namespace

namespace {
template <class Eviction, bool HugePages = false, class Key = std::string>
void run_registry_stress() {
    std::uint64_t seed = std::random_device{}();
    if (const char* s = std::getenv("KEYPOOL_STRESS_SEED")) seed = std::strtoull(s, nullptr, 10);
    INFO("seed=" << seed);
    std::printf("registry stress seed=%llu\n", static_cast<unsigned long long>(seed));

    keypool::fake::connector fake;
    constexpr std::size_t max_size = 3, max_pools = 16, max_connections = 20;
    constexpr bool budgeted = Eviction::uses_size;
    using reg_t = keypool::basic_registry<Key, prefix_resolver<Key>, keypool::fake::connector,
                                          keypool::with_eviction<Eviction>>;
    auto reg = std::make_unique<reg_t>(
        prefix_resolver<Key>{}, fake,
        keypool::registry_options{.pool = {.max_size = max_size, .max_connecting = 2, .idle_timeout = 2ms,
                                           .max_lifetime = 10ms, .lifetime_jitter = 1ms, .seed = seed},
                                  .max_pools = max_pools,
                                  .max_connections = max_connections,
                                  .pool_idle_timeout = 1ms,
                                  .failure_backoff = 1ms,
                                  .huge_pages = HugePages});

    std::vector<Key> keys;
    for (int i = 0; i < 64; ++i) keys.push_back(key_at<Key>(i));
    std::atomic<int> wrong_key{0}, dirty{0};
    std::atomic<std::uint64_t> leases{0}, ops{0};
    constexpr int threads = 8, per_thread = 12'500; // 100k operations
    {
        std::vector<std::jthread> ts;
        for (int t = 0; t < threads; ++t)
            ts.emplace_back([&, t] {
                std::mt19937_64 rng(seed + static_cast<std::uint64_t>(t) * 104729);
                keypool::pool_stats last{}; // this thread's previous snapshot: counters never go down
                for (int i = 0; i < per_thread; ++i, ++ops) {
                    const Key& key = keys[rng() % keys.size()];
                    const std::string target = "db_" + key_name(key);
                    switch (rng() % 16) {
                    case 0: reg->invalidate(key); break;
                    case 1: reg->evict_idle(); break;
                    case 2: (void)reg->maintain(); break;
                    case 3: {
                        auto l = reg->try_acquire(key);
                        if (l && (l.key() != key || l->target != target)) ++wrong_key;
                        break;
                    }
                    default: {
                        std::error_code ec;
                        auto l = reg->acquire(key, std::chrono::milliseconds(rng() % 3), ec);
                        if (!l) break;
                        ++leases;
                        if (l.key() != key || l->target != target) ++wrong_key;
                        if (l->dirty()) ++dirty;
                        l->use();
                        if (rng() % 8 == 0) l.discard();
                    }
                    }
                    if (i % 64 == 0) { // the accounting bounds, checked while everything runs
                        auto s = reg->stats();
                        CHECK(s.keys_active <= max_pools + threads);
                        CHECK(s.pools.size <= (s.pools_active + s.pools_draining) * max_size);
                        CHECK(s.pools.acquires >= last.acquires);
                        CHECK(s.pools.connects_ok >= last.connects_ok);
                        for (std::size_t c = 0; c < s.pools.closes.size(); ++c) CHECK(s.pools.closes[c] >= last.closes[c]);
                        last = s.pools;
                        if (budgeted) CHECK(fake.live() <= max_connections); // retired pools included
                    }
                }
            });
    }
    CHECK(ops == threads * per_thread);
    CHECK(wrong_key == 0);
    CHECK(dirty == 0);
    CHECK(leases > 0);
    auto s = reg->stats(); // quiescent: exact
    CHECK(s.keys_active <= max_pools);
    CHECK(s.pools.in_use == 0);
    CHECK(s.pools.connecting == 0);
    CHECK(s.pools.idle == s.pools.size);
    CHECK(s.pools.size == fake.live());
    CHECK(s.pools_draining == 0);
    CHECK(s.errors_for(keypool::errc::key_not_found) > 0);
    if (keypool::detail::huge_arena::supported()) CHECK((s.huge_page_bytes > 0) == HugePages);
    reg.reset();
    CHECK(fake.live() == 0);
    std::printf("registry stress: %llu leases, %llu pools created, %llu evicted (lru %llu, idle %llu, invalidated %llu)\n",
                static_cast<unsigned long long>(leases.load()), static_cast<unsigned long long>(s.pools_created),
                static_cast<unsigned long long>(s.evicted[0] + s.evicted[1] + s.evicted[3]),
                static_cast<unsigned long long>(s.evicted[0]), static_cast<unsigned long long>(s.evicted[1]),
                static_cast<unsigned long long>(s.evicted[3]));
}
} // namespace

TEST_CASE("registry_stress: random operations over many keys keep every lease on its key (lru + idle)") {
    run_registry_stress<keypool::evict::all_of<keypool::evict::lru, keypool::evict::idle>>();
}

TEST_CASE("registry_stress: the connection budget holds across keys (lru + idle + size)") {
    run_registry_stress<keypool::evict::all_of<keypool::evict::lru, keypool::evict::idle, keypool::evict::size>>();
}

TEST_CASE("registry_stress: pools built and freed from the huge-page arena by many threads (lru + idle + size)") {
    run_registry_stress<keypool::evict::all_of<keypool::evict::lru, keypool::evict::idle, keypool::evict::size>, true>();
}

TEST_CASE("registry_stress: integer keys, their nodes in their pools' blocks in the huge-page arena (lru + idle + size)") {
    run_registry_stress<keypool::evict::all_of<keypool::evict::lru, keypool::evict::idle, keypool::evict::size>, true,
                        std::uint64_t>();
}

TEST_CASE("registry_stress: under a full connection budget every caller is served (no idle connection left unused)") {
    // More keys and callers than connections: most acquires need another key's idle connection
    // closed, or a token from a return. Returns run until the end, so no caller should time out:
    // one that did waited while a connection sat idle somewhere (evict::size's dry mark gone stale).
    using reg_t = keypool::basic_registry<std::string, prefix_resolver<std::string>, keypool::fake::connector,
                                          keypool::with_eviction<keypool::evict::size>>;
    keypool::fake::connector fake;
    reg_t reg(prefix_resolver<std::string>{}, fake,
              keypool::registry_options{.pool = {.max_size = 2}, .max_pools = 64, .max_connections = 3});
    constexpr int threads = 6, per_thread = 2'000;
    std::atomic<int> failed{0};
    {
        std::vector<std::jthread> ts;
        for (int t = 0; t < threads; ++t)
            ts.emplace_back([&, t] {
                std::mt19937_64 rng(static_cast<std::uint64_t>(t) * 7919 + 1);
                for (int i = 0; i < per_thread; ++i) {
                    const std::string key = "k" + std::to_string(rng() % 12 + 20); // (not k13)
                    std::error_code ec;
                    auto l = reg.acquire(key, 20s, ec);
                    if (!l) {
                        ++failed;
                        continue;
                    }
                    l->use();
                    if (rng() % 4 == 0) std::this_thread::yield(); // (others queue meanwhile)
                }
            });
    }
    CHECK(failed == 0);
    auto s = reg.stats();
    CHECK(s.pools.size == fake.live());
    CHECK(fake.live() <= 3);
    CHECK(s.evicted_for(keypool::evict_reason::size) > 0);
    std::printf("budget stress: %llu trims, %llu pools looked at\n",
                static_cast<unsigned long long>(s.evicted_for(keypool::evict_reason::size)),
                static_cast<unsigned long long>(s.trim_scans));
}

TEST_CASE("registry_stress: close(deadline) while threads hold leases returns once every connection is closed") {
    // Threads acquire through the registry and through pool objects (whose pools LRU retires
    // while they are held, so they leave the registry still open) until acquires fail with
    // `closed`; the main thread closes meanwhile. When close(deadline) returns true no connection
    // of any pool the registry made may be open, whatever the threads were doing.
    using reg_t = keypool::basic_registry<std::string, prefix_resolver<std::string>, keypool::fake::connector,
                                          keypool::with_eviction<keypool::evict::lru>>;
    keypool::fake::connector fake;
    reg_t reg(prefix_resolver<std::string>{}, fake, keypool::registry_options{.pool = {.max_size = 2}, .max_pools = 4});
    constexpr int threads = 6;
    std::atomic<int> running{0}, wrong_error{0};
    std::atomic<std::uint64_t> leases{0};
    std::vector<std::jthread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
            std::mt19937_64 rng(static_cast<std::uint64_t>(t) * 31 + 5);
            ++running;
            for (;;) {
                const std::string key = "k" + std::to_string(rng() % 10 + 20);
                std::error_code ec;
                if (rng() % 4 == 0) { // through a pool object held across the acquire
                    auto p = reg.pool(key, reg.now() + 20s, {}, ec);
                    if (!p) {
                        if (ec != keypool::errc::closed) ++wrong_error;
                        break;
                    }
                    auto l = p->acquire(20s, ec);
                    if (!l) {
                        if (ec != keypool::errc::closed) ++wrong_error;
                        break;
                    }
                    ++leases;
                    l->use();
                    std::this_thread::yield(); // (held while others evict its pool)
                } else {
                    auto l = reg.acquire(key, 20s, ec);
                    if (!l) {
                        if (ec != keypool::errc::closed) ++wrong_error;
                        break;
                    }
                    ++leases;
                    l->use();
                }
            }
        });
    while (running != threads || leases < 2'000) std::this_thread::yield();
    const bool drained = reg.close(reg.now() + 20s);
    CHECK(drained);
    CHECK(fake.live() == 0); // (the threads can open none now: every pool is closed)
    ts.clear();
    CHECK(wrong_error == 0);
    CHECK(fake.live() == 0);
}
