// SPDX-License-Identifier: BSL-1.0
// basic_registry: resolution, role switch, run_as, LRU and idle eviction, invalidate, single
// flight, close. Manual clock, fake connector, threads synchronised on observable state.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "../support/helpers.hpp"

using namespace std::chrono_literals;
using keypool::errc;
using keypool::evict_reason;
using kp_test::eventually;

namespace {

/// A resolver that maps key k to target "db_k", counts its calls, and can block on a gate or fail.
struct test_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    struct state {
        std::atomic<int> calls{0};
        std::shared_ptr<keypool::fake::gate> gate;
        const keypool::manual_clock* clock = nullptr;
        std::error_code fail;
    };
    std::shared_ptr<state> st = std::make_shared<state>();
    std::optional<keypool::route<std::string>> resolve(const std::string& key, std::error_code& ec) const {
        ++st->calls;
        if (st->gate) (void)st->gate->wait(*st->clock, keypool::time_point::max(), {});
        if (key.empty() || key == "missing" || st->fail) {
            ec = st->fail ? st->fail : keypool::make_error_code(key.empty() ? errc::invalid_config : errc::key_not_found);
            return std::nullopt;
        }
        return keypool::route<std::string>{"db_" + key, {}};
    }
};

template <class... Options>
using test_registry = keypool::basic_registry<std::string, test_resolver, keypool::fake::connector,
                                              keypool::with_clock<keypool::manual_clock>, Options...>;

struct fixture : kp_test::fixture {
    test_resolver resolver;
    fixture() { resolver.st->clock = &clock; }
    template <class... Options>
    test_registry<Options...> make(keypool::registry_options o = {}) {
        return test_registry<Options...>(resolver, fake, std::move(o), clock);
    }
};

} // namespace

TEST_SUITE("registry") {

TEST_CASE("each key gets its own pool, created once, and a lease tells its key") {
    fixture f;
    auto r = f.make();
    {
        auto a = r.acquire("acme");
        CHECK(a.key() == "acme");
        CHECK(a->target == "db_acme");
    }
    auto a = r.acquire("acme");
    auto b = r.acquire("globex");
    CHECK(b->target == "db_globex");
    auto s = r.stats();
    CHECK(s.keys_active == 2);
    CHECK(s.pools_active == 2);
    CHECK(s.pools_created == 2);
    CHECK(s.misses == 2);
    CHECK(s.hits == 1); // the second acquire of "acme" (the misses' own lookups are not hits)
    CHECK(f.resolver.st->calls == 2);
    CHECK(s.pools.in_use == 2);
    CHECK(s.pools.size == f.fake.live());
}

namespace {
/// Integer keys, each its own target: the registry W3 measures (its nodes live in their pools).
struct int_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const std::uint64_t& k, std::error_code&) const {
        return keypool::route<std::string>{"db_" + std::to_string(k), {}};
    }
};
} // namespace

TEST_CASE("a key's node, its pool's idle-stack head and slot 0's header with the fake's hot part fill one record, side by side with other keys'") {
    // All a hit reads and writes of its key when nobody used the connection's session: that one
    // 64-byte record of its pool (pool_core's split layout; docs/benchmarks.md, "Session 31").
    // The node is the key's link word (link and the entry's state bits) and the key: 16 bytes;
    // the rest of the entry starts the pool's body, with the core and the connections. The
    // fake's reset reads the 8 bytes it keeps in the slot's header (connector_has_hot). The
    // records of keys built one after the other lie side by side.
    kp_test::fixture f;
    keypool::basic_registry<std::uint64_t, int_resolver, keypool::fake::connector, keypool::with_clock<keypool::manual_clock>> r(
        int_resolver{}, f.fake, {.pool = {.max_size = 2}}, f.clock);
    for (std::uint64_t k : {7U, 8U}) r.acquire(k).release();
    const auto addr = [](const void* a) { return reinterpret_cast<std::uintptr_t>(a); };
    std::uintptr_t records[2] = {};
    for (std::uint64_t k : {7U, 8U}) {
        auto p = r.pool(k);
        auto* core = keypool::detail::pool_access::core(*p);
        using core_type = std::remove_pointer_t<decltype(core)>;
        const auto& x = core->shared();
        REQUIRE(x.split());
        CHECK(x.pairs.rec_bytes == 64);
        const auto* record = core_type::record_at(core, x);
        CHECK(core_type::with_record(record, x) == core);
        CHECK(addr(record) % 64 == 0);
        const auto* head = reinterpret_cast<const unsigned char*>(&core->head());
        CHECK(head == record + 16);
        std::uint64_t key = 0; // the node: its link word, then its key
        std::memcpy(&key, record + 8, sizeof key);
        CHECK(key == k);
        const auto* s0 = core->slot_of(0);
        REQUIRE(core->body(s0).conn);
        CHECK(addr(s0) == addr(record) + 24);
        CHECK(addr(s0) + sizeof(*s0) == addr(record) + 64); // slot 0's whole header, the hot part too
        CHECK(addr(&s0->hot) - addr(s0) == 32);
        const auto* body = x.pairs.body_of(record); // the entry's cold part, then the rest
        CHECK(keypool::detail::pair_layout::of(record).body_of(record) == body);
        CHECK(addr(core->slot_of(1)) > addr(body)); // (after the entry's cold part, 56 bytes)
        CHECK(addr(core->slot_of(1)) < addr(body) + 64);
        CHECK(x.pairs.rec_bytes + x.pairs.body_bytes == 576); // (no padding: the memory target's 256 B)
        CHECK(addr(&core->connection_of(s0)) > addr(body));
        CHECK(addr(core) + sizeof(*core) <= addr(body) + x.pairs.body_bytes);
        records[k - 7] = addr(record);
    }
    CHECK(records[1] - records[0] == 64);
}

TEST_CASE("building a registry settles its lookups' barrier mode, so the first acquire makes no membarrier registration") {
    // ctest runs each test case in a process of its own, where nothing has used a read section
    // before: without the registry's rcu.prepare(), the mode stays unsettled until the first
    // acquire, which then waited for the kernel's registration (12-18 ms here once the process
    // had a second thread: BM_registry_growth_latency's worst acquire was its first key's).
    fixture f;
    auto r = f.make();
    CHECK(keypool::detail::rcu.prepared());
    CHECK(r.acquire("acme").key() == "acme");
}

TEST_CASE("try_acquire never creates a pool and counts one hit per call on a ready key") {
    fixture f;
    auto r = f.make();
    CHECK(!r.try_acquire("acme")); // no pool yet: none is built
    CHECK(r.stats().keys_active == 0);
    r.acquire("acme").release(); // the miss builds it, one idle connection
    {
        auto a = r.try_acquire("acme"); // lock-free: the idle connection
        REQUIRE(a);
        CHECK(a.key() == "acme");
        CHECK(r.stats().hits == 1);
        CHECK(!r.try_acquire("acme")); // the only connection is out: nothing idle, not a wait
        CHECK(r.stats().hits == 2);    // (counted once, not again by the locked retry)
    }
    CHECK(r.try_acquire("acme"));
    const auto s = r.stats();
    CHECK(s.hits == 3);
    CHECK(s.misses == 1);
    CHECK(s.pools.waits == 0);
    CHECK(f.fake.live() == 1);
}

