// SPDX-License-Identifier: BSL-1.0
// connection_budget: tokens, the callers' queue in arrival order, and the dry mark that spares
// queued callers a walk over every pool when the last walk found nothing idle.
#include <cstdint>
#include <functional>
#include <vector>

#include <keypool/detail/budget.hpp>

#include "../support/helpers.hpp"

using keypool::detail::connection_budget;

namespace {

/// A ticket whose wake-ups are counted.
struct counted_ticket : connection_budget::ticket {
    int woken = 0;
    counted_ticket() {
        wake = [](void* self) { ++static_cast<counted_ticket*>(self)->woken; };
        ctx = this;
    }
};

/// A budget whose trim finds `idle` connections, one per call, running `during` inside the walk.
struct walked_budget {
    connection_budget b{1, /*thread_safe=*/false};
    int idle = 0, walks = 0;
    std::function<void()> during;
    walked_budget() {
        b.set_trim([this](const void*, std::uint64_t& scanned) {
            ++scanned;
            ++walks;
            if (during) during();
            if (idle == 0) return false;
            --idle;
            return true;
        });
    }
};

} // namespace

TEST_SUITE("budget") {

TEST_CASE("tokens go to queued callers in arrival order before anyone new") {
    connection_budget b(1, false);
    CHECK(b.try_take());
    CHECK_FALSE(b.try_take());
    counted_ticket t1, t2;
    b.enqueue(t1);
    b.enqueue(t2);
    CHECK(b.has_tickets());
    b.give_back(); // to t1
    CHECK(t1.woken == 1);
    CHECK(t2.woken == 0);
    CHECK_FALSE(b.try_take()); // t2 still queued: no jumping the queue
    CHECK(b.leave(t1));        // granted
    CHECK_FALSE(b.leave(t2));
    CHECK_FALSE(b.has_tickets());
    CHECK(b.used() == 1);
}

TEST_CASE("a queued caller's walk that finds nothing spares later callers theirs") {
    walked_budget w;
    counted_ticket t1, t2;
    const std::uint64_t e1 = w.b.enqueue(t1);
    CHECK_FALSE(w.b.trim(nullptr, &e1));
    CHECK(w.walks == 1);
    CHECK(w.b.scans() == 1);
    CHECK(w.b.dry());
    const std::uint64_t e2 = w.b.enqueue(t2);
    CHECK(e2 == e1); // the same run of queued callers
    CHECK_FALSE(w.b.trim(nullptr, &e2));
    CHECK_FALSE(w.b.trim(nullptr)); // nor a caller about to queue
    CHECK(w.walks == 1);
    // The queue empties: the mark goes, and the next walk is made.
    (void)w.b.leave(t1);
    CHECK(w.b.dry());
    (void)w.b.leave(t2);
    CHECK_FALSE(w.b.dry());
    w.idle = 1;
    CHECK(w.b.trim(nullptr));
    CHECK(w.walks == 2);
}

TEST_CASE("a walk without a queued caller, or one that found a connection, marks nothing") {
    walked_budget w;
    CHECK_FALSE(w.b.trim(nullptr)); // nobody queued: an idle connection may appear any time
    CHECK_FALSE(w.b.dry());
    counted_ticket t;
    const std::uint64_t e = w.b.enqueue(t);
    w.idle = 1;
    CHECK(w.b.trim(nullptr, &e));
    CHECK_FALSE(w.b.dry());
    (void)w.b.leave(t);
}

TEST_CASE("a connection idled behind a walk, or after the mark, clears it") {
    walked_budget w;
    counted_ticket t;
    const std::uint64_t e = w.b.enqueue(t);
    SUBCASE("during the walk: the walk proves nothing") {
        w.during = [&] { w.b.idled(); };
        CHECK_FALSE(w.b.trim(nullptr, &e));
        CHECK_FALSE(w.b.dry());
    }
    SUBCASE("after the mark") {
        CHECK_FALSE(w.b.trim(nullptr, &e));
        REQUIRE(w.b.dry());
        w.b.idled();
        CHECK_FALSE(w.b.dry());
        w.idle = 1;
        CHECK(w.b.trim(nullptr, &e)); // the next caller walks and finds it
    }
    (void)w.b.leave(t);
}

TEST_CASE("a walk by a caller whose run of queued callers ended marks nothing") {
    walked_budget w;
    REQUIRE(w.b.try_take());
    counted_ticket t1, t2;
    const std::uint64_t e1 = w.b.enqueue(t1);
    // While it walks, its ticket is granted and the queue empties, then fills again: idle
    // connections made meanwhile were not closed for it.
    w.during = [&] {
        w.b.give_back();
        (void)w.b.leave(t1);
        (void)w.b.enqueue(t2);
    };
    CHECK_FALSE(w.b.trim(nullptr, &e1));
    CHECK_FALSE(w.b.dry());
    (void)w.b.leave(t2);
}

} // TEST_SUITE
