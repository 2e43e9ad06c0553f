// SPDX-License-Identifier: BSL-1.0
// keypool::metrics: exact Prometheus text for known snapshots, label escaping and checks,
// histogram buckets, the metrics observer on a pool and a registry, the observers<> combinator,
// and that no connection target (with its password) reaches the output. Deterministic: manual
// clock, fake connector, threads synchronised on observable pool state.
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "../support/helpers.hpp"

#include <keypool/metrics.hpp>

using namespace std::chrono_literals;
using keypool::close_reason;
using keypool::errc;
using keypool::evict_reason;
using kp_test::eventually;
namespace metrics = keypool::metrics;

namespace {

/// One acquire on its own thread; `done` turns true when it has its outcome.
template <class Pool>
struct background_acquire {
    background_acquire(Pool& p, keypool::duration timeout) {
        thread = std::jthread([this, &p, timeout] {
            lease = p.acquire(p.now() + timeout, {}, ec);
            done = true;
        });
    }
    typename Pool::lease lease;
    std::error_code ec;
    std::atomic<bool> done{false};
    std::jthread thread;
};

/// Counts the hooks it sees; copies share the counts (a pool keeps its own copy of the observer).
struct counting_observer {
    struct counts {
        std::atomic<int> connects{0}, closes{0}, waits{0};
    };
    std::shared_ptr<counts> c = std::make_shared<counts>();
    void on_connect(std::chrono::nanoseconds, std::error_code) { ++c->connects; }
    void on_close(close_reason) { ++c->closes; }
    void on_wait(std::chrono::nanoseconds, std::error_code) { ++c->waits; }
};

/// Appends its tag to a shared log on each close (to see the order parts are called in).
struct tagging_observer {
    char tag = '?';
    std::shared_ptr<std::string> log = std::make_shared<std::string>();
    void on_close(close_reason) { *log += tag; }
};

/// Maps key k to a target that carries a password; "missing" does not exist.
struct secret_resolver {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const std::string& key, std::error_code& ec) const {
        if (key == "missing") {
            ec = keypool::make_error_code(errc::key_not_found);
            return std::nullopt;
        }
        return keypool::route<std::string>{"host=" + key + ".internal user=app password=hunter2", {}};
    }
};

std::string text_of(const metrics::histogram& h, const metrics::labels& l = {}) {
    std::ostringstream os;
    metrics::write(os, h, "test_seconds", "A test histogram.", l);
    return os.str();
}

bool has_line(const std::string& text, const std::string& line) {
    return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

} // namespace

// The scrape example of docs/metrics.md (quoted from here, so it compiles).
namespace doc_example {
using my_connector = keypool::fake::connector;
const std::string target = "host=db.internal user=app password=hunter2";

// [snippet:serve]
static const keypool::steady_clock steady; // clock and histograms must outlive the pool and its leases
static keypool::metrics::histograms hist;
static keypool::basic_pool<my_connector, keypool::with_observer<keypool::metrics::observer>>
    orders(my_connector{}, target, {.max_size = 16}, steady, keypool::metrics::observer{hist});

// Called by your HTTP server (Boost.Beast, cpp-httplib, ...) for GET /metrics:
std::string scrape() {
    keypool::metrics::exposition e;
    e.add(orders, {{"pool", "orders"}});
    e.add(hist, {{"pool", "orders"}});
    return e.str(); // reply with Content-Type: keypool::metrics::content_type
}
// [/snippet:serve]
} // namespace doc_example

