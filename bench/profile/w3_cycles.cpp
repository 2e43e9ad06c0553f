// SPDX-License-Identifier: BSL-1.0
// W3 for a cache simulator: `w3_cycles <keys> <cycles>` builds the bare std::mutex +
// std::unordered_map keyed pool and a keypool registry of <keys> keys (max_size 2, one idle
// connection each, as bench/registry_bench.cpp), then runs <cycles> acquire + release cycles on
// keys picked at random from one pre-generated array, first on the baseline (run_baseline), then
// on the registry (run_keypool). Timing means nothing here: scripts/cache-profile.sh runs it under
// callgrind and divides each function's instructions and cache misses by <cycles>, figures that
// do not move with the machine's load (docs/benchmarks.md, "Why W3 costs what it costs").
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <random>
#include <string>
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

__attribute__((noinline)) void run_baseline(mutex_map_pool& p, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        const key_type k = g_keys[i & (g_keys.size() - 1)];
        int* c = p.acquire(k);
        asm volatile("" : : "r"(c) : "memory");
        if (c) p.release(k, c);
    }
}

__attribute__((noinline)) void run_keypool(registry& r, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        auto l = r.acquire(g_keys[i & (g_keys.size() - 1)]);
        asm volatile("" : : "r"(&l) : "memory");
    }
}

} // namespace

int main(int argc, char** argv) {
    const std::size_t keys = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000;
    const std::size_t cycles = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 200'000;
    if (keys == 0 || cycles == 0) return 2;
    std::mt19937_64 rng(42);
    g_keys.resize(std::size_t{1} << 16);
    for (auto& k : g_keys) k = rng() % keys;
    mutex_map_pool baseline(keys);
    registry r(key_resolver{}, keypool::fake::connector{},
               keypool::registry_options{.pool = {.max_size = 2}, .max_pools = keys, .max_connections = keys});
    for (key_type k = 0; k < keys; ++k) r.acquire(k).release(); // every key: a pool, one idle connection
    run_baseline(baseline, cycles);
    run_keypool(r, cycles);
    return 0;
}
