// SPDX-License-Identifier: BSL-1.0
// detail/percpu.hpp: the restartable sequence on the calling CPU's word (what it commits and
// what it refuses), the remote side's seize_all (what it takes, what it leaves to an owner that
// committed during its fence), and a pool whose idle connection sits in another CPU's cache.
// The sequences need rseq and membarrier (not under ThreadSanitizer); where the process cannot
// use them the test checks that they refuse. Cases that pin the thread to a CPU say so and skip
// when the CPU is not available to the process.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../support/helpers.hpp"

#include <keypool/detail/percpu.hpp>

using namespace std::chrono_literals;
namespace percpu = keypool::detail::percpu;

namespace {

constexpr std::uint32_t none = 0xFFFF;
constexpr std::uint32_t blocked = (1U << 16) | none;
constexpr std::uint32_t locked = (1U << 17) | blocked;

struct alignas(64) cell {
    std::atomic<std::uint32_t> w{none};
};
static_assert(sizeof(cell) == percpu::stride);

/// Pins the calling thread to `cpu` for its scope, if the process may run there.
class pin {
public:
    explicit pin(int cpu) {
        ok_ = sched_getaffinity(0, sizeof(old_), &old_) == 0 && CPU_ISSET(cpu, &old_);
        if (ok_) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            ok_ = sched_setaffinity(0, sizeof(one), &one) == 0;
        }
    }
    ~pin() {
        if (ok_) (void)sched_setaffinity(0, sizeof(old_), &old_);
    }
    pin(const pin&) = delete;
    pin& operator=(const pin&) = delete;
    explicit operator bool() const noexcept { return ok_; }

private:
    cpu_set_t old_{};
    bool ok_ = false;
};

bool take(cell* cells, std::uint32_t n, std::uint32_t& old) {
    return percpu::swap_if_below(&cells[0].w, n, none, none, old);
}
bool put(cell* cells, std::uint32_t n, std::uint32_t v, std::uint32_t& old) {
    return percpu::swap_if_below(&cells[0].w, n, none + 1, v, old);
}
/// A put whose caller never reads the old value (a dead output of the sequence's asm goto).
bool put_discarding_old(cell* cells, std::uint32_t n, std::uint32_t v) {
    std::uint32_t old;
    return percpu::swap_if_below(&cells[0].w, n, none + 1, v, old);
}

} // namespace

