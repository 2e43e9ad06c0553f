// SPDX-License-Identifier: BSL-1.0
// W3: acquire + release through a registry for existing keys picked at random, against a bare
// std::mutex + std::unordered_map keyed pool with the same keys, in the same process.
// Names: BM_registry_keyed_<keys>/<impl>/real_time/threads:<T>; the baseline is registered first.
//
//   keys 1,000 / 10,000 / 100,000, threads 1 and 2: keypool (default eviction, lru + idle),
//     keypool_evict_none and the diagnostic keypool_null_connector (an int for a connection, a reset
//     that does nothing: what the fake connection's 120 inline bytes and its reset cost);
//   keys 10,000, thread 1, also one row per eviction policy: keypool_evict_lru, _idle, _size and
//     _all (lru + idle + size), with max_connections = keys so the size budget holds every key's
//     idle connection;
//   keys 1,000,000, threads 1 and 2: keypool and mutex_map only. Populating a million keys takes seconds
//     and ≈ 1.4 GB, so these rows run only with KEYPOOL_BENCH_1E6=1 in the environment.
//
// BM_registry_growth_latency_<keys>/<impl>/iterations:1/real_time/threads:<T>: a fresh registry (or
// baseline map) per run; the threads acquire and release keys 0..keys-1 in order (thread t takes
// every T-th key), so every acquire creates its key's pool (and connects) while the table grows and
// rehashes. Each acquire + release is timed with steady_clock; counters worst_us, p99_us, p999_us,
// over_1ms (how many took longer than 1 ms) and keys. keys = 100,000, or 1,000,000 with
// KEYPOOL_BENCH_1E6=1 (then replacing the 100,000 rows). Target (issue 5): worst ≤ 5 ms at 1e6.
// keypool_with_janitor (1 thread): the same while another thread runs maintain() and stats() back
// to back, as the busiest janitor and metrics scraper would.
//
// BM_registry_maintain_latency_<keys>/keypool/iterations:1/real_time/threads:2: a registry grown
// to <keys> keys with no maintain() on the way; one thread acquires and releases existing keys at
// random, timing each cycle, while the other runs maintain() once (counters worst_us, over_1ms,
// cycles; maintain_ms). No acquire may wait for the maintenance: session 20 found ≈ 290 cycles of
// 6–7 ms each at 1e6 keys while the arena's chunks were collapsed into huge pages. keys as above.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <memory>
#include <optional>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <thread>
#include <utility>
#include <vector>

#include <sys/resource.h>

#include <benchmark/benchmark.h>
#include <keypool/keypool.hpp>
#include "baselines/mutex_map_pool.hpp"
#include "baselines/null_connector.hpp"
#include "baselines/process.hpp"

// Counts live heap bytes (a size header per allocation), for the bytes-per-key figure.
namespace {
std::atomic<std::int64_t> g_live_bytes{0};
}
void* operator new(std::size_t n) {
    auto* p = static_cast<std::size_t*>(std::malloc(n + 16));
    if (!p) throw std::bad_alloc();
    *p = n;
    g_live_bytes.fetch_add(static_cast<std::int64_t>(n), std::memory_order_relaxed);
    return reinterpret_cast<char*>(p) + 16;
}
// Aligned allocations keep {size, malloc'd base} in the 16 bytes before the user pointer.
struct aligned_header {
    std::size_t size;
    void* base;
};
static aligned_header* header_of(void* user) noexcept {
    return reinterpret_cast<aligned_header*>(reinterpret_cast<std::uintptr_t>(user) - sizeof(aligned_header));
}
void* operator new(std::size_t n, std::align_val_t a) {
    const std::size_t al = std::max<std::size_t>(static_cast<std::size_t>(a), sizeof(aligned_header));
    void* base = std::malloc(n + 2 * al);
    if (!base) throw std::bad_alloc();
    const std::uintptr_t user = (reinterpret_cast<std::uintptr_t>(base) + 2 * al - 1) / al * al;
    void* p = reinterpret_cast<void*>(user);
    *header_of(p) = {n, base};
    g_live_bytes.fetch_add(static_cast<std::int64_t>(n), std::memory_order_relaxed);
    return p;
}
// Not inlined: once GCC inlines a replacement delete into a container's destructor it "sees" a
// free() of memory that came from new and a read before a node, and -Werror stops the build.
__attribute__((noinline)) void operator delete(void* p) noexcept {
    if (!p) return;
    auto* h = reinterpret_cast<std::size_t*>(static_cast<char*>(p) - 16);
    g_live_bytes.fetch_sub(static_cast<std::int64_t>(*h), std::memory_order_relaxed);
    std::free(h);
}
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
__attribute__((noinline)) void operator delete(void* p, std::align_val_t) noexcept {
    if (!p) return;
    aligned_header h = *header_of(p);
    g_live_bytes.fetch_sub(static_cast<std::int64_t>(h.size), std::memory_order_relaxed);
    std::free(h.base);
}
void operator delete(void* p, std::size_t, std::align_val_t a) noexcept { operator delete(p, a); }

