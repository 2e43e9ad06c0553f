// SPDX-License-Identifier: BSL-1.0
// Throughput against a real PostgreSQL: each cycle acquires a connection, runs `SELECT 1` on it
// with PQexec and returns it. keypool against a bare std::mutex + std::vector<PGconn*> pool with
// no reset at all (the floor), in the same process, registered first; and the two references
// without a pool: a connection per thread, and a connection per query.
//
//   BM_pg_select1/<impl>/real_time/threads:N     N = 1, 2, 4, 8; pools of max_size = 4, so up to
//                                                4 threads never wait and at 8 acquirers queue
//
//   baseline_mutex_vector          the floor: 1 round trip per cycle (the query)
//   dedicated                      no pool, no sharing: benchmark thread i owns connection i (8
//                                  opened and warmed once), 1 round trip per cycle; the limit
//   keypool_no_reset               reset_query = "": rollback only, no round trip on a clean session
//   keypool_discard_all_pipelined  default connector: DISCARD ALL sent when the lease returns
//                                  (pipelined_reset), its answer read at the next checkout: 2 round
//                                  trips per cycle, the reset's overlapping the idle time
//   keypool_discard_all_checkout   DISCARD ALL made whole at checkout (pipelined_reset = false): 2
//                                  round trips, both on the acquirer's path
//   keypool_discard_all_release    the same, reset on release
//   keypool_discard_all_background the same, reset by a janitor thread that the return wakes
//                                  (reset_at::background): the reset's round trip leaves the
//                                  acquirer's path; `acquire_us` shows it
//   keypool_role_switch            role-switch registry, keys tenant_acme / tenant_globex alternating:
//                                  set_config('role') + query + DISCARD ALL = 3 round trips
//   mutex_vector_pgbouncer         reference: the floor through PgBouncer (transaction mode)
//   keypool_pgbouncer              keypool through PgBouncer, reset_query = "", role_mode transaction
//   connect_per_query              no pool at all: PQconnectdbParams (SCRAM) + the query + PQfinish
//                                  per cycle; ≈ 500 round trips' worth, so 1 and 2 threads only and a
//                                  fixed, small iteration count (connect_per_query_iterations);
//                                  registered last: its connect storm disturbs no pool row
//
// Counters (thread 0): `round_trips` per cycle by design (on the connection used: to PgBouncer for
// the pgbouncer rows, whose round trips each cost about two direct ones; not set for
// connect_per_query, which sets `connects_per_cycle` = 1 instead), `floor` = 1 for the bare
// pools, `pgbouncer` = 1 for the rows through PgBouncer; for keypool, what the pool did during the
// timed run: `resets_per_cycle` (connector reset calls, with or without a round trip), `connects`
// (should be 0) and `waits` (0 up to max_size threads; at 8 threads the queueing, by design), and
// `acquire_us`, the mean time acquire() took (a steady_clock read around it; ≈ 26 ns each).
// bench/summarize.py prints the items/s ratios to baseline_mutex_vector, each row against the
// floor on its own path with these counters, and the pools against dedicated and
// connect_per_query at each thread count.
//
// Connection settings come from the env file scripts/pg-fixture.sh writes, named by KEYPOOL_PG_ENV.
// Without KEYPOOL_PG_ENV the program says so and exits 0 without running anything. Every pool is
// opened (and its connections warmed with one query each) once per benchmark family, on first
// use, and closed when the next family starts (dedicated's 8 connections likewise; only
// connect_per_query connects inside the timed loop); all connections use TCP to 127.0.0.1.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>
#include <libpq-fe.h>

#include <keypool/keypool.hpp>
#include <keypool/pq.hpp>

#include "baselines/mutex_vector_pool.hpp"
#include "baselines/process.hpp"

