// SPDX-License-Identifier: BSL-1.0
// Acquire + release cycles of one pool of 8 connections, keypool against a bare
// std::mutex + std::vector pool in the same process (registered first in every scenario).
//
//   BM_pool_uncontended/<impl>                  W1: one thread, acquire then release at once.
//   BM_pool_contended/<impl>/real_time/threads:N  W2: N threads (2, 8, 32) share one pool of 8.
//
// Every knob comes from the command line (see docs/benchmarks.md); nothing here fixes a minimum
// time or a repetition count. bench/summarize.py turns the JSON output into ratios.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

#include <benchmark/benchmark.h>

#include <keypool/keypool.hpp>

#include "baselines/mutex_vector_pool.hpp"
#include "baselines/null_connector.hpp"
#include "baselines/process.hpp"

namespace {

using fake_connection = keypool::fake::connection;
constexpr std::size_t max_size = 8;
constexpr int max_threads = 32;
/// Cycles per thread of the keypool_no_yield rows (see register_benchmarks).
constexpr benchmark::IterationCount no_yield_iterations = 20'000;

keypool::pool_options options(bool yield_after_handoff = true) {
    keypool::pool_options o;
    o.max_size = max_size;
    o.yield_after_handoff = yield_after_handoff;
    return o;
}

/// Fills a keypool pool to max_size idle connections: acquire them all at once, then drop them.
template <class Pool>
void prefill(Pool& p) {
    std::vector<typename Pool::lease> held;
    held.reserve(max_size);
    for (std::size_t i = 0; i < max_size; ++i) held.push_back(p.acquire());
}

void init_connection(fake_connection& c, std::size_t i) {
    c.id = i + 1;
    c.target = "db";
}

using keypool_bench::null_connector;

// ---- wait samples (W2) ---------------------------------------------------------------------
// Each benchmark thread records the waits of its own acquires that found no idle connection into
// its own buffer; thread 0 reads them all after the loop (the end-of-loop barrier orders that).

struct alignas(64) sample_buffer {
    std::vector<std::uint32_t> ns;
};
std::array<sample_buffer, max_threads> wait_samples;
thread_local std::vector<std::uint32_t>* my_samples = nullptr;

void record_wait(std::chrono::nanoseconds d) {
    if (my_samples)
        my_samples->push_back(static_cast<std::uint32_t>(std::min<std::int64_t>(d.count(), UINT32_MAX)));
}

/// keypool observer: the pool measures every wait anyway; this only stores the figure.
struct wait_sampler {
    void on_wait(std::chrono::nanoseconds waited, std::error_code ec) {
        if (!ec) record_wait(waited);
    }
};

/// Baseline hook: the same measurement on the baseline's wait path.
struct baseline_wait_hook {
    void operator()(std::chrono::nanoseconds waited) const { record_wait(waited); }
};

void begin_sampling(const benchmark::State& state) {
    auto& mine = wait_samples[static_cast<std::size_t>(state.thread_index())].ns;
    mine.clear();
    my_samples = &mine;
}

/// Thread 0, after the loop: wait percentiles over every thread's samples, as counters.
void report_wait_samples(benchmark::State& state) {
    std::vector<std::uint32_t> all;
    for (int t = 0; t < state.threads(); ++t) {
        const auto& v = wait_samples[static_cast<std::size_t>(t)].ns;
        all.insert(all.end(), v.begin(), v.end());
    }
    const double total = static_cast<double>(state.iterations()) * state.threads();
    state.counters["waited_pct"] = total > 0 ? 100.0 * static_cast<double>(all.size()) / total : 0.0;
    if (all.empty()) {
        state.counters["wait_p50_us"] = 0;
        state.counters["wait_p99_us"] = 0;
        state.counters["wait_max_us"] = 0;
        return;
    }
    auto pct = [&](double q) {
        auto k = static_cast<std::size_t>(q * static_cast<double>(all.size() - 1));
        std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end());
        return static_cast<double>(all[k]) / 1000.0;
    };
    state.counters["wait_p50_us"] = pct(0.50);
    state.counters["wait_p99_us"] = pct(0.99);
    state.counters["wait_max_us"] = static_cast<double>(*std::max_element(all.begin(), all.end())) / 1000.0;
}

// ---- W1: uncontended -----------------------------------------------------------------------

void uncontended_mutex_vector(benchmark::State& state) {
    keypool_bench::mutex_vector_pool<fake_connection> pool(max_size, init_connection);
    for (auto _ : state) {
        fake_connection* c = pool.acquire();
        benchmark::DoNotOptimize(c);
        pool.release(c);
    }
    state.SetItemsProcessed(state.iterations());
}