namespace {

using key_t = std::uint64_t;

using keypool_bench::mutex_map_pool;

struct key_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const key_t& k, std::error_code&) const {
        return keypool::route<std::string>{"db" + std::to_string(k), {}};
    }
};

template <class Eviction, class Connector = keypool::fake::connector>
using registry_t = keypool::basic_registry<key_t, key_resolver, Connector, keypool::with_eviction<Eviction>>;

const std::vector<key_t>& random_keys(std::size_t keys) {
    static std::unordered_map<std::size_t, std::vector<key_t>> cache;
    static std::mutex m;
    std::lock_guard lk(m);
    auto& v = cache[keys];
    if (v.empty()) {
        std::mt19937_64 rng(42);
        v.resize(1 << 16);
        for (auto& k : v) k = rng() % keys;
    }
    return v;
}

// Shared fixtures: built by thread 0 once per (impl, key count) and kept across runs, since
// building 1e5 pools takes longer than the measurement.
template <class T>
std::unordered_map<std::size_t, std::shared_ptr<T>>& instances() {
    static std::unordered_map<std::size_t, std::shared_ptr<T>> m;
    return m;
}
template <class T>
std::shared_ptr<T>& shared_instance(std::size_t keys) { return instances<T>()[keys]; } // thread 0, before the loop
template <class T>
T& instance(std::size_t keys) { return *std::as_const(instances<T>()).find(keys)->second; } // any thread, in the loop
/// Seconds thread 0 took to build and populate the shared fixture (reported as the counter `setup_s`).
template <class T>
double& setup_seconds(std::size_t keys) {
    static std::unordered_map<std::size_t, double> m;
    return m[keys];
}
double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void baseline(benchmark::State& state, std::size_t keys) {
    if (state.thread_index() == 0 && !shared_instance<mutex_map_pool>(keys)) {
        const auto t0 = std::chrono::steady_clock::now();
        shared_instance<mutex_map_pool>(keys) = std::make_shared<mutex_map_pool>(keys);
        setup_seconds<mutex_map_pool>(keys) = since(t0);
    }
    const auto& ks = random_keys(keys);
    std::size_t i = static_cast<std::size_t>(state.thread_index()) * 7919;
    for (auto _ : state) {
        auto& p = instance<mutex_map_pool>(keys);
        const key_t k = ks[i++ & (ks.size() - 1)];
        int* c = p.acquire(k);
        benchmark::DoNotOptimize(c);
        if (c) p.release(k, c);
    }
    state.SetItemsProcessed(state.iterations());
    if (state.thread_index() == 0) state.counters["setup_s"] = setup_seconds<mutex_map_pool>(keys);
}

/// Baseline for the growth benchmark: the same bare map, but a key missing on acquire is added
/// (an empty idle list) and a connection is "opened" (one heap int), as a keyed pool must.
class mutex_map_growing {
public:
    ~mutex_map_growing() {
        for (auto& [k, v] : map_)
            for (int* c : v) delete c;
    }
    int* acquire(key_t k) {
        std::lock_guard lk(m_);
        auto& v = map_[k];
        if (v.empty()) return new int(static_cast<int>(k));
        int* c = v.back();
        v.pop_back();
        return c;
    }
    void release(key_t k, int* c) {
        std::lock_guard lk(m_);
        map_.find(k)->second.push_back(c);
    }

private:
    std::mutex m_;
    std::unordered_map<key_t, std::vector<int*>> map_;
};

/// Per-run state of a growth benchmark, shared by its threads: built by thread 0 before the loop
/// and read by it after the loop (the loop's start and end are barriers across the threads).
template <class T>
struct growth_run {
    std::unique_ptr<T> impl;
    std::vector<std::uint32_t> ns; // one sample per key: acquire + release, nanoseconds
};

