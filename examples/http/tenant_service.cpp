// SPDX-License-Identifier: BSL-1.0
// A multi-tenant HTTP service on a real HTTP server (cpp-httplib) and the throwaway PostgreSQL:
// the tenant comes from the `X-Tenant-Ref` header, each request runs a query through a keypool
// registry (one pool per tenant database, routes::direct), errors map to HTTP status codes, and
// `/metrics` serves the registry's metrics in the Prometheus text format.
//
//   GET /query   X-Tenant-Ref: acme   -> 200 {"tenant":"acme","database":"acme"}
//                missing/invalid id   -> 400   unknown tenant -> 404
//                unreachable, saturated, exhausted, timed out -> 503 (with Retry-After)
//   GET /metrics                      -> text/plain; version=0.0.4
//
// Bodies carry keypool's error name only (never a message from the server, never a secret).
//
// Modes: no arguments = self-test (starts on an ephemeral loopback port, checks every mapping
// with an HTTP client, exits); `--wrk SECONDS` = the self-test, then drives the service with wrk
// (Debian's `wrk`) against 127.0.0.1 and prints the request rate and the metrics.
// Connection settings: PGHOST, PGPORT, PGUSER, PGPASSWORD (scripts/main.sh and the CTest fixture
// set them for a throwaway server).
#include <httplib.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>

#include <keypool/keypool.hpp>
#include <keypool/metrics.hpp>
#include <keypool/pq.hpp>

#include "../expect.hpp"

namespace pq = keypool::pq;
using namespace std::chrono_literals;

namespace {

std::string need(const char* var) {
    const char* v = std::getenv(var);
    if (!v || !*v) {
        std::fprintf(stderr, "set %s (scripts/main.sh runs this example against a throwaway server)\n", var);
        std::exit(2);
    }
    return v;
}

/// keypool's error -> HTTP status. Anything that may pass by itself gets 503 and Retry-After.
int http_status(std::error_code ec) {
    using keypool::errc;
    if (ec == errc::key_not_found) return 404;
    if (ec == errc::invalid_config) return 400;
    if (ec == errc::upstream_unreachable || ec == errc::server_saturated || ec == errc::pool_exhausted ||
        ec == errc::timeout || ec == errc::connect_failed || ec == errc::broken_connection || ec == errc::closed)
        return 503;
    return 500; // authentication_failed and the rest: our configuration, not the client's request
}

using tenant_registry = keypool::basic_registry<std::string, pq::routes::direct, pq::connector,
                                                keypool::with_observer<keypool::metrics::observer>>;

const keypool::steady_clock steady{};

class service {
public:
    explicit service(pq::target server)
        : tenants_(pq::routes::direct{.base = std::move(server)}, pq::connector{},
                   {.pool = {.max_size = 4, .acquire_timeout = 2s}, .max_pools = 64}, steady,
                   keypool::metrics::observer{&histograms_}) {
        // Without TCP_NODELAY each keep-alive response waits on Nagle + the client's delayed ACK
        // (≈40 ms a request: 300 requests/s for 16 connections under wrk).
        http_.set_tcp_nodelay(true);
        http_.Get("/query", [this](const httplib::Request& req, httplib::Response& res) { query(req, res); });
        http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
            std::ostringstream out;
            keypool::metrics::write(out, tenants_.stats());
            keypool::metrics::write(out, histograms_);
            res.set_content(out.str(), "text/plain; version=0.0.4");
        });
    }

    int start() { // an ephemeral port on loopback, served by cpp-httplib's thread pool
        port_ = http_.bind_to_any_port("127.0.0.1");
        EXPECT(port_ > 0);
        thread_ = std::thread([this] { http_.listen_after_bind(); });
        // bind_to_any_port() already listens: clients queue in the backlog until the loop accepts.
        return port_;
    }
    ~service() {
        http_.stop();
        if (thread_.joinable()) thread_.join();
    }
    const tenant_registry& registry() const { return tenants_; }