void uncontended_atomic_slot(benchmark::State& state) {
    fake_connection conn;
    init_connection(conn, 0);
    keypool_bench::atomic_slot<fake_connection> slot(&conn);
    for (auto _ : state) {
        fake_connection* c = slot.try_acquire();
        benchmark::DoNotOptimize(c);
        slot.release(c);
    }
    state.SetItemsProcessed(state.iterations());
}

/// keypool, `acquire()` (default 30 s timeout) and release by the lease's destructor.
template <class Pool, class Connector = keypool::fake::connector>
void uncontended_keypool(benchmark::State& state) {
    Pool p(Connector{}, "db", options());
    prefill(p);
    for (auto _ : state) {
        auto lease = p.acquire();
        auto* c = &lease.get();
        benchmark::DoNotOptimize(c);
    }
    state.SetItemsProcessed(state.iterations());
    if (p.stats().waits != 0) state.SkipWithError("an uncontended acquire waited");
}

/// keypool, `try_acquire()`: no timeout to handle. Diagnostic row.
template <class Connector>
void uncontended_keypool_try_acquire(benchmark::State& state) {
    keypool::pool<Connector> p(Connector{}, "db", options());
    prefill(p);
    for (auto _ : state) {
        auto lease = p.try_acquire();
        if (!lease) [[unlikely]] {
            state.SkipWithError("try_acquire found no idle connection");
            break;
        }
        auto* c = &lease.get();
        benchmark::DoNotOptimize(c);
    }
    state.SetItemsProcessed(state.iterations());
}

// ---- W2: contended -------------------------------------------------------------------------
// One pool per run, built and pre-filled by thread 0 before the loop and destroyed by it after;
// the other threads touch it only inside the loop, which starts and ends with a barrier.
//
// Throughput. Google Benchmark divides the items of all threads by the *mean* of the threads'
// own finish times, which flatters an unfair pool (threads that barge ahead finish early and
// shorten the mean). Every thread does the same number of cycles, so we also time the whole run
// from the start barrier to the end barrier (the makespan) on thread 0 and report
// `cycles_per_s` = all cycles / makespan; summarize.py shows both ratios side by side.

/// Runs `body` once per iteration (it returns false to stop after an error); thread 0 records the
/// makespan. The loop is the range-for spelled out, so no timing code runs per iteration.
template <class Body>
void run_contended(benchmark::State& state, Body body) {
    auto it = state.begin();
    auto last = state.end(); // every thread waits here for the others; timing starts
    const auto start = std::chrono::steady_clock::now();
    bool ok = true;
    for (; it != last; ++it) // the final != waits for every thread to finish
        if (!body()) {
            ok = false;
            break;
        }
    const auto stop = std::chrono::steady_clock::now();
    my_samples = nullptr;
    state.SetItemsProcessed(state.iterations());
    if (ok && state.thread_index() == 0) {
        const double seconds = std::chrono::duration<double>(stop - start).count();
        state.counters["cycles_per_s"] =
            seconds > 0 ? static_cast<double>(state.iterations()) * state.threads() / seconds : 0.0;
        report_wait_samples(state);
    }
}

void contended_mutex_vector(benchmark::State& state) {
    using pool_type = keypool_bench::mutex_vector_pool<fake_connection, baseline_wait_hook>;
    static std::unique_ptr<pool_type> pool;
    begin_sampling(state);
    if (state.thread_index() == 0) pool = std::make_unique<pool_type>(max_size, init_connection);
    run_contended(state, [&] {
        fake_connection* c = pool->acquire();
        benchmark::DoNotOptimize(c);
        pool->release(c);
        return true;
    });
    if (state.thread_index() == 0) pool.reset();
}

/// keypool with the wait-sampling observer (the hook runs only after a wait; the fast path is the
/// default pool's).
template <class Connector>
using sampled_pool = keypool::basic_pool<Connector, keypool::with_observer<wait_sampler>>;

/// The default sync policy, except that it names the CPU itself: the pool then CASes its per-CPU
/// caches instead of using restartable sequences (detail/percpu.hpp). For the side-by-side rows.
struct cas_caches_sync : keypool::sync::mutex {
    static unsigned cpu() noexcept { return keypool::detail::current_cpu(); }
};
template <class Connector>
using sampled_cas_pool =
    keypool::basic_pool<Connector, keypool::with_observer<wait_sampler>, keypool::with_sync<cas_caches_sync>>;