/// `make()` builds a fresh instance (untimed); `cycle(impl, key)` is one acquire + release.
template <class T, class Make, class Cycle>
void growth_latency(benchmark::State& state, std::size_t keys, Make make, Cycle cycle) {
    static growth_run<T> g;
    const auto t = static_cast<std::size_t>(state.thread_index());
    const auto nt = static_cast<std::size_t>(state.threads());
    if (t == 0) {
        g.impl = make();
        g.ns.assign(keys, 0);
    }
    rusage ru0{};
    for (auto _ : state) { // once per thread (Iterations(1))
        if (t == 0) getrusage(RUSAGE_THREAD, &ru0);
        T& impl = *g.impl;
        for (std::size_t k = t; k < keys; k += nt) {
            const auto t0 = std::chrono::steady_clock::now();
            cycle(impl, static_cast<key_t>(k));
            const auto t1 = std::chrono::steady_clock::now();
            const auto d = std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
            g.ns[k] = static_cast<std::uint32_t>(std::min<std::int64_t>(d, UINT32_MAX));
        }
    }
    if (t != 0) return;
    rusage ru1{};
    getrusage(RUSAGE_THREAD, &ru1);
    std::vector<std::uint32_t> v = g.ns;
    const auto worst = std::max_element(v.begin(), v.end());
    state.counters["worst_us"] = *worst / 1e3;
    state.counters["worst_key"] = static_cast<double>(worst - v.begin()); // rehash points repeat across runs
    // Thread 0 taken off the CPU by the scheduler: on a loaded machine a ms-scale worst_us with
    // preemptions > 0 may be the scheduler's, not the table's.
    state.counters["preemptions"] = static_cast<double>(ru1.ru_nivcsw - ru0.ru_nivcsw);
    auto quantile_us = [&](double q) {
        const auto i = std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())));
        std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
        return v[i] / 1e3;
    };
    state.counters["p99_us"] = quantile_us(0.99);
    state.counters["p999_us"] = quantile_us(0.999);
    state.counters["over_1ms"] = static_cast<double>(
        std::count_if(v.begin(), v.end(), [](std::uint32_t x) { return x > 1'000'000; }));
    state.counters["keys"] = static_cast<double>(keys);
    g.impl.reset(); // tearing a million pools down takes a while: outside the timed loop
    g.ns = {};
}

void growth_mutex_map(benchmark::State& state, std::size_t keys) {
    growth_latency<mutex_map_growing>(
        state, keys, [] { return std::make_unique<mutex_map_growing>(); },
        [](mutex_map_growing& p, key_t k) {
            int* c = p.acquire(k);
            benchmark::DoNotOptimize(c);
            p.release(k, c);
        });
}

/// registry_options::huge_pages for the registries measured: KEYPOOL_BENCH_HUGE_PAGES=0 or 1 in
/// the environment, else the default (on from about 23,000 keys here).
std::optional<bool> huge_pages_from_env() {
    const char* h = std::getenv("KEYPOOL_BENCH_HUGE_PAGES");
    if (!h || !*h) return std::nullopt;
    return *h == '1';
}

/// The options of every registry measured here: `keys` pools of up to two connections, the
/// budget holding every key's idle connection, huge pages as KEYPOOL_BENCH_HUGE_PAGES says.
keypool::registry_options keyed_options(std::size_t keys) {
    return {.pool = {.max_size = 2, .use_coarse_ticker = false}, .max_pools = keys, .max_connections = keys,
            .huge_pages = huge_pages_from_env()};
}

/// Builds every key's pool (one idle connection each) in key order, calling maintain() 16 times
/// on the way and once after, as a janitor would: each call maps the spare huge-page chunks the
/// growth since the last one suggests (registry_options::huge_pages), so the pools built after
/// the first call sit in huge pages.
template <class Registry>
void grow_with_janitor(Registry& r, std::size_t keys) {
    const std::size_t every = std::max<std::size_t>(keys / 16, 1024);
    for (key_t k = 0; k < keys; ++k) {
        r.acquire(k).release();
        if ((k + 1) % every == 0) (void)r.maintain();
    }
    (void)r.maintain();
}

