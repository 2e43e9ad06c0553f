// SPDX-License-Identifier: BSL-1.0
// Secrets never appear in errors, stats, observer events or logs (issue 6). Every error path that
// needs no server is driven with one distinctive password in templates, URIs, password functions
// and targets: bad templates, rejected tenants, invalid options, refused connects (a unix socket
// directory that does not exist; 127.0.0.1 port 1), password functions that fail or throw. Every
// text those paths produce is collected: exception what()s, error_code messages, the connector's
// on_error / on_notice reports, observer events (pool and registry), stats, last_connect_error(),
// target descriptions, and the process's stderr while it runs. None may contain the password.
// Each scan is shown able to fail: the raw input that fed the path does contain the password.
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <ostream> // doctest prints std::error_code through it

#include <doctest/doctest.h>
#include <keypool/keypool.hpp>
#include <keypool/pq.hpp>
#include <keypool/registry.hpp>

using namespace std::chrono_literals;
using keypool::errc;
namespace pq = keypool::pq;
namespace routes = keypool::pq::routes;

namespace {

const std::string secret = "S3cr3t-pw-QZX";

bool has_secret(std::string_view text) { return text.find(secret) != std::string_view::npos; }

/// Everything the paths under test said, from any thread.
struct transcript {
    std::mutex m;
    std::vector<std::string> lines;

    void add(std::string line) {
        std::lock_guard lk(m);
        lines.push_back(std::move(line));
    }
    std::vector<std::string> snapshot() {
        std::lock_guard lk(m);
        return lines;
    }
    std::size_t size() {
        std::lock_guard lk(m);
        return lines.size();
    }
};

std::string code_text(std::error_code ec) {
    return std::string(ec.category().name()) + ":" + std::to_string(ec.value()) + ":" + ec.message();
}

/// A recording observer for pools and registries: every hook, every field as text.
struct recording_observer {
    std::shared_ptr<transcript> log = std::make_shared<transcript>();

    void on_connect(std::chrono::nanoseconds took, std::error_code ec) {
        log->add("on_connect " + std::to_string(took.count()) + " " + code_text(ec));
    }
    void on_close(keypool::close_reason r) { log->add(std::string("on_close ") + keypool::to_string(r)); }
    void on_wait(std::chrono::nanoseconds waited, std::error_code ec) {
        log->add("on_wait " + std::to_string(waited.count()) + " " + code_text(ec));
    }
    void on_leak(const keypool::lease_report& r) {
        log->add("on_leak " + std::to_string(r.age.count()) + " " + r.site.file_name() + " " + r.site.function_name());
    }
    void on_pool_created(const std::string& key) { log->add("on_pool_created " + key); }
    void on_pool_evicted(const std::string& key, keypool::evict_reason r) {
        log->add("on_pool_evicted " + key + " " + keypool::to_string(r));
    }
};

/// Connector options whose hooks write every field of every report into `log`.
pq::connector_options recording_options(const std::shared_ptr<transcript>& log) {
    pq::connector_options o;
    o.connect_timeout = 2s;
    o.on_error = [log](const pq::error_report& r) {
        log->add("on_error " + std::string(r.phase) + " " + code_text(r.code) + " server=" +
                 std::string(r.server_message) + " target=" + std::string(r.target));
    };
    o.on_notice = [log](const pq::notice& n) {
        log->add("on_notice " + std::string(n.severity) + " " + std::string(n.sqlstate) + " " + std::string(n.message));
    };
    return o;
}

std::string stats_text(const keypool::pool_stats& s) {
    std::string out = "size=" + std::to_string(s.size) + " idle=" + std::to_string(s.idle) +
                      " in_use=" + std::to_string(s.in_use) + " connecting=" + std::to_string(s.connecting) +
                      " waiters=" + std::to_string(s.waiters) + " peak_size=" + std::to_string(s.peak_size) +
                      " peak_waiters=" + std::to_string(s.peak_waiters) + " acquires=" + std::to_string(s.acquires) +
                      " waits=" + std::to_string(s.waits) + " wait_time=" + std::to_string(s.wait_time.count()) +
                      " timeouts=" + std::to_string(s.timeouts) + " cancels=" + std::to_string(s.cancels) +
                      " rejected=" + std::to_string(s.rejected) + " connects_ok=" + std::to_string(s.connects_ok) +
                      " connects_failed=" + std::to_string(s.connects_failed) + " resets=" + std::to_string(s.resets) +
                      " leaks=" + std::to_string(s.leaks);
    for (std::size_t i = 0; i < keypool::close_reason_count; ++i)
        out += std::string(" closed_") + keypool::to_string(static_cast<keypool::close_reason>(i)) + "=" +
               std::to_string(s.closes[i]);
    return out;
}

std::string stats_text(const keypool::registry_stats& s) {
    std::string out = "keys_active=" + std::to_string(s.keys_active) + " pools_active=" +
                      std::to_string(s.pools_active) + " pools_created=" + std::to_string(s.pools_created) +
                      " hits=" + std::to_string(s.hits) + " misses=" + std::to_string(s.misses) +
                      " joins=" + std::to_string(s.joins);
    for (std::size_t i = 0; i < keypool::evict_reason_count; ++i)
        out += std::string(" evicted_") + keypool::to_string(static_cast<keypool::evict_reason>(i)) + "=" +
               std::to_string(s.evicted[i]);
    for (std::size_t i = 0; i < s.errors.size(); ++i) out += " errors_" + std::to_string(i) + "=" + std::to_string(s.errors[i]);
    return out + " " + stats_text(s.pools);
}

/// Captures what the process writes to stderr (fd 2: libpq's default notice processor, any log)
/// while it lives.
class stderr_capture {
public:
    stderr_capture() {
        std::fflush(stderr);
        char name[] = "/tmp/keypool-secrets-stderr-XXXXXX";
        fd_ = ::mkstemp(name);
        REQUIRE(fd_ >= 0);
        ::unlink(name);
        saved_ = ::dup(2);
        REQUIRE(saved_ >= 0);
        REQUIRE(::dup2(fd_, 2) >= 0);
    }
    stderr_capture(const stderr_capture&) = delete;
    stderr_capture& operator=(const stderr_capture&) = delete;
    ~stderr_capture() { restore(); }