namespace {

namespace pq = keypool::pq;

constexpr std::size_t max_size = 4;
/// The thread counts of every row but connect_per_query; dedicated opens one connection per thread.
constexpr int thread_counts[] = {1, 2, 4, 8};
constexpr std::size_t max_threads = 8;
static_assert(static_cast<std::size_t>(thread_counts[std::size(thread_counts) - 1]) == max_threads);
/// connect_per_query: iterations per thread and repetition (each ≈ 20 ms: a SCRAM connect).
constexpr benchmark::IterationCount connect_per_query_iterations = 10;

// ---- connection settings -------------------------------------------------------------------

struct server_info {
    std::string host, port, pgb_port, user, password;
};

/// Reads the KEY=VALUE lines scripts/pg-fixture.sh wrote.
server_info read_env_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read the fixture env file " + path);
    std::map<std::string, std::string> v;
    for (std::string line; std::getline(in, line);) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const auto eq = line.find('=');
        if (eq != std::string::npos) v[line.substr(0, eq)] = line.substr(eq + 1);
    }
    auto need = [&](const char* key) {
        auto it = v.find(key);
        if (it == v.end() || it->second.empty()) throw std::runtime_error(path + " has no " + key);
        return it->second;
    };
    return {need("KEYPOOL_PG_HOST"), need("KEYPOOL_PG_PORT"), need("KEYPOOL_PGB_PORT"), need("KEYPOOL_PG_APP_USER"),
            need("KEYPOOL_PG_APP_PASSWORD")};
}

server_info& server() {
    static server_info s;
    return s;
}

/// The app login (SCRAM) to database `app` on `port`, tagged with `app_name`.
pq::target make_target(const server_info& s, const std::string& port, const char* app_name) {
    pq::target t;
    t.set("host", s.host).set("port", port).set("dbname", "app").set("user", s.user);
    t.set("application_name", app_name).set("sslmode", "disable");
    t.password = [pw = s.password](std::error_code&) -> std::optional<std::string> { return pw; };
    return t;
}

/// A plain blocking libpq connect with the same parameters, for the baselines.
PGconn* connect_raw(const server_info& s, const std::string& port, const char* app_name) {
    const char* keys[] = {"host", "port", "dbname", "user", "password", "application_name", "sslmode", nullptr};
    const char* vals[] = {s.host.c_str(), port.c_str(), "app", s.user.c_str(), s.password.c_str(), app_name,
                          "disable", nullptr};
    PGconn* pg = PQconnectdbParams(keys, vals, /*expand_dbname=*/0);
    if (!pg || PQstatus(pg) != CONNECTION_OK) {
        std::string msg = "connect to " + s.host + ":" + port + ": " + (pg ? PQerrorMessage(pg) : "out of memory");
        if (pg) PQfinish(pg);
        throw std::runtime_error(msg);
    }
    return pg;
}

/// The measured work: one `SELECT 1` round trip.
bool select1(PGconn* pg, std::string& err) {
    PGresult* r = PQexec(pg, "SELECT 1");
    const bool ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    if (!ok) err = std::string("SELECT 1 failed: ") + PQerrorMessage(pg);
    PQclear(r);
    return ok;
}

/// libpq's messages span lines; an error shown in a one-line report (and a Markdown table) must not.
std::string one_line(std::string text) {
    for (char& ch : text)
        if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
    while (!text.empty() && text.back() == ' ') text.pop_back();
    return text;
}

void warm(PGconn* pg) {
    std::string err;
    if (!select1(pg, err)) throw std::runtime_error("warm-up: " + err);
}

// ---- fixtures: one family's pool, opened once ----------------------------------------------

/// Baseline: bench/baselines' mutex_vector_pool of PGconn*, no reset of any kind on return.
class raw_fixture {
public:
    raw_fixture(const server_info& s, const std::string& port, const char* app_name)
        : pool_(max_size, [&](handle& h, std::size_t) { h.pg = connect_raw(s, port, app_name); }) {
        std::vector<handle*> held;
        for (std::size_t i = 0; i < max_size; ++i) held.push_back(pool_.acquire());
        for (handle* h : held) warm(h->pg);
        for (handle* h : held) pool_.release(h);
    }

    bool cycle(std::uint64_t, std::size_t, std::string& err) {
        handle* h = pool_.acquire();
        const bool ok = select1(h->pg, err);
        pool_.release(h);
        return ok;
    }
    std::optional<keypool::pool_stats> stats() const { return std::nullopt; }

private:
    struct handle {
        PGconn* pg = nullptr;
        handle() = default;
        handle(const handle&) = delete;
        handle& operator=(const handle&) = delete;
        ~handle() {
            if (pg) PQfinish(pg);
        }
    };
    keypool_bench::mutex_vector_pool<handle> pool_;
};