TEST_SUITE("percpu") {

/// The sequence's contract on word `j`, the caller's (`cells` has 4 words, j < 3): the first
/// check that fails, or nullptr.
const char* sequence_on_word(cell* cells, std::uint32_t j) {
    auto others_empty = [&] {
        for (std::uint32_t i = 0; i < 4; ++i)
            if (i != j && cells[i].w.load() != none) return false;
        return true;
    };
    std::uint32_t old = 12345;
    if (take(cells, 4, old) || cells[j].w.load() != none) return "empty word: nothing to take";
    if (!put(cells, 4, 3, old) || old != none || cells[j].w.load() != 3 || !others_empty())
        return "empty word: the put commits on the caller's word only";
    if (!put(cells, 4, 5, old) || old != 3 || cells[j].w.load() != 5)
        return "occupied word: exchanged, the caller gets the old value back";
    if (!take(cells, 4, old) || old != 5 || cells[j].w.load() != none) return "take empties the word";
    // g++ 12 deletes an asm goto whose outputs are all dead unless it is volatile: the put then
    // reported success and stored nothing.
    if (!put_discarding_old(cells, 4, 6) || cells[j].w.load() != 6)
        return "a put whose caller ignores the old value still commits";
    if (!take(cells, 4, old) || old != 6) return "take empties the word again";
    for (std::uint32_t refused : {blocked, locked}) {
        cells[j].w = refused;
        if (put(cells, 4, 7, old) || take(cells, 4, old) || cells[j].w.load() != refused)
            return "a blocked or locked word refuses both";
    }
    cells[j].w = 9;
    if (take(cells, j, old) || put(cells, j, 4, old) || cells[j].w.load() != 9 || cells[0].w.load() != (j == 0 ? 9U : none))
        return "no word among the first j: refused, nothing written";
    return nullptr;
}

TEST_CASE("the sequence on the calling thread's word commits only below its limit, and only on that word") {
    if (!percpu::available()) {
        cell cells[4];
        std::uint32_t old = 12345;
        MESSAGE("rseq or membarrier unavailable here: the sequences must refuse");
        CHECK_FALSE(put(cells, 4, 3, old));
        for (auto& c : cells) CHECK(c.w.load() == none);
        return;
    }
    if (percpu::indexed_by_cpu()) { // words are CPUs': pin to CPU 1, so word 1
        pin on(1);
        if (!on) {
            MESSAGE("skipped: CPU 1 is not available to this process");
            return;
        }
        cell cells[4];
        REQUIRE(percpu::current_index() == 1);
        const char* failed = sequence_on_word(cells, 1);
        CHECK_MESSAGE(failed == nullptr, std::string(failed ? failed : ""));
        return;
    }
    // Concurrency ids: this thread's word is whichever id it runs with; the kernel may renumber a
    // thread when it is scheduled, so a run during which the id moved is not a verdict.
    for (int attempt = 0; attempt < 10; ++attempt) {
        const std::uint32_t j = percpu::current_index();
        if (j >= 3) {
            MESSAGE("skipped: this thread's concurrency id is " << j);
            return;
        }
        cell cells[4];
        const char* failed = sequence_on_word(cells, j);
        if (percpu::current_index() != j) continue;
        CHECK_MESSAGE(failed == nullptr, std::string(failed ? failed : ""));
        return;
    }
    MESSAGE("skipped: the concurrency id moved during every attempt");
}

TEST_CASE("seize_all takes every held value and leaves each word final, with one fence per round") {
    cell cells[4];
    std::vector<int> fences;
    std::vector<std::uint32_t> taken;
    auto fence = [&](int cpu) { fences.push_back(cpu); };
    auto collect = [&](std::uint32_t v) { taken.push_back(v); };
    auto all = [](std::uint32_t) { return true; };

    SUBCASE("emptying: words holding a value are taken, empty and blocked ones are left alone") {
        cells[0].w = 2;
        cells[2].w = 7;
        cells[3].w = blocked;
        percpu::seize_all(&cells[0].w, 4, none, none, locked, all, collect, fence);
        CHECK(taken == std::vector<std::uint32_t>{2, 7});
        CHECK(fences == std::vector<int>{-1}); // two words: every CPU
        CHECK(cells[0].w.load() == none);
        CHECK(cells[1].w.load() == none);
        CHECK(cells[2].w.load() == none);
        CHECK(cells[3].w.load() == blocked);
    }
    SUBCASE("one word to take: the fence goes to its CPU only") {
        cells[3].w = 1;
        percpu::seize_all(&cells[0].w, 4, none, none, locked, all, collect, fence);
        CHECK(taken == std::vector<std::uint32_t>{1});
        CHECK(fences == std::vector<int>{3});
    }
    SUBCASE("emptying takes only the values the caller wants") {
        cells[0].w = 2;
        cells[1].w = 3;
        percpu::seize_all(&cells[0].w, 4, none, none, locked, [](std::uint32_t v) { return v == 3; }, collect, fence);
        CHECK(taken == std::vector<std::uint32_t>{3});
        CHECK(fences == std::vector<int>{1});
        CHECK(cells[0].w.load() == 2);
        CHECK(cells[1].w.load() == none);
    }
    SUBCASE("blocking takes over every word, wanted or not") {
        cells[0].w = 2;
        percpu::seize_all(&cells[0].w, 2, none, blocked, locked, [](std::uint32_t) { return false; }, collect, fence);
        CHECK(taken == std::vector<std::uint32_t>{2, none});
        CHECK(cells[0].w.load() == blocked);
    }
    SUBCASE("nothing to take: no fence") {
        percpu::seize_all(&cells[0].w, 4, none, none, locked, all, collect, fence);
        CHECK(taken.empty());
        CHECK(fences.empty());
    }
    SUBCASE("blocking: every word not yet blocked is taken over, empty ones too") {
        cells[0].w = 2;
        cells[3].w = blocked;
        percpu::seize_all(&cells[0].w, 4, none, blocked, locked, all, collect, fence);
        CHECK(taken == std::vector<std::uint32_t>{2, none, none});
        CHECK(fences == std::vector<int>{-1});
        for (auto& c : cells) CHECK(c.w.load() == blocked);
    }
}

TEST_CASE("seize_all leaves a value to the owner whose sequence committed during the fence") {
    cell cells[2];
    std::vector<std::uint32_t> taken;
    auto collect = [&](std::uint32_t v) { taken.push_back(v); };
    auto all = [](std::uint32_t) { return true; };
    int fences = 0;

    SUBCASE("the owner took the value: the remote gets nothing") {
        cells[1].w = 4;
        percpu::seize_all(&cells[0].w, 2, none, none, locked, all, collect, [&](int cpu) {
            ++fences;
            CHECK(cpu == 1);
            if (fences == 1) cells[1].w.store(none); // the owner's take, loaded before the lock
        });
        CHECK(taken.empty());
        CHECK(cells[1].w.load() == none);
        CHECK(fences == 1);
    }
    SUBCASE("the owner put another: the remote tries again and takes that one") {
        cells[0].w = 4;
        percpu::seize_all(&cells[0].w, 2, none, blocked, locked, all, collect, [&](int) {
            if (++fences == 1) cells[0].w.store(6); // the owner's put (it keeps 4 itself)
        });
        CHECK(taken == std::vector<std::uint32_t>{none, 6}); // word 1 (empty) in round 1, word 0's 6 in round 2
        CHECK(cells[0].w.load() == blocked);
        CHECK(cells[1].w.load() == blocked);
        CHECK(fences == 2);
    }
}

/// Whether a thread's cache word follows its CPU (rseq by CPU number, or compare-and-swap), so
/// pinning decides the word; else words follow concurrency ids (by_concurrency_id below).
bool words_follow_cpus() { return !percpu::available() || percpu::indexed_by_cpu(); }

/// Words follow CPUs: runs `use()` (an acquire and release) pinned to CPU 1, so the connection it
/// returns lands in CPU 1's word. False, with a message, where words follow concurrency ids or
/// CPUs 0 and 1 are not both available.
template <class Use>
bool return_on_cpu1(Use use) {
    if (!words_follow_cpus()) {
        MESSAGE("skipped: cache words follow concurrency ids here (KEYPOOL_RSEQ_INDEX=cpu runs it)");
        return false;
    }
    for (int cpu : {0, 1})
        if (!pin(cpu)) {
            MESSAGE("skipped: CPU " << cpu << " is not available to this process");
            return false;
        }
    pin on(1);
    use();
    return true;
}

/// Concurrency ids: runs `use()` (an acquire and release) on a helper thread while this thread
/// spins — two threads running at once have different ids — so the connection it returns lands
/// in the helper's word. True once that word is below 2 and differs from this thread's, and
/// neither thread's id moved meanwhile (an attempt in which one did is repeated).
template <class Use>
bool return_under_other_id(Use use) {
    for (int attempt = 0; attempt < 20; ++attempt) {
        std::atomic<int> stage{0};
        std::uint32_t h1 = 0, h2 = 1;
        std::thread helper([&] {
            while (stage.load() == 0) {
            }
            h1 = percpu::current_index();
            use(); // returned into word h1
            h2 = percpu::current_index();
            stage.store(2);
        });
        stage.store(1);
        const std::uint32_t m = percpu::current_index();
        while (stage.load() != 2) {
        }
        helper.join();
        if (h1 == h2 && h1 != m && h1 < 2 && percpu::current_index() == m) return true;
    }
    return false;
}

TEST_CASE("an idle connection cached under another concurrency id is found by try_acquire") {
    if (words_follow_cpus()) {
        MESSAGE("skipped: cache words follow CPUs here (the next test)");
        return;
    }
    kp_test::fixture f;
    auto p = f.make<>({.max_size = 1, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt, .cpu_caches = 2});
    // A helper returns the connection into its word; this thread, with another id, must steal it.
    if (return_under_other_id([&] { auto l = p.acquire(1s); })) {
        auto l = p.try_acquire(); // this thread's word and the stack are empty
        REQUIRE(l);
        const auto s = p.stats();
        CHECK(s.waits == 0);
        CHECK(s.connects_ok == 1);
        return;
    }
    MESSAGE("skipped: the two threads never ran with different ids below 2 at once");
}

TEST_CASE("an idle connection cached by another CPU is found by try_acquire and acquire") {
    kp_test::fixture f;
    auto p = f.make<>({.max_size = 1, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt, .cpu_caches = 2});
    if (!return_on_cpu1([&] { auto l = p.acquire(1s); })) return;
    {
        pin on(0);
        REQUIRE(on);
        auto l = p.try_acquire();
        REQUIRE(l);
    } // now in CPU 0's cache
    {
        pin on(1);
        REQUIRE(on);
        auto l = p.acquire(1s);
        CHECK(l);
    }
    const auto s = p.stats();
    CHECK(s.waits == 0);
    CHECK(s.connects_ok == 1);
    CHECK(f.fake.live() == 1);
}

TEST_CASE("a registry's try_acquire finds its key's idle connection cached in another word") {
    // A registry pool with caches (max_size 8: two words) whose only idle connection sits in a
    // word that is not this thread's: acquire would steal it on its slow path; try_acquire must
    // find it too instead of answering "nothing idle".
    kp_test::fixture f;
    keypool::registry<std::string, keypool::resolve::identity<std::string>, keypool::fake::connector> r(
        keypool::resolve::identity<std::string>{}, f.fake,
        keypool::registry_options{.pool = {.max_size = 8, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt,
                                           .cpu_caches = 2}});
    bool placed = false;
    std::optional<pin> here;
    if (words_follow_cpus()) {
        placed = return_on_cpu1([&] { auto l = r.acquire("db"); });
        if (placed) here.emplace(0); // this thread's word: CPU 0's
    } else {
        placed = return_under_other_id([&] { auto l = r.acquire("db"); });
    }
    if (!placed) {
        MESSAGE("skipped: could not leave the connection in another word");
        return;
    }
    auto l = r.try_acquire("db");
    CHECK(l);
    CHECK(f.fake.stats().connects == 1);
}

TEST_CASE("the automatic cpu_caches covers the CPUs this thread may use, not every CPU of the host") {
    using core = keypool::detail::pool_core<keypool::fake::connector, keypool::steady_clock, keypool::sync::mutex,
                                            keypool::null_observer, keypool::reset_at::checkout>;
    const keypool::pool_options o{.max_size = 256}; // up to 64 words: the CPUs bound it
    cpu_set_t all;
    REQUIRE(sched_getaffinity(0, sizeof(all), &all) == 0);
    int first = 0;
    while (!CPU_ISSET(first, &all)) ++first;
    int count = CPU_COUNT(&all), span = 0;
    for (int i = 0; i < CPU_SETSIZE; ++i)
        if (CPU_ISSET(i, &all)) span = i + 1;
    // Word j is CPU j's only in rseq mode numbered by CPU; by id or CASed, the CPUs' count matters.
    const bool by_number = percpu::available() && percpu::indexed_by_cpu();
    auto words_for = [](int cpus) { return static_cast<std::uint16_t>(std::bit_floor(static_cast<unsigned>(std::min(cpus, 64)))); };
    CHECK(core::cache_count(o) == words_for(by_number ? span : count));
    {
        pin one(first); // a container's cpuset of one CPU
        REQUIRE(one);
        CHECK(core::cache_count(o) == words_for(by_number ? first + 1 : 1));
    }
    keypool::pool_options fixed = o;
    fixed.cpu_caches = 8;
    CHECK(core::cache_count(fixed) == 8); // an explicit count is kept
    CHECK(core::cache_count({.max_size = 7}) <= 1); // at most max_size / 4
}

TEST_CASE("a forked child steals another CPU's cached connection: the fence works there too") {
    // The parent registered for membarrier's rseq fence (available(), cached for the process);
    // the child relies on having inherited that registration. Were it lost, the child's steal
    // would fail its fence: the child exits non-zero (or, from fence(), aborts) instead of
    // returning the connection.
    kp_test::fixture f;
    auto p = f.make<>({.max_size = 1, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt, .cpu_caches = 2});
    if (!return_on_cpu1([&] { auto l = p.acquire(1s); })) return;
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        alarm(20); // a hang guard only: a child stuck in a fence dies instead of stalling the run
        int code = 0;
        {
            pin on(0);
            if (!on) _exit(3);
            auto l = p.try_acquire(); // CPU 0's cache and the stack are empty: steal CPU 1's
            if (!l) code = 1;
        }
        if (p.stats().connects_ok != 1) code = 2;
        _exit(code);
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

} // TEST_SUITE
