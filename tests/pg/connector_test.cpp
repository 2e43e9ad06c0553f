// SPDX-License-Identifier: BSL-1.0
// pq::connector in a pool, against the real PostgreSQL 15 and PgBouncer the fixture started:
// connect, query, reset coverage, dead idle backends, classification of connect failures.
#include "pg_support.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <vector>

using namespace pg_test;
using namespace std::chrono_literals;
namespace pq = keypool::pq;
using pq_pool = keypool::basic_pool<pq::connector>;

namespace {

keypool::pool_options one_connection() {
    return keypool::pool_options{.max_size = 1, .validate_after_idle = keypool::duration::zero()};
}

/// A connector for PgBouncer in transaction mode: no session reset, transaction-local role switch.
pq::connector bouncer_connector() {
    return pq::connector(pq::connector_options{.reset_query = "", .role_mode = pq::role_switch_mode::transaction});
}

std::string backend_pid(PGconn* pg) { return scalar(pg, "SELECT pg_backend_pid()").value_or("?"); }

/// Whether `pid` has a SIGINT pending (/proc's ShdPnd mask: a stopped process keeps it there).
bool sigint_pending(pid_t pid) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("ShdPnd:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> (SIGINT - 1)) & 1;
    return false;
}

} // namespace

TEST_CASE("acquire, query and return over TCP, a unix socket and PgBouncer") {
    for (via how : {via::tcp, via::socket, via::bouncer}) {
        CAPTURE(static_cast<int>(how));
        const std::string app = unique_name("basic");
        pq_pool pool(how == via::bouncer ? bouncer_connector() : pq::connector{}, app_target(app, how), one_connection());
        {
            auto lease = pool.acquire(10s);
            CHECK(scalar(lease.native_handle(), "SELECT 40 + 2") == "42");
            CHECK(scalar(lease.native_handle(), "SELECT current_user") == env()["KEYPOOL_PG_APP_USER"]);
        }
        {
            auto lease = pool.acquire(10s);
            CHECK(scalar(lease.native_handle(), "SELECT 1") == "1");
        }
        const auto s = pool.stats();
        CHECK(s.connects_ok == 1);
        CHECK(s.acquires == 2);
        if (how != via::bouncer) {
            admin a;
            CHECK(a.backends(app) == 1);
        }
    }
}