    /// Restores stderr and returns what was written meanwhile.
    std::string finish() {
        restore();
        std::string out;
        char buf[4096];
        ::lseek(fd_, 0, SEEK_SET);
        for (ssize_t n; (n = ::read(fd_, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
        return out;
    }

private:
    void restore() {
        if (saved_ < 0) return;
        std::fflush(stderr);
        ::dup2(saved_, 2);
        ::close(saved_);
        saved_ = -1;
    }
    int fd_ = -1;
    int saved_ = -1;
};

/// A password function that hands out the secret for every tenant.
pq::tenant_password_fn secret_fn() {
    return [](std::string_view, std::error_code&) -> std::optional<std::string> { return secret; };
}

/// A target with nothing listening behind it (the socket directory does not exist), that gets the
/// secret from its password source.
pq::target unreachable_socket_target() {
    pq::target t;
    t.set("host", "/nonexistent-keypool-secrets-test").set("port", "5432").set("user", "app").set("dbname", "db");
    t.password = [](std::error_code&) -> std::optional<std::string> { return secret; };
    return t;
}

/// The same over TCP: loopback, port 1 (refused at once).
pq::target refused_tcp_target() {
    pq::target t;
    t.set("host", "127.0.0.1").set("port", "1").set("user", "app").set("dbname", "db");
    t.password = [](std::error_code&) -> std::optional<std::string> { return secret; };
    return t;
}

const keypool::steady_clock& the_clock() {
    static const keypool::steady_clock c{};
    return c;
}

template <class... Options>
using pq_pool = keypool::basic_pool<pq::connector, Options...>;
using observed_pool = pq_pool<keypool::with_observer<recording_observer>>;

keypool::pool_options fast_fail_options() {
    keypool::pool_options o;
    o.max_size = 2;
    o.acquire_timeout = 3s;
    o.connect_timeout = 2s;
    o.backoff_initial = 10ms;
    o.backoff_max = 20ms;
    return o;
}

/// The what() of `fn`'s keypool::error ("" if it threw none).
template <class Fn>
std::string what_of(Fn&& fn) {
    try {
        fn();
    } catch (const keypool::error& e) {
        return e.what();
    }
    return {};
}

} // namespace

TEST_SUITE("pq.secrets") {

TEST_CASE("the scan can fail: the raw inputs do contain the password") {
    CHECK(has_secret("host=h dbname={tenant} password=" + secret));
    CHECK(has_secret("postgresql://u:" + secret + "@h/db_{tenant}"));
    std::error_code ec;
    CHECK(has_secret(*secret_fn()("acme", ec)));
    CHECK(has_secret(*unreachable_socket_target().password(ec)));
    CHECK(has_secret(*refused_tcp_target().password(ec)));
    pq::target t;
    t.set("password", secret);
    CHECK(has_secret(t.params[0].value));
    // And a transcript that did receive it would be caught.
    transcript log;
    log.add("on_error connect password=" + secret);
    bool found = false;
    for (const auto& line : log.snapshot()) found = found || has_secret(line);
    CHECK(found);
}

TEST_CASE("template errors never quote the password") {
    const std::string templates[] = {
        "host=h dbname={tenant} password=" + secret,                 // a literal password
        "host=h dbname={tenant} password='" + secret + "'",
        "host=h dbname={tenant} password=" + secret + "{password}",  // {password} within other text
        "host=h dbname=d application_name=" + secret + " user={password}",
        "host=h dbname={tenant} password={password} x=" + secret,    // an unknown keyword
        "host=h dbname='{tenant} password=" + secret,                // unbalanced quote
        "host=" + secret + "{tenant} dbname=d",                       // {tenant} in host
        "postgresql://u:" + secret + "@h/db_{tenant}",
        "postgresql://u:{password}@h/db_{tenant}?password=" + secret,
        "postgresql://u:" + secret + "{password}@h/db_{tenant}",
        "postgresql://u@h/db?options=" + secret + "{tenant}",
        "postgresql://u@h/db%" + secret,
        "host=h dbname={tenant} password={password}",                 // no password function
    };
    for (const auto& tmpl : templates) {
        CAPTURE(tmpl);
        const bool no_fn_case = tmpl == "host=h dbname={tenant} password={password}";
        CHECK(has_secret(tmpl) != no_fn_case); // the scan below would see it if it were echoed
        for (bool with_fn : {false, true}) {
            if (no_fn_case && with_fn) continue; // that one is fine
            const pq::tenant_password_fn fn = with_fn ? secret_fn() : pq::tenant_password_fn{};
            const std::string what = what_of([&] { routes::templated r(tmpl, fn); });
            CAPTURE(what);
            CHECK(what != "");
            CHECK_FALSE(has_secret(what));

            std::error_code ec;
            CHECK_FALSE(routes::templated::make(tmpl, fn, pq::default_tenant_rule, ec));
            CHECK(ec == errc::invalid_config);
            CHECK_FALSE(has_secret(ec.message()));
        }
    }
}

TEST_CASE("rejected tenants and resolved targets never show the password") {
    routes::templated kv("host=h dbname=db_{tenant} user=u password={password}", secret_fn());
    routes::templated uri("postgresql://u:{password}@h/db_{tenant}?sslmode=require", secret_fn());
    routes::direct direct{unreachable_socket_target(), "t_", pq::default_tenant_rule, secret_fn()};
    routes::supavisor supavisor{unreachable_socket_target(), "postgres", pq::default_tenant_rule, secret_fn()};

    // The password as the tenant id itself, and ids that try to smuggle one in.
    const std::string tenants[] = {secret, "acme password=" + secret, "x' password='" + secret,
                                   "a/b?password=" + secret, std::string(70, 'a')};
    auto check = [&](const auto& route) {
        for (const auto& t : tenants) {
            CAPTURE(t);
            std::error_code ec;
            CHECK_FALSE(route.resolve(t, ec));
            CHECK(ec == errc::invalid_config);
            CHECK_FALSE(has_secret(ec.message()));
        }
        std::error_code ec;
        auto r = route.resolve(std::string("acme"), ec);
        REQUIRE(r);
        CHECK_FALSE(has_secret(r->target.describe()));
        for (const auto& p : r->target.params) CHECK_FALSE(has_secret(p.value));
        CHECK(has_secret(*r->target.password(ec))); // the source does hand it out
    };
    check(kv);
    check(uri);
    check(direct);
    check(supavisor);

    // describe_rejection quotes the id (never a password): at most 32 bytes of it.
    CHECK(pq::describe_rejection(std::string(40, 'x') + secret).find(secret) == std::string::npos);

    // A password given as a param is masked in descriptions.
    pq::target t;
    t.set("host", "h").set("password", secret).set("sslpassword", secret);
    CHECK(has_secret(t.params[1].value));
    CHECK(t.describe() == "host=h password=*** sslpassword=***");
}

TEST_CASE("invalid configurations: the exception never shows the target's password") {
    keypool::pool_options bad;
    bad.max_size = 0;
    pq::target t = unreachable_socket_target();
    t.set("options", "-c x=" + secret); // even a target that carries the secret in a param
    const std::string what = what_of([&] { pq_pool<> p(pq::connector{}, t, bad); });
    CHECK(what != "");
    CHECK_FALSE(has_secret(what));

    keypool::registry_options rbad;
    rbad.shards = 0;
    const std::string rwhat = what_of([&] {
        keypool::registry<std::string, routes::templated, pq::connector> r(
            routes::templated("host=h dbname={tenant} password={password}", secret_fn()), pq::connector{}, rbad);
    });
    CHECK(rwhat != "");
    CHECK_FALSE(has_secret(rwhat));

    const std::string cwhat = what_of([&] {
        auto f = [](std::string_view, std::error_code&) -> std::optional<std::string> { return secret; };
        pq::caching_password<decltype(f)> c(f, -1s);
    });
    CHECK(cwhat != "");
    CHECK_FALSE(has_secret(cwhat));
}

TEST_CASE("failed connects: no error, report, event, stat or stderr line shows the password") {
    stderr_capture err;
    auto log = std::make_shared<transcript>();
    recording_observer obs;
    std::vector<std::string> texts; // every exception message and error_code text seen

    const pq::target targets[] = {unreachable_socket_target(), refused_tcp_target()};
    for (const pq::target& t : targets) {
        CAPTURE(t.describe());
        observed_pool pool(pq::connector(recording_options(log)), t, fast_fail_options(), the_clock(),
                           obs);
        std::error_code ec;
        auto l = pool.acquire(1s, ec);
        CHECK_FALSE(l);
        CHECK(ec == errc::upstream_unreachable);
        texts.push_back(code_text(ec));
        const std::string what = what_of([&] { auto l2 = pool.acquire(1s); });
        CHECK(what != "");
        texts.push_back(what);
        texts.push_back(code_text(pool.last_connect_error()));
        texts.push_back(pool.last_connect_error().message());
        texts.push_back(stats_text(pool.stats()));
        texts.push_back(pool.target().describe());
        CHECK(pool.stats().connects_failed >= 1);

        // The connector directly: a target with a password param and a source is refused before
        // libpq sees it, and reported without the value.
        pq::target both = t;
        both.set("password", secret);
        pq::connector c(recording_options(log));
        auto conn = c.connect(both, std::chrono::steady_clock::now() + 2s, {}, ec);
        CHECK_FALSE(conn);
        CHECK(ec == errc::invalid_config);
        texts.push_back(code_text(ec));
    }

    // Password sources that fail, or throw with the password in their message.
    pq::target throwing = unreachable_socket_target();
    throwing.password = [](std::error_code&) -> std::optional<std::string> {
        throw std::runtime_error("vault refused token " + secret);
    };
    pq::target failing = unreachable_socket_target();
    failing.password = [](std::error_code& ec) -> std::optional<std::string> {
        ec = make_error_code(errc::key_not_found);
        return std::nullopt;
    };
    for (const pq::target& t : {throwing, failing}) {
        observed_pool pool(pq::connector(recording_options(log)), t, fast_fail_options(), the_clock(),
                           obs);
        const std::string what = what_of([&] { auto l = pool.acquire(1s); });
        CHECK(what != "");
        texts.push_back(what);
        texts.push_back(code_text(pool.last_connect_error()));
        texts.push_back(stats_text(pool.stats()));
    }

    const std::string captured = err.finish();
    CAPTURE(captured);
    CHECK_FALSE(has_secret(captured));
    CHECK(log->size() > 0);         // the connector did report the failures
    CHECK(obs.log->size() > 0);     // and the observer saw the connects
    for (const auto& line : log->snapshot()) {
        CAPTURE(line);
        CHECK_FALSE(has_secret(line));
    }
    for (const auto& line : obs.log->snapshot()) {
        CAPTURE(line);
        CHECK_FALSE(has_secret(line));
    }
    for (const auto& line : texts) {
        CAPTURE(line);
        CHECK_FALSE(has_secret(line));
    }
}

TEST_CASE("registries: errors, events and stats of every route never show the password") {
    stderr_capture err;
    auto log = std::make_shared<transcript>();
    recording_observer obs;
    std::vector<std::string> texts;

    keypool::registry_options ro;
    ro.pool = fast_fail_options();
    ro.failure_backoff = 0s;

    auto exercise = [&](auto& reg) {
        // A rejected tenant (the resolver's invalid_config), then a good one whose connect fails.
        for (const std::string& key : {std::string("acme password=") + secret, secret, std::string("acme")}) {
            CAPTURE(key);
            std::error_code ec;
            auto l = reg.acquire(key, 1s, ec);
            CHECK_FALSE(l);
            CHECK(ec);
            texts.push_back(code_text(ec));
            const std::string what = what_of([&] { auto l2 = reg.acquire(key, 1s); });
            CHECK(what != "");
            texts.push_back(what);
        }
        texts.push_back(stats_text(reg.stats()));
        CHECK(reg.stats().errors_for(errc::invalid_config) >= 2);
        reg.invalidate("acme");
        reg.close();
        texts.push_back(stats_text(reg.stats()));
    };

    using keypool::with_observer;
    {
        keypool::basic_registry<std::string, routes::templated, pq::connector, with_observer<recording_observer>> reg(
            routes::templated("host=/nonexistent-keypool-secrets-test dbname=db_{tenant} user=u password={password}",
                              secret_fn()),
            pq::connector(recording_options(log)), ro, the_clock(), obs);
        exercise(reg);
    }
    {
        keypool::basic_registry<std::string, routes::templated, pq::connector, with_observer<recording_observer>> reg(
            routes::templated("postgresql://u:{password}@127.0.0.1:1/db_{tenant}", secret_fn()),
            pq::connector(recording_options(log)), ro, the_clock(), obs);
        exercise(reg);
    }
    {
        keypool::basic_registry<std::string, routes::direct, pq::connector, with_observer<recording_observer>> reg(
            routes::direct{refused_tcp_target(), "t_", pq::default_tenant_rule, secret_fn()},
            pq::connector(recording_options(log)), ro, the_clock(), obs);
        exercise(reg);
    }
    {
        keypool::basic_registry<std::string, routes::supavisor, pq::connector, with_observer<recording_observer>> reg(
            routes::supavisor{unreachable_socket_target(), "postgres", pq::default_tenant_rule, secret_fn()},
            pq::connector(recording_options(log)), ro, the_clock(), obs);
        exercise(reg);
    }

    const std::string captured = err.finish();
    CAPTURE(captured);
    CHECK_FALSE(has_secret(captured));
    CHECK(log->size() > 0);
    CHECK(obs.log->size() > 0);
    for (const auto& line : log->snapshot()) {
        CAPTURE(line);
        CHECK_FALSE(has_secret(line));
    }
    for (const auto& line : obs.log->snapshot()) {
        CAPTURE(line);
        CHECK_FALSE(has_secret(line));
    }
    for (const auto& line : texts) {
        CAPTURE(line);
        CHECK_FALSE(has_secret(line));
    }
}

TEST_CASE("caching_password: a fetch that throws or fails gives an error code only") {
    auto throwing = [](std::string_view, std::error_code&) -> std::optional<std::string> {
        throw std::runtime_error("vault said " + secret);
    };
    pq::caching_password<decltype(throwing)> c(throwing, 1min);
    std::error_code ec;
    CHECK_FALSE(c.password("acme", ec));
    CHECK(ec == errc::connect_failed);
    CHECK_FALSE(has_secret(ec.message()));

    auto fn = pq::password_from(std::make_shared<pq::static_password>(pq::static_password{secret}));
    auto pw = fn("acme", ec);
    REQUIRE(pw);
    CHECK(has_secret(*pw)); // it is handed out, only through the return value
}

} // TEST_SUITE