TEST_SUITE("metrics") {

TEST_CASE("metrics: the documented scrape example and observer combination work") {
    using namespace doc_example;
    { auto l = orders.acquire(); }
    const std::string text = scrape();
    CHECK(has_line(text, "keypool_acquires_total{pool=\"orders\"} 1"));
    CHECK(has_line(text, "keypool_connections_max{pool=\"orders\"} 16"));
    CHECK(has_line(text, "keypool_connect_seconds_count{pool=\"orders\"} 1"));
    CHECK(text.find("hunter2") == std::string::npos);

    struct my_logger {
        std::shared_ptr<int> closes = std::make_shared<int>(0);
        void on_close(keypool::close_reason) { ++*closes; }
    };
    my_logger logger;
    {
        // [snippet:combine]
        using obs = keypool::observers<keypool::metrics::observer, my_logger>;
        keypool::basic_pool<my_connector, keypool::with_observer<obs>> p(my_connector{}, target, {}, steady,
                                                                         obs{keypool::metrics::observer{&hist}, logger});
        // [/snippet:combine]
        auto l = p.acquire();
        l.discard();
    }
    CHECK(*logger.closes == 1);
    CHECK(hist.connect.snapshot().count == 2); // the example pool's connect and this one's
}

TEST_CASE("metrics: a known pool snapshot gives the exact exposition text") {
    keypool::pool_stats s;
    s.size = 7;
    s.idle = 3;
    s.in_use = 2;
    s.connecting = 1;
    s.waiters = 4;
    s.peak_size = 9;
    s.peak_waiters = 11;
    s.acquires = 1234;
    s.waits = 56;
    s.wait_time = 2500ms;
    s.timeouts = 5;
    s.cancels = 6;
    s.rejected = 8;
    s.connects_ok = 40;
    s.connects_failed = 2;
    s.resets = 1200;
    s.leaks = 1;
    s.closes[static_cast<std::size_t>(close_reason::idle)] = 10;
    s.closes[static_cast<std::size_t>(close_reason::broken)] = 3;
    s.closes[static_cast<std::size_t>(close_reason::trimmed)] = 12;

    std::ostringstream os;
    metrics::write(os, s, keypool::pool_options{.max_size = 16, .min_idle = 2}, {{"pool", "orders"}});
    const std::string expected =
        "# HELP keypool_connections Connections by state: idle, used (leased), connecting.\n"
        "# TYPE keypool_connections gauge\n"
        "keypool_connections{pool=\"orders\",state=\"idle\"} 3\n"
        "keypool_connections{pool=\"orders\",state=\"used\"} 2\n"
        "keypool_connections{pool=\"orders\",state=\"connecting\"} 1\n"
        "# HELP keypool_connections_open Open connections: idle, used, connecting and closing.\n"
        "# TYPE keypool_connections_open gauge\n"
        "keypool_connections_open{pool=\"orders\"} 7\n"
        "# HELP keypool_connections_peak Highest number of open connections so far.\n"
        "# TYPE keypool_connections_peak gauge\n"
        "keypool_connections_peak{pool=\"orders\"} 9\n"
        "# HELP keypool_connections_max Most connections the pool may open (max_size).\n"
        "# TYPE keypool_connections_max gauge\n"
        "keypool_connections_max{pool=\"orders\"} 16\n"
        "# HELP keypool_connections_idle_min Idle connections maintain() keeps open (min_idle).\n"
        "# TYPE keypool_connections_idle_min gauge\n"
        "keypool_connections_idle_min{pool=\"orders\"} 2\n"
        "# HELP keypool_pending_requests Callers waiting for a connection.\n"
        "# TYPE keypool_pending_requests gauge\n"
        "keypool_pending_requests{pool=\"orders\"} 4\n"
        "# HELP keypool_pending_requests_peak Highest number of waiting callers so far.\n"
        "# TYPE keypool_pending_requests_peak gauge\n"
        "keypool_pending_requests_peak{pool=\"orders\"} 11\n"
        "# HELP keypool_acquires_total Leases handed out.\n"
        "# TYPE keypool_acquires_total counter\n"
        "keypool_acquires_total{pool=\"orders\"} 1234\n"
        "# HELP keypool_waits_total Acquires that had to wait, whatever their outcome.\n"
        "# TYPE keypool_waits_total counter\n"
        "keypool_waits_total{pool=\"orders\"} 56\n"
        "# HELP keypool_wait_seconds_total Total time acquires spent waiting.\n"
        "# TYPE keypool_wait_seconds_total counter\n"
        "keypool_wait_seconds_total{pool=\"orders\"} 2.5\n"
        "# HELP keypool_timeouts_total Acquires that ended with timeout.\n"
        "# TYPE keypool_timeouts_total counter\n"
        "keypool_timeouts_total{pool=\"orders\"} 5\n"
        "# HELP keypool_cancellations_total Acquires that ended with cancelled.\n"
        "# TYPE keypool_cancellations_total counter\n"
        "keypool_cancellations_total{pool=\"orders\"} 6\n"
        "# HELP keypool_rejections_total Acquires refused with pool_exhausted (wait queue full).\n"
        "# TYPE keypool_rejections_total counter\n"
        "keypool_rejections_total{pool=\"orders\"} 8\n"
        "# HELP keypool_connects_total Connect attempts by result.\n"
        "# TYPE keypool_connects_total counter\n"
        "keypool_connects_total{pool=\"orders\",result=\"ok\"} 40\n"
        "keypool_connects_total{pool=\"orders\",result=\"failed\"} 2\n"
        "# HELP keypool_closes_total Connections closed, by reason.\n"
        "# TYPE keypool_closes_total counter\n"
        "keypool_closes_total{pool=\"orders\",reason=\"idle\"} 10\n"
        "keypool_closes_total{pool=\"orders\",reason=\"lifetime\"} 0\n"
        "keypool_closes_total{pool=\"orders\",reason=\"broken\"} 3\n"
        "keypool_closes_total{pool=\"orders\",reason=\"reset_failed\"} 0\n"
        "keypool_closes_total{pool=\"orders\",reason=\"discarded\"} 0\n"
        "keypool_closes_total{pool=\"orders\",reason=\"closed\"} 0\n"
        "keypool_closes_total{pool=\"orders\",reason=\"trimmed\"} 12\n"
        "# HELP keypool_resets_total Connection resets run.\n"
        "# TYPE keypool_resets_total counter\n"
        "keypool_resets_total{pool=\"orders\"} 1200\n"
        "# HELP keypool_leaks_total Leases reported held longer than leak_threshold.\n"
        "# TYPE keypool_leaks_total counter\n"
        "keypool_leaks_total{pool=\"orders\"} 1\n";
    CHECK(os.str() == expected);
}

TEST_CASE("metrics: without labels there are no per-pool labels, and without options no max") {
    keypool::pool_stats s;
    s.idle = 1;
    s.acquires = 2;
    const std::string text = metrics::exposition{}.str();
    CHECK(text.empty());
    std::ostringstream os;
    metrics::write(os, s);
    CHECK(has_line(os.str(), "keypool_connections{state=\"idle\"} 1"));
    CHECK(has_line(os.str(), "keypool_acquires_total 2"));
    CHECK(has_line(os.str(), "keypool_wait_seconds_total 0"));
    CHECK(os.str().find("keypool_connections_max") == std::string::npos);
    CHECK(os.str().find("pool=") == std::string::npos);
}

TEST_CASE("metrics: a known registry snapshot gives the exact registry families") {
    keypool::registry_stats r;
    r.keys_active = 5;
    r.pools_active = 4;
    r.pools_draining = 1;
    r.pools_created = 9;
    r.huge_page_bytes = 4194304;
    r.hits = 100;
    r.misses = 9;
    r.joins = 3;
    r.trim_scans = 11;
    r.pool_passes = 12;
    r.evicted[static_cast<std::size_t>(evict_reason::lru)] = 2;
    r.evicted[static_cast<std::size_t>(evict_reason::invalidated)] = 1;
    r.errors[static_cast<std::size_t>(errc::timeout)] = 7;
    r.errors[static_cast<std::size_t>(errc::authentication_failed)] = 1;
    r.pools.idle = 6;
    r.pools.timeouts = 7;

    std::ostringstream os;
    metrics::write(os, r, {{"service", "api"}});
    const std::string text = os.str();
    const std::string expected_head =
        "# HELP keypool_keys_active Keys with a live pool entry.\n"
        "# TYPE keypool_keys_active gauge\n"
        "keypool_keys_active{service=\"api\"} 5\n"
        "# HELP keypool_pools_active Distinct live pools.\n"
        "# TYPE keypool_pools_active gauge\n"
        "keypool_pools_active{service=\"api\"} 4\n"
        "# HELP keypool_pools_draining Pools that left the registry with connections still open.\n"
        "# TYPE keypool_pools_draining gauge\n"
        "keypool_pools_draining{service=\"api\"} 1\n"
        "# HELP keypool_pools_created_total Pool entries built.\n"
        "# TYPE keypool_pools_created_total counter\n"
        "keypool_pools_created_total{service=\"api\"} 9\n"
        "# HELP keypool_registry_huge_page_bytes Bytes mapped by the registry's huge-page arena.\n"
        "# TYPE keypool_registry_huge_page_bytes gauge\n"
        "keypool_registry_huge_page_bytes{service=\"api\"} 4194304\n"
        "# HELP keypool_registry_hits_total Registry acquires that found the key's pool ready.\n"
        "# TYPE keypool_registry_hits_total counter\n"
        "keypool_registry_hits_total{service=\"api\"} 100\n"
        "# HELP keypool_registry_misses_total Registry acquires that had to create the key's pool.\n"
        "# TYPE keypool_registry_misses_total counter\n"
        "keypool_registry_misses_total{service=\"api\"} 9\n"
        "# HELP keypool_registry_joins_total Registry acquires that waited for another caller's creation.\n"
        "# TYPE keypool_registry_joins_total counter\n"
        "keypool_registry_joins_total{service=\"api\"} 3\n"
        "# HELP keypool_pools_evicted_total Pools retired, by reason (size: idle connections trimmed for the budget).\n"
        "# TYPE keypool_pools_evicted_total counter\n"
        "keypool_pools_evicted_total{service=\"api\",reason=\"lru\"} 2\n"
        "keypool_pools_evicted_total{service=\"api\",reason=\"idle\"} 0\n"
        "keypool_pools_evicted_total{service=\"api\",reason=\"size\"} 0\n"
        "keypool_pools_evicted_total{service=\"api\",reason=\"invalidated\"} 1\n"
        "# HELP keypool_registry_trim_scans_total Pools evict::size looked at for an idle connection to close.\n"
        "# TYPE keypool_registry_trim_scans_total counter\n"
        "keypool_registry_trim_scans_total{service=\"api\"} 11\n"
        "# HELP keypool_registry_pool_passes_total Pools the registry's maintain() ran a pass on (quiet ones are left until due).\n"
        "# TYPE keypool_registry_pool_passes_total counter\n"
        "keypool_registry_pool_passes_total{service=\"api\"} 12\n"
        "# HELP keypool_errors_total Failed registry acquires, by keypool::errc.\n"
        "# TYPE keypool_errors_total counter\n"
        "keypool_errors_total{service=\"api\",reason=\"timeout\"} 7\n"
        "keypool_errors_total{service=\"api\",reason=\"pool_exhausted\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"cancelled\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"closed\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"connect_failed\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"upstream_unreachable\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"key_not_found\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"authentication_failed\"} 1\n"
        "keypool_errors_total{service=\"api\",reason=\"server_saturated\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"invalid_config\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"would_deadlock\"} 0\n"
        "keypool_errors_total{service=\"api\",reason=\"broken_connection\"} 0\n"
        // The summed pool families follow.
        "# HELP keypool_connections Connections by state: idle, used (leased), connecting.\n";
    CHECK(text.substr(0, expected_head.size()) == expected_head);
    CHECK(has_line(text, "keypool_connections{service=\"api\",state=\"idle\"} 6"));
    CHECK(has_line(text, "keypool_timeouts_total{service=\"api\"} 7"));
}

TEST_CASE("metrics: label values are escaped and bad label names are refused") {
    keypool::pool_stats s;
    s.waiters = 1;
    std::ostringstream os;
    metrics::write(os, s, {{"pool", "a\\b\"c\nd"}, {"zone", "eu"}});
    CHECK(has_line(os.str(), "keypool_pending_requests{pool=\"a\\\\b\\\"c\\nd\",zone=\"eu\"} 1"));
    CHECK(os.str().find("c\nd") == std::string::npos); // no raw newline inside a sample

    // HELP text escapes backslash and newline (and leaves quotes alone).
    metrics::histogram h{1.0};
    std::ostringstream hs;
    metrics::write(hs, h, "x_seconds", "line \"one\"\nback\\slash");
    CHECK(has_line(hs.str(), "# HELP x_seconds line \"one\"\\nback\\\\slash"));

    auto refused = [&](metrics::labels l) {
        try {
            metrics::exposition e;
            e.add(s, l);
        } catch (const keypool::error& e) {
            return e.code() == errc::invalid_config;
        }
        return false;
    };
    CHECK(refused({{"1pool", "x"}}));
    CHECK(refused({{"", "x"}}));
    CHECK(refused({{"__name__", "x"}}));
    CHECK(refused({{"po-ol", "x"}}));
    CHECK(refused({{"state", "x"}}));
    CHECK(refused({{"reason", "x"}}));
    CHECK(refused({{"pool", "a"}, {"pool", "b"}}));
    CHECK_FALSE(refused({{"pool_2", "x"}, {"_zone", "y"}}));

    metrics::exposition e;
    CHECK_THROWS_AS(e.add(h, "bad-name", "h"), keypool::error);
    CHECK_THROWS_AS(e.add(h, "", "h"), keypool::error);
    CHECK(e.str().empty());
    // A family name reused with another type is refused rather than written twice.
    e.add(s);
    CHECK_THROWS_AS(e.add(h, "keypool_connections", "h"), keypool::error);
    CHECK_THROWS_AS(e.add(h, "keypool_acquires_total", "h"), keypool::error);
}

TEST_CASE("metrics: histogram buckets are inclusive upper bounds, cumulative, with +Inf, sum, count") {
    metrics::histogram h{0.001, 0.01, 0.1};
    h.observe(0ns);                  // -> 0.001
    h.observe(1ms);                  // exactly on a bound: -> 0.001 (le is inclusive)
    h.observe(1ms + 1ns);            // -> 0.01
    h.observe(50ms);                 // -> 0.1
    h.observe(100ms);                // -> 0.1
    h.observe(2s);                   // -> +Inf only
    h.observe(-5ms);                 // negative counts as zero -> 0.001

    const auto snap = h.snapshot();
    REQUIRE(snap.bounds.size() == 3);
    CHECK(snap.bounds[1] == 10ms);
    CHECK(snap.cumulative == std::vector<std::uint64_t>{3, 4, 6});
    CHECK(snap.count == 7);
    CHECK(snap.sum == 2152000001ns);

    CHECK(text_of(h, {{"pool", "p"}}) ==
          "# HELP test_seconds A test histogram.\n"
          "# TYPE test_seconds histogram\n"
          "test_seconds_bucket{pool=\"p\",le=\"0.001\"} 3\n"
          "test_seconds_bucket{pool=\"p\",le=\"0.01\"} 4\n"
          "test_seconds_bucket{pool=\"p\",le=\"0.1\"} 6\n"
          "test_seconds_bucket{pool=\"p\",le=\"+Inf\"} 7\n"
          "test_seconds_sum{pool=\"p\"} 2.152000001\n"
          "test_seconds_count{pool=\"p\"} 7\n");
}

TEST_CASE("metrics: default histogram bounds and bad bounds") {
    metrics::histogram h;
    const std::string text = text_of(h);
    std::string les;
    for (const char* le : {"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
                           "5", "10", "30", "+Inf"})
        CHECK(has_line(text, std::string("test_seconds_bucket{le=\"") + le + "\"} 0"));
    CHECK(has_line(text, "test_seconds_sum 0"));
    CHECK(has_line(text, "test_seconds_count 0"));

    // No bound at all: only +Inf.
    metrics::histogram none(std::span<const double>{});
    none.observe(3s);
    CHECK(text_of(none) ==
          "# HELP test_seconds A test histogram.\n"
          "# TYPE test_seconds histogram\n"
          "test_seconds_bucket{le=\"+Inf\"} 1\n"
          "test_seconds_sum 3\n"
          "test_seconds_count 1\n");

    auto refused = [](std::initializer_list<double> b) {
        try {
            metrics::histogram bad(b);
        } catch (const keypool::error& e) {
            return e.code() == errc::invalid_config;
        }
        return false;
    };
    CHECK(refused({0.1, 0.1}));
    CHECK(refused({1.0, 0.5}));
    CHECK(refused({-1.0}));
    CHECK(refused({std::numeric_limits<double>::quiet_NaN()}));
    CHECK(refused({std::numeric_limits<double>::infinity()}));
    CHECK(refused({0.1, 0.1000000000001})); // equal once rounded to nanoseconds
    CHECK_FALSE(refused({0.0, 0.5, 2.0}));
}

TEST_CASE("metrics: a pool driven through acquires, a timeout and a failed connect shows them") {
    using pool_type = kp_test::manual_pool<keypool::with_observer<metrics::observer>>;
    const std::string target = "host=db.internal user=app password=hunter2";
    kp_test::fixture f;
    metrics::histograms h;
    pool_type p(f.fake, target, {.max_size = 1}, f.clock, metrics::observer{h});
    REQUIRE(p.target().find("hunter2") != std::string::npos); // the secret is there to leak

    // A failed connect (it takes no time on the manual clock).
    f.fake.fail_next_connects(1);
    std::error_code ec;
    CHECK_FALSE(p.acquire(1s, ec));
    CHECK(ec == errc::connect_failed);
    f.clock.advance(1s); // past the backoff

    // A connect that takes 250 ms of the manual clock.
    f.fake.push(keypool::fake::outcome::slow(250ms));
    std::optional<pool_type::lease> held;
    {
        background_acquire<pool_type> a(p, 10s);
        REQUIRE(eventually([&] { return f.fake.stats().connect_attempts == 2; }));
        f.clock.advance(250ms);
        a.thread.join();
        REQUIRE(a.lease);
        held.emplace(std::move(a.lease));
    }
    // A waiter that times out after 5 s.
    {
        background_acquire<pool_type> w(p, 5s);
        REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
        f.clock.advance(5s);
        w.thread.join();
        CHECK(w.ec == errc::timeout);
    }
    // A waiter served after 2 s by the release of the held lease.
    {
        background_acquire<pool_type> w(p, 10s);
        REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
        f.clock.advance(2s);
        held.reset();
        w.thread.join();
        CHECK(w.lease);
    }

    metrics::exposition e;
    e.add(p, {{"pool", "orders"}});
    e.add(h, {{"pool", "orders"}});
    const std::string text = e.str();
    const std::string l = "{pool=\"orders\"}";
    CHECK(has_line(text, "keypool_connections{pool=\"orders\",state=\"idle\"} 1"));
    CHECK(has_line(text, "keypool_connections{pool=\"orders\",state=\"used\"} 0"));
    CHECK(has_line(text, "keypool_connections_max" + l + " 1"));
    CHECK(has_line(text, "keypool_pending_requests" + l + " 0"));
    CHECK(has_line(text, "keypool_pending_requests_peak" + l + " 1"));
    CHECK(has_line(text, "keypool_acquires_total" + l + " 2"));
    CHECK(has_line(text, "keypool_waits_total" + l + " 2"));
    CHECK(has_line(text, "keypool_wait_seconds_total" + l + " 7"));
    CHECK(has_line(text, "keypool_timeouts_total" + l + " 1"));
    CHECK(has_line(text, "keypool_connects_total{pool=\"orders\",result=\"ok\"} 1"));
    CHECK(has_line(text, "keypool_connects_total{pool=\"orders\",result=\"failed\"} 1"));

    // Waits of 5 s (timed out) and 2 s (served).
    CHECK(has_line(text, "keypool_acquire_wait_seconds_bucket{pool=\"orders\",le=\"1\"} 0"));
    CHECK(has_line(text, "keypool_acquire_wait_seconds_bucket{pool=\"orders\",le=\"2.5\"} 1"));
    CHECK(has_line(text, "keypool_acquire_wait_seconds_bucket{pool=\"orders\",le=\"5\"} 2"));
    CHECK(has_line(text, "keypool_acquire_wait_seconds_bucket{pool=\"orders\",le=\"+Inf\"} 2"));
    CHECK(has_line(text, "keypool_acquire_wait_seconds_sum" + l + " 7"));
    CHECK(has_line(text, "keypool_acquire_wait_seconds_count" + l + " 2"));
    // Connects of 0 s (failed) and 250 ms.
    CHECK(has_line(text, "keypool_connect_seconds_bucket{pool=\"orders\",le=\"0.001\"} 1"));
    CHECK(has_line(text, "keypool_connect_seconds_bucket{pool=\"orders\",le=\"0.1\"} 1"));
    CHECK(has_line(text, "keypool_connect_seconds_bucket{pool=\"orders\",le=\"0.25\"} 2"));
    CHECK(has_line(text, "keypool_connect_seconds_sum" + l + " 0.25"));
    CHECK(has_line(text, "keypool_connect_seconds_count" + l + " 2"));

    // The target never reaches the output, nor does any piece of it.
    CHECK(text.find("hunter2") == std::string::npos);
    CHECK(text.find("password") == std::string::npos);
    CHECK(text.find("db.internal") == std::string::npos);
}

TEST_CASE("metrics: a registry's pools feed one set of histograms and keys and targets stay out") {
    using registry_type = keypool::basic_registry<std::string, secret_resolver, keypool::fake::connector,
                                                  keypool::with_clock<keypool::manual_clock>,
                                                  keypool::with_observer<metrics::observer>>;
    kp_test::fixture f;
    metrics::histograms h;
    registry_type reg(secret_resolver{}, f.fake, {}, f.clock, metrics::observer{h});
    {
        auto a = reg.acquire("tenant-a");
        auto b = reg.acquire("tenant-b");
    }
    { auto a = reg.acquire("tenant-a"); }
    std::error_code ec;
    CHECK_FALSE(reg.acquire("missing", 1s, ec));
    CHECK(ec == errc::key_not_found);

    metrics::exposition e;
    e.add(reg);
    e.add(h);
    const std::string text = e.str();
    CHECK(has_line(text, "keypool_pools_active 2"));
    CHECK(has_line(text, "keypool_keys_active 2"));
    CHECK(has_line(text, "keypool_registry_hits_total 1"));
    CHECK(has_line(text, "keypool_registry_misses_total 3"));
    CHECK(has_line(text, "keypool_errors_total{reason=\"key_not_found\"} 1"));
    CHECK(has_line(text, "keypool_errors_total{reason=\"timeout\"} 0"));
    CHECK(has_line(text, "keypool_connects_total{result=\"ok\"} 2"));
    CHECK(has_line(text, "keypool_connections{state=\"idle\"} 2"));
    CHECK(has_line(text, "keypool_connect_seconds_count 2")); // both pools fed the one histogram
    for (const char* secret : {"hunter2", "password", "tenant-a", "tenant-b", "internal"})
        CHECK_MESSAGE(text.find(secret) == std::string::npos, secret);
}

TEST_CASE("metrics: observers<> forwards each hook to every part, in order") {
    using combined = keypool::observers<metrics::observer, counting_observer, tagging_observer,
                                        tagging_observer, keypool::null_observer>;
    using pool_type = kp_test::manual_pool<keypool::with_observer<combined>>;
    kp_test::fixture f;
    metrics::histograms h;
    counting_observer counter;
    tagging_observer first{'a'};
    tagging_observer second{'b', first.log};
    pool_type p(f.fake, "db", {.max_size = 1}, f.clock, combined{metrics::observer{h}, counter, first, second, {}});
    {
        auto l = p.acquire();
        REQUIRE(l);
        l.discard();
    }
    {
        auto held = p.acquire();
        background_acquire<pool_type> w(p, 1s);
        REQUIRE(eventually([&] { return p.stats().waiters == 1; }));
        f.clock.advance(1s);
        w.thread.join();
        CHECK(w.ec == errc::timeout);
    }
    CHECK(counter.c->connects == 2);
    CHECK(counter.c->closes == 1);
    CHECK(counter.c->waits == 1);
    CHECK(*first.log == "ab"); // one close, seen by both tagging parts, first part first
    CHECK(h.connect.snapshot().count == 2);
    CHECK(h.acquire_wait.snapshot().count == 1);
    CHECK(h.acquire_wait.snapshot().sum == 1s);
    static_assert(std::is_default_constructible_v<keypool::observers<counting_observer, keypool::null_observer>>);
    static_assert(!std::is_default_constructible_v<combined>); // metrics::observer needs its histograms
}

} // TEST_SUITE