TEST_CASE("session state made through one lease is gone for the next") {
    const std::string app = unique_name("reset");
    pq_pool pool(pq::connector{}, app_target(app), one_connection());
    std::string pid;
    {
        auto lease = pool.acquire(10s);
        PGconn* pg = lease.native_handle();
        pid = backend_pid(pg);
        REQUIRE(scalar(pg, "CREATE TEMP TABLE scratch(x int)"));
        REQUIRE(scalar(pg, "SET work_mem = '7MB'"));
        REQUIRE(scalar(pg, "SET app.tenant = 'acme'")); // a custom GUC, as row-level security reads them
        REQUIRE(scalar(pg, "PREPARE stmt AS SELECT 1"));
        REQUIRE(scalar(pg, "SELECT pg_advisory_lock(4242)"));
        REQUIRE(scalar(pg, "LISTEN kp_channel"));
        REQUIRE(scalar(pg, "NOTIFY kp_channel, 'left over'")); // delivered to ourselves, buffered by libpq
        REQUIRE(scalar(pg, "BEGIN"));
        REQUIRE(scalar(pg, "CREATE TABLE in_open_tx(x int)"));
        CHECK(PQtransactionStatus(pg) == PQTRANS_INTRANS);
    }
    auto lease = pool.acquire(10s);
    PGconn* pg = lease.native_handle();
    REQUIRE(backend_pid(pg) == pid); // the same server session, reset
    CHECK(PQtransactionStatus(pg) == PQTRANS_IDLE);
    CHECK(PQnotifies(pg) == nullptr);
    CHECK(scalar(pg, "SELECT to_regclass('pg_temp.scratch') IS NULL") == "t");
    CHECK(scalar(pg, "SELECT to_regclass('in_open_tx') IS NULL") == "t"); // rolled back
    CHECK(scalar(pg, "SHOW work_mem") == "4MB");
    CHECK(scalar(pg, "SELECT coalesce(current_setting('app.tenant', true), '')") == "");
    CHECK(scalar(pg, "SELECT count(*) FROM pg_prepared_statements") == "0");
    CHECK(scalar(pg, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()") == "0");
    CHECK(scalar(pg, "SELECT count(*) FROM pg_listening_channels()") == "0");
    CHECK(pool.stats().closed_for(keypool::close_reason::broken) == 0);
}

TEST_CASE("a clean return sends DISCARD ALL at once, and the next checkout only reads its answer") {
    const std::string app = unique_name("pipelined");
    admin a;
    const std::string last_query =
        "SELECT coalesce(max(query), '') FROM pg_stat_activity WHERE application_name = '" + app + "'";
    for (bool pipelined : {true, false}) {
        CAPTURE(pipelined);
        pq_pool pool(pq::connector(pq::connector_options{.pipelined_reset = pipelined}), app_target(app),
                     one_connection());
        {
            auto lease = pool.acquire(10s);
            PGconn* pg = lease.native_handle();
            REQUIRE(scalar(pg, "CREATE TEMP TABLE scratch(x int)"));
            REQUIRE(scalar(pg, "SET app.tenant = 'acme'"));
            REQUIRE(scalar(pg, "PREPARE stmt AS SELECT 1"));
            REQUIRE(scalar(pg, "SELECT 'last query of the lease'"));
        }
        // The server runs the reset while the connection sits idle in the pool, or, without
        // pipelining, not before the next checkout.
        if (pipelined)
            CHECK(eventually([&] { return a.value(last_query) == "DISCARD ALL"; }, 10s));
        else
            CHECK(a.value(last_query) == "SELECT 'last query of the lease'");
        {
            auto lease = pool.acquire(10s);
            PGconn* pg = lease.native_handle();
            CHECK(PQtransactionStatus(pg) == PQTRANS_IDLE);
            CHECK(PQgetResult(pg) == nullptr); // nothing of the reset left for the caller to read
            CHECK(scalar(pg, "SELECT to_regclass('pg_temp.scratch') IS NULL") == "t");
            CHECK(scalar(pg, "SELECT coalesce(current_setting('app.tenant', true), '')") == "");
            CHECK(scalar(pg, "SELECT count(*) FROM pg_prepared_statements") == "0");
        }
        // The second return sends its own DISCARD ALL (the server runs it a moment later).
        if (pipelined)
            CHECK(eventually([&] { return a.value(last_query) == "DISCARD ALL"; }, 10s));
        else
            CHECK(a.value(last_query) == "SELECT count(*) FROM pg_prepared_statements");
        const auto s = pool.stats();
        CHECK(s.connects_ok == 1);
        CHECK(s.resets == 1);
        CHECK(s.closed_for(keypool::close_reason::reset_failed) + s.closed_for(keypool::close_reason::broken) == 0);
        pool.close();
        CHECK(eventually([&] { return a.backends(app) == 0; }, 10s));
    }
}

TEST_CASE("a pending pipelined reset survives the idle check and is completed by the keepalive ping") {
    const std::string app = unique_name("pipelined_idle");
    pq::connector c;
    pq_pool pool(c, app_target(app), {.max_size = 1, .validate_after_idle = keypool::duration::zero()});
    {
        auto lease = pool.acquire(10s);
        REQUIRE(scalar(lease.native_handle(), "SET app.tenant = 'acme'"));
    }
    admin a;
    // Its answer has arrived by now and makes the socket readable: alive() must not take that
    // for a terminated backend.
    CHECK(eventually([&] {
        return a.value("SELECT coalesce(max(state), '') FROM pg_stat_activity WHERE application_name = '" + app +
                       "'") == "idle";
    }, 10s));
    {
        auto lease = pool.acquire(10s); // validate_after_idle = 0: alive() runs first, then the reset
        CHECK(scalar(lease.native_handle(), "SELECT coalesce(current_setting('app.tenant', true), '')") == "");
    }
    auto s = pool.stats();
    CHECK(s.connects_ok == 1);
    CHECK(s.closed_for(keypool::close_reason::broken) == 0);
    // ping() on a connection whose reset was begun: it completes the reset instead.
    std::error_code ec;
    auto raw = c.connect(app_target(app), keypool::time_point::max(), {}, ec);
    REQUIRE(raw);
    c.reset_begin(*raw);
    CHECK(c.ping(*raw));
    CHECK(PQtransactionStatus(raw->native_handle()) == PQTRANS_IDLE);
    CHECK(c.ping(*raw)); // and an ordinary ping after it
    c.close(*raw);
}

TEST_CASE("a failed transaction and a role set by hand are undone") {
    const std::string app = unique_name("failedtx");
    pq_pool pool(pq::connector{}, app_target(app, via::socket), one_connection());
    {
        auto lease = pool.acquire(10s);
        PGconn* pg = lease.native_handle();
        REQUIRE(scalar(pg, "BEGIN"));
        CHECK(sqlstate_of(pg, "SELECT 1/0") == "22012");
        CHECK(PQtransactionStatus(pg) == PQTRANS_INERROR);
        REQUIRE(scalar(pg, "ROLLBACK"));
        REQUIRE(scalar(pg, "SET ROLE tenant_acme"));
        REQUIRE(scalar(pg, "BEGIN"));
        CHECK(sqlstate_of(pg, "SELECT 1/0") == "22012");
    }
    auto lease = pool.acquire(10s);
    CHECK(PQtransactionStatus(lease.native_handle()) == PQTRANS_IDLE);
    CHECK(scalar(lease.native_handle(), "SELECT current_user") == env()["KEYPOOL_PG_APP_USER"]);
    CHECK(pool.stats().connects_ok == 1);
}

TEST_CASE("through PgBouncer: an open or failed transaction is rolled back, with no reset query") {
    const std::string app = unique_name("bouncer_tx");
    pq_pool pool(bouncer_connector(), app_target(app, via::bouncer), one_connection());
    {
        auto lease = pool.acquire(10s);
        PGconn* pg = lease.native_handle();
        REQUIRE(scalar(pg, "BEGIN"));
        REQUIRE(scalar(pg, "CREATE TABLE bouncer_open_tx(x int)"));
        REQUIRE(scalar(pg, "SET LOCAL work_mem = '9MB'"));
    }
    {
        auto lease = pool.acquire(10s);
        PGconn* pg = lease.native_handle();
        CHECK(PQtransactionStatus(pg) == PQTRANS_IDLE);
        CHECK(scalar(pg, "SELECT to_regclass('bouncer_open_tx') IS NULL") == "t");
        REQUIRE(scalar(pg, "BEGIN"));
        CHECK(sqlstate_of(pg, "SELECT 1/0") == "22012");
    }
    auto lease = pool.acquire(10s);
    CHECK(PQtransactionStatus(lease.native_handle()) == PQTRANS_IDLE);
    CHECK(scalar(lease.native_handle(), "SELECT 1") == "1");
    CHECK(pool.stats().connects_ok == 1);
}

TEST_CASE("a query still running when its lease returns is cancelled, not left to run") {
    const std::string app = unique_name("running");
    pq_pool pool(pq::connector{}, app_target(app), one_connection());
    {
        auto lease = pool.acquire(10s);
        REQUIRE(PQsendQuery(lease.native_handle(), "SELECT pg_sleep(60)") == 1);
    }
    auto lease = pool.acquire(10s); // reset at checkout: cancel, drain, DISCARD ALL
    CHECK(scalar(lease.native_handle(), "SELECT 1") == "1");
    admin a;
    CHECK(a.value("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app +
                  "' AND query LIKE '%pg_sleep%' AND state = 'active'") == "0");
}

TEST_CASE("a cancel that reaches the backend before its query does is sent again") {
    // The server drops a cancel request that arrives while the backend is still reading the query:
    // CI once saw the reset's drain wait out command_timeout, the connection destroyed and
    // pg_sleep left running, the backend not scheduled before the cancel came. Made certain here:
    // the backend is frozen (SIGSTOP) while the query and the cancel reach it, so on SIGCONT it
    // takes the cancel first (and drops it), then reads and runs the query.
    const std::string app = unique_name("early_cancel");
    pq_pool pool(pq::connector{}, app_target(app), one_connection());
    pid_t backend = 0;
    std::optional<frozen_process> frozen;
    {
        auto lease = pool.acquire(10s);
        backend = PQbackendPID(lease.native_handle());
        frozen.emplace(backend);
        REQUIRE(PQsendQuery(lease.native_handle(), "SELECT pg_sleep(60)") == 1);
    }
    std::atomic<bool> served{false};
    std::thread next([&] {
        auto lease = pool.acquire(30s); // reset at checkout: cancel, drain, DISCARD ALL
        served = lease && scalar(lease.native_handle(), "SELECT 1") == "1";
    });
    const bool pending = eventually([&] { return sigint_pending(backend); }, std::chrono::seconds(20));
    frozen->resume();
    next.join();
    REQUIRE(pending);
    CHECK(served.load());
    CHECK(pool.stats().connects_ok == 1); // the same connection, its query cancelled
    admin a;
    CHECK(a.value("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app +
                  "' AND query LIKE '%pg_sleep%' AND state = 'active'") == "0");
}

TEST_CASE("a backend terminated while idle is never handed out, and is replaced transparently") {
    for (via how : {via::tcp, via::bouncer}) {
        CAPTURE(static_cast<int>(how));
        const std::string app = unique_name("killed");
        // Through PgBouncer the server backends are PgBouncer's: this test is the only user of
        // database `initech`, so it can terminate that database's backends without hitting others.
        pq_pool pool(how == via::bouncer ? bouncer_connector() : pq::connector{},
                     app_target(app, how, how == via::bouncer ? "initech" : "app"),
                     keypool::pool_options{.max_size = 2, .validate_after_idle = keypool::duration::zero()});
        {
            auto a1 = pool.acquire(10s);
            auto a2 = pool.acquire(10s);
            CHECK(scalar(a1.native_handle(), "SELECT 1") == "1");
            CHECK(scalar(a2.native_handle(), "SELECT 1") == "1");
        }
        admin a;
        if (how == via::bouncer) {
            REQUIRE(std::stoi(a.value("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE datname = 'initech' AND backend_type = 'client backend'")) >= 1);
            REQUIRE(eventually([&] {
                return a.value("SELECT count(*) FROM pg_stat_activity WHERE datname = 'initech'") == "0";
            }));
        } else {
            REQUIRE(a.terminate(app) == 2);
            REQUIRE(eventually([&] { return a.backends(app) == 0; }));
        }
        for (int i = 0; i < 4; ++i) {
            auto lease = pool.acquire(10s);
            CHECK(scalar(lease.native_handle(), "SELECT 1") == "1");
        }
        if (how == via::tcp) {
            CHECK(pool.stats().closed_for(keypool::close_reason::broken) == 2);
            CHECK(a.backends(app) == static_cast<int>(pool.stats().size));
        }
    }
}

TEST_CASE("connect failures are classified, and no password appears in any message") {
    const std::string secret = "app-secret-1";
    std::vector<std::string> reports;
    std::mutex m;
    pq::connector_options o;
    o.on_error = [&](const pq::error_report& r) {
        std::lock_guard lk(m);
        reports.push_back(std::string(r.phase) + "|" + r.code.message() + "|" + std::string(r.server_message) + "|" +
                          std::string(r.target));
    };
    pq::connector c(o);
    auto connect = [&](pq::target t) {
        std::error_code ec;
        auto conn = c.connect(t, std::chrono::steady_clock::now() + 10s, {}, ec);
        if (conn) c.close(*conn);
        return ec;
    };
    const auto& e = env();
    SUBCASE("wrong database") {
        CHECK(connect(app_target(unique_name("c"), via::tcp, "no_such_db")) == keypool::errc::key_not_found);
    }
    SUBCASE("wrong password") {
        CHECK(connect(app_target(unique_name("c"), via::tcp, "app", "", "wrong-password")) ==
              keypool::errc::authentication_failed);
    }
    SUBCASE("a role pg_hba rejects") {
        CHECK(connect(app_target(unique_name("c"), via::tcp, "app", e["KEYPOOL_PG_REJECTED_USER"], "rejected-secret-3")) ==
              keypool::errc::authentication_failed);
    }
    SUBCASE("nothing listening") {
        auto t = app_target(unique_name("c"), via::tcp);
        t.set("port", "1"); // privileged, never a server here
        CHECK(connect(t) == keypool::errc::upstream_unreachable);
    }
    SUBCASE("through PgBouncer: wrong password") {
        CHECK(connect(app_target(unique_name("c"), via::bouncer, "app", "", "wrong-password")) ==
              keypool::errc::authentication_failed);
    }
    SUBCASE("through PgBouncer: wrong database") {
        CHECK(connect(app_target(unique_name("c"), via::bouncer, "no_such_db")) == keypool::errc::key_not_found);
    }
    SUBCASE("an empty value is rejected before libpq can read it as 'not set'") {
        auto t = app_target(unique_name("c"), via::tcp);
        t.set("dbname", "");
        CHECK(connect(t) == keypool::errc::invalid_config);
        t.set("dbname", "app");
        t.password = static_password("");
        CHECK(connect(t) == keypool::errc::invalid_config);
    }
    std::lock_guard lk(m);
    REQUIRE(!reports.empty());
    for (const std::string& r : reports) {
        CAPTURE(r);
        CHECK(r.find(secret) == std::string::npos);
        CHECK(r.find("wrong-password") == std::string::npos);
        CHECK(r.find("rejected-secret-3") == std::string::npos);
    }
}

TEST_CASE("the server's connection limit gives server_saturated, with backoff instead of a busy loop") {
    const auto& e = env();
    const std::string app = unique_name("limited");
    pq_pool pool(pq::connector{},
                 app_target(app, via::tcp, "app", e["KEYPOOL_PG_LIMITED_USER"], e["KEYPOOL_PG_LIMITED_PASSWORD"]),
                 keypool::pool_options{.max_size = 4, .backoff_initial = 100ms, .backoff_max = 400ms});
    auto l1 = pool.acquire(10s);
    auto l2 = pool.acquire(10s); // the role's CONNECTION LIMIT is 2
    std::error_code ec;
    auto l3 = pool.acquire(1500ms, ec);
    CHECK(!l3);
    CHECK((ec == keypool::errc::server_saturated || ec == keypool::errc::timeout));
    const auto s = pool.stats();
    CHECK(s.connects_failed >= 1);
    // 1.5 s of backoff starting at 100 ms, doubling to at most 400 ms: a handful of attempts,
    // never hundreds (each failed connect here takes ~20 ms, so a busy loop would make ~75).
    CHECK(s.connects_failed <= 12);
    l1 = {};
    auto l4 = pool.acquire(10s); // a connection came back: served without a new connect
    CHECK(scalar(l4.native_handle(), "SELECT 1") == "1");
}

TEST_CASE("connect honours its deadline and the stop token against a server that never answers") {
    // A listening socket nobody accepts on: the TCP handshake completes (backlog), the startup
    // message is never answered.
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(fd, 16) == 0);
    socklen_t len = sizeof sa;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
    pq::target t;
    t.set("host", "127.0.0.1").set("port", std::to_string(ntohs(sa.sin_port))).set("dbname", "x").set("user", "y");
    t.set("sslmode", "disable");
    pq::connector c;
    std::error_code ec;
    SUBCASE("deadline") {
        auto conn = c.connect(t, std::chrono::steady_clock::now() + 200ms, {}, ec);
        CHECK(!conn);
        CHECK(ec == keypool::errc::timeout);
    }
    SUBCASE("stop token, requested by another thread while connecting") {
        std::stop_source src;
        std::thread stopper([&] {
            std::this_thread::sleep_for(50ms); // not synchronisation: either order gives `cancelled`
            src.request_stop();
        });
        auto conn = c.connect(t, std::chrono::steady_clock::now() + 60s, src.get_token(), ec);
        stopper.join();
        CHECK(!conn);
        CHECK(ec == keypool::errc::cancelled);
    }
    ::close(fd);
}

TEST_CASE("server notices go to the notice hook, not to stderr") {
    std::vector<std::string> notices;
    std::mutex m;
    pq::connector_options o;
    o.on_notice = [&](const pq::notice& n) {
        std::lock_guard lk(m);
        notices.push_back(std::string(n.severity) + ":" + std::string(n.message));
    };
    pq_pool pool(pq::connector(o), app_target(unique_name("notice")), one_connection());
    auto lease = pool.acquire(10s);
    REQUIRE(scalar(lease.native_handle(), "DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$"));
    std::lock_guard lk(m);
    REQUIRE(notices.size() == 1);
    CHECK(notices[0] == "NOTICE:hello from the server");
}

TEST_CASE("alive() sees a terminated idle backend without a round trip, and ping() makes one") {
    pq::connector c;
    const std::string app = unique_name("alive");
    std::error_code ec;
    auto conn = c.connect(app_target(app), std::chrono::steady_clock::now() + 10s, {}, ec);
    REQUIRE(conn);
    CHECK(c.alive(*conn));
    CHECK(c.ping(*conn));
    admin a;
    REQUIRE(a.terminate(app) == 1);
    REQUIRE(eventually([&] { return a.backends(app) == 0; }));
    CHECK(!c.alive(*conn));
    CHECK(!c.reset(*conn));
    c.close(*conn);
}
