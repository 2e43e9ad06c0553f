// SPDX-License-Identifier: BSL-1.0
// Single-flight stampede: 64 threads ask a fresh registry for one cold key at once, each acquiring
// and releasing one connection; the fake connector's connects take 10 ms of the real steady clock.
// One iteration = one stampede on a fresh registry and connector; its time is the wall time from
// releasing the 64 (already started, parked) threads until the last one is served (manual time).
//
//   BM_registry_contended_stampede/<impl>/manual_time               resolver instant, connect 10 ms
//   BM_registry_contended_stampede_slow_resolve/<impl>/manual_time  resolver 10 ms, connect 10 ms
//
// impl: mutex_map (baseline: std::mutex + std::unordered_map, no single flight: a caller that finds
// the key missing resolves it outside the lock and inserts it if still absent; a caller that finds
// no idle connection connects outside the lock), keypool (flight::shared, the default),
// keypool_flight_none (flight::none). The registries use the default pool options (max_size 10,
// max_connecting 2) and, in the `_max1` scenarios, max_size 1.
//
// Counters, per stampede (averaged over iterations): connects (successful connects), resolves,
// pools_created (registry_stats; for flight::none also the discarded pools), joins (callers that
// waited for another caller's pool creation). items_per_second = callers served per second of
// stampede time, so bench/summarize.py ("contended" in the name) pairs each row with mutex_map as
// a throughput ratio. Nothing here fixes a minimum time or repetition count.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include <keypool/keypool.hpp>
#include "baselines/process.hpp"

namespace {

constexpr int callers = 64;
constexpr auto connect_delay = std::chrono::milliseconds(10);
constexpr auto slow_resolve_delay = std::chrono::milliseconds(10);
using key_t = std::uint64_t;
constexpr key_t cold_key = 42;

/// Resolves key k to "db<k>", after `delay` (a DNS or secrets lookup); counts its calls.
struct counting_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::shared_ptr<std::atomic<std::uint64_t>> calls = std::make_shared<std::atomic<std::uint64_t>>(0);
    std::chrono::nanoseconds delay{0};

    std::optional<keypool::route<std::string>> resolve(const key_t& k, std::error_code& ec) const {
        calls->fetch_add(1, std::memory_order_relaxed);
        if (delay.count() > 0) std::this_thread::sleep_for(delay);
        ec.clear();
        return keypool::route<std::string>{"db" + std::to_string(k), {}};
    }
};

/// A fresh fake connector whose next `callers` connects each take `connect_delay` (real clock).
keypool::fake::connector slow_connector() {
    keypool::fake::connector c;
    for (int i = 0; i < callers; ++i) c.push(keypool::fake::outcome::slow(connect_delay));
    return c;
}

/// Baseline: a bare keyed pool without single flight.
class mutex_map_pool {
public:
    mutex_map_pool(counting_resolver r, keypool::fake::connector c) : resolver_(std::move(r)), connector_(std::move(c)) {}

    std::optional<keypool::fake::connection> acquire(key_t k, std::error_code& ec) {
        std::string target;
        {
            std::unique_lock lk(m_);
            auto it = map_.find(k);
            if (it == map_.end()) {
                lk.unlock();
                auto r = resolver_.resolve(k, ec);
                if (!r) return std::nullopt;
                lk.lock();
                it = map_.try_emplace(k, entry{std::move(r->target), {}}).first;
            }
            auto& e = it->second;
            if (!e.idle.empty()) {
                auto c = std::move(e.idle.back());
                e.idle.pop_back();
                return c;
            }
            target = e.target;
        }
        return connector_.connect(target, keypool::time_point::max(), {}, ec);
    }
    void release(key_t k, keypool::fake::connection c) {
        std::lock_guard lk(m_);
        map_.find(k)->second.idle.push_back(std::move(c));
    }
    ~mutex_map_pool() {
        for (auto& [k, e] : map_)
            for (auto& c : e.idle) connector_.close(c);
    }

private:
    struct entry {
        std::string target;
        std::vector<keypool::fake::connection> idle;
    };
    std::mutex m_;
    std::unordered_map<key_t, entry> map_;
    counting_resolver resolver_;
    keypool::fake::connector connector_;
};

template <class Flight>
using registry_t = keypool::basic_registry<key_t, counting_resolver, keypool::fake::connector,
                                           keypool::with_flight<Flight>>;

struct totals {
    double connects = 0, resolves = 0, pools_created = 0, joins = 0;
};