TEST_CASE("a hit validates an idle connection once validate_after_idle has passed since its last checkout, not before") {
    fixture f;
    auto r = f.make({.pool = {.validate_after_idle = 1s}});
    r.acquire("acme").release(); // the miss builds the pool: one idle connection, checked out now
    const auto checks = [&] { return f.fake.stats().alive_checks; };
    const std::uint64_t before = checks();
    f.clock.advance(999ms);
    r.acquire("acme").release(); // idle 999 ms: handed out unchecked (the hit's own clock, read before its pop)
    CHECK(checks() == before);
    f.clock.advance(1s);
    r.acquire("acme").release(); // idle exactly 1 s: checked
    CHECK(checks() == before + 1);
    f.clock.advance(1s);
    CHECK(r.try_acquire("acme")); // try_acquire's hit too
    CHECK(checks() == before + 2);
    // A connection that died while idle past it is closed, not handed out: the acquire gets a new one.
    std::uint64_t id = 0;
    {
        auto l = r.acquire("acme");
        REQUIRE(l);
        id = l->id;
    }
    f.fake.kill(id);
    f.clock.advance(1s);
    {
        auto l = r.acquire("acme");
        REQUIRE(l);
        CHECK(l->id != id);
    }
    CHECK(f.fake.stats().closes == 1);
}

TEST_CASE("validate_after_idle at its longest never validates a hit (no overflow)") {
    fixture f;
    auto r = f.make({.pool = {.validate_after_idle = keypool::duration::max()}});
    r.acquire("acme").release();
    const std::uint64_t before = f.fake.stats().alive_checks;
    f.clock.advance(24h * 365);
    r.acquire("acme").release();
    CHECK(r.try_acquire("acme"));
    CHECK(f.fake.stats().alive_checks == before);
}

TEST_CASE("a single-threaded registry (sync::none) works: acquire, reuse, close") {
    // It did not compile before: the registry read its closed flag through std::atomic's implicit
    // conversion, which sync::none's plain_atomic does not have (found by tests/instantiate).
    fixture f;
    auto r = f.make<keypool::with_sync<keypool::sync::none>>();
    std::uint64_t first_id = 0;
    {
        auto a = r.acquire("acme", 1s);
        first_id = a->id;
        CHECK(a->target == "db_acme");
    }
    {
        auto again = r.acquire("acme", 1s);
        CHECK(again->id == first_id); // the idle connection, reused
        CHECK(r.stats().hits == 1);
    }
    r.close();
    std::error_code ec;
    auto after = r.acquire("acme", 1s, ec);
    CHECK(!after);
    CHECK(ec == errc::closed);
}

TEST_CASE("a bad key gets the resolver's error and never a pool") {
    fixture f;
    auto r = f.make();
    std::error_code ec;
    CHECK_FALSE(r.acquire("", 1s, ec));
    CHECK(ec == errc::invalid_config);
    CHECK_FALSE(r.acquire("missing", 1s, ec));
    CHECK(ec == errc::key_not_found);
    CHECK_THROWS_AS((void)r.acquire("missing"), keypool::error);
    auto s = r.stats();
    CHECK(s.keys_active == 0);
    CHECK(s.errors_for(errc::key_not_found) == 2);
    CHECK(f.fake.stats().connect_attempts == 0);
}

TEST_CASE("a key whose target does not exist (connect says key_not_found) keeps no pool") {
    // Before: the pool stayed, one per made-up tenant id (and under evict::lru they pushed out
    // real tenants' pools); keys_active and pools_active counted them.
    fixture f;
    auto r = f.make(keypool::registry_options{.failure_backoff = 10s});
    auto good = r.acquire("acme", 1s);
    f.fake.fail_next_connects(1, keypool::make_error_code(errc::key_not_found));
    std::error_code ec;
    auto missing = r.acquire("ghost", 1s, ec);
    CHECK(!missing);
    CHECK(ec == errc::key_not_found);
    auto s = r.stats();
    CHECK(s.keys_active == 1);
    CHECK(s.pools_active == 1);
    CHECK(s.evicted_for(evict_reason::invalidated) == 1);
    // Remembered for failure_backoff: no new pool, no connect, the same answer at once.
    const auto connects = f.fake.stats().connect_attempts;
    missing = r.acquire("ghost", 1s, ec);
    CHECK(ec == errc::key_not_found);
    CHECK(f.fake.stats().connect_attempts == connects);
    CHECK(r.stats().pools_created == 2);
    // After the window the key is tried again (the database may have been created meanwhile).
    f.clock.advance(11s);
    auto now_there = r.acquire("ghost", 1s, ec);
    CHECK(now_there);
    CHECK(r.stats().pools_active == 2);
}

TEST_CASE("a failed resolution is remembered for failure_backoff and no longer") {
    fixture f;
    auto r = f.make({.failure_backoff = 1s});
    std::error_code ec;
    CHECK_FALSE(r.acquire("missing", 1s, ec));
    CHECK_FALSE(r.acquire("missing", 1s, ec));
    CHECK(ec == errc::key_not_found);
    CHECK(f.resolver.st->calls == 1);
    f.clock.advance(1s);
    CHECK_FALSE(r.acquire("missing", 1s, ec));
    CHECK(f.resolver.st->calls == 2);
}

TEST_CASE("role switch: keys share one pool and each lease runs as its key's role") {
    kp_test::fixture f;
    using reg = keypool::basic_registry<std::string, keypool::resolve::role_switch<std::string>,
                                        keypool::fake::connector, keypool::with_clock<keypool::manual_clock>>;
    reg r(keypool::resolve::role_switch<std::string>{"app_db"}, f.fake, {.pool = {.max_size = 1}}, f.clock);
    std::uint64_t id = 0;
    {
        auto alice = r.acquire("alice");
        CHECK(alice->session() == "role=alice");
        CHECK(alice->target == "app_db");
        id = alice->id;
    }
    auto bob = r.acquire("bob");
    CHECK(bob->id == id);                 // the same physical connection...
    CHECK(bob->session() == "role=bob");    // ...reset, then switched to bob: nothing of alice's left
    auto s = r.stats();
    CHECK(s.keys_active == 2);
    CHECK(s.pools_active == 1);

    std::error_code ec;
    CHECK_FALSE(r.acquire("", 1s, ec));
    CHECK(ec == errc::invalid_config);
}

TEST_CASE("role switch: the shared pool closes with the last key that uses it, not before") {
    kp_test::fixture f;
    using reg = keypool::basic_registry<std::string, keypool::resolve::role_switch<std::string>,
                                        keypool::fake::connector, keypool::with_clock<keypool::manual_clock>>;
    reg r(keypool::resolve::role_switch<std::string>{"app_db"}, f.fake, {.pool = {.max_size = 2}}, f.clock);
    r.acquire("alice").release();
    r.acquire("bob").release();
    REQUIRE(f.fake.live() == 1);
    CHECK(r.invalidate("alice"));
    CHECK(f.fake.live() == 1); // bob's entry still uses the pool
    CHECK(r.stats().pools_active == 1);
    {
        auto held = r.pool("bob"); // a pool object handed out owns the pool too
        CHECK(r.invalidate("bob"));
        CHECK(f.fake.live() == 1);
        CHECK(r.stats().pools_active == 0);
        auto l = held->acquire(); // still a working pool
        CHECK(l->target == "app_db");
    }
    CHECK(f.fake.live() == 0); // its last owner gone: closed
    // A key asking again gets a new pool (the old one is not found through the target).
    auto l = r.acquire("carol");
    CHECK(l->target == "app_db");
    CHECK(f.fake.stats().connects == 2);
    CHECK(r.stats().pools_active == 1);
}