/// One thread acquires and releases existing keys at random, timing each cycle, while the other
/// runs the registry's first maintain() after growing to `keys` keys without one (the
/// maintenance with the most to do: every pool's checks, and with the arena, the spare chunks).
/// Counters: worst_us, over_1ms and cycles of the acquiring thread; maintain_ms, and again_ms for
/// the call after it (quiet pools left until due: registry_stats::pool_passes), again_vs_first.
void maintain_latency(benchmark::State& state, std::size_t keys) {
    const keypool::coarse_ticker ticker;
    using reg = registry_t<keypool::evict::all_of<keypool::evict::lru, keypool::evict::idle>>; // the default
    static std::unique_ptr<reg> r;
    static std::atomic<std::uint64_t> cycles{0};
    static std::atomic<bool> done{false};
    static double maintain_ms = 0, again_ms = 0;
    if (state.thread_index() == 0) {
        r = std::make_unique<reg>(key_resolver{}, keypool::fake::connector{}, keyed_options(keys));
        for (key_t k = 0; k < keys; ++k) r->acquire(k).release();
        cycles = 0;
        done = false;
    }
    double worst_us = 0;
    std::uint64_t over_1ms = 0;
    for (auto _ : state) { // once per thread (Iterations(1)); Google Benchmark starts both together
        if (state.thread_index() == 0) {
            while (cycles.load() < 100'000) {
            } // the other thread is acquiring
            const auto t0 = std::chrono::steady_clock::now();
            (void)r->maintain();
            maintain_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            done = true;
            // The next call, as a janitor's: the pools the first found quiet are left until due.
            const auto t1 = std::chrono::steady_clock::now();
            (void)r->maintain();
            again_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
        } else {
            std::mt19937_64 rng(11);
            while (!done.load(std::memory_order_relaxed)) {
                const auto k = static_cast<key_t>(rng() % keys);
                const auto t0 = std::chrono::steady_clock::now();
                {
                    auto l = r->acquire(k);
                    benchmark::DoNotOptimize(l);
                }
                const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
                worst_us = std::max(worst_us, us);
                over_1ms += us > 1000;
                cycles.fetch_add(1, std::memory_order_relaxed);
            }
        }
    }
    if (state.thread_index() == 1) {
        state.counters["worst_us"] = worst_us;
        state.counters["over_1ms"] = static_cast<double>(over_1ms);
        state.counters["cycles"] = static_cast<double>(cycles.load());
    }
    if (state.thread_index() == 0) {
        state.counters["maintain_ms"] = maintain_ms;
        state.counters["again_ms"] = again_ms;
        state.counters["again_vs_first"] = again_ms / maintain_ms; // (same process: the claim is this ratio)
    }
}

/// A registry with a janitor: a thread that runs maintain() and stats() back to back until the
/// registry goes (a busier janitor than any real one: every creation meets one at work).
template <class Registry>
struct with_janitor {
    Registry r;
    std::jthread janitor; // (declared after r: stopped and joined before r goes)
    template <class... A>
    explicit with_janitor(A&&... a) : r(std::forward<A>(a)...) {
        janitor = std::jthread([this](std::stop_token st) {
            while (!st.stop_requested()) {
                (void)r.maintain();
                benchmark::DoNotOptimize(r.stats());
            }
        });
    }
};

/// Growth of the default registry; `Janitor`: beside a busy janitor (with_janitor).
template <bool Janitor>
void growth_keypool(benchmark::State& state, std::size_t keys) {
    const keypool::coarse_ticker ticker; // only while keypool is measured (see keypool_registry)
    using reg = registry_t<keypool::evict::all_of<keypool::evict::lru, keypool::evict::idle>>; // the default
    using T = std::conditional_t<Janitor, with_janitor<reg>, reg>;
    growth_latency<T>(
        state, keys, [keys] { return std::make_unique<T>(key_resolver{}, keypool::fake::connector{}, keyed_options(keys)); },
        [](T& t, key_t k) {
            reg* r;
            if constexpr (Janitor) r = &t.r;
            else r = &t;
            auto l = r->acquire(k);
            benchmark::DoNotOptimize(l);
        });
}

