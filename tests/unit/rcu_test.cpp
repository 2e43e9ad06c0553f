// SPDX-License-Identifier: BSL-1.0
// detail::rcu: a grace period ends only once every read section open when it began has ended;
// stamps; a thread's record is given back when the thread exits and reused by the next.
#include <memory>
#include <thread>

#include <doctest/doctest.h>
#include <keypool/detail/rcu.hpp>

using keypool::detail::rcu;
using keypool::detail::rcu_domain;
using keypool::detail::rcu_section;

TEST_SUITE("rcu") {

TEST_CASE("rcu: a grace period waits for the sections open when it began, not for later ones") {
    auto first = std::make_unique<rcu_section>();
    rcu_domain::grace_period gp(rcu);
    CHECK_FALSE(gp.done());
    CHECK_FALSE(gp.done()); // (asking again changes nothing)
    first.reset();
    {
        rcu_section later; // began after the grace period: not waited for
        CHECK(gp.done());
    }
    rcu.synchronize(); // no section open: returns at once
}

TEST_CASE("rcu: a stamp taken after an unlink has passed only once a later grace period ends") {
    const auto stamp = rcu.stamp();
    CHECK_FALSE(rcu.passed(stamp));
    auto reader = std::make_unique<rcu_section>();
    rcu_domain::grace_period gp(rcu);
    CHECK_FALSE(gp.done());
    CHECK_FALSE(rcu.passed(stamp));
    reader.reset();
    CHECK(gp.done());
    CHECK(rcu.passed(stamp));
    CHECK_FALSE(rcu.passed(rcu.stamp())); // a new stamp needs a new grace period
}

TEST_CASE("rcu: a section that leaves early is over for grace periods at once") {
    rcu_section s;
    s.leave();
    rcu_domain::grace_period gp(rcu);
    CHECK(gp.done());
    s.leave(); // (leaving twice is harmless; so is the destructor after it)
}

TEST_CASE("rcu: a thread's record goes back when the thread exits, and the next thread takes it") {
    unsigned mine = rcu_section().index(); // this thread's record, kept while it lives
    unsigned first = ~0U, second = ~0U;
    std::thread([&] {
        rcu_section s;
        first = s.index();
    }).join();
    std::thread([&] {
        rcu_section s;
        second = s.index();
    }).join();
    CHECK(first == second); // the same record: a per-thread counter slot stays with live threads
    CHECK(mine != first); // this thread holds a record of its own
    CHECK(rcu_section().index() == mine);
}
} // TEST_SUITE