/// No pool, no sharing: max_threads connections opened and warmed once; thread i uses connection i.
class dedicated_fixture {
public:
    dedicated_fixture(const server_info& s, const std::string& port, const char* app_name) {
        for (std::size_t i = 0; i < max_threads; ++i) {
            conns_.emplace_back(connect_raw(s, port, app_name));
            warm(conns_.back().get());
        }
    }

    bool cycle(std::uint64_t, std::size_t thread, std::string& err) {
        return select1(conns_.at(thread).get(), err);
    }
    std::optional<keypool::pool_stats> stats() const { return std::nullopt; }

private:
    struct finish {
        void operator()(PGconn* pg) const { PQfinish(pg); }
    };
    std::vector<std::unique_ptr<PGconn, finish>> conns_;
};

/// No pool at all: every cycle connects (SCRAM, TCP), runs the query and closes.
class connect_fixture {
public:
    connect_fixture(const server_info& s, std::string port, const char* app_name)
        : s_(s), port_(std::move(port)), app_name_(app_name) {}

    bool cycle(std::uint64_t, std::size_t, std::string& err) {
        PGconn* pg = connect_raw(s_, port_, app_name_); // throws on failure: the loop reports it
        const bool ok = select1(pg, err);
        PQfinish(pg);
        return ok;
    }
    std::optional<keypool::pool_stats> stats() const { return std::nullopt; }

private:
    server_info s_;
    std::string port_;
    const char* app_name_;
};

keypool::pool_options bench_pool_options() {
    keypool::pool_options o;
    o.max_size = max_size;
    return o;
}

/// keypool::basic_pool<pq::connector, Options...>, filled to max_size and warmed.
template <class Pool>
class pool_fixture {
public:
    pool_fixture(pq::connector c, pq::target t) : pool_(std::move(c), std::move(t), bench_pool_options()) {
        std::vector<typename Pool::lease> held;
        for (std::size_t i = 0; i < max_size; ++i) held.push_back(pool_.acquire());
        for (auto& l : held) warm(l.native_handle());
    }

    bool cycle(std::uint64_t, std::size_t, std::string& err) {
        const auto start = std::chrono::steady_clock::now();
        auto lease = pool_.acquire();
        acquire_ns_.fetch_add(static_cast<std::uint64_t>((std::chrono::steady_clock::now() - start).count()),
                              std::memory_order_relaxed);
        acquires_.fetch_add(1, std::memory_order_relaxed);
        return select1(lease.native_handle(), err);
    }
    std::optional<keypool::pool_stats> stats() const { return pool_.stats(); }
    /// Mean acquire() time since the last call, in µs.
    double take_acquire_mean_us() {
        const auto ns = acquire_ns_.exchange(0), n = acquires_.exchange(0);
        return n ? static_cast<double>(ns) / static_cast<double>(n) / 1000.0 : 0.0;
    }

protected:
    Pool pool_;
    std::atomic<std::uint64_t> acquire_ns_{0}, acquires_{0};
};

/// reset_at::background with its janitor: returns wake the janitor, which resets off the acquirer's path.
template <class Pool>
class janitor_fixture : public pool_fixture<Pool> {
public:
    using pool_fixture<Pool>::pool_fixture;

private:
    keypool::janitor janitor_{this->pool_};
};

using role_registry =
    keypool::basic_registry<std::string, keypool::resolve::role_switch<pq::target>, pq::connector>;

/// The role-switch registry: one physical pool of max_size, keys alternating per cycle.
class role_fixture {
public:
    explicit role_fixture(pq::target t) : reg_({.target = std::move(t)}, pq::connector{}, options()) {
        std::vector<role_registry::lease> held;
        for (std::size_t i = 0; i < max_size; ++i) held.push_back(reg_.acquire(keys_[i & 1]));
        for (auto& l : held) warm(l.native_handle());
    }

    bool cycle(std::uint64_t i, std::size_t, std::string& err) {
        auto lease = reg_.acquire(keys_[i & 1]);
        return select1(lease.native_handle(), err);
    }
    std::optional<keypool::pool_stats> stats() const { return reg_.stats().pools; }

private:
    static keypool::registry_options options() {
        keypool::registry_options o;
        o.pool = bench_pool_options();
        return o;
    }
    const std::string keys_[2] = {"tenant_acme", "tenant_globex"};
    role_registry reg_;
};