/// One stampede per iteration: `make()` builds a fresh fixture (untimed), `serve(fixture)` is what
/// each of the `callers` threads does once (returns false on failure); `count(fixture, totals)`
/// adds the fixture's counters after the threads are joined (untimed).
template <class Make, class Serve, class Count>
void stampede(benchmark::State& state, Make make, Serve serve, Count count) {
    totals t;
    std::atomic<int> failures{0};
    for (auto _ : state) {
        auto fx = make();
        std::latch ready(callers), start(1), done(callers);
        std::vector<std::thread> threads;
        threads.reserve(callers);
        for (int i = 0; i < callers; ++i)
            threads.emplace_back([&] {
                ready.count_down();
                start.wait();
                if (!serve(*fx)) failures.fetch_add(1, std::memory_order_relaxed);
                done.count_down();
            });
        ready.wait();
        const auto t0 = std::chrono::steady_clock::now();
        start.count_down();
        done.wait();
        const auto t1 = std::chrono::steady_clock::now();
        state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
        for (auto& th : threads) th.join();
        count(*fx, t);
    }
    if (failures.load() != 0) {
        state.SkipWithError("some callers were not served");
        return;
    }
    using C = benchmark::Counter;
    state.counters["connects"] = C(t.connects, C::kAvgIterations);
    state.counters["resolves"] = C(t.resolves, C::kAvgIterations);
    state.counters["pools_created"] = C(t.pools_created, C::kAvgIterations);
    state.counters["joins"] = C(t.joins, C::kAvgIterations);
    state.SetItemsProcessed(state.iterations() * callers);
}

counting_resolver make_resolver(bool slow_resolve) {
    counting_resolver r;
    if (slow_resolve) r.delay = slow_resolve_delay;
    return r;
}

void baseline(benchmark::State& state, bool slow_resolve) {
    struct fixture {
        fixture(counting_resolver r_, keypool::fake::connector c_) : r(r_), c(c_), p(r_, c_) {}
        counting_resolver r;
        keypool::fake::connector c;
        mutex_map_pool p;
    };
    stampede(
        state,
        [&] { return std::make_unique<fixture>(make_resolver(slow_resolve), slow_connector()); },
        [](fixture& f) {
            std::error_code ec;
            auto c = f.p.acquire(cold_key, ec);
            if (!c) return false;
            benchmark::DoNotOptimize(c->id);
            f.p.release(cold_key, std::move(*c));
            return true;
        },
        [](fixture& f, totals& t) {
            t.connects += static_cast<double>(f.c.stats().connects);
            t.resolves += static_cast<double>(f.r.calls->load());
            t.pools_created += 1; // the one map entry
        });
}

template <class Flight>
void keypool_registry(benchmark::State& state, bool slow_resolve, std::size_t max_size) {
    struct fixture {
        fixture(counting_resolver r_, keypool::fake::connector c_, const keypool::registry_options& o)
            : r(r_), c(c_), reg(r_, c_, o) {}
        counting_resolver r;
        keypool::fake::connector c;
        registry_t<Flight> reg;
    };
    keypool::registry_options o;
    o.pool.max_size = max_size;
    stampede(
        state,
        [&] { return std::make_unique<fixture>(make_resolver(slow_resolve), slow_connector(), o); },
        [](fixture& f) {
            std::error_code ec;
            auto l = f.reg.acquire(cold_key, std::chrono::seconds(30), ec);
            if (!l) return false;
            benchmark::DoNotOptimize(&l.get());
            return true;
        },
        [](fixture& f, totals& t) {
            const auto s = f.reg.stats();
            t.connects += static_cast<double>(f.c.stats().connects);
            t.resolves += static_cast<double>(f.r.calls->load());
            t.pools_created += static_cast<double>(s.pools_created);
            t.joins += static_cast<double>(s.joins);
        });
}

void register_all() {
    for (bool slow_resolve : {false, true}) {
        for (std::size_t max_size : {std::size_t{10}, std::size_t{1}}) {
            const std::string scenario = std::string("BM_registry_contended_stampede") +
                                         (slow_resolve ? "_slow_resolve" : "") + (max_size == 1 ? "_max1" : "");
            // The baseline has no max_size; it is registered in every scenario all the same, so each
            // scenario has its own pair in the same process, run back to back.
            benchmark::RegisterBenchmark((scenario + "/mutex_map").c_str(), baseline, slow_resolve)->UseManualTime();
            benchmark::RegisterBenchmark((scenario + "/keypool").c_str(), keypool_registry<keypool::flight::shared>,
                                         slow_resolve, max_size)
                ->UseManualTime();
            benchmark::RegisterBenchmark((scenario + "/keypool_flight_none").c_str(),
                                         keypool_registry<keypool::flight::none>, slow_resolve, max_size)
                ->UseManualTime();
        }
    }
}

} // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::AddCustomContext("stampede.callers", std::to_string(callers));
    benchmark::AddCustomContext("stampede.connect_ms", std::to_string(connect_delay.count()));
    keypool_bench::make_process_multithreaded();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