private:
    void query(const httplib::Request& req, httplib::Response& res) {
        const std::string tenant = req.get_header_value("X-Tenant-Ref");
        if (tenant.empty()) return fail(res, 400, "missing X-Tenant-Ref");
        std::error_code ec;
        auto lease = tenants_.acquire(tenant, 2s, ec);
        if (!lease) return fail(res, http_status(ec), ec.message());
        PGresult* r = PQexec(lease.native_handle(), "SELECT current_database()");
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            PQclear(r);
            lease.discard(); // a failed query on a fresh lease: do not trust the connection
            return fail(res, 503, "query_failed");
        }
        const std::string db = PQgetvalue(r, 0, 0);
        PQclear(r);
        res.set_content("{\"tenant\":\"" + tenant + "\",\"database\":\"" + db + "\"}", "application/json");
    }
    static void fail(httplib::Response& res, int status, const std::string& what) {
        res.status = status;
        if (status == 503) res.set_header("Retry-After", "1");
        res.set_content("{\"error\":\"" + what + "\"}", "application/json");
    }

    keypool::metrics::histograms histograms_;
    tenant_registry tenants_;
    httplib::Server http_;
    std::thread thread_;
    int port_ = 0;
};

/// Every mapping the service promises, checked through a real HTTP client.
void self_test(int port, const std::string& password) {
    httplib::Client client("127.0.0.1", port);
    client.set_read_timeout(10, 0);
    auto get = [&](const char* path, const char* tenant) {
        httplib::Headers h;
        if (tenant) h.emplace("X-Tenant-Ref", tenant);
        auto r = client.Get(path, h);
        EXPECT(r);
        EXPECT(r->body.find(password) == std::string::npos); // never a secret in a body
        return std::make_pair(r->status, r->body);
    };
    auto [ok_status, ok_body] = get("/query", "acme");
    std::printf("GET /query acme          -> %d %s\n", ok_status, ok_body.c_str());
    EXPECT(ok_status == 200 && ok_body.find("\"database\":\"acme\"") != std::string::npos);
    EXPECT(get("/query", "globex").first == 200);
    auto [nf_status, nf_body] = get("/query", "no_such_tenant");
    std::printf("GET /query no_such_tenant -> %d %s\n", nf_status, nf_body.c_str());
    EXPECT(nf_status == 404);
    auto [bad_status, bad_body] = get("/query", "acme host=evil.example");
    std::printf("GET /query <hostile id>  -> %d %s\n", bad_status, bad_body.c_str());
    EXPECT(bad_status == 400);
    EXPECT(get("/query", nullptr).first == 400);
    auto [m_status, metrics] = get("/metrics", nullptr);
    EXPECT(m_status == 200);
    EXPECT(metrics.find("keypool_pools_active 2") != std::string::npos);
    EXPECT(metrics.find("# TYPE keypool_acquire_wait_seconds histogram") != std::string::npos);
}

/// The unreachable upstream: the same service pointed at a port nothing listens on answers 503.
void unreachable_test(const pq::target& server) {
    pq::target nowhere = server;
    nowhere.set("host", "127.0.0.1").set("port", "1").set("connect_timeout", "2");
    service s(nowhere);
    httplib::Client client("127.0.0.1", s.start());
    auto r = client.Get("/query", httplib::Headers{{"X-Tenant-Ref", "acme"}});
    EXPECT(r);
    std::printf("GET /query (server down)  -> %d %s\n", r->status, r->body.c_str());
    EXPECT(r->status == 503 && r->get_header_value("Retry-After") == "1");
}

} // namespace

int main(int argc, char** argv) {
    int wrk_seconds = 0;
    if (argc == 3 && std::string(argv[1]) == "--wrk") wrk_seconds = std::atoi(argv[2]);

    pq::target server;
    server.set("host", need("PGHOST")).set("port", need("PGPORT")).set("user", need("PGUSER"));
    server.set("application_name", "keypool_http_example");
    const std::string password = need("PGPASSWORD");
    server.password = [password](std::error_code&) -> std::optional<std::string> { return password; };

    service s(server);
    const int port = s.start();
    self_test(port, password);
    unreachable_test(server);

    if (wrk_seconds > 0) {
        // wrk drives the service over loopback; its report goes to our stdout.
        const std::string cmd = "wrk -t2 -c16 -d" + std::to_string(wrk_seconds) +
                                "s -H 'X-Tenant-Ref: acme' http://127.0.0.1:" + std::to_string(port) + "/query";
        std::printf("$ %s\n", cmd.c_str());
        std::fflush(stdout);
        EXPECT(std::system(cmd.c_str()) == 0);
        std::ostringstream out;
        keypool::metrics::write(out, s.registry().stats());
        std::printf("--- /metrics after the run\n%s", out.str().c_str());
    }
    return 0;
}