/// Holds the one live fixture: a family's first run opens it (the other threads of that run wait
/// for it), later runs of the family (thread counts, repetitions) reuse it, and the next family's
/// first run closes it before opening its own. A failure is remembered for the family.
class fixture_slot {
public:
    template <class Fixture, class Make>
    Fixture& get(const std::string& name, Make& make) {
        std::lock_guard lk(m_);
        if (name != name_) {
            obj_.reset();
            error_.clear();
            name_ = name;
            try {
                obj_ = make();
            } catch (const std::exception& e) {
                error_ = e.what();
            }
        }
        if (!error_.empty()) throw std::runtime_error(error_);
        return *static_cast<Fixture*>(obj_.get());
    }
    void clear() {
        std::lock_guard lk(m_);
        obj_.reset();
        name_.clear();
        error_.clear();
    }

private:
    std::mutex m_;
    std::string name_;
    std::shared_ptr<void> obj_;
    std::string error_;
};

fixture_slot slot;

// ---- the benchmark -------------------------------------------------------------------------

/// What a row is, for the counters.
struct row_info {
    double round_trips; ///< server round trips per cycle, by design (0: not reported, a connect per cycle)
    bool floor;         ///< a bare pool (the reference of its path)
    bool pgbouncer;     ///< through PgBouncer
};

template <class Fixture, class Make>
void bm_select1(benchmark::State& state, const std::string& name, row_info info, Make make) {
    Fixture* f = nullptr;
    try {
        f = &slot.get<Fixture>(name, make);
    } catch (const std::exception& e) {
        state.SkipWithError(one_line(e.what()).c_str()); // the loop below then runs no iteration
    }
    const bool reporter = f && state.thread_index() == 0;
    const std::optional<keypool::pool_stats> before = reporter ? f->stats() : std::nullopt;
    if constexpr (requires { f->take_acquire_mean_us(); })
        if (reporter) (void)f->take_acquire_mean_us(); // forget the warm-up and earlier runs

    // Per thread: the cycle index (the role switch alternates keys on it; threads start apart).
    const auto thread = static_cast<std::size_t>(state.thread_index());
    std::uint64_t i = thread;
    bool failed = false;
    std::string err;
    for (auto _ : state) {
        // After an error the remaining iterations do nothing: leaving the loop early would skip
        // the end-of-loop barrier the other threads wait at.
        if (failed) [[unlikely]]
            continue;
        try {
            if (!f->cycle(i++, thread, err)) failed = true;
        } catch (const std::exception& e) {
            err = e.what();
            failed = true;
        }
        if (failed) state.SkipWithError(one_line(err).c_str());
    }
    state.SetItemsProcessed(state.iterations());
    if (!reporter) return;
    if (info.round_trips > 0)
        state.counters["round_trips"] = info.round_trips;
    else
        state.counters["connects_per_cycle"] = 1;
    state.counters["floor"] = info.floor ? 1 : 0;
    state.counters["pgbouncer"] = info.pgbouncer ? 1 : 0;
    if (const auto after = f->stats(); after && before) {
        const double cycles = static_cast<double>(state.iterations()) * state.threads();
        state.counters["resets_per_cycle"] =
            cycles > 0 ? static_cast<double>(after->resets - before->resets) / cycles : 0.0;
        state.counters["connects"] = static_cast<double>(after->connects_ok - before->connects_ok);
        state.counters["waits"] = static_cast<double>(after->waits - before->waits);
    }
    if constexpr (requires { f->take_acquire_mean_us(); }) state.counters["acquire_us"] = f->take_acquire_mean_us();
}

template <class Fixture, class Make>
benchmark::internal::Benchmark* add(const char* impl, row_info info, Make make, bool all_thread_counts = true) {
    const std::string name = std::string("BM_pg_select1/") + impl;
    auto* b = benchmark::RegisterBenchmark(name.c_str(), [name, info, make](benchmark::State& state) {
        bm_select1<Fixture>(state, name, info, make);
    });
    if (all_thread_counts)
        for (int n : thread_counts) b->Threads(n);
    return b->UseRealTime();
}