/// `Try`: try_acquire() instead of acquire() (a diagnostic row: the call that never waits).
template <class Eviction, class Connector = keypool::fake::connector, bool Try = false>
void keypool_registry(benchmark::State& state, std::size_t keys) {
    // The registries live on between rows (shared_instance), so they are built without the coarse
    // ticker, and each thread holds it while a keypool row runs: the baselines' rows never run
    // beside the ticker's thread (on 2 vCPUs its wakeups would preempt their lock holders).
    const keypool::coarse_ticker ticker;
    using reg = registry_t<Eviction, Connector>;
    if (state.thread_index() == 0 && !shared_instance<reg>(keys)) {
        const auto t0 = std::chrono::steady_clock::now();
        auto r = std::make_shared<reg>(key_resolver{}, Connector{}, keyed_options(keys));
        grow_with_janitor(*r, keys); // every key has a pool and an idle connection
        shared_instance<reg>(keys) = std::move(r);
        setup_seconds<reg>(keys) = since(t0);
    }
    const auto& ks = random_keys(keys);
    std::size_t i = static_cast<std::size_t>(state.thread_index()) * 7919;
    for (auto _ : state) {
        auto& r = instance<reg>(keys);
        const key_t k = ks[i++ & (ks.size() - 1)];
        auto l = Try ? r.try_acquire(k) : r.acquire(k);
        benchmark::DoNotOptimize(l);
    }
    state.SetItemsProcessed(state.iterations());
    if (state.thread_index() == 0) state.counters["setup_s"] = setup_seconds<reg>(keys);
}

/// Heap bytes per key: a registry of `keys` keys, each with its pool and one idle connection,
/// minus the connections themselves (what the fake connector allocates per connection is measured
/// separately and subtracted). Reported as counters; the timing of this benchmark means nothing.
void memory_per_key(benchmark::State& state) {
    constexpr std::size_t keys = 10'000;
    double per_key = 0, per_conn = 0, baseline_per_key = 0;
    for (auto _ : state) {
        const auto before_conn = g_live_bytes.load();
        {
            keypool::fake::connector fc;
            std::vector<keypool::fake::connection> conns;
            conns.reserve(keys);
            const auto start = g_live_bytes.load();
            std::error_code ec;
            for (std::size_t i = 0; i < keys; ++i)
                conns.push_back(*fc.connect("db" + std::to_string(i), keypool::time_point::max(), {}, ec));
            per_conn = double(g_live_bytes.load() - start) / keys;
        }
        (void)before_conn;
        const auto before = g_live_bytes.load();
        {
            registry_t<keypool::evict::all_of<keypool::evict::lru, keypool::evict::idle>> r(
                key_resolver{}, keypool::fake::connector{}, {.pool = {.max_size = 2, .use_coarse_ticker = false}, .max_pools = keys});
            for (key_t k = 0; k < keys; ++k) r.acquire(k).release();
            const double heap = double(g_live_bytes.load() - before);
            // The pools' blocks come from the registry's arena (mmap), which the heap count does
            // not see: a record and a body per key.
            auto p = r.pool(0);
            const auto& x = keypool::detail::pool_access::core(*p)->shared();
            using core_t = std::remove_pointer_t<decltype(keypool::detail::pool_access::core(*p))>;
            const double arena = x.split() ? double(core_t::block_bytes(x)) : 0.0;
            per_key = heap / keys + arena - per_conn;
        }
        const auto before_base = g_live_bytes.load();
        {
            mutex_map_pool p(keys);
            baseline_per_key = double(g_live_bytes.load() - before_base) / keys;
        }
    }
    // Where the bytes are: per pool (table node with the entry, the core) and per connection slot
    // (each pool has max_size of them, in the core's block).
    using reg = registry_t<keypool::evict::all_of<keypool::evict::lru, keypool::evict::idle>>;
    using core = std::remove_pointer_t<decltype(keypool::detail::pool_access::core(std::declval<reg::pool_type&>()))>;
    state.counters["pool_core_bytes"] = static_cast<double>(sizeof(core));
    // A slot is its header (with the fake's 8-byte hot part) and its body (the connection and
    // maintain()'s notes), in two arrays of the block.
    constexpr std::size_t slot_bytes = sizeof(typename core::slot) + sizeof(typename core::slot_body);
    state.counters["slot_bytes"] = static_cast<double>(slot_bytes);
    state.counters["slot_bytes_beyond_connection"] =
        static_cast<double>(slot_bytes - sizeof(std::optional<keypool::fake::connection>));
    state.counters["registry_bytes_per_key_excl_connection"] = per_key;
    // The entry proper (table node with the entry, bucket share, pool core), without the key's
    // max_size = 2 slots: those are per-connection storage, each slot_bytes (the connection object
    // inline, slot_bytes_beyond_connection of it the pool's).
    state.counters["registry_entry_bytes_excl_slots"] = per_key - 2.0 * static_cast<double>(slot_bytes);
    state.counters["fake_connection_bytes"] = per_conn;
    state.counters["mutex_map_bytes_per_key"] = baseline_per_key;
}

