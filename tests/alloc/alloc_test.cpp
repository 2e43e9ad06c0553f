// SPDX-License-Identifier: BSL-1.0
// The hot path allocates nothing: acquire + release of an idle connection, for a pool and for an
// existing registry key (integer keys, long string keys, role-switch routes with long role names).
// This executable replaces the global operator new with one that counts per thread, so it is kept
// apart from the other suites.
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <keypool/keypool.hpp>

namespace {
thread_local std::uint64_t t_allocations = 0;

/// Allocations this thread made while `f` ran.
template <class F> std::uint64_t allocations_during(F&& f) {
    const std::uint64_t before = t_allocations;
    f();
    return t_allocations - before;
}
} // namespace

__attribute__((noinline)) void* operator new(std::size_t n) {
    ++t_allocations;
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
// The pool allocates some rare-path state with `new (std::nothrow)`: it must come from the same
// malloc as the deletes below (under ASan, its own nothrow new would not).
__attribute__((noinline)) void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    ++t_allocations;
    return std::malloc(n ? n : 1);
}
__attribute__((noinline)) void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
// Not inlined: once GCC inlines a replacement delete into a container's destructor it "sees" a
// free() of memory that came from new, and -Werror=mismatched-new-delete stops the build.
__attribute__((noinline)) void operator delete(void* p) noexcept { std::free(p); }
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using namespace std::chrono_literals;

namespace {
/// A long key: beyond any small-string buffer, so copying it would allocate.
std::string long_key(int i) { return "tenant-" + std::to_string(i) + "-with-a-name-longer-than-any-sso-buffer"; }

struct long_string_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const std::string& k, std::error_code&) const {
        return keypool::route<std::string>{"db/" + k, {}};
    }
};
/// The fake, with a role switch that reuses the session string's buffer (the fake's own prepare
/// builds a new string each time, which is the connector's cost, not the registry's).
struct quiet_role_connector : keypool::fake::connector {
    bool prepare(keypool::fake::connection& c, const keypool::role& r, std::error_code&) {
        c.use(r.name);
        return true;
    }
};
} // namespace

TEST_CASE("a pool's acquire and release of an idle connection allocate nothing") {
    keypool::pool<keypool::fake::connector> p(keypool::fake::connector{}, "db", {.max_size = 2});
    { auto l = p.acquire(1s); } // connects (allocates) once
    const std::uint64_t n = allocations_during([&] {
        for (int i = 0; i < 1000; ++i) {
            auto l = p.acquire(1s);
            REQUIRE(l);
        }
    });
    CHECK(n == 0);
}

TEST_CASE("a registry's acquire and release for an existing key allocate nothing") {
    SUBCASE("integer keys") {
        keypool::basic_registry<std::uint64_t,
                                keypool::resolve::function<std::string, keypool::no_setup, std::uint64_t>,
                                keypool::fake::connector>
            r(keypool::resolve::function<std::string, keypool::no_setup, std::uint64_t>(
                  [](const std::uint64_t& k, std::error_code&) -> std::optional<keypool::route<std::string>> {
                      return keypool::route<std::string>{"db" + std::to_string(k), {}};
                  }),
              keypool::fake::connector{}, {.pool = {.max_size = 2}});
        for (std::uint64_t k = 0; k < 16; ++k)
            r.acquire(k, 1s).release();
        const std::uint64_t n = allocations_during([&] {
            for (std::uint64_t i = 0; i < 1000; ++i) {
                auto l = r.acquire(i % 16, 1s);
                REQUIRE(l);
                CHECK(l.key() == i % 16);
            }
        });
        CHECK(n == 0);
    }
    SUBCASE("string keys longer than the small-string buffer (the lease shares the registry's copy)") {
        keypool::basic_registry<std::string, long_string_resolver, keypool::fake::connector> r(
            long_string_resolver{}, keypool::fake::connector{}, {.pool = {.max_size = 2}});
        std::vector<std::string> keys;
        for (int k = 0; k < 16; ++k)
            keys.push_back(long_key(k));
        for (const auto& k : keys)
            r.acquire(k, 1s).release();
        const std::uint64_t n = allocations_during([&] {
            for (int i = 0; i < 1000; ++i) {
                auto l = r.acquire(keys[static_cast<std::size_t>(i % 16)], 1s);
                REQUIRE(l);
                CHECK(l.key() == keys[static_cast<std::size_t>(i % 16)]);
            }
        });
        CHECK(n == 0);
        auto held = r.try_acquire(keys[3]);
        REQUIRE(held);
        r.invalidate(keys[3]);        // the entry (and the registry's copy of the key) is gone...
        CHECK(held.key() == keys[3]); // ...the lease still knows its key
        CHECK(decltype(held){}.key().empty());
    }
    SUBCASE("role-switch routes with long role names (the setup is shared, not copied)") {
        using reg =
            keypool::basic_registry<std::string, keypool::resolve::role_switch<std::string>, quiet_role_connector>;
        reg r(keypool::resolve::role_switch<std::string>{"db"}, quiet_role_connector{}, {.pool = {.max_size = 4}});
        std::vector<std::string> keys;
        for (int k = 0; k < 8; ++k)
            keys.push_back(long_key(k));
        for (int round = 0; round < 2; ++round) // every connection's session buffer grows once
            for (const auto& k : keys)
                r.acquire(k, 1s).release();
        const std::uint64_t n = allocations_during([&] {
            for (int i = 0; i < 1000; ++i) {
                auto l = r.acquire(keys[static_cast<std::size_t>(i % 8)], 1s);
                REQUIRE(l);
                CHECK(l->session() == keys[static_cast<std::size_t>(i % 8)]); // prepared with its role
            }
        });
        CHECK(n == 0);
    }
}
