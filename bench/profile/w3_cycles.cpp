// SPDX-License-Identifier: BSL-1.0
// W3 for a cache simulator: `w3_cycles <keys> <cycles>` builds the bare std::mutex +
// std::unordered_map keyed pool and a keypool registry of <keys> keys (max_size 2, one idle
// connection each, as bench/registry_bench.cpp), then runs <cycles> acquire + release cycles on
// keys picked at random from one pre-generated array, first on the baseline (run_baseline), then
// on the registry (run_keypool). Timing means nothing here: scripts/cache-profile.sh runs it under
// callgrind and divides each function's instructions and cache misses by <cycles>, figures that
// do not move with the machine's load (docs/benchmarks.md, "Why W3 costs what it costs").
//
// `w3_cycles <keys> <cycles> <rounds>` times instead: <rounds> rounds, each running the baseline
// and then the registry for <cycles> cycles (after a quarter as many to warm the caches), and
// prints the median over rounds of registry time ÷ the same round's baseline time, with its range
// and the baseline's median time. On a shared machine the baseline's own time moves by 2× within
// minutes (docs/benchmarks.md, "Session 13"); a ratio taken round by round follows it.
//
// `w3_cycles <keys> <cycles> <rounds> <threads>`: the same with <threads> threads running
// <cycles> cycles each at once (each from its own place in the key array), timed from a common
// start until the last one ends; it prints the median over rounds of the registry's throughput ÷
// the same round's baseline throughput (W3's 2-thread target is >= 4x). registry_bench's rows
// time the two sides minutes apart, and the baseline's 2-thread collapse alone moves by 2× from
// run to run there.
//
// W3_HUGE_PAGES=0 or 1 in the environment turns the registry's huge-page arena off or on
// (registry_options::huge_pages; by default on from about 23,000 keys here).
//
// The keys are 0 .. <keys> - 1 (consecutive tenant ids), or, with W3_RANDOM_KEYS=1 in the
// environment, <keys> random 64-bit integers (the same on both sides): the baseline's
// std::unordered_map is at its best on consecutive ids (its identity hash puts key k in bucket k,
// next to key k - 1's node), and random keys show how much of a ratio that is.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <keypool/keypool.hpp>
#include "../baselines/mutex_map_pool.hpp"

namespace {

using key_type = std::uint64_t;

struct key_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const key_type& k, std::error_code&) const {
        return keypool::route<std::string>{"db" + std::to_string(k), {}};
    }
};

using keypool_bench::mutex_map_pool;

using registry = keypool::registry<key_type, key_resolver, keypool::fake::connector>;

std::vector<key_type> g_keys; // a power of two of them

__attribute__((noinline)) void run_baseline(mutex_map_pool& p, std::size_t n, std::size_t from = 0) {
    for (std::size_t i = from; i < from + n; ++i) {
        const key_type k = g_keys[i & (g_keys.size() - 1)];
        int* c = p.acquire(k);
        asm volatile("" : : "r"(c) : "memory");
        if (c) p.release(k, c);
    }
}

__attribute__((noinline)) void run_keypool(registry& r, std::size_t n, std::size_t from = 0) {
    for (std::size_t i = from; i < from + n; ++i) {
        auto l = r.acquire(g_keys[i & (g_keys.size() - 1)]);
        asm volatile("" : : "r"(&l) : "memory");
    }
}

/// Nanoseconds per cycle of `run(n, from)`, after a warm-up of n / 4 cycles.
template <class Run>
double ns_per_cycle(std::size_t n, Run run) {
    run(n / 4, 0);
    const auto t0 = std::chrono::steady_clock::now();
    run(n, n / 4);
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / double(n);
}