TEST_CASE("pool objects from pool(key) share the key's pool: dropping one closes nothing") {
    fixture f;
    auto r = f.make({.pool = {.max_size = 2}});
    {
        auto p1 = r.pool("a");
        auto p2 = r.pool("a");
        p1->acquire().release();
        CHECK(p2->stats().idle == 1); // the same pool
    }
    CHECK(f.fake.live() == 1);
    auto l = r.acquire("a");
    CHECK(f.fake.stats().connects == 1); // the connection p1 opened
}

TEST_CASE("a refused session setup fails the acquire and returns the connection, which the reset cleans") {
    kp_test::fixture f;
    using reg = keypool::basic_registry<std::string, keypool::resolve::role_switch<std::string>,
                                        keypool::fake::connector, keypool::with_clock<keypool::manual_clock>>;
    reg r(keypool::resolve::role_switch<std::string>{"app_db"}, f.fake, {}, f.clock);
    f.fake.reject_role("mallory");
    std::error_code ec;
    CHECK_FALSE(r.acquire("mallory", 1s, ec));
    CHECK(ec == errc::authentication_failed);
    CHECK(r.stats().errors_for(errc::authentication_failed) == 1);
    // The refusal says nothing about the connection: it went back, and the next lease reuses it.
    CHECK(f.fake.live() == 1);
    CHECK(r.stats().pools.idle == 1);
    auto l = r.acquire("alice", 1s);
    CHECK(l->session() == "role=alice");
    CHECK(f.fake.stats().connects == 1);
}

TEST_CASE("run_as returns fn's result, propagates its exception, and always returns the lease") {
    fixture f;
    auto r = f.make();
    int got = r.run_as("acme", [](keypool::fake::connection& c) { return c.target == "db_acme" ? 42 : 0; });
    CHECK(got == 42);
    CHECK_THROWS_AS(r.run_as("acme", [](keypool::fake::connection&) -> int { throw std::runtime_error("x"); }),
                    std::runtime_error);
    CHECK(r.stats().pools.in_use == 0);
    CHECK(r.stats().pools.idle == 1);
}

TEST_CASE("lru keeps at most max_pools and retires the least recently used") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::lru>>({.max_pools = 2});
    r.acquire("a").release();
    r.acquire("b").release();
    r.acquire("c").release();
    auto s = r.stats();
    CHECK(s.keys_active == 2);
    CHECK(s.evicted_for(evict_reason::lru) == 1);
    CHECK(f.fake.live() == 2); // a's idle connection closed with its pool
    r.acquire("a").release(); // a is rebuilt
    CHECK(r.stats().pools_created == 4);
}

TEST_CASE("lru passes over a pool with a lease out while another can go") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::lru>>({.max_pools = 2});
    auto held = r.acquire("a");
    r.acquire("b").release();
    r.acquire("c").release();
    CHECK(r.stats().evicted_for(evict_reason::lru) == 1);
    CHECK(r.invalidate("a")); // a survived (busy) ...
    CHECK_FALSE(r.invalidate("b")); // ... and b, idle and older than c, went
}

TEST_CASE("a pool retired with a lease out lets the lease finish, then closes its connection") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::lru>>({.max_pools = 1});
    auto held = r.acquire("a");
    r.acquire("b").release(); // a is busy, but over the cap: retired anyway (last resort)
    CHECK(r.stats().evicted_for(evict_reason::lru) == 1);
    CHECK(f.fake.live() == 2);
    held->use();
    held.release(); // returns into the retired pool: closed
    CHECK(f.fake.live() == 1);
}

TEST_CASE("the summed pool counters never go down when pools leave: retired, invalidated, closed") {
    // They summed the live pools only, so each pool that left took its counts with it and a
    // Prometheus counter such as keypool_acquires_total dropped (read as a counter reset).
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::lru>>({.max_pools = 1});
    keypool::pool_stats last{};
    auto never_down = [&](const char* step) {
        const keypool::pool_stats now = r.stats().pools;
        INFO(step);
        CHECK(now.acquires >= last.acquires);
        CHECK(now.connects_ok >= last.connects_ok);
        CHECK(now.resets >= last.resets);
        for (std::size_t i = 0; i < now.closes.size(); ++i) CHECK(now.closes[i] >= last.closes[i]);
        last = now;
    };
    r.acquire("a").release();
    r.acquire("a").release(); // one connection, two acquires, one reset
    never_down("a used");
    auto held = r.acquire("a");
    r.acquire("b").release(); // over the cap: a retired with its lease out (last resort)
    never_down("a retired, its lease out");
    auto s = r.stats();
    CHECK(s.keys_active == 1);
    CHECK(s.pools_active == 1);
    CHECK(s.pools.acquires == 4);  // a: 3 (its pool still open), b: 1
    CHECK(s.pools_draining == 1);
    CHECK(s.pools.in_use == 1);    // the lease on the retired pool: a server connection still open
    CHECK(s.pools.size == 2);
    held.release(); // returns into the retired pool: closed, and the pool with it
    never_down("a's lease returned, its pool gone");
    s = r.stats();
    CHECK(s.pools_draining == 0);
    CHECK(s.pools.acquires == 4);
    CHECK(s.pools.connects_ok == 2);
    CHECK(s.pools.size == 1);
    CHECK(s.pools.closed_for(keypool::close_reason::closed) == 1); // a's connection, closed after it left
    r.acquire("b").release();
    CHECK(r.invalidate("b"));
    never_down("b invalidated");
    CHECK(r.stats().pools.acquires == 5); // a's three, b's two
    r.close();
    never_down("closed");
    CHECK(r.stats().pools.size == 0);
}

TEST_CASE("idle eviction retires pools unused for pool_idle_timeout, never one with a lease out") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::idle>>({.pool_idle_timeout = 15min});
    r.acquire("a").release();
    auto held = r.acquire("b");
    f.clock.advance(14min);
    CHECK(r.evict_idle() == 0);
    f.clock.advance(1min + 28125ms); // the timeout and the staleness a hit may leave (1/32 of it, below)
    r.maintain();
    auto s = r.stats();
    CHECK(s.evicted_for(evict_reason::idle) == 1);
    CHECK(s.keys_active == 1);
    CHECK(r.try_acquire("b").key() == std::string()); // b's only connection is held
}

namespace {
/// A key whose copy runs a hook once, for the key `hooked_id`: a test's window into the registry
/// while it copies that key.
struct hooked_key {
    int id = 0;
    static inline std::atomic<int> hooked_id{-1};
    static inline std::function<void()> hook;
    hooked_key() = default;
    explicit hooked_key(int i) : id(i) {}
    hooked_key(const hooked_key& o) : id(o.id) {
        if (id == hooked_id.load() && hooked_id.exchange(-1) == id) hook();
    }
    hooked_key& operator=(const hooked_key&) = default;
    bool operator==(const hooked_key& o) const { return id == o.id; }
    friend std::size_t hash_value(const hooked_key& k) { return static_cast<std::size_t>(k.id); }
};
struct hooked_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const hooked_key& k, std::error_code&) const {
        return keypool::route<std::string>{"db_" + std::to_string(k.id), {}};
    }
};
} // namespace