template <class Connector, bool YieldAfterHandoff, template <class> class Pool = sampled_pool>
void contended_keypool(benchmark::State& state) {
    static std::unique_ptr<Pool<Connector>> pool;
    begin_sampling(state);
    if (state.thread_index() == 0) {
        pool = std::make_unique<Pool<Connector>>(Connector{}, "db", options(YieldAfterHandoff));
        prefill(*pool);
    }
    run_contended(state, [&] {
        try {
            auto lease = pool->acquire();
            auto* c = &lease.get();
            benchmark::DoNotOptimize(c);
            return true;
        } catch (const keypool::error& e) {
            state.SkipWithError(e.what()); // e.g. a 30 s timeout: a stall, reported, not hidden
            return false;
        }
    });
    if (state.thread_index() == 0) {
        const keypool::pool_stats s = pool->stats();
        state.counters["wait_mean_us"] =
            s.waits ? std::chrono::duration<double, std::micro>(s.wait_time).count() / static_cast<double>(s.waits)
                    : 0.0;
        state.counters["timeouts"] = static_cast<double>(s.timeouts);
        pool.reset();
    }
}

void register_benchmarks() {
    using namespace keypool;
    // W1: the baseline first, then the floor, then keypool's variants.
    benchmark::RegisterBenchmark("BM_pool_uncontended/mutex_vector", uncontended_mutex_vector);
    benchmark::RegisterBenchmark("BM_pool_uncontended/atomic_slot", uncontended_atomic_slot);
    benchmark::RegisterBenchmark("BM_pool_uncontended/keypool", uncontended_keypool<pool<fake::connector>>);
    benchmark::RegisterBenchmark("BM_pool_uncontended/keypool_sync_none",
                                 uncontended_keypool<basic_pool<fake::connector, with_sync<sync::none>>>);
    benchmark::RegisterBenchmark(
        "BM_pool_uncontended/keypool_reset_release",
        uncontended_keypool<basic_pool<fake::connector, with_reset<reset_at::release>>>);
    // Diagnostics, not target rows: where keypool's time goes.
    //   keypool_cas_caches      the per-CPU caches CASed instead of restartable sequences;
    //   keypool_try_acquire     try_acquire(): no timeout to handle;
    //   keypool_null_connector  acquire() with a connector whose reset costs nothing;
    //   keypool_core            both: the pool's own fast path.
    benchmark::RegisterBenchmark("BM_pool_uncontended/keypool_cas_caches",
                                 uncontended_keypool<basic_pool<fake::connector, with_sync<cas_caches_sync>>>);
    benchmark::RegisterBenchmark("BM_pool_uncontended/keypool_try_acquire",
                                 uncontended_keypool_try_acquire<fake::connector>);
    benchmark::RegisterBenchmark("BM_pool_uncontended/keypool_null_connector",
                                 uncontended_keypool<pool<null_connector>, null_connector>);
    benchmark::RegisterBenchmark("BM_pool_uncontended/keypool_core", uncontended_keypool_try_acquire<null_connector>);

    // W2: per thread count, the baseline first; kept adjacent so each pair runs close in time.
    for (int threads : {2, 8, 32}) {
        benchmark::RegisterBenchmark("BM_pool_contended/mutex_vector", contended_mutex_vector)
            ->Threads(threads)
            ->UseRealTime();
        benchmark::RegisterBenchmark("BM_pool_contended/keypool", contended_keypool<fake::connector, true>)
            ->Threads(threads)
            ->UseRealTime();
        benchmark::RegisterBenchmark("BM_pool_contended/keypool_cas_caches",
                                     contended_keypool<fake::connector, true, sampled_cas_pool>)
            ->Threads(threads)
            ->UseRealTime();
        // A fixed count per thread: in the convoy this row runs 100-1000x slower than its first
        // calibration run predicts, and a time-based run then took many minutes per repetition.
        benchmark::RegisterBenchmark("BM_pool_contended/keypool_no_yield", contended_keypool<fake::connector, false>)
            ->Threads(threads)
            ->Iterations(no_yield_iterations)
            ->UseRealTime();
        // Diagnostic: the pool without the fake connector's reset (which runs on every cycle).
        benchmark::RegisterBenchmark("BM_pool_contended/keypool_null_connector",
                                     contended_keypool<null_connector, true>)
            ->Threads(threads)
            ->UseRealTime();
    }
}

} // namespace

int main(int argc, char** argv) {
    register_benchmarks();
    benchmark::AddCustomContext("keypool.max_size", std::to_string(max_size));
    keypool_bench::make_process_multithreaded();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