void register_all() {
    using namespace keypool;
    benchmark::RegisterBenchmark("BM_registry_memory/keypool", memory_per_key)->Iterations(1);
    using lru_idle = evict::all_of<evict::lru, evict::idle>; // the registry's default
    auto add = [](const std::string& scenario, const char* impl, auto fn, std::size_t keys, int threads) {
        benchmark::RegisterBenchmark((scenario + "/" + impl).c_str(), fn, keys)->Threads(threads)->UseRealTime();
    };
    for (std::size_t keys : {1'000UL, 10'000UL, 100'000UL}) {
        for (int threads : {1, 2}) {
            const std::string scenario = "BM_registry_keyed_" + std::to_string(keys);
            add(scenario, "mutex_map", baseline, keys, threads);
            add(scenario, "keypool", keypool_registry<lru_idle>, keys, threads);
            add(scenario, "keypool_evict_none", keypool_registry<evict::none>, keys, threads);
            // Diagnostic: the default registry with an int for a connection and a reset that does
            // nothing (each key's allocation 280 bytes instead of the fake's 536).
            add(scenario, "keypool_null_connector", keypool_registry<lru_idle, keypool_bench::null_connector>, keys,
                threads);
            if (keys == 10'000) // diagnostic: the call that never waits (on 2 threads, a key's only
                                // connection may be out: then it returns an empty lease)
                add(scenario, "keypool_try_acquire", keypool_registry<lru_idle, keypool::fake::connector, true>, keys,
                    threads);
            if (keys == 10'000 && threads == 1) { // each eviction rule on its own, and all three
                add(scenario, "keypool_evict_lru", keypool_registry<evict::lru>, keys, threads);
                add(scenario, "keypool_evict_idle", keypool_registry<evict::idle>, keys, threads);
                add(scenario, "keypool_evict_size", keypool_registry<evict::size>, keys, threads);
                add(scenario, "keypool_evict_all",
                    keypool_registry<evict::all_of<evict::lru, evict::idle, evict::size>>, keys, threads);
            }
        }
    }
    const char* e1e6 = std::getenv("KEYPOOL_BENCH_1E6");
    const bool big = e1e6 && std::strcmp(e1e6, "1") == 0;
    {
        // Iterations(1): one growth from empty per run; repetitions as --benchmark_repetitions says.
        const std::size_t keys = big ? 1'000'000 : 100'000;
        const std::string scenario = "BM_registry_growth_latency_" + std::to_string(keys);
        for (int threads : {1, 2}) {
            benchmark::RegisterBenchmark((scenario + "/mutex_map").c_str(), growth_mutex_map, keys)
                ->Iterations(1)->Threads(threads)->UseRealTime();
            benchmark::RegisterBenchmark((scenario + "/keypool").c_str(), growth_keypool<false>, keys)
                ->Iterations(1)->Threads(threads)->UseRealTime();
        }
        benchmark::RegisterBenchmark((scenario + "/keypool_with_janitor").c_str(), growth_keypool<true>, keys)
            ->Iterations(1)->Threads(1)->UseRealTime();
    }
    {
        const std::size_t keys = big ? 1'000'000 : 100'000;
        const std::string scenario = "BM_registry_maintain_latency_" + std::to_string(keys) + "/keypool";
        benchmark::RegisterBenchmark(scenario.c_str(), maintain_latency, keys)->Iterations(1)->Threads(2)->UseRealTime();
    }
    if (big) {
        constexpr std::size_t keys = 1'000'000;
        const std::string scenario = "BM_registry_keyed_" + std::to_string(keys);
        for (int threads : {1, 2}) {
            add(scenario, "mutex_map", baseline, keys, threads);
            add(scenario, "keypool", keypool_registry<lru_idle>, keys, threads);
        }
    }
}

} // namespace

int main(int argc, char** argv) {
    register_all();
    keypool_bench::make_process_multithreaded();
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