TEST_CASE("idle eviction holds no lock over all pools: a new key's pool is built while it looks at the pools") {
    // Session 20: evict_idle() (and maintain(), stats()) walked every pool under the lock that a
    // pool's creation takes; at 1e6 keys creations waited for it for tens to hundreds of ms.
    // Now a shard's scan holds that shard's lock alone. The hook runs while evict_idle() copies
    // the idle key (key 1): another thread then creates a pool for a key of the other shard.
    keypool::manual_clock clock;
    keypool::fake::connector fake{clock};
    using reg = keypool::basic_registry<hooked_key, hooked_resolver, keypool::fake::connector, keypool::with_clock<keypool::manual_clock>,
                                        keypool::with_eviction<keypool::evict::idle>>;
    reg r(hooked_resolver{}, fake, {.pool_idle_timeout = 15min, .shards = 2}, clock);
    auto shard_of = [](int id) { return (keypool::detail::key_table<hooked_key, int>::hash_of(hooked_key(id)) >> 52) & 1; };
    int other = 2;
    while (shard_of(other) == shard_of(1)) ++other;
    r.acquire(hooked_key(1)).release();
    clock.advance(16min);
    std::mutex m;
    std::condition_variable cv;
    bool built = false, built_in_time = false;
    hooked_key::hook = [&] {
        std::thread([&] {
            r.acquire(hooked_key(other)).release();
            std::lock_guard lk(m);
            built = true;
            cv.notify_all();
        }).detach();
        std::unique_lock lk(m);
        // A failure detector, not synchronisation: before the fix the creation waited for this
        // very call to return, and this wait ran out.
        built_in_time = cv.wait_for(lk, 20s, [&] { return built; });
    };
    hooked_key::hooked_id = 1;
    CHECK(r.evict_idle() == 1);
    CHECK(built_in_time);
    {
        std::unique_lock lk(m);
        cv.wait(lk, [&] { return built; }); // (the thread is done with the locals)
    }
    CHECK(r.stats().keys_active == 1); // the other key's
    hooked_key::hook = nullptr;
}

TEST_CASE("idle eviction retires a pool between pool_idle_timeout and 33/32 of it after its last acquire, never before") {
    // A hit on a key's own pool stamps the pool's slot, not the key's entry (it leaves the key's
    // node line unwritten, docs/design.md); a hit on a shared pool stores the key's last use once
    // the stored one is 1/32 of the timeout old. evict_idle() allows for that staleness: it reads
    // the slots once the stored use is that old.
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::idle>>({.pool_idle_timeout = 32min});
    r.acquire("a").release(); // t = 0: stored
    f.clock.advance(59s);
    r.acquire("a").release(); // t = 59 s: under a minute (1/32) since the stored use: not stored
    f.clock.advance(31min + 59s);
    CHECK(r.evict_idle() == 0); // t = 32:58: idle 31:59, under the timeout
    f.clock.advance(1s);
    CHECK(r.evict_idle() == 0); // idle 32:00: due, and allowed until 33:00 + 59 s
    f.clock.advance(1min);
    CHECK(r.evict_idle() == 1); // t = 33:59 = 0 + 33/32 of the timeout: idle 33:00
    r.acquire("b").release(); // t = 33:59: stored
    f.clock.advance(1min);
    r.acquire("b").release(); // a minute later: stored again
    f.clock.advance(32min + 59s);
    CHECK(r.evict_idle() == 0); // idle 32:59 since the last acquire (stored): within 33/32
    f.clock.advance(1s);
    CHECK(r.evict_idle() == 1); // idle 33:00
}

TEST_CASE("idle eviction counts acquires through a pool(key) object as uses of the key") {
    // Its pool's slots record every checkout, whoever asked: a worker holding the pool keeps
    // the key alive while it uses it. (Before, only the registry's own acquires stamped the key.)
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::idle>>({.pool_idle_timeout = 15min});
    auto p = r.pool("a"); // t = 0
    REQUIRE(p);
    f.clock.advance(14min);
    p->acquire().release(); // t = 14 min
    f.clock.advance(14min);
    CHECK(r.evict_idle() == 0); // t = 28 min: 14 min since the pool's last acquire
    f.clock.advance(1min + 28124ms);
    CHECK(r.evict_idle() == 0); // just under 33/32 of the timeout since that acquire
    f.clock.advance(1ms);
    CHECK(r.evict_idle() == 1);
}

TEST_CASE("idle eviction retires a pool that maintain keeps warm: its connects for min_idle are not uses") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::idle>>(
        {.pool = {.min_idle = 1, .max_lifetime = 4min, .lifetime_jitter = 0s}, .pool_idle_timeout = 15min});
    r.acquire("a").release(); // t = 0
    for (int i = 0; i < 3; ++i) {
        f.clock.advance(4min);
        r.maintain(); // t = 4, 8, 12 min: the connection is past its lifetime and opened again
    }
    CHECK(f.fake.stats().connects == 4);
    f.clock.advance(3min + 28125ms); // t = 15 min 28 s: the timeout and its 1/32 since the acquire
    CHECK(r.evict_idle() == 1);
}

TEST_CASE("idle eviction with the longest pool_idle_timeout never retires a pool (no overflow)") {
    // The timeout plus the staleness a hit may leave (1/32 of it) saturates at duration::max():
    // under UBSan an unsaturated sum is an overflow.
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::idle>>({.pool_idle_timeout = keypool::duration::max()});
    r.acquire("a").release();
    f.clock.advance(std::chrono::hours(24 * 365 * 100));
    CHECK(r.evict_idle() == 0);
    CHECK(r.maintain() > f.clock.now()); // (its next due time, from now + the timeout, saturated)
    CHECK(r.stats().keys_active == 1);
}

TEST_CASE("the longest failure_backoff remembers a failed resolution for good (no overflow)") {
    fixture f;
    auto r = f.make({.failure_backoff = keypool::duration::max()});
    std::error_code ec;
    CHECK_FALSE(r.acquire("missing", 1s, ec));
    CHECK(ec == errc::key_not_found);
    f.clock.advance(std::chrono::hours(24 * 365 * 100));
    CHECK_FALSE(r.acquire("missing", 1s, ec));
    CHECK(ec == errc::key_not_found);
    CHECK(f.resolver.st->calls == 1);
}

TEST_CASE("invalidate closes idle connections now, leased ones on return, and rebuilds next time") {
    fixture f;
    auto r = f.make({.pool = {.max_size = 2}});
    auto leased = r.acquire("acme");
    r.acquire("acme").release(); // a second, idle connection
    CHECK(f.fake.live() == 2);
    CHECK(r.invalidate("acme"));
    CHECK(f.fake.live() == 1);
    leased.release();
    CHECK(f.fake.live() == 0);
    CHECK_FALSE(r.invalidate("acme"));
    r.acquire("acme").release();
    auto s = r.stats();
    CHECK(s.pools_created == 2);
    CHECK(s.evicted_for(evict_reason::invalidated) == 1);
}

TEST_CASE("invalidate keeps the pool open until every lock-free lookup that may have found it is over") {
    // A lookup takes no lock: it runs in a read section (detail/rcu.hpp) and may pop from the pool
    // it found just as another thread invalidates the key. The invalidating thread unlinks the
    // entry at once but drops its pool only after a grace period, so the pool (and its core's
    // memory) stays valid for that lookup. The section here stands for a lookup in progress.
    fixture f;
    auto r = f.make({.pool = {.max_size = 2}});
    r.acquire("acme").release();
    REQUIRE(f.fake.live() == 1);
    auto lookup = std::make_unique<keypool::detail::rcu_section>();
    std::atomic<bool> done{false};
    std::thread invalidator([&] {
        CHECK(r.invalidate("acme"));
        done = true;
    });
    REQUIRE(eventually([&] { return r.stats().keys_active == 0; })); // unlinked: new lookups miss it
    CHECK(f.fake.live() == 1); // ... but the pool it had is still open
    CHECK_FALSE(done.load());
    lookup.reset(); // the lookup ends
    invalidator.join();
    CHECK(done.load());
    CHECK(f.fake.live() == 0); // now it is closed
    CHECK(r.stats().evicted_for(evict_reason::invalidated) == 1);
}

