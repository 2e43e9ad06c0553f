// SPDX-License-Identifier: BSL-1.0
// basic_pool: bounds, FIFO hand-off, MRU reuse, timeouts, cancellation, reset, validation,
// lifetime, idle eviction, connect failures and backoff, close. Deterministic: manual clock,
// fake connector, threads synchronised on observable pool state.
#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <time.h>

#include "../support/helpers.hpp"

using namespace std::chrono_literals;
using keypool::close_reason;
using keypool::errc;
using keypool::pool_options;
using kp_test::eventually;
using kp_test::fixture;

namespace {

/// Runs one acquire on its own thread and keeps the outcome.
template <class Pool>
struct async_acquire {
    using lease = typename Pool::lease;
    async_acquire(Pool& p, keypool::duration timeout, std::stop_token st = {}) : pool(p) {
        thread = std::jthread([this, timeout, st] {
            auto l = pool.acquire(pool.now() + timeout, st, ec);
            if (l) id = l->id;
            result = std::move(l);
            done = true;
        });
    }
    Pool& pool;
    lease result;
    std::error_code ec;
    std::uint64_t id = 0;
    std::atomic<bool> done{false};
    std::jthread thread;
    void join() { thread.join(); }
};

} // namespace

TEST_SUITE("pool") {

TEST_CASE("acquire opens a connection and its return makes it idle") {
    fixture f;
    auto p = f.make();
    {
        auto l = p.acquire();
        REQUIRE(l);
        CHECK(l->target == "db");
        CHECK(p.stats().in_use == 1);
        CHECK(p.stats().idle == 0);
    }
    auto s = p.stats();
    CHECK(s.size == 1);
    CHECK(s.idle == 1);
    CHECK(s.in_use == 0);
    CHECK(s.acquires == 1);
    CHECK(s.connects_ok == 1);
    CHECK(f.fake.live() == 1);
}

TEST_CASE("a slot's 32-bit use count carries into the pool's 64-bit total when it wraps") {
    std::atomic<std::uint32_t> count{0xFFFFFFFEU};
    std::uint64_t carried = 0;
    const auto carry = [&] { carried += std::uint64_t{1} << 32; };
    keypool::detail::tally(count, carry);
    CHECK(count == 0xFFFFFFFFU);
    CHECK(carried == 0);
    keypool::detail::tally(count, carry); // wraps: the total (count + carried) goes on to 2^32
    CHECK(count == 0);
    CHECK(carried == std::uint64_t{1} << 32);
    keypool::detail::tally(count, carry);
    CHECK(carried + count == (std::uint64_t{1} << 32) + 1);
}

TEST_CASE("owner_increment adds one to 32- and 64-bit counts and says when they wrap") {
    std::atomic<std::uint64_t> wide{~std::uint64_t{0} - 1};
    CHECK_FALSE(keypool::detail::owner_increment(wide));
    CHECK(wide.load() == ~std::uint64_t{0});
    CHECK(keypool::detail::owner_increment<true>(wide)); // the release form too
    CHECK(wide.load() == 0);
    std::atomic<std::uint32_t> narrow{41};
    CHECK_FALSE(keypool::detail::owner_increment<true>(narrow));
    CHECK(narrow.load() == 42);
    keypool::sync::none::atomic<std::uint32_t> plain{0xFFFFFFFFU}; // sync::none's counts
    CHECK(keypool::detail::owner_increment(plain));
    CHECK(plain.load(std::memory_order_relaxed) == 0);
}

TEST_CASE("a slot's header is 32 bytes, then the connector's hot part, and the connection lies apart") {
    // What a checkout, a reset and a release touch of a slot (docs/design.md, "block layout"):
    // its header, which holds the fake's 8-byte hot part (connector_has_hot); the connection and
    // maintain()'s notes live in the slot's body, in another array of the block.
    using core = std::remove_pointer_t<decltype(keypool::detail::pool_access::core(
        std::declval<keypool::pool<keypool::fake::connector>&>()))>;
    typename core::slot s;
    const auto offset = reinterpret_cast<const unsigned char*>(&s.hot) - reinterpret_cast<const unsigned char*>(&s);
    CHECK(offset == 32);
    CHECK(sizeof(typename core::slot) == 40);
    // Without a hot part (as pq's connector), the header alone.
    struct handle_connector {
        using connection_type = int;
        using target_type = int;
        std::optional<int> connect(const int&, keypool::time_point, std::stop_token, std::error_code&);
        bool reset(int&);
        bool alive(int&);
        void close(int&);
    };
    static_assert(keypool::connector<handle_connector> && !keypool::connector_has_hot<handle_connector>);
    using plain_core = keypool::detail::pool_core<handle_connector, keypool::steady_clock, keypool::sync::mutex,
                                                  keypool::null_observer, keypool::reset_at::checkout>;
    CHECK(sizeof(typename plain_core::slot) == 32);
}

TEST_CASE("the idle-stack head, slot 0's header and what a fake reset reads share one cache line") {
    // A checkout and a release of slot 0 (the one an idle pool hands out) write that line alone:
    // the core's first fields, which they read, lie on another (docs/design.md, "block layout";
    // a registry's pool has its key's node on that line too: registry_test). The fake's reset
    // reads the 8-byte hot part the slot's header keeps when nobody used the session.
    fixture f;
    auto p = f.make({.max_size = 2});
    p.acquire().release();
    const auto* core = keypool::detail::pool_access::core(p);
    const auto line = [](const void* a) { return reinterpret_cast<std::uintptr_t>(a) / 64; };
    const auto* s0 = core->slot_of(0);
    REQUIRE(core->body(s0).conn);
    const auto* hot = reinterpret_cast<const unsigned char*>(&s0->hot);
    CHECK(line(&core->head()) == line(s0));
    CHECK(line(hot + sizeof(s0->hot) - 1) == line(s0));
    CHECK(line(&core->connection_of(s0)) != line(s0));
    CHECK(line(core) != line(s0));
}

TEST_CASE("a pooled fake connection's reset, kill and session go through the slot's hot part") {
    // connector::bind moved the connection's hot part into its slot's header: kill() and a
    // session's use must reach it there, or a reset would pass a dead or dirty connection.
    fixture f;
    auto p = f.make({.max_size = 1, .validate_after_idle = 1h});
    std::uint64_t id = 0;
    {
        auto l = p.acquire(1s);
        id = l->id;
        l->use("role=acme");
    }
    {
        auto l = p.acquire(1s); // reset at checkout: the session was used
        CHECK(l->id == id);
        CHECK(l->session().empty());
        CHECK_FALSE(l->dirty());
    }
    f.fake.kill(id);
    auto l = p.acquire(1s); // its reset fails: a new connection
    REQUIRE(l);
    CHECK(l->id != id);
    CHECK(p.stats().closed_for(keypool::close_reason::reset_failed) == 1);
    CHECK(f.fake.stats().resets == 2);
    CHECK(f.fake.stats().reset_failures == 1);
}

TEST_CASE("idle connections are reused most recently used first") {
    fixture f;
    auto p = f.make({.max_size = 4});
    auto a = p.acquire(), b = p.acquire(), c = p.acquire();
    const auto ia = a->id, ib = b->id, ic = c->id;
    a.release();
    b.release();
    c.release();
    CHECK(p.acquire()->id == ic);
    auto x = p.acquire();
    auto y = p.acquire();
    CHECK(x->id == ic);
    CHECK(y->id == ib);
    CHECK(p.acquire()->id == ia);
    CHECK(f.fake.stats().connects == 3);
}

TEST_CASE("try_acquire never blocks and never connects") {
    fixture f;
    auto p = f.make({.max_size = 1});
    CHECK_FALSE(p.try_acquire());
    CHECK(f.fake.stats().connect_attempts == 0);
    p.acquire().release();
    auto l = p.try_acquire();
    REQUIRE(l);
    CHECK_FALSE(p.try_acquire()); // the only connection is leased
}

TEST_CASE("max_size bounds open connections and a full pool times out") {
    fixture f;
    auto p = f.make({.max_size = 2});
    auto a = p.acquire(), b = p.acquire();
    std::error_code ec;
    auto c = p.acquire(0s, ec);
    CHECK_FALSE(c);
    CHECK(ec == errc::timeout);
    CHECK(p.stats().timeouts == 1);
    CHECK(p.stats().size == 2);
    CHECK_THROWS_AS((void)p.acquire(0s), keypool::error);
}

TEST_CASE("a waiter times out when the clock passes its deadline") {
    fixture f;
    auto p = f.make({.max_size = 1});
    auto held = p.acquire();
    async_acquire w(p, 10s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    f.clock.advance(9s);
    CHECK_FALSE(w.done);
    f.clock.advance(1s);
    w.join();
    CHECK(w.ec == errc::timeout);
    auto s = p.stats();
    CHECK(s.waiters == 0);
    CHECK(s.waits == 1);
    CHECK(s.timeouts == 1);
    CHECK(s.wait_time == 10s);
}

TEST_CASE("waiters are served strictly in arrival order by direct hand-off") {
    fixture f;
    auto p = f.make({.max_size = 1});
    auto held = p.acquire();
    const auto id = held->id;
    std::vector<std::unique_ptr<async_acquire<decltype(p)>>> ws;
    for (int i = 0; i < 4; ++i) {
        ws.push_back(std::make_unique<async_acquire<decltype(p)>>(p, 60s));
        REQUIRE(eventually([&] { return p.stats().waiters == static_cast<std::uint64_t>(i + 1); }));
    }
    held.release();
    for (auto& w : ws) {
        REQUIRE(eventually([&] { return w->done.load(); }));
        CHECK(w->id == id);
        // Nobody else has it: a newcomer cannot overtake the queued waiters.
        CHECK_FALSE(p.try_acquire());
        for (auto& other : ws)
            if (other != w && !other->done) CHECK_FALSE(other->result);
        w->result.release();
        w->join();
    }
    CHECK(f.fake.stats().connects == 1);
}

TEST_CASE("a returned connection goes to the waiter, not to a later caller") {
    fixture f;
    auto p = f.make({.max_size = 1});
    auto held = p.acquire();
    async_acquire w(p, 60s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    held.release();
    CHECK_FALSE(p.try_acquire()); // handed off inside release, before any newcomer could look
    w.join();
    CHECK(w.result);
}

TEST_CASE("a stop token cancels a waiter at once") {
    fixture f;
    auto p = f.make({.max_size = 1});
    auto held = p.acquire();
    std::stop_source stop;
    async_acquire w(p, 60s, stop.get_token());
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    stop.request_stop();
    w.join();
    CHECK(w.ec == errc::cancelled);
    CHECK(p.stats().cancels == 1);
    CHECK(p.stats().waiters == 0);

    std::stop_source already;
    already.request_stop();
    std::error_code ec;
    CHECK_FALSE(p.acquire(p.now() + 60s, already.get_token(), ec));
    CHECK(ec == errc::cancelled);
}

TEST_CASE("a stop token stopped before the call cancels the acquire even when a connection is idle") {
    fixture f;
    auto p = f.make({.max_size = 2});
    p.acquire().release(); // one idle connection
    std::stop_source stop;
    stop.request_stop();
    std::error_code ec;
    CHECK_FALSE(p.acquire(p.now() + 60s, stop.get_token(), ec));
    CHECK(ec == errc::cancelled);
    CHECK_THROWS_AS((void)p.acquire(p.now() + 60s, stop.get_token()), keypool::error);
    const auto s = p.stats();
    CHECK(s.cancels == 2);
    CHECK(s.acquires == 1);
    CHECK(s.idle == 1); // untouched: still there for the next caller
    CHECK(p.acquire(p.now() + 60s, std::stop_source{}.get_token(), ec));
}

TEST_CASE("exhaust then cancel many waiters: no connection is lost or leaked") {
    // The Go database/sql case: saturate, cancel every waiter, then the pool must still work.
    fixture f;
    auto p = f.make({.max_size = 2});
    auto a = p.acquire(), b = p.acquire();
    std::vector<std::stop_source> stops(16);
    std::vector<std::unique_ptr<async_acquire<decltype(p)>>> ws;
    for (auto& s : stops) ws.push_back(std::make_unique<async_acquire<decltype(p)>>(p, 60s, s.get_token()));
    REQUIRE(eventually([&] { return p.stats().waiters == 16; }));
    // Returns race with the cancels: each waiter either got a connection or was cancelled.
    std::jthread returner([&] {
        a.release();
        b.release();
    });
    for (auto& s : stops) s.request_stop();
    returner.join();
    int served = 0;
    for (auto& w : ws) {
        w->join();
        if (w->result) ++served;
        else CHECK(w->ec == errc::cancelled);
        w->result.release();
    }
    CHECK(served <= 2);
    auto l = p.try_acquire();
    CHECK(l);
    CHECK(p.stats().size == f.fake.live());
    CHECK(p.stats().size == 2);
}

TEST_CASE("a full wait queue rejects with pool_exhausted at once") {
    fixture f;
    auto p = f.make({.max_size = 1, .max_waiters = 1});
    auto held = p.acquire();
    async_acquire w(p, 60s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    std::error_code ec;
    CHECK_FALSE(p.acquire(60s, ec));
    CHECK(ec == errc::pool_exhausted);
    CHECK(p.stats().rejected == 1);
    held.release();
    w.join();
    CHECK(w.result);
}

TEST_CASE("discard closes the connection instead of returning it") {
    fixture f;
    auto p = f.make();
    auto l = p.acquire();
    l.discard();
    CHECK_FALSE(l);
    CHECK(f.fake.live() == 0);
    auto s = p.stats();
    CHECK(s.size == 0);
    CHECK(s.closed_for(close_reason::discarded) == 1);
}

TEST_CASE_TEMPLATE("no session state reaches the next borrower", R, keypool::reset_at::release,
                   keypool::reset_at::checkout, keypool::reset_at::background) {
    fixture f;
    auto p = f.make<keypool::with_reset<R>>({.max_size = 1});
    {
        auto l = p.acquire();
        l->use("SET search_path = tenant_a");
    }
    if constexpr (std::is_same_v<R, keypool::reset_at::background>) {
        p.maintain(); // resets off the caller's path
        CHECK(f.fake.stats().resets == 1);
    }
    auto l = p.acquire();
    CHECK_FALSE(l->dirty());
    CHECK(f.fake.stats().resets == 1);
    CHECK(p.stats().resets == 1);
}

TEST_CASE_TEMPLATE("a failed reset destroys the connection", R, keypool::reset_at::release,
                   keypool::reset_at::checkout, keypool::reset_at::background) {
    fixture f;
    auto p = f.make<keypool::with_reset<R>>({.max_size = 1});
    auto first = p.acquire();
    const auto id = first->id;
    f.fake.fail_next_resets(1);
    first.release();
    auto next = p.acquire();
    CHECK(next->id != id);
    CHECK_FALSE(f.fake.is_live(id));
    CHECK(p.stats().closed_for(close_reason::reset_failed) == 1);
}

TEST_CASE("connections idle past the threshold are validated and dead ones never handed out") {
    fixture f;
    auto p = f.make<keypool::with_reset<keypool::reset_at::release>>({.max_size = 2, .validate_after_idle = 5s});
    auto l = p.acquire();
    const auto id = l->id;
    l.release();
    const auto checks = f.fake.stats().alive_checks;
    CHECK(p.acquire()->id == id); // idle < 5 s: no check
    CHECK(f.fake.stats().alive_checks == checks);

    f.fake.kill(id);
    f.clock.advance(6s);
    auto fresh = p.acquire(); // the dead one is found, closed, and another one opened transparently
    CHECK(fresh->id != id);
    CHECK(f.fake.stats().alive_checks == checks + 1);
    CHECK(p.stats().closed_for(close_reason::broken) == 1);
    CHECK_FALSE(f.fake.is_live(id));
}

TEST_CASE("max lifetime: checked at checkout, and at return once maintain has marked the lease") {
    fixture f;
    auto p = f.make({.max_lifetime = 10min, .lifetime_jitter = 0s});
    auto l = p.acquire();
    const auto first = l->id;
    l.release();
    f.clock.advance(10min);
    auto second = p.acquire();
    CHECK(second->id != first);
    CHECK(p.stats().closed_for(close_reason::lifetime) == 1);
    CHECK(p.maintain() <= f.clock.now() + 10min); // due no later than the leased one's expiry
    f.clock.advance(10min);
    p.maintain(); // marks the leased, expired connection
    second.release(); // too old to go back
    CHECK(p.stats().closed_for(close_reason::lifetime) == 2);
    CHECK(p.stats().size == 0);

    // Unmarked (no maintain ran): the return reads no clock, so it goes back idle, and the next
    // checkout closes it instead of handing it out.
    auto third = p.acquire();
    const auto third_id = third->id;
    f.clock.advance(10min);
    third.release();
    CHECK(p.stats().idle == 1);
    auto fourth = p.acquire();
    CHECK(fourth->id != third_id);
    CHECK(p.stats().closed_for(close_reason::lifetime) == 3);
}

TEST_CASE("idle time counts from the return of a long lease that maintain saw out, not from its checkout") {
    fixture f;
    auto p = f.make({.max_size = 3, .idle_timeout = 1min, .max_lifetime = std::nullopt});
    auto keep = p.acquire(); // min_idle is 0: every idle connection may time out
    {
        auto held = p.acquire();
        f.clock.advance(5min);
        p.maintain(); // sees `held` still out
    } // returned now, 5 min after its checkout
    p.maintain();
    CHECK(p.stats().closed_for(close_reason::idle) == 0);
    CHECK(p.stats().idle == 1);
    f.clock.advance(1min);
    p.maintain();
    CHECK(p.stats().closed_for(close_reason::idle) == 1);
}

TEST_CASE("lifetime jitter shortens each lifetime by at most lifetime_jitter") {
    fixture f;
    auto p = f.make({.max_size = 8, .idle_timeout = std::nullopt, .max_lifetime = 10min,
                     .lifetime_jitter = 1min, .seed = 42});
    {
        std::vector<decltype(p)::lease> ls;
        for (int i = 0; i < 8; ++i) ls.push_back(p.acquire());
    }
    f.clock.advance(9min - 1s);
    p.maintain();
    CHECK(p.stats().closed_for(close_reason::lifetime) == 0);
    f.clock.advance(61s);
    p.maintain();
    CHECK(p.stats().closed_for(close_reason::lifetime) == 8);
}

TEST_CASE("idle timeout closes the least recently used idle connections but keeps min_idle") {
    fixture f;
    auto p = f.make({.max_size = 5, .min_idle = 2, .idle_timeout = 1min, .max_lifetime = std::nullopt});
    std::vector<std::uint64_t> order;
    {
        std::vector<decltype(p)::lease> ls;
        for (int i = 0; i < 5; ++i) ls.push_back(p.acquire());
        for (auto& l : ls) order.push_back(l->id); // released in this order: the last is the MRU
    }
    f.clock.advance(2min);
    p.maintain();
    auto s = p.stats();
    CHECK(s.closed_for(close_reason::idle) == 3);
    CHECK(s.idle == 2);
    CHECK(f.fake.is_live(order[4]));
    CHECK(f.fake.is_live(order[3]));
    CHECK_FALSE(f.fake.is_live(order[0]));
}

TEST_CASE("maintain keeps min_idle warm and says when it is next due") {
    fixture f;
    auto p = f.make({.max_size = 5, .min_idle = 3, .max_connecting = 3, .idle_timeout = 1min,
                     .max_lifetime = std::nullopt});
    CHECK(p.maintain() == keypool::time_point::max()); // at min_idle, nothing can expire
    auto s = p.stats();
    CHECK(s.size == 3);
    CHECK(s.idle == 3);
    CHECK(f.fake.stats().connects == 3);
    // One above min_idle: due when its idle timeout ends.
    {
        auto a = p.acquire(), b = p.acquire(), c = p.acquire(), d = p.acquire();
    }
    CHECK(p.maintain() == f.clock.now() + 1min);
}

TEST_CASE("max_connecting caps concurrent connects, and the capped caller waits for a permit") {
    fixture f;
    auto gate = std::make_shared<keypool::fake::gate>();
    f.fake.script({keypool::fake::outcome::wait_for(gate)});
    auto p = f.make({.max_size = 4, .max_connecting = 1});
    async_acquire a(p, 60s);
    REQUIRE(eventually([&] { return gate->waiting() == 1; }));
    async_acquire b(p, 60s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    CHECK(f.fake.stats().connect_attempts == 1);
    gate->open();
    a.join();
    b.join();
    CHECK(a.result);
    CHECK(b.result);
    CHECK(a.id != b.id);
    CHECK(f.fake.stats().connects == 2);
}

TEST_CASE("connecting and closing connections count against max_size") {
    fixture f;
    auto gate = std::make_shared<keypool::fake::gate>();
    f.fake.script({keypool::fake::outcome::wait_for(gate)});
    auto p = f.make({.max_size = 1, .max_connecting = 2});
    {
        async_acquire a(p, 60s);
        REQUIRE(eventually([&] { return gate->waiting() == 1; }));
        std::error_code ec;
        CHECK_FALSE(p.acquire(0s, ec)); // the slot is taken by the connect in flight
        CHECK(ec == errc::timeout);
        CHECK(p.stats().connecting == 1);
        CHECK(f.fake.stats().connect_attempts == 1);
        gate->open();
        a.join();
        REQUIRE(a.result);

        auto closing = std::make_shared<keypool::fake::gate>();
        f.fake.block_closes(closing);
        std::jthread discarder([&] { a.result.discard(); });
        REQUIRE(eventually([&] { return closing->waiting() == 1; }));
        CHECK_FALSE(p.acquire(0s, ec)); // still counted while its close runs
        CHECK(ec == errc::timeout);
        CHECK(p.stats().size == 1);
        closing->open();
        discarder.join();
        f.fake.block_closes(nullptr);
    }
    CHECK(p.acquire(0s));
}

TEST_CASE("a freed slot becomes a connect permit for the oldest waiter") {
    fixture f;
    auto p = f.make({.max_size = 1});
    auto held = p.acquire();
    const auto id = held->id;
    async_acquire w(p, 60s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    held.discard();
    w.join();
    REQUIRE(w.result);
    CHECK(w.id != id);
}

TEST_CASE("every connect has a deadline") {
    fixture f;
    f.fake.script({keypool::fake::outcome::slow(20s)});
    auto p = f.make({.connect_timeout = 5s});
    async_acquire w(p, 60s);
    REQUIRE(eventually([&] { return f.fake.stats().connect_attempts == 1; }));
    f.clock.advance(5s);
    w.join();
    CHECK(w.ec == errc::timeout);
    CHECK(p.stats().connects_failed == 1);
    CHECK(p.stats().size == 0);
}

TEST_CASE("the caller's own deadline ends its connect without counting as a server failure") {
    fixture f;
    f.fake.script({keypool::fake::outcome::slow(20s)});
    auto p = f.make();
    async_acquire w(p, 2s);
    REQUIRE(eventually([&] { return f.fake.stats().connect_attempts == 1; }));
    f.clock.advance(2s);
    w.join();
    CHECK(w.ec == errc::timeout);
    CHECK_FALSE(p.last_connect_error()); // no backoff: the next caller connects at once
    CHECK(p.acquire());
}

TEST_CASE("a definite connect failure is delivered at once, then backed off exponentially") {
    fixture f;
    f.fake.fail_next_connects(3, keypool::make_error_code(errc::authentication_failed));
    auto p = f.make({.max_size = 1, .backoff_initial = 100ms, .backoff_max = 10s});
    std::error_code ec;
    CHECK_FALSE(p.acquire(60s, ec));
    CHECK(ec == errc::authentication_failed);
    CHECK(f.fake.stats().connect_attempts == 1);

    // In backoff with nothing open: fail fast with the real error, without a connect attempt.
    CHECK_FALSE(p.acquire(60s, ec));
    CHECK(ec == errc::authentication_failed);
    CHECK(f.fake.stats().connect_attempts == 1);

    f.clock.advance(100ms); // first delay is in [50, 100] ms
    CHECK_FALSE(p.acquire(60s, ec));
    CHECK(f.fake.stats().connect_attempts == 2);
    f.clock.advance(99ms); // second delay is in [100, 200] ms
    CHECK_FALSE(p.acquire(60s, ec));
    CHECK(f.fake.stats().connect_attempts == 2);
    f.clock.advance(101ms);
    CHECK_FALSE(p.acquire(60s, ec));
    CHECK(f.fake.stats().connect_attempts == 3);
    f.clock.advance(400ms);
    auto l = p.acquire(60s, ec);
    CHECK(l);
    CHECK(p.stats().connects_failed == 3);
    // A later timeout still names the last connect failure.
    CHECK_THROWS_WITH_AS((void)p.acquire(0s), doctest::Contains("authentication_failed"), keypool::error);
}

TEST_CASE("waiters get the definite failure instead of waiting out their timeout") {
    fixture f;
    auto gate = std::make_shared<keypool::fake::gate>();
    f.fake.script({keypool::fake::outcome::wait_for(gate, keypool::make_error_code(errc::key_not_found))});
    auto p = f.make({.max_size = 2, .max_connecting = 1});
    async_acquire a(p, 60s);
    REQUIRE(eventually([&] { return gate->waiting() == 1; }));
    async_acquire b(p, 60s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    gate->open();
    a.join();
    b.join();
    CHECK(a.ec == errc::key_not_found);
    CHECK(b.ec == errc::key_not_found);
}

TEST_CASE("a waiter in backoff connects once the backoff ends") {
    fixture f;
    auto p = f.make({.max_size = 2, .backoff_initial = 1s, .backoff_max = 1s});
    auto held = p.acquire();
    f.fake.fail_next_connects(1);
    std::error_code ec;
    CHECK_FALSE(p.acquire(60s, ec)); // the second connect fails: backoff, but one is open
    CHECK(ec == errc::connect_failed);
    async_acquire w(p, 60s); // waits: a lease may return, or the backoff may end
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    f.clock.advance(1s);
    w.join();
    CHECK(w.result);
    CHECK(f.fake.stats().connects == 2);
}

TEST_CASE("close wakes every waiter, closes idle connections, and takes late returns") {
    fixture f;
    auto p = f.make({.max_size = 2});
    auto a = p.acquire();
    p.acquire().release(); // one idle
    auto b = p.acquire();
    async_acquire w(p, 60s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    b.release(); // handed to w
    w.join();
    async_acquire w2(p, 60s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    p.close();
    w2.join();
    CHECK(w2.ec == errc::closed);
    std::error_code ec;
    CHECK_FALSE(p.acquire(60s, ec));
    CHECK(ec == errc::closed);
    CHECK(f.fake.live() == 2); // both leased
    a.release();
    w.result.release();
    CHECK(f.fake.live() == 0);
    CHECK(p.stats().closed_for(close_reason::closed) == 2);
}

TEST_CASE("close with a deadline drains or reports that leases are still out") {
    fixture f;
    auto p = f.make();
    auto l = p.acquire();
    CHECK_FALSE(p.close(p.now()));
    l.release();
    CHECK(p.close(p.now()));

    auto q = f.make();
    auto m = q.acquire();
    std::atomic<bool> drained{false};
    std::jthread closer([&] { drained = q.close(q.now() + 60s); });
    REQUIRE(eventually([&] { return q.stats().size == 1 && !drained; }));
    m.release();
    closer.join();
    CHECK(drained);
}

TEST_CASE("a lease may outlive its pool") {
    fixture f;
    auto p = std::make_unique<kp_test::manual_pool<>>(f.make());
    auto l = p->acquire();
    auto idle = p->acquire();
    idle.release();
    p.reset();
    CHECK(f.fake.live() == 1);
    l->use();
    CHECK(l->dirty());
    l.release();
    CHECK(f.fake.live() == 0);
}

TEST_CASE("move-assigning a lease returns the connection it held first") {
    fixture f;
    auto p = f.make();
    auto a = p.acquire();
    auto b = p.acquire();
    const auto bid = b->id;
    a = std::move(b);
    CHECK_FALSE(b);
    CHECK(a->id == bid);
    CHECK(p.stats().idle == 1);
    CHECK(p.stats().in_use == 1);
}

TEST_CASE("a single-threaded pool reports would_deadlock instead of waiting") {
    fixture f;
    auto p = f.make<keypool::with_sync<keypool::sync::none>>({.max_size = 1});
    auto l = p.acquire();
    std::error_code ec;
    CHECK_FALSE(p.acquire(60s, ec));
    CHECK(ec == errc::would_deadlock);
    l.release();
    CHECK(p.acquire(60s, ec));
}

TEST_CASE("observer hooks see connects, closes and waits") {
    struct counting {
        std::shared_ptr<std::atomic<int>> connects = std::make_shared<std::atomic<int>>(0);
        std::shared_ptr<std::atomic<int>> closes = std::make_shared<std::atomic<int>>(0);
        std::shared_ptr<std::atomic<int>> waits = std::make_shared<std::atomic<int>>(0);
        void on_connect(std::chrono::nanoseconds, std::error_code) { ++*connects; }
        void on_close(close_reason) { ++*closes; }
        void on_wait(std::chrono::nanoseconds, std::error_code) { ++*waits; }
    };
    fixture f;
    counting obs;
    kp_test::manual_pool<keypool::with_observer<counting>> p(f.fake, "db", {.max_size = 1}, f.clock, obs);
    auto l = p.acquire();
    std::error_code ec;
    async_acquire w(p, 1s);
    REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
    f.clock.advance(1s);
    w.join();
    l.discard();
    CHECK(*obs.connects == 1);
    CHECK(*obs.closes == 1);
    CHECK(*obs.waits == 1);
}

TEST_CASE("invalid options are rejected when the pool is built") {
    fixture f;
    CHECK_THROWS_WITH_AS(f.make({.max_size = 0}), doctest::Contains("max_size"), keypool::error);
    try {
        (void)f.make({.min_idle = 11});
    } catch (const keypool::error& e) {
        CHECK(e.code() == errc::invalid_config);
    }
}

TEST_CASE("background reset: a returned connection waits for maintenance, which signals and resets it") {
    fixture f;
    using background = keypool::with_reset<keypool::reset_at::background>;
    auto p = f.make<background>({.max_size = 2});
    int signals = 0;
    p.set_reset_signal([&] { ++signals; });
    auto a = p.acquire(), b = p.acquire();
    const auto ia = a->id;
    a->use("SET search_path = tenant_a");
    a.release();
    CHECK(signals == 1);
    CHECK(p.stats().idle == 1);
    CHECK_FALSE(p.try_acquire()); // not handed out dirty without a reset, and try_acquire does no I/O
    p.maintain();
    CHECK(f.fake.stats().resets == 1);
    auto again = p.acquire(); // clean already: no reset on the borrower's path
    CHECK(again->id == ia);
    CHECK_FALSE(again->dirty());
    CHECK(f.fake.stats().resets == 1);

    // Maintenance that lags: a borrower that finds only a dirty connection resets it itself
    // rather than opening another one.
    again.release();
    auto c = p.acquire();
    CHECK(c->id == ia);
    CHECK(f.fake.stats().resets == 2);
    CHECK(f.fake.stats().connects == 2);
    p.set_reset_signal({});
    c.release();
    CHECK(signals == 2);
}

TEST_CASE("background reset with a janitor: the return wakes it and the reset runs on its thread") {
    keypool::fake::connector fake;
    keypool::basic_pool<keypool::fake::connector, keypool::with_reset<keypool::reset_at::background>> p(
        fake, "db", {.max_size = 2});
    keypool::janitor j(p, std::chrono::hours(1)); // only the return's signal wakes it in time
    {
        auto l = p.acquire();
        l->use();
    }
    CHECK(eventually([&] { return fake.stats().resets == 1; })); // nobody here reset or maintained
    auto l = p.acquire();
    CHECK_FALSE(l->dirty());
    CHECK(fake.stats().resets == 1);
}

TEST_CASE("the janitor runs maintenance on its own thread") {
    keypool::fake::connector fake;
    keypool::pool<keypool::fake::connector> p(fake, "db", {.max_size = 4, .min_idle = 2});
    keypool::janitor j(p, 10ms);
    CHECK(eventually([&] { return p.stats().idle == 2; }));
}

TEST_CASE("the janitor spends at most max_share of a core, however soon maintenance is due") {
    // A target as a registry of a million keys looks: each call takes a while (here 2 ms of
    // the thread's CPU time) and something is always due at once. Before the bound, the calls ran
    // back to back.
    struct always_due {
        std::mutex m;
        std::vector<std::pair<keypool::time_point, keypool::time_point>> calls; // start, end
        static keypool::duration cpu() {
            timespec ts;
            ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
            return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
        }
        keypool::time_point maintain() {
            const auto start = std::chrono::steady_clock::now();
            const auto cpu_start = cpu();
            while (cpu() - cpu_start < 2ms) {
            } // (the work: CPU time, as visiting a million pools takes)
            const auto end = std::chrono::steady_clock::now();
            std::lock_guard lk(m);
            calls.emplace_back(start, end);
            return end; // due again at once
        }
        std::size_t count() {
            std::lock_guard lk(m);
            return calls.size();
        }
    } target;
    {
        keypool::janitor j(target, 1h, 0.25); // a quarter of a core: rest three times the call
        REQUIRE(eventually([&] { return target.count() >= 4; }));
    }
    std::lock_guard lk(target.m);
    for (std::size_t i = 0; i + 1 < target.calls.size(); ++i) {
        const auto rest = target.calls[i + 1].first - target.calls[i].second;
        CHECK(rest >= 3 * 2ms - 1us); // (at least 2 ms of CPU time per call; the rest in double ns)
    }
}

TEST_CASE("janitor options are checked") {
    keypool::fake::connector fake;
    keypool::pool<keypool::fake::connector> p(fake, "db", {.max_size = 1});
    CHECK_THROWS_WITH_AS(keypool::janitor(p, 1s, 0.0), doctest::Contains("max_share"), keypool::error);
    CHECK_THROWS_WITH_AS(keypool::janitor(p, 1s, 1.5), doctest::Contains("max_share"), keypool::error);
    CHECK_THROWS_WITH_AS(keypool::janitor(p, 1s, std::nan("")), doctest::Contains("max_share"), keypool::error);
    CHECK_THROWS_WITH_AS(keypool::janitor(p, 0s), doctest::Contains("max_interval"), keypool::error);
    keypool::janitor whole_core(p, keypool::duration::max(), 1.0); // (no overflow)
}

} // TEST_SUITE

TEST_CASE("keepalive: maintain pings connections idle for keepalive_after and closes the dead ones") {
    fixture f;
    auto p = f.make<keypool::with_reset<keypool::reset_at::release>>(
        {.max_size = 3, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt, .keepalive_after = 1min});
    std::vector<std::uint64_t> ids;
    {
        auto a = p.acquire(), b = p.acquire(), c = p.acquire();
        ids = {a->id, b->id, c->id};
    }
    CHECK(p.maintain() == f.clock.now() + 1min); // next due: the first keepalive
    CHECK(f.fake.stats().pings == 0);
    f.clock.advance(30s);
    { auto used = p.acquire(); } // one connection used again: its keepalive moves
    f.clock.advance(31s);
    f.fake.kill(ids[0]);
    f.fake.kill(ids[1]);
    f.fake.kill(ids[2]);
    p.maintain();
    // Two were idle 61 s: pinged, found dead, closed. The one used 31 s ago was not pinged.
    CHECK(f.fake.stats().pings == 2);
    CHECK(p.stats().closed_for(close_reason::broken) == 2);
    CHECK(p.stats().size == 1);
    const auto next = p.maintain();
    CHECK(next == f.clock.now() + 29s);
    f.clock.advance(29s);
    p.maintain();
    CHECK(f.fake.stats().pings == 3);
    CHECK(p.stats().size == 0);
}

TEST_CASE("keepalive: a live connection's ping moves its next keepalive, and a dirty one is reset instead") {
    fixture f;
    auto p = f.make({.max_size = 2, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt,
                     .keepalive_after = 1min}); // reset at checkout: returned connections stay dirty
    {
        auto a = p.acquire();
        a->use("SET something");
    }
    f.clock.advance(1min);
    const auto resets_before = f.fake.stats().resets;
    p.maintain();
    CHECK(f.fake.stats().pings == 0);                  // never pinged with its reset pending
    CHECK(f.fake.stats().resets == resets_before + 1); // reset instead, which proves it alive
    CHECK(p.maintain() == f.clock.now() + 1min);
    f.clock.advance(1min);
    p.maintain();
    CHECK(f.fake.stats().pings == 1); // clean now: pinged
    CHECK(p.stats().size == 1);
    CHECK(p.maintain() == f.clock.now() + 1min);
}

TEST_CASE("keepalive_after must be positive") {
    std::string msg;
    CHECK(keypool::validate(keypool::pool_options{.keepalive_after = keypool::duration::zero()}, msg) ==
          keypool::errc::invalid_config);
    CHECK(msg.find("keepalive_after") != std::string::npos);
}

namespace {
/// The fake, plus reset(connection, deadline): records the deadline it was given and can play a
/// server that stops answering (the manual clock runs to the deadline, then the reset gives up).
struct deadline_reset_connector : keypool::fake::connector {
    using keypool::fake::connector::connector;
    struct log {
        std::vector<keypool::time_point> deadlines;
        bool silent = false;
    };
    std::shared_ptr<log> seen = std::make_shared<log>();
    keypool::manual_clock* clock = nullptr;
    using keypool::fake::connector::reset;
    bool reset(keypool::fake::connection& c, keypool::time_point deadline) {
        seen->deadlines.push_back(deadline);
        if (seen->silent) {
            clock->set(deadline + 1ms); // gives up just past it
            return false;
        }
        return reset(c);
    }
};
static_assert(keypool::connector_has_reset_until<deadline_reset_connector>);
} // namespace

TEST_CASE("a reset at checkout gets the caller's deadline, and the time it took counts against the acquire") {
    kp_test::fixture f;
    deadline_reset_connector c(f.clock);
    c.clock = &f.clock;
    keypool::basic_pool<deadline_reset_connector, keypool::with_clock<keypool::manual_clock>> p(
        c, "db", {.max_size = 2, .validate_after_idle = 1h}, f.clock);
    { auto l = p.acquire(1s); } // returned dirty: reset at the next checkout
    const auto t0 = f.clock.now();
    { auto l = p.acquire(3s); }
    REQUIRE(c.seen->deadlines.size() == 1);
    CHECK(c.seen->deadlines[0] == t0 + 3s);
    { auto l = p.acquire(t0 + 7s, {}); }
    CHECK(c.seen->deadlines.back() == t0 + 7s);
    // A server that stops answering: the reset runs until the deadline and gives up; the acquire
    // then ends with timeout instead of connecting anew with a fresh timeout of its own.
    c.seen->silent = true;
    std::error_code ec;
    auto l = p.acquire(2s, ec);
    CHECK_FALSE(l);
    CHECK(ec == errc::timeout);
    CHECK(f.clock.now() == t0 + 2s + 1ms);
    CHECK(p.stats().closed_for(keypool::close_reason::reset_failed) == 1);
    CHECK(p.stats().timeouts == 1);
    CHECK(c.stats().connects == 1); // no new connection was opened past the deadline
}

namespace {
/// The fake, plus reset_begin: logs "begin <id>" and "reset <id>" in order. A begun reset is
/// completed by `reset` (the fake's session is clear only after it).
struct begin_reset_connector : keypool::fake::connector {
    std::shared_ptr<std::vector<std::string>> log = std::make_shared<std::vector<std::string>>();
    void reset_begin(keypool::fake::connection& c) { log->push_back("begin " + std::to_string(c.id)); }
    bool reset(keypool::fake::connection& c) {
        log->push_back("reset " + std::to_string(c.id));
        return keypool::fake::connector::reset(c);
    }
};
static_assert(keypool::connector_has_reset_begin<begin_reset_connector>);
static_assert(!keypool::connector_has_reset_begin<keypool::fake::connector>);

template <class Reset>
using begin_reset_pool =
    keypool::basic_pool<begin_reset_connector, keypool::with_clock<keypool::manual_clock>, keypool::with_reset<Reset>>;
} // namespace

TEST_CASE("reset_begin starts the reset when a lease returns, and the reset before the next hand-out completes it") {
    kp_test::fixture f;
    begin_reset_connector c;
    SUBCASE("reset_at::checkout") {
        begin_reset_pool<keypool::reset_at::checkout> p(c, "db", {.max_size = 1, .validate_after_idle = 1h}, f.clock);
        {
            auto l = p.acquire(1s);
            l->use("role=acme");
        }
        CHECK(*c.log == std::vector<std::string>{"begin 1"}); // sent on return; not waited for
        {
            auto l = p.acquire(1s);
            CHECK(l->session().empty()); // completed before the hand-out
        }
        { auto l = p.acquire(1s); }
        CHECK(*c.log == std::vector<std::string>{"begin 1", "reset 1", "begin 1", "reset 1", "begin 1"});
        // A discarded or retired connection is not worth starting a reset for.
        auto l = p.acquire(1s);
        l.discard();
        CHECK(c.log->back() == "reset 1");
        CHECK(p.stats().resets == 3);
    }
    SUBCASE("reset_at::background: maintain() completes it") {
        begin_reset_pool<keypool::reset_at::background> p(c, "db", {.max_size = 1, .validate_after_idle = 1h}, f.clock);
        { auto l = p.acquire(1s); }
        CHECK(*c.log == std::vector<std::string>{"begin 1"});
        p.maintain();
        CHECK(*c.log == std::vector<std::string>{"begin 1", "reset 1"});
        { auto l = p.acquire(1s); } // already clean: no second reset at checkout
        CHECK(*c.log == std::vector<std::string>{"begin 1", "reset 1", "begin 1"});
    }
    SUBCASE("reset_at::release resets in full on return: nothing to begin") {
        begin_reset_pool<keypool::reset_at::release> p(c, "db", {.max_size = 1, .validate_after_idle = 1h}, f.clock);
        { auto l = p.acquire(1s); }
        { auto l = p.acquire(1s); }
        CHECK(*c.log == std::vector<std::string>{"reset 1", "reset 1"});
    }
}

namespace {
/// begin_reset_connector plus reset_ready: the connections listed in `pending` have not had their
/// reset's answer yet.
struct ready_probe_connector : begin_reset_connector {
    std::shared_ptr<std::set<std::uint64_t>> pending = std::make_shared<std::set<std::uint64_t>>();
    bool reset_ready(keypool::fake::connection& c) { return pending->count(c.id) == 0; }
};
static_assert(keypool::connector_has_reset_ready<ready_probe_connector>);
} // namespace

TEST_CASE("a checkout prefers an idle connection whose begun reset is done over one still waiting for it") {
    kp_test::fixture f;
    ready_probe_connector c;
    keypool::basic_pool<ready_probe_connector, keypool::with_clock<keypool::manual_clock>> p(
        c, "db", {.max_size = 2, .validate_after_idle = 1h}, f.clock);
    {
        auto a = p.acquire(1s); // connection 1
        auto b = p.acquire(1s); // connection 2
        REQUIRE(a->id == 1);
        REQUIRE(b->id == 2);
    } // b returns first, then a: 1 is the most recently used
    c.pending->insert(1); // 1's reset answer has not arrived
    {
        auto l = p.acquire(1s);
        CHECK(l->id == 2); // 1 went back; 2 was ready
    }
    // 2 is now the most recent and pending too; 1 still pending: neither ready, keep the MRU one.
    c.pending->insert(2);
    {
        auto l = p.acquire(1s);
        CHECK(l->id == 2);
    }
    c.pending->clear();
    {
        auto l = p.acquire(1s);
        CHECK(l->id == 2); // both ready: most recently used first, as always
    }
    // try_acquire makes the same choice.
    c.pending->insert(2);
    {
        auto l = p.try_acquire();
        REQUIRE(l);
        CHECK(l->id == 1);
    }
    const auto s = p.stats();
    CHECK(s.size == 2);
    CHECK(s.idle == 2);
    CHECK(s.connects_ok == 2);
    CHECK(c.stats().live == 2);
}