/// Seconds from a common start until `threads` threads have each run `run(n, from)` (each from
/// its own offset in the key array), after each has run a quarter as many to warm its caches.
template <class Run>
double seconds_on_threads(int threads, std::size_t n, Run run) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
            const std::size_t from = static_cast<std::size_t>(t) * (g_keys.size() / static_cast<std::size_t>(threads));
            run(n / 4, from);
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) {
            }
            run(n, from + n / 4);
        });
    while (ready.load() != threads) {
    }
    const auto t0 = std::chrono::steady_clock::now();
    go.store(true, std::memory_order_release);
    for (auto& t : ts) t.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
    const std::size_t keys = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000;
    const std::size_t cycles = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 200'000;
    const int rounds = argc > 3 ? std::atoi(argv[3]) : 0;
    const int threads = argc > 4 ? std::atoi(argv[4]) : 0;
    if (keys == 0 || cycles == 0 || rounds < 0 || threads < 0 || threads > 64 || (threads > 0 && rounds == 0)) return 2;
    // As every benchmark binary (baselines/process.hpp): once a second thread has run, glibc's
    // mutex takes a locked instruction. (Not under callgrind: its figures stay comparable.)
    if (rounds > 0) std::thread([] {}).join();
    std::mt19937_64 rng(42);
    std::vector<key_type> ids(keys);
    const char* random_keys = std::getenv("W3_RANDOM_KEYS");
    std::mt19937_64 id_rng(7);
    for (std::size_t i = 0; i < keys; ++i) ids[i] = random_keys && *random_keys == '1' ? id_rng() : i;
    g_keys.resize(std::size_t{1} << 16);
    for (auto& k : g_keys) k = ids[rng() % keys];
    mutex_map_pool baseline(ids);
    // W3_HUGE_PAGES=0 or 1 sets registry_options::huge_pages (default: on from ~23,000 keys).
    std::optional<bool> huge_pages;
    if (const char* h = std::getenv("W3_HUGE_PAGES"); h && *h) huge_pages = *h == '1';
    registry r(key_resolver{}, keypool::fake::connector{},
               keypool::registry_options{.pool = {.max_size = 2, .use_coarse_ticker = false}, .max_pools = keys,
                                         .max_connections = keys, .huge_pages = huge_pages});
    // Every key: a pool, one idle connection. maintain() 16 times on the way and once after, as
    // a janitor would: each call maps the spare huge-page chunks the pools built after it use
    // (registry_options::huge_pages; the pools built before the first call keep ordinary pages).
    const std::size_t every = std::max<std::size_t>(keys / 16, 1024);
    for (std::size_t i = 0; i < keys; ++i) {
        r.acquire(ids[i]).release();
        if ((i + 1) % every == 0) (void)r.maintain();
    }
    (void)r.maintain();
    // The registry's coarse ticker runs only while the registry is measured (its thread's wakeups
    // would interrupt the baseline's rounds too): built without it, and a ticker held around
    // run_keypool, as registry_bench does.
    if (rounds == 0) {
        run_baseline(baseline, cycles);
        const keypool::coarse_ticker ticker;
        run_keypool(r, cycles);
        return 0;
    }
    // Nanoseconds per cycle (per thread, wall time from the common start, with threads).
    auto timed = [&](auto run) {
        return threads > 0 ? seconds_on_threads(threads, cycles, run) * 1e9 / double(cycles) : ns_per_cycle(cycles, run);
    };
    std::vector<double> ratio, base;
    for (int i = 0; i < rounds; ++i) {
        const double b = timed([&](std::size_t n, std::size_t from) { run_baseline(baseline, n, from); });
        const keypool::coarse_ticker ticker;
        const double k = timed([&](std::size_t n, std::size_t from) { run_keypool(r, n, from); });
        base.push_back(b);
        ratio.push_back(threads > 0 ? b / k : k / b); // throughput ratio with threads, else time ratio
    }
    const auto [lo, hi] = std::minmax_element(ratio.begin(), ratio.end());
    if (threads > 0)
        std::printf("%zu keys, %d threads, %d rounds of %zu cycles each: registry throughput / baseline %.2fx median (%.2f-%.2f), baseline median %.1f ns per cycle per thread\n",
                    keys, threads, rounds, cycles, median(ratio), *lo, *hi, median(base));
    else
        std::printf("%zu keys, %d rounds of %zu cycles: registry / baseline %.2fx median (%.2f-%.2f), baseline median %.1f ns\n",
                    keys, rounds, cycles, median(ratio), *lo, *hi, median(base));
    return 0;
}