TEST_CASE("single flight: 64 concurrent first requests create exactly one pool") {
    fixture f;
    f.resolver.st->gate = std::make_shared<keypool::fake::gate>();
    auto r = f.make({.pool = {.max_size = 4}});
    std::atomic<int> served{0};
    {
        std::vector<std::jthread> ts;
        for (int i = 0; i < 64; ++i)
            ts.emplace_back([&] {
                auto l = r.acquire("cold", 60s);
                if (l && l->target == "db_cold") ++served;
            });
        REQUIRE(eventually([&] { return r.stats().joins == 63; }));
        f.resolver.st->gate->open();
    }
    CHECK(served == 64);
    CHECK(f.resolver.st->calls == 1);
    auto s = r.stats();
    CHECK(s.pools_created == 1);
    CHECK(f.fake.stats().connect_attempts <= 4);
}

TEST_CASE("a failed creation gives every joiner the real error") {
    fixture f;
    f.resolver.st->gate = std::make_shared<keypool::fake::gate>();
    f.resolver.st->fail = keypool::make_error_code(errc::upstream_unreachable);
    auto r = f.make();
    std::vector<std::error_code> ecs(8);
    {
        std::vector<std::jthread> ts;
        for (auto& ec : ecs) ts.emplace_back([&] { (void)r.acquire("t", 60s, ec); });
        REQUIRE(eventually([&] { return r.stats().joins == 7; }));
        f.resolver.st->gate->open();
    }
    for (auto& ec : ecs) CHECK(ec == errc::upstream_unreachable);
    CHECK(f.resolver.st->calls == 1);
}

TEST_CASE("the leader's cancellation does not fail the joiners") {
    fixture f;
    f.resolver.st->gate = std::make_shared<keypool::fake::gate>();
    auto r = f.make();
    std::stop_source leader_stop;
    std::error_code leader_ec, joiner_ec;
    decltype(r)::lease joined;
    std::jthread leader([&] { (void)r.acquire("t", r.now() + 60s, leader_stop.get_token(), leader_ec); });
    REQUIRE(eventually([&] { return f.resolver.st->calls == 1; }));
    std::jthread joiner([&] { joined = r.acquire("t", r.now() + 60s, {}, joiner_ec); });
    REQUIRE(eventually([&] { return r.stats().joins == 1; }));
    leader_stop.request_stop();
    f.resolver.st->gate->open();
    leader.join();
    joiner.join();
    CHECK(leader_ec == errc::cancelled); // it held no connection and must not wait or connect now
    CHECK(joined);
}

TEST_CASE("a stop token stopped before the call cancels acquire and pool(key) without a lookup") {
    fixture f;
    auto r = f.make();
    r.acquire("warm").release(); // a ready key with an idle connection
    std::stop_source stop;
    stop.request_stop();
    std::error_code ec;
    CHECK_FALSE(r.acquire("warm", r.now() + 60s, stop.get_token(), ec));
    CHECK(ec == errc::cancelled);
    CHECK_FALSE(r.acquire("cold", r.now() + 60s, stop.get_token(), ec)); // creates nothing
    CHECK(ec == errc::cancelled);
    CHECK_FALSE(r.pool("cold", r.now() + 60s, stop.get_token(), ec));
    CHECK(ec == errc::cancelled);
    CHECK_THROWS_AS((void)r.acquire("warm", r.now() + 60s, stop.get_token()), keypool::error);
    const auto s = r.stats();
    CHECK(s.errors_for(errc::cancelled) == 4);
    CHECK(s.pools_created == 1);
    CHECK(f.resolver.st->calls == 1);
    CHECK(s.pools.idle == 1);
    CHECK(s.pools.acquires == 1);
}

TEST_CASE("a leader cancelled inside a stoppable resolver hands the creation to a joiner") {
    // Resolver with the stop-token overload: waits on the gate until it opens or the caller stops.
    struct stoppable {
        using target_type = std::string;
        using setup_type = keypool::no_setup;
        std::shared_ptr<keypool::fake::gate> gate;
        const keypool::manual_clock* clock;
        std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
        std::optional<keypool::route<std::string>> resolve(const std::string& k, std::error_code& ec) const {
            return resolve(k, {}, ec);
        }
        std::optional<keypool::route<std::string>> resolve(const std::string& k, std::stop_token st,
                                                           std::error_code& ec) const {
            ++*calls;
            if (!gate->wait(*clock, keypool::time_point::max(), st)) {
                ec = keypool::make_error_code(errc::cancelled);
                return std::nullopt;
            }
            return keypool::route<std::string>{"db_" + k, {}};
        }
    };
    kp_test::fixture f;
    auto gate = std::make_shared<keypool::fake::gate>();
    stoppable res{gate, &f.clock};
    keypool::basic_registry<std::string, stoppable, keypool::fake::connector, keypool::with_clock<keypool::manual_clock>>
        r(res, f.fake, {}, f.clock);
    std::stop_source leader_stop;
    std::error_code leader_ec, joiner_ec;
    decltype(r)::lease joined;
    std::jthread leader([&] { (void)r.acquire("t", r.now() + 60s, leader_stop.get_token(), leader_ec); });
    REQUIRE(eventually([&] { return *res.calls == 1 && gate->waiting() == 1; }));
    std::jthread joiner([&] { joined = r.acquire("t", r.now() + 60s, {}, joiner_ec); });
    REQUIRE(eventually([&] { return r.stats().joins == 1; }));
    leader_stop.request_stop(); // the leader leaves at once; the joiner resolves again
    leader.join();
    CHECK(leader_ec == errc::cancelled);
    REQUIRE(eventually([&] { return *res.calls == 2 && gate->waiting() == 1; }));
    gate->open();
    joiner.join();
    CHECK(joined);
    CHECK(r.stats().pools_created == 1);
}

TEST_CASE("a joiner waits with its own deadline") {
    fixture f;
    f.resolver.st->gate = std::make_shared<keypool::fake::gate>();
    auto r = f.make();
    std::jthread leader([&] { (void)r.acquire("t", 60s); });
    REQUIRE(eventually([&] { return f.resolver.st->calls == 1; }));
    std::error_code ec;
    std::jthread joiner([&] { (void)r.acquire("t", 5s, ec); });
    REQUIRE(eventually([&] { return r.stats().joins == 1; }));
    f.clock.advance(5s);
    joiner.join();
    CHECK(ec == errc::timeout);
    f.resolver.st->gate->open();
}

TEST_CASE("flight::none lets concurrent first requests each build a pool and keeps one") {
    fixture f;
    f.resolver.st->gate = std::make_shared<keypool::fake::gate>();
    auto r = f.make<keypool::with_flight<keypool::flight::none>>();
    {
        std::vector<std::jthread> ts;
        for (int i = 0; i < 4; ++i) ts.emplace_back([&] { (void)r.acquire("cold", 60s); });
        REQUIRE(eventually([&] { return f.resolver.st->calls == 4; }));
        f.resolver.st->gate->open();
    }
    auto s = r.stats();
    CHECK(s.pools_created == 4);
    CHECK(s.keys_active == 1);
}

TEST_CASE("close fails later acquires and closes idle connections") {
    fixture f;
    auto r = f.make();
    auto held = r.acquire("a");
    r.acquire("b").release();
    r.close();
    std::error_code ec;
    CHECK_FALSE(r.acquire("a", 1s, ec));
    CHECK(ec == errc::closed);
    CHECK(f.fake.live() == 1);
    held.release();
    CHECK(f.fake.live() == 0);
}

