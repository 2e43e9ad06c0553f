// SPDX-License-Identifier: BSL-1.0
// detail::word_mutex, the 4-byte lock behind sync::mutex: Lockable semantics, one thread. The
// contended path (spin, then sleep and wake) is in tests/stress/word_mutex_stress_test.cpp.
#include <mutex>

#include <doctest/doctest.h>
#include <keypool/detail/word_mutex.hpp>
#include <keypool/policies/sync.hpp>

TEST_SUITE("word_mutex") {

TEST_CASE("word_mutex: one word, and sync::mutex uses it") {
    static_assert(sizeof(keypool::detail::word_mutex) == 4);
    static_assert(std::is_same_v<keypool::sync::mutex::mutex_type, keypool::detail::word_mutex>);
}

TEST_CASE("word_mutex: try_lock fails while held and succeeds after unlock") {
    keypool::detail::word_mutex m;
    CHECK(m.try_lock());
    CHECK_FALSE(m.try_lock());
    m.unlock();
    {
        std::lock_guard g(m);
        CHECK_FALSE(m.try_lock());
    }
    std::unique_lock lk(m);
    CHECK(lk.owns_lock());
    lk.unlock();
    CHECK(m.try_lock());
    m.unlock();
}

} // TEST_SUITE