void register_benchmarks() {
    using keypool::basic_pool;
    using checkout_pool = basic_pool<pq::connector>;
    using release_pool = basic_pool<pq::connector, keypool::with_reset<keypool::reset_at::release>>;
    using background_pool = basic_pool<pq::connector, keypool::with_reset<keypool::reset_at::background>>;
    const server_info& s = server();

    // The baseline first: everything else is a ratio to it.
    add<raw_fixture>("baseline_mutex_vector", {1, true, false},
                     [&s] { return std::make_shared<raw_fixture>(s, s.port, "kp_bench_baseline"); });
    // The reference without a pool that is the limit: a connection per thread.
    add<dedicated_fixture>("dedicated", {1, false, false},
                           [&s] { return std::make_shared<dedicated_fixture>(s, s.port, "kp_bench_dedicated"); });
    add<pool_fixture<checkout_pool>>("keypool_no_reset", {1, false, false}, [&s] {
        return std::make_shared<pool_fixture<checkout_pool>>(pq::connector(pq::connector_options{.reset_query = ""}),
                                                             make_target(s, s.port, "kp_bench_no_reset"));
    });
    add<pool_fixture<checkout_pool>>("keypool_discard_all_pipelined", {2, false, false}, [&s] {
        return std::make_shared<pool_fixture<checkout_pool>>(pq::connector{},
                                                             make_target(s, s.port, "kp_bench_discard_pipelined"));
    });
    add<pool_fixture<checkout_pool>>("keypool_discard_all_checkout", {2, false, false}, [&s] {
        return std::make_shared<pool_fixture<checkout_pool>>(
            pq::connector(pq::connector_options{.pipelined_reset = false}),
            make_target(s, s.port, "kp_bench_discard_checkout"));
    });
    add<pool_fixture<release_pool>>("keypool_discard_all_release", {2, false, false}, [&s] {
        return std::make_shared<pool_fixture<release_pool>>(pq::connector{},
                                                            make_target(s, s.port, "kp_bench_discard_release"));
    });
    add<janitor_fixture<background_pool>>("keypool_discard_all_background", {2, false, false}, [&s] {
        return std::make_shared<janitor_fixture<background_pool>>(pq::connector{},
                                                                  make_target(s, s.port, "kp_bench_discard_background"));
    });
    add<role_fixture>("keypool_role_switch", {3, false, false},
                      [&s] { return std::make_shared<role_fixture>(make_target(s, s.port, "kp_bench_role_switch")); });
    // PgBouncer: the floor through it first (a reference row), then keypool through it.
    add<raw_fixture>("mutex_vector_pgbouncer", {1, true, true},
                     [&s] { return std::make_shared<raw_fixture>(s, s.pgb_port, "kp_bench_baseline_pgb"); });
    add<pool_fixture<checkout_pool>>("keypool_pgbouncer", {1, false, true}, [&s] {
        return std::make_shared<pool_fixture<checkout_pool>>(
            pq::connector(pq::connector_options{.reset_query = "", .role_mode = pq::role_switch_mode::transaction}),
            make_target(s, s.pgb_port, "kp_bench_pgbouncer"));
    });
    // Last, so that its connect storm (backends still exiting) runs after every pool row: no pool at
    // all, a connection per query.
    add<connect_fixture>(
        "connect_per_query", {0, false, false},
        [&s] { return std::make_shared<connect_fixture>(s, s.port, "kp_bench_connect_per_query"); },
        /*all_thread_counts=*/false)
        ->Threads(1)
        ->Threads(2)
        ->Iterations(connect_per_query_iterations);
}

} // namespace

int main(int argc, char** argv) {
    const char* env_file = std::getenv("KEYPOOL_PG_ENV");
    if (!env_file || !*env_file) {
        std::printf("pg_bench: KEYPOOL_PG_ENV is not set (no PostgreSQL fixture, see scripts/pg-fixture.sh); "
                    "skipping\n");
        return 0;
    }
    std::string server_version;
    try {
        server() = read_env_file(env_file);
        PGconn* pg = connect_raw(server(), server().port, "kp_bench_probe"); // fail fast, and say what we ran on
        const char* v = PQparameterStatus(pg, "server_version");
        server_version = v ? v : "?";
        PQfinish(pg);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "pg_bench: %s\n", e.what());
        return 1;
    }
    register_benchmarks();
    keypool_bench::make_process_multithreaded();
    benchmark::AddCustomContext("keypool.max_size", std::to_string(max_size));
    benchmark::AddCustomContext("postgres.server_version", server_version);
    benchmark::AddCustomContext("postgres.transport", "tcp " + server().host);
    benchmark::AddCustomContext("libpq.version", std::to_string(PQlibVersion()));
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    slot.clear(); // close the last family's connections before the process ends
    benchmark::Shutdown();
    return 0;
}