TEST_CASE("close(deadline) closes every pool the registry made and waits for their leases") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::lru>>({.max_pools = 1});
    auto pool_a = r.pool("a"); // a pool object: a's pool stays open after it leaves the registry
    auto a = pool_a->acquire();
    auto b = r.acquire("b"); // over the cap: a's pool leaves, still open, a lease out
    CHECK(r.stats().evicted_for(evict_reason::lru) == 1);
    CHECK(f.fake.live() == 2);
    CHECK_FALSE(r.close(r.now())); // nothing returned by the deadline
    std::error_code ec;
    CHECK_FALSE(pool_a->acquire(1s, ec)); // the pool that had left is closed too
    CHECK(ec == errc::closed);
    CHECK(f.fake.live() == 2); // leased connections close only when they come back

    bool drained = false;
    std::thread closer([&] { drained = r.close(r.now() + 1h); });
    a.release();
    b.release();
    closer.join(); // (returns at once if both came back before it looked)
    CHECK(drained);
    CHECK(f.fake.live() == 0);
    CHECK(r.close(r.now())); // nothing left: at once
}

TEST_CASE("close(deadline) lists the leases still out, from pools in the registry and from pools that left it") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::lru>>({.pool = {.leak_threshold = 1h}, .max_pools = 1});
    const int line = __LINE__ + 1;
    auto a = r.acquire("a");
    f.clock.advance(2s);
    auto b = r.acquire("b"); // over the cap: a's pool leaves with its lease out
    CHECK(r.stats().evicted_for(evict_reason::lru) == 1);
    CHECK(r.leases_out().size() == 2);
    f.clock.advance(3s);
    std::vector<keypool::lease_report> still_out;
    CHECK_FALSE(r.close(r.now(), still_out));
    REQUIRE(still_out.size() == 2);
    std::sort(still_out.begin(), still_out.end(), [](auto& x, auto& y) { return x.age > y.age; });
    CHECK(still_out[0].age == 5s);
    CHECK(still_out[0].site.line() == static_cast<unsigned>(line));
    CHECK(still_out[1].age == 3s);
    a.release();
    b.release();
    CHECK(r.close(r.now(), still_out));
    CHECK(still_out.empty());
}

TEST_CASE("every acquire form records its site for leak reports, on the fast path as on the slow") {
    fixture f;
    auto r = f.make({.pool = {.max_size = 1, .leak_threshold = 1h}});
    const auto site_of_lease_out = [&] {
        const auto out = r.leases_out();
        REQUIRE(out.size() == 1);
        return out[0].site.line();
    };
    unsigned line = __LINE__ + 1;
    auto first = r.acquire("a"); // the slow path: it creates the pool
    CHECK(site_of_lease_out() == line);
    first.release(); // from here on "a" has an idle connection: the fast path
    std::error_code ec;
    {
        line = __LINE__ + 1;
        auto l = r.acquire("a");
        CHECK(site_of_lease_out() == line);
    }
    {
        line = __LINE__ + 1;
        auto l = r.acquire("a", 1s);
        CHECK(site_of_lease_out() == line);
    }
    {
        line = __LINE__ + 1;
        auto l = r.acquire("a", 1s, ec);
        REQUIRE(l);
        CHECK(site_of_lease_out() == line);
    }
    {
        line = __LINE__ + 1;
        auto l = r.acquire("a", r.now() + 1s);
        CHECK(site_of_lease_out() == line);
    }
    {
        line = __LINE__ + 1;
        auto l = r.acquire("a", r.now() + 1s, {}, ec);
        REQUIRE(l);
        CHECK(site_of_lease_out() == line);
    }
    {
        line = __LINE__ + 1;
        auto l = r.try_acquire("a");
        REQUIRE(l);
        CHECK(site_of_lease_out() == line);
    }
}

TEST_CASE("detect_self_deadlock sees a lease taken on the registry's fast path") {
    fixture f;
    auto r = f.make({.pool = {.max_size = 1, .detect_self_deadlock = true}});
    r.acquire("a").release(); // the pool and one idle connection
    auto l = r.acquire("a");  // the fast path
    REQUIRE(r.stats().hits == 1);
    std::error_code ec;
    CHECK_FALSE(r.acquire("a", r.now() + 1h, {}, ec));
    CHECK(ec == errc::would_deadlock);
    std::error_code other; // another thread holds nothing: it waits (here: until its deadline)
    std::jthread t([&] { (void)r.acquire("a", r.now(), {}, other); });
    t.join();
    CHECK(other == errc::timeout);
}

TEST_CASE("close wakes callers waiting for a creation in flight with closed") {
    fixture f;
    f.resolver.st->gate = std::make_shared<keypool::fake::gate>();
    auto r = f.make();
    std::error_code leader_ec, joiner_ec;
    std::jthread leader([&] { (void)r.acquire("t", r.now() + 60s, {}, leader_ec); });
    REQUIRE(eventually([&] { return f.resolver.st->calls == 1; }));
    std::jthread joiner([&] { (void)r.acquire("t", r.now() + 60s, {}, joiner_ec); });
    REQUIRE(eventually([&] { return r.stats().joins == 1; }));
    r.close();
    joiner.join();
    CHECK(joiner_ec == errc::closed);
    f.resolver.st->gate->open();
    leader.join();
    CHECK(leader_ec == errc::closed); // the leader finishes its entry, but gets no pool
    CHECK(f.fake.live() == 0);
}

TEST_CASE("leases may outlive the registry, with or without a connection budget") {
    fixture f;
    {
        auto r = std::make_unique<test_registry<keypool::with_eviction<keypool::evict::all_of<
            keypool::evict::lru, keypool::evict::size>>>>(f.resolver, f.fake,
                                                          keypool::registry_options{.max_connections = 4}, f.clock);
        auto a = r->acquire("a");
        auto pool_b = r->pool("b");
        auto b = pool_b->acquire();
        r.reset(); // registry gone: its pools are closed, these leases stay valid
        CHECK(a->target == "db_a");
        CHECK(f.fake.live() == 2);
        a.release();
        b.release();
        CHECK(f.fake.live() == 0);
    }
}

TEST_CASE("huge_pages: pools come from the registry's arena, which reuses evicted pools' memory and outlives the registry while leases are out") {
    if (!keypool::detail::huge_arena::supported()) return;
    fixture f;
    constexpr std::size_t chunk = keypool::detail::huge_arena::chunk_bytes;
    {
        auto r = f.make({.max_pools = 1000});
        r.acquire("a").release();
        CHECK(r.stats().huge_page_bytes == 0); // by default only for many pools
        auto big = f.make({.max_pools = 1'000'000});
        CHECK(big.stats().huge_page_bytes > 0); // 1e6 pools of ~0.5 KiB: on by default
        auto off = f.make({.max_pools = 1'000'000, .huge_pages = false});
        CHECK(off.stats().huge_page_bytes == 0);
    }
    // Pools of 2,000 slots (over 100 KiB each), 2 at a time under lru: 60 pools built one after
    // another take one chunk, since each new pool gets an evicted one's block.
    auto r = std::make_unique<test_registry<keypool::with_eviction<keypool::evict::lru>>>(
        f.resolver, f.fake, keypool::registry_options{.pool = {.max_size = 2000}, .max_pools = 2, .huge_pages = true}, f.clock);
    CHECK(r->stats().huge_page_bytes == chunk); // the shards' bucket arrays
    for (int i = 0; i < 60; ++i) r->acquire(std::to_string(i)).release();
    CHECK(r->stats().evicted_for(evict_reason::lru) == 58);
    CHECK(r->stats().huge_page_bytes <= 2 * chunk); // not 60 blocks' worth (3 chunks and more)
    auto lease = r->acquire("last");
    r.reset(); // the arena stays with the last pool: the lease's
    CHECK(lease->target == "db_last");
    lease.release();
    CHECK(f.fake.live() == 0);
}

