// SPDX-License-Identifier: BSL-1.0
// detail/percpu.hpp under real concurrency: owner threads take and put tokens in their own word
// (by concurrency id; ctest's stress.percpu_by_cpu runs it again by CPU number) with restartable
// sequences (they migrate, get preempted and get aborted by the remote's fences) while a remote
// thread keeps emptying and blocking the words with seize_all. No token may ever
// be held twice, and at the end every token is somewhere exactly once. Skipped where the process
// cannot use the sequences (e.g. under ThreadSanitizer, which builds pools with compare-and-swap).
#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include <keypool/detail/percpu.hpp>

namespace percpu = keypool::detail::percpu;

namespace {

constexpr std::uint32_t none = 0xFFFF;
constexpr std::uint32_t blocked = (1U << 16) | none;
constexpr std::uint32_t locked = (1U << 17) | blocked;
constexpr std::uint32_t words = 64; // every CPU id below 64 has a word
constexpr std::uint32_t tokens = 16;

struct alignas(64) cell {
    std::atomic<std::uint32_t> w{none};
};

struct shared_state {
    cell cells[words];
    std::mutex m; // the remote's lock, and the "idle stack" of tokens in no word
    std::vector<std::uint32_t> stack;
    std::atomic<int> holders[tokens] = {};
    std::atomic<bool> twice{false};

    std::atomic<std::uint32_t>* base() { return &cells[0].w; }
    void hold(std::uint32_t t) {
        if (holders[t].fetch_add(1) != 0) twice = true;
    }
    void drop(std::uint32_t t) { holders[t].fetch_sub(1); }
    void to_stack(std::uint32_t t) {
        std::lock_guard lk(m);
        stack.push_back(t);
    }
};

void owner(shared_state& s, int rounds) {
    for (int i = 0; i < rounds; ++i) {
        std::uint32_t t;
        if (!percpu::swap_if_below(s.base(), words, none, none, t)) {
            std::lock_guard lk(s.m);
            if (s.stack.empty()) continue;
            t = s.stack.back();
            s.stack.pop_back();
        }
        s.hold(t);
        s.drop(t);
        std::uint32_t old;
        if (percpu::swap_if_below(s.base(), words, none + 1, t, old)) {
            if (old != none) s.to_stack(old); // displaced: ours now
        } else {
            s.to_stack(t); // blocked, locked, or aborted
        }
    }
}

} // namespace

TEST_CASE("percpu: owners' sequences and a remote's seize_all never hand a token to two holders") {
    if (!percpu::available()) {
        MESSAGE("skipped: this process cannot use restartable sequences");
        return;
    }
    shared_state s;
    for (std::uint32_t t = 0; t < tokens; ++t) s.stack.push_back(t);
    std::atomic<bool> stop{false};
    std::vector<std::thread> owners;
    const unsigned n = std::max(4U, 2 * std::thread::hardware_concurrency());
    for (unsigned i = 0; i < n; ++i) owners.emplace_back([&] { owner(s, 300000); });
    std::thread remote([&] {
        for (int round = 0; !stop.load(std::memory_order_relaxed); ++round) {
            std::lock_guard lk(s.m);
            const std::uint32_t final = round % 4 == 3 ? blocked : none;
            percpu::seize_all(
                s.base(), words, none, final, locked, [&](std::uint32_t v) { return v % 2 == static_cast<std::uint32_t>(round % 2); },
                [&](std::uint32_t v) {
                    if (v < none) {
                        s.hold(v);
                        s.drop(v);
                        s.stack.push_back(v);
                    }
                },
                percpu::fence);
            if (final == blocked)
                for (auto& c : s.cells) c.w.store(none); // unblock: no owner commits on a blocked word
        }
    });
    for (auto& t : owners) t.join();
    stop = true;
    remote.join();

    CHECK_FALSE(s.twice.load());
    std::vector<int> seen(tokens, 0);
    for (std::uint32_t t : s.stack) ++seen[t];
    for (auto& c : s.cells)
        if (const std::uint32_t v = c.w.load(); v < none) ++seen[v];
    for (std::uint32_t t = 0; t < tokens; ++t) CHECK_MESSAGE(seen[t] == 1, "token " << t);
}