TEST_CASE("huge_pages by default: on from 12 MiB of pools, a second-level TLB's reach with 4 KiB pages") {
    using keypool::detail::wants_huge_pages;
    if (!keypool::detail::huge_arena::supported()) {
        CHECK_FALSE(wants_huge_pages({.huge_pages = true}, 1'000'000, 552)); // nothing to map them with
        return;
    }
    constexpr std::size_t block = 576; // a registry's pool of two fake connections: record 64 + body 512
    constexpr std::size_t at = (std::size_t{12} << 20) / block; // 21,845 pools
    CHECK(wants_huge_pages({}, at, block));
    CHECK_FALSE(wants_huge_pages({}, at - 1, block));
    CHECK(wants_huge_pages({}, 30'000, block)); // 16.5 MiB: off until session 30 (from 32 MiB)
    CHECK_FALSE(wants_huge_pages({.huge_pages = false}, 1'000'000, block));
    CHECK(wants_huge_pages({.huge_pages = true}, 1, block));
}

TEST_CASE("the registry's maintain keeps each pool's min_idle warm") {
    fixture f;
    auto r = f.make({.pool = {.max_size = 4, .min_idle = 2}});
    r.acquire("a").release();
    r.acquire("b").release();
    r.maintain();
    auto s = r.stats();
    CHECK(s.pools.idle == 4);
    CHECK(f.fake.live() == 4);
}

TEST_CASE("maintain() leaves a quiet pool until it next needs a pass, never past what is due") {
    fixture f;
    // Shortest timer 32 s: a quiet pool goes at most 1 s without a pass.
    auto r = f.make({.pool = {.max_size = 2, .idle_timeout = 32s, .max_lifetime = std::nullopt}});
    const auto t0 = r.now();
    for (const char* k : {"a", "b", "c"}) r.acquire(k).release();
    CHECK(r.maintain() == t0 + 32s); // (passed: the idle timeout is what is due)
    CHECK(r.stats().pool_passes == 3);
    const auto due = r.maintain();
    CHECK(r.stats().pool_passes == 3);
    CHECK(due > t0);
    CHECK(due <= t0 + 1s); // (left: the janitor comes back for them)
    f.clock.advance(500ms);
    (void)r.maintain();
    CHECK(r.stats().pool_passes == 3); // nothing due: left alone
    f.clock.set(t0 + 1s);
    (void)r.maintain();
    CHECK(r.stats().pool_passes == 6);
    // A lease taken between passes, held, and returned: the idle timeout counts from about its
    // return (the last pass that saw it out), as when every call passes every pool.
    f.clock.set(t0 + 1500ms);
    auto held = r.acquire("a");
    for (int s = 2; s <= 20; ++s) {
        f.clock.set(t0 + std::chrono::seconds(s));
        (void)r.maintain();
    }
    held.release();
    for (int s = 21; s <= 31; ++s) {
        f.clock.set(t0 + std::chrono::seconds(s));
        (void)r.maintain();
    }
    CHECK(f.fake.live() == 3);
    f.clock.set(t0 + 32s); // b's and c's connections: idle since t0, closed on time
    (void)r.maintain();
    CHECK(f.fake.live() == 1);
    for (int s = 33; s <= 50; ++s) {
        f.clock.set(t0 + std::chrono::seconds(s));
        (void)r.maintain();
    }
    CHECK(f.fake.live() == 1); // a's: returned at 20 s, seen out at 20 s
    f.clock.set(t0 + 52s);
    (void)r.maintain();
    CHECK(f.fake.live() == 0);
}

TEST_CASE("maintain() passes a pool with nothing timed at least every 2^50 ns (13 days), and every pool after a day without a walk") {
    fixture f;
    auto r = f.make({.pool = {.max_size = 2, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt},
                     .pool_idle_timeout = std::nullopt});
    r.acquire("a").release();
    (void)r.maintain();
    CHECK(r.stats().pool_passes == 1);
    f.clock.advance(23h);
    (void)r.maintain();
    CHECK(r.stats().pool_passes == 1);
    f.clock.advance(25h);
    (void)r.maintain(); // its note may have wrapped around: not trusted
    CHECK(r.stats().pool_passes == 2);
    const auto t1 = r.now();
    for (int h = 1; h <= 14 * 24 && r.stats().pool_passes == 2; ++h) { // (2^50 ns: 13.03 days)
        f.clock.advance(1h);
        (void)r.maintain();
    }
    CHECK(r.stats().pool_passes == 3);
    CHECK(r.now() - t1 > 13 * 24h); // (not before its note said)
}

TEST_CASE("maintain() passes every pool every time with min_idle, which an acquire may take it below") {
    fixture f;
    auto r = f.make({.pool = {.max_size = 4, .min_idle = 1}});
    r.acquire("a").release();
    (void)r.maintain();
    (void)r.maintain();
    CHECK(r.stats().pool_passes == 2);
    auto l = r.acquire("a"); // the idle one: none left
    (void)r.maintain();
    CHECK(r.stats().pool_passes == 3);
    CHECK(f.fake.live() == 2); // topped up at once
}

TEST_CASE("pool(key) gives the pool itself, alive while held") {
    fixture f;
    auto r = f.make();
    auto p = r.pool("acme");
    REQUIRE(p);
    CHECK(p->target() == "db_acme");
    r.invalidate("acme");
    auto l = p->acquire(); // still usable by the worker that holds it
    CHECK(l);
}

TEST_CASE("pool(key) has both forms: a bad key throws, or sets the error code and gives nullptr") {
    fixture f;
    auto r = f.make();
    std::error_code ec;
    CHECK_FALSE(r.pool("missing", 1s, ec));
    CHECK(ec == errc::key_not_found);
    CHECK_FALSE(r.pool("", r.now() + 1s, {}, ec));
    CHECK(ec == errc::invalid_config);
    CHECK_THROWS_AS((void)r.pool("missing"), keypool::error);
    auto p = r.pool("acme", 1s, ec);
    REQUIRE(p);
    CHECK(!ec);
    CHECK(p->target() == "db_acme");
    CHECK(r.pool("acme", keypool::duration::max()) != nullptr); // no overflow of now + timeout
    r.close();
    CHECK_FALSE(r.pool("acme", 1s, ec));
    CHECK(ec == errc::closed);
}

TEST_CASE("registry options are validated with the field named") {
    fixture f;
    CHECK_THROWS_WITH_AS(f.make({.max_pools = 0}), doctest::Contains("registry_options.max_pools"), keypool::error);
    CHECK_THROWS_WITH_AS(f.make({.pool = {.max_size = 0}}), doctest::Contains("registry_options.pool.max_size"),
                         keypool::error);
}

} // TEST_SUITE

TEST_SUITE("registry_size") {

TEST_CASE("evict::size caps connections across keys and trims another key's idle connection") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::size>>({.pool = {.max_size = 4}, .max_connections = 2});
    r.acquire("a").release(); // a holds one idle connection (and one token)
    auto b = r.acquire("b");  // second token
    CHECK(f.fake.live() == 2);
    auto c = r.acquire("c", 0s); // no token free: a's idle connection is closed to make one
    CHECK(c);
    CHECK(f.fake.live() == 2);
    auto s = r.stats();
    CHECK(s.evicted_for(evict_reason::size) == 1);
    CHECK(s.pools.closed_for(keypool::close_reason::trimmed) == 1);
}

TEST_CASE("evict::size: with nothing idle a caller waits, and a return anywhere frees a token for it") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::size>>({.pool = {.max_size = 4}, .max_connections = 2});
    auto a = r.acquire("a");
    auto b = r.acquire("b");
    std::error_code ec;
    CHECK_FALSE(r.acquire("c", 0s, ec)); // budget spent, nothing idle, no time to wait
    CHECK(ec == errc::timeout);
    decltype(r)::lease got;
    std::jthread t([&] { got = r.acquire("c", 60s); });
    REQUIRE(eventually([&] { return r.stats().pools.waiters == 1; }));
    a.release(); // nobody waits in a's pool: closed, its token goes to c
    t.join();
    REQUIRE(got);
    CHECK(got->target == "db_c");
    CHECK(f.fake.live() == 2);
}

TEST_CASE("evict::size serves waiting keys in arrival order (no key starves)") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::size>>({.pool = {.max_size = 4}, .max_connections = 1});
    auto held = r.acquire("x");
    std::vector<std::string> order;
    std::mutex m;
    std::vector<std::jthread> ts;
    for (std::string k : {"k1", "k2", "k3"}) {
        ts.emplace_back([&, k] {
            auto l = r.acquire(k, 60s);
            std::lock_guard lk(m);
            order.push_back(l.key());
        });
        REQUIRE(eventually([&] { return r.stats().pools.waiters == ts.size(); }));
    }
    held.release();
    for (auto& t : ts) t.join();
    CHECK(order == std::vector<std::string>{"k1", "k2", "k3"});
    CHECK(f.fake.live() <= 1);
}

TEST_CASE("evict::size: a connection that turns idle while callers wait is closed for the oldest of them") {
    fixture f;
    auto r = f.make<keypool::with_eviction<keypool::evict::size>>(
        {.pool = {.max_size = 2, .min_idle = 1}, .max_connections = 2});
    auto a = r.acquire("a"); // one token
    auto g = std::make_shared<keypool::fake::gate>();
    f.fake.push(keypool::fake::outcome::wait_for(g));
    // maintain() tops a's pool up to min_idle: the second token, its connect held at the gate.
    std::jthread m([&] { (void)r.maintain(); });
    REQUIRE(eventually([&] { return g->waiting() == 1; }));
    // A caller for c finds the budget full and nothing idle: it queues, and its walk finds nothing.
    std::atomic<bool> served{false};
    decltype(r)::lease got;
    std::jthread c([&] {
        got = r.acquire("c", 60s);
        served = true;
    });
    REQUIRE(eventually([&] {
        const auto s = r.stats();
        return s.pools.waiters == 1 && s.trim_scans >= 4; // (a and c, before it queued and once queued)
    }));
    // The connect ends with nobody waiting in a's pool: the connection turns idle under a's lock,
    // not through a release. It is closed and its token goes to c (before: it stayed idle, and c
    // waited until its deadline while the budget had a connection to spare).
    g->open();
    m.join();
    CHECK(eventually([&] { return served.load(); }));
    a.release(); // (ends the wait in any case)
    c.join();
    CHECK(got);
    CHECK(r.stats().evicted_for(evict_reason::size) >= 1);
}

TEST_CASE("evict::size: callers queued behind a full budget look over the pools once, not once each") {
    fixture f;
    constexpr std::size_t pools = 100, callers = 8;
    auto r = f.make<keypool::with_eviction<keypool::evict::size>>(
        {.pool = {.max_size = 1}, .max_pools = 1000, .max_connections = pools});
    std::vector<decltype(r)::lease> held;
    for (std::size_t i = 0; i < pools; ++i) held.push_back(r.acquire("busy" + std::to_string(i)));
    REQUIRE(f.fake.live() == pools); // the budget is spent and nothing is idle
    const std::uint64_t before = r.stats().trim_scans;
    std::vector<std::string> order;
    std::vector<decltype(r)::lease> got; // kept: a return would feed the next caller itself
    std::mutex m;
    std::vector<std::jthread> ts;
    for (std::size_t i = 0; i < callers; ++i) {
        ts.emplace_back([&, i] {
            auto l = r.acquire("w" + std::to_string(i), 60s);
            std::lock_guard lk(m);
            order.push_back(l.key());
            got.push_back(std::move(l));
        });
        // The first caller looks at every pool (its own too) twice: before it queues, and once
        // queued; a walk's count appears after its mark.
        REQUIRE(eventually([&] {
            const auto s = r.stats();
            return s.pools.waiters == ts.size() && s.trim_scans - before >= 2 * (pools + 1);
        }));
    }
    // The others, queued behind a walk that found nothing, looked at none (before: every one
    // looked at every pool twice).
    const std::uint64_t scans = r.stats().trim_scans - before;
    CHECK(scans <= 2 * (pools + 1) + callers);
    // Each return is closed and its token goes to the oldest caller, in arrival order.
    for (std::size_t i = 0; i < callers; ++i) {
        held[i].release();
        REQUIRE(eventually([&] {
            std::lock_guard lk(m);
            return order.size() == i + 1;
        }));
    }
    for (auto& t : ts) t.join();
    CHECK(order == std::vector<std::string>{"w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"});
    CHECK(f.fake.live() == pools);
    CHECK(r.stats().trim_scans - before <= 2 * (pools + 1) + callers);
    // Nobody queued any more: a connection idle again is found by the next caller's walk.
    held[callers].release(); // busy8 idles
    auto late = r.acquire("late", 0s);
    CHECK(late);
    CHECK(r.stats().evicted_for(evict_reason::size) == callers + 1);
}

TEST_CASE("background reset: a registry's pools signal a returned connection, and maintenance resets it") {
    fixture f;
    auto r = f.make<keypool::with_reset<keypool::reset_at::background>>({.pool = {.max_size = 2}});
    int signals = 0;
    r.set_reset_signal([&] { ++signals; });
    {
        auto a = r.acquire("acme");
        auto b = r.acquire("globex"); // another pool: the one signal serves every pool
        a->use("SET search_path = acme");
        b->use();
    }
    CHECK(signals == 2);
    CHECK(f.fake.stats().resets == 0);
    r.maintain();
    CHECK(f.fake.stats().resets == 2);
    auto a = r.acquire("acme"); // clean already: no reset on the borrower's path
    CHECK_FALSE(a->dirty());
    CHECK(f.fake.stats().resets == 2);
    r.set_reset_signal({});
    a.release();
    CHECK(signals == 2);
}

TEST_CASE("background reset with a janitor on a registry: the return wakes it and the reset runs on its thread") {
    // Before the registry had set_reset_signal, the janitor could not be told: the reset waited
    // for its next call (here an hour away) or for a borrower.
    keypool::fake::connector fake;
    test_resolver resolver;
    keypool::basic_registry<std::string, test_resolver, keypool::fake::connector,
                            keypool::with_reset<keypool::reset_at::background>>
        r(resolver, fake, {.pool = {.max_size = 2, .min_idle = 1}});
    auto used = r.acquire("acme");
    used->use();
    keypool::janitor j(r, std::chrono::hours(1));
    // Its first pass (it runs one at once) tops the pool up to min_idle: after that, only a
    // signal wakes it within the hour.
    CHECK(eventually([&] { return r.stats().pools.idle == 1; }));
    used.release();
    CHECK(eventually([&] { return fake.stats().resets == 1; }));
    auto l = r.acquire("acme");
    CHECK_FALSE(l->dirty());
    CHECK(fake.stats().resets == 1);
}

} // TEST_SUITE
